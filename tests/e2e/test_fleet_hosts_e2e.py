"""A fleet across machines, end to end: two hosts on one machine (two private tmux servers, two
``ORCH_HOST`` values, state folders and user configs), one PostgreSQL database (the test kit's
private server), a real ``orch supervise`` on each host, and real Claude Code agents started
with ``orch spawn``, each host's talking to a stand-in model of its own.

What is asserted is what reached each host's model (the stand-ins' recorded requests) and what
the shared store recorded: recoveries, hook runs, sessions and launch specs, each with its host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from orch_builtin.idle import WAKE_LINE

from orch_core.queue import MARK
from orch_core.storage import open_store
from orch_core.storage.store import Store
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession
from orch_core.testing.kit import orch_script
from orch_core.testing.postgres import Cluster
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer

pytestmark = pytest.mark.claude

WAIT = 60.0  # seconds, for anything a turn of the stand-in model or a restart should bring


def wait(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


class Host:
    """One machine of the fleet: its tmux server, state, user config, supervisor and model."""

    def __init__(self, name: str, root: Path, database: str, server: TmuxServer) -> None:
        self.name = name
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
        done = subprocess.run([orch_script(), *args], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

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

    def ready(self, agent: str) -> bool:
        with stored(self.env) as store:
            screen = tmux.tmux(self.socket, "capture-pane", "-p", "-t", self.pane(store, agent))
        return any(line.strip() == PROMPT_MARK for line in screen.splitlines())

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


@pytest.fixture
def hosts(
    tmp_path: Path, orch_postgres: Cluster, tmux_server: TmuxServer
) -> Iterator[dict[str, Host]]:
    database = orch_postgres.create_database()
    found = {name: Host(name, tmp_path, database, tmux_server) for name in ("alpha", "beta")}
    try:
        yield found
    finally:
        for host in found.values():
            host.close()
        orch_postgres.drop_database(database)


def rows(env: dict[str, str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with stored(env) as store:
        return [tuple(row) for row in store.execute(sql, args).fetchall()]


def test_two_hosts_each_wake_and_restart_their_own_agents(hosts: dict[str, Host]) -> None:
    alpha, beta = hosts["alpha"], hosts["beta"]
    for host in (alpha, beta):
        host.supervise()
    alpha.spawn("lead")
    beta.standin.reply_text("On the release.")
    beta.spawn("worker")
    wait(lambda: rows(alpha.env, "SELECT state FROM agents WHERE id = 'worker'") == [("idle",)],
         "worker idle at its first prompt")  # fmt: skip

    # (a) sent on alpha, for beta's idle agent: beta's supervisor wakes it, once
    receipt = json.loads(alpha.orch("send", "worker", "Cut the release branch.", "--json"))
    assert receipt["agent"] == "worker"
    wait(lambda: len(beta.requests()) >= 1, "the woken agent's request on beta")
    wait(lambda: beta.transcript_written("On the release."), "beta's answer in its transcript")
    (request,) = beta.requests()
    assert request.count(f"{MARK}{receipt['id']} ") == 1
    assert request.count("Cut the release branch.") == 1
    assert request.count(WAKE_LINE) == 1
    assert not any("Cut the release branch." in text for text in alpha.requests())
    shown = json.loads(alpha.orch("queue", "show", receipt["id"], "--json"))
    delivered = [e["ts"] for e in shown["events"] if e["state"] == "delivered"]
    assert len(delivered) == 1
    ((ended, took_ms),) = rows(alpha.env, "SELECT ts, duration_ms FROM hook_runs WHERE agent ="
                               " 'worker' AND event = 'UserPromptSubmit'")  # fmt: skip
    sent = shown["created"]
    print(
        f"\nA->B: sent on alpha at 0; beta's prompt hook began {ended - took_ms / 1000 - sent:.3f}"
        f" s later (the wake-up line typed and taken), delivered at {delivered[0] - sent:.3f} s"
    )

    # (b) beta's Claude is SIGKILLed: beta's supervisor restarts it, alpha's does nothing
    with stored(beta.env) as store:
        pane = beta.pane(store, "worker")
    pid = tmux.tmux(beta.socket, "display-message", "-p", "-t", pane, "#{pane_pid}")
    alpha_panes = tmux.tmux(alpha.socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid}")
    os.kill(int(pid), signal.SIGKILL)
    starts = "SELECT count(*) FROM hook_runs WHERE agent = ? AND event = 'SessionStart'"
    wait(lambda: rows(alpha.env, starts, "worker") == [(2,)], "worker's SessionStart again")
    steps = "SELECT agent, step, state FROM recoveries ORDER BY id"
    wait(lambda: rows(alpha.env, steps) == [("worker", "restart", "done")], "a verified restart")
    assert rows(alpha.env, starts, "lead") == [(1,)]  # alpha's agent untouched
    sessions = "SELECT DISTINCT host FROM sessions WHERE agent = ?"
    assert rows(alpha.env, sessions, "worker") == [("beta",)]  # restarted with beta's settings
    assert rows(alpha.env, sessions, "lead") == [("alpha",)]
    with stored(alpha.env) as store:
        spec = lifecycle.get_spec(store, "worker")
    assert spec is not None
    assert (spec["host"], spec["tmux_socket"], spec["pane"]) == ("beta", beta.socket, pane)
    assert tmux.pane_state(pane, beta.socket) == "alive"
    assert tmux.tmux(alpha.socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid}") == (
        alpha_panes
    )
    listing = {a["id"]: a for a in json.loads(alpha.orch("agents", "--json"))}
    assert {a: (v["host"], v["unreachable"]) for a, v in listing.items()} == {
        "lead": ("alpha", False), "worker": ("beta", False),
    }  # fmt: skip

    # beta vanishes: its agent shows unreachable, and what is sent for it waits
    assert beta.supervisor is not None
    beta.supervisor.kill()
    beta.supervisor.wait(timeout=20)

    def unreachable() -> bool:
        listing = {a["id"]: a for a in json.loads(alpha.orch("agents", "--json"))}
        return bool(listing["worker"]["unreachable"]) and not listing["lead"]["unreachable"]

    wait(unreachable, "worker unreachable from alpha", timeout=30)
    later = json.loads(alpha.orch("send", "worker", "For when beta is back.", "--json"))
    time.sleep(3)  # well past the wake-up above: alpha, which could reach beta's pane, must not
    assert json.loads(alpha.orch("queue", "show", later["id"], "--json"))["state"] == "queued"
    assert len(beta.requests()) == 1
