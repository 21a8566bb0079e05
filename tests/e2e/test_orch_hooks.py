"""orch end to end: real Claude Code, hooks put in place by ``orch install``, a real tmux pane.

What is asserted is what reached the model: the request bodies the stand-in API received.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orch_core.cli import install
from orch_core.storage.store import SQLiteStore
from orch_core.testing.claude import ClaudeFactory, wait_until
from orch_core.testing.standin import RecordedRequest, StandInAPI
from orch_core.testing.tmux import TmuxServer

pytestmark = pytest.mark.claude

PLUGIN = """
from orch_core import Answer, hookimpl

@hookimpl
def orch_post_tool_use(event, ctx):
    return f"orch-e2e context for {event.tool_use_id} from agent {ctx.agent}"

@hookimpl
def orch_stop(event):
    if not event.stop_hook_active:
        return Answer(block="orch-e2e: one more thing, check the tests")

@hookimpl
def orch_subagent_stop(event):
    if not event.stop_hook_active:
        return Answer(block="orch-e2e: subagent, look once more")
"""


@pytest.fixture
def orch_env(project: Path, tmp_path: Path) -> dict[str, str]:
    """orch's state and a project-local plugin, loaded through .claude/orch.toml."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "e2e_plugin.py").write_text(PLUGIN)
    (project / ".claude").mkdir(exist_ok=True)
    (project / ".claude" / "orch.toml").write_text('[plugins]\nload = ["e2e_plugin"]\n')
    env = {
        "ORCH_STATE_DIR": str(tmp_path / "state"),
        "ORCH_DB": str(tmp_path / "state" / "orch.db"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        # the environment's own path after it: the hooks run the orch under test
        "PYTHONPATH": os.pathsep.join(p for p in (str(lib), os.environ.get("PYTHONPATH")) if p),
    }
    orch = os.path.join(os.path.dirname(sys.executable), "orch")
    subprocess.run([orch, "install", str(project)], check=True, env={**os.environ, **env})
    return env


def test_plugin_context_and_stop_block_reach_the_model(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    project: Path,
    orch_env: dict[str, str],
) -> None:
    tool_id = standin.reply_tool_use("Bash", {"command": "echo hi", "description": "Say hi"})
    standin.reply_text("done")
    standin.reply_text("checked")
    session = claude(env=orch_env)
    session.prompt("Say hi with Bash.")
    requests = session.wait_for_requests(3)

    pane = session.pane
    assert pane is not None
    agent = tmux_server.cmd("display-message", "-p", "-t", pane, "#{session_name}:#{window_index}")
    agent = agent.strip()
    second = requests[1]
    index = second.tool_result_index(tool_id)
    assert index is not None
    expected = f"orch-e2e context for {tool_id} from agent {agent}"
    assert f"PostToolUse:Bash hook additional context: {expected}" in second.texts(index + 1)
    assert second.text().count(expected) == 1

    third = requests[2]
    stop_context = "Stop hook additional context: orch-e2e: one more thing, check the tests"
    assert f"<system-reminder>\n{stop_context}\n</system-reminder>" in third.texts()
    assert third.text().count("orch-e2e: one more thing") == 1
    assert "orch-e2e: one more" not in second.text()

    store = SQLiteStore(orch_env["ORCH_DB"])

    def stops() -> int:
        return [run["event"] for run in store.runs(200)].count("Stop")

    wait_until(lambda: stops() == 2, what="the second Stop")
    (row,) = store.agents()
    assert row["id"] == agent
    assert row["session_id"] == session.session_id
    events = [run["event"] for run in reversed(store.runs(200))]
    assert events[0] == "SessionStart"
    for name in ("UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
        assert name in events
    assert events.count("Stop") == 2  # blocked once, then allowed: no loop
    assert row["state"] == "idle"
    assert all(run["ok"] for run in store.runs(200)), store.runs(200, failed=True)
    assert all(run["agent"] == agent for run in store.runs(200))


#: What the guard says when it denies.
DENIED = "orch-guard: this command matches deny rule"


def push_to_main(
    claude: ClaudeFactory,
    standin: StandInAPI,
    orch_env: dict[str, str],
    tool: str = "Bash",
    args: tuple[str, ...] = ("--allowedTools", "Bash"),
) -> tuple[RecordedRequest, int]:
    """Have the model run a forced push to main (which then touches ``pushed``) with ``tool``:
    the model's next request, and where the call's result is in it."""
    command = "git push --force origin main; touch pushed"
    tool_id = standin.reply_tool_use(tool, {"command": command, "description": "Push"})
    standin.reply_text("understood")
    session = claude(env=orch_env, args=args)
    session.prompt("Push to main.")
    second = session.wait_for_requests(2)[1]
    index = second.tool_result_index(tool_id)
    assert index is not None, "the call's result never reached the model"
    return second, index


def test_orch_guard_denies_a_forced_push_to_main_before_it_runs(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, orch_env: dict[str, str]
) -> None:
    """The guard's deny (orch-hook's JSON, exit 2) stops the call: the command never runs,
    and its reason reaches the model once, as the call's result."""
    second, index = push_to_main(claude, standin, orch_env)
    assert [t for t in second.texts(index) if DENIED in t], second.texts(index)
    assert second.text().count(DENIED) == 1
    assert not (project / "pushed").exists(), "the denied command ran"
    store = SQLiteStore(orch_env["ORCH_DB"])
    (denied,) = [run for run in store.runs(200) if run["event"] == "PreToolUse"]
    assert denied["exit_code"] == 2 and denied["ok"], denied


def test_orch_guard_denies_a_command_of_the_monitor_tool_before_it_runs(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, orch_env: dict[str, str]
) -> None:
    """Claude Code's Monitor tool runs a shell command too (its PreToolUse names the tool
    Monitor, the command in ``tool_input.command``): allowed, it ran a forced push to main
    that the guard let through."""
    second, index = push_to_main(claude, standin, orch_env, "Monitor", (
        "--permission-mode", "acceptEdits", "--allowedTools", "Bash,Monitor"))  # fmt: skip
    assert not (project / "pushed").exists(), "the denied command ran"
    assert [t for t in second.texts(index) if DENIED in t], second.texts(index)


def test_a_subagent_stop_block_reaches_the_subagent_once(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, orch_env: dict[str, str]
) -> None:
    """A plugin's block on SubagentStop keeps the subagent working, its reason shown once
    and called no error: ``decision:"block"`` would show it twice, the second time as a
    "SubagentStop hook blocking error"."""
    standin.reply_tool_use("Agent", {"description": "Check", "prompt": "Say ok.",
                                     "subagent_type": "general-purpose"})  # fmt: skip
    session = claude(env=orch_env, args=("--permission-mode", "acceptEdits",
                                         "--allowedTools", "Bash,Agent"))  # fmt: skip
    session.prompt("Check it with a subagent.")
    store = SQLiteStore(orch_env["ORCH_DB"])

    def subagent_stops() -> list[dict[str, object]]:
        return [run for run in store.runs(200) if run["event"] == "SubagentStop"]

    wait_until(lambda: len(subagent_stops()) == 2, what="the second SubagentStop")
    reason = "orch-e2e: subagent, look once more"
    (told,) = [r for r in session.requests() if reason in r.text()]
    assert told.text().count(reason) == 1, told.texts(-2)
    assert "blocking error" not in told.text()
    assert all(run["exit_code"] == 0 and run["ok"] for run in subagent_stops())


SLOW_PLUGIN = """
import time
from orch_core import hookimpl

@hookimpl
def orch_pre_tool_use(event):
    time.sleep(7)
"""


def test_a_budget_past_claudes_hook_timeout_is_refused_and_the_guard_still_denies(
    claude: ClaudeFactory,
    standin: StandInAPI,
    project: Path,
    orch_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Claude Code ends a hook after the 5 s ``orch install`` gives it and reads none of its
    reply: a budget of 8 s, with a plugin that took 7, let the guard's deny go unread and the
    command run. Such a budget is refused (the default is used), and the deny arrives."""
    (tmp_path / "lib" / "e2e_slow.py").write_text(SLOW_PLUGIN)
    (project / ".claude" / "orch.toml").write_text('[plugins]\nload = ["e2e_slow"]\n')
    config = Path(orch_env["XDG_CONFIG_HOME"], "orch", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[orch]\nbudget_ms = 8000\n")
    second, index = push_to_main(claude, standin, orch_env, "Bash", (
        "--permission-mode", "acceptEdits", "--allowedTools", "Bash"))  # fmt: skip
    assert not (project / "pushed").exists(), "the denied command ran"
    assert [t for t in second.texts(index) if DENIED in t], second.texts(index)


def test_install_writes_the_hook_claude_runs(project: Path, orch_env: dict[str, str]) -> None:
    found = install.installed_events(str(project))
    assert set(found) == set(install.INSTALLED_EVENTS)
    assert {c for commands in found.values() for c in commands} == {install.hook_command()}


def test_a_hook_path_with_spaces_runs_without_a_shell(
    claude: ClaudeFactory,
    standin: StandInAPI,
    project: Path,
    orch_env: dict[str, str],
    tmp_path: Path,
) -> None:
    odd = tmp_path / "it's a $HOME `dir`"
    odd.mkdir()
    (odd / "orch-hook").symlink_to(install.hook_command())
    install.uninstall(str(project))
    install.install(str(project), command=str(odd / "orch-hook"))
    session = claude(env={**orch_env, "ORCH_AGENT": "odd:1"})
    store = SQLiteStore(orch_env["ORCH_DB"])
    wait_until(lambda: store.agents() != [], what="SessionStart through the odd path")
    assert store.agents()[0]["id"] == "odd:1"
    assert session.requests() == []
