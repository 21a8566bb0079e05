"""``orch stats`` over a big store: 1,000,000 hook runs and 100,000 messages.

Seeds a real orch database (the core's and the plugins' tables, made by orch itself) in a fresh
temporary folder with a week of a 20-agent fleet, bulk-inserted in the shape orch writes: hook
runs in time order, with each plugin's outcome (0.5% failures, some timeouts and backstop kills,
compactions); messages in every band with their delivery and confirmation events, some pending;
recoveries, alerts, agents in every state, and the rebrief plugin's rebriefs and activity. Then
it times, each the median of ``--rounds``:

- summing the week's hook runs into hours once (``orch supervise`` does it hour by hour; a store
  upgraded to this version holds at most 20,000 runs, which is what is summed then);
- ``metrics.report`` in process, for windows of 1 hour, 1 day and the whole week, and one agent's
  week;
- ``orch stats --json`` as a process, the same windows.

The store keeps only the newest 20,000 hook runs in normal use (their hourly sums stay): a
million kept runs is the worst case, not the usual one.

    .venv/bin/python bench/stats_scale.py              # --runs 1000000 --messages 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orch_core.hook.context import Runtime
from orch_core.ops import fleet, metrics
from orch_core.storage.store import SQLiteStore
from orch_core.testing.kit import orch_script

DAY = 86400
AGENTS = [f"fleet:{i}" for i in range(20)]
#: Events in the proportions a working agent fires them, with the plugins each one calls.
EVERY = ("rebrief", "presence", "queue")
EVENTS = [("PreToolUse", 40, ("presence", "queue")), ("PostToolUse", 40, EVERY),
          ("UserPromptSubmit", 6, EVERY), ("Stop", 6, ("queue",)), ("SessionStart", 1, EVERY),
          ("Notification", 3, ("presence", "auto_restart")), ("SubagentStop", 4, ())]  # fmt: skip
STATES = ("busy", "idle", "needs_input", "waking", "offline", "failed")


def seed_runs(store: SQLiteStore, count: int, start: float, span: float) -> None:
    rng = random.Random(1)
    names = [name for name, weight, _ in EVENTS for _ in range(weight)]
    plugins_of = {name: plugins for name, _, plugins in EVENTS}
    batch: list[tuple[Any, ...]] = []
    compactions = len(AGENTS) * 6 * span / DAY  # six a day per agent
    every = max(1, int(count / compactions))
    with store.transaction() as tx:
        for i in range(count):
            event = "PreCompact" if i % every == every // 2 else rng.choice(names)
            outcomes = [{"plugin": p, "ms": round(rng.uniform(0.1, 5), 3), "outcome": "ok"}
                        for p in plugins_of.get(event, ("rebrief",))]  # fmt: skip
            roll = rng.random()
            if outcomes and roll < 0.005:
                outcomes[-1].update(outcome="timeout", error="still running after 0.500s budget")
            elif outcomes and roll < 0.008:
                outcomes[0].update(outcome="error", error="OperationalError: database is locked")
            elif roll < 0.0085:
                outcomes = [{"plugin": "orch", "outcome": "killed", "error": "stopped"}]
            ok = all(o["outcome"] == "ok" for o in outcomes)
            batch.append((start + span * i / count, event, rng.choice(AGENTS), "s",
                          rng.lognormvariate(3.3, 0.5), 1 if not ok and roll >= 0.008 else 0,
                          int(ok), json.dumps(outcomes)))  # fmt: skip
            if len(batch) == 50_000:
                tx.executemany(
                    "INSERT INTO hook_runs (ts, event, agent, session_id, duration_ms,"
                    " exit_code, ok, plugins) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                batch = []
        if batch:
            tx.executemany(
                "INSERT INTO hook_runs (ts, event, agent, session_id, duration_ms, exit_code,"
                " ok, plugins) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )


def seed_messages(store: SQLiteStore, count: int, start: float, span: float) -> None:
    rng = random.Random(2)
    now = start + span
    messages: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    seqs = dict.fromkeys(AGENTS, 0)
    for i in range(count):
        agent = rng.choice(AGENTS)
        seqs[agent] += 1
        created = start + span * i / count
        priority = rng.choice((0, 0, 0, 0, 5, 20, 60, 120))
        mid = f"m{i:07d}"
        delivered = created + rng.expovariate(1 / 4.0)
        attempts = 1
        if rng.random() < 0.03:  # not confirmed in time: back to the queue, delivered again
            events += [(mid, delivered, "delivered", "s"),
                       (mid, delivered + 120, "queued", "not confirmed in time")]  # fmt: skip
            delivered += 125
            attempts = 2
        confirmed = delivered + rng.uniform(0.5, 20)
        if confirmed < now - 60:
            state = "confirmed"
            events += [(mid, delivered, "delivered", "s"), (mid, confirmed, "confirmed", "found")]
            row: tuple[Any, ...] = (state, attempts, created, delivered, confirmed, "s")
        else:
            row = ("queued", 0, created, None, None, None)
        messages.append((mid, agent, seqs[agent], priority, "bench", "x" * 200, *row))
    with store.transaction() as tx:
        tx.executemany(
            "INSERT INTO messages (id, agent, seq, priority, sender, body, state, attempts,"
            " created, delivered, confirmed, session_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            messages,
        )
        tx.executemany(
            "INSERT INTO message_events (message_id, ts, state, detail) VALUES (?, ?, ?, ?)",
            events,
        )


def seed_the_rest(store: SQLiteStore, start: float, span: float) -> None:
    rng = random.Random(3)
    now = start + span
    with store.transaction() as tx:
        tx.executemany(
            "INSERT INTO agents (id, state, session_id, project_dir, first_seen, last_seen,"
            " state_changed) VALUES (?, ?, 's', '/p', ?, ?, ?)",
            [(a, STATES[i % len(STATES)], start, now, now) for i, a in enumerate(AGENTS)],
        )
        recoveries = []
        for _ in range(300):
            at = rng.uniform(start, now)
            step = rng.choice(("reprompt", "reprompt", "restart", "fresh", "give_up"))
            recoveries.append(
                (rng.choice(AGENTS), at, step, at, rng.choice(("done", "failed")), at)
            )
        tx.executemany(
            "INSERT INTO recoveries (agent, created, reason, step, due, state, started)"
            " VALUES (?, ?, 'bench', ?, ?, ?, ?)",
            recoveries,
        )
        tx.executemany(
            "INSERT INTO alerts (agent, ts, kind, message) VALUES (?, ?, 'failed', 'bench')",
            [(rng.choice(AGENTS), rng.uniform(start, now)) for _ in range(30)],
        )
        rebriefs = sorted(rng.uniform(start, now) for _ in range(len(AGENTS) * 6 * int(span / DAY)))
        tx.executemany(
            "INSERT INTO rebriefs (agent, ts, kind, branch, checkpoint_at, checkpoint_branch,"
            " checkpoint_files) VALUES (?, ?, 'compaction', 'main', ?, 'main', ?)",
            [(rng.choice(AGENTS), ts, ts - 30, json.dumps(["/p/app.py"])) for ts in rebriefs],
        )
        tx.executemany(
            "INSERT INTO activity (agent, ts, kind, tool, target, ok) VALUES (?, ?, 'tool',"
            " 'Edit', '/p/app.py', 1)",
            [(a, now - 3600 + i * 10.0) for a in AGENTS for i in range(200)],
        )


def median_seconds(action: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="orch-stats-"))
    try:
        measure(folder, args)
    finally:
        shutil.rmtree(folder)


def measure(folder: Path, args: argparse.Namespace) -> None:
    project = folder / "project"
    (project / ".claude").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE", "TMUX"))},
        "ORCH_STATE_DIR": str(folder / "state"),
        "CLAUDE_PROJECT_DIR": str(project),
        "XDG_CONFIG_HOME": str(folder / "config"),
    }
    store = SQLiteStore(str(folder / "state" / "orch.db"))
    runtime = Runtime.open(env, str(project), store=store)  # the core's and plugins' tables
    now = time.time()
    span = args.days * DAY
    started = time.perf_counter()
    seed_runs(store, args.runs, now - span, span)
    seed_messages(store, args.messages, now - span, span)
    seed_the_rest(store, now - span, span)
    seeded = time.perf_counter() - started
    size = os.path.getsize(store.path) / 1e6
    print(f"seeded {args.runs:,} hook runs, {args.messages:,} messages over {args.days} days in "
          f"{seeded:.1f} s ({size:.0f} MB)")  # fmt: skip

    started = time.perf_counter()
    summed = metrics.roll_up(store, now)
    print(f"summed {summed:,} runs into hours once: {time.perf_counter() - started:.2f} s")
    hours = store.execute("SELECT count(*) FROM run_hours").fetchone()[0]
    print(f"hourly rows: {hours:,} per event")

    windows = [("1h", 3600.0, None), ("1d", float(DAY), None), (f"{args.days}d", float(span), None),
               (f"{args.days}d, one agent", float(span), AGENTS[0])]  # fmt: skip
    print(
        f"\n| window | metrics.report (median of {args.rounds}) | orch stats --json as a process |"
    )
    print("|---|---|---|")
    for label, seconds, agent in windows:
        in_process = median_seconds(
            lambda s=seconds, a=agent: metrics.report(runtime, now - s, now, a), args.rounds
        )
        argv = [orch_script(), "stats", "--json", "--since", f"{int(seconds)}s"]
        if agent:
            argv += ["--agent", agent]

        def run(argv: list[str] = argv) -> None:
            subprocess.run(argv, env=env, cwd=project, check=True, capture_output=True)

        cli = median_seconds(run, args.rounds)
        print(f"| {label} | {in_process * 1000:.0f} ms | {cli * 1000:.0f} ms |")
    snapshot = median_seconds(lambda: fleet.snapshot(store, now), args.rounds)
    print(f"\nfleet.snapshot (what orch serve and orch top read each second, whatever the number "
          f"of pages): {snapshot * 1000:.0f} ms")  # fmt: skip
    result = metrics.report(runtime, now - span, now)
    waited = result["messages"]["queued_to_delivered"]["all"]
    print(f"\nwhole span: {result['hooks']['runs']:,} runs, {waited['n']:,} delivered, "
          f"queued -> delivered p50 {waited['p50']} s, p99 {waited['p99']} s")  # fmt: skip
    print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}")


if __name__ == "__main__":
    main()
