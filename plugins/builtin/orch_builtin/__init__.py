"""orch's built-in plugins. Each is an ordinary plugin module, registered under its own name,
so ``[plugins] disable = ["NAME"]`` switches any of them off."""

BUILTINS = ("presence", "queue", "idle", "cleanup", "rebrief", "auto_restart", "alerts")
