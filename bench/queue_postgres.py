"""orch's message queue on PostgreSQL against a hand-written ``SKIP LOCKED`` queue, side by side
in one run, on the same server.

The workload of bench/queue_throughput.py (10 agents x 1,000 messages, 200 characters each),
on a private cluster of the test kit's over 127.0.0.1, here with ``fsync=on`` and
``full_page_writes=on`` (the kit's own server runs without them). Every contender uses one
connection in one thread, one transaction per call, in a fresh database each round, with the
same ``synchronous_commit`` (``--synchronous on``, the default: every commit waits for its WAL
to reach the disk, orch's setting for ``orch send``; ``off``: orch's setting on the hook path).

- hand-written: a table ``(id, agent, body, state)`` with a partial index on the queued rows of
  each agent; ``INSERT`` each message (or 100 a transaction); then per agent, until none is
  left: one transaction ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT n`` + ``UPDATE`` to
  delivered, one ``UPDATE`` to confirmed. ``n`` is 25, what orch's 8,000-character claim takes
  of these messages (headers included), or 1.
- orch: ``Queue.send`` each message (or ``send_many``, 100 a transaction), then the queue
  plugin's hook rounds of bench/queue_throughput.py (``deliver``: confirm against the
  transcript, sweep, claim; ``render``; the text appended to a fake transcript)
  until every message is ``confirmed``; claims of 8,000 characters, or of one message.

The contenders alternate, ``--rounds`` times; the table shows each one's median round. orch runs
from the regular install in ``.cache/bench-venv``.

    .venv/bin/python bench/queue_postgres.py                     # --rounds 3 --synchronous on
    .venv/bin/python bench/queue_postgres.py --synchronous off
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from queue_throughput import BODY, HOOK_BUDGET, send_and_deliver, workload
from regular_install import regular_venv

#: Messages a hand-written claim takes: as many as orch's 8,000-character claim takes of these
#: (each counts its header too; the run prints what orch's claims took).
BATCH = 25
SEND_BATCH = 100
SERVER = "-c fsync=on -c full_page_writes=on"

TABLE = """
CREATE TABLE hw_queue (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
);
CREATE INDEX hw_queue_ready ON hw_queue (agent, id) WHERE state = 'queued'
"""
CLAIM = """
SELECT id, body FROM hw_queue WHERE agent = %s AND state = 'queued'
ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""


def run_hand_written(
    url: str, messages: list[tuple[str, str]], sync: str, claim: int, batch: int
) -> dict[str, Any]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET synchronous_commit = {sync}")
    for statement in TABLE.split(";"):
        conn.execute(statement)
    agents = sorted({agent for agent, _ in messages})
    insert = "INSERT INTO hw_queue (agent, body) VALUES (%s, %s)"
    start = time.perf_counter()
    if batch == 1:
        for agent, text in messages:
            conn.execute(insert, (agent, text))
    else:
        cur = conn.cursor()
        for i in range(0, len(messages), batch):
            with conn.transaction():
                cur.executemany(insert, messages[i : i + batch])
    sent = time.perf_counter()
    for agent in agents:
        while True:
            with conn.transaction():
                rows = conn.execute(CLAIM, (agent, claim)).fetchall()
                ids = [row[0] for row in rows]
                if ids:
                    conn.execute(
                        "UPDATE hw_queue SET state = 'delivered' WHERE id = ANY(%s)", (ids,)
                    )
            if not ids:
                break
            conn.execute("UPDATE hw_queue SET state = 'confirmed' WHERE id = ANY(%s)", (ids,))
    done = time.perf_counter()
    (confirmed,) = conn.execute(  # type: ignore[misc]
        "SELECT count(*) FROM hw_queue WHERE state = 'confirmed'"
    ).fetchone()
    if confirmed != len(messages):
        raise SystemExit(f"hand-written: {confirmed} confirmed of {len(messages)}")
    settings = _settings(conn)
    conn.close()
    return {"send": sent - start, "deliver": done - sent, "settings": settings}


def run_orch(
    url: str, folder: Path, messages: list[tuple[str, str]], sync: str, claim: int, batch: int
) -> dict[str, Any]:
    from orch_core.queue import Queue
    from orch_core.storage.postgres import PostgresStore

    store = PostgresStore(url, str(folder), durable=sync == "on")
    queue = Queue(store)
    store.execute("SELECT 1")  # connected: the other side's connection is not timed either
    sending, delivering = send_and_deliver(queue, messages, folder, claim, batch)
    confirmed, claims = store.execute(  # a claim marks its messages with one time
        "SELECT count(*), count(DISTINCT delivered) FROM messages WHERE state = 'confirmed'"
    ).fetchone() or (0, 1)
    if confirmed != len(messages):
        raise SystemExit(f"orch: {confirmed} confirmed of {len(messages)}")
    settings = _settings(store.conn)
    store.close()
    return {"send": sending, "deliver": delivering, "settings": settings,
            "per_claim": confirmed / claims}  # fmt: skip


def _settings(conn: Any) -> str:
    """The durability settings as the connection reports them."""
    shown = [
        f"{name}={conn.execute(f'SHOW {name}').fetchone()[0]}"
        for name in ("synchronous_commit", "fsync")
    ]
    return ", ".join(shown)


#: label: (who, messages a claim, messages a send transaction)
CONTENDERS = {
    "hand-written (INSERT each; claim 25 + confirm)": ("hw", BATCH, 1),
    "orch (send, hook rounds: confirm + claim a batch)": ("orch", HOOK_BUDGET, 1),
    "hand-written (INSERT each; claim 1 + confirm)": ("hw", 1, 1),
    "orch (send, hook rounds: confirm + claim one each)": ("orch", 1, 1),
    "hand-written (INSERT 100 a transaction; claim 25 + confirm)": ("hw", BATCH, SEND_BATCH),
    "orch (send_many by 100, hook rounds: confirm + claim a batch)": (
        "orch", HOOK_BUDGET, SEND_BATCH,
    ),
}  # fmt: skip


def run(cluster: Any, how: tuple[str, int, int], messages: list[tuple[str, str]], sync: str) -> Any:
    who, claim, batch = how
    url = cluster.create_database()
    try:
        if who == "hw":
            return run_hand_written(url, messages, sync, claim, batch)
        with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
            return run_orch(url, Path(tmp), messages, sync, claim, batch)
    finally:
        cluster.drop_database(url)


def inner(args: argparse.Namespace) -> None:
    """The measurement, run inside the bench venv."""
    from orch_core.testing.postgres import Cluster

    messages = workload(args.agents, args.messages)
    cluster = Cluster.start(SERVER)
    try:
        warm = messages[: len(messages) // 10]
        for how in set(CONTENDERS.values()):  # imports, the server's caches
            run(cluster, how, warm, args.synchronous)
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in CONTENDERS}
        for _ in range(args.rounds):
            for label, how in CONTENDERS.items():
                results[label].append(run(cluster, how, messages, args.synchronous))
        admin = cluster.admin()
        (version,) = admin.execute("SELECT version()").fetchone() or ("?",)
        version = str(version).split(" on ")[0]
    finally:
        cluster.stop()
    total = len(messages)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {version} over 127.0.0.1 (data in "
          f"{tempfile.gettempdir()}); load average "
          f"{', '.join(f'{n:.2f}' for n in os.getloadavg())} at the end")  # fmt: skip
    print(f"messages: {args.agents} agents x {args.messages} = {total}, {BODY} characters each;"
          f" {args.rounds} rounds, alternating; median round shown")  # fmt: skip
    first = next(iter(results.values()))[0]
    orch = results["orch (send, hook rounds: confirm + claim a batch)"][0]
    print(f"as read back: hand-written {first['settings']}; orch {orch['settings']}; "
          f"orch's claims took {orch['per_claim']:.1f} messages each, the hand-written "
          f"{BATCH}\n")  # fmt: skip
    print("| queue | send s | deliver + confirm s | total s | messages/s | orch / hand-written |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for label, rounds in results.items():
        rounds.sort(key=lambda r: r["send"] + r["deliver"])
        medians[label] = rounds[len(rounds) // 2]
    labels = list(CONTENDERS)
    for n, label in enumerate(labels):
        mid = medians[label]
        seconds = mid["send"] + mid["deliver"]
        ratio = ""
        if n % 2:  # orch's row follows its hand-written counterpart
            base = medians[labels[n - 1]]
            ratio = f"{(base['send'] + base['deliver']) / seconds:.2f}x"
        print(f"| {label} | {mid['send']:.2f} | {mid['deliver']:.2f} | {seconds:.2f} | "
              f"{total / seconds:,.0f} | {ratio} |")  # fmt: skip
    print("\n(orch / hand-written: throughput of orch's row over the row above it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000, help="per agent")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", choices=["on", "off"], default="on")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    python = regular_venv("bench-venv") / "python"
    argv = [str(python), __file__, "--inner", *sys.argv[1:]]
    raise SystemExit(subprocess.run(argv, check=False).returncode)


if __name__ == "__main__":
    main()
