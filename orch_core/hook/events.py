"""Claude Code hook events as typed, read-only objects.

Every field is optional and read leniently: a missing field, or one of the wrong type, reads as
``None`` (or an empty container), and fields this version does not know stay in ``event.data``.
These are plain slotted classes rather than attrs classes on purpose: ``orch-hook`` builds one on
every tool call, and importing attrs alone costs more than the whole hand-written hook it is
benchmarked against (see docs/benchmarks.md).
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any, ClassVar

JSON = dict[str, "Any"]


def _str(data: JSON, key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _bool(data: JSON, key: str) -> bool:
    return data.get(key) is True


def _int(data: JSON, key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(data: JSON, key: str) -> JSON:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _list(data: JSON, key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


class Event:
    """One hook event. ``data`` is the payload exactly as Claude Code sent it."""

    __slots__ = ("data",)
    name: ClassVar[str] = ""
    #: Where Claude takes ``hookSpecificOutput.additionalContext`` (reference §3.4).
    takes_context: ClassVar[bool] = False
    #: How a plugin's ``Answer(block=...)`` is expressed: "decision" (top-level
    #: ``decision:"block"``), "permission" (PreToolUse deny), "exit" (exit 2 and stderr
    #: only), "context" (``additionalContext``, which keeps a Stop or SubagentStop going), or
    #: "" when the event cannot be blocked.
    blocks_by: ClassVar[str] = ""
    #: Whether Claude shows ``systemMessage`` for this event (reference §3.3).
    takes_system_message: ClassVar[bool] = True

    def __init__(self, data: JSON | None = None) -> None:
        self.data: JSON = data if data is not None else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and type(other) is type(self) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    @property
    def session_id(self) -> str | None:
        return _str(self.data, "session_id")

    @property
    def transcript_path(self) -> str | None:
        return _str(self.data, "transcript_path")

    @property
    def cwd(self) -> str | None:
        return _str(self.data, "cwd")

    @property
    def permission_mode(self) -> str | None:
        return _str(self.data, "permission_mode")

    @property
    def prompt_id(self) -> str | None:
        return _str(self.data, "prompt_id")

    @property
    def agent_id(self) -> str | None:
        """Set only inside a subagent: the subagent's id, not orch's agent."""
        return _str(self.data, "agent_id")

    @property
    def agent_type(self) -> str | None:
        return _str(self.data, "agent_type")

    @property
    def in_subagent(self) -> bool:
        return self.agent_id is not None


class _ToolEvent(Event):
    __slots__ = ()

    @property
    def tool_name(self) -> str | None:
        return _str(self.data, "tool_name")

    @property
    def tool_input(self) -> JSON:
        return _dict(self.data, "tool_input")

    @property
    def tool_use_id(self) -> str | None:
        return _str(self.data, "tool_use_id")

    @property
    def duration_ms(self) -> int | None:
        return _int(self.data, "duration_ms")


class _LastMessage(Event):
    __slots__ = ()

    @property
    def last_assistant_message(self) -> str | None:
        return _str(self.data, "last_assistant_message")


class SessionStart(Event):
    __slots__ = ()
    name = "SessionStart"
    takes_context = True

    @property
    def source(self) -> str | None:
        """``startup``, ``resume``, ``clear``, ``compact`` or ``fork``."""
        return _str(self.data, "source")

    @property
    def model(self) -> str | None:
        return _str(self.data, "model")


class Setup(Event):
    __slots__ = ()
    name = "Setup"
    takes_context = True

    @property
    def trigger(self) -> str | None:
        return _str(self.data, "trigger")


class InstructionsLoaded(Event):
    __slots__ = ()
    name = "InstructionsLoaded"
    takes_system_message = False

    @property
    def file_path(self) -> str | None:
        return _str(self.data, "file_path")

    @property
    def load_reason(self) -> str | None:
        return _str(self.data, "load_reason")


class UserPromptSubmit(Event):
    __slots__ = ()
    name = "UserPromptSubmit"
    takes_context = True
    blocks_by = "decision"

    @property
    def prompt(self) -> str | None:
        return _str(self.data, "prompt")


class UserPromptExpansion(Event):
    __slots__ = ()
    name = "UserPromptExpansion"
    takes_context = True
    blocks_by = "decision"

    @property
    def prompt(self) -> str | None:
        return _str(self.data, "prompt")

    @property
    def command_name(self) -> str | None:
        return _str(self.data, "command_name")


class MessageDisplay(Event):
    __slots__ = ()
    name = "MessageDisplay"
    takes_system_message = False

    @property
    def delta(self) -> str | None:
        return _str(self.data, "delta")


class PreToolUse(_ToolEvent):
    __slots__ = ()
    name = "PreToolUse"
    takes_context = True
    blocks_by = "permission"


class PermissionRequest(_ToolEvent):
    __slots__ = ()
    name = "PermissionRequest"


class PermissionDenied(_ToolEvent):
    __slots__ = ()
    name = "PermissionDenied"

    @property
    def reason(self) -> str | None:
        return _str(self.data, "reason")


class PostToolUse(_ToolEvent):
    __slots__ = ()
    name = "PostToolUse"
    takes_context = True
    blocks_by = "decision"

    @property
    def tool_response(self) -> Any:
        return self.data.get("tool_response")


class PostToolUseFailure(_ToolEvent):
    __slots__ = ()
    name = "PostToolUseFailure"
    takes_context = True

    @property
    def error(self) -> str | None:
        return _str(self.data, "error")

    @property
    def is_interrupt(self) -> bool:
        return _bool(self.data, "is_interrupt")


class PostToolBatch(Event):
    __slots__ = ()
    name = "PostToolBatch"
    takes_context = True
    blocks_by = "decision"

    @property
    def tool_calls(self) -> list[Any]:
        return _list(self.data, "tool_calls")


class Notification(Event):
    __slots__ = ()
    name = "Notification"
    takes_system_message = False

    @property
    def notification_type(self) -> str | None:
        """``idle_prompt``, ``permission_prompt``, ... (reference §1)."""
        return _str(self.data, "notification_type")

    @property
    def message(self) -> str | None:
        return _str(self.data, "message")


class SubagentStart(Event):
    __slots__ = ()
    name = "SubagentStart"
    takes_context = True


class SubagentStop(_LastMessage):
    """Blocked as Stop is, by ``additionalContext``: Claude Code 2.1.328 shows the subagent a
    ``decision:"block"`` reason twice, once as a "blocking error" (tests/e2e/test_orch_hooks.py)."""

    __slots__ = ()
    name = "SubagentStop"
    takes_context = True
    blocks_by = "context"

    @property
    def stop_hook_active(self) -> bool:
        return _bool(self.data, "stop_hook_active")


class _TaskEvent(Event):
    __slots__ = ()

    @property
    def task_id(self) -> str | None:
        return _str(self.data, "task_id")

    @property
    def task_subject(self) -> str | None:
        return _str(self.data, "task_subject")

    @property
    def teammate_name(self) -> str | None:
        return _str(self.data, "teammate_name")


class TaskCreated(_TaskEvent):
    __slots__ = ()
    name = "TaskCreated"
    blocks_by = "decision"


class TaskCompleted(_TaskEvent):
    __slots__ = ()
    name = "TaskCompleted"
    blocks_by = "exit"


class Stop(_LastMessage):
    __slots__ = ()
    name = "Stop"
    takes_context = True
    blocks_by = "context"

    @property
    def stop_hook_active(self) -> bool:
        """True when this stop follows a Stop hook's block: the loop guard."""
        return _bool(self.data, "stop_hook_active")


class StopFailure(_LastMessage):
    __slots__ = ()
    name = "StopFailure"
    takes_system_message = False

    @property
    def error(self) -> str | None:
        """``rate_limit``, ``overloaded``, ``server_error``, ... (reference §1)."""
        return _str(self.data, "error")

    @property
    def error_details(self) -> Any:
        return self.data.get("error_details")


class TeammateIdle(Event):
    __slots__ = ()
    name = "TeammateIdle"
    blocks_by = "exit"

    @property
    def teammate_name(self) -> str | None:
        return _str(self.data, "teammate_name")


class ConfigChange(Event):
    __slots__ = ()
    name = "ConfigChange"
    blocks_by = "decision"
    takes_system_message = False

    @property
    def source(self) -> str | None:
        return _str(self.data, "source")

    @property
    def file_path(self) -> str | None:
        return _str(self.data, "file_path")


class CwdChanged(Event):
    __slots__ = ()
    name = "CwdChanged"

    @property
    def old_cwd(self) -> str | None:
        return _str(self.data, "old_cwd")

    @property
    def new_cwd(self) -> str | None:
        return _str(self.data, "new_cwd")


class DirectoryAdded(Event):
    __slots__ = ()
    name = "DirectoryAdded"

    @property
    def directory(self) -> str | None:
        return _str(self.data, "directory")


class FileChanged(Event):
    __slots__ = ()
    name = "FileChanged"

    @property
    def file_path(self) -> str | None:
        return _str(self.data, "file_path")


class WorktreeCreate(Event):
    __slots__ = ()
    name = "WorktreeCreate"
    takes_system_message = False


class WorktreeRemove(Event):
    __slots__ = ()
    name = "WorktreeRemove"
    takes_system_message = False

    @property
    def worktree_path(self) -> str | None:
        return _str(self.data, "worktree_path")


class PreCompact(Event):
    __slots__ = ()
    name = "PreCompact"
    blocks_by = "decision"
    takes_system_message = False

    @property
    def trigger(self) -> str | None:
        """``manual`` (``/compact``) or ``auto``."""
        return _str(self.data, "trigger")

    @property
    def custom_instructions(self) -> str | None:
        return _str(self.data, "custom_instructions")


class PostCompact(Event):
    __slots__ = ()
    name = "PostCompact"
    takes_system_message = False

    @property
    def trigger(self) -> str | None:
        return _str(self.data, "trigger")

    @property
    def compact_summary(self) -> str | None:
        return _str(self.data, "compact_summary")


class Elicitation(Event):
    __slots__ = ()
    name = "Elicitation"
    takes_system_message = False

    @property
    def mcp_server_name(self) -> str | None:
        return _str(self.data, "mcp_server_name")


class ElicitationResult(Event):
    __slots__ = ()
    name = "ElicitationResult"
    takes_system_message = False

    @property
    def mcp_server_name(self) -> str | None:
        return _str(self.data, "mcp_server_name")


class SessionEnd(Event):
    __slots__ = ()
    name = "SessionEnd"
    takes_system_message = False

    @property
    def reason(self) -> str | None:
        """``clear``, ``resume``, ``logout``, ``prompt_input_exit`` or ``other``."""
        return _str(self.data, "reason")


class UnknownEvent(Event):
    """An event this version does not know: plugins see none, Claude gets no output."""

    __slots__ = ()
    takes_system_message = False


#: Every Claude Code event orch knows, by the name Claude sends in ``hook_event_name``.
EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        SessionStart, Setup, InstructionsLoaded, UserPromptSubmit, UserPromptExpansion,
        MessageDisplay, PreToolUse, PermissionRequest, PermissionDenied, PostToolUse,
        PostToolUseFailure, PostToolBatch, Notification, SubagentStart, SubagentStop,
        TaskCreated, TaskCompleted, Stop, StopFailure, TeammateIdle, ConfigChange, CwdChanged,
        DirectoryAdded, FileChanged, WorktreeCreate, WorktreeRemove, PreCompact, PostCompact,
        Elicitation, ElicitationResult, SessionEnd,
    )
}  # fmt: skip


def hook_name(event_name: str) -> str:
    """``PostToolUseFailure`` -> ``orch_post_tool_use_failure``: the pluggy hook for an event."""
    out = []
    for i, ch in enumerate(event_name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "orch_" + "".join(out)


def parse(data: JSON) -> Event:
    """Build the event object for a payload; an unknown or missing name gives UnknownEvent."""
    name = data.get("hook_event_name")
    cls = EVENTS.get(name) if isinstance(name, str) else None
    return (cls or UnknownEvent)(data)
