"""The fleet at a glance: one snapshot that ``orch top`` and ``orch serve`` both show.

``orch serve`` takes one a second whatever the number of pages, so it reads only what indexes
reach in a few steps, however large the store: each agent's pending messages, the latest
:data:`EVENTS` message events and arrivals (by rowid and by time-ordered id), the hook runs of the
last :data:`HEALTH_WINDOW` (found by id, see :func:`orch_core.ops.metrics.first_run_at`) and
compactions among the newest runs orch keeps. Each agent carries its host (:mod:`orch_core.hosts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orch_core import hosts
from orch_core.ops.metrics import first_run_at, percentile
from orch_core.queue import BANDS, IMPORTED_EVENT, PENDING_SQL, PUSHED, RETRIED, band, ready_sql
from orch_core.storage.store import KEEP_RUNS

if TYPE_CHECKING:
    from typing import Any

    from orch_core.storage.store import Store

#: How far back "recent" hook health reaches, in seconds.
HEALTH_WINDOW = 300.0
#: Characters of a message body shown as a preview.
PREVIEW = 120
#: The latest message events a snapshot reads: recent changes, current tasks and delivery
#: latency come from them (an agent given nothing in that many events shows no current task).
EVENTS = 2000


def snapshot(
    store: Store, now: float, *, recent: int = 20, host_timeout: float = hosts.HOST_TIMEOUT
) -> dict[str, Any]:
    """Agents (state, host, whether that host is unreachable, last seen, pending by band,
    oldest pending, restarts in the last hour, next recovery step, last compaction, current
    task), the ``recent`` latest message state changes, and hook health and delivery latency
    over :data:`HEALTH_WINDOW`; plain data, JSON-ready. An agent's ``state`` is what its hooks
    last said; ``unreachable`` is true when its host's supervisor has not been heard from for
    ``host_timeout`` seconds (a shared store only)."""
    agents = {row["id"]: _agent(row) for row in store.agents()}
    gone = hosts.unreachable(store, now, host_timeout)
    for entry in agents.values():
        entry["unreachable"] = entry["host"] in gone
    for agent, priority, count, oldest in store.execute(
        "SELECT agent, priority, count(*), min(CASE WHEN coalesce(not_before, 0) <= ? THEN"
        f" {ready_sql(store.dialect)} END) FROM messages m WHERE {PENDING_SQL}"
        " GROUP BY agent, priority",
        (now, RETRIED),
    ):
        entry = agents.setdefault(agent, _agent({"id": agent}))
        pending = entry["pending"]
        pending[band(priority)] += count
        if oldest is not None:  # else all of them are due later
            entry["oldest_pending"] = min(entry["oldest_pending"] or oldest, oldest)
    for agent, step, state, due, started in store.execute(
        "SELECT agent, step, state, due, started FROM recoveries WHERE created > ?"
        " OR state IN ('scheduled', 'running', 'verifying') ORDER BY id",
        (now - 3600,),
    ):
        if agent not in agents:
            continue
        if step in ("restart", "fresh") and started and state != "failed":
            agents[agent]["restarts_last_hour"] += 1
        if state in ("scheduled", "running", "verifying"):
            agents[agent]["next_action"] = {"step": step, "state": state, "due": due}
    newest = store.execute("SELECT coalesce(max(id), 0) FROM hook_runs").fetchone()[0]
    for agent, ts in store.execute(
        "SELECT agent, max(ts) FROM hook_runs WHERE id > ? AND event = 'PreCompact'"
        " AND agent IS NOT NULL GROUP BY agent",
        (newest - KEEP_RUNS,),
    ):
        if agent in agents:
            agents[agent]["last_compaction"] = ts
    events = _latest_events(store, now)
    for agent, task in _current_tasks(events).items():
        if agent in agents:
            agents[agent]["task"] = {"text": (task.body or "")[:PREVIEW], "delivered": task.ts}
    return {
        "now": now,
        "agents": [agents[name] for name in sorted(agents)],
        "messages": _recent_messages(store, events, recent),
        "hooks": _hook_health(store, now),
        "delivery": _delivery_latency(events),
    }


def _agent(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "state": row.get("state", "unknown"),
        "host": row.get("host"),
        "unreachable": False,
        "last_seen": row.get("last_seen"),
        "project_dir": row.get("project_dir"),
        "pending": {name: 0 for _, name in BANDS},
        "oldest_pending": None,
        "restarts_last_hour": 0,
        "next_action": None,
        "last_compaction": None,
        "task": None,
    }


class Event:
    """One message event of the latest :data:`EVENTS`, with what the snapshot shows of its
    message; ``due`` only for a delivery within :data:`HEALTH_WINDOW`."""

    __slots__ = ("agent", "body", "due", "id", "priority", "rowid", "sender", "state", "ts")

    def __init__(self, row: tuple[Any, ...]) -> None:
        (self.rowid, self.id, self.state, self.ts, self.agent, self.sender, self.priority,
         self.body, self.due) = row  # fmt: skip


def _latest_events(store: Store, now: float) -> list[Event]:
    """The latest :data:`EVENTS` message events, newest first, found through the rowid; a
    hook's delivery within :data:`HEALTH_WINDOW` carries when its message was due (see
    :func:`orch_core.queue.ready_sql`: retries before it count, not those after). One typed
    with ``--push``, or brought in by ``orch import``, carries none: as in ``orch stats``, no
    hook handed it over (an import of a day-old push would read as a day's wait)."""
    cur = store.execute(
        "SELECT e.rowid, e.message_id, e.state, e.ts, m.agent, m.sender, m.priority, m.body,"
        " CASE WHEN e.state = 'delivered' AND e.ts > ? AND (e.detail IS NULL OR e.detail"
        f" NOT IN (?, ?)) THEN {ready_sql(store.dialect, until='e.ts')} END FROM (SELECT"
        " rowid, message_id, state, ts, detail FROM message_events ORDER BY rowid DESC"
        " LIMIT ?) e JOIN messages m ON m.id = e.message_id ORDER BY e.rowid DESC",
        (now - HEALTH_WINDOW, PUSHED, IMPORTED_EVENT, RETRIED, EVENTS),
    )
    return [Event(row) for row in cur]


def _current_tasks(events: list[Event]) -> dict[str, Event]:
    """Per agent, the latest message handed to it (of one hook's, the first it showed)."""
    tasks: dict[str, Event] = {}
    for event in events:  # newest first; one hook's deliveries share their time
        if event.state != "delivered" or event.priority >= 200:
            continue
        known = tasks.get(event.agent)
        if known is None or (known.ts == event.ts and event.rowid < known.rowid):
            tasks[event.agent] = event
    return tasks


def _recent_messages(store: Store, events: list[Event], limit: int) -> list[dict[str, Any]]:
    """The latest state changes; a message's arrival is its ``created`` (no event row), found
    through its time-ordered id."""
    arrivals = store.execute(
        "SELECT id, agent, sender, priority, created, body FROM messages ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    changes = [(e.id, e.agent, e.sender, e.priority, e.state, e.ts, e.body) for e in events]
    changes += [(mid, agent, sender, priority, "queued", created, body)
                for mid, agent, sender, priority, created, body in arrivals]  # fmt: skip
    changes.sort(key=lambda change: change[5], reverse=True)
    names = ("id", "agent", "sender", "priority", "state", "ts", "text")
    rows = [dict(zip(names, change, strict=True)) for change in changes[:limit]]
    for row in rows:
        row["band"] = band(row["priority"])
        row["text"] = (row["text"] or "")[:PREVIEW]
    return rows


def _hook_health(store: Store, now: float) -> dict[str, Any]:
    runs, failed = 0, 0
    durations: list[float] = []
    for ok, duration in store.execute(
        "SELECT ok, duration_ms FROM hook_runs WHERE id >= ?",
        (first_run_at(store, now - HEALTH_WINDOW),),
    ):
        runs += 1
        failed += not ok
        durations.append(duration)
    durations.sort()
    return {
        "window": HEALTH_WINDOW,
        "runs": runs,
        "failed": failed,
        "p50_ms": percentile(durations, 50),
    }


def _delivery_latency(events: list[Event]) -> dict[str, Any]:
    """What senders waited: from a message being due (sent, retried, or its ``--in``/``--at``
    time) to each of its deliveries by a hook within the window (of the latest :data:`EVENTS`
    events), with its median the nearest rank, as in ``orch stats``."""
    waits = sorted(e.ts - e.due for e in events if e.due is not None)  # deliveries in the window
    return {
        "window": HEALTH_WINDOW,
        "delivered": len(waits),
        "p50_s": percentile(waits, 50),
        "max_s": waits[-1] if waits else None,
    }
