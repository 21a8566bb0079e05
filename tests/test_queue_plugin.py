"""The queue, presence and cleanup plugins through the real ``orch-hook``: where messages reach
the model, how Stop blocks and stops blocking, and what a session's end puts back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from orch_core.plugins.plan import ANSWER_MARGIN, DEFAULT_BUDGET_MS
from orch_core.queue import MARK, Queue
from orch_core.testing.kit import HookResult, OrchState
from orch_core.testing.payloads import payload

pytestmark = pytest.mark.orch_backends("sqlite", "postgresql")


@pytest.fixture(autouse=True)
def budget(request: pytest.FixtureRequest) -> float:
    """The hooks' budget in seconds: room on PostgreSQL, as these tests are of what plugins
    do, not of time."""
    if "orch" not in request.fixturenames:
        return DEFAULT_BUDGET_MS / 1000
    orch: OrchState = request.getfixturevalue("orch")
    return orch.give_hooks_room()


AGENT = "proj:1"
SESSION = "sess-1"
WEIRD = (
    "  leading spaces\n\ttab, \"double\" and 'single' quotes, $HOME and ${PATH},\n"
    "`whoami` and $(id -u); rm -rf /tmp/x\r\nCRLF line, emoji 🚀👩‍💻, trailing  \n\n"
)


def transcript_of(orch: OrchState, session: str = SESSION) -> Path:
    path = orch.root / f"{session}.jsonl"
    path.touch()
    return path


def hook(orch: OrchState, event: str, *, session: str = SESSION, **fields: Any) -> HookResult:
    """``event`` of AGENT's Claude session through the real orch-hook."""
    data = payload(
        event, session_id=session, transcript_path=str(transcript_of(orch, session)), **fields
    )
    return orch.run_hook(data, ORCH_AGENT=AGENT)


def answered(budget: float) -> None:
    """Wait until the last hook has surely answered: only hooks that begin after that count
    as having missed its deliveries in the transcript."""
    time.sleep(budget + ANSWER_MARGIN)


def seen(orch: OrchState, text: str, session: str = SESSION) -> None:
    """Claude writes what a hook gave the model into the session's transcript."""
    with transcript_of(orch, session).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "attachment", "content": text}) + "\n")


def send(orch: OrchState, text: str, agent: str = AGENT, **options: Any) -> str:
    message_id: str = Queue(orch.store).send(agent, text, **options)["id"]
    return message_id


def state_of(orch: OrchState, message_id: str) -> str:
    return str(orch.store.execute(
        "SELECT state FROM messages WHERE id = ?", (message_id,)
    ).fetchone()[0])  # fmt: skip


def agent_state(orch: OrchState, agent: str = AGENT) -> str | None:
    row = orch.store.execute("SELECT state FROM agents WHERE id = ?", (agent,)).fetchone()
    return None if row is None else str(row[0])


def events_of(orch: OrchState, message_id: str) -> list[tuple[str, str | None]]:
    record = Queue(orch.store).get(message_id)
    assert record is not None
    return [(e["state"], e["detail"]) for e in record["events"]]


@pytest.mark.parametrize(
    "event", ["SessionStart", "UserPromptSubmit", "PostToolUse", "PostToolUseFailure"]
)
def test_messages_arrive_as_additional_context(orch: OrchState, event: str) -> None:
    message_id = send(orch, WEIRD, sender="lead", priority=20)
    result = hook(orch, event)
    assert result.exit_code == 0
    assert result.output is not None
    assert result.output["hookSpecificOutput"]["hookEventName"] == event
    header = f"{MARK}{message_id} from lead · high (priority 20) · queued "
    assert result.context is not None
    assert result.context.startswith(header)
    assert result.context.split("\n", 1)[1] == WEIRD  # byte for byte, after the header
    row = orch.store.execute(
        "SELECT state, session_id, attempts FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    assert row == ("delivered", SESSION, 1)
    assert hook(orch, event).output is None  # delivered once


def test_stop_blocks_with_the_messages_as_reason(orch: OrchState) -> None:
    first = send(orch, "first", priority=1)
    second = send(orch, "second", priority=99)
    result = hook(orch, "Stop")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.output is not None and "decision" not in result.output
    reason = result.context
    assert reason is not None
    assert reason.index(f"{MARK}{second} ") < reason.index(f"{MARK}{first} ")
    assert "\nsecond\n\n" in reason and reason.endswith("\nfirst")
    assert {state_of(orch, first), state_of(orch, second)} == {"delivered"}
    assert agent_state(orch) == "busy"  # the agent keeps working on them


def test_stop_never_blocks_with_nothing_to_deliver(orch: OrchState) -> None:
    result = hook(orch, "Stop")
    assert (result.exit_code, result.output) == (0, None)
    assert agent_state(orch) == "idle"
    later = send(orch, "not yet", not_before=2e9)
    theirs = send(orch, "not mine", agent="proj:2")
    result = hook(orch, "Stop", stop_hook_active=False)
    assert (result.exit_code, result.output) == (0, None)
    assert agent_state(orch) == "idle"
    assert state_of(orch, later) == state_of(orch, theirs) == "queued"


@pytest.mark.parametrize("limit", [None, 2])
def test_stop_blocks_at_most_k_times_in_a_row(orch: OrchState, limit: int | None) -> None:
    if limit is not None:
        orch.write_config(f"[plugin.queue]\nstop_blocks = {limit}\n")
    k = limit or 3
    outcomes = []
    for in_a_row in range(k + 1):
        send(orch, f"work {in_a_row}")
        outcomes.append(hook(orch, "Stop", stop_hook_active=in_a_row > 0).context is not None)
    assert outcomes == [True] * k + [False]
    waiting = Queue(orch.store).messages(AGENT, "queued")
    assert [m["body"] for m in waiting] == [f"work {k}"]  # kept for later, not lost
    assert agent_state(orch) == "idle"
    # a fresh Stop (not a continuation) starts counting again
    result = hook(orch, "Stop", stop_hook_active=False)
    assert result.context is not None and f"work {k}" in result.context


def test_a_user_prompt_resets_the_stop_counter(orch: OrchState) -> None:
    for in_a_row in range(3):
        send(orch, f"work {in_a_row}")
        assert hook(orch, "Stop", stop_hook_active=in_a_row > 0).context is not None
    send(orch, "more")
    assert hook(orch, "Stop", stop_hook_active=True).output is None
    prompt = hook(orch, "UserPromptSubmit")
    assert prompt.context is not None and "\nmore" in prompt.context
    send(orch, "after the prompt")
    assert hook(orch, "Stop", stop_hook_active=True).context is not None


def test_emergency_messages_go_out_at_pre_tool_use_and_only_they(orch: OrchState) -> None:
    normal = send(orch, "normal", priority=99)
    emergency = send(orch, "emergency", priority=100)
    result = hook(orch, "PreToolUse")
    assert result.exit_code == 0
    assert result.output is not None
    specific = result.output["hookSpecificOutput"]
    assert "permissionDecision" not in specific
    assert specific["additionalContext"].startswith(f"{MARK}{emergency} ")
    assert "normal" not in specific["additionalContext"]
    assert (state_of(orch, emergency), state_of(orch, normal)) == ("delivered", "queued")
    assert hook(orch, "PreToolUse").output is None
    after = hook(orch, "PostToolUse")
    assert after.context is not None and after.context.startswith(f"{MARK}{normal} ")


@pytest.mark.parametrize("event", ["UserPromptSubmit", "PostToolUse", "Stop"])
def test_nothing_is_delivered_inside_a_subagent(orch: OrchState, event: str) -> None:
    message_id = send(orch, "for the main agent", priority=150)
    result = hook(orch, event, agent_id="sub-1", agent_type="Explore")
    assert (result.exit_code, result.output) == (0, None)
    assert hook(orch, "PreToolUse", agent_id="sub-1").output is None
    assert state_of(orch, message_id) == "queued"


def test_nothing_is_delivered_without_an_agent(orch: OrchState) -> None:
    message_id = send(orch, "for someone")
    data = payload("PostToolUse", session_id=SESSION, transcript_path=str(transcript_of(orch)))
    for event in (data, {**data, "hook_event_name": "Stop"}):
        result = orch.run_hook(event)  # no ORCH_AGENT, no TMUX_PANE
        assert (result.exit_code, result.output) == (0, None)
    assert state_of(orch, message_id) == "queued"
    assert orch.store.runs(1)[0]["agent"] is None


def test_a_delivery_seen_in_the_transcript_is_confirmed_by_the_next_hook(
    orch: OrchState,
) -> None:
    message_id = send(orch, "remember me")
    first = hook(orch, "PostToolUse")
    assert first.context is not None
    seen(orch, first.context)  # found: confirmed by the very next hook, however soon
    assert hook(orch, "PostToolUse").output is None
    assert state_of(orch, message_id) == "confirmed"
    assert events_of(orch, message_id)[-1] == ("confirmed", "found in the transcript")


def test_an_unseen_delivery_is_delivered_again_after_confirm_hooks(
    orch: OrchState, budget: float
) -> None:
    orch.write_config("[plugin.queue]\nconfirm_hooks = 2\n")
    message_id = send(orch, "lost in transit")
    assert hook(orch, "PostToolUse").context is not None
    answered(budget)
    assert hook(orch, "PostToolUse").output is None  # one hook without it: still in flight
    again = hook(orch, "PostToolUse")  # the second: back in the queue, and out again
    assert again.context is not None and again.context.startswith(f"{MARK}{message_id} ")
    assert [s for s, _ in events_of(orch, message_id)] == [
        "queued", "delivered", "queued", "delivered",
    ]  # fmt: skip
    seen(orch, again.context)
    hook(orch, "PostToolUse")
    assert state_of(orch, message_id) == "confirmed"


def test_a_large_message_reaches_the_hook_as_a_file(orch: OrchState) -> None:
    body = (WEIRD + "x" * 100) * 200
    message_id = send(orch, body)
    result = hook(orch, "UserPromptSubmit")
    assert result.context is not None
    assert len(result.context) < 10_000
    match = re.search(r"the full text is in (\S+)\n", result.context)
    assert match
    assert Path(match.group(1)).read_bytes() == body.encode()
    assert message_id in match.group(1)


def test_many_messages_fit_in_one_hook_below_claudes_cap(orch: OrchState) -> None:
    for i in range(12):
        send(orch, f"{i:02d} " + "z" * 1500, priority=i)
    bodies: list[str] = []
    for _ in range(12):
        result = hook(orch, "PostToolUse")
        if result.context is None:
            break
        assert len(result.context) <= 8000
        bodies += re.findall(r"\n(\d\d) z", result.context)
    assert bodies == [f"{i:02d}" for i in reversed(range(12))]


WORDY = """
from orch_core import Answer, hookimpl

@hookimpl
def orch_post_tool_use(event):
    return "w" * 9000

@hookimpl
def orch_pre_tool_use(event):
    return Answer("w" * 9000, permission="deny", reason="wordy says no")
"""


def test_messages_left_out_of_a_reply_over_claudes_cap_go_back_to_the_queue(
    orch: OrchState, orch_module: Any
) -> None:
    """Another plugin's text takes most of Claude Code's 10,000 characters: the queue's text
    would push the reply past the cap, where the model sees only its start. It is left out,
    and the messages go back to the queue, their attempt not counted."""
    message_id = send(orch, "m" * 2000)
    emergency = send(orch, "e" * 2000, priority=150)
    orch_module("wordy", WORDY)  # a project's plugin: called before the built-ins
    orch.write_config('[plugins]\nload = ["wordy"]\n')
    result = hook(orch, "PostToolUse")
    assert result.context == "w" * 9000
    assert (state_of(orch, message_id), state_of(orch, emergency)) == ("queued", "queued")
    row = orch.store.execute("SELECT attempts, session_id FROM messages WHERE id = ?",
                             (message_id,)).fetchone()  # fmt: skip
    assert tuple(row) == (0, None)
    assert events_of(orch, message_id)[-2:] == [
        ("delivered", SESSION),
        ("queued", "left out of the hook's reply: over Claude Code's cap"),
    ]
    (line,) = [e for e in orch.log() if e["msg"].startswith("text for the model left out")]
    assert (line["plugins"], line["cap"]) == (["queue"], 10_000)
    denied = hook(orch, "PreToolUse")  # a decision stays when its text is left out
    assert denied.output is not None
    specific = denied.output["hookSpecificOutput"]
    assert (specific["permissionDecision"], specific["additionalContext"]) == ("deny", "w" * 9000)
    assert state_of(orch, emergency) == "queued"
    orch.write_config("")
    result = hook(orch, "PostToolUse")  # the next hook with room hands them over
    assert result.context is not None and "m" * 2000 in result.context
    assert "e" * 2000 in result.context
    assert state_of(orch, message_id) == "delivered"


def test_a_message_of_emoji_counts_as_claude_code_counts(orch: OrchState) -> None:
    """5,000 emoji are 10,000 characters to Claude Code: past the queue's 8,000, a file."""
    message_id = send(orch, "\U0001f680" * 5000)
    result = hook(orch, "UserPromptSubmit")
    assert result.context is not None
    assert f"the full text is in {orch.store.folder}/messages/{message_id}.txt" in result.context
    assert len(result.context.encode("utf-16-le")) // 2 <= 8000


def test_session_end_requeues_unconfirmed_deliveries_and_keeps_the_rest(
    orch: OrchState,
) -> None:
    confirmed = send(orch, "confirmed one", priority=5)
    first = hook(orch, "PostToolUse")
    assert first.context is not None
    seen(orch, first.context)
    inflight = send(orch, "in flight", priority=5)
    queued_later = send(orch, "due tomorrow", not_before=2e9)
    assert hook(orch, "PostToolUse").context is not None  # confirms one, delivers the next
    other = send(orch, "in another session", priority=5)
    assert hook(orch, "PostToolUse", session="sess-2").context is not None
    assert (state_of(orch, confirmed), state_of(orch, inflight)) == ("confirmed", "delivered")
    assert state_of(orch, other) == "delivered"

    result = hook(orch, "SessionEnd", reason="clear")
    assert (result.exit_code, result.output) == (0, None)
    assert state_of(orch, inflight) == "queued"
    assert events_of(orch, inflight)[-1] == ("queued", "session ended (clear)")
    assert state_of(orch, confirmed) == "confirmed"
    assert state_of(orch, queued_later) == "queued"
    assert state_of(orch, other) == "delivered"  # another session's delivery is its own
    assert agent_state(orch) == "busy"  # as sess-2, the agent's latest session, said
    assert hook(orch, "SessionEnd", session="sess-2", reason="exit").exit_code == 0
    assert agent_state(orch) == "offline"
    assert state_of(orch, other) == "queued"
    backlog = hook(orch, "SessionStart", session="sess-3")
    assert backlog.context is not None and backlog.context.startswith(f"{MARK}{inflight} ")


def test_session_end_confirms_a_delivery_its_transcript_shows_instead_of_requeueing_it(
    orch: OrchState,
) -> None:
    """A delivery no later hook of its session confirmed (the Stop past ``stop_blocks`` looks
    at nothing; Claude may write a turn down after its Stop hook) is in the transcript once
    the agent idles. A session ended before the sweep (``/exit``, ``orch restart``) must not
    hand it over a second time."""
    message_id = send(orch, "deploy at noon")
    delivered = hook(orch, "UserPromptSubmit", prompt="orch: new messages are waiting for you.")
    assert delivered.context is not None
    assert hook(orch, "Stop").output is None  # the turn is not in the transcript yet
    seen(orch, delivered.context)  # written as the agent went idle
    not_seen = send(orch, "never handed over")
    other = hook(orch, "PostToolUse", session="sess-2")  # in flight, not in sess-2's transcript
    assert other.context is not None and not_seen in other.context

    assert hook(orch, "SessionEnd", reason="prompt_input_exit").exit_code == 0
    assert state_of(orch, message_id) == "confirmed"
    assert events_of(orch, message_id)[-1] == ("confirmed", "found in the transcript")
    assert hook(orch, "SessionEnd", session="sess-2", reason="other").exit_code == 0
    assert state_of(orch, not_seen) == "queued"
    backlog = hook(orch, "SessionStart", session="sess-3", source="resume")
    assert backlog.context is not None
    assert f"{MARK}{message_id} " not in backlog.context  # delivered once
    assert backlog.context.startswith(f"{MARK}{not_seen} ")


def test_presence_follows_what_the_stop_hook_did(orch: OrchState) -> None:
    hook(orch, "UserPromptSubmit")
    assert agent_state(orch) == "busy"
    send(orch, "keep going")
    assert hook(orch, "Stop").context is not None
    assert agent_state(orch) == "busy"
    assert hook(orch, "Stop", stop_hook_active=True).output is None
    assert agent_state(orch) == "idle"


def test_disabling_the_queue_plugin_stops_delivery(orch: OrchState) -> None:
    orch.write_config('[plugins]\ndisable = ["queue"]\n')
    message_id = send(orch, "nobody delivers me", priority=150)
    for event in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
        result = hook(orch, event)
        assert (result.exit_code, result.output) == (0, None), event
    assert state_of(orch, message_id) == "queued"
    assert agent_state(orch) == "idle"  # presence still runs
    orch.write_config("")
    assert hook(orch, "PostToolUse").context is not None


def test_a_claim_that_would_land_after_the_deadline_takes_nothing(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.write_config("[orch]\nbudget_ms = 100\n", user=True)
    sent = Queue(orch.store).send("p:1", "hello")["id"]
    claim = Queue._claim

    def slow_claim(self: Queue, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        time.sleep(0.3)  # e.g. a slow disk under the transaction
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "_claim", slow_claim)
    result = orch.run(payload("PostToolUse", session_id="s1"), ORCH_AGENT="p:1")
    assert result.context is None
    assert {p["plugin"]: p["outcome"] for p in result.plugins}["queue"] == "timeout"
    time.sleep(0.6)  # the abandoned plugin thread gets to its claim by now
    message = Queue(orch.store).get(sent)
    assert message is not None
    assert (message["state"], message["attempts"]) == ("queued", 0)
