"""The cleanup plugin: when a session ends, its unconfirmed deliveries go back in the queue.

Nothing pending is dropped; each message records why it was requeued. One its transcript shows
(no later hook confirmed it: the Stop past ``stop_blocks`` looks at nothing) is confirmed
instead: the model has it. One short transaction, well inside Claude's 1.5 s budget for
SessionEnd hooks. (presence marks the agent offline.)
"""

from __future__ import annotations

from orch_core import hookimpl
from orch_core.queue import Queue

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext


@hookimpl
def orch_session_end(event: ev.SessionEnd, ctx: HookContext) -> None:
    if not ctx.session_id:
        return
    count = Queue(ctx.store).requeue_session(ctx.session_id, event.reason or "unknown")
    if count:
        ctx.log("requeued in-flight messages at session end", count=count, reason=event.reason)
