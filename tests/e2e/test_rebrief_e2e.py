"""Rebrief end to end: real Claude Code, ``/compact`` typed into its pane, then the next request
the model receives holds the briefing, the branch, the uncommitted file and the recent commands,
once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orch_core.storage.store import SQLiteStore
from orch_core.testing.claude import ClaudeFactory, ClaudeSession, wait_until
from orch_core.testing.standin import RecordedRequest, StandInAPI

pytestmark = pytest.mark.claude

ORCH = os.path.join(os.path.dirname(sys.executable), "orch")
BRIEFING = "You are the release engineer of the payments team; ship version 2.4."


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)


def briefed(project: Path, tmp_path: Path, briefing: str) -> dict[str, str]:
    """orch installed in ``project`` and agent pay:1 briefed; the agent's environment."""
    env = {
        "ORCH_STATE_DIR": str(tmp_path / "state"),
        "ORCH_DB": str(tmp_path / "state" / "orch.db"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "ORCH_AGENT": "pay:1",
    }
    if os.environ.get("PYTHONPATH"):  # the hooks run the code under test, as pytest imports it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    run_env = {**os.environ, **env}
    subprocess.run([ORCH, "install", str(project)], check=True, env=run_env)
    subprocess.run([ORCH, "brief", "pay:1", "-"], input=briefing, text=True, check=True,
                   env=run_env)  # fmt: skip
    return env


def compacted(
    session: ClaudeSession, standin: StandInAPI, env: dict[str, str], prompt: str
) -> list[RecordedRequest]:
    """``prompt`` (its two replies scripted), ``/compact`` once the turn is over, then "Go on."
    answered "Continuing.": the three requests of the main model."""
    session.prompt(prompt)
    session.wait_for_requests(2)
    store = SQLiteStore(env["ORCH_DB"])

    def runs(event: str) -> int:
        return [(r["event"], r["exit_code"]) for r in store.runs(100)].count((event, 0))

    # the turn is over once its Stop hook ran: ``/compact`` then meets an idle Claude, not
    # a turn still closing
    wait_until(lambda: runs("Stop") == 1, what="the first turn's Stop")
    session.prompt("/compact")
    try:
        wait_until(lambda: runs("SessionStart") == 2, what="SessionStart after /compact")
    except TimeoutError:  # what orch saw instead (its log is printed at teardown)
        recorded = [(r["event"], r["exit_code"], r["plugins"]) for r in store.runs(100)]
        running = Path(env["ORCH_STATE_DIR"], "running")
        stopped = {p.name: p.read_text() for p in running.glob("*")}
        raise AssertionError(f"runs: {recorded}\nstopped by the backstop: {stopped}") from None
    standin.reply_text("Continuing.")
    session.prompt("Go on.")
    return session.wait_for_requests(3)


def test_the_request_after_compact_holds_the_rebrief_once(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    git(project, "init", "-q", "-b", "release-2.4")
    git(project, "-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q",
        "--allow-empty", "-m", "Start the release")  # fmt: skip
    (project / "CHANGELOG.md").write_text("2.4: faster refunds\n")
    env = briefed(project, tmp_path, BRIEFING)

    standin.reply_tool_use("Bash", {"command": "git status --short", "description": "Status"})
    standin.reply_text("The changelog is not committed yet.")
    session = claude(env=env)
    requests = compacted(session, standin, env, "Check the release state.")
    after = requests[2].text()
    assert after.count("[orch rebrief: context restored after compaction]") == 1
    assert after.count(BRIEFING) == 1
    assert "Branch release-2.4 at " in after
    assert "?? CHANGELOG.md" in after
    assert "Bash: git status --short" in after
    assert "Agent: pay:1." in after
    assert "[orch rebrief" not in requests[1].text()


def test_a_long_claude_md_leaves_the_rebrief_its_recent_activity(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    """A project whose CLAUDE.md alone fills the rebrief's budget: Claude Code puts that file
    back in the context itself after compaction, so the rebrief's copy of it is cut, not the
    recent activity, which nothing else gives back."""
    rules = "".join(f"Rule {n:03d}: keep the payments ledger balanced.\n" for n in range(250))
    assert len(rules) > 10_000
    (project / "CLAUDE.md").write_text(rules)
    env = briefed(project, tmp_path, BRIEFING)
    standin.reply_tool_use("Bash", {"command": "ls -a", "description": "List"})
    standin.reply_text("Counted.")
    session = claude(env=env)
    after = compacted(session, standin, env, "Count the refunds.")[2].text()
    assert after.count("[orch rebrief: context restored after compaction]") == 1
    assert "Rule 249: keep the payments ledger balanced." in after  # Claude Code's own copy
    assert "Before compaction: 1 tool calls (Bash 1), 0 failed." in after
    assert "Bash: ls -a" in after
    assert after.count(BRIEFING) == 1


def test_the_request_after_clear_holds_the_briefing_once(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    """``/clear`` starts a new conversation in the same Claude: the agent gets its briefing
    again, once, as a new session's (it got nothing: it no longer knew who it was)."""
    env = briefed(project, tmp_path, BRIEFING)
    standin.reply_text("Ready.")
    session = claude(env=env)
    session.prompt("Start.")
    assert session.wait_for_requests(1)[0].text().count(BRIEFING) == 1
    store = SQLiteStore(env["ORCH_DB"])
    wait_until(lambda: any(r["event"] == "Stop" for r in store.runs(100)), what="the Stop")
    session.prompt("/clear")
    wait_until(lambda: [r["event"] for r in store.runs(100)].count("SessionStart") == 2,
               what="SessionStart after /clear")  # fmt: skip
    standin.reply_text("Continuing.")
    session.prompt("Go on.")
    request = standin.wait_for_main_requests(2)[1]  # the new conversation's, its own session
    assert "Start." not in request.texts()  # (the rebrief's recent activity quotes it)
    after = request.text()
    assert after.count("[orch briefing: a new session]") == 1
    assert after.count(BRIEFING) == 1


def test_a_message_waiting_beside_a_rebrief_follows_it_whole_and_once(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    """``orch rebrief`` with a long briefing, and a long message, both answer the next
    prompt: together they would pass Claude Code's 10,000 characters, and the model would see
    only their start. The rebrief goes first, whole; the message goes back to the queue and
    reaches the model with the next hook (the turn's Stop), whole and once."""
    briefing = "".join(f"Release rule {n:03d}: check the payments ledger twice.\n"
                       for n in range(130))  # fmt: skip
    body = "".join(f"Step {n:03d} of the refund fix: run the ledger test.\n" for n in range(70))
    assert len(briefing) > 6_500 and len(body) > 3_000
    env = briefed(project, tmp_path, briefing)
    run_env = {**os.environ, **env}
    standin.reply_text("Ready.")
    session = claude(env=env)
    session.prompt("Start.")
    session.wait_for_requests(1)
    store = SQLiteStore(env["ORCH_DB"])
    wait_until(lambda: any(r["event"] == "Stop" for r in store.runs(100)), what="the Stop")

    subprocess.run([ORCH, "rebrief", "pay:1"], check=True, capture_output=True, env=run_env)
    subprocess.run([ORCH, "send", "pay:1", "-"], input=body, text=True, check=True,
                   capture_output=True, env=run_env)  # fmt: skip
    standin.reply_text("Rebriefed.")
    standin.reply_text("On the refund fix.")
    session.prompt("Go on.")
    requests = session.wait_for_requests(3)
    rebriefed = "\n".join(requests[1].texts())
    assert "<persisted-output>" not in rebriefed
    assert rebriefed.count(briefing.strip()) == 2  # at the session's start, and now
    assert body.strip() not in rebriefed
    last = "\n".join(requests[2].texts())  # the whole conversation so far
    assert "<persisted-output>" not in last
    assert last.count(briefing.strip()) == 2
    assert last.count(body.strip()) == 1
