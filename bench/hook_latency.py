"""orch-hook against a minimal hand-written hook, side by side in one run.

All run as fresh processes in the same regular (non-editable) venv, on the same PostToolUse
payload, against the same SQLite file, interleaved so that machine noise hits all alike. The
hand-written hook is what a team would write without orch: python + json + sqlite3, one lookup
of the agent's row, no output. orch-hook runs with all built-in plugins on and records the run,
in two cases:

- 0 pending: nothing is queued for the agent, so it answers nothing (the queue plugin's one
  indexed read). Target: median at most 1.3x the hand-written one.
- 10 pending: just before each timed call, outside the timing, 10 messages of 200 characters
  are queued for a fresh agent id (one per call, so every call finds exactly 10 queued and
  nothing in flight); the timed hook confirms (nothing), sweeps, claims all 10, renders them and
  prints them as additionalContext (checked: all 10 ids, in order).

With ``--store postgresql`` the store is a PostgreSQL database over 127.0.0.1 (``--url``, else
a private cluster started by the test kit, fsync off), and the hand-written hook is python +
json + psycopg: it connects to the same database and does the one indexed read orch does when
nothing is pending (does this agent have messages queued or in flight?), no output. A fourth
row is the same hook ending with ``os._exit(0)``: orch-hook skips the interpreter's teardown
that way, which with psycopg loaded is worth tens of milliseconds. Two more rows are orch-hook
in a state folder whose host runs ``orch supervise`` (same database): the hook hands the event
to it over the state folder's socket and never imports psycopg (warm answers, README).

With ``--against REV`` orch-hook as it was at git revision REV runs too, interleaved with the
others (a regular install of that commit, built once into ``.cache``; a state folder and SQLite
file of its own, where that revision queues the 10 pending): a change to the hook path,
measured side by side.

    make bench            # or: python bench/hook_latency.py --runs 300
    python bench/hook_latency.py --against 3c8810e
    python bench/hook_latency.py --store postgresql [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from regular_install import regular_venv, revision_venv

HAND_WRITTEN = """\
import json, os, sqlite3, sys
event = json.loads(sys.stdin.buffer.read())
db = sqlite3.connect(os.environ["ORCH_DB"], timeout=0.5)
row = db.execute("SELECT state FROM agents WHERE id = ?", (os.environ["ORCH_AGENT"],)).fetchone()
"""

HAND_WRITTEN_PG = """\
import json, os, sys
import psycopg
event = json.loads(sys.stdin.buffer.read())
db = psycopg.connect(os.environ["ORCH_DB"], autocommit=True)
row = db.execute(
    "SELECT 1 FROM messages WHERE agent = %s AND state IN ('queued', 'delivered')"
    " AND (state = 'queued' OR session_id IS NOT NULL) LIMIT 1",
    (os.environ["ORCH_AGENT"],),
).fetchone()
"""

BASE = "hand-written hook"
NO_TEARDOWN = "hand-written hook, os._exit(0) at its end"

PAYLOAD = {
    "hook_event_name": "PostToolUse",
    "session_id": "bench-session",
    "transcript_path": "/nonexistent/transcript.jsonl",
    "cwd": "/nonexistent/project",
    "tool_name": "Bash",
    "tool_input": {"command": "ls"},
    "tool_response": {"stdout": "README.md\n", "stderr": "", "interrupted": False},
    "tool_use_id": "toolu_bench",
}


def time_once(
    argv: list[str], payload: bytes, env: dict[str, str], expect: list[str] | None = None
) -> float:
    """Seconds for one run; it must exit 0 and print nothing, or exactly ``expect`` (message
    ids, in order) as its additionalContext."""
    start = time.perf_counter()
    done = subprocess.run(argv, input=payload, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    given = re.findall(r"\[orch message (m[0-9a-z]+) from ", done.stdout.decode())
    if done.returncode != 0 or (given != expect if expect else done.stdout):
        raise SystemExit(f"{argv[-1]} misbehaved: exit {done.returncode}, {done.stdout!r}")
    return elapsed


QUEUE_TEN = """\
import json, os, sys
from orch_core.queue import Queue
from orch_core.storage import open_store

store = open_store(os.environ)
queue = Queue(store)
print(json.dumps([queue.send(sys.argv[1], f"{i:02d} " + "x" * 197, sender="bench")["id"]
                  for i in range(10)]))
store.close()
"""


def queue_ten(python: Path, env: dict[str, str], agent: str) -> list[str]:
    """Queue 10 messages of 200 characters for ``agent`` (as ``orch send`` would) with the orch
    of ``python`` (an earlier revision's queues into its own store); their ids."""
    done = subprocess.run([str(python), "-c", QUEUE_TEN, agent], env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return list(json.loads(done.stdout))


def start_supervisor(venv_bin: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``orch supervise`` for the state folder of ``env``, once it answers on its socket."""
    from orch_core.hook import warm

    process = subprocess.Popen([str(venv_bin / "orch"), "supervise"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while not os.path.exists(warm.socket_path(env)):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("orch supervise did not start answering")
        time.sleep(0.05)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a private one)")
    parser.add_argument("--against", metavar="REV", help="also orch-hook as it was at git "
                        "revision REV (a state folder of its own)")  # fmt: skip
    args = parser.parse_args()
    venv_bin = regular_venv("bench-venv")
    earlier = (args.against, revision_venv(args.against)) if args.against else None
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.store == "sqlite":
            database, hand_written = f"{tmp}/orch.db", {BASE: HAND_WRITTEN}
        else:
            from orch_core.testing.postgres import Cluster

            if args.url:
                database = args.url
            else:
                cluster = Cluster.start()
                database = cluster.create_database()
            hand_written = {BASE: HAND_WRITTEN_PG, NO_TEARDOWN: HAND_WRITTEN_PG + "os._exit(0)\n"}
        try:
            times, counts, server = measure(venv_bin, tmp, database, hand_written, args.runs,
                                            earlier)  # fmt: skip
        finally:
            if cluster is not None:
                cluster.stop()
    base = statistics.median(times[BASE])
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {server}; load average "
          f"{', '.join(f'{n:.2f}' for n in os.getloadavg())}")  # fmt: skip
    print(f"runs: {args.runs} each, interleaved; orch-hook recorded {counts[0]} runs and "
          f"delivered {counts[1]} messages")  # fmt: skip
    print("0 pending: nothing queued for the agent, no output. 10 pending: 10 messages of 200 "
          "characters queued for a fresh agent just before each call (untimed); the hook "
          "claims, renders and prints all 10\n")  # fmt: skip
    print("| hook | median ms | p90 ms | ratio to hand-written (median) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        values.sort()
        median, p90 = statistics.median(values), values[int(len(values) * 0.9)]
        print(f"| {name} | {median * 1000:.2f} | {p90 * 1000:.2f} | {median / base:.2f}x |")


def measure(
    venv_bin: Path,
    tmp: str,
    database: str,
    hand_written: dict[str, str],
    runs: int,
    earlier: tuple[str, Path] | None = None,
) -> tuple[dict[str, list[float]], tuple[int, int], str]:
    """Each contender's times, interleaved; the runs orch-hook recorded and the messages it
    delivered; the store's name and version. ``earlier``: a revision and its install, whose
    orch-hook runs too, in a state folder (and SQLite file) of its own."""
    from orch_core.storage import open_store

    commands = {}
    for n, (name, text) in enumerate(hand_written.items()):
        script = Path(tmp) / f"hand_written_hook_{n}.py"
        script.write_text(text)
        commands[name] = [str(venv_bin / "python"), str(script)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
    env.update(ORCH_STATE_DIR=tmp, ORCH_DB=database, ORCH_AGENT="bench:1",
               XDG_CONFIG_HOME=f"{tmp}/config", CLAUDE_PROJECT_DIR=tmp)  # fmt: skip
    hook = [str(venv_bin / "orch-hook")]
    commands.update({"orch-hook, 0 pending": hook, "orch-hook, 10 pending": hook})
    envs = dict.fromkeys(commands, env)
    pythons: dict[str, Path] = {}  # whose orch queues the pending, where not this checkout's
    if earlier is not None:
        rev, bin_dir = earlier
        old = f"{tmp}/earlier"
        old_env = {**env, "ORCH_STATE_DIR": old, "XDG_CONFIG_HOME": f"{old}/config"}
        if database.endswith(".db"):  # a SQLite file: its own, the schema may differ
            old_env["ORCH_DB"] = f"{old}/orch.db"
        for pending_now in ("0 pending", "10 pending"):
            name = f"orch-hook at {rev}, {pending_now}"
            commands[name] = [str(bin_dir / "orch-hook")]
            envs[name] = old_env
            pythons[name] = bin_dir / "python"
    supervisor = None
    if not database.endswith(".db"):  # a server store: also answered by the host's supervisor
        warm = f"{tmp}/warm"
        warm_env = {**env, "ORCH_STATE_DIR": warm, "XDG_CONFIG_HOME": f"{warm}/config"}
        for pending_now in ("0 pending", "10 pending"):
            name = f"orch-hook, {pending_now}, the host's supervisor answering"
            commands[name] = hook
            envs[name] = warm_env
        supervisor = start_supervisor(venv_bin, warm_env)
    payload = json.dumps(PAYLOAD).encode()
    pending = 0

    def once(name: str, argv: list[str]) -> float:
        """One timed run; for the pending cases, queue 10 fresh messages first, untimed."""
        nonlocal pending
        if "10 pending" not in name:
            return time_once(argv, payload, envs[name])
        pending += 1
        agent = f"bench:pending-{pending}"
        ids = queue_ten(pythons.get(name, venv_bin / "python"), envs[name], agent)
        return time_once(argv, payload, {**envs[name], "ORCH_AGENT": agent}, expect=ids)

    try:
        for name, argv in reversed(commands.items()):  # warm-up: schema, plan cache, page cache
            for _ in range(10):
                once(name, argv)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(once(name, argv))
    finally:
        if supervisor is not None:
            supervisor.terminate()
            supervisor.wait(timeout=30)
    store = open_store(env)
    try:
        recorded = store.execute("SELECT count(*) FROM hook_runs").fetchone()[0]
        delivered = store.execute(
            "SELECT count(*) FROM messages WHERE state = 'delivered'"
        ).fetchone()[0]
        if store.dialect == "sqlite":
            server = f"SQLite {sqlite3.sqlite_version}"
        else:
            from orch_core.storage.postgres import public

            version = store.execute("SELECT version()").fetchone()[0].split(" on ")[0]
            server = f"{version} at {public(database)}"
    finally:
        store.close()
    return times, (recorded, delivered), server


if __name__ == "__main__":
    main()
