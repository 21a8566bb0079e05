"""The queue plugin: hands each agent its queued messages through the hooks that reach the model.

SessionStart (the backlog), UserPromptSubmit, PostToolUse and PostToolUseFailure carry them as
``additionalContext``; Stop blocks with them as the reason, so the agent keeps working on them,
but never with nothing to deliver and never more than ``stop_blocks`` times in a row; emergency
messages (priority 100+) also go out at PreToolUse. Each hook first confirms earlier deliveries it
finds in the session's transcript. With nothing pending, a hook costs one indexed read.
"""

from __future__ import annotations

from orch_core import Answer, Setting, hookimpl
from orch_core.plugins.settings import defaults
from orch_core.queue import Queue

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext

SETTINGS: dict[str, Any] = {
    "budget": Setting(8000, min=500, max=9500),  # characters per hook, below Claude's cap
    "max_attempts": Setting(3, min=1),
    "confirm_hooks": Setting(4, min=1),
    "confirm_seconds": Setting(120.0, min=0.1),
    "stop_blocks": Setting(3, min=0),  # below Claude's own cap of 8
    "emergency": Setting(100, min=0, max=200),
    "spill_retention": Setting(86400.0, min=0),  # seconds a large message's file outlives it
}
DEFAULTS = defaults(SETTINGS)


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


def queue_for(ctx: HookContext) -> Queue:
    return Queue.configured(ctx.store, {**DEFAULTS, **ctx.config})


def deliver(event: ev.Event, ctx: HookContext, min_priority: int = 0) -> str | None:
    """Confirm, then claim and render what is deliverable now; ``None`` when nothing is."""
    if ctx.agent is None or event.in_subagent:
        return None
    queue = queue_for(ctx)
    budget = int({**DEFAULTS, **ctx.config}["budget"])
    messages = queue.deliver(
        ctx.agent,
        ctx.session_id,
        transcript_path=event.transcript_path,
        since=ctx.started,
        min_priority=min_priority,
        budget=budget,
        deadline=ctx.deadline,
    )
    if not messages:
        return None
    ctx.notes["handed"] = [message["id"] for message in messages]
    for message in messages:
        ctx.fire("orch_message_delivered", message=message)
    return queue.render(messages, budget, log=ctx.log)


@hookimpl
def orch_text_left_out(ctx: HookContext) -> None:
    """Messages whose text the reply left out (with the other plugins' texts it would have
    passed Claude Code's cap) go back to the queue at once, for the agent's next hook."""
    handed = ctx.notes.get("handed")
    if handed:
        queue_for(ctx).take_back(handed, "left out of the hook's reply: over Claude Code's cap")


@hookimpl
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    """Expire what outlived its TTL, and put back (or kill) deliveries left unconfirmed past
    ``confirm_seconds``, with this project's settings."""
    queue = queue_for(ctx)
    for agent in agents:
        queue.sweep(now, agent)


@hookimpl
def orch_session_start(event: ev.SessionStart, ctx: HookContext) -> str | None:
    return deliver(event, ctx)


@hookimpl
def orch_user_prompt_submit(event: ev.UserPromptSubmit, ctx: HookContext) -> str | None:
    if ctx.agent and ctx.session_id:
        ctx.store.stop_blocks(ctx.session_id, ctx.agent, reset=True)
    return deliver(event, ctx)


@hookimpl
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> str | None:
    return deliver(event, ctx, int({**DEFAULTS, **ctx.config}["emergency"]))


@hookimpl
def orch_post_tool_use(event: ev.PostToolUse, ctx: HookContext) -> str | None:
    return deliver(event, ctx)


@hookimpl
def orch_post_tool_use_failure(event: ev.PostToolUseFailure, ctx: HookContext) -> str | None:
    return deliver(event, ctx)


@hookimpl
def orch_stop(event: ev.Stop, ctx: HookContext) -> Answer | None:
    if ctx.agent is None or not ctx.session_id:
        return None
    in_a_row = ctx.store.stop_blocks(ctx.session_id, ctx.agent, reset=not event.stop_hook_active)
    if in_a_row >= int({**DEFAULTS, **ctx.config}["stop_blocks"]):
        return None
    text = deliver(event, ctx)
    if text is None:
        return None
    ctx.store.stop_blocks(ctx.session_id, ctx.agent, add=True)
    return Answer(block=text)
