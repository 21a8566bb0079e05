"""Idle wake-up latency: from starting ``orch send AGENT TEXT`` to TEXT in the model's request.

A real Claude Code session runs in a private tmux server against the stand-in Messages API on
127.0.0.1, with the hooks ``orch install`` writes. Once the agent is idle at its prompt, each run
starts ``orch send`` and stops the clock when the stand-in receives the request that carries the
text (its ``received_at``): the idle plugin types the wake line, Claude submits it, and the
UserPromptSubmit hook adds the message. Target: median at most 300 ms.

Each run is also split into steps from timestamps the pieces record themselves (the message's
``created``, Claude's transcript entry for the submitted prompt, the hook run, the request), and a
second series runs the steps of ``orch send`` one by one in a timed copy of the CLI path
(interpreter, imports, queue insert, plan, wake-up typing).

    ORCH_CLAUDE_BIN=... python bench/wake_latency.py --runs 15
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch_builtin.idle import WAKE_LINE
from regular_install import regular_venv

from orch_core.storage.store import SQLiteStore
from orch_core.testing.claude import ClaudeSession, claude_binary, wait_until
from orch_core.testing.standin import RecordedRequest, StandInAPI
from orch_core.testing.tmux import TmuxServer

TARGET_MS = 300.0

# What `orch send AGENT TEXT --json` does (orch_core.cli.run, then cli.send.quick and
# api.send), step by step with a clock; prints the step times as JSON.
TIMED_SEND = """\
import time
t = {"start": time.time()}
import json, os, sys
from orch_core.cli import send
from orch_core import paths
from orch_core.hook.context import Runtime
from orch_core.queue import Queue
t["imports"] = time.time()
queue = Queue.open(os.environ)
receipt = queue.send(sys.argv[1], sys.argv[2])
t["queued"] = time.time()
runtime = Runtime.open(os.environ, paths.project_dir(os.environ), store=queue.store)
t["plan"] = time.time()
runtime.fire("orch_message_enqueued", {"message": receipt})
t["typed"] = time.time()
print(json.dumps(t))
"""


@dataclass
class Run:
    """One wake-up, as absolute times (``time.time()``) on this machine."""

    start: float
    queued: float  # the message row's ``created``
    submitted: float  # Claude's transcript entry for the wake line
    hook_start: float  # the UserPromptSubmit dispatcher started (after interpreter and imports)
    hook_end: float  # ...and recorded its run
    received: float  # the stand-in got the request with the text
    cli_exit: float
    steps: dict[str, float] = field(default_factory=dict)  # the timed copy only

    @property
    def total_ms(self) -> float:
        return (self.received - self.start) * 1000


def pctl(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def claude_version(binary: Path) -> str:
    try:
        return str(json.loads((binary.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def iso_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def send_until_asked(
    argv: list[str], env: dict[str, str], cwd: Path, api: StandInAPI, token: str
) -> tuple[RecordedRequest, str, float]:
    """Run the sender ``argv`` and wait for the model's request that carries ``token``; that
    request, the sender's stdout, and when its process ended."""
    exited: list[float] = []
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip

    def reap() -> None:
        proc.wait()
        exited.append(time.time())

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()

    def carries(request: RecordedRequest) -> bool:
        return request.is_main_model and any(token in t for t in request.texts(-1))

    requests = api.wait_for(lambda rs: any(map(carries, rs)), 30, what="the message")
    request = next(r for r in requests if carries(r))
    out, err = proc.communicate(timeout=30)
    reaper.join(5)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed: {err}")
    return request, out, exited[0]


def wake_line_taken(transcripts: list[Path], since: float) -> float:
    """When Claude took the wake line as a prompt at ``since`` or after: the timestamp of its
    entry in one of the session ``transcripts`` (waited for, at most 10 s)."""
    found: list[float] = []

    def look() -> bool:
        for path in transcripts:
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("type") != "user" or "timestamp" not in entry:
                    continue
                content = entry.get("message", {}).get("content")
                texts = [content] if isinstance(content, str) else [
                    b.get("text") for b in content or [] if isinstance(b, dict)
                ]  # fmt: skip
                when = iso_time(entry["timestamp"])
                if WAKE_LINE in texts and when >= since - 0.001:
                    found.append(when)
                    return True
        return False

    wait_until(look, 10, "the wake line in the transcript")
    return found[0]


class Bench:
    def __init__(self, bin_dir: Path, root: Path, api: StandInAPI, tmux: TmuxServer) -> None:
        self.bin = bin_dir
        self.api = api
        self.project = root / "project"
        self.project.mkdir()
        self.hook_env = {
            "ORCH_STATE_DIR": str(root / "state"),
            "ORCH_DB": str(root / "state" / "orch.db"),
            "XDG_CONFIG_HOME": str(root / "config"),
        }
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
        self.env = {**clean, **self.hook_env}
        subprocess.run(
            [str(bin_dir / "orch"), "install", str(self.project)],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.session = ClaudeSession(
            self.project, api, tmux, home=root / "home", env=self.hook_env, name="agent"
        )
        self.store = SQLiteStore(self.hook_env["ORCH_DB"])
        self.agent = ""

    def start(self) -> None:
        self.session.start()
        pane = self.session.pane
        assert pane is not None
        shown = self.session.tmux.cmd(
            "display-message", "-p", "-t", pane, "#{session_name}:#{window_index}"
        )
        self.agent = shown.strip()
        self.session.prompt("Say hello.")
        self.wait_idle()

    def state(self) -> str | None:
        for row in self.store.agents():
            if row["id"] == self.agent:
                return str(row["state"])
        return None

    def wait_idle(self, settle: float = 0.0) -> None:
        """Idle in orch's books, the input box empty, and nothing sent to the model for a while."""

        def quiet() -> bool:
            requests = self.api.requests
            last = requests[-1].received_at if requests else 0.0
            return time.time() - last >= settle

        wait_until(lambda: self.state() == "idle" and self.session.is_ready(), 30, "idle agent")
        wait_until(quiet, 30, "a quiet agent")
        wait_until(lambda: self.state() == "idle", 5, "idle agent")

    def once(self, argv_of: Callable[[str], list[str]], settle: float) -> Run:
        self.wait_idle(settle)
        token = f"wake-{uuid.uuid4().hex}"
        text = f"bench message {token}"
        start = time.time()
        request, out, exited = send_until_asked(argv_of(text), self.env, self.project,
                                                self.api, token)  # fmt: skip
        message = self.store.conn.execute(
            "SELECT created FROM messages WHERE body = ?", (text,)
        ).fetchone()
        hook = self.hook_run(start)
        return Run(
            start=start,
            queued=float(message[0]),
            submitted=self.submitted_at(start),
            hook_start=hook[0] - hook[1] / 1000,
            hook_end=hook[0],
            received=request.received_at,
            cli_exit=exited,
            steps=json.loads(out) if out.startswith('{"start"') else {},
        )

    def hook_run(self, since: float) -> tuple[float, float]:
        def row() -> Any:
            return self.store.conn.execute(
                "SELECT ts, duration_ms FROM hook_runs WHERE event = 'UserPromptSubmit'"
                " AND ts >= ? ORDER BY id LIMIT 1",
                (since,),
            ).fetchone()

        wait_until(lambda: row() is not None, 10, "the UserPromptSubmit run")
        ts, ms = row()
        return float(ts), float(ms)

    def submitted_at(self, since: float) -> float:
        """When Claude took the wake line as a prompt: its transcript entry's timestamp."""
        (path,) = (self.session.home / ".claude" / "projects").glob(
            f"*/{self.session.session_id}.jsonl"
        )
        return wake_line_taken([path], since)


def summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    return statistics.median(values), pctl(values, 0.9), min(values), max(values)


def table(title: str, rows: list[tuple[str, list[float]]]) -> str:
    lines = [f"| {title} | median ms | p90 ms | min ms | max ms |", "|---|---|---|---|---|"]
    for name, values in rows:
        median, p90, low, high = summary(values)
        lines.append(f"| {name} | {median:.1f} | {p90:.1f} | {low:.1f} | {high:.1f} |")
    return "\n".join(lines)


def ms(
    runs: list[Run], since: Callable[[Run], float], until: Callable[[Run], float]
) -> list[float]:
    return [(until(r) - since(r)) * 1000 for r in runs]


def steps_table(runs: list[Run]) -> str:
    return table(
        "step of a wake-up (headline runs)",
        [
            ("`orch send` start -> message queued (interpreter, imports)",
             ms(runs, lambda r: r.start, lambda r: r.queued)),
            ("queued -> Claude took the wake line (plan, typing, Claude's submit)",
             ms(runs, lambda r: r.queued, lambda r: r.submitted)),
            ("submitted -> UserPromptSubmit dispatcher starts (spawn, interpreter, imports)",
             ms(runs, lambda r: r.submitted, lambda r: r.hook_start)),
            ("UserPromptSubmit dispatch (plugins, claim, render, record)",
             ms(runs, lambda r: r.hook_start, lambda r: r.hook_end)),
            ("hook recorded -> request at the stand-in (reply, Claude builds and sends)",
             ms(runs, lambda r: r.hook_end, lambda r: r.received)),
            ("**total: `orch send` start -> text in the request**",
             [r.total_ms for r in runs]),
            ("(`orch send` start -> its process exits)",
             ms(runs, lambda r: r.start, lambda r: r.cli_exit)),
        ],
    )  # fmt: skip


def timed_table(runs: list[Run]) -> str:
    def step(a: str, b: str) -> list[float]:
        return [(r.steps[b] - r.steps[a]) * 1000 for r in runs]

    return table(
        "step of `orch send` (timed copy of the CLI path)",
        [
            ("interpreter start", ms(runs, lambda r: r.start, lambda r: r.steps["start"])),
            ("imports (orch_core.cli.send, the queue)",
             step("start", "imports")),
            ("Queue.send (validate, insert, commit)", step("imports", "queued")),
            ("plan load + observers (api.notify)", step("queued", "plan")),
            ("idle plugin: idle->waking, tmux send-keys -l + Enter", step("plan", "typed")),
            ("typed -> Claude took the wake line",
             ms(runs, lambda r: r.steps["typed"], lambda r: r.submitted)),
            ("submitted -> text in the request (hook and request)",
             ms(runs, lambda r: r.submitted, lambda r: r.received)),
            ("**total**", [r.total_ms for r in runs]),
        ],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed wake-ups (default 15)")
    parser.add_argument("--timed-runs", type=int, default=10, help="runs of the timed copy")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before a run")
    parser.add_argument(
        "--editable", action="store_true", help="use this venv (editable) instead of a regular one"
    )
    args = parser.parse_args()
    binary = claude_binary()
    bin_dir = Path(sys.executable).parent if args.editable else regular_venv("wake-bench-venv")
    python = bin_dir / "python"
    with tempfile.TemporaryDirectory(prefix="orch-wake-") as tmp, StandInAPI() as api, \
            TmuxServer() as tmux:  # fmt: skip
        bench = Bench(bin_dir, Path(tmp), api, tmux)
        bench.start()
        orch = str(bin_dir / "orch")

        def cli(text: str) -> list[str]:
            return [orch, "send", bench.agent, text]

        def timed(text: str) -> list[str]:
            return [str(python), "-c", TIMED_SEND, bench.agent, text]

        for _ in range(2):  # warm-up: plan cache, page cache, Claude's first turns
            bench.once(cli, args.settle)
        runs = [bench.once(cli, args.settle) for _ in range(args.runs)]
        timed_runs = [bench.once(timed, args.settle) for _ in range(args.timed_runs)]
        (woken,) = bench.store.conn.execute("SELECT count(*) FROM messages").fetchone()
        bench.session.close()
        tmux_version = tmux.version

    totals = [r.total_ms for r in runs]
    median, p90, _, _ = summary(totals)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {tmux_version}, "
          f"Claude Code {claude_version(binary)} "
          f"({'editable dev venv' if args.editable else 'regular install'})")  # fmt: skip
    print(f"runs: {len(runs)} wake-ups with `orch send` after {args.settle:.1f} s idle, "
          f"{len(timed_runs)} with the timed copy; {woken} messages sent in all\n")  # fmt: skip
    print(f"median {median:.1f} ms, p90 {p90:.1f} ms (target: median <= {TARGET_MS:.0f} ms)\n")
    print(steps_table(runs))
    print()
    print(timed_table(timed_runs))


if __name__ == "__main__":
    main()
