"""A fleet's first hooks after ``orch install``: prepared by install, against unprepared.

Ten agents started together in a project just installed each run a SessionStart hook at the
same moment. Before install prepared anything, those hooks met no plugin plan and no store:
each built the plan (one at a time, the others waiting for it) and set up the store's tables
(one writer at a time) within its own half-second budget, and a hook left without time went on
without the store, its agent unrecorded. ``orch install`` now builds both. Side by side in one
run, interleaved, from the same regular (non-editable) venv:

- ``unprepared``: ``orch install``, then its state folder removed: what the first hooks met
  before install prepared them.
- ``prepared``: ``orch install`` as it is.

Each round starts the hooks together and reports each one's wall time, how many agents the
store recorded, and how many hooks went on without the store (orch's log says so).

    .venv/bin/python bench/first_hooks.py             # --runs 10 --agents 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from regular_install import regular_venv

MODES = ("unprepared", "prepared")


def one_round(bin_dir: Path, folder: Path, mode: str, agents: int) -> tuple[list[float], int, int]:
    """Each hook's seconds, the agents recorded, and the hooks that went on without the store."""
    project, state = folder / "project", folder / "state"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE_"))}
    env.update(
        ORCH_STATE_DIR=str(state),
        XDG_CONFIG_HOME=str(folder / "config"),
        CLAUDE_PROJECT_DIR=str(project),
        PATH=f"{bin_dir}:{env.get('PATH', '')}",
    )
    subprocess.run([str(bin_dir / "orch"), "install", str(project)], env=env,
                   capture_output=True, check=True)  # fmt: skip
    if mode == "unprepared":
        shutil.rmtree(state)
    seconds = [0.0] * agents

    def hook(n: int) -> None:
        payload = {"hook_event_name": "SessionStart", "session_id": f"s{n}", "source": "startup",
                   "cwd": str(project), "transcript_path": str(folder / f"t{n}.jsonl")}  # fmt: skip
        start = time.perf_counter()
        argv, named = [str(bin_dir / "orch-hook")], {**env, "ORCH_AGENT": f"a{n}"}
        subprocess.run(argv, input=json.dumps(payload).encode(), env=named,
                       capture_output=True, check=True)  # fmt: skip
        seconds[n] = time.perf_counter() - start

    threads = [threading.Thread(target=hook, args=(n,)) for n in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sqlite3.connect(state / "orch.db") as db:
        recorded = db.execute("SELECT count(*) FROM agents").fetchone()[0]
    log = (state / "orch.log").read_text() if (state / "orch.log").exists() else ""
    return seconds, recorded, log.count("the store did not answer in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--agents", type=int, default=10)
    args = parser.parse_args()
    bin_dir = regular_venv("bench-venv")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    recorded = dict.fromkeys(MODES, 0)
    without = dict.fromkeys(MODES, 0)
    for _ in range(args.runs):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="first-hooks-") as tmp:
                seconds, agents, went_on = one_round(bin_dir, Path(tmp), mode, args.agents)
            times[mode] += seconds
            recorded[mode] += agents
            without[mode] += went_on
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"rounds: {args.runs} each, interleaved; {args.agents} SessionStart hooks at once\n")
    print("| first hooks | median ms | p90 ms | max ms | agents recorded | without the store |")
    print("|---|---|---|---|---|---|")
    total = args.runs * args.agents
    for mode in MODES:
        seconds = sorted(times[mode])
        p90 = seconds[int(len(seconds) * 0.9) - 1]
        median, most = statistics.median(seconds), seconds[-1]
        print(f"| {mode} | {median * 1000:.0f} | {p90 * 1000:.0f} | {most * 1000:.0f} | "
              f"{recorded[mode]} of {total} | {without[mode]} |")  # fmt: skip


if __name__ == "__main__":
    main()
