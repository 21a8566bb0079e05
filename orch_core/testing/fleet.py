"""A fleet across machines, on one machine: each :class:`Host` has its own ``ORCH_HOST``, state
folder, user config (naming the one PostgreSQL database they share), tmux server, ``orch
supervise`` and stand-in model, and starts real Claude Code agents with ``orch spawn``.

The end to end tests (the ``hosts`` fixture) and the cross-host benchmark build their fleet
from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from orch_core import log
from orch_core.storage import open_store
from orch_core.storage.store import Store
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession
from orch_core.testing.kit import orch_script
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer, alive, wait_until

WAIT = 60.0  # seconds, for anything a turn of the stand-in model or a restart should bring


def wait(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """:func:`~orch_core.testing.tmux.wait_until`, with the fleet's patience."""
    wait_until(condition, timeout, what)


class Host:
    """One machine of the fleet: its tmux server, state, user config, supervisor and model.

    Its store is ``database`` (the fleet's), or with ``None`` a SQLite file in its state folder
    (a machine on its own, as a baseline). ``settings`` go into the ``[orch]`` table of the user
    config after the database, ``project_config`` into the project's ``.claude/orch.toml``;
    ``bin_dir`` holds the ``orch`` that runs (the running interpreter's by default: a benchmark
    passes a regular install's).
    """

    def __init__(
        self,
        name: str,
        root: Path,
        database: str | None,
        server: TmuxServer,
        *,
        settings: str = "",
        project_config: str = "",
        bin_dir: Path | None = None,
        supervise_for: float = 300.0,
        model_lifetime: float = 900.0,
    ) -> None:
        self.name = name
        self.database = database
        self.root = root / name
        self.project = self.root / "project"
        (self.project / ".claude").mkdir(parents=True)
        (self.project / ".claude" / "orch.toml").write_text(project_config)
        config = self.root / "config" / "orch" / "config.toml"
        config.parent.mkdir(parents=True)
        shared = f'database = "{database}"\n' if database else ""
        config.write_text(f"[orch]\n{shared}{settings}")
        self.socket = str(self.root / "tmux.sock")
        self.orch_bin = str(bin_dir / "orch") if bin_dir else orch_script()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env.update(ORCH_HOST=name, ORCH_STATE_DIR=str(self.root / "state"),
                        XDG_CONFIG_HOME=str(self.root / "config"), ORCH_TMUX_SOCKET=self.socket,
                        ORCH_SUPERVISE_FOR=f"{supervise_for:g}")  # fmt: skip
        self.standin = StandInAPI(model_lifetime)
        # the harness prepares HOME and the environment Claude needs; orch spawn starts it
        self.claude = ClaudeSession(self.project, self.standin, server, home=self.root / "home")
        self.claude._write_home()
        self.standin.start()
        self.supervisor: subprocess.Popen[bytes] | None = None

    def orch(self, *args: str) -> str:
        """Run ``orch`` as this host's user; its stdout, or a RuntimeError with its stderr."""
        done = self.run_orch(*args)
        if done.returncode != 0:
            raise RuntimeError(f"orch {args[0]} on {self.name} failed: {done.stderr.strip()}")
        return done.stdout

    def run_orch(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``orch`` as this host's user, whatever comes of it."""
        return subprocess.run([self.orch_bin, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def supervise(self) -> None:
        """``orch supervise`` for this host, as its user would start it."""
        with open(self.root / "supervise.log", "ab") as log:
            self.supervisor = subprocess.Popen(
                [self.orch_bin, "supervise"], env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        wait(
            lambda: lifecycle.supervisor_running(self.env) is not None, f"{self.name}'s supervisor"
        )

    def spawn(self, agent: str) -> None:
        """``orch spawn`` a real Claude Code agent in the project; wait for its prompt."""
        pairs = [f"--env={k}={v}" for k, v in self.claude.environment().items()]
        command = f"{self.claude.binary} --allowedTools Bash"
        self.orch("spawn", agent, "--dir", str(self.project), "--command", command, *pairs)
        with stored(self.env) as store:
            wait(lambda: self.ready(store, agent), f"{agent}'s prompt")

    def pane(self, store: Store, agent: str) -> str:
        spec = lifecycle.get_spec(store, agent)
        if spec is None or not spec["pane"]:
            raise RuntimeError(f"{agent} has no pane on {self.name}")
        return str(spec["pane"])

    def pane_pid(self, store: Store, agent: str) -> int:
        """The pid of the program in ``agent``'s pane: its Claude process."""
        shown = tmux.tmux(self.socket, "display-message", "-p", "-t", self.pane(store, agent),
                          "#{pane_pid}")  # fmt: skip
        return int(shown)

    def ready(self, store: Store, agent: str) -> bool:
        """The agent's input box is on screen and empty."""
        screen = tmux.tmux(self.socket, "capture-pane", "-p", "-t", self.pane(store, agent))
        return any(line.strip() == PROMPT_MARK for line in screen.splitlines())

    def log(self) -> list[dict[str, Any]]:
        """This host's orch log (hooks, commands and supervisor alike), oldest first."""
        return log.read(self.env, limit=100_000)

    def requests(self) -> list[str]:
        return [r.text() for r in self.standin.requests_to_main_model()]

    def transcripts(self) -> list[Path]:
        return sorted((self.root / "home" / ".claude" / "projects").glob("*/*.jsonl"))

    def transcript_written(self, text: str) -> bool:
        return any(text in f.read_text() for f in self.transcripts())

    def close(self) -> None:
        """Stop the supervisor (before the tmux server, which a tick under way could start
        again), the tmux server and the model."""
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait(timeout=20)
        listed = subprocess.run(["tmux", "-S", self.socket, "list-panes", "-a", "-F",
                                 "#{pane_pid}"], capture_output=True, text=True, timeout=30,
                                check=False)  # fmt: skip
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        # Claude runs its SessionEnd hooks as it goes: done before the folders are removed,
        # or a hook that finds no config starts a store of its own there
        with contextlib.suppress(TimeoutError):
            wait(lambda: not any(map(alive, listed.stdout.split())), "the agents' end", 20)
        self.standin.stop()


@contextlib.contextmanager
def stored(env: Mapping[str, str]) -> Iterator[Store]:
    """The shared store, opened for one look and closed after."""
    store = open_store(env)
    try:
        yield store
    finally:
        store.close()


def rows(env: Mapping[str, str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one query of the store ``env`` names."""
    with stored(env) as store:
        return [tuple(row) for row in store.execute(sql, args).fetchall()]
