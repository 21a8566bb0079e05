"""Agent presence: each agent's state and last-seen time, from the hooks it fires.

``starting`` on SessionStart; ``busy`` on prompts and tool events; ``idle`` on Stop and on the
``idle_prompt`` notification; ``error`` on StopFailure; ``offline`` on SessionEnd. A change fires
``orch_agent_state_changed``. ``orch agents`` lists the result.
"""

from __future__ import annotations

from orch_core import hookimpl

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from orch_core import events as ev
    from orch_core.context import HookContext


def _seen(ctx: HookContext, state: str) -> None:
    if ctx.agent is None:
        return
    old = ctx.store.set_agent_state(
        ctx.agent, state, session_id=ctx.session_id, project_dir=ctx.project_dir
    )
    if old != state:
        ctx.fire("orch_agent_state_changed", agent=ctx.agent, old=old, new=state)


@hookimpl
def orch_session_start(ctx: HookContext) -> None:
    _seen(ctx, "starting")


@hookimpl
def orch_user_prompt_submit(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_pre_tool_use(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_post_tool_use(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_post_tool_use_failure(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_stop(ctx: HookContext) -> None:
    _seen(ctx, "idle")


@hookimpl
def orch_notification(event: ev.Notification, ctx: HookContext) -> None:
    if event.notification_type == "idle_prompt":
        _seen(ctx, "idle")


@hookimpl
def orch_stop_failure(ctx: HookContext) -> None:
    _seen(ctx, "error")


@hookimpl
def orch_session_end(ctx: HookContext) -> None:
    _seen(ctx, "offline")
