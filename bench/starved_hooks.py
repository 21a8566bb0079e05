"""orch-hook on a machine kept busy: does the backstop stop hooks that are only slow?

The backstop ends a run 100 ms past its budget, for plugins that hold the interpreter lock. A
fleet on a small machine keeps every core busy, so each hook is slow for want of CPU, not
because a plugin is stuck. Here one agent gets three messages before each PostToolUse hook,
``orch-hook`` runs as Claude Code runs it (a process, the event on stdin, the plan cached),
one after another beside N busy loops, and the exit codes are counted: exit 1 is the backstop.

    .venv/bin/python bench/starved_hooks.py                # --loops 0 4 8 16 32 --runs 100
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

from orch_core.queue import Queue
from orch_core.storage import open_store

HOOK = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch-hook")


def busy() -> None:
    while True:
        pass


def event(folder: str, n: int) -> bytes:
    return json.dumps({
        "session_id": f"s{n}", "transcript_path": f"{folder}/t{n}.jsonl", "cwd": folder,
        "hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_input": {"command": "ls"},
        "tool_response": {},
    }).encode()  # fmt: skip


def run(loops: int, runs: int) -> tuple[Counter[int], list[float]]:
    """Exit codes and durations (ms) of ``runs`` hooks beside ``loops`` busy loops."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
        env.update(ORCH_STATE_DIR=tmp, ORCH_DB=f"{tmp}/orch.db", XDG_CONFIG_HOME=f"{tmp}/config",
                   ORCH_AGENT="starved:1")  # fmt: skip
        subprocess.run([HOOK], input=event(tmp, 0), env=env, capture_output=True, check=True)
        queue = Queue(open_store(env))
        busy_loops = [multiprocessing.Process(target=busy, daemon=True) for _ in range(loops)]
        for loop in busy_loops:
            loop.start()
        codes: Counter[int] = Counter()
        times = []
        try:
            for n in range(1, runs + 1):
                for i in range(3):
                    queue.send("starved:1", f"message {n}.{i}")
                start = time.monotonic()
                done = subprocess.run([HOOK], input=event(tmp, n), env=env, capture_output=True,
                                      timeout=60, check=False)  # fmt: skip
                times.append((time.monotonic() - start) * 1000)
                codes[done.returncode] += 1
        finally:
            for loop in busy_loops:
                loop.kill()
        return codes, sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, nargs="+", default=[0, 4, 8, 16, 32])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {args.runs} hooks for each number of busy loops\n")
    print("| busy loops | exit 0 | exit 1 (backstop) | other | median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for loops in args.loops:
        codes, ms = run(loops, args.runs)
        other = sum(n for code, n in codes.items() if code not in (0, 1))
        print(f"| {loops} | {codes[0]} | {codes[1]} | {other} | {ms[len(ms) // 2]:.0f} | "
              f"{ms[int(len(ms) * 0.9)]:.0f} | {ms[-1]:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
