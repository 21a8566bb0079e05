"""Feed events through the real dispatcher, in process or as the real ``orch-hook``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from orch_core import log
from orch_core.hook import dispatch
from orch_core.plugins import loader
from orch_core.storage import open_store

if TYPE_CHECKING:
    from orch_core.storage.store import Store
    from orch_core.testing.postgres import Cluster

#: Variables a developer's own shell or Claude session may set that would leak into tests.
LEAKY_PREFIXES = ("ORCH_", "CLAUDE", "TMUX")


@attrs.frozen
class HookResult:
    """What one hook run gave back: exactly what Claude Code would read."""

    exit_code: int
    stdout: str
    stderr: str
    plugins: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def output(self) -> dict[str, Any] | None:
        """stdout parsed as JSON, ``None`` when empty."""
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def context(self) -> str | None:
        out = self.output or {}
        specific = out.get("hookSpecificOutput") or {}
        value = specific.get("additionalContext")
        return value if isinstance(value, str) else None


#: What :meth:`OrchState.give_hooks_room` gives hooks on PostgreSQL.
ROOMY_BUDGET_MS = 3000


@attrs.define
class OrchState:
    """An isolated orch installation for one test: state dir, config dirs, project dir, and
    its store: a SQLite file in the state dir, or a database of ``cluster`` of its own."""

    root: Path
    env: dict[str, str]
    project_dir: Path
    extra: dict[str, object] = attrs.field(factory=dict)
    cluster: Cluster | None = None
    #: Stores the kit opened that are still in use, and databases it made: closed and dropped
    #: by :meth:`close` (a store nobody holds closes itself, as a test polling ``store`` needs).
    opened: weakref.WeakSet[Store] = attrs.field(factory=weakref.WeakSet)
    databases: list[str] = attrs.field(factory=list)

    @classmethod
    def create(cls, root: Path) -> OrchState:
        project = root / "project"
        (project / ".claude").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES)}
        env.update(
            ORCH_STATE_DIR=str(root / "state"),
            ORCH_DB=str(root / "state" / "orch.db"),
            XDG_CONFIG_HOME=str(root / "config"),
            CLAUDE_PROJECT_DIR=str(project),
            ORCH_SUPERVISE_FOR="30",  # a supervisor a test starts stops by itself
        )
        return cls(root, env, project)

    @property
    def store(self) -> Store:
        """The database as orch in the project sees it: with its plugins' own tables."""
        from orch_core.hook.context import Runtime

        store = self._kept(open_store(self.env))
        Runtime.open(self.env, str(self.project_dir), store=store)
        return store

    def other_store(self, name: str) -> Store:
        """A store of the same kind, empty, as another installation has: the SQLite file
        ``name.db`` or a new PostgreSQL database."""
        where = str(self.root / f"{name}.db") if self.cluster is None else self.new_database()
        return self._kept(open_store({**self.env, "ORCH_DB": where}))

    def new_database(self, *, empty: bool = False, encoding: str = "UTF8") -> str:
        """A new PostgreSQL database of ``cluster``, with orch's core tables unless ``empty``
        (then in ``encoding``), dropped by :meth:`close`."""
        assert self.cluster is not None, "a PostgreSQL database needs the orch_postgres cluster"
        url = self.cluster.create_database(empty=empty, encoding=encoding)
        self.databases.append(url)
        return url

    def _kept(self, store: Store) -> Store:
        self.opened.add(store)
        return store

    def close(self) -> None:
        """Stop a supervisor the test started (a send or a hook may start one); close what the
        kit opened; drop the databases it made (with any connection left)."""
        self.stop_supervisor()
        for store in list(self.opened):
            store.close()
        self.opened.clear()
        if self.cluster is not None:
            for url in self.databases:
                self.cluster.drop_database(url)
        self.databases.clear()

    def stop_supervisor(self, timeout: float = 20.0) -> None:
        """End each ``orch supervise`` of this state with SIGTERM, as a user would, and wait
        for it. A send or a hook may have started one just now, before it took its lock, so
        they are found by what they run with (Linux's /proc), not by the lock."""
        import signal
        import time

        mine = f"ORCH_STATE_DIR={self.env['ORCH_STATE_DIR']}".encode()
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if b"supervise" in argv and mine in env:
                found.append(int(entry))
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(os.path.exists(f"/proc/{pid}") for pid in found):
            if time.monotonic() > deadline:
                for pid in found:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def log(self) -> list[dict[str, Any]]:
        return log.read(self.env, limit=1000)

    def write_config(self, text: str, *, user: bool = False) -> Path:
        """Write ``.claude/orch.toml`` (or the user config with ``user=True``)."""
        path = (
            Path(self.env["XDG_CONFIG_HOME"]) / "orch" / "config.toml"
            if user
            else self.project_dir / ".claude" / "orch.toml"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def give_hooks_room(self) -> float:
        """On PostgreSQL, the budget the end to end tests give hooks (3000 ms): a hook that
        does its own work imports psycopg and connects within its budget, about 150 ms and more
        on a loaded machine, and a test of what plugins do is not one of time. On SQLite,
        nothing changes. Returns the hooks' budget, in seconds."""
        from orch_core.plugins.plan import DEFAULT_BUDGET_MS

        if self.cluster is None:
            return DEFAULT_BUDGET_MS / 1000
        self.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
        return ROOMY_BUDGET_MS / 1000

    def plugin_module(self, name: str, source: str) -> Path:
        """Write a plugin module importable by ``orch-hook`` processes (``PYTHONPATH``, ahead
        of what the test's own environment had there: a plugin's author's sources); load it
        with ``[plugins] load`` or ``ORCH_LOAD_PLUGINS``."""
        lib = self.root / "lib"
        lib.mkdir(exist_ok=True)
        path = lib / f"{name}.py"
        path.write_text(source)
        already = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(lib) not in already:
            self.env["PYTHONPATH"] = os.pathsep.join([str(lib), *already])
        return path

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real ``orch`` CLI in the project, with this state."""
        return subprocess.run(
            [orch_script(), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.project_dir,
            timeout=60,
            check=False,
        )

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin object for in-process runs, registered after all the others."""
        self.extra[name or str(getattr(plugin, "__name__", type(plugin).__name__))] = plugin

    def run(self, payload: dict[str, Any] | bytes, **env: str) -> HookResult:
        """Dispatch in process, with the registered plugins; the plan is built afresh."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        full_env = {**self.env, **env}
        loaded = loader.load(full_env, str(self.project_dir), extra=self.extra)
        plan = loader.build_plan(full_env, str(self.project_dir), loaded=loaded)
        outcome = dispatch.dispatch(raw, full_env, plan=plan)
        reply = outcome.reply
        return HookResult(reply.exit_code, reply.stdout(), reply.stderr, outcome.plugins)

    def run_hook(
        self, payload: dict[str, Any] | bytes, timeout: float = 10.0, **env: str
    ) -> HookResult:
        """Run the installed ``orch-hook`` as Claude Code would: a process, stdin, stdout."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        done = subprocess.run(
            [hook_script()],
            input=raw,
            capture_output=True,
            env={**self.env, **env},
            cwd=self.project_dir,
            timeout=timeout,
            check=False,
        )
        return HookResult(done.returncode, done.stdout.decode(), done.stderr.decode())


def orch_script() -> str:
    """The ``orch`` CLI of the running interpreter's environment."""
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch")


def hook_script() -> str:
    """The ``orch-hook`` console script of the running interpreter's environment."""
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch-hook")
