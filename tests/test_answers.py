"""Folding plugin answers into the one reply Claude accepts for each event (reference §3)."""

from __future__ import annotations

import pytest

from orch_core import Answer
from orch_core.hook import events
from orch_core.hook.answers import CONTEXT_CAP, check, fold, over_cap
from orch_core.testing.payloads import payload

#: Events that have no hookSpecificOutput variant: any such output fails Claude's validation.
NO_SPECIFIC_OUTPUT = """PreCompact PostCompact SessionEnd ConfigChange InstructionsLoaded
StopFailure TeammateIdle TaskCreated TaskCompleted WorktreeRemove DirectoryAdded""".split()
CONTEXT_EVENTS = """SessionStart Setup SubagentStart UserPromptSubmit UserPromptExpansion
PreToolUse PostToolUse PostToolUseFailure PostToolBatch Stop SubagentStop""".split()


def event(name: str, **fields: object) -> events.Event:
    return events.parse(payload(name, **fields))


@pytest.mark.parametrize("name", sorted(events.EVENTS))
def test_context_goes_only_where_claude_takes_it(name: str) -> None:
    reply = fold(event(name), [Answer("one"), Answer("two")])
    if name in CONTEXT_EVENTS:
        assert reply.output == {
            "hookSpecificOutput": {"hookEventName": name, "additionalContext": "one\n\ntwo"}
        }
    else:
        assert reply.output is None
    assert reply.exit_code == 0
    if name in NO_SPECIFIC_OUTPUT:
        assert "hookSpecificOutput" not in (reply.output or {})


@pytest.mark.parametrize("name", ["Stop", "SubagentStop"])
def test_stop_block_is_one_context_on_exit_0(name: str) -> None:
    """Blocks first, then contexts, in one ``additionalContext``: Claude shows it once."""
    reply = fold(event(name), [Answer(block="first"), Answer("ctx"), Answer(block="second")])
    context = "first\n\nsecond\n\nctx"
    assert reply.output == {
        "hookSpecificOutput": {"hookEventName": name, "additionalContext": context}
    }
    assert (reply.exit_code, reply.stderr, reply.blocked) == (0, "", True)


def test_a_stop_with_nothing_to_say_stops() -> None:
    reply = fold(event("Stop"), [Answer(system_message="note")])
    assert reply.output == {"systemMessage": "note"}
    assert (reply.exit_code, reply.blocked) == (0, False)


@pytest.mark.parametrize(
    ("given", "decision"),
    [
        (["allow", "ask", "deny"], "deny"),
        (["allow", "ask"], "ask"),
        (["allow"], "allow"),
        (["ask", "allow", "ask"], "ask"),
    ],
)
def test_pre_tool_use_precedence_is_deny_ask_allow(given: list[str], decision: str) -> None:
    answers = [Answer(permission=p, reason=f"{p} {i}") for i, p in enumerate(given)]
    reply = fold(event("PreToolUse"), answers)
    assert reply.output is not None
    specific = reply.output["hookSpecificOutput"]
    assert specific["permissionDecision"] == decision
    assert specific["permissionDecisionReason"] == "\n\n".join(
        f"{p} {i}" for i, p in enumerate(given) if p == decision
    )
    assert reply.exit_code == (2 if decision == "deny" else 0)


def test_block_on_pre_tool_use_is_a_deny() -> None:
    reply = fold(event("PreToolUse"), [Answer(permission="allow"), Answer(block="no")])
    assert reply.output is not None
    assert reply.output["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert reply.output["hookSpecificOutput"]["permissionDecisionReason"] == "no"


@pytest.mark.parametrize("name", ["TeammateIdle", "TaskCompleted"])
def test_team_events_block_through_exit_2_and_stderr(name: str) -> None:
    reply = fold(event(name), [Answer(block="keep going")])
    assert (reply.output, reply.exit_code, reply.stderr) == (None, 2, "keep going")


def test_system_message_only_where_shown() -> None:
    assert fold(event("Stop"), [Answer(system_message="hi")]).output == {"systemMessage": "hi"}
    assert fold(event("PreCompact"), [Answer(system_message="hi")]).output is None


@pytest.mark.parametrize(
    ("name", "result", "problem"),
    [
        ("Stop", 42, "returned int"),
        ("Stop", {"decision": "block"}, "returned dict"),
        ("SessionEnd", Answer(block="x"), "cannot be blocked"),
        ("Stop", Answer(permission="deny"), "takes no permission"),
        ("PreToolUse", Answer(permission="maybe"), "must be one of"),
        ("Stop", Answer(context=b"bytes"), "Answer.context is bytes"),  # type: ignore[arg-type]
        # the model never sees it: dropped without a word, its author would never know
        ("Notification", "a note for the model", "Notification takes no context"),
        ("PreCompact", Answer("keep this"), "PreCompact takes no context"),
    ],
)
def test_wrong_returns_are_rejected(name: str, result: object, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        check(result, event(name))


def test_strings_and_none_are_accepted() -> None:
    assert check("ctx", event("Stop")) == Answer("ctx")
    # a decision stays, though the event takes no text beside it
    assert check(Answer("x", block="no"), event("TaskCreated")) == Answer("x", block="no")
    assert check("", event("Stop")) is None
    assert check(None, event("Stop")) is None


def test_texts_that_would_pass_claudes_cap_together_are_left_out_whole() -> None:
    """Kept in call order while they fit; a later, shorter one still fits. Claude Code counts
    UTF-16 code units: an emoji is two (tests/e2e/test_harness.py)."""
    post = event("PostToolUse")
    first, second, third = Answer("a" * 6000), Answer("b" * 6000), Answer("c" * 3000)
    assert over_cap(post, [first, second, third]) == [1]
    assert over_cap(post, [Answer("a" * CONTEXT_CAP)]) == []
    assert over_cap(post, [Answer("a" * (CONTEXT_CAP - 2)), Answer("b")]) == [1]  # the "\n\n"
    rockets = Answer("\U0001f680" * (CONTEXT_CAP // 2 + 1))  # 5,001 characters, 10,002 units
    assert over_cap(post, [rockets]) == [0]
    assert over_cap(post, [Answer(permission="deny", reason="x" * 20_000)]) == []
    stop = event("Stop")  # a Stop's blocking text is text for the model too
    assert over_cap(stop, [Answer(block="a" * 6000), Answer("b" * 6000)]) == [1]
    assert over_cap(event("PreCompact"), [Answer("a" * 20_000)]) == []  # no text goes there
