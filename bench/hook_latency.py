"""orch-hook against a minimal hand-written hook, side by side in one run.

Both run as fresh processes in the same regular (non-editable) venv, on the same PostToolUse
payload, against the same SQLite file, interleaved so that machine noise hits both alike. The
hand-written hook is what a team would write without orch: python + json + sqlite3, one lookup
of the agent's row, no output. orch-hook runs with all built-in plugins on, records the run,
and answers nothing (nothing is queued). Target: median at most 1.3x the hand-written one.

    make bench            # or: python bench/hook_latency.py --runs 300
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "bench-venv"

HAND_WRITTEN = """\
import json, os, sqlite3, sys
event = json.loads(sys.stdin.buffer.read())
db = sqlite3.connect(os.environ["ORCH_DB"], timeout=0.5)
row = db.execute("SELECT state FROM agents WHERE id = ?", (os.environ["ORCH_AGENT"],)).fetchone()
"""

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


def ensure_venv() -> Path:
    """A regular install of orch, as users get it from a wheel (no editable-install finder)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--force-reinstall",
                    "--no-deps", str(ROOT)], check=True)  # fmt: skip
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    return python


def time_once(argv: list[str], payload: bytes, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, input=payload, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or done.stdout:
        raise SystemExit(f"{argv[-1]} misbehaved: exit {done.returncode}, {done.stdout!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    python = ensure_venv()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "hand_written_hook.py"
        script.write_text(HAND_WRITTEN)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
        env.update(ORCH_STATE_DIR=tmp, ORCH_DB=f"{tmp}/orch.db", ORCH_AGENT="bench:1",
                   XDG_CONFIG_HOME=f"{tmp}/config", CLAUDE_PROJECT_DIR=tmp)  # fmt: skip
        commands = {
            "hand-written hook": [str(python), str(script)],
            "orch-hook": [str(VENV / "bin" / "orch-hook")],
        }
        payload = json.dumps(PAYLOAD).encode()
        for argv in reversed(commands.values()):  # warm-up: schema, plan cache, page cache
            for _ in range(10):
                time_once(argv, payload, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(time_once(argv, payload, env))
        runs = sqlite3.connect(env["ORCH_DB"]).execute("SELECT count(*) FROM hook_runs")
        recorded = runs.fetchone()[0]
    base = statistics.median(times["hand-written hook"])
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"runs: {args.runs} each, interleaved; orch-hook recorded {recorded} runs\n")
    print("| hook | median ms | p90 ms | ratio to hand-written (median) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        values.sort()
        median, p90 = statistics.median(values), values[int(len(values) * 0.9)]
        print(f"| {name} | {median * 1000:.2f} | {p90 * 1000:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
