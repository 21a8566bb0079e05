"""A fleet soak: real Claude Code agents under a stream of messages, some of them killed.

N agents (default 6) are started with ``orch spawn`` in one private tmux server, each talking to
its own stand-in model on 127.0.0.1 that keeps it busy: every answer is a Bash tool call after
100-500 ms of "thinking", and now and then a text that ends the turn (the agent goes idle and
must be woken). A sender queues messages of every band for random agents through
``orch_core.api.send`` for ``--seconds``; along the way ``--kills`` agents are killed with
SIGKILL and ``orch supervise`` restarts them. Then the soak waits until every message has reached
its model (or ``--drain`` seconds pass) and reports, from what the stand-ins received:

- lost: never in a request of its agent's model;
- doubled: its header more than once in its agent's last full request (the whole conversation);
- crossed: in a request of another agent's model;
- confirmed: ``confirmed`` in orch's queue at the end;
- again after a crash: seen by the model in two sessions (delivered to a session that was
  killed before Claude wrote it down, so delivered again: at least once, by design);
- latency: from ``api.send`` to the first request of the agent's model that carries it.

It runs from a regular (non-editable) install of this checkout, as users get orch and as the
other benchmarks measure it.

    make soak        # python bench/fleet_soak.py --agents 6 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from regular_install import regular_venv

from orch_core import api
from orch_core.queue import MARK, Queue
from orch_core.storage.store import SQLiteStore
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession
from orch_core.testing.kit import orch_script
from orch_core.testing.standin import RecordedRequest, Reply, StandInAPI
from orch_core.testing.tmux import TmuxServer, alive

HEADER = re.compile(re.escape(MARK) + r"(m[0-9a-z]+) from ")
#: Priorities from every band: normal, high, critical, emergency.
PRIORITIES = (0, 5, 20, 60, 150)
CONFIG = """
[plugin.queue]
confirm_seconds = 15        # a delivery a killed session never wrote down comes back soon
[plugin.auto_restart]
backoff_base = 1
backoff_cap = 2
jitter = 0
verify_seconds = 60
max_restarts_per_hour = 20
"""


def busy_model(rng: random.Random, end_every: int) -> Any:
    """A model that keeps its agent at work: tool calls, and a turn's end now and then."""
    lock = threading.Lock()

    def respond(request: RecordedRequest) -> Reply:
        with lock:
            think = rng.uniform(0.1, 0.5)
            done = rng.randrange(end_every) == 0
        if done:
            return Reply.text("Done for now.", delay=think)
        return Reply.tool_use("Bash", {"command": "echo tick", "description": "Tick"}, delay=think)

    return respond


class Agent:
    def __init__(
        self, root: Path, index: int, env: dict[str, str], end_every: int, server: TmuxServer
    ) -> None:
        self.name = f"soak-{index}"
        self.project = root / self.name
        self.project.mkdir()
        self.model = StandInAPI(lifetime=3600, respond=busy_model(random.Random(index), end_every))
        self.model.start()
        self.env = env
        # the harness prepares HOME and Claude's environment; orch spawn starts it
        self.claude = ClaudeSession(self.project, self.model, server, home=root / f"home-{index}")
        self.claude._write_home()

    def spawn(self) -> None:
        pairs = [f"--env={k}={v}" for k, v in self.claude.environment().items()]
        command = f"{self.claude.binary} --allowedTools Bash"
        orch(self.env, "spawn", self.name, "--dir", str(self.project), "--command", command,
             "--session", "soak", *pairs)  # fmt: skip

    def pane(self, store: SQLiteStore) -> tuple[str, str | None]:
        spec = lifecycle.get_spec(store, self.name)
        assert spec is not None
        return str(spec["pane"]), spec["tmux_socket"]

    def ready(self, store: SQLiteStore) -> bool:
        pane, socket = self.pane(store)
        try:
            screen = tmux.tmux(socket, "capture-pane", "-p", "-t", pane)
        except tmux.TmuxError:
            return False
        return any(line.strip() == PROMPT_MARK for line in screen.splitlines())

    def kill(self, store: SQLiteStore) -> None:
        pane, socket = self.pane(store)
        pid = tmux.tmux(socket, "display-message", "-p", "-t", pane, "#{pane_pid}").strip()
        os.kill(int(pid), signal.SIGKILL)


def orch(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([orch_script(), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"orch {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def wait(condition: Any, what: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            print(f"  (gave up waiting for {what} after {timeout:.0f} s)", file=sys.stderr)
            return False
        time.sleep(0.2)
    return True


def first_seen(agent: Agent) -> dict[str, tuple[float, str]]:
    """Each message header in this agent's model requests: when first seen, by which session."""
    seen: dict[str, tuple[float, str]] = {}
    for request in agent.model.requests_to_main_model():
        for mid in set(HEADER.findall(request.text())):
            seen.setdefault(mid, (request.received_at, request.session_id))
    return seen


def sessions_seen(agent: Agent) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for request in agent.model.requests_to_main_model():
        for mid in set(HEADER.findall(request.text())):
            found.setdefault(mid, set()).add(request.session_id)
    return found


def main() -> None:
    if Path(sys.prefix).name != "bench-venv":  # run again from the regular install
        python = str(regular_venv("bench-venv") / "python")
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long messages are sent")
    parser.add_argument("--rate", type=float, default=2.0, help="messages a second, in all")
    parser.add_argument("--kills", type=int, default=2, help="agents killed along the way")
    parser.add_argument("--end-every", type=int, default=6, help="1 answer in N ends the turn")
    parser.add_argument("--drain", type=float, default=120.0)
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="orch-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "CLAUDE", "TMUX"))}
    env.update(ORCH_STATE_DIR=str(root / "state"), ORCH_DB=str(root / "state" / "orch.db"),
               XDG_CONFIG_HOME=str(root / "config"), ORCH_TMUX_SOCKET=str(root / "tmux.sock"),
               ORCH_SUPERVISE_FOR=str(args.seconds + args.drain + 300))  # fmt: skip
    (root / "config" / "orch").mkdir(parents=True)
    (root / "config" / "orch" / "config.toml").write_text(CONFIG)
    harness = TmuxServer()  # the harness's own; orch spawns the agents on ORCH_TMUX_SOCKET
    agents = [Agent(root, i, env, args.end_every, harness) for i in range(args.agents)]
    store = SQLiteStore(env["ORCH_DB"])
    sent: list[dict[str, Any]] = []
    kills: list[str] = []
    try:
        for agent in agents:
            agent.spawn()
        for agent in agents:
            wait(lambda a=agent: a.ready(store), f"{agent.name}'s prompt", 90)
        rng = random.Random(7)
        start = time.monotonic()
        kill_at = [args.seconds * (k + 1) / (args.kills + 1) for k in range(args.kills)]
        n = 0
        while (elapsed := time.monotonic() - start) < args.seconds:
            if kill_at and elapsed >= kill_at[0]:
                kill_at.pop(0)
                victim = rng.choice(agents)
                victim.kill(store)
                kills.append(victim.name)
            agent = rng.choice(agents)
            priority = rng.choice(PRIORITIES)
            body = f"Soak message {n} for {agent.name}: note it and carry on."
            t0 = time.time()
            (receipt,) = api.send(agent.name, body, env=env, project_dir=str(agent.project),
                                  priority=priority, sender="soak")  # fmt: skip
            sent.append({"id": receipt["id"], "agent": agent.name, "t0": t0, "priority": priority})
            n += 1
            time.sleep(max(0.0, n / args.rate - (time.monotonic() - start)))
        by_agent = {a.name: a for a in agents}

        def all_seen() -> bool:
            seen = {a.name: first_seen(a) for a in agents}
            return all(m["id"] in seen[m["agent"]] for m in sent)

        wait(all_seen, "every message in its model's requests", args.drain)
        queue = Queue(store)
        wait(lambda: all(queue.get(m["id"])["state"] == "confirmed" for m in sent),  # type: ignore[index]
             "every message confirmed", 60)  # fmt: skip
        report = tally(sent, agents, by_agent, queue, store, kills)
    finally:
        socket = ["tmux", "-S", env["ORCH_TMUX_SOCKET"]]
        panes = subprocess.run([*socket, "list-panes", "-a", "-F", "#{pane_pid}"],
                               capture_output=True, text=True, check=False).stdout  # fmt: skip
        pids = panes.split()
        pid = lifecycle.supervisor_running(env)
        if pid and pid > 0:
            os.kill(pid, signal.SIGTERM)
            pids.append(str(pid))
        subprocess.run([*socket, "kill-server"], capture_output=True, check=False)
        # Each agent's SessionEnd hook and the supervisor write to the state folder as they go.
        wait(lambda: not any(alive(p) for p in pids), "the agents and supervisor to exit", 30)
        for agent in agents:
            agent.model.stop()
        harness.kill()
        store.close()
    print_report(report, args)
    if report["lost"] or report["doubled"] or report["crossed"]:
        print(f"state kept for a look: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            sys.exit(f"soak: {root} was still written to after its agents and supervisor ended")


def tally(
    sent: list[dict[str, Any]],
    agents: list[Agent],
    by_agent: dict[str, Agent],
    queue: Queue,
    store: SQLiteStore,
    kills: list[str],
) -> dict[str, Any]:
    seen = {a.name: first_seen(a) for a in agents}
    sessions = {a.name: sessions_seen(a) for a in agents}
    last = {}
    for agent in agents:
        requests = agent.model.requests_to_main_model()
        last[agent.name] = Counter(HEADER.findall(requests[-1].text())) if requests else Counter()
    lost, doubled, crossed, again, latencies = [], [], [], [], []
    waits, carries = [], []  # send to the hook that hands it over; that hook to the request
    for m in sent:
        mid, name = m["id"], m["agent"]
        if mid not in seen[name]:
            lost.append(mid)
        else:
            latencies.append(seen[name][mid][0] - m["t0"])
            record = queue.get(mid) or {}
            handed = [e["ts"] for e in record.get("events", []) if e["state"] == "delivered"]
            if handed:
                waits.append(handed[0] - m["t0"])
                carries.append(seen[name][mid][0] - handed[0])
        if last[name][mid] > 1:
            doubled.append(mid)
        if any(mid in seen[other] for other in seen if other != name):
            crossed.append(mid)
        if len(sessions[name].get(mid, ())) > 1:
            again.append(mid)
    states = Counter(queue.get(m["id"])["state"] for m in sent)  # type: ignore[index]
    waiting = Counter(m["agent"] for m in sent if m["id"] in lost)
    agent_states = {row["id"]: row["state"] for row in store.agents()}
    restarts = store.conn.execute(
        "SELECT count(*) FROM recoveries WHERE step IN ('restart', 'fresh') AND state = 'done'"
    ).fetchone()[0]
    return {
        "agents": len(agents),
        "sent": len(sent),
        "lost": len(lost),
        "doubled": len(doubled),
        "crossed": len(crossed),
        "confirmed": states.get("confirmed", 0),
        "states": dict(states),
        "again_after_a_crash": len(again),
        "killed": kills,
        "restarts_verified": restarts,
        "latency_ms": percentiles(latencies),
        "until_a_hook_hands_it_over_ms": percentiles(waits),
        "from_that_hook_to_the_model_ms": percentiles(carries),
        "examples": {"lost": lost[:5], "doubled": doubled[:5], "crossed": crossed[:5]},
        "lost_by_agent": {name: [n, agent_states.get(name)] for name, n in waiting.items()},
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    if not values:
        return {"p50": None, "p90": None, "max": None}
    return {
        "p50": round(statistics.median(values) * 1000, 1),
        "p90": round(values[int(len(values) * 0.9)] * 1000, 1),
        "max": round(values[-1] * 1000, 1),
    }


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.as_json:
        print(json.dumps(report, indent=2))
        return
    lat = report["latency_ms"]
    print(f"{report['agents']} agents, {args.seconds:.0f} s of messages at {args.rate}/s, "
          f"{len(report['killed'])} killed ({', '.join(report['killed'])}), "
          f"{report['restarts_verified']} restarts verified")  # fmt: skip
    print("| sent | lost | doubled | crossed | confirmed | again after a crash | p50 ms | "
          "p90 ms | max ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {report['sent']} | {report['lost']} | {report['doubled']} | {report['crossed']} | "
          f"{report['confirmed']} | {report['again_after_a_crash']} | {lat['p50']} | "
          f"{lat['p90']} | {lat['max']} |")  # fmt: skip
    wait = report["until_a_hook_hands_it_over_ms"]
    carry = report["from_that_hook_to_the_model_ms"]
    print(f"send to the hook that hands it over: p50 {wait['p50']} ms, p90 {wait['p90']} ms; "
          f"that hook to the model: p50 {carry['p50']} ms, p90 {carry['p90']} ms")  # fmt: skip
    if report["confirmed"] != report["sent"]:
        print(f"states at the end: {report['states']}; not seen, by agent (count, state): "
              f"{report['lost_by_agent']}")  # fmt: skip


if __name__ == "__main__":
    main()
