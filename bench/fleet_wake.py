"""A fleet across machines: from ``orch send`` on one host to the wake-up line in an idle agent's
pane on another, through the store's notification and that host's supervisor.

Two hosts on this machine (``ORCH_HOST`` alpha and beta, state folders of their own), one
database on the test kit's private PostgreSQL server (fsync off), a private tmux server. Beta's
agent is a pane whose program stamps each line typed into it; beta runs a real ``orch
supervise``, alpha sends with the real ``orch send``, one process each time. Each run puts the
agent back at its prompt (a SessionStart through the real ``orch-hook``), waits a second, sends,
and measures from the message's ``created`` (the insert, in the transaction that notifies) to
the moment the pane's program read the line: the notification, the supervisor's
``orch_wake_agent``, the idle plugin's two tmux calls. Beta's supervisor also ticks twice a
second, which wakes the agent all the same within 0.5 s: a median well under that is the
notification's doing. Two warm-up runs are not counted.

    python bench/fleet_wake.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orch_core.queue import Queue
from orch_core.storage import open_store
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import hook_script, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.postgres import Cluster
from orch_core.testing.tmux import TmuxServer

STAMPER = """
import sys, time
with open(sys.argv[1], "a", buffering=1) as out:
    out.write("ready\\n")
    for line in iter(sys.stdin.readline, ""):
        out.write(f"{time.time():.6f} {line}")
"""
AGENT = "beta/orch-test:0"


def wait(condition: object, what: str, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} after {timeout} s")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cluster = Cluster.start()
    tmux = TmuxServer()
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        root = Path(tempfile.mkdtemp(prefix="orch-fleet-wake-"))
        config = root / "config" / "orch" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(f'[orch]\ndatabase = "{cluster.create_database()}"\n')
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE"))}
        base.update(XDG_CONFIG_HOME=str(config.parent.parent), CLAUDE_PROJECT_DIR=str(root))
        hosts = {name: {**base, "ORCH_HOST": name, "ORCH_STATE_DIR": str(root / name)}
                 for name in ("alpha", "beta")}  # fmt: skip
        typed = root / "typed.log"
        pane = tmux.new_window("agent", [sys.executable, "-c", STAMPER, str(typed)])
        wait(typed.exists, "the pane's program")
        server = tmux.cmd("display-message", "-p", "#{socket_path},#{pid},0").strip()
        at_prompt = {**hosts["beta"], "TMUX": server, "TMUX_PANE": pane}
        log = open(root / "supervise.log", "ab")  # noqa: SIM115 - the process keeps it
        supervisor = subprocess.Popen([orch_script(), "supervise"], env=hosts["beta"],
                                      stdout=log, stderr=log, start_new_session=True)  # fmt: skip
        wait(lambda: lifecycle.supervisor_running(hosts["beta"]), "beta's supervisor")
        store = open_store(hosts["alpha"])
        samples = []
        for run in range(args.runs + 2):
            Queue(store).purge(AGENT)  # nothing pending: the prompt's hook wakes nobody itself
            event = json.dumps(payload("SessionStart", session_id="s-beta")).encode()
            subprocess.run([hook_script()], input=event, env=at_prompt, check=True,
                           capture_output=True, timeout=30)  # fmt: skip
            time.sleep(1.0)
            lines = len(typed.read_text().splitlines())
            sent = subprocess.run([orch_script(), "send", AGENT, f"run {run}", "--json"],
                                  env=hosts["alpha"], capture_output=True, text=True,
                                  check=True, timeout=30)  # fmt: skip
            created = json.loads(sent.stdout)["created"]
            wait(lambda lines=lines: len(typed.read_text().splitlines()) > lines, "the wake-up")
            stamp = float(typed.read_text().splitlines()[lines].split()[0])
            if run >= 2:
                samples.append((stamp - created) * 1000)
        store.close()
    finally:
        if supervisor is not None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=30)
        tmux.kill()
        cluster.stop()
    samples.sort()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {tmux.version}")  # fmt: skip
    print(f"{len(samples)} wake-ups, message queued on alpha -> line read in beta's pane (ms): "
          f"median {statistics.median(samples):.1f}, p90 {samples[int(len(samples) * 0.9)]:.1f},"
          f" min {samples[0]:.1f}, max {samples[-1]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
