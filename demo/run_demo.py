"""The orch demo: two real Claude Code agents in tmux, with orch's hooks, on a local model.

Claude Code runs interactively in a private tmux server and talks to a stand-in for the
Messages API on 127.0.0.1 (nothing leaves the machine). ``orch install`` registers orch-hook; the
built-in plugins track the agents and deliver their messages, the contrib plugin orch-guard denies
a force-push, and a project-local plugin adds context after each tool call. Messages of several
priorities reach the busy agent at its next tool call, highest first; the idle one is woken by a
message. One agent is compacted and gets its rebrief; one started with ``orch spawn`` is killed
and restarted by the supervisor. The demo prints what reached the model (the request bodies the
stand-in received) and what orch recorded.

    make demo
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orch_builtin.idle import WAKE_LINE

from orch_core.queue import MARK
from orch_core.storage.store import SQLiteStore
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession, wait_until
from orch_core.testing.standin import RecordedRequest, StandInAPI
from orch_core.testing.tmux import TmuxServer

BIN = Path(sys.executable).parent
PLUGIN = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use(event, ctx):
    return f"[team-notes] {ctx.agent} just ran {event.tool_name}; remember to update the changelog."
"""
HOOK_ENV = ("ORCH_STATE_DIR", "ORCH_DB", "XDG_CONFIG_HOME", "PYTHONPATH")


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def orch(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "orch"), *args], env=env, capture_output=True, text=True, check=False
    )
    return (done.stdout + done.stderr).rstrip()


def show(text: str, indent: str = "  > ", width: int = 160) -> None:
    for line in text.splitlines() or [""]:
        print(f"{indent}{line[:width]}")


def after(request: RecordedRequest, index: int) -> list[str]:
    """The texts of ``messages[index:]`` that are not the conversation's opening reminders."""
    return [t for t in request.texts(index) if not t.startswith("<system-reminder>")]


def screen(session: ClaudeSession, lines: int) -> str:
    """The last ``lines`` lines of the conversation on the agent's screen (no input box)."""
    wait_until(session.is_ready, what="the prompt")
    shown = session.screen().splitlines()
    end = next(i for i in range(len(shown) - 1, -1, -1) if shown[i].strip() == PROMPT_MARK)
    kept = [line.rstrip() for line in shown[:end] if line.strip() and line.strip()[0] not in "─◐"]
    return "\n".join(kept[-lines:])


def agent_of(session: ClaudeSession) -> str:
    assert session.pane is not None
    shown = session.tmux.cmd(
        "display-message", "-p", "-t", session.pane, "#{session_name}:#{window_index}"
    )
    return shown.strip()


def state(store: SQLiteStore, agent: str) -> str | None:
    return next((str(a["state"]) for a in store.agents() if a["id"] == agent), None)


def in_transcript(session: ClaudeSession, ids: Iterable[str]) -> bool:
    """Claude writes its transcript a moment after the turn; orch confirms from it."""
    found = list((session.home / ".claude" / "projects").glob(f"*/{session.session_id}.jsonl"))
    text = found[0].read_text() if found else ""
    return all(f"{MARK}{i} " in text for i in ids)


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="orch-demo-") as tmp,
        StandInAPI() as api,
        TmuxServer() as tmux,
    ):
        root = Path(tmp)
        project, lib = root / "project", root / "lib"
        (project / ".claude").mkdir(parents=True)
        lib.mkdir()
        (lib / "team_notes.py").write_text(PLUGIN)
        (project / ".claude" / "orch.toml").write_text('[plugins]\nload = ["team_notes"]\n')
        env = {
            **os.environ,
            "ORCH_STATE_DIR": str(root / "state"),
            "ORCH_DB": str(root / "state" / "orch.db"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "PYTHONPATH": str(lib),
            "CLAUDE_PROJECT_DIR": str(project),
        }
        for args in (
            ["init", "-q", "-b", "main"],
            [
                "-c",
                "user.email=demo@example.com",
                "-c",
                "user.name=Demo",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "Start",
            ],
        ):
            subprocess.run(["git", "-C", str(project), *args], check=True)
        (project / "CLAUDE.md").write_text("Run the tests before every commit.\n")
        env["ORCH_SUPERVISE_FOR"] = "120"  # the supervisor orch spawn starts stops by itself
        step("orch install: one command, orch-hook, for every hook event")
        print(orch(env, "install", str(project)))
        print(orch(env, "plugins", "--all"))

        step("Two real Claude Code agents in one tmux server, on the stand-in model")
        hook_env = {k: env[k] for k in HOOK_ENV}
        builder = ClaudeSession(
            project, api, tmux, home=root / "home-builder", env=hook_env, name="builder"
        ).start()
        reviewer = ClaudeSession(
            project, api, tmux, home=root / "home-reviewer", env=hook_env, name="reviewer"
        ).start()
        store = SQLiteStore(env["ORCH_DB"])
        b, r = agent_of(builder), agent_of(reviewer)
        print(f"  builder is agent {b}, reviewer is agent {r} (tmux session:window)")

        step(f"builder ({b}) works; three messages arrive while its tool runs")
        push = api.reply_tool_use("Bash", {"command": "git push --force origin main"})
        work = api.reply_tool_use("Bash", {"command": "sleep 2; echo hello from the builder"})
        api.reply_text("Done: said hello, the force-push was refused, and I read my messages.")
        builder.prompt("Push the branch, then say hello.")
        builder.wait_for_requests(2)  # the force-push was refused; the sleep is starting
        sent = [
            ("0", "lead", "When you are done, update the changelog."),
            ("60", "ci", "CI is red on main: test_queue fails. Look at it first."),
            ("20", "reviewer", "I left two comments on your PR."),
        ]
        for priority, sender, text in sent:
            print(f"  $ orch send {b} {text!r} --priority {priority} --from {sender}")
            show(orch(env, "send", b, text, "--priority", priority, "--from", sender), "    ")
        requests = builder.wait_for_requests(3)
        wait_until(lambda: state(store, b) == "idle", what="builder idle")
        show(screen(builder, 8), "  | ")

        step("What reached builder's model (request bodies the stand-in received)")
        for request, tool_id in ((requests[1], push), (requests[2], work)):
            index = request.tool_result_index(tool_id) or 0
            for text in after(request, index):
                show(text)

        step(f"reviewer ({r}) finishes a turn and waits at its prompt: it is idle")
        take_turn(reviewer, store, "Wait for review requests.")
        print("  $ orch agents")
        show(orch(env, "agents"), "  ")
        print("  (pending: queued, or delivered and not yet found in the agent's transcript)")
        text = "Please review PR #42 (the queue fix); builder says it is ready."
        print(f"\n  $ orch send {r} {text!r} --priority 20 --from builder")
        show(orch(env, "send", r, text, "--priority", "20", "--from", "builder"), "    ")
        woken = reviewer.wait_for_requests(2)[-1]
        wait_until(lambda: state(store, r) == "idle", what="reviewer idle again")
        (sent_id,) = [m["id"] for m in queue(env) if m["agent"] == r]
        prompt = [unwrap(t) for t in woken.texts(last_answer(woken) + 1)]
        if WAKE_LINE not in prompt or not any(f"{MARK}{sent_id} " in t for t in prompt):
            raise SystemExit(f"demo: {r}'s model did not get the wake-up with {sent_id}: {prompt}")
        print(f"  orch typed {WAKE_LINE!r} into {r}'s pane; its prompt hook delivered:")
        show("\n".join(t for t in prompt if t != WAKE_LINE))
        show(screen(reviewer, 4), "  | ")

        step("Each agent's next prompt confirms what it was given (found in its transcript)")
        for session in (builder, reviewer):
            next_turn(session, store, env)
        wait_until(lambda: {m["state"] for m in queue(env)} == {"confirmed"}, what="confirmed")
        print("  $ orch queue")
        show(orch(env, "queue"), "  ")
        print("  $ orch agents")
        show(orch(env, "agents"), "  ")

        compaction(builder, api, store, env)
        crash_and_recovery(project, api, tmux, root, env)

        step("What orch recorded: each hook run, its agent, its plugins")
        for run in reversed(store.runs(200)):
            plugins = ", ".join(f"{p['plugin']}:{p['outcome']}" for p in run["plugins"]) or "-"
            print(
                f"  {run['event']:<18} agent={run['agent']:<12} exit={run['exit_code']} "
                f"{run['duration_ms']:6.1f} ms  {plugins}"
            )
        step("orch doctor")
        print(orch(env, "doctor", str(project)))
        step("orch stats: the fleet's numbers over the last hour")
        print(orch(env, "stats"))
        dashboard(env)
        builder.close()
        reviewer.close()
        stop_fixer(env, root)


def compaction(
    builder: ClaudeSession, api: StandInAPI, store: SQLiteStore, env: dict[str, str]
) -> None:
    """``/compact`` in builder's pane; its next request carries the rebrief, first."""
    b = agent_of(builder)
    step(f"builder ({b}) is compacted: the rebrief restores who it is and what it was doing")
    print(f"  $ orch brief {b} - --role builder   (the briefing, from stdin)")
    brief = "You build the payments service. Keep main green; small commits."
    subprocess.run(
        [str(BIN / "orch"), "brief", b, "-", "--role", "builder"],
        input=brief,
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    before = len(builder.requests())
    runs = len(store.runs(500))
    builder.prompt("/compact")
    wait_until(
        lambda: any(
            r["event"] == "SessionStart" for r in store.runs(500)[: len(store.runs(500)) - runs]
        ),
        what="SessionStart after /compact",
    )
    api.reply_text("Back on the changelog, with the CI failure first.")
    builder.prompt("Carry on.")
    request = builder.wait_for_requests(before + 1)[-1]
    rebrief = next(t for t in request.texts() if "[orch rebrief" in t)
    start = rebrief.index("[orch rebrief")
    show(rebrief[start : start + 1400])
    print("  ...")


def stops(store: SQLiteStore, agent: str) -> int:
    query = "SELECT count(*) FROM hook_runs WHERE agent = ? AND event = 'Stop'"
    return int(store.conn.execute(query, (agent,)).fetchone()[0])


def take_turn(session: ClaudeSession, store: SQLiteStore, text: str) -> None:
    """Prompt the agent and wait until its turn ended. Its state alone is no sign: it is
    ``idle`` already before the prompt's hook runs."""
    agent = agent_of(session)
    before = stops(store, agent)
    session.prompt(text)
    wait_until(
        lambda: stops(store, agent) > before and state(store, agent) == "idle",
        what=f"{agent}'s turn to end",
    )


def last_answer(request: RecordedRequest) -> int:
    """Index of the model's last answer: the messages after it are the new prompt's."""
    roles = [m.get("role") for m in request.messages]
    return max(i for i, role in enumerate(roles) if role == "assistant")


def unwrap(text: str) -> str:
    """A hook's context reaches the model inside a ``<system-reminder>``."""
    return text.removeprefix("<system-reminder>\n").removesuffix("\n</system-reminder>")


def stopped_once(store: SQLiteStore, agent: str) -> bool:
    """The agent answered a prompt (its Stop hook ran), so it has a conversation to continue."""
    query = "SELECT 1 FROM hook_runs WHERE agent = ? AND event = 'Stop'"
    return store.conn.execute(query, (agent,)).fetchone() is not None


def crash_and_recovery(
    project: Path, api: StandInAPI, tmux: TmuxServer, root: Path, env: dict[str, str]
) -> None:
    """An agent started by ``orch spawn`` is killed; the supervisor restarts it, verified."""
    from orch_core.supervisor import lifecycle
    from orch_core.supervisor import tmux as tmux_calls

    step("orch spawn starts an agent orch can restart; it is killed with SIGKILL")
    claude = ClaudeSession(project, api, tmux, home=root / "home-fixer")
    claude._write_home()
    env = {**env, "ORCH_TMUX_SOCKET": str(root / "tmux.sock")}
    pairs = [f"--env={k}={v}" for k, v in claude.environment().items()]
    command = f"{claude.binary} --allowedTools Bash"
    print("  $ orch spawn fixer --dir PROJECT --command 'claude --allowedTools Bash'")
    show(orch(env, "spawn", "fixer", "--dir", str(project), "--command", command, *pairs), "    ")
    store = SQLiteStore(env["ORCH_DB"])
    wait_until(lambda: state(store, "fixer") == "starting", what="fixer started")
    spec = lifecycle.get_spec(store, "fixer")
    assert spec is not None
    pane, socket = str(spec["pane"]), env["ORCH_TMUX_SOCKET"]
    wait_until(
        lambda: PROMPT_MARK in tmux_calls.tmux(socket, "capture-pane", "-p", "-t", pane),
        what="fixer's prompt",
    )
    api.reply_text("Looking at the flaky test.")
    tmux_calls.type_line(pane, socket, "Fix the flaky test.", env["ORCH_STATE_DIR"])
    wait_until(lambda: stopped_once(store, "fixer"), what="fixer's answer")
    pid = tmux_calls.tmux(socket, "display-message", "-p", "-t", pane, "#{pane_pid}")
    os.kill(int(pid), 9)
    print(f"  kill -9 {pid.strip()}   (the claude process of fixer)")
    wait_until(
        lambda: [h["state"] for h in lifecycle.history(store, "fixer")] == ["done"],
        timeout=60,
        what="a verified restart",
    )
    (restart,) = lifecycle.history(store, "fixer")
    print(f"  supervisor: {restart['step']} ({restart['reason']}) -> {restart['outcome']}")
    print("  $ orch agents")
    show(orch(env, "agents"), "  ")


def dashboard(env: dict[str, str]) -> None:
    """``orch serve`` on a free port, asked once for what it shows; it stays up for
    ``ORCH_DEMO_SERVE`` seconds (0 by default) so a person can open the page."""
    import time
    import urllib.request

    step("orch serve: the same fleet in a browser, live")
    server = subprocess.Popen(
        [str(BIN / "orch"), "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split("orch serve: ", 1)[-1].strip()
        with urllib.request.urlopen(f"{url}api/fleet", timeout=10) as answer:
            fleet = json.load(answer)["snapshot"]
        agents = ", ".join(f"{a['id']} ({a['state']})" for a in fleet["agents"])
        print(f"  $ orch serve   ->   {url}")
        print(f"  its /api/fleet shows: {agents}")
        keep = float(os.environ.get("ORCH_DEMO_SERVE", "0"))
        if keep > 0:
            print(f"  open {url} now: it stays up {keep:.0f} s (ORCH_DEMO_SERVE)")
            time.sleep(keep)
    finally:
        server.terminate()
        server.wait(timeout=10)


def stop_fixer(env: dict[str, str], root: Path) -> None:
    """The demo leaves nothing running: the spawned agent's tmux server and the supervisor."""
    from orch_core.supervisor import lifecycle
    from orch_core.testing.tmux import alive

    socket = ["tmux", "-S", str(root / "tmux.sock")]
    listing = subprocess.run([*socket, "list-panes", "-a", "-F", "#{pane_pid}"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    pids = listing.stdout.split()
    orch({**env, "ORCH_TMUX_SOCKET": str(root / "tmux.sock")}, "stop", "fixer")
    subprocess.run([*socket, "kill-server"], capture_output=True)
    running = lifecycle.supervisor_running(env)
    if running and running > 0:
        os.kill(running, 15)
        pids.append(str(running))
    # Both write into the demo's folder until they are gone (fixer's SessionEnd hooks too).
    wait_until(lambda: not any(alive(pid) for pid in pids), what="fixer and the supervisor to exit")


def queue(env: dict[str, str]) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = json.loads(orch(env, "queue", "--json"))
    return listing


def next_turn(session: ClaudeSession, store: SQLiteStore, env: dict[str, str]) -> None:
    """Once Claude has written the deliveries to its transcript, prompt the agent again: that
    prompt's hook confirms them."""
    agent = agent_of(session)
    ids = [m["id"] for m in queue(env) if m["agent"] == agent]
    wait_until(lambda: in_transcript(session, ids), what="the deliveries in the transcript")
    take_turn(session, store, "Thanks, that is all for now.")


if __name__ == "__main__":
    main()
