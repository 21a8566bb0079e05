"""The fleet at a glance: one snapshot that ``orch top`` and ``orch serve`` both show.

A handful of indexed reads over the core's own tables (agents, messages, recoveries, hook
runs, hosts), so a live view can take one every second at no real cost to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orch_core import hosts
from orch_core.queue import BANDS, PENDING_SQL, band

if TYPE_CHECKING:
    from typing import Any

    from orch_core.storage.store import Store

#: How far back "recent" hook health reaches, in seconds.
HEALTH_WINDOW = 300.0
#: Characters of a message body shown as a preview.
PREVIEW = 120


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
        f"SELECT agent, priority, count(*), min(created) FROM messages WHERE {PENDING_SQL}"
        " GROUP BY agent, priority"
    ):
        entry = agents.setdefault(agent, _agent({"id": agent}))
        pending = entry["pending"]
        pending[band(priority)] += count
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
    for agent, ts in store.execute(
        "SELECT agent, max(ts) FROM hook_runs WHERE event = 'PreCompact' AND agent IS NOT NULL"
        " GROUP BY agent"
    ):
        if agent in agents:
            agents[agent]["last_compaction"] = ts
    for agent, body, delivered in store.execute(
        "SELECT m.agent, m.body, m.delivered FROM messages m JOIN (SELECT agent, max(delivered)"
        " AS latest FROM messages WHERE state IN ('delivered', 'confirmed') AND priority < 200"
        " GROUP BY agent) t ON t.agent = m.agent AND m.delivered = t.latest"
        " WHERE m.state IN ('delivered', 'confirmed') AND m.priority < 200"
        " ORDER BY m.priority DESC, m.seq"  # of one hook's messages, the first it showed
    ):
        if agent in agents and agents[agent]["task"] is None:
            agents[agent]["task"] = {"text": (body or "")[:PREVIEW], "delivered": delivered}
    return {
        "now": now,
        "agents": [agents[name] for name in sorted(agents)],
        "messages": _recent_messages(store, recent),
        "hooks": _hook_health(store, now),
        "delivery": _delivery_latency(store, now),
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


def _recent_messages(store: Store, limit: int) -> list[dict[str, Any]]:
    """The latest state changes; a message's arrival is its ``created`` (no event row)."""
    cur = store.execute(
        "SELECT m.id, m.agent, m.sender, m.priority, e.state, e.ts, m.body FROM"
        " (SELECT * FROM (SELECT message_id, state, ts FROM message_events"
        "  ORDER BY ts DESC LIMIT ?) changed UNION ALL SELECT * FROM (SELECT id, 'queued',"
        "  created FROM messages ORDER BY created DESC LIMIT ?) arrived) e"
        " JOIN messages m ON m.id = e.message_id ORDER BY e.ts DESC LIMIT ?",
        (limit, limit, limit),
    )
    names = ("id", "agent", "sender", "priority", "state", "ts", "text")
    rows = [dict(zip(names, row, strict=True)) for row in cur]
    for row in rows:
        row["band"] = band(row["priority"])
        row["text"] = (row["text"] or "")[:PREVIEW]
    return rows


def _hook_health(store: Store, now: float) -> dict[str, Any]:
    runs, failed, p50 = 0, 0, None
    durations = []
    for ok, duration in store.execute(
        "SELECT ok, duration_ms FROM hook_runs WHERE ts > ?", (now - HEALTH_WINDOW,)
    ):
        runs += 1
        failed += not ok
        durations.append(duration)
    if durations:
        durations.sort()
        p50 = durations[len(durations) // 2]
    return {"window": HEALTH_WINDOW, "runs": runs, "failed": failed, "p50_ms": p50}


def _delivery_latency(store: Store, now: float) -> dict[str, Any]:
    """What senders waited: from a message being due (sent, or its ``--in``/``--at`` time) to
    each of its deliveries within the window."""
    waits = sorted(
        ts - max(created, not_before or created)
        for ts, created, not_before in store.execute(
            "SELECT e.ts, m.created, m.not_before FROM message_events e JOIN messages m"
            " ON m.id = e.message_id WHERE e.state = 'delivered' AND e.ts > ?",
            (now - HEALTH_WINDOW,),
        )
    )
    return {
        "window": HEALTH_WINDOW,
        "delivered": len(waits),
        "p50_s": waits[len(waits) // 2] if waits else None,
        "max_s": waits[-1] if waits else None,
    }
