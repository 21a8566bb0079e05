"""Builders for every hook event payload, shaped as Claude Code sends them (reference §1-2)."""

from __future__ import annotations

from typing import Any

from orch_core.hook.events import EVENTS

COMMON: dict[str, Any] = {
    "session_id": "test-session",
    "transcript_path": "/nonexistent/transcript.jsonl",
    "cwd": "/nonexistent/project",
    "permission_mode": "default",
}

_BASH = {"tool_name": "Bash", "tool_input": {"command": "echo hi"}, "tool_use_id": "toolu_1"}
#: Typical event-specific fields, so a bare ``payload("Stop")`` looks like the real thing.
TYPICAL: dict[str, dict[str, Any]] = {
    "SessionStart": {"source": "startup", "model": "claude-test"},
    "Setup": {"trigger": "init"},
    "InstructionsLoaded": {"file_path": "/nonexistent/project/CLAUDE.md",
                           "memory_type": "Project", "load_reason": "session_start"},
    "UserPromptSubmit": {"prompt": "hello"},
    "UserPromptExpansion": {"expansion_type": "slash_command", "command_name": "review",
                            "command_args": "", "prompt": "/review"},
    "MessageDisplay": {"turn_id": "t1", "message_id": "m1", "index": 0, "final": True,
                       "delta": "hi"},
    "PreToolUse": _BASH,
    "PermissionRequest": {"tool_name": "Bash", "tool_input": {"command": "echo hi"},
                          "permission_suggestions": []},
    "PermissionDenied": {**_BASH, "reason": "auto mode"},
    "PostToolUse": {**_BASH, "tool_response": {"stdout": "hi\n", "stderr": "",
                                               "interrupted": False}, "duration_ms": 12},
    "PostToolUseFailure": {**_BASH, "error": "exit 1", "is_interrupt": False, "duration_ms": 9},
    "PostToolBatch": {"tool_calls": [{**_BASH, "tool_response": "hi"}]},
    "Notification": {"message": "Claude is waiting for your input",
                     "notification_type": "idle_prompt"},
    "SubagentStart": {"agent_id": "sub-1", "agent_type": "Explore"},
    "SubagentStop": {"agent_id": "sub-1", "agent_type": "Explore", "stop_hook_active": False,
                     "last_assistant_message": "done"},
    "TaskCreated": {"task_id": "1", "task_subject": "write tests", "task_description": ""},
    "TaskCompleted": {"task_id": "1", "task_subject": "write tests", "task_description": ""},
    "Stop": {"stop_hook_active": False, "last_assistant_message": "done"},
    "StopFailure": {"error": "overloaded", "last_assistant_message": "API Error: 529"},
    "TeammateIdle": {"teammate_name": "tester", "team_name": "t"},
    "ConfigChange": {"source": "project_settings",
                     "file_path": "/nonexistent/project/.claude/settings.json"},
    "CwdChanged": {"old_cwd": "/nonexistent/project", "new_cwd": "/nonexistent/project/src"},
    "DirectoryAdded": {"directory": "/nonexistent/other", "source": "slash_command"},
    "FileChanged": {"file_path": "/nonexistent/project/.env", "event": "change"},
    "WorktreeCreate": {"name": "feature"},
    "WorktreeRemove": {"worktree_path": "/nonexistent/project/.worktrees/feature"},
    "PreCompact": {"trigger": "manual", "custom_instructions": ""},
    "PostCompact": {"trigger": "manual", "compact_summary": "summary"},
    "Elicitation": {"mcp_server_name": "srv", "message": "?", "mode": "form",
                    "elicitation_id": "e1", "requested_schema": {}},
    "ElicitationResult": {"mcp_server_name": "srv", "action": "accept", "mode": "form",
                          "elicitation_id": "e1", "content": {}},
    "SessionEnd": {"reason": "prompt_input_exit"},
}  # fmt: skip


def payload(event_name: str, **fields: Any) -> dict[str, Any]:
    """A payload for ``event_name``: common fields, typical event fields, then ``fields``."""
    if event_name not in EVENTS:
        raise ValueError(f"unknown event {event_name!r}")
    return {**COMMON, "hook_event_name": event_name, **TYPICAL[event_name], **fields}
