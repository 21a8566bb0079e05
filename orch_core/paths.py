"""Where orch keeps its state: one database per machine, logs and caches beside it."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping


def state_dir(env: Mapping[str, str] = os.environ) -> str:
    """``ORCH_STATE_DIR``, else the folder of ``ORCH_DB``, else ``$XDG_STATE_HOME/orch``."""
    if env.get("ORCH_STATE_DIR"):
        return env["ORCH_STATE_DIR"]
    if env.get("ORCH_DB"):
        return os.path.dirname(os.path.abspath(env["ORCH_DB"]))
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "orch")


def db_path(env: Mapping[str, str] = os.environ) -> str:
    return env.get("ORCH_DB") or os.path.join(state_dir(env), "orch.db")


def backups_dir(db: str) -> str:
    """Where the backups of database ``db`` live: beside it (in the state directory)."""
    return os.path.join(os.path.dirname(os.path.abspath(db)), "backups")


def log_path(env: Mapping[str, str] = os.environ) -> str:
    return os.path.join(state_dir(env), "orch.log")


def user_config_path(env: Mapping[str, str] = os.environ) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "orch", "config.toml")


def project_config_path(project_dir: str) -> str:
    return os.path.join(project_dir, ".claude", "orch.toml")


def project_dir(env: Mapping[str, str], cwd: str | None = None) -> str:
    """The project a hook runs for: ``CLAUDE_PROJECT_DIR``, else the event's cwd."""
    return env.get("CLAUDE_PROJECT_DIR") or cwd or os.getcwd()


def ensure_private_dir(path: str) -> None:
    """Create ``path``, and any missing parent, readable by its owner only (state holds
    message text)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        ensure_private_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
