"""The presence plugin's states, from real payloads through the dispatcher: ``needs_input`` while
a dialog waits for a person, and what that keeps others (idle, the supervisor) from doing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from orch_core import api
from orch_core.hook.context import Runtime
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

AGENT = "proj:1"


def run(orch: OrchState, event: str, **fields: Any) -> None:
    result = orch.run(payload(event, session_id="s-1", **fields), ORCH_AGENT=AGENT,
                      TMUX_PANE="%991")  # fmt: skip
    assert result.exit_code == 0


def state(orch: OrchState) -> str:
    (row,) = [a for a in orch.store.agents() if a["id"] == AGENT]
    return str(row["state"])


@pytest.mark.parametrize(
    "kind",
    ["permission_prompt", "elicitation_dialog", "elicitation_url_dialog", "agent_needs_input"],
)
def test_a_dialog_waiting_for_a_person_means_needs_input_until_work_resumes(
    orch: OrchState, kind: str
) -> None:
    run(orch, "UserPromptSubmit")
    run(orch, "PreToolUse")
    assert state(orch) == "busy"
    run(orch, "Notification", notification_type=kind, message="Claude needs your permission")
    assert state(orch) == "needs_input"
    run(orch, "PostToolUse")  # the person answered: the tool ran
    assert state(orch) == "busy"


@pytest.mark.parametrize(
    ("event", "fields", "after"),
    [
        ("PreToolUse", {}, "busy"),
        ("PostToolUseFailure", {}, "busy"),
        ("UserPromptSubmit", {}, "busy"),
        ("Stop", {}, "idle"),
        ("Notification", {"notification_type": "idle_prompt"}, "idle"),
        ("SessionEnd", {}, "offline"),
        ("StopFailure", {}, "error"),
    ],
)
def test_the_next_hook_moves_needs_input_on_as_it_moves_any_state(
    orch: OrchState, event: str, fields: dict[str, Any], after: str
) -> None:
    run(orch, "Notification", notification_type="permission_prompt")
    assert state(orch) == "needs_input"
    run(orch, event, **fields)
    assert state(orch) == after


@pytest.mark.parametrize("kind", ["auth_success", "elicitation_complete", "agent_completed"])
def test_other_notifications_leave_the_state_as_it_was(orch: OrchState, kind: str) -> None:
    run(orch, "PreToolUse")
    run(orch, "Notification", notification_type=kind)
    assert state(orch) == "busy"


def test_asking_the_user_a_question_is_needs_input(orch: OrchState) -> None:
    run(orch, "PreToolUse", tool_name="AskUserQuestion", tool_input={"questions": []})
    assert state(orch) == "needs_input"
    run(orch, "PostToolUse", tool_name="AskUserQuestion", tool_input={"questions": []})
    assert state(orch) == "busy"


def test_orch_agents_shows_needs_input(orch: OrchState) -> None:
    run(orch, "Notification", notification_type="permission_prompt")
    done = orch.cli("agents", "--json")
    assert done.returncode == 0, done.stderr
    assert [(r["id"], r["state"]) for r in json.loads(done.stdout)] == [(AGENT, "needs_input")]
    assert f"{AGENT}\tneeds_input\t" in orch.cli("agents").stdout


def test_the_idle_plugin_types_nothing_into_a_dialog(orch: OrchState) -> None:
    """A message for an agent at a permission prompt waits: neither the send nor the
    supervisor's tick tries its pane (the pane is fake, so a try would log that it failed and
    leave the agent ``waking``). The same send to an idle agent does try."""
    from orch_builtin import idle

    run(orch, "SessionStart", source="startup")  # remembers the pane
    run(orch, "UserPromptSubmit")
    run(orch, "Notification", notification_type="permission_prompt")
    api.send(AGENT, "for later", env=orch.env, project_dir=str(orch.project_dir))
    runtime = Runtime.open(orch.env, str(orch.project_dir))
    idle.orch_supervisor_tick(time.time(), [AGENT], runtime.context("idle"))
    assert state(orch) == "needs_input"
    assert [r for r in orch.log() if r["msg"] == "could not wake the agent"] == []

    run(orch, "Stop")  # the message goes with the Stop hook; a second one waits
    run(orch, "Stop", stop_hook_active=True)
    assert state(orch) == "idle"
    api.send(AGENT, "for later, again", env=orch.env, project_dir=str(orch.project_dir))
    assert state(orch) == "waking"
    assert [r["pane"] for r in orch.log() if r["msg"] == "could not wake the agent"] == ["%991"]


@pytest.mark.parametrize("verdict", ["stopped", "failed"])
def test_the_session_end_of_a_stopped_or_failed_agent_leaves_it_so(
    orch: OrchState, verdict: str
) -> None:
    """``orch stop`` kills the pane and Claude Code then ends its session: an ``offline``
    there had the supervisor restart the agent stopped a moment before (or one given up on)."""
    run(orch, "UserPromptSubmit")
    orch.store.set_agent_state(AGENT, verdict, session_id=None, project_dir=None)
    run(orch, "SessionEnd", reason="other")
    assert state(orch) == verdict
    run(orch, "SessionStart", source="startup")  # started again: it runs
    run(orch, "SessionEnd", reason="other")
    assert state(orch) == "offline"
