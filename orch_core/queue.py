"""The durable priority message queue: send, deliver through hooks, confirm, and account.

A message is ``queued``, then ``delivered`` (a hook handed it to the model), then ``confirmed``
(a later hook of the same session found it in that session's transcript). It may instead end
``expired`` (its TTL passed), ``cancelled`` or ``dead`` (delivery failed too often, or the message
it had to wait for ended without delivery). A delivery that is not confirmed within a few hooks
or seconds goes back to ``queued``: at-least-once, never a duplicate once confirmed. Every state
change is a row in ``message_events`` with its time.

Order: highest priority first, then the agent's own sequence number (gap-free, FIFO within a
priority). Every write is one short transaction with no I/O inside it: ``BEGIN IMMEDIATE``, or
one statement for a plain send (:meth:`Store.write_alone`). This module runs in ``orch-hook``:
standard library only.
"""

from __future__ import annotations

import os
import re
import stat
import time
from itertools import count, groupby

from orch_core import paths
from orch_core.errors import OrchError
from orch_core.hook import agents
from orch_core.plugins.plan import ANSWER_MARGIN
from orch_core.text import length

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from typing import Any

    from orch_core.storage.store import Store

    Message = dict[str, Any]
    #: Events of one time: the ids, the state they reached, and its detail.
    Events = tuple[list[str], str, str | None]

#: Priority bands of the plan; 200 is reserved for rebriefing.
BANDS = ((200, "rebrief"), (100, "emergency"), (50, "critical"), (10, "high"), (0, "normal"))
MAX_PRIORITY = 200
MAX_SEND_PRIORITY = 199
#: The largest message accepted, in characters. Larger than the hook budget is fine: it is
#: delivered as a file.
MAX_TEXT = 1_000_000
#: The longest sender taken, in characters: every delivery's header shows it whole, and a
#: header past Claude Code's cap on a hook's text (10,000) could never be handed over.
MAX_SENDER = 200
#: The longest length of time taken (``--ttl``, ``--in``, a ttl in seconds): a thousand years
#: is longer than any queue or report could mean, and keeps every time finite (a huge number
#: reads as infinity, which JSON cannot carry).
MAX_DURATION = 365_250 * 86400
#: The latest time a message may carry (9999-12-31T23:59:59Z, the last one a date can show).
MAX_TIME = 253_402_300_799
#: The largest count either store holds (a 64-bit integer).
MAX_COUNT = 2**63 - 1
#: What every message id looks like (:func:`new_id`); a delivery is confirmed by it
#: (:func:`marked`), so no other is imported.
MESSAGE_ID = r"m[0-9a-z]{1,63}"
PENDING = ("queued", "delivered")
#: Waiting or in flight through a hook; a message typed with ``--push`` is neither.
PENDING_SQL = (  # written so that the (agent, state, ...) index serves it
    "state IN ('queued', 'delivered') AND (state = 'queued' OR session_id IS NOT NULL)"
)
STATES = ("queued", "delivered", "confirmed", "expired", "cancelled", "dead")
#: Seconds a hook needs between its claim and its reply reaching Claude.
CLAIM_MARGIN = 0.02
#: The most messages one claim looks at, and the fewest characters a rendered message takes
#: (its header alone is longer): a claim reads no more rows than its budget could hold.
CLAIM_ROWS = 50
LEAST_RENDERED = 100
#: Why a message is delivered outside any hook (``orch send --push``).
PUSHED = "typed into the pane (--push)"
#: Why a message that had ended is queued again (``orch queue retry``).
RETRIED = "retried by a user"
#: The detail of a message's first event in a store it was imported into (``orch import``).
IMPORTED_EVENT = "imported"
#: The most of a transcript read at once.
TRANSCRIPT_READ = 4 * 1024 * 1024
#: Header that starts every delivered message; confirmation looks for it in the transcript.
MARK = "[orch message "
#: The same words inside a message's text or sender, as delivered: a no-break space reads the
#: same, but is no mark (:func:`marked`), so that a text that quotes another message's header
#: cannot confirm that message (which the model may never have had: it would be lost).
QUOTED_MARK = "[orch message\u00a0"
PREVIEW = 500
#: The store's channel for "messages are ready for this agent": its host's supervisor wakes it
#: (a store several machines share; ``orch supervise`` listens).
WAKE_CHANNEL = "orch_wake"
#: Messages :meth:`Queue.send_many` stores a statement (9 values each; SQLite takes 32,766).
INSERT_ROWS = 500
#: One message in, with its agent's next number, and whether orch has heard from the agent
#: (the rest of its receipt is what was sent: :meth:`Queue._receipt`).
INSERT_ONE = (
    "INSERT INTO messages (id, agent, seq, priority, sender, body, key, state, after_id,"
    " not_before, expires, created)"
    " VALUES (?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE agent = ?),"
    " ?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    " RETURNING seq, EXISTS (SELECT 1 FROM agents WHERE id = messages.agent)"
)
#: The message an agent's key stands for at a time: queued and not past its TTL (an expired
#: one that no sweep has ended yet will never be delivered). Found through ``messages_key``:
#: ordered by ``seq``, SQLite would read all the agent's messages through ``(agent, seq)``.
KEYED_SQL = (
    "SELECT * FROM messages WHERE agent = ? AND key = ? AND state = 'queued'"
    " AND (expires IS NULL OR expires > ?) ORDER BY +seq LIMIT 1"
)
#: The state of the message another waits for (``--after``): a queued one past its TTL is
#: expired, as the next sweep makes it.
AFTER_SQL = (
    "SELECT CASE WHEN state = 'queued' AND expires <= ? THEN 'expired' ELSE state END"
    " FROM messages WHERE id = ?"
)
#: Tries of a send on its own before it waits for its turn (:meth:`Queue._insert_alone`).
ALONE_TRIES = 3
#: A session's deliveries in flight, found through the agent's index: ``coalesce`` keeps the
#: planner off the session's, which may hold the deliveries of many other agents.
INFLIGHT_SQL = "agent = ? AND state = 'delivered' AND coalesce(session_id, '') = ?"
#: What :meth:`Queue.send_many` takes of each message.
SEND_FIELDS = frozenset(
    ("agent", "text", "priority", "sender", "key", "ttl", "after", "not_before")
)


class QueueError(OrchError, ValueError):
    """Bad input: a one-line reason; nothing was stored."""


def band(priority: int) -> str:
    for floor, name in BANDS:
        if priority >= floor:
            return name
    return "normal"


class _Suffixes:
    """The 6 hex digits that end a process's message ids: ascending from a random start,
    which a forked child draws anew."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._count = count(int.from_bytes(os.urandom(3), "big") + 1)  # atomic across threads

    def next(self) -> str:
        return f"{next(self._count) & 0xFFFFFF:06x}"


_SUFFIXES = _Suffixes()
os.register_at_fork(after_in_child=_SUFFIXES.restart)


def new_id(now: float) -> str:
    """Short, unique, ordered by time to the millisecond: ``m`` + base-36 milliseconds + 6 hex
    digits, which ascend from a random start in each process. A batch's ids, drawn in one
    millisecond, then sit side by side in the indexes keyed by id (its history's too): a hook
    round writes fewer pages than with random ones. Another process's ids of the same
    millisecond start elsewhere; the insert draws again in the rare case they meet."""
    ms, digits = int(now * 1000), ""
    while ms:
        ms, r = divmod(ms, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"m{digits}{_SUFFIXES.next()}"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` or combinations such as ``1h30m``, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total, number = 0.0, ""
    try:
        for ch in text.strip().lower():
            if ch.isdigit() or ch == ".":
                number += ch
            elif ch in units and number:
                total += float(number) * units[ch]
                number = ""
            else:
                raise ValueError(ch)
        if number:
            total += float(number)
    except ValueError:  # also float() of "1.2.3" or "."
        total = 0.0
    if not text.strip() or total <= 0:
        raise QueueError(f"malformed duration {text!r}: use e.g. 30s, 5m, 2h, 1d, 1h30m")
    if total > MAX_DURATION:  # also infinity, from hundreds of digits
        raise QueueError(f"{text!r} is too long a time (at most {MAX_DURATION // 86400}d)")
    return total


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class Queue:
    """The queue of one orch installation.

    :param max_attempts: deliveries without confirmation before a message is ``dead``.
    :param confirm_hooks: later hooks of the delivering session that may miss the message in
        the transcript before it goes back to the queue.
    :param confirm_seconds: the same bound in seconds.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 3,
        confirm_hooks: int = 4,
        confirm_seconds: float = 120.0,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.confirm_hooks = confirm_hooks
        self.confirm_seconds = confirm_seconds
        self._columns: list[str] | None = None

    @classmethod
    def configured(cls, store: Store, config: Mapping[str, Any] | None) -> Queue:
        """A queue with the ``[plugin.queue]`` settings of a project (``None``: defaults)."""
        config = config or {}
        return cls(
            store,
            max_attempts=int(config.get("max_attempts", 3)),
            confirm_hooks=int(config.get("confirm_hooks", 4)),
            confirm_seconds=float(config.get("confirm_seconds", 120.0)),
        )

    @classmethod
    def open(cls, env: Any = os.environ, **settings: Any) -> Queue:
        """The machine's queue (``ORCH_DB``), for programs that send messages."""
        from orch_core.storage import open_store

        return cls(open_store(env), **settings)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        agent: str,
        text: str,
        *,
        priority: int = 0,
        sender: str | None = None,
        key: str | None = None,
        ttl: float | None = None,
        after: str | None = None,
        not_before: float | None = None,
        now: float | None = None,
    ) -> Message:
        """Queue ``text`` for ``agent``; return its receipt. With ``key``, a second send while
        the first is still pending returns the first receipt (``"duplicate": true``)."""
        item = {"agent": agent, "text": text, "priority": priority, "sender": sender, "key": key,
                "ttl": ttl, "after": after, "not_before": not_before}  # fmt: skip
        return self.send_many([item], now=now)[0]

    def send_many(
        self,
        items: Iterable[Mapping[str, Any]],
        now: float | None = None,
        *,
        where: Sequence[str] | None = None,
    ) -> list[Message]:
        """Queue many messages in one transaction (one commit, one fsync); return a receipt
        for each, in order. Each item takes :meth:`send`'s arguments by name (``agent`` and
        ``text`` required). All are checked before any is stored: a bad one stores nothing,
        and its error names it by number, or by its label in ``where`` (the caller's: a
        pattern's copies are one message to it, a file's messages are its lines)."""
        now = time.time() if now is None else now
        items = [dict(item) for item in items]
        if where is None:
            where = [f"message {n}" if len(items) > 1 else "" for n in range(1, len(items) + 1)]
        for n, item in enumerate(items):
            unknown = item.keys() - SEND_FIELDS
            if unknown or not {"agent", "text"} <= item.keys():
                raise QueueError(
                    f"{where[n] or f'message {n + 1}'}: give agent and text; unknown: "
                    f"{sorted(unknown)}"
                )
            try:
                check_agent(item["agent"])
                check_message(item, now)
            except QueueError as exc:
                raise QueueError(_placed(where[n], exc)) from None
        if len(items) == 1 and items[0].get("key") is None and items[0].get("after") is None:
            alone = self._insert_alone(now, items[0])
            if alone is not None:
                return [alone]
        receipts = []
        known: dict[str, bool] = {}  # agent: whether orch has heard from it
        with self.store.transaction() as tx:
            if len(items) > 1 and all(
                i.get("key") is None and i.get("after") is None for i in items
            ):
                for start in range(0, len(items), INSERT_ROWS):
                    receipts += self._insert_rows(tx, now, items[start : start + INSERT_ROWS])
            else:
                for n, item in enumerate(items):
                    try:
                        receipts.append(self._insert(tx, now, known, **item))
                    except QueueError as exc:  # --after a message that is not there
                        raise QueueError(_placed(where[n], exc)) from None
            ready = {r["agent"] for r in receipts if _ready(r, now) and not r.get("duplicate")}
            self.store.notify(tx, WAKE_CHANNEL, sorted(ready))
        return receipts

    def _insert_rows(self, tx: Any, now: float, items: list[Mapping[str, Any]]) -> list[Message]:
        """Messages without a key or a dependency into the open transaction ``tx``, in one
        statement (one round trip to a server, not one a message), which numbers each agent's
        on from its last as it inserts them: a send on its own (:meth:`_insert_alone`) that
        takes a number meanwhile has only that statement's time to do so."""
        sent = [_values(now, **item) for item in items]
        for _ in _attempts(self.store):
            rows: list[tuple[Any, ...]] = []
            nth: dict[str, int] = {}  # each agent's messages so far in this batch
            for agent, _, priority, sender, text, _, _, not_before, expires, created in sent:
                nth[agent] = nth.get(agent, 0) + 1
                rows.append((new_id(now), agent, nth[agent], priority, sender, text, not_before,
                             expires, created))  # fmt: skip
            # ``WHERE true``: without it SQLite would read ``ON CONFLICT`` as a join's ``ON``
            stored = {
                message_id: (seq, heard)
                for message_id, seq, heard in tx.execute(
                    "WITH v AS (VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
                    + "), last AS (SELECT column2 AS agent, (SELECT coalesce(max(seq), 0)"
                    " FROM messages WHERE agent = v.column2) AS seq FROM v GROUP BY column2)"
                    " INSERT INTO messages (id, agent, seq, priority, sender, body, state,"
                    " not_before, expires, created) SELECT v.column1, v.column2,"
                    " last.seq + v.column3, v.column4, v.column5, v.column6, 'queued',"
                    " CAST(v.column7 AS DOUBLE PRECISION), CAST(v.column8 AS DOUBLE PRECISION),"
                    " v.column9 FROM v JOIN last ON last.agent = v.column2"
                    " WHERE true ON CONFLICT DO NOTHING"
                    " RETURNING id, seq, EXISTS (SELECT 1 FROM agents WHERE id = messages.agent)",
                    [value for row in rows for value in row],
                ).fetchall()
            }
            if len(stored) == len(rows):
                break
            # an id drawn by another send in the same millisecond, or a number taken by a send
            # on its own: all of them again, so that their order holds
            if stored:
                tx.execute(
                    f"DELETE FROM messages WHERE id IN ({', '.join('?' * len(stored))})",
                    list(stored),
                )
        else:
            raise QueueError("other sends kept taking this batch's ids or numbers: try again")
        receipts = []
        for (message_id, *_), values in zip(rows, sent, strict=True):
            seq, heard = stored[message_id]
            receipts.append(self._receipt(tx, message_id, seq, values, bool(heard)))
        return receipts

    def _insert(
        self,
        tx: Any,
        now: float,
        known: dict[str, bool],
        *,
        agent: str,
        text: str,
        priority: int = 0,
        sender: str | None = None,
        key: str | None = None,
        ttl: float | None = None,
        after: str | None = None,
        not_before: float | None = None,
    ) -> Message:
        """One message into the open transaction ``tx``: four b-trees written (the table, its
        id, the agent's sequence, the delivery order); its creation is the ``created`` column,
        not an event row. Its number and whether orch knows the agent come with the insert:
        one statement (one round trip to a server) for the message."""
        if key is not None:
            row = tx.execute(KEYED_SQL, (agent, key, now)).fetchone()
            if row is not None:
                return {**self._record(tx, row), "duplicate": True}
        if after is not None:
            _check_after(tx.execute(AFTER_SQL, (now, after)).fetchone(), after)
        values = _values(now, agent, text, priority, sender, key, ttl, after, not_before)
        for _ in _attempts(self.store):
            message_id = new_id(now)
            row = tx.execute(INSERT_ONE, (message_id, *values)).fetchone()
            if row is not None:
                break
        else:
            raise QueueError("other sends kept taking this message's id or number: try again")
        seq, heard = row
        known.setdefault(agent, bool(heard))
        return self._receipt(tx, message_id, seq, values, known[agent])

    def _insert_alone(self, now: float, item: Mapping[str, Any]) -> Message | None:
        """A message without a key or a dependency in a write of its own: on a server one
        round trip, without the write lock. Its number is the agent's last committed one plus
        one, and ``(agent, seq)`` is unique: a number that another send takes first leaves
        this insert undone, and the next try reads the number after it, so each agent's
        numbering stays in commit order. ``None`` if other sends kept taking it first (the
        caller then stores the message in a transaction, when its turn comes)."""
        agent = item["agent"]
        values = _values(now, **item)
        ready = [agent] if _ready(item, now) else []
        for _ in range(ALONE_TRIES):  # or an id drawn by another send in the same millisecond
            message_id = new_id(now)
            rows = self.store.write_alone(
                INSERT_ONE, (message_id, *values), notify=(WAKE_CHANNEL, ready)
            )
            if rows:
                ((seq, heard),) = rows
                return self._receipt(self.store, message_id, seq, values, bool(heard))
        return None

    def targets(self, pattern: str) -> list[str]:
        """Agents matching ``pattern`` (``*`` for all), among those orch has heard from, on
        every host (:meth:`orch_core.hosts.Names.matching`)."""
        from orch_core import hosts

        return hosts.Names(self.store).matching(pattern)

    # -- reading ---------------------------------------------------------------------------

    def get(self, message_id: str) -> Message | None:
        conn = self.store
        row = conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        record = self._record(conn, row)
        events = conn.execute(
            "SELECT ts, state, detail FROM message_events WHERE message_id = ? ORDER BY ts, rowid",
            (message_id,),
        ).fetchall()
        created = {"ts": record["created"], "state": "queued", "detail": record["sender"]}
        imported = events and events[0][2] == IMPORTED_EVENT
        record["events"] = ([] if imported else [created]) + [
            {"ts": t, "state": s, "detail": d} for t, s, d in events
        ]
        return record

    def messages(self, agent: str | None = None, state: str | None = None) -> list[Message]:
        """Messages in delivery order; ``state`` ``pending`` means queued or delivered."""
        sql, args = "SELECT * FROM messages WHERE 1 = 1", []
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        if state == "pending":
            sql += f" AND {PENDING_SQL}"
        elif state is not None:
            if state not in STATES:
                raise QueueError(f"unknown state {state!r}: one of pending, {', '.join(STATES)}")
            sql += " AND state = ?"
            args.append(state)
        conn = self.store
        rows = conn.execute(sql + " ORDER BY agent, priority DESC, seq", args).fetchall()
        return [self._record(conn, row) for row in rows]

    def pending_counts(self) -> dict[str, int]:
        rows = self.store.execute(
            f"SELECT agent, count(*) FROM messages WHERE {PENDING_SQL} GROUP BY agent"
        ).fetchall()
        return dict(rows)

    def has_pending(self, agent: str) -> bool:
        """Whether ``agent`` has anything queued or in flight: the hook's one read when idle."""
        row = self.store.execute(
            f"SELECT 1 FROM messages WHERE agent = ? AND {PENDING_SQL} LIMIT 1",
            (agent,),
        ).fetchone()
        return row is not None

    def has_ready(self, agent: str, now: float | None = None) -> bool:
        """Whether a hook would deliver a message to ``agent`` right now, as :meth:`claim`
        takes them: one held back by ``--after`` or past its TTL is not, and a wake-up for it
        would bring a prompt with nothing, then another at each tick while the agent idles."""
        now = time.time() if now is None else now
        row = self.store.execute(
            "SELECT 1 FROM messages m WHERE m.agent = ? AND m.state = 'queued'"
            " AND (m.not_before IS NULL OR m.not_before <= ?)"
            " AND (m.expires IS NULL OR m.expires > ?)"
            " AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.id = m.after_id"
            " AND a.state NOT IN ('delivered', 'confirmed')) LIMIT 1",
            (agent, now, now),
        ).fetchone()
        return row is not None

    def _record(self, conn: Any, row: tuple[Any, ...]) -> Message:
        """A ``SELECT *`` row of ``messages`` as a dict, with its priority band."""
        record = dict(zip(self._columns_of(conn), row, strict=True))
        record["band"] = band(record["priority"])
        return record

    def _receipt(
        self, conn: Any, message_id: str, seq: int, values: tuple[Any, ...], known: bool
    ) -> Message:
        """The record of a message just stored, from its id, the values it was stored with
        (:func:`_values`) and the number the store gave it, the other columns being a new
        message's: not read back (a large body would come back whole)."""
        agent, _, priority, sender, body, key, after_id, not_before, expires, created = values
        record = dict.fromkeys(self._columns_of(conn))
        record.update(
            id=message_id, agent=agent, seq=seq, priority=priority, sender=sender, body=body,
            key=key, state="queued", after_id=after_id, not_before=_real(not_before),
            expires=_real(expires), attempts=0, checks=0, created=float(created),
            band=band(priority), known_agent=known,
        )  # fmt: skip
        return record

    def _columns_of(self, conn: Any) -> list[str]:
        """The columns of ``messages``, in ``SELECT *``'s order (read once)."""
        if self._columns is None:
            cur = conn.execute("SELECT * FROM messages LIMIT 0")
            self._columns = [d[0] for d in cur.description]
        return self._columns

    # -- changing --------------------------------------------------------------------------

    def cancel(self, message_id: str, now: float | None = None) -> Message:
        return self._end(message_id, "cancelled", PENDING, "cancelled by a user", now)

    def retry(self, message_id: str, now: float | None = None) -> Message:
        """Queue a dead, expired or cancelled message again, with fresh attempts and no TTL;
        not while another message of its key is queued (a key stands for one pending message)."""
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            row = tx.execute(
                "SELECT state, agent, key FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise QueueError(f"no message with id {message_id!r}")
            if row[0] not in ("dead", "expired", "cancelled"):
                raise QueueError(
                    f"message {message_id} is {row[0]}; only dead, expired or "
                    "cancelled messages can be retried"
                )
            twin = row[2] is not None and tx.execute(KEYED_SQL, (row[1], row[2], now)).fetchone()
            if twin:
                twin_id = self._record(tx, twin)["id"]
                raise QueueError(f"{twin_id} is queued for {row[1]} with the same key "
                                 f"{row[2]!r}: retry it once that one is delivered")  # fmt: skip
            row = tx.execute(
                "UPDATE messages SET state = 'queued', attempts = 0, checks = 0, expires = NULL,"
                " reason = NULL, ended = NULL, session_id = NULL WHERE id = ?"
                " RETURNING agent, not_before",
                (message_id,),
            ).fetchone()
            _event(tx, message_id, now, "queued", RETRIED)
            if _ready({"not_before": row[1]}, now):
                self.store.notify(tx, WAKE_CHANNEL, [row[0]])
        record = self.get(message_id)
        assert record is not None
        return record

    def purge(self, agent: str, now: float | None = None) -> int:
        """Cancel every pending message of ``agent``; return how many."""
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            ids = [
                r[0]
                for r in tx.execute(
                    "SELECT id FROM messages WHERE agent = ? AND state IN ('queued', 'delivered')",
                    (agent,),
                )
            ]
            for message_id in ids:
                _set(tx, message_id, "cancelled", now, "purged by a user")
        self.sweep(now)
        return len(ids)

    def _end(
        self, message_id: str, state: str, allowed: tuple[str, ...], why: str, now: float | None
    ) -> Message:
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            row = tx.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise QueueError(f"no message with id {message_id!r}")
            if row[0] not in allowed:
                raise QueueError(f"message {message_id} is already {row[0]}")
            _set(tx, message_id, state, now, why)
        self.sweep(now)
        record = self.get(message_id)
        assert record is not None
        return record

    def sweep(self, now: float | None = None, agent: str | None = None) -> None:
        """Expire what outlived its TTL, end dependents of ended messages, and requeue (or
        kill) deliveries left unconfirmed past ``confirm_seconds``."""
        now = time.time() if now is None else now
        sql, args = self._sweep_read(now, agent)
        self._swept(self.store.execute(sql, args).fetchall(), now, agent)

    def _sweep_read(self, now: float, agent: str | None) -> tuple[str, list[Any]]:
        """The sweep's one read (one round trip to a server) for its three kinds of rows:
        (kind, id, after_id, after_state, transcript, transcript_from, checks, answered_by),
        the last two for :meth:`deliver`'s rows of the same shape."""
        only, args = ("AND agent = ?", [agent]) if agent else ("", [])
        scoped = only.replace("agent", "m.agent")
        return (
            f"""SELECT 'expired', id, NULL, NULL, NULL, CAST(NULL AS BIGINT),
                       CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE PRECISION) FROM messages
                WHERE state = 'queued' AND expires <= ? {only}
                UNION ALL
                SELECT 'orphan', m.id, a.id, a.state, NULL, NULL, NULL, NULL
                FROM messages m JOIN messages a ON a.id = m.after_id
                WHERE m.state = 'queued' AND m.after_id IS NOT NULL
                  AND a.state IN ('expired', 'cancelled', 'dead') {scoped}
                UNION ALL
                SELECT 'stale', id, NULL, NULL, transcript, transcript_from, NULL, NULL
                FROM messages
                WHERE state = 'delivered' AND session_id IS NOT NULL AND delivered <= ? {only}""",
            [now, *args, *args, now - self.confirm_seconds, *args],
        )

    def _swept(self, found: list[tuple[Any, ...]], now: float, agent: str | None) -> None:
        """End or requeue what :meth:`_sweep_read` found, then read again until nothing is
        left: what just ended may be another message's dependency, and its dependents' in
        turn (a loop, not a recursion: an ``--after`` chain may be thousands long)."""
        while self._sweep_once(found, now):
            sql, args = self._sweep_read(now, agent)
            found = self.store.execute(sql, args).fetchall()

    def _sweep_once(self, found: list[tuple[Any, ...]], now: float) -> bool:
        """End or requeue what :meth:`_sweep_read` found (rows of other kinds are not its);
        whether there was anything."""
        expired = [row[1] for row in found if row[0] == "expired"]
        orphans = [row[1:4] for row in found if row[0] == "orphan"]
        stale = [(row[1], *row[4:6]) for row in found if row[0] == "stale"]
        if not (expired or orphans or stale):
            return False
        seen = seen_late(stale)
        with self.store.transaction() as tx:
            for message_id in expired:
                _set(tx, message_id, "expired", now, "not delivered before its TTL", "queued")
            for message_id, after_id, after_state in orphans:
                why = f"waited for {after_id}, which ended {after_state}"
                _set(tx, message_id, "dead", now, why, "queued")
            for message_id, _, _ in stale:
                if message_id in seen:
                    _set(tx, message_id, "confirmed", now, "found in the transcript", "delivered")
                else:
                    self._unconfirmed(tx, message_id, now, "not confirmed in time",
                                      "delivered <= ?", now - self.confirm_seconds)  # fmt: skip
        return True

    def _unconfirmed(
        self, tx: Any, message_id: str, now: float, why: str, still: str, value: float
    ) -> None:
        """Requeue (or kill) a delivery found unconfirmed by a read before ``tx``, if it is
        ``still`` (SQL, with ``value``) the one that read found: meanwhile another hook or
        sweep may have requeued it and a hook handed it over afresh, and that delivery, which
        the model has, must not go back to the queue (a second hook would hand it out again)."""
        row = tx.execute(
            f"SELECT attempts FROM messages WHERE id = ? AND state = 'delivered' AND {still}",
            (message_id, value),
        ).fetchone()
        if row is None:
            return
        if row[0] >= self.max_attempts:
            _set(tx, message_id, "dead", now, f"{why}, after {row[0]} deliveries", "delivered")
        else:
            _requeue(tx, message_id, now, why)

    def prune_spills(self, retention: float, now: float | None = None) -> int:
        """Delete the files of large messages that ended (or are gone) more than ``retention``
        seconds ago; the model may still read one for a while after its delivery. Returns how
        many were deleted."""
        now = time.time() if now is None else now
        folder = os.path.join(self.store.folder, "messages")
        try:
            names = [n for n in os.listdir(folder) if n.endswith(".txt")]
        except OSError:
            return 0
        removed = 0
        for name in names:
            path = os.path.join(folder, name)
            row = self.store.execute(
                "SELECT state, coalesce(ended, confirmed) FROM messages WHERE id = ?",
                (name[: -len(".txt")],),
            ).fetchone()
            if row is not None and row[0] in PENDING:
                continue
            try:
                ended = row[1] if row is not None and row[1] else os.lstat(path).st_mtime
                if now - ended >= retention:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        return removed

    def mark_pushed(self, message_id: str, now: float | None = None) -> bool:
        """Record, before ``orch send --push`` types the message into the pane, that it is
        delivered outside any session, so no hook (not even the one its own Enter starts)
        delivers it again. Whether it was still queued."""
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            cur = tx.execute(
                "UPDATE messages SET state = 'delivered', delivered = ?, attempts = attempts + 1,"
                " reason = ? WHERE id = ? AND state = 'queued'",
                (now, PUSHED, message_id),
            )
            if cur.rowcount:
                _event(tx, message_id, now, "delivered", PUSHED)
        return bool(cur.rowcount)

    def unpush(self, message_id: str, why: str, now: float | None = None) -> None:
        """Undo :meth:`mark_pushed` when typing failed: queued again, the attempt not counted."""
        self.take_back([message_id], why, now, pushed=True)

    def take_back(
        self, message_ids: list[str], why: str, now: float | None = None, *, pushed: bool = False
    ) -> int:
        """Put deliveries the model never got back in the queue, their attempt not counted (a
        hook's reply left them out, or typing a push failed): the agent's next hook hands them
        over. ``pushed``: only deliveries outside any session. How many were still delivered."""
        now = time.time() if now is None else now
        pushed_only = " AND session_id IS NULL" if pushed else ""
        with self.store.transaction() as tx:
            back = [
                row[0]
                for row in tx.execute(
                    "UPDATE messages SET state = 'queued', delivered = NULL, session_id = NULL,"
                    " reason = NULL, checks = 0, attempts = attempts - 1"
                    f" WHERE id IN ({', '.join('?' * len(message_ids))}) AND state = 'delivered'"
                    f"{pushed_only} RETURNING id",
                    message_ids,
                ).fetchall()
            ]
            self._events(tx, now, [(back, "queued", why)] if back else [])
        return len(back)

    def requeue_session(self, session_id: str, reason: str, now: float | None = None) -> int:
        """Put a finished session's unconfirmed deliveries back in the queue; how many. Those
        its transcript shows are confirmed instead: the model has them (after ``--continue``
        in its history too), though no later hook confirmed them (the Stop past
        ``stop_blocks`` looks at nothing; Claude may write a turn down after its Stop hook)."""
        now = time.time() if now is None else now
        seen = seen_late(
            self.store.execute(
                "SELECT id, transcript, transcript_from FROM messages WHERE state = 'delivered'"
                " AND session_id = ?",
                (session_id,),
            ).fetchall()
        )
        why = f"session ended ({reason})"
        with self.store.transaction() as tx:
            ids = [
                r[0]
                for r in tx.execute(
                    "SELECT id FROM messages WHERE state = 'delivered' AND session_id = ?",
                    (session_id,),
                )
            ]
            for message_id in ids:
                if message_id in seen:
                    _set(tx, message_id, "confirmed", now, "found in the transcript", "delivered")
                else:
                    _requeue(tx, message_id, now, why)
        return len(set(ids) - seen)

    # -- delivering (called by the queue plugin inside orch-hook) ---------------------------

    def confirm(
        self,
        agent: str,
        session_id: str,
        transcript_path: str | None,
        now: float | None = None,
        *,
        since: float | None = None,
    ) -> list[str]:
        """Confirm this session's deliveries found in its transcript; requeue those missed by
        too many hooks. A miss counts only for a delivery whose hook had answered before this
        one began (``since``): a hook running beside the delivering one (parallel tool calls)
        cannot find it yet. Returns the confirmed ids."""
        now = time.time() if now is None else now
        inflight = self.store.execute(
            f"SELECT id, checks, answered_by, transcript_from FROM messages WHERE {INFLIGHT_SQL}",
            (agent, session_id),
        ).fetchall()
        found, missed = self._look(inflight, transcript_path, since or now)
        if found or missed:
            with self.store.transaction() as tx:
                self._events(tx, now, self._account(tx, found, missed, now)())
        return found

    def _look(
        self, inflight: list[tuple[Any, ...]], transcript_path: str | None, since: float
    ) -> tuple[list[str], list[tuple[str, int]]]:
        """Which of a session's deliveries in flight (id, checks, answered_by,
        transcript_from) its transcript shows, and those it missed (with their misses so
        far): read before any transaction, the transcript being a file."""
        if not inflight:
            return [], []
        starts = [start for *_, start in inflight]
        ids = marked(transcript_tail(transcript_path, None if None in starts else min(starts)))
        found = [mid for mid, *_ in inflight if mid in ids]
        missed = [
            (mid, checks)
            for mid, checks, answered_by, _ in inflight
            if mid not in ids and (answered_by is None or answered_by < since)
        ]
        return found, missed

    def _account(
        self, tx: Any, found: list[str], missed: list[tuple[str, int]], now: float
    ) -> Callable[[], list[Events]]:
        """Confirm ``found``, count a miss for each of ``missed``; what gives the confirmations'
        events, for the caller to write with its own (one statement). The confirmations go
        with the transaction's next statement (:meth:`Store.later`): read their events after
        it."""
        why = "found in the transcript"
        confirmed = found and self.store.later(  # one statement for them all
            tx,
            "UPDATE messages SET state = 'confirmed', reason = ?, confirmed = ?"
            f" WHERE id IN ({', '.join('?' * len(found))}) AND state = 'delivered'"
            " RETURNING id",
            (why, now, *found),
        )
        for message_id, checks in missed:
            if checks + 1 >= self.confirm_hooks:
                self._unconfirmed(tx, message_id, now, "not found in the transcript",
                                  "checks = ?", checks)  # fmt: skip
            else:
                self.store.later(
                    tx, "UPDATE messages SET checks = checks + 1 WHERE id = ?", (message_id,)
                )

        def events() -> list[Events]:
            if not confirmed:
                return []
            done = {row[0] for row in confirmed.fetchall()}
            return [([mid for mid in found if mid in done], "confirmed", why)]

        return events

    def deliver(
        self,
        agent: str,
        session_id: str | None,
        *,
        transcript_path: str | None = None,
        since: float | None = None,
        min_priority: int = 0,
        budget: int = 8000,
        deadline: float | None = None,
        now: float | None = None,
    ) -> list[Message]:
        """What a hook does: confirm this session's earlier deliveries, sweep, and claim what
        is deliverable now. One read finds all three (and is all a hook of an agent with
        nothing pending does); the confirmations and the claim are one write transaction,
        taken only when there is something to confirm or take."""
        now = time.time() if now is None else now
        read = self._hook_read(agent, session_id, min_priority, now)
        rows = self.store.execute(*read).fetchall()
        self._swept(rows, now, agent)
        inflight = [(row[1], row[6], row[7], row[5]) for row in rows if row[0] == "inflight"]
        found, missed = self._look(inflight, transcript_path, since or now)
        if not (found or missed or any(row[0] == "ready" for row in rows)):
            return []
        start = _size(transcript_path)
        with self.store.transaction() as tx:
            confirmed = self._account(tx, found, missed, now)
            return self._claim(tx, agent, session_id, min_priority, budget, transcript_path,
                               start, deadline, now, confirmed)  # fmt: skip

    def _hook_read(
        self, agent: str, session_id: str | None, min_priority: int, now: float
    ) -> tuple[str, list[Any]]:
        """:meth:`deliver`'s one read: the sweep's rows, the session's deliveries in flight,
        and a row if a message is ready, each found through an index of the agent's."""
        sweep, args = self._sweep_read(now, agent)
        return (
            f"""{sweep}
                UNION ALL
                SELECT 'inflight', id, NULL, NULL, NULL, transcript_from, checks, answered_by
                FROM messages WHERE {INFLIGHT_SQL}
                UNION ALL
                SELECT 'ready', NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE EXISTS (
                  SELECT 1 FROM messages WHERE agent = ? AND state = 'queued'
                    AND priority >= ? AND (not_before IS NULL OR not_before <= ?)
                    AND (expires IS NULL OR expires > ?))""",
            [*args, agent, session_id, agent, min_priority, now, now],
        )

    def claim(
        self,
        agent: str,
        session_id: str | None,
        *,
        min_priority: int = 0,
        budget: int = 8000,
        transcript_path: str | None = None,
        deadline: float | None = None,
        now: float | None = None,
    ) -> list[Message]:
        """Take the deliverable messages for ``agent``, highest first, up to ``budget``
        characters of text (at least one), and mark them delivered to ``session_id`` (whose
        transcript, if given, is where a late confirmation is looked for). Past ``deadline``
        (``time.time()``, less a margin for the reply) nothing is taken: a hook that has run out
        of time could not hand the messages over. Each message records by when its hook has
        answered (``answered_by``), for :meth:`confirm`."""
        now = time.time() if now is None else now
        start = _size(transcript_path)
        with self.store.transaction() as tx:
            return self._claim(tx, agent, session_id, min_priority, budget, transcript_path,
                               start, deadline, now, list)  # fmt: skip

    def _claim(
        self,
        tx: Any,
        agent: str,
        session_id: str | None,
        min_priority: int,
        budget: int,
        transcript_path: str | None,
        transcript_from: int | None,
        deadline: float | None,
        now: float,
        confirmed: Callable[[], list[Events]],
    ) -> list[Message]:
        """:meth:`claim` in the open transaction ``tx``, whose events so far (``confirmed``,
        read after the claim's first statement) it writes with its own, in one statement
        (unless it rolls ``tx`` back, out of time). Its update and the events go with the
        ``COMMIT`` (:meth:`Store.later`)."""
        limit = min(CLAIM_ROWS, budget // LEAST_RENDERED + 1)
        taken: list[Message] = []
        used = 0
        full = True
        while not taken and full:  # rows that were all dead: the next ones may not be
            # ``after``: held back while the other message is here and not delivered; one that
            # is not here (an import without it: confirmed and not exported) holds nothing.
            rows = tx.execute(
                """SELECT * FROM messages m
                   WHERE m.agent = ? AND m.state = 'queued' AND m.priority >= ?
                     AND (m.not_before IS NULL OR m.not_before <= ?)
                     AND (m.expires IS NULL OR m.expires > ?)
                     AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.id = m.after_id
                          AND a.state NOT IN ('delivered', 'confirmed'))
                   ORDER BY m.priority DESC, m.seq LIMIT ?""",
                (agent, min_priority, now, now, limit),
            ).fetchall()
            full = len(rows) == limit
            for row in rows:
                message = self._record(tx, row)
                if message["attempts"] >= self.max_attempts:
                    why = f"delivered {message['attempts']} times without confirmation"
                    _set(tx, message["id"], "dead", now, why, "queued")
                    continue
                size = self._cost(message, budget)
                if taken and used + size > budget:
                    break
                used += size
                taken.append(message)
        if taken and deadline is not None and time.time() > deadline - CLAIM_MARGIN:
            tx.execute("ROLLBACK")
            return []
        events = confirmed()
        if taken:
            ids = [m["id"] for m in taken]
            answered_by = (now if deadline is None else deadline) + ANSWER_MARGIN
            self.store.later(
                tx,
                "UPDATE messages SET state = 'delivered', delivered = ?, session_id = ?,"
                " transcript = ?, transcript_from = ?, answered_by = ?, attempts = attempts + 1,"
                f" checks = 0 WHERE id IN ({', '.join('?' * len(ids))})",
                (now, session_id, transcript_path, transcript_from, answered_by, *ids),
            )
            events.append((ids, "delivered", session_id))
        self._events(tx, now, events)
        return taken

    def _events(self, tx: Any, now: float, events: list[Events]) -> None:
        """Events of one time, each of ``(ids, state, detail)`` for each of its ids, in their
        order (the fleet view's current task is the first a hook showed), in one statement for
        up to :data:`INSERT_ROWS` of them, sent with the transaction's next one (on a server,
        one round trip with the ``COMMIT``): each group's time, state and detail given once,
        not once an id."""
        rows = [(mid, state, detail) for ids, state, detail in events for mid in ids]
        for start in range(0, len(rows), INSERT_ROWS):
            parts, args = [], []
            for (state, detail), group in groupby(rows[start : start + INSERT_ROWS], _kind):
                ids = [mid for mid, *_ in group]
                parts.append(
                    f"SELECT v.column1, ?, ?, ? FROM (VALUES {', '.join(['(?)'] * len(ids))}) AS v"
                )
                args += [now, state, detail, *ids]
            self.store.later(
                tx,
                "INSERT INTO message_events (message_id, ts, state, detail) "
                + " UNION ALL ".join(parts),
                args,
            )

    def _cost(self, message: Message, budget: int) -> int:
        """Characters ``render`` gives ``message`` (with room for the age and separator), as
        Claude Code counts them."""
        header = len(MARK) + len(message["id"]) + length(message["sender"] or "unknown") + 80
        if length(message["body"]) > budget - 200:
            return header + length(message["body"][:PREVIEW]) + len(self._spill_path(message)) + 120
        return header + length(message["body"])

    def render(
        self,
        messages: Iterable[Message],
        budget: int = 8000,
        now: float | None = None,
        log: Callable[..., None] | None = None,
    ) -> str:
        """The text the model gets: per message a header (id, sender, band, age), then the
        body byte for byte; a body that does not fit goes to a file, with path and preview (a
        file that cannot be written leaves the preview and the command that prints the text, and
        a line for ``log``, a plugin's ``ctx.log``)."""
        now = time.time() if now is None else now
        parts = []
        for m in messages:
            header = (
                f"{MARK}{m['id']} from {unmarked(m['sender'] or 'unknown')} · {m['band']} "
                f"(priority {m['priority']}) · queued {age(now - m['created'])} ago]"
            )
            body = unmarked(m["body"])
            if length(body) <= budget - 200:
                parts.append(f"{header}\n{body}")
                continue
            try:
                where = f"the full text is in {self._spill(m)}"
            except OSError as exc:  # a full disk, a planted link: the preview goes out all the same
                if log is not None:
                    log("cannot write a large message to its file", level="error",
                        message_id=m["id"], error=str(exc))  # fmt: skip
                where = f"orch could not write it to a file; `orch queue show {m['id']}` prints it"
            parts.append(
                f"{header}\nThis message has {len(body)} characters, too long to show here; "
                f"{where}\nPreview:\n{body[:PREVIEW]}"
            )
        return "\n\n".join(parts)

    def _spill_path(self, message: Message) -> str:
        folder = os.path.join(self.store.folder, "messages")
        return os.path.join(folder, f"{message['id']}.txt")

    def _spill(self, message: Message) -> str:
        path = self._spill_path(message)
        paths.ensure_own_dir(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(unmarked(message["body"]))  # the model reads it: into the transcript
        return path

    # -- moving messages between installations ---------------------------------------------

    def export(self, state: str | None = "pending") -> Iterator[Message]:
        for record in self.messages(state=state):
            record.pop("band", None)
            yield record

    def import_(
        self,
        records: Iterable[Message],
        now: float | None = None,
        *,
        lines: Sequence[int] | None = None,
        host: str | None = None,
    ) -> int:
        """Add exported messages in one transaction: every field of every record is checked
        first (:data:`IMPORT_FIELDS`), and one bad record stores nothing; its error names it by
        number, or by its line in ``lines`` (the file's). Ids already present are skipped, so
        importing twice adds nothing. Each message keeps every column as exported
        (:func:`_imported`), but its number and a delivery in flight, which comes back as
        queued; and, on a store one machine uses, the agent of ``host``'s window as a shared
        store names it (``host/proj:1``, exported from PostgreSQL), which is ``proj:1`` here.
        Returns how many were added."""
        now = time.time() if now is None else now
        records = list(records)
        where = (
            [f"line {n}" for n in lines]
            if lines is not None
            else [f"message {n}" for n in range(1, len(records) + 1)]
        )
        for place, record in zip(where, records, strict=True):
            try:
                _importable(record)
            except QueueError as exc:
                raise QueueError(f"{place}: {exc}") from None
        _no_cycles(records, where)
        added = 0
        with self.store.transaction() as tx:
            for record in records:
                if tx.execute("SELECT 1 FROM messages WHERE id = ?", (record["id"],)).fetchone():
                    continue
                row = _imported(record, now)
                if host is not None and not self.store.shared:
                    row["agent"] = _this_hosts(row["agent"], host)
                for _ in _attempts(self.store):
                    if tx.execute(IMPORT_ONE, (*row.values(), row["agent"])).fetchone():
                        break
                else:
                    raise QueueError(f"message {record['id']}: other sends kept its number")
                _event(tx, record["id"], now, row["state"], IMPORTED_EVENT)
                added += 1
        return added


def _number(value: object) -> bool:
    """A JSON number: ``true`` is none, though Python's ``bool`` is an ``int``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return _number(value) and isinstance(value, int) and 0 <= value <= MAX_COUNT


def _time(value: object) -> bool:
    """A time as orch stores one: seconds since 1970, finite (NaN and infinity fail both)."""
    return _number(value) and 0 <= value <= MAX_TIME  # type: ignore[operator]


def _message_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(MESSAGE_ID, value) is not None


_TEXT = ("a string or null", lambda v: v is None or isinstance(v, str))
_WHEN = "a time in seconds since 1970 (up to the year 9999)"
#: What each column of an exported message must hold, said and tested: what orch itself
#: writes there, as ``orch send`` checks what it is given. Keys that are not columns (an
#: export of a newer orch may have more) are left out.
IMPORT_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "id": ("a message id (m, then up to 63 lowercase letters or digits)", _message_id),
    "agent": ("an agent name (1-128 printable characters, not starting or ending with ':')",
              lambda v: isinstance(v, str) and agents.valid_id(v)),
    "body": (f"text, not blank, of at most {MAX_TEXT} characters",
             lambda v: isinstance(v, str) and bool(v.strip()) and len(v) <= MAX_TEXT),
    "priority": (f"an integer 0-{MAX_PRIORITY}", lambda v: _count(v) and v <= MAX_PRIORITY),
    "state": (f"one of {', '.join(STATES)}", lambda v: isinstance(v, str) and v in STATES),
    "after_id": ("a message id or null", lambda v: v is None or _message_id(v)),
    "created": (_WHEN, _time),
    **dict.fromkeys(("not_before", "expires", "delivered", "confirmed", "ended",
                     "answered_by"), (f"{_WHEN} or null", lambda v: v is None or _time(v))),
    **dict.fromkeys(("seq", "attempts", "checks"), ("a whole number", _count)),
    "transcript_from": ("a whole number or null", lambda v: v is None or _count(v)),
    # a sender longer is shown whole in a delivery's header, which then passes Claude's cap
    "sender": (f"a string of at most {MAX_SENDER} characters or null",
               lambda v: v is None or (isinstance(v, str) and len(v) <= MAX_SENDER)),
    **dict.fromkeys(("key", "reason", "session_id", "transcript"), _TEXT),
}  # fmt: skip


#: The columns an import stores as given (:func:`_imported`); ``seq`` is numbered afresh.
IMPORTED = tuple(name for name in IMPORT_FIELDS if name != "seq")
#: One imported message in, numbered after its agent's last.
IMPORT_ONE = (
    f"INSERT INTO messages ({', '.join(IMPORTED)}, seq) VALUES ({', '.join('?' * len(IMPORTED))},"
    " (SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE agent = ?))"
    " ON CONFLICT DO NOTHING RETURNING id"
)


def in_flight(record: Mapping[str, Any]) -> bool:
    """A delivery by a hook, not yet confirmed; one typed with ``--push`` has no session."""
    return record.get("state") == "delivered" and record.get("session_id") is not None


def pending(record: Mapping[str, Any]) -> bool:
    """:data:`PENDING_SQL` for one record: queued, or in flight through a hook."""
    return record.get("state") == "queued" or in_flight(record)


def ready_sql(dialect: str, until: str | None = None) -> str:
    """When message ``m`` could first be delivered, in SQL: the latest of its sending, its
    ``--in``/``--at`` time and its last retry (at or before ``until``, an SQL time, if given),
    so that ``orch stats``, the fleet snapshot and the ``queue_age`` alert count a wait alike.
    Takes :data:`RETRIED` as its one parameter; each retry is found through the events' index."""
    latest = "greatest" if dialect == "postgresql" else "max"  # of several values
    before = f" AND r.ts <= {until}" if until else ""
    return (
        f"{latest}(m.created, coalesce(m.not_before, 0), coalesce((SELECT max(r.ts) FROM"
        f" message_events r WHERE r.message_id = m.id AND r.detail = ?{before}), 0))"
    )


def _imported(record: Message, now: float) -> Message:
    """An exported message's columns (:data:`IMPORTED`) as an import stores them: as exported,
    times, reason, session and transcript included, so that an ended message reads as it did
    where it came from. A delivery in flight comes back queued, as the end of its session
    would leave it (:func:`_requeue`): the session is not here to confirm it. One typed with
    ``--push`` stays delivered, as it does where it came from: its text is already in the
    pane, and no hook delivers it again."""
    row = {name: record.get(name) for name in IMPORTED}
    row.update(attempts=record.get("attempts", 0), checks=record.get("checks", 0),
               created=record.get("created", now))  # fmt: skip
    if in_flight(record):
        row.update(state="queued", checks=0, session_id=None)
    return row


def _this_hosts(agent: str, host: str) -> str:
    """``agent`` as a store one machine uses names it: ``proj:1`` for ``host/proj:1``, the id
    a shared store gives ``host``'s tmux window (:mod:`orch_core.hosts`)."""
    name = agent[len(host) + 1 :] if agent.startswith(f"{host}/") else agent
    return name if agents.valid_id(name) else agent


def _importable(record: Message) -> None:
    """One exported message, checked field by field; the first wrong field is named."""
    if not isinstance(record, dict):
        raise QueueError("not an exported message (a JSON object)")
    missing = {"id", "agent", "body", "priority", "state"} - record.keys()
    if missing:
        raise QueueError(f"lacks {', '.join(sorted(missing))}")
    for name, (what, good) in IMPORT_FIELDS.items():
        if name in record and not good(record[name]):
            shown = repr(record[name])
            shown = shown if len(shown) <= 40 else f"{shown[:40]}… ({len(shown)} characters)"
            raise QueueError(f"{name} must be {what}, not {shown}")
    if record.get("after_id") == record["id"]:
        raise QueueError("after_id is the message's own id: it would wait for itself forever")
    _storable(**{name: record.get(name) for name in (
        "body", "sender", "key", "reason", "session_id", "transcript")})  # fmt: skip


def _no_cycles(records: list[Message], where: list[str]) -> None:
    """Messages of an import that wait for each other (``after_id``) would wait forever:
    refused, naming the first record of such a cycle."""
    after = {r["id"]: r.get("after_id") for r in records}
    ends: set[str] = set()  # ids whose waits are known to end
    for place, record in zip(where, records, strict=True):
        path, following = [record["id"]], record.get("after_id")
        while following in after and following not in ends:
            if following == record["id"]:
                waits = " waits for ".join([*path, following])
                raise QueueError(f"{place}: after_id: {waits}: none could ever be delivered")
            if following in path:  # a cycle this one only leads into: its own record says so
                break
            path.append(following)
            following = after[following]
        else:
            ends.update(path)


def _values(
    now: float,
    agent: str,
    text: str,
    priority: int = 0,
    sender: str | None = None,
    key: str | None = None,
    ttl: float | None = None,
    after: str | None = None,
    not_before: float | None = None,
) -> tuple[Any, ...]:
    """A new message's values, from :meth:`Queue.send`'s arguments: :data:`INSERT_ONE`'s after
    the id (the agent twice, the second for its number), and what its receipt is built from."""
    return (agent, agent, priority, sender, text, key, after, not_before,
            now + ttl if ttl else None, now)  # fmt: skip


def _real(value: float | None) -> float | None:
    """A time as the store keeps it (a floating-point column)."""
    return None if value is None else float(value)


def _attempts(store: Store) -> Iterator[None]:
    """Tries at an insert that other sends may beat to its id (drawn in the same millisecond)
    or its number (a send on its own): at least eight, then more until the store's timeout.
    Each loss is another send's progress."""
    give_up = time.monotonic() + store.timeout
    tries = 0
    while tries < 8 or time.monotonic() < give_up:
        tries += 1
        yield


def _ready(message: Mapping[str, Any], now: float) -> bool:
    """Whether a message may be delivered now (not held back by ``--in`` or ``--at``)."""
    return message.get("not_before") is None or message["not_before"] <= now


def _placed(where: str, exc: Exception) -> str:
    """An error of one message of several, with the caller's name for it (``message 2``)."""
    return f"{where}: {exc}" if where else str(exc)


def _check_after(row: tuple[str] | None, after: str) -> None:
    """The message ``after`` names (:data:`AFTER_SQL`'s ``row``) is there and may still be
    delivered: one waiting for a message that ended undelivered would be ended dead by the next
    sweep, never delivered, after a send that said it was queued."""
    if row is None:
        raise QueueError(f"--after: no message with id {after!r}")
    if row[0] in ("expired", "cancelled", "dead"):
        raise QueueError(f"--after: {after} ended {row[0]}: this message would never be delivered")


def check_agent(agent: object) -> None:
    """An agent's name as every command takes it (:func:`orch_core.hook.agents.valid_id`)."""
    if not isinstance(agent, str) or not agents.valid_id(agent):
        raise QueueError(f"invalid agent id {agent!r}")


def check_message(item: Mapping[str, Any], now: float | None = None) -> None:
    """A message's fields but its agent (a pattern until it fans out) as :meth:`Queue.send`
    takes them at ``now``: ``orch send --batch`` checks each line with it, to name the line.
    Times are finite: an infinite one would be stored, and exported as ``Infinity``, which no
    JSON reader takes. An empty key or ``after`` is refused rather than taken for none
    (``--key "$UNSET"``). A TTL that ends before the message is due, and a sender too long
    for a hook's reply to show (its header never shortens it), would each leave the message
    undelivered for good, the latter holding up every message after it."""
    text, priority, ttl = item["text"], item.get("priority", 0), item.get("ttl")
    key, after, not_before = item.get("key"), item.get("after"), item.get("not_before")
    sender = item.get("sender")
    if not isinstance(text, str) or not text.strip():
        raise QueueError("message text is empty")
    if len(text) > MAX_TEXT:
        raise QueueError(f"message text is {len(text)} characters; the limit is {MAX_TEXT}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise QueueError(f"priority must be an integer, not {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise QueueError(f"priority {priority} is out of range 0-{MAX_PRIORITY}")
    if ttl is not None:
        if not _number(ttl):
            raise QueueError(f"ttl must be a number of seconds, not {ttl!r}")
        if not ttl > 0:  # also NaN
            raise QueueError("ttl must be positive")
        if ttl > MAX_DURATION:
            raise QueueError(f"ttl {ttl!r} is too long a time (at most {MAX_DURATION}s)")
    if key == "":
        raise QueueError("the key is empty: give a key, or none")
    if after == "":
        raise QueueError("after is empty: give the id of the message to wait for, or none")
    if not_before is not None and not _time(not_before):
        raise QueueError(
            f"not_before must be a time in seconds since 1970, up to the year 9999, not "
            f"{not_before!r}"
        )
    now = time.time() if now is None else now
    if ttl is not None and not_before is not None and not_before >= now + ttl:
        raise QueueError(
            "the ttl ends before the message is due (--in, --at): it would expire without "
            "ever being delivered"
        )
    if isinstance(sender, str) and len(sender) > MAX_SENDER:
        raise QueueError(f"the sender is {len(sender)} characters; the limit is {MAX_SENDER}")
    _storable(text=text, sender=sender, key=key)


def _storable(**fields: object) -> None:
    """Text every store keeps as it is: PostgreSQL's cannot hold a NUL character, so no store
    takes one (a message must not depend on where the fleet keeps its queue)."""
    for name, value in fields.items():
        if isinstance(value, str) and "\x00" in value:
            raise QueueError(f"the message's {name} contains a NUL character (\\x00)")


def _event(tx: Any, message_id: str, now: float, state: str, detail: str | None) -> None:
    tx.execute(
        "INSERT INTO message_events (message_id, ts, state, detail) VALUES (?, ?, ?, ?)",
        (message_id, now, state, detail),
    )


def _kind(row: tuple[str, str, str | None]) -> tuple[str, str | None]:
    return row[1:]


def _requeue(tx: Any, message_id: str, now: float, why: str) -> None:
    """An unconfirmed delivery goes back to the queue, to be claimed by any later hook."""
    tx.execute(
        "UPDATE messages SET state = 'queued', checks = 0, session_id = NULL WHERE id = ?",
        (message_id,),
    )
    _event(tx, message_id, now, "queued", why)


def _set(
    tx: Any, message_id: str, state: str, now: float, why: str, only_from: str | None = None
) -> None:
    """Move a message to a final state (or confirmed), with its reason and time."""
    column = "confirmed" if state == "confirmed" else "ended"
    guard = " AND state = ?" if only_from else ""
    cur = tx.execute(
        f"UPDATE messages SET state = ?, reason = ?, {column} = ? WHERE id = ?{guard}",
        (state, why, now, message_id, *([only_from] if only_from else [])),
    )
    if cur.rowcount:
        _event(tx, message_id, now, state, why)


def seen_late(delivered: Iterable[tuple[str, str | None, int | None]]) -> set[str]:
    """Which of ``delivered`` (id, transcript, transcript_from) their transcripts show, each
    file read once from the earliest start. Claude writes its transcript late: the hooks
    after a delivery may all have missed it while the agent went idle, so this is looked at
    once more before a delivery goes back in the queue."""
    rows = list(delivered)
    starts: dict[str, int | None] = {}
    for _, path, start in rows:
        if path:
            known = starts.get(path, start)
            starts[path] = None if known is None or start is None else min(known, start)
    tails = {path: marked(transcript_tail(path, start)) for path, start in starts.items()}
    return {mid for mid, path, _ in rows if path and mid in tails[path]}


def unmarked(text: str) -> str:
    """``text`` as delivered: orch's mark in it quoted (:data:`QUOTED_MARK`)."""
    return text.replace(MARK, QUOTED_MARK)


def marked(text: str) -> set[str]:
    """The ids of every delivered message header in ``text``, found in one pass."""
    return set(re.findall(re.escape(MARK) + r"(m[0-9a-z]+) ", text))


def _size(path: str | None) -> int | None:
    """How long a transcript is now: a delivery's text is written after this point."""
    try:
        return os.stat(path).st_size if path else None
    except OSError:
        return None


def transcript_tail(
    path: str | None, start: int | None = None, size: int = TRANSCRIPT_READ, *, ahead: bool = False
) -> str:
    """A session's transcript from ``start`` (where it ended when the deliveries now looked
    for were made), or its last ``size`` bytes, where recent deliveries show up; with ``ahead``,
    the ``size`` bytes from ``start`` on (what was written right after it). A ``start`` further
    back than ``size`` gives the ``size`` bytes after it too: a delivery's text is written
    there, and a large tool output since must not hide it (the model has the message; put back
    in the queue, it would get it twice). The path comes from a hook payload: anything but a
    regular file (a FIFO, a device) reads as empty, without blocking, and no more than twice
    ``size`` bytes are ever read."""
    if not path:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        if ahead and start is not None:
            return os.pread(fd, min(size, max(0, info.st_size - start)), start).decode(
                "utf-8", "replace"
            )
        first = max(0, info.st_size - size)
        after = b""
        if start is not None and first <= start <= info.st_size:
            first = start
        elif start is not None and 0 <= start < first:
            after = os.pread(fd, size, start) + b"\n"  # a newline: no mark spans the gap
        return (after + os.pread(fd, info.st_size - first, first)).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
