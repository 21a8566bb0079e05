"""Hosts of a fleet on one machine, for tests across machines: each its own tmux server,
``ORCH_HOST``, state folder and user config naming one shared database, its own ``orch
supervise``, and real Claude Code agents started with ``orch spawn`` against a stand-in model of
its own. The harness's tmux server only prepares each agent's HOME; orch spawns the agents on the
host's socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orch_core import log
from orch_core.storage import open_store
from orch_core.storage.store import Store
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession
from orch_core.testing.kit import orch_script
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer

WAIT = 60.0  # seconds, for anything a turn of the stand-in model or a restart should bring


def wait(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.1)


class Host:
    """One machine of the fleet: its tmux server, state, user config, supervisor and model."""

    def __init__(self, name: str, root: Path, database: str, server: TmuxServer) -> None:
        self.name = name
        self.database = database
        self.root = root / name
        self.project = self.root / "project"
        (self.project / ".claude").mkdir(parents=True)
        (self.project / ".claude" / "orch.toml").write_text(
            "[plugin.auto_restart]\nbackoff_base = 0.5\nbackoff_cap = 1\njitter = 0\n"
            "verify_seconds = 30\n"
        )
        config = self.root / "config" / "orch" / "config.toml"
        config.parent.mkdir(parents=True)
        # each host's own config names the shared database; PostgreSQL's hooks get more time
        # than the default budget, as a loaded machine needs (docs/benchmarks.md)
        config.write_text(f'[orch]\ndatabase = "{database}"\nbudget_ms = 3000\nhost_timeout = 10\n')
        self.socket = str(self.root / "tmux.sock")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env.update(ORCH_HOST=name, ORCH_STATE_DIR=str(self.root / "state"),
                        XDG_CONFIG_HOME=str(self.root / "config"), ORCH_TMUX_SOCKET=self.socket,
                        ORCH_SUPERVISE_FOR="300")  # fmt: skip
        self.standin = StandInAPI().start()
        # the harness prepares HOME and the environment Claude needs; orch spawn starts it
        self.claude = ClaudeSession(self.project, self.standin, server, home=self.root / "home")
        self.claude._write_home()
        self.supervisor: subprocess.Popen[bytes] | None = None

    def orch(self, *args: str) -> str:
        """Run the ``orch`` command line as this host's user; its stdout (it must succeed)."""
        done = self.run_orch(*args)
        if done.returncode != 0:
            raise AssertionError(f"orch {args[0]} on {self.name} failed: {done.stderr}")
        return done.stdout

    def run_orch(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``orch`` command line as this host's user, whatever comes of it."""
        return subprocess.run([orch_script(), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def supervise(self) -> None:
        """``orch supervise`` for this host, as its user would start it."""
        with open(self.root / "supervise.log", "ab") as log:
            self.supervisor = subprocess.Popen(
                [orch_script(), "supervise"], env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        wait(lambda: lifecycle.supervisor_running(self.env), f"{self.name}'s supervisor")

    def spawn(self, agent: str) -> None:
        pairs = [f"--env={k}={v}" for k, v in self.claude.environment().items()]
        command = f"{self.claude.binary} --allowedTools Bash"
        self.orch("spawn", agent, "--dir", str(self.project), "--command", command, *pairs)
        wait(lambda: self.ready(agent), f"{agent}'s prompt")

    def pane(self, store: Store, agent: str) -> str:
        spec = lifecycle.get_spec(store, agent)
        assert spec is not None and spec["pane"]
        return str(spec["pane"])

    def pane_pid(self, store: Store, agent: str) -> int:
        """The pid of the program in ``agent``'s pane: its Claude process."""
        shown = tmux.tmux(self.socket, "display-message", "-p", "-t", self.pane(store, agent),
                          "#{pane_pid}")  # fmt: skip
        return int(shown)

    def ready(self, agent: str) -> bool:
        with stored(self.env) as store:
            screen = tmux.tmux(self.socket, "capture-pane", "-p", "-t", self.pane(store, agent))
        return any(line.strip() == PROMPT_MARK for line in screen.splitlines())

    def log(self) -> list[dict[str, Any]]:
        """This host's orch log (hooks, commands and supervisor alike), oldest first."""
        return log.read(self.env, limit=100_000)

    def requests(self) -> list[str]:
        return [r.text() for r in self.standin.requests_to_main_model()]

    def transcript_written(self, text: str) -> bool:
        files = (self.root / "home" / ".claude" / "projects").glob("*/*.jsonl")
        return any(text in f.read_text() for f in files)

    def close(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        self.standin.stop()


@contextlib.contextmanager
def stored(env: dict[str, str]) -> Iterator[Store]:
    """The shared store, opened for one look and closed after."""
    store = open_store(env)
    try:
        yield store
    finally:
        store.close()


def rows(env: dict[str, str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with stored(env) as store:
        return [tuple(row) for row in store.execute(sql, args).fetchall()]
