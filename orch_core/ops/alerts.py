"""Alerts: what needs a person, recorded once while it lasts, and sent to the user's channels.

Each alert has a key, its kind, agent and subject (a message id, a project). While an alert
with that key is open, the same condition records nothing more, whether it is seen by every
supervisor tick or by every hook; when the condition ends the alert is closed, and a later
occurrence is a new alert. ``orch supervise`` sends each new alert to every ``orch_alert``
implementation of its project (the alerts plugin sends to ``[alerts] urls`` through apprise),
each channel once: one that fails is tried again after a doubling pause, at most
:data:`ATTEMPTS` times, each failure logged. ``orch alerts ack ID`` silences one. Recording is
plain SQL, so hooks record too (an agent given up on); sending never happens in a hook.
"""

from __future__ import annotations

import json
import time

from orch_core import log
from orch_core.errors import OrchError

TYPE_CHECKING = False  # lifecycle imports this in orch-hook; typing costs it ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping
    from typing import Any

    from orch_core.hook.context import Runtime
    from orch_core.storage.store import Store

#: Times each channel is given an alert before it is left unsent.
ATTEMPTS = 4
#: Seconds before the second try; each later one waits twice as long.
RETRY_AFTER = 30.0
SHOWN = "id, ts, agent, kind, message, project_dir, acked, sent, next_try, error"


class AlertError(OrchError):
    """An alert that cannot be found or changed."""


class Condition:
    """Something the alerts plugin saw: an alert is recorded when it ``fires``, and one already
    open stays open while it is seen at all (a queue shrinking from its threshold to half of
    it does not close and reopen an alert at every look)."""

    __slots__ = ("agent", "fires", "kind", "message", "subject")

    def __init__(
        self, kind: str, agent: str | None, subject: str, message: str, *, fires: bool = True
    ) -> None:
        self.kind = kind
        self.agent = agent
        self.subject = subject
        self.message = message
        self.fires = fires

    @property
    def key(self) -> str:
        return key(self.kind, self.agent, self.subject)


def key(kind: str, agent: str | None, subject: str = "") -> str:
    return json.dumps([kind, agent, subject], ensure_ascii=False)


def record(
    store: Store,
    kind: str,
    message: str,
    *,
    agent: str | None = None,
    subject: str = "",
    project_dir: str | None = None,
    renew: bool = False,
    now: float | None = None,
) -> int | None:
    """Record an alert, to be sent, unless one with its key is open; its id, or ``None``.
    ``renew`` closes the open one first: the caller knows this is a new occurrence."""
    now = time.time() if now is None else now
    found = key(kind, agent, subject)
    with store.transaction() as tx:
        if renew:
            tx.execute(
                "UPDATE alerts SET cleared = ? WHERE key = ? AND cleared IS NULL", (now, found)
            )
        row = tx.execute(
            "INSERT INTO alerts (agent, ts, kind, message, key, project_dir, next_try)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) WHERE cleared IS NULL DO NOTHING"
            " RETURNING id",
            (agent, now, kind, message, found, project_dir, now),
        ).fetchone()
    return int(row[0]) if row else None


def observe(
    store: Store,
    project_dir: str,
    kinds: Iterable[str],
    seen: Iterable[Condition],
    now: float,
    *,
    agents: Collection[str] | None = None,
    general: Collection[str] = (),
    looked: Collection[str] = (),
) -> list[int]:
    """The conditions of ``kinds`` in ``project_dir`` as they are now: an alert for each one
    that fires and has none open, and the open alerts of those kinds no longer seen closed.
    The ids of the new alerts. Given ``agents``, the look covered only those agents (one host
    of a fleet: the others look at their own), and only their alerts are closed, with the
    alerts of no agent whose subject is in ``general``. The open alerts of the agents
    ``looked`` at that another project raised (they worked there before) become this one's:
    the project they left looks at them no more, and left open one would silence their
    condition here for good."""
    seen = list(seen)
    kinds = list(kinds)
    looked = list(looked)
    still = {condition.key for condition in seen}
    marks = ", ".join("?" for _ in kinds)
    ours = f" OR agent IN ({', '.join('?' for _ in looked)})" if looked else ""
    rows = store.execute(
        "SELECT id, key, agent, project_dir FROM alerts WHERE cleared IS NULL"
        f" AND kind IN ({marks}) AND (project_dir = ?{ours})",
        (*kinds, project_dir, *looked),
    ).fetchall()
    opened = [
        (alert_id, found)
        for alert_id, found, agent, where in rows
        if where != project_dir
        or agents is None
        or agent in agents
        or (agent is None and json.loads(found)[2] in general)
    ]
    moved = [(project_dir, alert_id) for alert_id, _, _, where in rows if where != project_dir]
    ended = [(now, alert_id) for alert_id, found in opened if found not in still]
    if ended or moved:
        with store.transaction() as tx:
            for sql, changes in (("project_dir", moved), ("cleared", ended)):
                if changes:
                    tx.executemany(f"UPDATE alerts SET {sql} = ? WHERE id = ?", changes)
    already = {found for _, found in opened}
    added = []
    for condition in seen:
        if condition.fires and condition.key not in already:
            new = record(store, condition.kind, condition.message, agent=condition.agent,
                         subject=condition.subject, project_dir=project_dir, now=now)  # fmt: skip
            if new is not None:
                added.append(new)
    return added


def listing(store: Store, alert_id: int | None = None) -> list[dict[str, Any]]:
    """Alerts, oldest first, as ``orch alerts --json`` prints them."""
    where, args = ("WHERE id = ?", (alert_id,)) if alert_id is not None else ("", ())
    cur = store.execute(f"SELECT {SHOWN} FROM alerts {where} ORDER BY id", args)
    return [_shown(row) for row in cur.fetchall()]


def _shown(row: tuple[Any, ...]) -> dict[str, Any]:
    alert_id, ts, agent, kind, message, project_dir, acked, sent, next_try, error = row
    return {"id": alert_id, "time": ts, "agent": agent, "kind": kind, "message": message,
            "project": project_dir, "acked": acked, "sent": sent, "next_try": next_try,
            "error": error}  # fmt: skip


def ack(store: Store, alert_id: str, now: float | None = None) -> dict[str, Any]:
    """Silence one alert: it is not sent (again), and its condition records no new one while
    it lasts."""
    try:
        number = int(alert_id)
    except ValueError:
        number = -1
    if not 0 < number < 2**63:  # beyond a store's integers: no alert's
        raise AlertError(f"no alert with id {alert_id!r} (see `orch alerts`)")
    with store.transaction() as tx:
        tx.execute(
            "UPDATE alerts SET acked = coalesce(acked, ?), next_try = NULL WHERE id = ?",
            (time.time() if now is None else now, number),
        )
    found = listing(store, number)
    if not found:
        raise AlertError(f"no alert with id {alert_id!r} (see `orch alerts`)")
    return found[0]


def due(store: Store, now: float) -> bool:
    return (
        store.execute("SELECT 1 FROM alerts WHERE next_try <= ? LIMIT 1", (now,)).fetchone()
        is not None
    )


def send_due(
    env: Mapping[str, str], store: Store, now: float, project_of: Callable[[str | None], str]
) -> None:
    """Send every alert whose time has come, each with the plugins of its own project (that of
    its agent when it was recorded without one)."""
    from orch_core.hook.context import Runtime

    rows = store.execute(
        f"SELECT {SHOWN}, channels, attempts FROM alerts WHERE next_try <= ? ORDER BY id", (now,)
    ).fetchall()
    runtimes: dict[str, Runtime] = {}
    for row in rows:
        alert, channels, attempts = _shown(row[:-2]), row[-2], row[-1]
        if not _taken(store, alert, now):
            continue  # another host's supervisor sends it
        project = alert["project"] or project_of(alert["agent"])
        if project not in runtimes:
            runtimes[project] = Runtime.open(env, project, store=store)
        send(runtimes[project], alert, set(json.loads(channels)), attempts, now)


def _taken(store: Store, alert: Mapping[str, Any], now: float) -> bool:
    """Whether this supervisor is the one to send ``alert`` now: its next try moved on at
    once, so that another host's supervisor, which shares the store, does not send it too. A
    supervisor that dies while sending leaves it to be tried again after :data:`RETRY_AFTER`."""
    with store.transaction() as tx:
        return bool(
            tx.execute(
                "UPDATE alerts SET next_try = ? WHERE id = ? AND next_try = ?",
                (now + RETRY_AFTER, alert["id"], alert["next_try"]),
            ).rowcount
        )


def send(
    runtime: Runtime, alert: dict[str, Any], took: set[str], attempts: int, now: float
) -> None:
    """Hand ``alert`` to each ``orch_alert`` implementation that has not taken it yet; what
    failed is tried again later, :data:`ATTEMPTS` times at most, and logged."""
    failures = []
    for impl in runtime.plan.impls("orch_alert"):
        if impl.plugin in took:
            continue
        args = {"alert": dict(alert), "ctx": runtime.context(impl.plugin)}
        try:
            if impl.function(**{name: args[name] for name in impl.argnames if name in args}):
                took.add(impl.plugin)
        except Exception as exc:
            failures.append(f"{impl.plugin}: {exc}")
    attempts += 1
    retry = bool(failures) and attempts < ATTEMPTS
    error = "; ".join(failures) or (None if took else "no channel took it")
    if failures:
        log.write("warning" if retry else "error",
                  "alert not sent, will try again" if retry else "alert not sent, giving up",
                  runtime.env, alert=alert["id"], attempt=attempts, error=error)  # fmt: skip
    next_try = now + RETRY_AFTER * 2 ** (attempts - 1) if retry else None
    sent = now if took and not failures else None
    with runtime.store.transaction() as tx:
        tx.execute(
            "UPDATE alerts SET attempts = ?, channels = ?, error = ?, sent = ?,"
            # typed: PostgreSQL cannot tell a NULL's type inside CASE (SQLite reads it as REAL)
            " next_try = CASE WHEN acked IS NULL THEN CAST(? AS DOUBLE PRECISION) END WHERE id = ?",
            (attempts, json.dumps(sorted(took)), error, sent, next_try, alert["id"]),
        )
