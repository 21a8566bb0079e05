"""orch-hook on a machine kept busy: does the backstop stop hooks that are only slow?

The backstop ends a run 100 ms past its budget, for plugins that hold the interpreter lock. A
fleet on a small machine keeps every core busy, so each hook is slow for want of CPU, not
because a plugin is stuck. ``orch-hook`` runs as Claude Code runs it (a process, the event on
stdin), one after another beside N busy loops, and the exit codes are counted: exit 1 is the
backstop, a negative code a signal.

- warm (default): one agent gets three messages before each PostToolUse hook, plan cached;
- ``--cold``: each hook is a new agent's first SessionStart in a fresh state folder, so it
  builds the plugin plan and the database first, as after an install.

Each contender is a regular install: this checkout's in ``.cache/bench-venv``, and with
``--against REV`` orch as it was at git revision REV in ``.cache/rev-COMMIT``, its hooks
alternating with this checkout's. Each queues its messages with its own ``orch_core``.

    .venv/bin/python bench/starved_hooks.py                # --loops 0 4 8 16 32 --runs 100
    .venv/bin/python bench/starved_hooks.py --cold --loops 16 --runs 20 --against 75e034e
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from regular_install import regular_venv, revision_venv

#: Three messages for the agent, queued by the contender's own orch (untimed).
QUEUE_THREE = (
    "import os, sys; from orch_core.queue import Queue; from orch_core.storage import open_store; "
    "queue = Queue(open_store(os.environ)); "
    "[queue.send('starved:1', f'message {sys.argv[1]}.{i}') for i in range(3)]"
)


def busy() -> None:
    while True:
        pass


def event(folder: str, n: int, cold: bool) -> bytes:
    common = {"session_id": f"s{n}", "transcript_path": f"{folder}/t{n}.jsonl", "cwd": folder}
    if cold:
        return json.dumps(
            {**common, "hook_event_name": "SessionStart", "source": "startup", "model": "m"}
        ).encode()
    return json.dumps({
        **common, "hook_event_name": "PostToolUse", "tool_name": "Bash",
        "tool_input": {"command": "ls"}, "tool_response": {},
    }).encode()  # fmt: skip


def environment(folder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
    env.update(ORCH_STATE_DIR=folder, ORCH_DB=f"{folder}/orch.db",
               XDG_CONFIG_HOME=f"{folder}/config", ORCH_AGENT="starved:1")  # fmt: skip
    return env


def run(bins: dict[str, Path], loops: int, runs: int, cold: bool) -> dict[str, list[Any]]:
    """Each contender's (exit code, ms) for ``runs`` events beside ``loops`` busy loops."""
    found: dict[str, list[Any]] = {name: [] for name in bins}
    with tempfile.TemporaryDirectory() as tmp:
        warm: dict[str, str] = {}  # one state folder each, its plan cached by a first hook
        if not cold:
            for name, bin_dir in bins.items():
                folder = warm[name] = f"{tmp}/{len(warm)}"
                os.mkdir(folder)
                first = event(folder, 0, cold)
                subprocess.run([str(bin_dir / "orch-hook")], input=first, env=environment(folder),
                               capture_output=True, check=True)  # fmt: skip
        busy_loops = [multiprocessing.Process(target=busy, daemon=True) for _ in range(loops)]
        for loop in busy_loops:
            loop.start()
        try:
            for n in range(1, runs + 1):
                for name, bin_dir in bins.items():
                    folder = tempfile.mkdtemp(dir=tmp) if cold else warm[name]
                    env = environment(folder)
                    if not cold:
                        subprocess.run([str(bin_dir / "python"), "-c", QUEUE_THREE, str(n)],
                                       env=env, check=True)  # fmt: skip
                    start = time.monotonic()
                    done = subprocess.run([str(bin_dir / "orch-hook")],
                                          input=event(folder, n, cold), env=env,
                                          capture_output=True, timeout=60, check=False)  # fmt: skip
                    found[name].append((done.returncode, (time.monotonic() - start) * 1000))
        finally:
            for loop in busy_loops:
                loop.kill()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, nargs="+", default=[0, 4, 8, 16, 32])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--cold", action="store_true", help="first hooks in fresh state folders")
    parser.add_argument("--against", metavar="REV", help="also orch-hook at git revision REV")
    args = parser.parse_args()
    bins = {"this checkout": regular_venv("bench-venv")}
    if args.against:
        bins[args.against] = revision_venv(args.against)
    kind = "first hooks in fresh state folders" if args.cold else "hooks, plan cached"
    print(f"{os.cpu_count()} cores, {args.runs} {kind} for each number of busy loops\n")
    print("| orch-hook | busy loops | exit 0 | exit 1 (backstop) | other | median ms | p90 ms "
          "| max ms |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for loops in args.loops:
        for name, results in run(bins, loops, args.runs, args.cold).items():
            codes = Counter(code for code, _ in results)
            ms = sorted(t for _, t in results)
            other = sum(n for code, n in codes.items() if code not in (0, 1))
            median, p90 = ms[len(ms) // 2], ms[int(len(ms) * 0.9)]
            print(f"| {name} | {loops} | {codes[0]} | {codes[1]} | {other} | {median:.0f} | "
                  f"{p90:.0f} | {ms[-1]:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
