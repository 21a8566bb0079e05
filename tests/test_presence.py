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


def test_an_agent_given_up_on_stays_failed_through_the_idle_prompt_notification(
    orch: OrchState,
) -> None:
    """Claude Code sends ``idle_prompt`` a minute after a reply, a failed one too (seen with the
    real binary after an ``authentication_failed``): the agent turned ``idle``, `orch doctor`
    no longer named it, and every message sent woke it into the same failure."""
    run(orch, "UserPromptSubmit")
    run(orch, "StopFailure", error="authentication_failed")
    assert state(orch) == "failed"
    run(orch, "Notification", notification_type="idle_prompt", message="Claude is waiting")
    assert state(orch) == "failed"
    doctor = orch.cli("doctor").stdout
    assert "FAIL alerts: proj:1 failed: StopFailure authentication_failed" in doctor
    run(orch, "UserPromptSubmit")  # its person fixed the login and prompts it again
    assert state(orch) == "busy"


#: A transcript's lines as Claude Code writes them when its person presses Esc during a Bash
#: call (shapes from the real binary: tests/e2e/test_lifecycle_e2e.py shows it end to end).
ESC_DURING_A_TOOL = [
    {"type": "user", "message": {"role": "user", "content": "Wait a bit."}},
    {"type": "assistant", "message": {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "make"}}]}},
    {"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
         "content": "The user doesn't want to proceed with this tool use."}]}},
    {"type": "user", "message": {"role": "user", "content": [
        {"type": "text", "text": "[Request interrupted by user for tool use]"}]}},
    {"type": "last-prompt", "lastPrompt": "Wait a bit."},
    {"type": "permission-mode", "permissionMode": "auto"},
]  # fmt: skip


def _tick(orch: OrchState, after: float = 0.0) -> None:
    from orch_builtin import presence

    runtime = Runtime.open(orch.env, str(orch.project_dir))
    presence.orch_supervisor_tick(time.time() + after, [AGENT], runtime.context("presence"))


@pytest.mark.orch_backends("sqlite", "postgresql")
@pytest.mark.orch_roomy_hooks
@pytest.mark.parametrize("lines", [len(ESC_DURING_A_TOOL), 2])
def test_an_agent_its_person_stopped_with_esc_is_needs_input(
    orch: OrchState, tmp_path: Any, lines: int
) -> None:
    """Esc ends the turn without a Stop or any other hook. A ``busy`` agent that has gone
    quiet, whose transcript's last message is Claude Code's record of the interrupt, waits for
    its person: ``needs_input``, so its messages are not typed into the question Claude asks,
    and the supervisor does not restart it as hung. An agent quiet in a long tool call (its
    transcript ends with the call, ``lines == 2``) stays ``busy``."""
    from orch_builtin import presence

    transcript = tmp_path / "session.jsonl"
    transcript.write_text("".join(json.dumps(e) + "\n" for e in ESC_DURING_A_TOOL[:lines]))
    for event in ("SessionStart", "UserPromptSubmit", "PreToolUse"):
        run(orch, event, transcript_path=str(transcript))
    presence._read.clear()
    _tick(orch)  # not quiet yet
    assert state(orch) == "busy"
    _tick(orch, after=presence.QUIET_SECONDS + 1)
    assert state(orch) == ("needs_input" if lines > 2 else "busy")

    run(orch, "UserPromptSubmit", transcript_path=str(transcript))  # the person answers
    assert state(orch) == "busy"
    _tick(orch, after=presence.QUIET_SECONDS + 1)  # the same transcript is not read again
    assert state(orch) == "busy"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"type": "user", "message": {"content": "[Request interrupted by user]"}}, True),
        ({"type": "user", "message": {"content": "Please go on."}}, False),
        ({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done."}]}},
         False),
        ({"type": "user", "isSidechain": True, "message": {"content": "Go."}}, True),
        ({"type": "user", "message": "not an object"}, False),
    ],
)  # fmt: skip
def test_what_reads_as_an_interrupt(tmp_path: Any, entry: dict[str, Any], expected: bool) -> None:
    """The main conversation's last message decides; a subagent's lines after it do not."""
    from orch_builtin import presence

    transcript = tmp_path / "t.jsonl"
    interrupt = {"type": "user", "message": {"content": [
        {"type": "text", "text": "[Request interrupted by user for tool use]"}]}}  # fmt: skip
    transcript.write_text("\n".join(json.dumps(e) for e in (interrupt, entry)) + "\n")
    assert presence.interrupted(str(transcript)) is expected
    assert presence.interrupted(str(tmp_path / "missing.jsonl")) is False


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_a_background_subagents_tools_leave_its_idle_agent_idle(orch: OrchState) -> None:
    """A subagent started in the background works on after its agent's Stop: the agent waits
    at its prompt, and its subagent's tool hooks (which deliver nothing) took it for ``busy``,
    so a message waited unwoken until the subagent ended (or the agent was taken for hung).
    Inside a running turn they keep it ``busy``, past a permission prompt too."""
    sub = {"agent_id": "sub-1", "agent_type": "general-purpose"}
    run(orch, "SessionStart", source="startup")
    run(orch, "UserPromptSubmit")
    run(orch, "PreToolUse", tool_name="Agent", tool_input={"run_in_background": True})
    run(orch, "PostToolUse", tool_name="Agent", tool_input={"run_in_background": True})
    run(orch, "Stop", background_tasks=[{"id": "sub-1"}])
    assert state(orch) == "idle"
    for event in ("PreToolUse", "PostToolUse", "PostToolUseFailure"):
        run(orch, event, **sub)
        assert state(orch) == "idle"
    api.send(AGENT, "while it waits", env=orch.env, project_dir=str(orch.project_dir))
    assert state(orch) == "waking"  # the fake pane: tried, and logged as failed
    assert [r["pane"] for r in orch.log() if r["msg"] == "could not wake the agent"] == ["%991"]

    run(orch, "UserPromptSubmit")  # a turn with a subagent in the foreground
    run(orch, "PreToolUse", tool_name="Agent", tool_input={})
    run(orch, "Notification", notification_type="permission_prompt")
    assert state(orch) == "needs_input"
    run(orch, "PostToolUse", **sub)  # its person allowed the subagent's call
    assert state(orch) == "busy"
