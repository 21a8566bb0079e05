"""A fleet across machines: from ``orch send`` on one host to an idle agent on another, woken
through the store's notification and that host's supervisor. Two measurements, one run, on
the test kit's private PostgreSQL server (fsync off), each in a database of its own, with orch
from a regular install (``.cache/bench-venv``; ``--editable``: this venv's).

**The pane.** Two hosts on this machine (``ORCH_HOST`` alpha and beta, state folders of their
own), a private tmux server. Beta's agent is a pane whose program stamps each line typed into
it; beta runs a real ``orch supervise``, alpha sends with the real ``orch send``, one process
each time. Each run puts the agent back at its prompt (a SessionStart through the real
``orch-hook``), waits a second, sends, and measures from the message's ``created`` (the insert,
in the transaction that notifies) to the moment the pane's program read the line: the
notification, the supervisor's ``orch_wake_agent``, the idle plugin's two tmux calls. Beta's
supervisor also ticks twice a second, which wakes the agent all the same within 0.5 s: a median
well under that is the notification's doing. Two warm-up runs are not counted.

**The model.** The same two hosts, each with its tmux server, real ``orch supervise`` and
stand-in model (the test kit's :class:`~orch_core.testing.fleet.Host`); on beta a real Claude
Code agent started with ``orch spawn``, idle at its prompt. Each round sends to it twice: with
``orch send`` on alpha (across hosts) and on beta itself (the same host, same store), and once
more on a third host, solo, which keeps a SQLite store of its own (one machine, as
``bench/wake_latency.py`` measures it), to its own agent; the order turns each round. As
``bench/wake_latency.py`` does, the clock runs from the start of the ``orch send`` process to the
moment the agent's stand-in receives the request that carries the text; then the turn ends and
the agent sits idle for ``--settle`` seconds. Each wake-up is also split at times the pieces
record: the message's ``created``, a notification heard by a listener of the bench's own, the
agent's move from idle to waking (a trigger the bench adds to the ``agents`` table, with the
database process that made it: the supervisor's or the sender's), Claude's transcript entry
for the wake line, the hook run, the request. On PostgreSQL each host's supervisor answers
its host's ``orch send`` and ``orch-hook`` (warm answers, README), so neither process imports
psycopg or connects. Target: median at most 300 ms across hosts. Two warm-up rounds are not
counted.

    ORCH_CLAUDE_BIN=... python bench/fleet_wake.py [--runs 15] [--settle 1.0] [--editable]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from regular_install import regular_venv
from wake_latency import TARGET_MS, claude_version, pctl, send_until_asked, wake_line_taken

from orch_core.queue import WAKE_CHANNEL, Queue
from orch_core.storage import open_store
from orch_core.storage.store import Store
from orch_core.supervisor import lifecycle
from orch_core.testing.claude import claude_binary, wait_until
from orch_core.testing.fleet import Host
from orch_core.testing.payloads import payload
from orch_core.testing.postgres import Cluster
from orch_core.testing.tmux import TmuxServer

STAMPER = """
import sys, time
with open(sys.argv[1], "a", buffering=1) as out:
    out.write("ready\\n")
    for line in iter(sys.stdin.readline, ""):
        out.write(f"{time.time():.6f} {line}")
"""
PANE_AGENT = "beta/orch-test:0"
# Hooks get the time a loaded machine needs on PostgreSQL, as in the end to end tests: past the
# default budget (500 ms) a Stop hook would leave the agent busy in orch's books, and a
# UserPromptSubmit hook would leave its message for later. A hook within it is not slowed.
BUDGET = "budget_ms = 3000\n"
WORKER = "worker"  # beta's Claude Code agent, by the name orch spawn gave it
# Each move of an agent from idle to waking, when (the waker's clock) and by which database
# process: the bench's instrument, not orch's.
WAKE_TRIGGER = [
    "CREATE TABLE bench_wakes (agent TEXT, ts DOUBLE PRECISION, pid INTEGER)",
    """CREATE FUNCTION bench_wake() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO bench_wakes VALUES (NEW.id, NEW.state_changed, pg_backend_pid());
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER bench_wake AFTER UPDATE ON agents FOR EACH ROW"
    " WHEN (OLD.state = 'idle' AND NEW.state = 'waking') EXECUTE FUNCTION bench_wake()",
]
SQLITE_WAKE_TRIGGER = [
    "CREATE TABLE bench_wakes (agent TEXT, ts REAL, pid INTEGER)",
    "CREATE TRIGGER bench_wake AFTER UPDATE ON agents FOR EACH ROW"
    " WHEN OLD.state = 'idle' AND NEW.state = 'waking'"
    " BEGIN INSERT INTO bench_wakes VALUES (NEW.id, NEW.state_changed, 0); END",
]


def wait(condition: object, what: str, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} after {timeout} s")
        time.sleep(0.005)


def pane_wakes(
    bin_dir: Path, cluster: Cluster, runs: int, root: Path, tmux: TmuxServer
) -> list[float]:
    """Milliseconds from the message queued on alpha to the line read in beta's pane."""
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        config = root / "config" / "orch" / "config.toml"
        config.parent.mkdir(parents=True)
        # the wake-up itself has no budget; the SessionStart that puts the agent at its prompt
        # does, and past it leaves the agent starting, not idle, for 30 s
        config.write_text(f'[orch]\ndatabase = "{cluster.create_database()}"\n{BUDGET}')
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
        base.update(XDG_CONFIG_HOME=str(config.parent.parent), CLAUDE_PROJECT_DIR=str(root))
        hosts = {name: {**base, "ORCH_HOST": name, "ORCH_STATE_DIR": str(root / name)}
                 for name in ("alpha", "beta")}  # fmt: skip
        typed = root / "typed.log"
        pane = tmux.new_window("agent", [sys.executable, "-c", STAMPER, str(typed)])
        wait(typed.exists, "the pane's program")
        server = tmux.cmd("display-message", "-p", "#{socket_path},#{pid},0").strip()
        at_prompt = {**hosts["beta"], "TMUX": server, "TMUX_PANE": pane}
        with open(root / "supervise.log", "ab") as log:
            supervisor = subprocess.Popen([str(bin_dir / "orch"), "supervise"],
                                          env=hosts["beta"], stdout=log, stderr=log,
                                          start_new_session=True)  # fmt: skip
        wait(lambda: lifecycle.supervisor_running(hosts["beta"]), "beta's supervisor")
        store = open_store(hosts["alpha"])
        samples = []
        for run in range(runs + 2):
            Queue(store).purge(PANE_AGENT)  # nothing pending: the prompt's hook wakes nobody
            event = json.dumps(payload("SessionStart", session_id="s-beta")).encode()
            subprocess.run([str(bin_dir / "orch-hook")], input=event, env=at_prompt,
                           check=True, capture_output=True, timeout=30)  # fmt: skip
            time.sleep(1.0)
            lines = len(typed.read_text().splitlines())
            sent = subprocess.run([str(bin_dir / "orch"), "send", PANE_AGENT, f"run {run}",
                                   "--json"], env=hosts["alpha"], capture_output=True,
                                  text=True, check=True, timeout=30)  # fmt: skip
            created = json.loads(sent.stdout)["created"]
            wait(lambda lines=lines: len(typed.read_text().splitlines()) > lines, "the wake-up")
            stamp = float(typed.read_text().splitlines()[lines].split()[0])
            if run >= 2:
                samples.append((stamp - created) * 1000)
        store.close()
    finally:
        if supervisor is not None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=30)
    return samples


@dataclass(frozen=True)
class Route:
    """Where ``orch send`` runs and where the agent it wakes runs."""

    sender: str
    target: str
    label: str


ROUTES = [
    Route("alpha", "beta", "across hosts, PostgreSQL (alpha -> beta)"),
    Route("beta", "beta", "same host, PostgreSQL (beta -> beta)"),
    Route("solo", "solo", "same host, SQLite (solo -> solo)"),
]


@dataclass
class Wake:
    """One wake-up of an idle Claude Code agent, as absolute times (``time.time()``)."""

    start: float
    queued: float  # the message row's ``created``
    notified: float | None  # the bench's own listener heard the notification (PostgreSQL)
    waking: float  # the agent moved from idle to waking: just before the line is typed
    by_supervisor: bool  # ...by its host's supervisor (else by the sender itself)
    submitted: float  # Claude's transcript entry for the wake line
    hook_start: float  # the UserPromptSubmit dispatcher started (after orch-hook's imports)
    hook_end: float  # ...and recorded its run
    received: float  # the stand-in got the request with the text
    cli_exit: float

    @property
    def total_ms(self) -> float:
        return (self.received - self.start) * 1000


class Notifications:
    """When the store's wake-up notifications reach a listener of the bench's own: the
    moment the supervisors could hear them too."""

    def __init__(self, store: Store) -> None:
        listener = store.listen(WAKE_CHANNEL)
        assert listener is not None
        self.listener = listener
        self.heard: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.listen, daemon=True)
        self.thread.start()

    def listen(self) -> None:
        while not self.done.is_set():
            agents = self.listener.wait(0.2)
            now = time.time()
            self.heard.extend((now, agent) for agent in agents)

    def first(self, agent: str, since: float) -> float:
        wait_until(lambda: any(a == agent and t >= since for t, a in self.heard), 10,
                   "the notification")  # fmt: skip
        return min(t for t, a in self.heard if a == agent and t >= since)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.listener.close()


class Agent:
    """A Claude Code agent at its host's prompt, its store (with the bench's wake-up trigger)
    and, on a shared store, a listener for the notifications."""

    def __init__(self, host: Host) -> None:
        self.host = host
        host.spawn(WORKER)
        self.store = open_store(host.env)
        with self.store.transaction() as tx:
            for statement in WAKE_TRIGGER if self.store.shared else SQLITE_WAKE_TRIGGER:
                tx.execute(statement)
        self.heard = Notifications(self.store) if self.store.shared else None
        #: Connections open while the agent sits idle before the first run: the supervisors'
        #: and the bench's own (a sender's and a hook's come and go with their process).
        self.long_lived: set[int] = set()

    def state(self) -> str | None:
        row = self.store.execute("SELECT state FROM agents WHERE id = ?", (WORKER,)).fetchone()
        return None if row is None else str(row[0])

    def wait_idle(self, settle: float) -> None:
        """Idle in orch's books, the input box empty, and nothing sent to the model for a while."""

        def quiet() -> bool:
            requests = self.host.standin.requests
            last = requests[-1].received_at if requests else 0.0
            return time.time() - last >= settle

        def idle() -> bool:
            return self.state() == "idle" and self.host.ready(self.store, WORKER)

        name = self.host.name
        try:
            wait_until(idle, 60, f"idle agent on {name}")
        except TimeoutError:
            raise SystemExit(f"no idle agent on {name} after 60 s: {self.state()}") from None
        wait_until(quiet, 60, f"a quiet agent on {name}")
        wait_until(lambda: self.state() == "idle", 5, f"idle agent on {name}")
        if self.store.shared and not self.long_lived:
            rows = self.store.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
            self.long_lived = {int(pid) for (pid,) in rows}

    def wake(self, sender: Host, settle: float) -> Wake:
        self.wait_idle(settle)
        token = f"wake-{uuid.uuid4().hex}"
        start = time.time()
        argv = [sender.orch_bin, "send", WORKER, f"bench message {token}", "--json"]
        request, out, exited = send_until_asked(argv, sender.env, sender.project,
                                                self.host.standin, token)  # fmt: skip
        waking, pid = self.one(
            "SELECT ts, pid FROM bench_wakes WHERE agent = ? AND ts >= ? ORDER BY ts LIMIT 1",
            start,
        )
        ended, took_ms = self.one(
            "SELECT ts, duration_ms FROM hook_runs WHERE agent = ? AND event = 'UserPromptSubmit'"
            " AND ts >= ? ORDER BY id LIMIT 1",
            start,
        )
        return Wake(
            start=start,
            queued=float(json.loads(out)["created"]),
            notified=None if self.heard is None else self.heard.first(WORKER, start),
            waking=waking,
            by_supervisor=int(pid) in self.long_lived,
            submitted=self.submitted_at(start),
            hook_start=ended - took_ms / 1000,
            hook_end=ended,
            received=request.received_at,
            cli_exit=exited,
        )

    def one(self, sql: str, since: float) -> tuple[float, float]:
        def row() -> tuple[float, float] | None:
            found = self.store.execute(sql, (WORKER, since)).fetchone()
            return None if found is None else (float(found[0]), float(found[1]))

        wait_until(lambda: row() is not None, 10, sql.split(" FROM ")[1].split()[0])
        result = row()
        assert result is not None
        return result

    def submitted_at(self, since: float) -> float:
        """When Claude took the wake line as a prompt: its transcript entry's timestamp."""
        return wake_line_taken(self.host.transcripts(), since)

    def close(self) -> None:
        if self.heard is not None:
            self.heard.close()
        self.store.close()


def model_wakes(
    bin_dir: Path, cluster: Cluster, runs: int, settle: float
) -> dict[Route, list[Wake]]:
    """Each route's timed wake-ups: alpha and beta share a PostgreSQL database, solo is a
    machine on its own (SQLite)."""
    database = cluster.create_database()
    with tempfile.TemporaryDirectory(prefix="orch-fleet-model-") as tmp, \
            TmuxServer() as tmux:  # fmt: skip
        hosts: dict[str, Host] = {}
        agents: dict[str, Agent] = {}
        try:
            for name, store in (("alpha", database), ("beta", database), ("solo", None)):
                hosts[name] = Host(name, Path(tmp), store, tmux, settings=BUDGET,
                                   bin_dir=bin_dir, supervise_for=3600,
                                   model_lifetime=3600)  # fmt: skip
                hosts[name].supervise()
            for name in ("beta", "solo"):
                agents[name] = Agent(hosts[name])
            wakes: dict[Route, list[Wake]] = {route: [] for route in ROUTES}
            for round_ in range(runs + 2):
                turn = round_ % len(ROUTES)
                for route in ROUTES[turn:] + ROUTES[:turn]:
                    wake = agents[route.target].wake(hosts[route.sender], settle)
                    if round_ >= 2:
                        wakes[route].append(wake)
            return wakes
        finally:
            for agent in agents.values():
                agent.close()
            for host in hosts.values():
                host.close()
            cluster.drop_database(database)


Moment = Callable[[Wake], float | None]


def ms(wakes: list[Wake], since: Moment, until: Moment) -> list[float]:
    """Milliseconds between two moments of each wake-up that has both (no notification on
    SQLite)."""
    spans = [(since(w), until(w)) for w in wakes]
    return [(b - a) * 1000 for a, b in spans if a is not None and b is not None]


def notified_or_queued(wake: Wake) -> float | None:
    return wake.queued if wake.notified is None else wake.notified


STEPS: list[tuple[str, Moment, Moment]] = [
    ("`orch send` start -> message queued (interpreter, imports, insert; on PostgreSQL the"
     " host's supervisor inserts)",
     lambda w: w.start, lambda w: w.queued),
    ("queued -> notification heard (commit, NOTIFY)",
     lambda w: w.queued, lambda w: w.notified),
    ("notification (SQLite: queued) -> agent waking (the waker: plan, reads, transition)",
     notified_or_queued, lambda w: w.waking),
    ("waking -> Claude took the wake line (two tmux calls, Claude's submit)",
     lambda w: w.waking, lambda w: w.submitted),
    ("submitted -> UserPromptSubmit dispatcher starts (spawn, interpreter, orch-hook's imports)",
     lambda w: w.submitted, lambda w: w.hook_start),
    ("UserPromptSubmit dispatch (on PostgreSQL by the host's supervisor: the hand-over;"
     " plugins, claim, render, record)", lambda w: w.hook_start, lambda w: w.hook_end),
    ("hook recorded -> request at the stand-in (reply, Claude builds and sends)",
     lambda w: w.hook_end, lambda w: w.received),
    ("**total: `orch send` start -> text in the request**",
     lambda w: w.start, lambda w: w.received),
    ("(`orch send` start -> its process exits)", lambda w: w.start, lambda w: w.cli_exit),
]  # fmt: skip


def model_tables(wakes: dict[Route, list[Wake]]) -> str:
    lines = ["| wake-up of an idle agent | median ms | p90 ms | min ms | max ms |",
             "|---|---|---|---|---|"]  # fmt: skip
    for route, done in wakes.items():
        totals = sorted(w.total_ms for w in done)
        lines.append(f"| {route.label} | {statistics.median(totals):.1f} | "
                     f"{pctl(totals, 0.9):.1f} | {totals[0]:.1f} | {totals[-1]:.1f} |")  # fmt: skip
    names = [route.label.split(" (")[0] for route in wakes]
    lines += ["", "| step (median / p90 ms) | " + " | ".join(names) + " |",
              "|---" * (1 + len(names)) + "|"]  # fmt: skip
    for name, since, until in STEPS:
        cells = []
        for done in wakes.values():
            values = ms(done, since, until)
            cells.append(f"{statistics.median(values):.1f} / {pctl(values, 0.9):.1f}"
                         if values else "-")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed wake-ups of each kind")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before a run")
    parser.add_argument(
        "--editable", action="store_true", help="use this venv (editable) instead of a regular one"
    )
    args = parser.parse_args()
    binary = claude_binary()
    bin_dir = Path(sys.executable).parent if args.editable else regular_venv("bench-venv")
    cluster = Cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="orch-fleet-wake-") as tmp, \
                TmuxServer() as tmux:  # fmt: skip
            panes = sorted(pane_wakes(bin_dir, cluster, args.runs, Path(tmp), tmux))
            tmux_version = tmux.version
        wakes = model_wakes(bin_dir, cluster, args.runs, args.settle)
        (server,) = cluster.admin().execute("SHOW server_version").fetchone() or ("?",)
    finally:
        cluster.stop()
    install = "editable dev venv" if args.editable else "regular install"
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL {server}, "
          f"{tmux_version}, Claude Code {claude_version(binary)} ({install}); "
          f"load average at the end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"\n{len(panes)} wake-ups, message queued on alpha -> line read in beta's pane (ms): "
          f"median {statistics.median(panes):.1f}, p90 {pctl(panes, 0.9):.1f},"
          f" min {panes[0]:.1f}, max {panes[-1]:.1f}")  # fmt: skip
    across = statistics.median(w.total_ms for w in wakes[ROUTES[0]])
    same = wakes[ROUTES[1]]
    print(f"\nClaude Code agents: {args.runs} rounds (two warm-ups more) after {args.settle:.1f} s "
          f"idle; across hosts median {across:.1f} ms (target: median <= {TARGET_MS:.0f} ms); "
          f"on the same host on PostgreSQL beta's supervisor typed the wake line in "
          f"{sum(w.by_supervisor for w in same)} of {len(same)} runs, the sender in the "
          "rest\n")  # fmt: skip
    print(model_tables(wakes))


if __name__ == "__main__":
    main()
