"""Agent presence: each agent's state and last-seen time, from the hooks it fires.

``idle`` on a SessionStart that leaves the agent at an empty prompt (startup, resume, clear: a
prompt given on the command line follows at once, and makes it ``busy``); after a compaction the
agent carries on as it was. ``busy`` on prompts and tool events (a subagent's only within its
agent's turn: one in the background works on after the Stop), and on a Stop that a plugin
kept going; ``idle`` on a Stop that really stops and on the ``idle_prompt`` notification (one
``failed`` or ``stopped`` stays so: Claude Code sends it after a failed turn too);
``needs_input`` on the notifications that say a dialog waits for a person (a permission prompt,
an MCP server's question) and when the agent asks one (AskUserQuestion), until the next prompt,
tool or Stop hook shows it at work again: nothing types a wake-up line into its dialog, and the
supervisor never takes it for hung. An agent whose person pressed Esc is ``needs_input`` too:
Claude Code asks what to do instead and fires no hook, so the supervisor reads it from the
transcript of a ``busy`` agent that has gone quiet. ``error`` on StopFailure; ``offline`` on
SessionEnd, except for an agent ``stopped`` or ``failed``, which stays so (else the supervisor
restarts it).
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
#: How Claude Code's transcript records a turn its person ended with Esc (during a tool call:
#: "... for tool use]").
INTERRUPTED = "[Request interrupted by user"
#: Seconds a ``busy`` agent goes without a hook before its transcript is read for an interrupt.
QUIET_SECONDS = 3.0
#: agent: its transcript's size and mtime when last read (this process is the supervisor)
_read: dict[str, tuple[int, int]] = {}


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
    _at_work(event, ctx, "needs_input" if event.tool_name == ASKS_A_PERSON else "busy")


@hookimpl
def orch_post_tool_use(event: ev.PostToolUse, ctx: HookContext) -> None:
    _at_work(event, ctx, "busy")


@hookimpl
def orch_post_tool_use_failure(event: ev.PostToolUseFailure, ctx: HookContext) -> None:
    _at_work(event, ctx, "busy")


#: States a subagent's tool call may move its agent from: its agent's turn runs.
IN_A_TURN = ("busy", "needs_input")


def _at_work(event: ev.Event, ctx: HookContext, state: str) -> None:
    """``state`` for a tool call of the agent's own, or of a subagent within its running turn.
    A subagent started in the background works on after its agent's Stop, while the agent
    waits at its prompt: its tool calls leave the agent as it is (else ``busy``, never woken
    for its messages, which those calls, a subagent's, do not deliver)."""
    if not event.in_subagent:
        _seen(ctx, state)
        return
    old = _state(ctx)
    if old not in IN_A_TURN:
        return
    import time

    with ctx.store.transaction() as tx:
        moved = tx.execute(
            "UPDATE agents SET state = ?, last_seen = ?,"
            " state_changed = CASE WHEN state = ? THEN state_changed ELSE ? END"
            " WHERE id = ? AND state = ?",
            (state, time.time(), state, time.time(), ctx.agent, old),
        ).rowcount
    if moved and old != state:
        ctx.fire("orch_agent_state_changed", agent=ctx.agent, old=old, new=state)


@hookimpl
def orch_hook_answered(event: ev.Event, blocked: bool, ctx: HookContext) -> None:
    if event.name == "Stop":
        _seen(ctx, "busy" if blocked else "idle")


@hookimpl
def orch_notification(event: ev.Notification, ctx: HookContext) -> None:
    if event.notification_type == "idle_prompt":
        # Claude Code says so a minute after any reply, a failed one too: an agent given up on
        # stays ``failed`` (for `orch doctor`, and unwoken) until it is prompted or restarted
        if _state(ctx) not in SETTLED:
            _seen(ctx, "idle")
    elif event.notification_type in NEEDS_INPUT:
        _seen(ctx, "needs_input")


#: Verdicts a user (``orch stop``) or the auto_restart plugin (a give-up) reached: they stand
#: until the agent is at work again (a prompt, a tool, a start).
SETTLED = ("failed", "stopped")


def _state(ctx: HookContext) -> str | None:
    row = ctx.store.execute("SELECT state FROM agents WHERE id = ?", (ctx.agent,)).fetchone()
    return None if row is None else str(row[0])


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
    if ctx.agent is None or not _latest(ctx):
        return
    _unless_settled(ctx, "offline", (*LIVE, "error"))


def _latest(ctx: HookContext) -> bool:
    """Whether the session ending is the agent's latest (or orch knows no other): another
    session may answer as the agent (a Claude started in a window renumbered to the agent's
    number, a restart whose old session ended late), and the end of an older one leaves the
    agent as its newer one said, or it would be offline, never woken, while it waits."""
    row = ctx.store.execute("SELECT session_id FROM agents WHERE id = ?", (ctx.agent,)).fetchone()
    return not ctx.session_id or row is None or row[0] in (None, ctx.session_id)


@hookimpl
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    """``needs_input`` for a quiet ``busy`` agent whose person pressed Esc: Claude Code then
    waits at its prompt without a Stop (or any hook), and the agent would stay ``busy`` (no
    wake-up for its messages) until taken for hung and restarted. A transcript is read again
    only once it has changed; a hook meanwhile keeps the agent ``busy``."""
    if not agents:
        return
    marks = ", ".join("?" for _ in agents)
    rows = ctx.store.execute(
        "SELECT a.id, a.last_seen, s.transcript FROM agents a"
        " JOIN sessions s ON s.session_id = a.session_id"
        f" WHERE a.state = 'busy' AND a.last_seen < ? AND a.id IN ({marks})",
        (now - QUIET_SECONDS, *agents),
    ).fetchall()
    for agent, last_seen, transcript in rows:
        if not _changed(agent, transcript) or not interrupted(transcript):
            continue
        with ctx.store.transaction() as tx:
            moved = tx.execute(
                "UPDATE agents SET state = 'needs_input', state_changed = ?"
                " WHERE id = ? AND state = 'busy' AND last_seen = ?",
                (now, agent, last_seen),
            ).rowcount
        if moved:
            ctx.fire("orch_agent_state_changed", agent=agent, old="busy", new="needs_input")


def _changed(agent: str, transcript: str | None) -> bool:
    """Whether ``transcript`` changed since this agent's last look (or was never looked at)."""
    import os

    try:
        info = os.stat(transcript or "")
    except OSError:
        return False
    seen = (info.st_size, info.st_mtime_ns)
    if _read.get(agent) == seen:
        return False
    _read[agent] = seen
    return True


def interrupted(transcript: str | None) -> bool:
    """Whether the main conversation's last message in ``transcript`` is Claude Code's record
    of an Esc (other entries, such as its settings, may follow it)."""
    import json

    from orch_core.queue import transcript_tail

    for line in reversed(transcript_tail(transcript).splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the tail's first line, cut
        if not isinstance(entry, dict) or entry.get("isSidechain"):
            continue
        if entry.get("type") == "assistant":
            return False
        if entry.get("type") == "user":
            message = entry.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            return any(
                isinstance(b, dict) and str(b.get("text", "")).startswith(INTERRUPTED)
                for b in blocks
            )
    return False
