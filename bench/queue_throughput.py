"""orch's message queue against persist-queue's SQLiteAckQueue, side by side in one run.

Both move the same messages (10 agents x 1,000, 200 characters each) through a SQLite file in a
fresh temporary folder, on one connection in one thread, with the same durability: WAL journal,
``synchronous=FULL`` (every commit is fsynced; ``--synchronous NORMAL`` for both otherwise), one
commit per API call. Contenders:

- persist-queue: one ``SQLiteAckQueue`` per agent (one table each, same file); ``put`` every
  message, then ``get`` + ``ack`` one at a time until empty. Three commits per message.
- orch, as hooks deliver: ``Queue.send`` every message; then, per agent, what the queue plugin
  does in each hook (``deliver``: one read, then confirm against the session's transcript and
  claim a batch of up to 8,000 characters in one write transaction; then ``render``), with
  the rendered text appended to a fake transcript file as Claude Code would, so the next
  round's ``confirm`` finds it there. It ends when every message is ``confirmed``.
- orch, one per claim: the same with a claim budget of one message, the granularity of
  persist-queue's get + ack.
- orch, sent in batches: ``Queue.send_many`` 100 messages a transaction (``orch send --batch``
  does the same from JSON lines), then the same hook rounds as the first orch row.

After the table, what one message costs in WAL pages when sent (``wal_autocheckpoint`` off, the
WAL file's growth over 500 sends, divided by the page size plus the frame header).

The contenders alternate, ``--rounds`` times, so machine noise hits all alike; the table shows
each one's median round. orch is installed in ``.cache/bench-venv`` as users get it (regular, not
editable), next to ``persist-queue`` (pinned), which is not a dependency of orch. With
``--against REV``, orch as it was at git revision REV runs the same three ways in each round,
in a process of its own (``.cache/rev-COMMIT``).

    .venv/bin/python bench/queue_throughput.py            # --rounds 3 --synchronous FULL
    .venv/bin/python bench/queue_throughput.py --against ddb7166
    .venv/bin/python bench/queue_throughput.py --profile  # and where orch's time goes
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from regular_install import regular_venv, revision_venv

PERSIST_QUEUE = "persist-queue==1.1.0"
BODY = 200
HOOK_BUDGET = 8000


def workload(agents: int, per_agent: int) -> list[tuple[str, str]]:
    """(agent, text) in send order: agents interleaved, as messages arrive from a lead."""
    sent = []
    for i in range(per_agent):
        for a in range(agents):
            head = f"bench:{a} message {i}: "
            sent.append((f"bench:{a}", head + "x" * (BODY - len(head))))
    return sent


def run_persist_queue(folder: Path, messages: list[tuple[str, str]], sync: str) -> dict[str, Any]:
    persistqueue: Any = importlib.import_module("persistqueue")
    agents = sorted({agent for agent, _ in messages})
    queues = {
        agent: persistqueue.SQLiteAckQueue(str(folder), name=f"agent{n}", auto_commit=True)
        for n, agent in enumerate(agents)
    }
    for q in queues.values():
        q._conn.execute(f"PRAGMA synchronous={sync}")
    start = time.perf_counter()
    for agent, text in messages:
        queues[agent].put({"agent": agent, "text": text, "sender": "bench"})
    sent = time.perf_counter()
    taken = 0
    for q in queues.values():
        while True:
            try:
                item = q.get(block=False)
            except persistqueue.Empty:
                break
            q.ack(item)
            taken += 1
    done = time.perf_counter()
    acked = sum(q.acked_count() for q in queues.values())
    if taken != len(messages) or acked != len(messages):
        raise SystemExit(f"persist-queue: {taken} taken, {acked} acked of {len(messages)}")
    pragmas = _pragmas(queues[agents[0]]._conn)
    for q in queues.values():
        q.close()
    return {"send": sent - start, "deliver": done - sent, "pragmas": pragmas}


def run_orch(
    folder: Path, messages: list[tuple[str, str]], sync: str, claim_budget: int, batch: int = 1
) -> dict[str, Any]:
    from orch_core.queue import Queue
    from orch_core.storage.store import SQLiteStore

    store = SQLiteStore(str(folder / "orch.db"), durable=sync == "FULL")
    queue = Queue(store)
    sending, delivering = send_and_deliver(queue, messages, folder, claim_budget, batch)
    confirmed = queue.store.execute(
        "SELECT count(*) FROM messages WHERE state = 'confirmed'"
    ).fetchone()[0]
    if confirmed != len(messages):
        raise SystemExit(f"orch: {confirmed} confirmed of {len(messages)}")
    pragmas = _pragmas(store.conn)
    store.close()
    return {"send": sending, "deliver": delivering, "pragmas": pragmas}


def send_and_deliver(
    queue: Any, messages: list[tuple[str, str]], folder: Path, claim_budget: int, batch: int
) -> tuple[float, float]:
    """Seconds to send ``messages`` (``send`` each, or ``send_many`` by ``batch``), then to
    deliver and confirm them all in each agent's hook rounds."""
    start = time.perf_counter()
    if batch == 1:
        for agent, text in messages:
            queue.send(agent, text, sender="bench")
    else:
        for i in range(0, len(messages), batch):
            queue.send_many(
                {"agent": agent, "text": text, "sender": "bench"}
                for agent, text in messages[i : i + batch]
            )
    sent = time.perf_counter()
    for agent in sorted({agent for agent, _ in messages}):
        hook_rounds(queue, agent, folder / f"{agent}.jsonl", claim_budget)
    return sent - start, time.perf_counter() - sent


def hook_rounds(queue: Any, agent: str, transcript: Path, claim_budget: int) -> None:
    """What the queue plugin does in each of one session's hooks, until all is confirmed."""
    session = f"session-{agent}"
    while True:
        batch = queue.deliver(agent, session, transcript_path=str(transcript), budget=claim_budget)
        if batch:
            text = queue.render(batch, HOOK_BUDGET)
            with transcript.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"type": "attachment", "content": text}) + "\n")
        elif not queue.has_pending(agent):  # all confirmed
            return


def _pragmas(conn: sqlite3.Connection) -> str:
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
        conn.execute("PRAGMA synchronous").fetchone()[0]
    ]
    return f"journal_mode={journal}, synchronous={sync}"


PQ_LABEL = "persist-queue SQLiteAckQueue (put, get + ack each)"
CONTENDERS = {
    PQ_LABEL: "pq",
    "orch (send, hook rounds: confirm + claim a batch)": "orch",
    "orch (send, hook rounds: confirm + claim one each)": "orch1",
    "orch (send_many by 100, hook rounds: confirm + claim a batch)": "orch_many",
}


def run(name: str, messages: list[tuple[str, str]], sync: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        folder = Path(tmp)
        if name == "pq":
            return run_persist_queue(folder, messages, sync)
        if name == "orch_many":
            return run_orch(folder, messages, sync, HOOK_BUDGET, batch=100)
        return run_orch(folder, messages, sync, HOOK_BUDGET if name == "orch" else 1)


def inner(args: argparse.Namespace) -> None:
    """The measurement, run inside the bench venv."""
    messages = workload(args.agents, args.messages)
    if args.profile:
        profile(messages, args.synchronous)
        return
    if args.contender:  # one round of one contender, for a run --against a revision
        print(json.dumps(run(args.contender, messages, args.synchronous)))
        return
    contenders = dict(CONTENDERS)
    if args.against:  # then every round in a fresh process, this install's as the other's
        rev, python = args.against.split("=", 1)
        contenders = {label: f"{key}@{sys.executable}" for label, key in CONTENDERS.items()}
        contenders.update({label.replace("orch", f"orch at {rev}", 1): f"{key}@{python}"
                           for label, key in CONTENDERS.items() if key != "pq"})  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in contenders.values()}
    run("orch", messages[: len(messages) // 10], args.synchronous)  # warm-up: imports, cache
    run("pq", messages[: len(messages) // 10], args.synchronous)
    for _ in range(args.rounds):
        for key in contenders.values():
            if "@" in key:
                results[key].append(run_elsewhere(key, args))
            else:
                results[key].append(run(key, messages, args.synchronous))
    total = len(messages)
    fs = _filesystem(tempfile.gettempdir())
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"messages: {args.agents} agents x {args.messages} = {total}, {BODY} characters each;"
          f" {args.rounds} rounds, alternating; median round shown")  # fmt: skip
    first = {key.split("@")[0]: rounds[0] for key, rounds in results.items()}
    print(f"files: a fresh folder per round in {tempfile.gettempdir()} ({fs}); as read back: "
          f"persist-queue {first['pq']['pragmas']}, orch {first['orch']['pragmas']}")  # fmt: skip
    print()
    print("| queue | send s | deliver + confirm s | total s | messages/s | vs persist-queue |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r["send"] + r["deliver"] for r in results[contenders[PQ_LABEL]])
    for label, key in contenders.items():
        rounds = sorted(results[key], key=lambda r: r["send"] + r["deliver"])
        mid = rounds[len(rounds) // 2]
        seconds = mid["send"] + mid["deliver"]
        print(f"| {label} | {mid['send']:.2f} | {mid['deliver']:.2f} | {seconds:.2f} | "
              f"{total / seconds:,.0f} | {base / seconds:.2f}x |")  # fmt: skip
    print()
    print("| sending one message | WAL pages |")
    print("|---|---|")
    for label, pages in wal_pages(messages[:500]).items():
        print(f"| {label} | {pages:.2f} |")
    print()
    print("| delivering one message | WAL pages |")
    print("|---|---|")
    for label, pages in wal_pages_delivered(messages[:300]).items():
        print(f"| {label} | {pages:.2f} |")


def run_elsewhere(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """One round of contender ``KEY@PYTHON`` in that Python's install of orch."""
    name, python = key.split("@", 1)
    argv = [python, __file__, "--inner", "--contender", name, "--agents", str(args.agents),
            "--messages", str(args.messages), "--synchronous", args.synchronous]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wal_pages(messages: list[tuple[str, str]]) -> dict[str, float]:
    """WAL pages written per message sent, checkpoints off, for each way of sending."""
    from orch_core.queue import Queue
    from orch_core.storage.store import SQLiteStore

    def grown(db: Path, conn: sqlite3.Connection, send: Any) -> float:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        wal = Path(f"{db}-wal")
        before = wal.stat().st_size if wal.exists() else 0
        send()
        return float(wal.stat().st_size - before) / (page + 24) / len(messages)

    persistqueue: Any = importlib.import_module("persistqueue")
    found = {}
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        agents = sorted({agent for agent, _ in messages})
        queues = {a: persistqueue.SQLiteAckQueue(tmp, name=f"agent{n}", auto_commit=True)
                  for n, a in enumerate(agents)}  # fmt: skip
        conn = queues[agents[0]]._conn
        queues[agents[0]].put({"warm": True})
        found["persist-queue `put`"] = grown(
            Path(tmp) / "data.db", conn,
            lambda: [queues[a].put({"agent": a, "text": t, "sender": "bench"})
                     for a, t in messages],
        )  # fmt: skip
    for label, batch in (("orch `Queue.send`", 1), ("orch `send_many`, 100 a transaction", 100)):
        with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
            store = SQLiteStore(f"{tmp}/orch.db")
            queue = Queue(store)
            queue.send("warm:1", "warm")

            def send(queue: Any = queue, batch: int = batch) -> None:
                for i in range(0, len(messages), batch):
                    queue.send_many({"agent": a, "text": t, "sender": "bench"}
                                    for a, t in messages[i : i + batch])  # fmt: skip

            found[label] = grown(Path(f"{tmp}/orch.db"), store.conn, send)
            store.close()
    return found


def wal_pages_delivered(messages: list[tuple[str, str]]) -> dict[str, float]:
    """WAL pages written per message taken, checkpoints off: persist-queue's ``get`` + ``ack``
    against orch's hook rounds of one message each (a commit each, of the confirmation of the
    message before and the claim of the next)."""
    from orch_core.queue import Queue
    from orch_core.storage.store import SQLiteStore

    def pages(wal: Path, conn: sqlite3.Connection, take: Any) -> float:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        before = wal.stat().st_size
        taken: int = take()
        return float(wal.stat().st_size - before) / (page + 24) / taken

    persistqueue: Any = importlib.import_module("persistqueue")
    found = {}
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        q = persistqueue.SQLiteAckQueue(tmp, auto_commit=True)
        for agent, text in messages:
            q.put({"agent": agent, "text": text, "sender": "bench"})

        def get_ack() -> int:
            taken = 0
            while True:
                try:
                    q.ack(q.get(block=False))
                except persistqueue.Empty:
                    return taken
                taken += 1

        found["persist-queue `get` + `ack`"] = pages(Path(tmp) / "data.db-wal", q._conn, get_ack)
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        store = SQLiteStore(f"{tmp}/orch.db")
        queue = Queue(store)
        agent = messages[0][0]
        queue.send_many({"agent": agent, "text": t, "sender": "bench"} for _, t in messages)

        def rounds() -> int:
            hook_rounds(queue, agent, Path(tmp) / "t.jsonl", 1)
            return len(messages)

        found["orch, a hook round a message"] = pages(Path(f"{tmp}/orch.db-wal"), store.conn,
                                                      rounds)  # fmt: skip
        store.close()
    return found


def profile(messages: list[tuple[str, str]], sync: str) -> None:
    """Where orch's time goes: each SQL statement's share (execute + fetch, COMMIT is where
    the fsync happens), then cProfile's top functions."""
    import cProfile
    import pstats
    from unittest import mock

    from orch_core.storage.store import SQLiteStore

    connect = SQLiteStore._connect
    for key in ("orch", "orch1"):
        stats: dict[str, list[float]] = {}

        def timed(store: SQLiteStore, stats: dict[str, list[float]] = stats) -> Any:
            return TimedConnection(connect(store), stats)

        profiler = cProfile.Profile()
        with mock.patch.object(SQLiteStore, "_connect", timed):
            profiler.enable()
            result = run(key, messages, sync)
            profiler.disable()
        total = result["send"] + result["deliver"]
        print(f"## {key}: send {result['send']:.2f} s, deliver + confirm "
              f"{result['deliver']:.2f} s (under the profiler)\n")  # fmt: skip
        print("| SQL statement | calls | total s | share | ms per call |")
        print("|---|---|---|---|---|")
        for sql, (calls, seconds) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"| `{sql}` | {calls:.0f} | {seconds:.2f} | {seconds / total:.0%} | "
                  f"{seconds / calls * 1000:.3f} |")  # fmt: skip
        print()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)


class TimedConnection:
    """A sqlite3 connection that adds up the time spent in each statement, fetches included."""

    def __init__(self, conn: sqlite3.Connection, stats: dict[str, list[float]]) -> None:
        self._conn = conn
        self._stats = stats

    def execute(self, sql: str, args: Any = ()) -> Any:
        key = " ".join(sql.split())[:60]
        entry = self._stats.setdefault(key, [0.0, 0.0])
        start = time.perf_counter()
        cursor = self._conn.execute(sql, args)
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return TimedCursor(cursor, entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class TimedCursor:
    def __init__(self, cursor: sqlite3.Cursor, entry: list[float]) -> None:
        self._cursor = cursor
        self._entry = entry

    def fetchone(self) -> Any:
        start = time.perf_counter()
        row = self._cursor.fetchone()
        self._entry[1] += time.perf_counter() - start
        return row

    def fetchall(self) -> Any:
        start = time.perf_counter()
        rows = self._cursor.fetchall()
        self._entry[1] += time.perf_counter() - start
        return rows

    def __iter__(self) -> Any:
        return iter(self.fetchall())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _filesystem(path: str) -> str:
    """The filesystem type holding ``path`` (fsync costs differ widely between them)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                _, mount, fstype, *_ = line.split()
                if path.startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000, help="per agent")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--profile", action="store_true", help="cProfile orch instead")
    parser.add_argument("--against", metavar="REV", help="also orch as it was at git revision REV")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=sorted(CONTENDERS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    python = regular_venv("bench-venv", PERSIST_QUEUE) / "python"
    argv = [str(python), __file__, "--inner", "--agents", str(args.agents),
            "--messages", str(args.messages), "--rounds", str(args.rounds),
            "--synchronous", args.synchronous]  # fmt: skip
    if args.profile:
        argv.append("--profile")
    if args.against:
        argv += ["--against", f"{args.against}={revision_venv(args.against) / 'python'}"]
    raise SystemExit(subprocess.run(argv, check=False).returncode)


if __name__ == "__main__":
    main()
