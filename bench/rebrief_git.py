"""The rebrief's git state, as this checkout reads it and as revision REV read it, side by side.

A compaction's rebrief reads the working copy's git state inside the SessionStart hook's
budget, so what git costs there is time the rest of the rebrief no longer has. Both
contenders' ``git_state`` run alternately in one process, on the same working copy (a fresh
one with 20 files, one changed and one new, or ``--repo``); with ``--load N``, N busy loops
run beside them, as on a machine whose agents keep it busy.

    .venv/bin/python bench/rebrief_git.py --against 75e034e            # --runs 200
    .venv/bin/python bench/rebrief_git.py --against 75e034e --load 3
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
MODULE = "plugins/builtin/orch_builtin/rebrief.py"


def module_at(rev: str, folder: str) -> ModuleType:
    """rebrief.py as it was at ``rev``, imported under a name of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{MODULE}"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(folder) / "rebrief_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rebrief_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def working_copy(folder: str) -> str:
    repo = Path(folder) / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        who = ("-c", "user.email=bench@example.com", "-c", "user.name=bench")
        subprocess.run(["git", "-C", str(repo), *who, *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "Start")
    for n in range(20):
        (repo / f"file{n}.txt").write_text(f"{n}\n")
    git("add", ".")
    git("commit", "-q", "-m", "Add the files")
    (repo / "file3.txt").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    return str(repo)


def busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--load", type=int, default=0, help="busy loops beside the runs")
    parser.add_argument("--repo", help="a working copy to read (default: a fresh one)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "plugins" / "builtin"))
    from orch_builtin import rebrief

    with tempfile.TemporaryDirectory() as tmp:
        then = module_at(args.against, tmp)
        repo = args.repo or working_copy(tmp)
        now_state, then_state = rebrief.git_state(repo, 5), then.git_state(repo, 5)
        assert now_state == then_state, (now_state, then_state)  # the same answer
        loops = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
        for loop in loops:
            loop.start()
        times: dict[str, list[float]] = {"this checkout": [], args.against: []}
        try:
            for _ in range(args.runs):
                for name, module in (("this checkout", rebrief), (args.against, then)):
                    start = time.perf_counter()
                    module.git_state(repo, 5)
                    times[name].append((time.perf_counter() - start) * 1000)
        finally:
            for loop in loops:
                loop.kill()
    print(f"{os.cpu_count()} cores, {args.load} busy loops beside, {args.runs} runs each\n")
    print("| git_state | median ms | p90 ms |\n|---|---|---|")
    for name, ms in times.items():
        ms.sort()
        print(f"| {name} | {statistics.median(ms):.2f} | {ms[int(len(ms) * 0.9)]:.2f} |")


if __name__ == "__main__":
    main()
