"""PostgreSQL as orch's store: what the write lock costs, and what going without it would cost.

On a private throwaway cluster (the test kit's, fsync off: the figures are about locking and
round trips, not disks), against a SQLite file in the same run:

- an empty write transaction: ``BEGIN``, the advisory lock and ``COMMIT`` (what
  ``PostgresStore.transaction`` does) against ``BEGIN`` and ``COMMIT`` alone;
- ``Queue.send`` one message a transaction, from 1 and from 4 threads at once, and the same on
  SQLite;
- orch's read-then-write pattern (the next sequence number, then the insert) from 4 threads,
  three ways: under the advisory lock; SERIALIZABLE without it (transactions PostgreSQL aborts,
  which a ``with store.transaction()`` block could not run again); READ COMMITTED without it
  (the pattern's own mistakes, here two messages given one number);
- ``orch-hook`` (this venv's) on a PostToolUse with nothing queued, all built-ins on, on each
  store, interleaved: the median of ``--hooks`` runs.

    python bench/postgres_store.py [--messages 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orch_core.queue import Queue
from orch_core.storage import open_store
from orch_core.storage.postgres import TAKE_WRITE_LOCK
from orch_core.testing.kit import hook_script
from orch_core.testing.payloads import payload
from orch_core.testing.postgres import Cluster

THREADS = 4
#: How orch's transactions begin: BEGIN and the write lock (sent with the first statement).
BEGIN_WRITE = f"BEGIN; {TAKE_WRITE_LOCK}"


def timed(action: Callable[[], object], rounds: int) -> float:
    """Median seconds of ``action``."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def in_threads(work: Callable[[int], None]) -> float:
    """Seconds for ``THREADS`` threads doing ``work(n)`` at once."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def sends(env: dict[str, str], messages: int) -> tuple[float, float]:
    """Messages a second sent one a transaction, by one thread and by ``THREADS``."""
    store = open_store(env)
    queue = Queue(store)
    start = time.perf_counter()
    for i in range(messages):
        queue.send("p:1", f"message {i}")
    alone = messages / (time.perf_counter() - start)
    store.close()

    def work(n: int) -> None:
        mine = open_store(env)
        for i in range(messages // THREADS):
            Queue(mine).send(f"p:{n}", f"message {i}")
        mine.close()

    together = (messages // THREADS * THREADS) / in_threads(work)
    return alone, together


def read_then_write(url: str, how: str, each: int) -> dict[str, Any]:
    """``THREADS`` threads each run ``each`` transactions of orch's pattern on one agent."""
    import psycopg

    outcomes = {"committed": 0, "aborted": 0, "duplicate": 0}
    lock = threading.Lock()

    def work(n: int) -> None:
        conn = psycopg.connect(url, autocommit=True)
        begin = {
            "advisory lock": BEGIN_WRITE,
            "serializable": "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "read committed": "BEGIN",
        }[how]
        for i in range(each):
            try:
                conn.execute(begin)
                (seq,) = conn.execute(  # type: ignore[misc]
                    "SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE agent = 'race'"
                ).fetchone()
                conn.execute(
                    "INSERT INTO messages (id, agent, seq, priority, body, state, created)"
                    " VALUES (%s, 'race', %s, 0, 'x', 'queued', 0)",
                    (f"{how}-{n}-{i}", seq),
                )
                conn.execute("COMMIT")
                outcome = "committed"
            except psycopg.errors.SerializationFailure:
                outcome = "aborted"
            except psycopg.errors.UniqueViolation:
                outcome = "duplicate"
            if outcome != "committed":
                conn.execute("ROLLBACK")
            with lock:
                outcomes[outcome] += 1
        conn.close()

    seconds = in_threads(work)
    return {**outcomes, "per_second": outcomes["committed"] / seconds}


def hook_medians(envs: dict[str, dict[str, str]], runs: int) -> dict[str, float]:
    """Median seconds of ``orch-hook`` on each store, runs interleaved (the first few, which
    build the plan and the tables, not counted)."""
    event = json.dumps(payload("PostToolUse")).encode()
    samples: dict[str, list[float]] = {name: [] for name in envs}
    for n in range(runs + 3):
        for name, env in envs.items():
            start = time.perf_counter()
            done = subprocess.run([hook_script()], input=event, env=env, capture_output=True)
            if done.returncode != 0:
                raise SystemExit(f"orch-hook on {name} failed: {done}")
            if n >= 3:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--hooks", type=int, default=40)
    args = parser.parse_args()
    cluster = Cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = cluster.create_database()
            pg_env = {"ORCH_DB": url, "ORCH_STATE_DIR": tmp}
            sqlite_env = {"ORCH_DB": str(Path(tmp) / "orch.db"), "ORCH_STATE_DIR": tmp}
            store = open_store(pg_env)
            store.execute("SELECT 1")  # connected, schema made
            conn = store.conn  # type: ignore[attr-defined]
            plain = timed(lambda: (conn.execute("BEGIN"), conn.execute("COMMIT")), args.rounds)
            locked = timed(lambda: (conn.execute(BEGIN_WRITE), conn.execute("COMMIT")), args.rounds)
            print(f"empty write transaction: {plain * 1e6:.0f} us plain, "
                  f"{locked * 1e6:.0f} us with the advisory lock")  # fmt: skip
            store.close()
            for name, env in (("postgresql", pg_env), ("sqlite", sqlite_env)):
                alone, together = sends(env, args.messages)
                print(f"Queue.send on {name}: {alone:,.0f} msg/s alone, "
                      f"{together:,.0f} msg/s from {THREADS} threads")  # fmt: skip
            for how in ("advisory lock", "serializable", "read committed"):
                result = read_then_write(url, how, args.messages // THREADS)
                print(f"read then write, {how}: {result['committed']} committed "
                      f"({result['per_second']:,.0f}/s), {result['aborted']} aborted, "
                      f"{result['duplicate']} given a number already taken")  # fmt: skip
            project = Path(tmp) / "project"
            project.mkdir()
            base = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
            base.update(CLAUDE_PROJECT_DIR=str(project), ORCH_AGENT="bench:1",
                        XDG_CONFIG_HOME=str(Path(tmp) / "config"))  # fmt: skip
            hooks = {
                "sqlite": {**base, "ORCH_DB": str(Path(tmp) / "hooks" / "orch.db"),
                           "ORCH_STATE_DIR": str(Path(tmp) / "hooks")},
                "postgresql": {**base, "ORCH_DB": cluster.create_database(),
                               "ORCH_STATE_DIR": str(Path(tmp) / "pg-hooks")},
            }  # fmt: skip
            medians = hook_medians(hooks, args.hooks)
            shown = ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in medians.items())
            print(f"orch-hook PostToolUse, nothing queued: {shown}")
    finally:
        cluster.stop()
    print(f"Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
