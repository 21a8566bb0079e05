"""What plugins answer, and how the answers fold into the one reply Claude accepts.

An event hook returns ``None``, a ``str`` (context for the model) or an :class:`Answer`. The
dispatcher folds the answers of all plugins, in call order, into a :class:`Reply`: the JSON on
stdout, the exit code and stderr, following the contract in the reference (§3): context only
where Claude takes it, ``decision:"block"`` where the event blocks that way, deny > ask > allow on
PreToolUse, and nothing at all on the events that reject ``hookSpecificOutput``. A Stop (and a
SubagentStop) is kept going with ``additionalContext`` alone: Claude Code 2.1.328 shows a
``decision:"block"`` reason to the model twice, once as a "blocking error"
(tests/e2e/test_harness.py, tests/e2e/test_orch_hooks.py).
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook.events import Event

PERMISSIONS = ("allow", "ask", "deny")


class Answer:
    """One plugin's answer to one event.

    :param context: text for the model (``additionalContext``), where the event takes it.
    :param block: a reason to block: Stop keeps working on it, PreToolUse denies the call,
        PostToolUse and UserPromptSubmit block, TeammateIdle and TaskCompleted continue.
    :param permission: PreToolUse only: ``allow``, ``ask`` or ``deny``, with ``reason``.
    :param reason: the reason shown with ``permission``.
    :param system_message: a notice for the user, where the event shows one.
    """

    __slots__ = ("block", "context", "permission", "reason", "system_message")

    def __init__(
        self,
        context: str | None = None,
        *,
        block: str | None = None,
        permission: str | None = None,
        reason: str | None = None,
        system_message: str | None = None,
    ) -> None:
        self.context = context
        self.block = block
        self.permission = permission
        self.reason = reason
        self.system_message = system_message

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k))
        return f"Answer({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Answer) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    __hash__ = None  # type: ignore[assignment]


def check(result: object, event: Event) -> Answer | None:
    """Normalise one plugin's return value, or raise ``TypeError`` saying what is wrong."""
    if result is None:
        return None
    if isinstance(result, str):
        if not result:
            return None
        result = Answer(context=result)
    if not isinstance(result, Answer):
        raise TypeError(f"returned {type(result).__name__}, expected Answer, str or None")
    for key in ("context", "block", "reason", "system_message", "permission"):
        value = getattr(result, key)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"Answer.{key} is {type(value).__name__}, expected str")
    if result.permission is not None:
        if result.permission not in PERMISSIONS:
            raise TypeError(f"Answer.permission must be one of {PERMISSIONS}")
        if event.blocks_by != "permission":
            raise TypeError(f"{event.name or 'this event'} takes no permission decision")
    if result.block is not None and not event.blocks_by:
        raise TypeError(f"{event.name or 'this event'} cannot be blocked")
    if (
        result.context
        and result.block is None  # a decision still counts: the text alone is lost
        and not (event.takes_context or event.blocks_by == "context")
    ):  # the model would never see it, and its author would never learn why
        raise TypeError(f"{event.name or 'this event'} takes no context for the model")
    return result


class Reply:
    """What ``orch-hook`` writes back: JSON for stdout (or None), exit code, stderr text, and
    whether it blocks the event (a Stop that keeps the agent working)."""

    __slots__ = ("blocked", "exit_code", "output", "stderr")

    def __init__(
        self,
        output: dict[str, Any] | None,
        exit_code: int = 0,
        stderr: str = "",
        *,
        blocked: bool = False,
    ) -> None:
        self.output = output
        self.exit_code = exit_code
        self.stderr = stderr
        self.blocked = blocked or exit_code == 2

    def stdout(self) -> str:
        import json

        return json.dumps(self.output, ensure_ascii=False) if self.output is not None else ""


#: Claude Code's cap on a hook's text for the model: a longer text is put in a file, and the
#: model gets a preview of about 2,000 characters and the file's path
#: (tests/e2e/test_harness.py). Counted as :func:`orch_core.text.length` counts.
CONTEXT_CAP = 10_000
#: What :func:`_join` puts between two answers' texts.
SEPARATOR = 2


def _join(parts: list[str]) -> str:
    return "\n\n".join(p for p in parts if p)


def over_cap(event: Event, answers: list[Answer]) -> list[int]:
    """The answers (their indexes) to leave out so that the text the reply gives the model
    stays within :data:`CONTEXT_CAP`: whole answers, kept in call order while they fit. Past
    the cap the model would see only the start of the text, and a queued message that started
    there would count as seen."""
    if not (event.takes_context or event.blocks_by == "context"):
        return []
    from orch_core.text import length

    left_out, used = [], -SEPARATOR
    for index, answer in enumerate(answers):
        texts = [answer.context] + ([answer.block] if event.blocks_by == "context" else [])
        size = sum(length(text) + SEPARATOR for text in texts if text)
        if not size:
            continue
        if used + size > CONTEXT_CAP:
            left_out.append(index)
        else:
            used += size
    return left_out


def fold(event: Event, answers: list[Answer]) -> Reply:
    """Fold the answers of all plugins, in call order, into the one reply for ``event``."""
    contexts = [a.context for a in answers if a.context]
    blocks = [a.block for a in answers if a.block]
    notices = [a.system_message for a in answers if a.system_message]
    output: dict[str, Any] = {}
    specific: dict[str, Any] = {}
    exit_code, stderr, blocked = 0, "", False

    if event.blocks_by == "context":  # (Subagent)Stop: any text keeps it working, shown once
        contexts = blocks + contexts
        blocked = bool(contexts)
    if event.takes_context and contexts:
        specific["additionalContext"] = _join(contexts)
    if event.blocks_by == "permission":
        decided = {a.permission: a for a in answers if a.permission}
        if blocks:
            decided["deny"] = Answer(reason=_join(blocks))
        for decision in ("deny", "ask", "allow"):
            if decision in decided:
                specific["permissionDecision"] = decision
                reasons = [a.reason or "" for a in answers if a.permission == decision]
                if decision == "deny":
                    reasons += blocks
                if _join(reasons):
                    specific["permissionDecisionReason"] = _join(reasons)
                if decision == "deny":
                    exit_code, stderr = 2, _join(reasons) or "denied by orch"
                break
    elif blocks and event.blocks_by == "decision":
        output["decision"] = "block"
        output["reason"] = _join(blocks)
        exit_code, stderr = 2, output["reason"]
    elif blocks and event.blocks_by == "exit":
        exit_code, stderr = 2, _join(blocks)

    if specific:
        output["hookSpecificOutput"] = {"hookEventName": event.name, **specific}
    if event.takes_system_message and notices:
        output["systemMessage"] = "\n".join(notices)
    return Reply(output or None, exit_code, stderr, blocked=blocked)
