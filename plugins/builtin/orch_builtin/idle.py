"""The idle plugin: wakes an idle agent when a message arrives for it.

No hook fires while an agent waits at its prompt, so hooks alone never reach it. When a message
is queued for an agent that presence saw go idle, this plugin types one fixed, short line into the
agent's tmux pane and presses Enter; the UserPromptSubmit hook then delivers the queue. It types
through tmux's argv (never a shell), with ``send-keys -l`` and a separate Enter, holding one lock
per pane, only while the agent is idle and once per batch (the agent is ``waking`` until its next
prompt), and never into an input box that holds a person's unsent text: their prompt's hook
delivers the messages, or the line is typed once the box is empty (``rewake_seconds``). A
message body is never typed. An agent that starts (or is cleared, or compacted while idle)
with messages waiting is woken the same way once its SessionStart is answered: the
messages reach its context then, but the model acts on them only in a turn. A program still
starting may take the line but not its Enter: the supervisor (started here) presses Enter once
more when no prompt followed within ``nudge_seconds``, and types the line again after
``rewake_seconds``. A Stop that lets the agent stop with a message ready (the queue's
``stop_blocks`` reached) starts the supervisor too, which wakes it.

tmux reaches this machine's panes only. On a store several hosts share, the sender wakes an
agent of its own host as above, and leaves any other to its host's supervisor, which the store
notifies as the message is queued (``orch_wake_agent``).
"""

from __future__ import annotations

from orch_core import Setting, hookimpl, log, paths
from orch_core.plugins.settings import defaults
from orch_core.queue import Queue

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext
    from orch_core.storage.store import Store

WAKE_LINE = "orch: new messages are waiting for you."
SETTINGS: dict[str, Any] = {
    "nudge_seconds": Setting(2.0, min=0.1),  # a wake-up with no prompt gets one more Enter...
    "rewake_seconds": Setting(30.0, min=1),  # ...and after this, the line is typed again
}
DEFAULTS = defaults(SETTINGS)


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


@hookimpl
def orch_message_enqueued(message: dict[str, Any], ctx: HookContext) -> None:
    if not Queue(ctx.store).has_ready(message["agent"]):
        return  # e.g. sent with --in: the supervisor wakes the agent when it falls due
    if message.get("state", "queued") != "queued":  # typed in already (orch send --push)
        return
    stale = float({**DEFAULTS, **ctx.config}["rewake_seconds"])
    if wake(ctx.store, message["agent"], ctx.env, stale):
        ctx.fire("orch_agent_state_changed", agent=message["agent"], old="idle", new="waking")


@hookimpl
def orch_wake_agent(agent: str, ctx: HookContext) -> None:
    """A message for ``agent`` was queued somewhere in the fleet: wake it here, at once."""
    if not Queue(ctx.store).has_ready(agent):
        return
    stale = float({**DEFAULTS, **ctx.config}["rewake_seconds"])
    if wake(ctx.store, agent, ctx.env, stale):
        ctx.fire("orch_agent_state_changed", agent=agent, old="idle", new="waking")


@hookimpl
def orch_hook_answered(event: ev.Event, blocked: bool, ctx: HookContext) -> None:
    if event.name == "Stop" and not blocked and ctx.agent is not None:
        _left_waiting(ctx.agent, ctx)
    if event.name != "SessionStart" or ctx.agent is None or event.in_subagent:
        return
    if not Queue(ctx.store).has_pending(ctx.agent):
        return
    stale = float({**DEFAULTS, **ctx.config}["rewake_seconds"])
    if wake(ctx.store, ctx.agent, ctx.env, stale):
        ctx.fire("orch_agent_state_changed", agent=ctx.agent, old="idle", new="waking")
        from orch_core.supervisor import lifecycle

        lifecycle.ensure_supervisor(ctx.env)  # to press Enter again if the start ate it


def _left_waiting(agent: str, ctx: HookContext) -> None:
    """A Stop that let the agent stop with a message ready (past ``stop_blocks``, or one sent
    as the hook ran, whose wake-up found the agent busy): no send comes to wake it, so the
    supervisor must, at its next tick, once the agent is idle; one is started if none runs
    (agents started by hand have none)."""
    if not Queue(ctx.store).has_ready(agent):
        return
    from orch_core.supervisor import lifecycle

    lifecycle.ensure_supervisor(ctx.env)


#: Seconds an agent may be ``starting`` before it is taken for idle: its SessionStart came
#: without a word from presence (a hook past its budget), or its pane is dead (which the
#: supervisor's watch sees).
STARTING_GRACE = 30.0
#: agent: the wake-up it was pressed Enter again for (this process is the supervisor)
_nudged: dict[str, float] = {}


@hookimpl
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    """Wake the project's idle agents whose messages became deliverable (``--in``), press
    Enter again for a wake-up that brought no prompt, and take an agent still ``starting``
    after :data:`STARTING_GRACE` with messages waiting for idle."""
    if not agents:
        return
    queue = Queue(ctx.store)
    settings = {**DEFAULTS, **ctx.config}
    marks = ", ".join("?" for _ in agents)
    rows = ctx.store.execute(
        "SELECT id, state, state_changed FROM agents WHERE state IN ('idle', 'waking', 'starting')"
        f" AND id IN ({marks})",
        agents,
    ).fetchall()
    for agent, state, changed in rows:
        waited = now - changed
        if state == "starting":
            if waited < STARTING_GRACE or not queue.has_ready(agent, now):
                continue
            ctx.store.transition(agent, "idle", only_from=(), or_stale=("starting", STARTING_GRACE))
        if (
            state == "waking"
            and float(settings["nudge_seconds"]) <= waited
            and _nudged.get(agent) != changed
        ):
            _nudged[agent] = changed
            nudge(ctx.store, agent, ctx.env)
        elif queue.has_ready(agent, now):
            wake(ctx.store, agent, ctx.env, float(settings["rewake_seconds"]))


def nudge(store: Store, agent: str, env: Mapping[str, str]) -> bool:
    """Press Enter once more in the pane of an agent that was woken but sent no prompt."""
    from orch_core.supervisor import tmux

    target = tmux.reported_pane(store, agent, paths.host(env))
    if target is None:
        return False
    try:  # never an Enter that sends what a person is still typing
        return tmux.press_enter(target[0], target[1], paths.state_dir(env), only_for=WAKE_LINE)
    except tmux.Draft:
        return False


def wake(store: Store, agent: str, env: Mapping[str, str], rewake_seconds: float) -> bool:
    """Type the wake-up line into an idle agent's pane, once per batch; whether it did. An
    agent whose pane is on another host is left to that host's supervisor; a pane that is no
    longer the agent's (tmux restarted) gets nothing."""
    known = store.agent_pane(agent, host=paths.host(env))
    if known is None:
        return False
    if not store.transition(
        agent, "waking", only_from=("idle",), or_stale=("waking", rewake_seconds)
    ):
        return False
    from orch_core.supervisor import tmux  # subprocess: only when there is something to type

    target = tmux.reported_pane(store, agent, paths.host(env))
    try:
        if target is not None and tmux.type_line(
            *target, WAKE_LINE, paths.state_dir(env), spare_draft=True
        ):
            return True
    except tmux.Draft:  # their Enter delivers the messages; else this is tried again when stale
        log.write("info", "not woken: a person is typing in its pane", env, agent=agent)
        return False
    except tmux.Exited:  # its next SessionStart (Claude started again there) wakes it
        log.write("warning", "not woken: Claude exited from its pane, a shell is left", env,
                  agent=agent, pane=known[0])  # fmt: skip
        return False
    why = "the pane is gone, or no longer the agent's" if target is None else "tmux failed"
    log.write("warning", "could not wake the agent", env, agent=agent, pane=known[0], why=why)
    return False
