"""The fleet's metrics, from what the store already records: ``orch stats``.

Nothing here runs in ``orch-hook``, and nothing here adds to what a hook writes. The store keeps
only the newest :data:`~orch_core.storage.store.KEEP_RUNS` hook runs, so :func:`roll_up` sums
each hour that has ended into hourly tables (per event, and per agent and event: runs,
failures, timeouts, kills and a histogram of durations; per plugin: its outcomes), and the hour
so far when a busy fleet's runs would otherwise be pruned before it ends. ``orch
supervise`` does it as it keeps house and ``orch stats`` before it reads, so the sums outlive
the runs and a long window costs a few rows per hour. Messages, recoveries, alerts and agents
are read as they are; each plugin adds its own section through ``orch_stats``.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING

from orch_core import hosts, log
from orch_core.queue import (
    BANDS,
    IMPORTED_EVENT,
    PENDING_SQL,
    PUSHED,
    RETRIED,
    ready_sql,
    transcript_tail,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping
    from typing import Any

    from orch_core.hook.context import Runtime
    from orch_core.storage.store import Connection, Store

HOUR = 3600
#: The steps a recovery in the ``recoveries`` table may take, in the order they are tried.
STEPS = ("reprompt", "restart", "fresh", "give_up")
#: Seconds past the end of an hour before it is summed: a run is recorded as it ends.
SETTLE = 300
#: Runs left unsummed past which the hour so far is summed too: a busy fleet (ten agents at a
#: dozen tool calls a minute, three runs each) records more runs in an hour than the store
#: keeps (:data:`~orch_core.storage.store.KEEP_RUNS`), and the hook path would prune the
#: hour's first runs before it ended.
BACKLOG = 5000
#: Hours of sums kept.
KEEP_HOURS = 31 * 24
#: Durations are counted in buckets, this many to a decade: each 12% wide, so a percentile
#: read from them (the middle of its bucket) is within 6% of the exact value.
PER_DECADE = 20
SHORTEST_MS = 0.01
#: The event that counts a compaction: once per compaction, manual or automatic, of the main
#: session (SessionStart's ``source`` is not in the run record).
COMPACTION = "PreCompact"
#: Transcripts read per agent for its tokens: those of its newest sessions.
TRANSCRIPTS_PER_AGENT = 3
PLUGIN_OUTCOMES = ("error", "invalid", "timeout", "killed")
TOKENS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
}
ROLLUP = "hook_runs"


def report(runtime: Runtime, since: float, now: float, agent: str | None = None) -> dict[str, Any]:
    """Everything ``orch stats`` shows: the core's sections, then each plugin's own under
    ``plugins``. Runs the backstop stopped are recorded and ended hours summed first."""
    from orch_core.hook import backstop

    store = runtime.store
    backstop.collect(runtime.env, store, now)
    roll_up(store, now)
    timeout = float(runtime.plan.settings.get("host_timeout", hosts.HOST_TIMEOUT))
    result = collect(store, since, now, agent, host_timeout=timeout)
    result["plugins"] = plugin_sections(runtime, since, now, agent)
    return result


def collect(
    store: Store,
    since: float,
    now: float,
    agent: str | None = None,
    *,
    host_timeout: float = hosts.HOST_TIMEOUT,
) -> dict[str, Any]:
    """The core's metrics over ``[since, now]``, of ``agent`` alone or of every agent."""
    messages, queue = message_stats(store, since, now, agent)
    hooks, compactions = hook_stats(store, since, now, agent)
    gone = hosts.unreachable(store, now, host_timeout)
    return {
        "window": {"since": since, "until": now, "agent": agent},
        "agents": agent_stats(store, agent, gone),
        "hosts": host_stats(store, agent, gone),
        "messages": messages,
        "queue": queue,
        "hooks": hooks,
        "restarts": restart_stats(store, since, now, agent),
        "compactions": compactions,
        "alerts": alert_stats(store, since, agent),
        "tokens": token_stats(store, since, agent),
    }


def plugin_sections(
    runtime: Runtime, since: float, now: float, agent: str | None
) -> dict[str, Any]:
    """Each plugin's ``orch_stats`` section under its name; one that fails says why."""
    sections: dict[str, Any] = {}
    for impl in runtime.plan.impls("orch_stats"):
        args = {"since": since, "now": now, "agent": agent, "ctx": runtime.context(impl.plugin)}
        try:
            section = impl.function(**{n: args[n] for n in impl.argnames if n in args})
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.write("error", "plugin stats failed", runtime.env, plugin=impl.plugin, error=error)
            section = {"error": error}
        if section is not None:
            sections[impl.plugin] = section
    return sections


# -- percentiles ---------------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least ``p`` percent of ``ordered`` (sorted) at
    or below it."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: Iterable[float]) -> dict[str, Any]:
    """How many, and the 50th, 90th and 99th percentiles."""
    ordered = sorted(values)
    return {"n": len(ordered), **{f"p{p}": _round(percentile(ordered, p)) for p in (50, 90, 99)}}


def bucket(ms: float) -> int:
    return math.floor(PER_DECADE * math.log10(max(ms, SHORTEST_MS)))


def bucket_percentile(counts: Mapping[int, int], p: float) -> float | None:
    """The nearest-rank percentile of counted durations: the middle of its bucket."""
    rank = math.ceil(p / 100 * sum(counts.values()))
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        if seen >= max(rank, 1):
            return float(10 ** ((key + 0.5) / PER_DECADE))
    return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _rate(count: int, seconds: float) -> float | None:
    """Per hour."""
    return round(count / (seconds / HOUR), 3) if seconds > 0 else None


# -- hook runs -----------------------------------------------------------------------------------


class RunSums:
    """Hook runs summed per hour: per event, and per agent and event (runs, failed, timeouts,
    killed, and duration buckets), and per plugin (runs, failed, then one count per outcome of
    :data:`PLUGIN_OUTCOMES`; a plugin's outcome counts once per run)."""

    def __init__(self) -> None:
        self.events: dict[tuple[Any, ...], list[Any]] = {}
        self.agents: dict[tuple[Any, ...], list[Any]] = {}
        self.plugins: dict[tuple[Any, ...], list[int]] = {}

    def add_runs(self, rows: Iterable[Any], *, hourly: bool = True) -> int:
        """Add ``(ts, event, agent, duration_ms, ok, plugins)`` rows (all as one hour unless
        ``hourly``); how many."""
        added = 0
        for ts, event, agent, duration_ms, ok, plugins in rows:
            hour = int(ts // HOUR * HOUR) if hourly else 0
            outcomes: dict[str, set[str]] = {}
            try:
                entries = json.loads(plugins)
            except ValueError:
                entries = []
            for entry in entries:
                outcomes.setdefault(str(entry.get("plugin")), set()).add(entry.get("outcome"))
            every = set().union(*outcomes.values())
            run = (not ok, "timeout" in every, "killed" in every, bucket(duration_ms))
            _count(self.events.setdefault((hour, event), [0, 0, 0, 0, {}]), run)
            if agent is not None:
                _count(self.agents.setdefault((hour, agent, event), [0, 0, 0, 0, {}]), run)
            for plugin, kinds in outcomes.items():
                row = self.plugins.setdefault((hour, plugin), [0] * (2 + len(PLUGIN_OUTCOMES)))
                row[0] += 1
                row[1] += kinds != {"ok"}
                for i, kind in enumerate(PLUGIN_OUTCOMES, 2):
                    row[i] += kind in kinds
            added += 1
        return added

    def add_hours(self, store: Store, first_hour: int, agent: str | None = None) -> None:
        """Add the summed hours from ``first_hour`` on, all as one: every agent's per event
        and per plugin, or ``agent``'s per event."""
        table, mine = ("agent_hours", " AND agent = ?") if agent else ("run_hours", "")
        for event, *counts, durations in store.execute(
            f"SELECT event, runs, failed, timeouts, killed, durations FROM {table}"
            f" WHERE hour >= ?{mine}",
            (first_hour, *([agent] if agent else [])),
        ):
            sums = self.events.setdefault((0, event), [0, 0, 0, 0, {}])
            for i, n in enumerate(counts):
                sums[i] += n
            _merge(sums[4], _buckets(durations))
        if agent:
            return
        for plugin, *counts in store.execute(
            "SELECT plugin, runs, failed, errors, invalid, timeouts, killed FROM plugin_hours"
            " WHERE hour >= ?",
            (first_hour,),
        ):
            row = self.plugins.setdefault((0, plugin), [0] * (2 + len(PLUGIN_OUTCOMES)))
            for i, n in enumerate(counts):
                row[i] += n

    def save(self, tx: Connection) -> None:
        """Add these sums to the hourly tables."""
        _save_runs(tx, "run_hours", ("hour", "event"), self.events)
        _save_runs(tx, "agent_hours", ("hour", "agent", "event"), self.agents)
        tx.executemany(
            "INSERT INTO plugin_hours (hour, plugin, runs, failed, errors, invalid, timeouts,"
            " killed) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour, plugin) DO UPDATE SET"
            " runs = plugin_hours.runs + excluded.runs,"
            " failed = plugin_hours.failed + excluded.failed,"
            " errors = plugin_hours.errors + excluded.errors,"
            " invalid = plugin_hours.invalid + excluded.invalid,"
            " timeouts = plugin_hours.timeouts + excluded.timeouts,"
            " killed = plugin_hours.killed + excluded.killed",
            [(*key, *counts) for key, counts in self.plugins.items()],
        )

    def report(self) -> dict[str, Any]:
        """Totals, per event and per plugin (all hours as one)."""
        by_event: dict[str, dict[str, Any]] = {}
        every: dict[int, int] = {}
        totals = [0, 0, 0, 0]
        for (_, event), (*counts, durations) in sorted(self.events.items()):
            by_event[event] = _runs(counts, durations)
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
            _merge(every, durations)
        by_plugin = {}
        for (_, plugin), (runs, failed, *outcomes) in sorted(self.plugins.items()):
            row: dict[str, Any] = {"runs": runs, "failed": failed}
            row.update(zip(("errors", "invalid", "timeouts", "killed"), outcomes, strict=True))
            row["ok_rate"] = _round(1 - failed / runs, 4) if runs else None
            by_plugin[plugin] = row
        return {**_runs(totals, every), "by_event": by_event, "by_plugin": by_plugin}


def _runs(counts: list[int], durations: Mapping[int, int]) -> dict[str, Any]:
    runs, failed, timeouts, killed = counts
    return {
        "runs": runs,
        "failed": failed,
        "timeouts": timeouts,
        "killed": killed,
        "ok_rate": _round(1 - failed / runs, 4) if runs else None,
        "p50_ms": _round(bucket_percentile(durations, 50), 2),
        "p99_ms": _round(bucket_percentile(durations, 99), 2),
    }


def _count(sums: list[Any], run: tuple[bool, bool, bool, int]) -> None:
    failed, timed_out, killed, key = run
    sums[0] += 1
    sums[1] += failed
    sums[2] += timed_out
    sums[3] += killed
    sums[4][key] = sums[4].get(key, 0) + 1


def _save_runs(
    tx: Connection, table: str, keys: tuple[str, ...], sums: Mapping[tuple[Any, ...], list[Any]]
) -> None:
    """Add runs summed under ``keys`` to ``table``, merging the duration buckets."""
    match = " AND ".join(f"{k} = ?" for k in keys)
    for key, (runs, failed, timeouts, killed, durations) in sums.items():
        row = tx.execute(f"SELECT durations FROM {table} WHERE {match}", key).fetchone()
        if row is not None:
            _merge(durations, _buckets(row[0]))
        tx.execute(
            f"INSERT INTO {table} ({', '.join(keys)}, runs, failed, timeouts, killed, durations)"
            f" VALUES ({', '.join('?' for _ in keys)}, ?, ?, ?, ?, ?)"
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET runs = {table}.runs + excluded.runs,"
            f" failed = {table}.failed + excluded.failed,"
            f" timeouts = {table}.timeouts + excluded.timeouts,"
            f" killed = {table}.killed + excluded.killed, durations = excluded.durations",
            (*key, runs, failed, timeouts, killed, json.dumps(durations, separators=(",", ":"))),
        )


def _buckets(text: str) -> dict[int, int]:
    return {int(k): int(n) for k, n in json.loads(text).items()}


def _merge(into: dict[int, int], more: Mapping[int, int]) -> None:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n


def first_run_at(store: Store, ts: float) -> int:
    """The id to scan hook runs from for those recorded at ``ts`` or later (one past the last
    run when there is none). A run's time is taken inside the transaction that gives it its
    id, so times rise with ids, and a binary search over ids finds it in a few reads."""
    first = store.execute("SELECT id FROM hook_runs ORDER BY id LIMIT 1").fetchone()
    last = store.execute("SELECT id FROM hook_runs ORDER BY id DESC LIMIT 1").fetchone()
    if first is None or last is None:
        return 1
    low, high = first[0], last[0] + 1
    while low < high:
        middle = (low + high) // 2
        row = store.execute(
            "SELECT id, ts FROM hook_runs WHERE id >= ? ORDER BY id LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[1] >= ts:
            high = middle
        else:
            low = row[0] + 1
    return int(low)


def _done(db: Store | Connection) -> int:
    """The last hook run summed into the hourly tables."""
    row = db.execute("SELECT done FROM rollups WHERE name = ?", (ROLLUP,)).fetchone()
    return int(row[0]) if row else 0


def roll_up(store: Store, now: float | None = None) -> int:
    """Sum the hook runs of every hour that ended :data:`SETTLE` seconds ago or more and is not
    summed yet, and those of the hour so far when more than :data:`BACKLOG` would be left
    unsummed (the rest of the hour is added to its sums later: runs are summed by id, each
    once); drop sums older than :data:`KEEP_HOURS`. Returns how many runs were added. Two
    processes at once add each run once: the second finds the work done."""
    now = time.time() if now is None else now
    done = _done(store)
    cutoff = int((now - SETTLE) // HOUR * HOUR)
    upto = first_run_at(store, cutoff) - 1
    (last,) = store.execute("SELECT coalesce(max(id), 0) FROM hook_runs").fetchone()
    if last - max(upto, done) > BACKLOG:
        upto = first_run_at(store, now - SETTLE) - 1
    if upto <= done:
        return 0
    sums = RunSums()
    added = sums.add_runs(
        store.execute(
            "SELECT ts, event, agent, duration_ms, ok, plugins FROM hook_runs"
            " WHERE id > ? AND id <= ?",
            (done, upto),
        )
    )
    with store.transaction() as tx:
        if _done(tx) != done:
            return 0
        sums.save(tx)
        for table in ("run_hours", "plugin_hours", "agent_hours"):
            tx.execute(f"DELETE FROM {table} WHERE hour < ?", (cutoff - KEEP_HOURS * HOUR,))
        tx.execute(
            "INSERT INTO rollups (name, done) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET done = excluded.done",
            (ROLLUP, upto),
        )
    return added


def hook_stats(
    store: Store, since: float, now: float, agent: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hook runs and compactions since ``since``: the summed hours that start in the window,
    and run by run the hour it starts in and what is not summed yet. Each section says from
    when its record reaches (``since``): runs pruned before they were summed are not there.
    With ``agent``, per event only (the hours are not summed per agent and plugin)."""
    done = _done(store)
    first_full = math.ceil(since / HOUR) * HOUR
    start = first_run_at(store, since)
    unsummed = [(start, min(first_run_at(store, first_full), done + 1)), (max(start, done + 1), 0)]
    oldest = store.execute("SELECT ts FROM hook_runs ORDER BY id LIMIT 1").fetchone()
    summed = store.execute(
        "SELECT min(hour) FROM run_hours WHERE hour >= ?", (first_full,)
    ).fetchone()[0]
    reach = min(max(since, oldest[0]) if oldest else now, summed if summed is not None else now)
    if not oldest and summed is None:
        reach = since  # nothing ever ran

    sums = RunSums()
    sums.add_hours(store, first_full, agent)
    for low, high in unsummed:
        columns = "ts, event, agent, duration_ms, ok, plugins"
        sums.add_runs(_range(store, columns, low, high, agent=agent), hourly=False)
    hooks = {"since": reach, **sums.report()}
    if agent:
        hooks["by_plugin"] = {}

    counts: dict[str, int] = {}
    mine = " AND agent = ?" if agent else ""
    for who, n in store.execute(
        f"SELECT agent, sum(runs) FROM agent_hours WHERE hour >= ? AND event = ?{mine}"
        " GROUP BY agent",
        (first_full, COMPACTION, *([agent] if agent else [])),
    ):
        counts[who] = counts.get(who, 0) + int(n)
    for low, high in unsummed:
        for (who,) in _range(store, "agent", low, high, agent=agent, event=COMPACTION):
            if who is not None:
                counts[who] = counts.get(who, 0) + 1
    seconds = now - reach
    compactions = {
        "since": reach,
        "total": sum(counts.values()),
        "per_hour": _rate(sum(counts.values()), seconds),
        "by_agent": {
            who: {"count": n, "per_hour": _rate(n, seconds)} for who, n in sorted(counts.items())
        },
    }
    return hooks, compactions


def _range(
    store: Store,
    columns: str,
    low: int,
    high: int,
    *,
    agent: str | None = None,
    event: str | None = None,
) -> Iterable[Any]:
    """Hook runs with ids from ``low`` up to ``high`` (``0``: to the end)."""
    sql = f"SELECT {columns} FROM hook_runs WHERE id >= ?"
    args: list[Any] = [low]
    if high:
        if high <= low:
            return []
        sql, args = sql + " AND id < ?", [*args, high]
    if agent is not None:
        sql, args = sql + " AND agent = ?", [*args, agent]
    if event is not None:
        sql, args = sql + " AND event = ?", [*args, event]
    return store.execute(sql, args)


# -- messages, the queue, recoveries, alerts, agents ---------------------------------------------


#: A message's band, in SQL.
BAND_SQL = "CASE " + " ".join(f"WHEN priority >= {n} THEN '{name}'" for n, name in BANDS) + " END"


def message_stats(
    store: Store, since: float, now: float, agent: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Delivery latencies and what happened to messages in the window; the queue as it is now.

    Queued to delivered: for each message first handed over by a hook in the window (since it
    was sent, or retried), from when it could first be delivered (sent or retried, or due with
    ``--in``/``--at``) to that hand-over; a message typed with ``--push`` is left out. Delivered
    to confirmed: for each message confirmed in the window, from the delivery that was confirmed
    to its confirmation. A message's events are read only when it was delivered more than once
    (or not by a hook), or is pending."""
    mine, only = (" AND agent = ?", [agent]) if agent else ("", [])
    latest = "greatest" if store.dialect == "postgresql" else "max"  # of several values
    waited, confirming = _latencies(
        store.execute(
            f"SELECT m.agent, {BAND_SQL}, CASE WHEN m.first >= ? THEN m.first - {latest}("
            "m.created, coalesce(m.not_before, 0), coalesce(r.at, 0)) END, CASE WHEN"
            " m.confirmed >= ? THEN m.confirmed - m.delivered END FROM (SELECT id, agent,"
            " priority, created, not_before, delivered, confirmed, CASE WHEN delivered < ? THEN"
            " NULL WHEN attempts = 1 AND session_id IS NOT NULL THEN delivered ELSE (SELECT"
            " min(e.ts) FROM message_events e WHERE e.message_id = m.id AND e.state ="
            " 'delivered' AND (e.detail IS NULL OR e.detail NOT IN (?, ?)) AND e.ts >"
            " coalesce((SELECT max(q.ts) FROM message_events q WHERE q.message_id = m.id AND"
            " q.detail = ?), 0))"
            " END AS first FROM messages m WHERE (delivered >= ? OR confirmed >= ?)"
            f"{mine}) m LEFT JOIN (SELECT message_id, max(ts) AS at FROM"
            " message_events WHERE detail = ? GROUP BY message_id) r ON r.message_id = m.id",
            [since, since, since, PUSHED, IMPORTED_EVENT, RETRIED, since, since, *only, RETRIED],
        )
    )
    sent, dead, expired, cancelled = store.execute(
        "SELECT coalesce(sum(CASE WHEN created >= ? THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN state = 'dead' AND ended >= ? THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN state = 'expired' AND ended >= ? THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN state = 'cancelled' AND ended >= ? THEN 1 ELSE 0 END), 0)"
        f" FROM messages WHERE (created >= ? OR ended >= ?){mine}",
        [since] * 6 + only,
    ).fetchone()
    messages: dict[str, Any] = {
        "sent": int(sent),
        "delivered": waited["all"]["n"],
        "confirmed": confirming["all"]["n"],
        "dead": int(dead),
        "expired": int(expired),
        "cancelled": int(cancelled),
        "queued_to_delivered": waited,
        "delivered_to_confirmed": confirming,
    }

    depth: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    scheduled = 0
    for who, level, state, ready in store.execute(
        f"SELECT agent, {BAND_SQL}, state, {ready_sql(store.dialect)} FROM messages m"
        f" WHERE {PENDING_SQL}{mine}",
        [RETRIED, *only],
    ):
        bands = depth.setdefault(who, {})
        bands[level] = bands.get(level, 0) + 1
        if state == "queued" and ready > now:
            scheduled += 1
        else:
            oldest[who] = max(oldest.get(who, 0.0), now - ready)
    total: dict[str, int] = {}
    for bands in depth.values():
        for level, n in bands.items():
            total[level] = total.get(level, 0) + n
    queue = {
        "pending": sum(total.values()),
        "scheduled": scheduled,
        "oldest_seconds": _round(max(oldest.values(), default=None)),
        "by_band": {b: total[b] for b in _bands(total)},
        "by_agent": {
            who: {
                "pending": sum(bands.values()),
                "oldest_seconds": _round(oldest.get(who)),
                "by_band": {b: bands[b] for b in _bands(bands)},
            }
            for who, bands in sorted(depth.items())
        },
    }
    return messages, queue


def _latencies(rows: Iterable[tuple[str, str, float | None, float | None]]) -> list[Any]:
    """``(agent, band, queued to delivered, delivered to confirmed)`` rows (``None`` where a
    message has no sample), summed up: each of the two in all, by band and by agent."""
    samples: list[tuple[list[float], dict[str, list[float]], dict[str, list[float]]]] = [
        ([], {}, {}),
        ([], {}, {}),
    ]
    for agent, level, *values in rows:
        for (every, by_band, by_agent), value in zip(samples, values, strict=True):
            if value is not None:
                value = max(0.0, value)
                every.append(value)
                by_band.setdefault(level, []).append(value)
                by_agent.setdefault(agent, []).append(value)
    return [
        {
            "all": summary(every),
            "by_band": {b: summary(by_band[b]) for b in _bands(by_band)},
            "by_agent": {a: summary(by_agent[a]) for a in sorted(by_agent)},
        }
        for every, by_band, by_agent in samples
    ]


def _bands(present: Iterable[str]) -> list[str]:
    """The bands in ``present``, highest first."""
    there = set(present)
    return [name for _, name in BANDS if name in there]


def restart_stats(store: Store, since: float, now: float, agent: str | None) -> dict[str, Any]:
    """Recoveries started in the window (a give-up when it is decided), per step, and those
    that failed."""
    mine = " AND agent = ?" if agent else ""
    rows = store.execute(
        f"SELECT agent, step, state FROM recoveries WHERE started >= ?{mine}",
        (since, *([agent] if agent else [])),
    ).fetchall()
    seconds = now - since

    def counted(found: list[tuple[str, str]]) -> dict[str, Any]:
        result: dict[str, Any] = {step: sum(s == step for s, _ in found) for step in STEPS}
        result["failed"] = sum(state == "failed" for _, state in found)
        result["per_hour"] = _rate(len(found), seconds)
        return result

    by_agent = {
        who: counted([(s, st) for w, s, st in rows if w == who])
        for who in sorted({w for w, _, _ in rows})
    }
    return {**counted([(s, st) for _, s, st in rows]), "by_agent": by_agent}


def alert_stats(store: Store, since: float, agent: str | None) -> dict[str, int]:
    mine = " AND agent = ?" if agent else ""
    rows = store.execute(
        f"SELECT kind, count(*) FROM alerts WHERE ts >= ?{mine} GROUP BY kind ORDER BY kind",
        (since, *([agent] if agent else [])),
    )
    return {kind: int(n) for kind, n in rows}


def agent_stats(store: Store, agent: str | None, gone: Collection[str] = ()) -> dict[str, Any]:
    """Agents by state, now; those of the hosts in ``gone`` are ``unreachable``."""
    mine = " WHERE id = ?" if agent else ""
    rows = store.execute(
        f"SELECT state, host, count(*) FROM agents{mine} GROUP BY state, host",
        [agent] if agent else [],
    ).fetchall()
    by_state: dict[str, int] = {}
    for state, host, n in rows:
        shown = hosts.UNREACHABLE if host in gone else state
        by_state[shown] = by_state.get(shown, 0) + int(n)
    return {"total": sum(by_state.values()), "by_state": dict(sorted(by_state.items()))}


def host_stats(store: Store, agent: str | None, gone: Collection[str]) -> dict[str, Any]:
    """Per host, now: its agents, when its supervisor last said it was alive (``None``: no
    supervisor ran there), and whether it is unreachable. Agents no hook has placed yet are
    left out."""
    mine = " AND id = ?" if agent else ""
    counts = store.execute(
        f"SELECT host, count(*) FROM agents WHERE host IS NOT NULL{mine} GROUP BY host",
        [agent] if agent else [],
    ).fetchall()
    seen = {row["host"]: row["last_seen"] for row in hosts.listing(store)}
    return {
        host: {"agents": int(n), "last_seen": seen.get(host), "unreachable": host in gone}
        for host, n in sorted(counts)
    }


# -- tokens --------------------------------------------------------------------------------------


def token_stats(store: Store, since: float, agent: str | None) -> dict[str, dict[str, int]]:
    """Tokens each agent's model used in the window, from the usage its transcripts record:
    those of its :data:`TRANSCRIPTS_PER_AGENT` newest sessions written to in the window, each
    read the way orch reads transcripts (a regular file, at most its last 4 MB), so an agent
    that wrote more than that since ``since`` shows a lower bound."""
    mine = " AND agent = ?" if agent else ""
    rows = store.execute(
        f"SELECT agent, transcript FROM sessions WHERE transcript IS NOT NULL{mine}"
        " ORDER BY created DESC",
        [agent] if agent else [],
    ).fetchall()
    paths: dict[str, list[str]] = {}
    for who, path in rows:
        chosen = paths.setdefault(who, [])
        if len(chosen) < TRANSCRIPTS_PER_AGENT and path not in chosen:
            chosen.append(path)
    result = {}
    for who, chosen in sorted(paths.items()):
        used: dict[str, dict[str, int]] = {}
        for path in chosen:
            try:
                if os.stat(path).st_mtime < since:
                    continue
            except OSError:
                continue
            used.update(usage(transcript_tail(path), since))
        if used:
            totals = {name: sum(u.get(name, 0) for u in used.values()) for name in TOKENS.values()}
            result[who] = {**totals, "requests": len(used)}
    return result


def usage(text: str, since: float) -> dict[str, dict[str, int]]:
    """Per model response (its message id), the tokens a transcript records for it at or after
    ``since``. Claude Code writes one line per content block of a response, each with the
    response's usage: a response counts once."""
    found: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if '"usage"' not in line:
            continue
        try:
            record = json.loads(line)
            message = record["message"]
            tokens = message["usage"]
            when = datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue  # the tail's first line is cut, and not every line is a response
        if when < since or not isinstance(tokens, dict):
            continue
        key = str(message.get("id") or record.get("uuid") or len(found))
        found[key] = {
            short: value
            for name, short in TOKENS.items()
            if isinstance(value := tokens.get(name), int) and not isinstance(value, bool)
        }
    return found
