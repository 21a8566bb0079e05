"""Agent presence: each agent's state and last-seen time, from the hooks it fires.

``idle`` on a SessionStart that leaves the agent at an empty prompt (startup, resume, clear: a
prompt given on the command line follows at once, and makes it ``busy``); after a compaction the
agent carries on as it was. ``busy`` on prompts and tool events, and on a Stop that a plugin
kept going; ``idle`` on a Stop that really stops and on the ``idle_prompt`` notification;
``needs_input`` on the notifications that say a dialog waits for a person (a permission prompt,
an MCP server's question) and when the agent asks one (AskUserQuestion), until the next prompt,
tool or Stop hook shows it at work again: nothing types a wake-up line into its dialog, and the
supervisor never takes it for hung. ``error`` on StopFailure; ``offline`` on SessionEnd, except
for an agent ``stopped`` or ``failed``, which stays so (else the supervisor restarts it).
(``starting`` is set by ``orch spawn`` and restarts, until the SessionStart.) A change fires
``orch_agent_state_changed``. It also remembers each session's tmux pane (and transcript), so
that the idle plugin can wake the agent and ``orch stats`` count its tokens. ``orch agents``
lists the result, each agent with its host (the machine whose hooks it last came from).
"""

from __future__ import annotations

from orch_core import hookimpl, paths
from orch_core.hook import agents

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext


LIVE = ("starting", "busy", "idle", "needs_input", "waking", "offline", "unknown")
#: Notifications that mean a dialog waits for a person: a permission prompt (Claude sends it
#: after about 6 s), an MCP elicitation (a form or a URL), a question to the user.
NEEDS_INPUT = frozenset(
    ("permission_prompt", "elicitation_dialog", "elicitation_url_dialog", "agent_needs_input")
)
#: The tool whose call waits for a person's choice (no notification comes for it).
ASKS_A_PERSON = "AskUserQuestion"


def _seen(ctx: HookContext, state: str) -> None:
    if ctx.agent is None:
        return
    old = ctx.store.set_agent_state(
        ctx.agent,
        state,
        session_id=ctx.session_id,
        project_dir=ctx.project_dir,
        host=paths.host(ctx.env),
    )
    if old != state:
        ctx.fire("orch_agent_state_changed", agent=ctx.agent, old=old, new=state)


def _remember_pane(event: ev.Event, ctx: HookContext) -> None:
    pane = ctx.env.get("TMUX_PANE")
    if ctx.agent and ctx.session_id and pane:
        ctx.store.remember_session(
            ctx.session_id,
            ctx.agent,
            pane,
            agents.tmux_socket(ctx.env),
            event.transcript_path,
            host=paths.host(ctx.env),
        )


@hookimpl
def orch_session_start(event: ev.SessionStart, ctx: HookContext) -> None:
    _remember_pane(event, ctx)
    if event.source != "compact":
        _seen(ctx, "idle")


@hookimpl
def orch_user_prompt_submit(event: ev.UserPromptSubmit, ctx: HookContext) -> None:
    _remember_pane(event, ctx)
    _seen(ctx, "busy")


@hookimpl
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> None:
    _seen(ctx, "needs_input" if event.tool_name == ASKS_A_PERSON else "busy")


@hookimpl
def orch_post_tool_use(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_post_tool_use_failure(ctx: HookContext) -> None:
    _seen(ctx, "busy")


@hookimpl
def orch_hook_answered(event: ev.Event, blocked: bool, ctx: HookContext) -> None:
    if event.name == "Stop":
        _seen(ctx, "busy" if blocked else "idle")


@hookimpl
def orch_notification(event: ev.Notification, ctx: HookContext) -> None:
    if event.notification_type == "idle_prompt":
        _seen(ctx, "idle")
    elif event.notification_type in NEEDS_INPUT:
        _seen(ctx, "needs_input")


def _unless_settled(ctx: HookContext, state: str, only_from: tuple[str, ...]) -> None:
    """``state`` for an agent in one of ``only_from``, or one orch has not heard from: a
    verdict another hook or a user reached (``failed``, ``stopped``) stands."""
    if ctx.agent is None:
        return
    store = ctx.store
    before = store.execute("SELECT state FROM agents WHERE id = ?", (ctx.agent,)).fetchone()
    if store.transition(ctx.agent, state, only_from=only_from):
        old = before[0] if before else None
    elif store.add_agent(
        ctx.agent,
        state,
        session_id=ctx.session_id,
        project_dir=ctx.project_dir,
        host=paths.host(ctx.env),
    ):
        old = None  # the first orch hears of it
    else:
        return
    if old != state:
        ctx.fire("orch_agent_state_changed", agent=ctx.agent, old=old, new=state)


@hookimpl
def orch_stop_failure(ctx: HookContext) -> None:
    # auto_restart may mark the agent failed in the same hook, before or after this: that
    # verdict stands, so an agent orch has not heard from is only added, never overwritten
    _unless_settled(ctx, "error", LIVE)


@hookimpl
def orch_session_end(ctx: HookContext) -> None:
    # `orch stop` kills the pane, and Claude Code ends its session with a SessionEnd: an
    # `offline` over `stopped` (or `failed`) would have the supervisor restart the dead pane
    _unless_settled(ctx, "offline", (*LIVE, "error"))
