"""Which agent a hook runs for: ``ORCH_AGENT``, else the hook's own tmux pane.

The pane is resolved with ``tmux display-message -t $TMUX_PANE`` (never the client's active
window) and cached per Claude ``session_id``, so tmux is asked once per session. tmux names
windows per machine: on a store several machines share, the name is this host's,
``host/session:window``, but for a window whose agent ``orch migrate`` brought over from
SQLite: it goes on under the bare id SQLite gave it. ``ORCH_AGENT`` (which ``orch spawn`` sets)
is the name as given: a name someone chose names one agent fleet-wide.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orch_core.storage.store import Store

MAX_ID = 128


def valid_id(agent: str) -> bool:
    """A usable agent id: non-empty, printable, no half-resolved ``session:`` forms."""
    return (
        0 < len(agent) <= MAX_ID
        and agent.isprintable()
        and not agent.startswith(":")
        and not agent.endswith(":")
    )


def resolve(
    env: Mapping[str, str], session_id: str | None, store: Store, timeout: float = 1.0
) -> str | None:
    """The agent id, or ``None`` when this Claude session is not one of orch's agents; tmux
    gets at most ``timeout`` seconds to answer."""
    explicit = env.get("ORCH_AGENT")
    if explicit:
        return explicit if valid_id(explicit) else None
    pane = env.get("TMUX_PANE")
    if not pane:
        return None
    if session_id:
        cached = store.session_agent(session_id)
        if cached:
            return cached
    from orch_core import paths

    agent = pane_agent(pane, timeout, tmux_socket(env))
    host = paths.host(env)
    if agent and store.shared and not _kept_bare(store, agent, host):
        agent = f"{host}/{agent}"
        agent = agent if valid_id(agent) else None
    if agent and session_id:
        store.remember_session(session_id, agent, pane, tmux_socket(env), host=host)
    return agent


def _kept_bare(store: Store, agent: str, host: str) -> bool:
    """Whether this host's window ``agent`` is an agent of that bare id: one whose state
    ``orch migrate`` moved from SQLite (its queue and history are under the id SQLite gave
    it), which a new session in the window (``/clear``, Claude started again) goes on as."""
    row = store.execute("SELECT 1 FROM agents WHERE id = ? AND host = ?", (agent, host))
    return row.fetchone() is not None


def tmux_socket(env: Mapping[str, str]) -> str | None:
    """The socket of the tmux server the hook runs under (``$TMUX`` is ``socket,pid,session``)."""
    value = env.get("TMUX", "")
    return value.split(",", 1)[0] or None


def pane_agent(pane: str, timeout: float = 1.0, socket: str | None = None) -> str | None:
    """``session:window`` of ``pane`` (e.g. ``%3``), asked of the tmux server at ``socket``
    (the hook's ``$TMUX``: the supervisor answering for a hook has its own environment)."""
    from orch_core.supervisor import tmux

    try:
        out = tmux.tmux(
            socket,
            "display-message",
            "-p",
            "-t",
            pane,
            "#{session_name}:#{window_index}",
            timeout=timeout,
        )
    except tmux.TmuxError:
        return None
    agent = out.strip()
    return agent if valid_id(agent) else None
