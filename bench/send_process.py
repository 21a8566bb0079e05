"""``orch send`` as a process against ``python -c`` with one sqlite3 insert, side by side.

Scripts call ``orch send`` once a message, so what a message costs them is a whole process:
the interpreter, orch's imports, the insert and its commit. Both contenders run from the same
regular (non-editable) venv, interleaved, each on a SQLite file of its own in WAL mode with
every commit fsynced:

- ``python -c``: ``import sqlite3``, connect, one ``INSERT`` of the text, commit: the least a
  program that keeps messages in SQLite does.
- ``orch send p:1 hello``: orch's real command, as a user's script runs it (the agent is known,
  so it prints one line).

Then eight parallel senders, 100 messages each, through ``orch send`` (one process a message)
and through ``Queue.send`` from eight Python processes: how long each takes, and, for the
processes, how much of a send is spent waiting for the others' write locks.

    .venv/bin/python bench/send_process.py             # --runs 40
    .venv/bin/python bench/send_process.py --importtime  # and orch send's slowest imports
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from regular_install import regular_venv

INSERT = """\
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("INSERT INTO messages (agent, body) VALUES (?, ?)", ("p:1", "hello"))
db.commit()
"""

QUEUE_SENDER = """\
import sys, time
from orch_core.queue import Queue
queue = Queue.open()
inside = 0.0
for n in range(int(sys.argv[1])):
    start = time.perf_counter()
    queue.send("p:1", f"parallel {n}")
    inside += time.perf_counter() - start
print(inside)
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed: {done.stderr.decode()}")
    return seconds


def baseline_db(folder: Path) -> str:
    path = str(folder / "plain.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, agent TEXT, body TEXT)")
    db.commit()
    db.close()
    return path


def orch_env(bin_dir: Path, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE_"))}
    env.update(ORCH_STATE_DIR=str(folder / "state"), XDG_CONFIG_HOME=str(folder / "config"),
               PATH=f"{bin_dir}:{env.get('PATH', '')}")  # fmt: skip
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--messages", type=int, default=100, help="per parallel sender")
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    bin_dir = regular_venv("bench-venv")
    python, orch = str(bin_dir / "python"), str(bin_dir / "orch")
    with tempfile.TemporaryDirectory(prefix="send-bench-") as tmp:
        folder = Path(tmp)
        env = orch_env(bin_dir, folder)
        plain = baseline_db(folder)
        # the agent is known and at work (its hooks run), as in a fleet at work
        known = ("import os; from orch_core.storage import open_store; open_store(os.environ)"
                 ".add_agent('p:1', 'working', session_id='s', project_dir=None)")  # fmt: skip
        subprocess.run([python, "-c", known], env=env, check=True)
        contenders = {
            "python -c: sqlite3 insert + commit": [python, "-c", INSERT, plain],
            "orch send p:1 hello": [orch, "send", "p:1", "hello"],
        }
        for argv in contenders.values():  # warm the page cache and orch's plan cache
            timed(argv, env)
        times: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(args.runs):
            for label, argv in contenders.items():
                times[label].append(timed(argv, env))
        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
        print(f"runs: {args.runs} each, interleaved; median and p90\n")
        print("| command | median ms | p90 ms | vs python -c |")
        print("|---|---|---|---|")
        base = statistics.median(times["python -c: sqlite3 insert + commit"])
        for label, seconds in times.items():
            seconds.sort()
            p90 = seconds[int(len(seconds) * 0.9) - 1]
            median = statistics.median(seconds)
            print(f"| `{label}` | {median * 1000:.1f} | {p90 * 1000:.1f} | "
                  f"{median / base:.2f}x |")  # fmt: skip
        print()
        parallel(python, orch, env, args.parallel, args.messages, plain)
        if args.importtime:
            importtime(python, orch, env)


def parallel(
    python: str, orch: str, env: dict[str, str], senders: int, each: int, plain: str
) -> None:
    """``senders`` at once, ``each`` messages each: through ``python -c`` inserts and through
    ``orch send``, a process a message; then through ``Queue.send`` in one process per sender
    (time inside ``send`` reported: what waiting for the others' write locks costs)."""

    def loops(argv: list[str]) -> float:
        script = f'for n in $(seq {each}); do "$@" >/dev/null || exit 1; done'
        start = time.perf_counter()
        procs = [subprocess.Popen(["sh", "-c", script, "sh", *argv], env=env)
                 for _ in range(senders)]  # fmt: skip
        if any(p.wait() != 0 for p in procs):
            raise SystemExit(f"a parallel {argv[:3]} failed")
        return time.perf_counter() - start

    insert = loops([python, "-c", INSERT, plain])
    cli = loops([orch, "send", "p:1", "parallel"])
    start = time.perf_counter()
    senders_argv = [python, "-c", QUEUE_SENDER, str(each)]
    readers = [subprocess.Popen(senders_argv, env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(senders)]  # fmt: skip
    inside = [float(p.communicate()[0]) for p in readers]
    api = time.perf_counter() - start
    alone = timed_alone(python, env, each)
    total = senders * each
    print(f"| {senders} parallel senders x {each} | wall s | ms a message |")
    print("|---|---|---|")
    print(f"| `python -c` insert + commit, one process a message | {insert:.2f} | "
          f"{insert / total * 1000:.1f} |")  # fmt: skip
    print(f"| `orch send`, one process a message | {cli:.2f} | {cli / total * 1000:.1f} |")
    print(f"| `Queue.send` in {senders} processes | {api:.2f} | {api / total * 1000:.2f} |")
    print()
    print(f"inside `Queue.send`: {statistics.median(inside):.3f} s per parallel process (median)"
          f" against {alone:.3f} s for {each} sends alone: "
          f"{(statistics.median(inside) - alone) / each * 1000:.2f} ms a send waiting for the "
          "others' locks")  # fmt: skip


def timed_alone(python: str, env: dict[str, str], each: int) -> float:
    done = subprocess.run([python, "-c", QUEUE_SENDER, str(each)], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return float(done.stdout)


def importtime(python: str, orch: str, env: dict[str, str]) -> None:
    """The slowest imports of one ``orch send`` (cumulative microseconds, top level)."""
    done = subprocess.run([python, "-X", "importtime", orch, "send", "p:1", "hello"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        _, _, total, name = [*line.replace(":", "|", 1).split("|"), "", ""][:4]
        if total.strip().isdigit() and name.startswith(" ") and not name.startswith("  "):
            rows.append((int(total), name.strip()))  # top level: one space before the name
    print("\n| top-level import of `orch send` | ms |\n|---|---|")
    for micros, name in sorted(rows, reverse=True)[:10]:
        print(f"| `{name}` | {micros / 1000:.1f} |")


if __name__ == "__main__":
    main()
