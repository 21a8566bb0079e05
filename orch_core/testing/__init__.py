"""orch's test kit, shipped for plugin authors: payload builders, an isolated state directory,
a runner that feeds events through the real dispatcher, and the real-Claude harness.

Loaded as a pytest plugin (entry point ``pytest11``) wherever orch is installed; see
:mod:`orch_core.testing.pytest_plugin` for the fixtures."""
