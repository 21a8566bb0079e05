"""Events: every Claude Code event has a class and a hook, and parsing is lenient."""

from __future__ import annotations

import pytest

from orch_core.hook import events
from orch_core.plugins import hookspecs
from orch_core.testing.payloads import payload

#: The 31 events of the reference (§1), by the name Claude sends.
REFERENCE_EVENTS = """
SessionStart Setup InstructionsLoaded UserPromptSubmit UserPromptExpansion MessageDisplay
PreToolUse PermissionRequest PermissionDenied PostToolUse PostToolUseFailure PostToolBatch
Notification SubagentStart SubagentStop TaskCreated TaskCompleted Stop StopFailure TeammateIdle
ConfigChange CwdChanged DirectoryAdded FileChanged WorktreeCreate WorktreeRemove PreCompact
PostCompact Elicitation ElicitationResult SessionEnd
""".split()


def test_every_reference_event_is_known() -> None:
    assert sorted(events.EVENTS) == sorted(REFERENCE_EVENTS)


@pytest.mark.parametrize("name", REFERENCE_EVENTS)
def test_every_event_has_a_documented_hookspec(name: str) -> None:
    spec = getattr(hookspecs, events.hook_name(name))
    assert spec.__doc__ and spec.__doc__.strip()
    assert list(spec.__annotations__)[:2] == ["event", "ctx"]


def test_hook_names_follow_the_event_names() -> None:
    assert events.hook_name("SessionStart") == "orch_session_start"
    assert events.hook_name("PostToolUseFailure") == "orch_post_tool_use_failure"
    assert events.hook_name("CwdChanged") == "orch_cwd_changed"


def test_fields_read_leniently_and_unknown_fields_are_kept() -> None:
    event = events.parse(
        payload("PostToolUse", tool_name=7, tool_input="oops", duration_ms=True, novel={"x": 1})
    )
    assert isinstance(event, events.PostToolUse)
    assert event.tool_name is None
    assert event.tool_input == {}
    assert event.duration_ms is None
    assert event.data["novel"] == {"x": 1}
    assert event.session_id == "test-session"


def test_missing_fields_read_as_none() -> None:
    event = events.parse({"hook_event_name": "Stop"})
    assert isinstance(event, events.Stop)
    assert event.session_id is None
    assert event.stop_hook_active is False
    assert event.last_assistant_message is None


def test_unknown_or_missing_event_name_gives_unknown_event() -> None:
    assert isinstance(events.parse({"hook_event_name": "PreModelSwitch"}), events.UnknownEvent)
    assert isinstance(events.parse({}), events.UnknownEvent)


def test_subagent_tool_events_say_so() -> None:
    assert events.parse(payload("PreToolUse", agent_id="a1")).in_subagent
    assert not events.parse(payload("PreToolUse")).in_subagent
