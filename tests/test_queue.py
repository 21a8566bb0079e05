"""The Queue API in process, on a real SQLite file and a real PostgreSQL database: order,
isolation, keys, time, dependencies, confirmation, dead letters, management, export/import,
rendering and the event history."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orch_core import api
from orch_core import queue as queue_module
from orch_core.plugins.plan import ANSWER_MARGIN
from orch_core.queue import (
    KEYED_SQL,
    MARK,
    MAX_DURATION,
    MAX_TIME,
    PENDING_SQL,
    PREVIEW,
    Queue,
    QueueError,
    band,
    parse_duration,
)
from orch_core.storage import open_store
from orch_core.storage.store import SQLiteStore, Store
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

pytestmark = pytest.mark.orch_backends("sqlite", "postgresql")

T0 = 1_700_000_000.0
WEIRD = (
    "  leading spaces\n\ttab, \"double\" and 'single' quotes, $HOME and ${PATH},\n"
    "`whoami` and $(id -u); rm -rf /tmp/x\r\nCRLF line, emoji 🚀👩‍💻, trailing  \n\n"
)


@pytest.fixture
def q(orch: OrchState) -> Queue:
    return Queue(orch.store)


def rows(store: Store, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return store.execute(sql, args).fetchall()


def state(q: Queue, message_id: str) -> str:
    record = q.get(message_id)
    assert record is not None
    return str(record["state"])


def know(store: Store, *agents: str) -> None:
    """Agents orch has heard from (as a hook would record them)."""
    for agent in agents:
        store.set_agent_state(agent, "busy", session_id=None, project_dir=None)


def counted_transactions(q: Queue, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The write transactions ``q`` opens from now on, as they are opened."""
    assert q.store.execute("SELECT 1")  # opened and migrated: not counted
    transactions: list[object] = []
    real = q.store.transaction

    def counted(*args: Any) -> Any:
        transactions.append(args)
        return real(*args)

    monkeypatch.setattr(q.store, "transaction", counted)
    return transactions


def transcript(path: Path, *texts: str) -> str:
    """A transcript file as Claude writes it: JSON lines, the hook output inside strings."""
    with path.open("a", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"type": "attachment", "content": text}) + "\n")
    return str(path)


# -- order -------------------------------------------------------------------------------------


def test_bands_follow_the_plan() -> None:
    expected = {0: "normal", 9: "normal", 10: "high", 49: "high", 50: "critical",
                99: "critical", 100: "emergency", 199: "emergency", 200: "rebrief"}  # fmt: skip
    assert {p: band(p) for p in expected} == expected


def test_priority_first_then_fifo_within_a_priority(q: Queue) -> None:
    sent = [
        q.send("p:1", f"m{i}", priority=prio, now=T0 + i)
        for i, prio in enumerate([0, 10, 0, 100, 50, 10, 0, 100, 9])
    ]
    taken = q.claim("p:1", "s", budget=100_000, now=T0 + 100)
    expected = sorted(sent, key=lambda m: (-m["priority"], m["seq"]))
    assert [m["id"] for m in taken] == [m["id"] for m in expected]
    assert [m["body"] for m in taken] == ["m3", "m7", "m4", "m1", "m5", "m8", "m0", "m2", "m6"]
    assert [m["band"] for m in taken] == [band(m["priority"]) for m in taken]


def test_seq_is_gap_free_monotonic_and_per_agent(q: Queue) -> None:
    a = [q.send("p:1", f"a{i}")["seq"] for i in range(3)]
    b = [q.send("p:2", f"b{i}")["seq"] for i in range(2)]
    bad: list[dict[str, Any]] = [
        {"text": "   "},
        {"text": "x", "priority": 201},
        {"text": "x", "after": "m-nope"},
    ]
    for options in bad:
        with pytest.raises(QueueError):
            q.send("p:1", **options)
    q.send("p:1", "dup", key="k")
    assert q.send("p:1", "dup", key="k")["duplicate"] is True
    a += [q.send("p:1", "a3")["seq"]]
    b += [q.send("p:2", "b2")["seq"]]
    assert a == [1, 2, 3, 5]  # 4 is the keyed message; failures and the duplicate take none
    assert b == [1, 2, 3]
    seqs = rows(q.store, "SELECT seq FROM messages WHERE agent = 'p:1' ORDER BY seq")
    assert [s for (s,) in seqs] == [1, 2, 3, 4, 5]


def test_an_agent_only_gets_its_own_messages(q: Queue) -> None:
    mine = q.send("p:1", "for one")
    other = q.send("p:2", "for two")
    q.send("p:10", "for ten")
    taken = q.claim("p:1", "s1", budget=100_000)
    assert [m["id"] for m in taken] == [mine["id"]]
    assert q.claim("p:1", "s1") == []
    assert [m["id"] for m in q.claim("p:2", "s2")] == [other["id"]]
    assert state(q, other["id"]) == "delivered"
    assert [m["body"] for m in q.messages("p:10", "queued")] == ["for ten"]


def test_a_pattern_fans_out_to_known_agents_only_one_copy_each(orch: OrchState, q: Queue) -> None:
    know(q.store, "proj:1", "proj:2", "other:1")
    receipts = api.send(
        "proj:*", "hello all", env=orch.env, project_dir=str(orch.project_dir), queue=q,
        priority=10, sender="lead",
    )  # fmt: skip
    assert sorted(r["agent"] for r in receipts) == ["proj:1", "proj:2"]
    assert len({r["id"] for r in receipts}) == 2
    stored = rows(q.store, "SELECT agent, body, priority, sender FROM messages ORDER BY agent")
    assert stored == [("proj:1", "hello all", 10, "lead"), ("proj:2", "hello all", 10, "lead")]
    with pytest.raises(QueueError, match="no known agent"):
        api.send("nope:*", "x", env=orch.env, project_dir=str(orch.project_dir), queue=q)
    everyone = api.send("*", "all", env=orch.env, project_dir=str(orch.project_dir), queue=q)
    assert sorted(r["agent"] for r in everyone) == ["other:1", "proj:1", "proj:2"]
    assert rows(q.store, "SELECT count(*) FROM messages") == [(5,)]


def test_send_many_names_a_bad_message_by_its_place_before_patterns_fan_out(
    orch: OrchState, q: Queue
) -> None:
    """A script's second message is ``message 2``, however many agents its first reached
    (the queue's count, after the fan-out, said 4), and an ``after`` that is not there, a
    pattern that matches none, are named as well. Nothing is stored."""
    know(q.store, "proj:1", "proj:2", "proj:3")
    sending: dict[str, Any] = {"env": orch.env, "project_dir": str(orch.project_dir), "queue": q}
    everyone = {"agent": "proj:*", "text": "standup"}
    for second, reason in (
        ({"agent": "proj:1", "text": " "}, "message text is empty"),
        ({"agent": "proj:1", "text": "x", "priority": 300}, "priority 300 is out of range 0-199"),
        ({"agent": "proj:1", "text": "x", "after": "mnope"}, "--after: no message with id 'mnope'"),
        ({"agent": "nobody:*", "text": "x"}, "no known agent matches 'nobody:*'"),
    ):
        with pytest.raises(QueueError) as raised:
            api.send_many([everyone, second, {"agent": "proj:2", "text": "x"}], **sending)
        assert str(raised.value) == f"message 2: {reason}"
    with pytest.raises(QueueError, match=r"^--after: no message with id 'mnope'$"):
        api.send("proj:1", "x", after="mnope", **sending)  # one message: no number
    assert rows(q.store, "SELECT count(*) FROM messages") == [(0,)]


def test_the_api_refuses_the_rebriefing_priority_as_orch_send_does(
    orch: OrchState, q: Queue
) -> None:
    """200 is reserved for rebriefing (what the rebrief plugin and the fleet view take for
    no task of the agent's): ``orch send --priority 200`` is refused, and so is the API's."""
    sending: dict[str, Any] = {"env": orch.env, "project_dir": str(orch.project_dir), "queue": q}
    with pytest.raises(QueueError, match=r"^priority 200 is out of range 0-199$"):
        api.send("p:1", "x", priority=200, **sending)
    assert rows(q.store, "SELECT count(*) FROM messages") == [(0,)]
    assert api.send("p:1", "x", priority=199, **sending)[0]["band"] == "emergency"


def test_the_api_closes_the_store_it_opened(orch: OrchState) -> None:
    """``api.send`` without a queue opens the store for the message and closes it: a script
    that sends in a loop kept a connection (on a server, one of its connections) for each
    message until a garbage collection, which may never come in time."""
    import gc

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    api.send("p:1", "first", env=orch.env, project_dir=str(orch.project_dir))  # imports, logs
    gc.collect()
    gc.disable()
    try:
        before = open_files()
        for n in range(5):
            api.send("p:1", f"message {n}", env=orch.env, project_dir=str(orch.project_dir))
        assert open_files() == before
    finally:
        gc.enable()


def test_a_ttl_that_ends_before_the_message_is_due_is_refused(q: Queue) -> None:
    """``--in 2h --ttl 30m``: the message would expire, never having been deliverable."""
    with pytest.raises(QueueError, match=r"^the ttl ends before the message is due"):
        q.send("p:1", "x", ttl=1800, not_before=T0 + 7200, now=T0)
    assert rows(q.store, "SELECT count(*) FROM messages") == [(0,)]
    sent = q.send("p:1", "x", ttl=7200.5, not_before=T0 + 7200, now=T0)
    assert [m["id"] for m in q.claim("p:1", "s", now=T0 + 7200)] == [sent["id"]]


def test_a_sender_too_long_for_a_hook_is_refused(orch: OrchState, q: Queue) -> None:
    """Each delivery's header shows its sender whole: one of 20,000 characters put the hook's
    text past Claude Code's cap, so the message was taken back at every hook and, the first
    in line, held up every message after it for good. One of the most taken is delivered."""
    with pytest.raises(QueueError, match=r"^the sender is 20000 characters; the limit is 200$"):
        q.send("p:1", "hello", sender="x" * 20_000)
    assert rows(q.store, "SELECT count(*) FROM messages") == [(0,)]
    event = {"session_id": "s1", "cwd": str(orch.project_dir)}
    orch.run(payload("SessionStart", **event), ORCH_AGENT="p:1")
    longest = q.send("p:1", "hello", sender="\U0001f680" * 200, priority=5)  # 400 code units
    after = q.send("p:1", "and then")
    shown = orch.run(payload("PostToolUse", **event), ORCH_AGENT="p:1").stdout
    assert longest["id"] in shown and after["id"] in shown


# -- idempotency, time, dependencies ------------------------------------------------------------


def test_a_key_repeated_while_pending_stores_nothing(q: Queue) -> None:
    first = q.send("p:1", "deploy", key="k1", now=T0)
    again = q.send("p:1", "deploy (again)", key="k1", now=T0 + 1)
    assert again["duplicate"] is True
    assert not first.get("duplicate")
    for field in ("id", "agent", "seq", "priority", "state", "body"):
        assert again[field] == first[field]
    assert rows(q.store, "SELECT id, body FROM messages") == [(first["id"], "deploy")]
    assert [e["state"] for e in q.get(first["id"])["events"]] == ["queued"]  # type: ignore[index]
    assert rows(q.store, "SELECT max(seq) FROM messages WHERE agent = 'p:1'") == [(1,)]
    # the key is the agent's own: another agent's message with it is stored
    assert not q.send("p:2", "deploy", key="k1").get("duplicate")


def test_a_key_is_free_again_once_its_message_outlived_its_ttl(q: Queue) -> None:
    """A message past its TTL that no sweep has ended yet will never be delivered: a resend
    with its key is stored, not taken for a duplicate of it (nor is a retry refused)."""
    first = q.send("p:1", "deploy v1", key="deploy", ttl=1, now=T0)
    assert q.send("p:1", "deploy v1", key="deploy", now=T0 + 0.5)["duplicate"] is True
    again = q.send("p:1", "deploy v1 (retry)", key="deploy", ttl=1, now=T0 + 2)
    assert not again.get("duplicate")
    q.sweep(now=T0 + 2)
    assert state(q, first["id"]) == "expired"
    assert [m["body"] for m in q.claim("p:1", "s", now=T0 + 2)] == ["deploy v1 (retry)"]
    third = q.send("p:1", "deploy v1 (third)", key="deploy", ttl=1, now=T0 + 3)
    assert not third.get("duplicate")
    # the third outlived its TTL, unswept: the first may be retried
    assert q.retry(first["id"], now=T0 + 10)["state"] == "queued"
    q.sweep(now=T0 + 10)
    assert [m["id"] for m in q.messages("p:1", "queued")] == [first["id"]]


@pytest.mark.orch_backends("sqlite")
def test_the_key_lookup_uses_the_key_index(q: Queue) -> None:
    store = q.store
    assert isinstance(store, SQLiteStore)
    plan = store.conn.execute(f"EXPLAIN QUERY PLAN {KEYED_SQL}", ("p:1", "k", T0)).fetchall()
    assert "USING INDEX messages_key (agent=? AND key=?)" in plan[0][3], plan


def test_an_empty_key_or_after_is_refused_not_taken_for_none(q: Queue) -> None:
    """``--key "$UNSET"`` would store duplicates (or, in a batch, no key at all), and
    ``--after ''`` a dependency no export could carry."""
    with pytest.raises(QueueError, match=r"^the key is empty"):
        q.send("p:1", "x", key="")
    with pytest.raises(QueueError, match=r"^after is empty"):
        q.send("p:1", "x", after="")
    for name, reason in (("key", "the key is empty"), ("after", "after is empty")):
        with pytest.raises(QueueError, match=f"^message 2: {reason}"):
            q.send_many([{"agent": "p:1", "text": "ok"}, {"agent": "p:1", "text": "x", name: ""}])
    assert q.messages() == []


def test_a_key_is_free_again_once_delivered_and_once_confirmed(q: Queue, tmp_path: Path) -> None:
    first = q.send("p:1", "check in", key="k", now=T0)
    (taken,) = q.claim("p:1", "s", now=T0 + 1)
    second = q.send("p:1", "check in", key="k", now=T0 + 2)
    assert not second.get("duplicate")
    assert second["id"] != first["id"]
    log = transcript(tmp_path / "t.jsonl", q.render([taken], now=T0 + 1))
    assert q.confirm("p:1", "s", log, now=T0 + 3) == [first["id"]]
    q.claim("p:1", "s", now=T0 + 4)
    q.confirm("p:1", "s", transcript(tmp_path / "t.jsonl", q.render([second])), now=T0 + 5)
    assert state(q, second["id"]) == "confirmed"
    third = q.send("p:1", "check in", key="k", now=T0 + 6)
    assert not third.get("duplicate")
    assert rows(q.store, "SELECT count(*) FROM messages WHERE key = 'k'") == [(3,)]


def test_ttl_expires_and_is_never_delivered(q: Queue) -> None:
    short = q.send("p:1", "stale soon", ttl=60, now=T0)
    lasting = q.send("p:1", "fresh", ttl=600, now=T0)
    # even before any sweep ran, an expired message is not handed out
    taken = q.claim("p:1", "s", now=T0 + 61)
    assert [m["id"] for m in taken] == [lasting["id"]]
    q.sweep(now=T0 + 61)
    record = q.get(short["id"])
    assert record is not None
    assert record["state"] == "expired"
    assert record["ended"] == T0 + 61
    assert record["events"][-1] == {"ts": T0 + 61, "state": "expired",
                                    "detail": "not delivered before its TTL"}  # fmt: skip
    assert q.claim("p:1", "s", now=T0 + 62) == []


def test_not_before_holds_a_message_back_until_then(q: Queue) -> None:
    later = q.send("p:1", "check in", not_before=T0 + 600, now=T0)
    assert q.claim("p:1", "s", now=T0 + 599) == []
    assert state(q, later["id"]) == "queued"
    assert [m["id"] for m in q.claim("p:1", "s", now=T0 + 600)] == [later["id"]]


def test_after_waits_for_the_other_to_be_delivered(q: Queue) -> None:
    first = q.send("p:1", "first", priority=0, now=T0)
    then = q.send("p:1", "then", priority=50, after=first["id"], now=T0)
    (taken,) = q.claim("p:1", "s", budget=100_000, now=T0 + 1)
    assert taken["id"] == first["id"]  # the more urgent one waits for its dependency
    assert state(q, then["id"]) == "queued"
    assert [m["id"] for m in q.claim("p:1", "s", now=T0 + 2)] == [then["id"]]


def test_after_a_message_of_another_agent(q: Queue) -> None:
    theirs = q.send("p:2", "build it", now=T0)
    mine = q.send("p:1", "review it", after=theirs["id"], now=T0)
    assert q.claim("p:1", "s1", now=T0 + 1) == []
    q.claim("p:2", "s2", now=T0 + 2)
    assert [m["id"] for m in q.claim("p:1", "s1", now=T0 + 3)] == [mine["id"]]


@pytest.mark.parametrize("ending", ["cancelled", "expired", "dead"])
def test_after_ends_dead_when_the_other_ends_undelivered(q: Queue, ending: str) -> None:
    q.max_attempts, q.confirm_hooks = 1, 1
    first = q.send("p:1", "first", ttl=60, priority=5, now=T0)
    then = q.send("p:1", "then", after=first["id"], now=T0)
    later = q.send("p:1", "after then", after=then["id"], now=T0)
    now = T0 + 10
    if ending == "cancelled":
        q.cancel(first["id"], now=now)
    elif ending == "expired":
        now = T0 + 61
        q.sweep(now=now)
    else:
        q.claim("p:1", "s", now=now)
        now += 1  # the next hook
        q.confirm("p:1", "s", None, now=now)
        q.sweep(now=now)  # as the hook does after confirming
    assert state(q, first["id"]) == ending
    record = q.get(then["id"])
    assert record is not None
    assert record["state"] == "dead"
    assert record["reason"] == f"waited for {first['id']}, which ended {ending}"
    assert record["events"][-1]["state"] == "dead"
    assert state(q, later["id"]) == "dead"  # and its own dependents, in the same sweep
    assert q.claim("p:1", "s", now=now + 1) == []


@pytest.mark.parametrize("ending", ["cancelled", "expired", "expired-unswept", "dead"])
def test_after_a_message_that_ended_undelivered_is_refused_and_stores_nothing(
    q: Queue, ending: str
) -> None:
    """Stored, it would be said queued, then ended dead by the next sweep: never delivered."""
    q.max_attempts, q.confirm_hooks = 1, 1
    first = q.send("p:1", "first", ttl=60, now=T0)
    now = T0 + 10
    if ending == "cancelled":
        q.cancel(first["id"], now=now)
    elif ending.startswith("expired"):
        now = T0 + 61
        if ending == "expired":
            q.sweep(now=now)
    else:
        q.claim("p:1", "s", now=now)
        now += 1
        q.confirm("p:1", "s", None, now=now)
        q.sweep(now=now)
    reason = "expired" if ending.startswith("expired") else ending
    with pytest.raises(QueueError, match=f"^message 2: --after: {first['id']} ended {reason}: "):
        q.send_many(
            [{"agent": "p:1", "text": "ok"}, {"agent": "p:2", "text": "x", "after": first["id"]}],
            now=now,
        )
    assert [m["id"] for m in q.messages()] == [first["id"]]
    delivered = q.send("p:1", "second", now=T0)
    assert q.send("p:2", "then", after=delivered["id"], now=T0)["state"] == "queued"
    q.claim("p:1", "s2", now=T0 + 1)  # delivered, and later confirmed: both fine to wait for
    assert q.send("p:2", "then", after=delivered["id"], now=T0 + 2)["state"] == "queued"


@pytest.mark.parametrize("ending", ["cancelled", "expired"])
def test_an_after_chain_longer_than_the_recursion_limit_ends_whole(q: Queue, ending: str) -> None:
    """Each level of dependents is another read of the same sweep, in a loop: a chain longer
    than Python's recursion limit ends whole, and neither the cancel (after its commit) nor the
    hook's sweep fails, nor every later one."""
    length = sys.getrecursionlimit() + 100
    ids = [f"mchain{n}" for n in range(length)]
    with q.store.transaction() as tx:
        tx.executemany(
            "INSERT INTO messages (id, agent, seq, priority, body, state, after_id, expires,"
            " created) VALUES (?, 'p:1', ?, 0, 'step', 'queued', ?, ?, ?)",
            [(mid, n + 1, ids[n - 1] if n else None, None if n else T0 + 60, T0)
             for n, mid in enumerate(ids)],
        )  # fmt: skip
    if ending == "cancelled":
        q.cancel(ids[0], now=T0 + 1)
    else:  # the hook's sweep
        assert q.deliver("p:1", "s", now=T0 + 61) == []
    assert state(q, ids[0]) == ending
    assert rows(q.store, "SELECT state, count(*) FROM messages WHERE id != ? GROUP BY state",
                ids[0]) == [("dead", length - 1)]  # fmt: skip
    q.sweep(now=T0 + 62)
    assert q.deliver("p:1", "s", now=T0 + 62) == []


# -- confirmation and dead letters --------------------------------------------------------------


def test_a_delivery_found_in_the_transcript_is_confirmed_and_never_delivered_again(
    q: Queue, tmp_path: Path
) -> None:
    sent = q.send("p:1", "do the thing", sender="lead", now=T0)
    taken = q.claim("p:1", "s", now=T0 + 1)
    log = transcript(tmp_path / "t.jsonl", "unrelated", q.render(taken, now=T0 + 1))
    assert q.confirm("p:1", "other-session", log, now=T0 + 2) == []  # not that session's
    assert q.confirm("p:1", "s", log, now=T0 + 2) == [sent["id"]]
    record = q.get(sent["id"])
    assert record is not None
    assert (record["state"], record["confirmed"], record["attempts"]) == ("confirmed", T0 + 2, 1)
    q.sweep(now=T0 + 10_000)
    for later in range(5):
        q.confirm("p:1", "s", None, now=T0 + 3 + later)
        assert q.claim("p:1", "s", now=T0 + 3 + later) == []
    assert state(q, sent["id"]) == "confirmed"


def test_a_text_quoting_another_messages_header_does_not_confirm_that_message(
    orch: OrchState, q: Queue, tmp_path: Path
) -> None:
    """A message's text, its sender, or its file (read by the model, so in the transcript too)
    may quote the header of another message in flight whose hook's reply never reached Claude:
    that one is not confirmed (lost, though the model never had it) but handed over again."""
    log = transcript(tmp_path / "t.jsonl", "so far")
    lost = q.send("p:1", "the task", now=T0)["id"]
    assert [m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=T0)] == [lost]
    quote = f"as in {MARK}{lost} from lead · normal (priority 0) · queued 0s ago]\n"
    q.send("p:1", f"{quote}one more thing", sender=f"re {MARK}{lost} ", now=T0 + 1)
    q.send("p:1", quote + "z" * 9000, now=T0 + 1)  # a file: the model reads it
    taken = q.deliver("p:1", "s", transcript_path=log, now=T0 + 1)
    assert len(taken) == 2
    text = q.render(taken, now=T0 + 1)
    spilled = Path(orch.store.folder, "messages", f"{taken[1]['id']}.txt").read_text()
    assert spilled.endswith("z" * 9000) and "as in [orch message" in text
    transcript(tmp_path / "t.jsonl", text, spilled)
    handed = [m["id"] for n in range(q.confirm_hooks)
              for m in q.deliver("p:1", "s", transcript_path=log, now=T0 + 2 + n)]  # fmt: skip
    assert [state(q, m["id"]) for m in taken] == ["confirmed", "confirmed"]
    assert handed == [lost]


def test_a_claim_reads_what_its_budget_holds_and_reads_on_past_dead_letters(q: Queue) -> None:
    """A one-message budget reads one row at a time; rows that turn out dead (delivered too
    often) do not end the claim while live messages wait behind them."""
    q.max_attempts = 2
    sent = [q.send("p:1", f"m{n}", now=T0)["id"] for n in range(4)]
    with q.store.transaction() as tx:
        tx.execute("UPDATE messages SET attempts = 2 WHERE id IN (?, ?)", sent[:2])
    (taken,) = q.claim("p:1", "s", budget=1, now=T0 + 1)
    assert taken["id"] == sent[2]
    assert [state(q, mid) for mid in sent] == ["dead", "dead", "delivered", "queued"]
    assert [m["id"] for m in q.claim("p:1", "s", budget=1, now=T0 + 2)] == [sent[3]]


def test_hooks_that_began_before_the_delivering_hook_answered_do_not_count(q: Queue) -> None:
    """Parallel tool calls: hooks running beside the one that delivered cannot see it in the
    transcript yet, however many there are."""
    t0 = time.time()  # a claim checks its deadline against the clock
    sent = q.send("p:1", "one batch", now=t0)
    deadline = t0 + 5  # the delivering hook has answered by deadline + ANSWER_MARGIN
    assert q.claim("p:1", "s", now=t0, deadline=deadline) != []
    for sibling in range(10):
        q.confirm("p:1", "s", None, now=t0 + 0.3 + sibling / 100, since=t0 + 0.01)
    assert q.get(sent["id"])["checks"] == 0  # type: ignore[index]
    answered = deadline + ANSWER_MARGIN
    for later in range(3):
        q.confirm("p:1", "s", None, now=t0 + 6 + later, since=answered + 0.01 + later)
    record = q.get(sent["id"])
    assert record is not None
    assert (record["state"], record["checks"]) == ("delivered", 3)


def test_not_found_within_confirm_hooks_goes_back_to_the_queue(q: Queue, tmp_path: Path) -> None:
    assert q.confirm_hooks == 4
    sent = q.send("p:1", "are you there", now=T0)
    q.claim("p:1", "s", now=T0)
    log = transcript(tmp_path / "t.jsonl", "nothing of ours")
    for hook in range(3):
        q.confirm("p:1", "s", log, now=T0 + 1 + hook)
        assert state(q, sent["id"]) == "delivered"
    q.confirm("p:1", "s", log, now=T0 + 4)
    record = q.get(sent["id"])
    assert record is not None
    assert (record["state"], record["session_id"]) == ("queued", None)
    assert record["events"][-1] == {"ts": T0 + 4, "state": "queued",
                                    "detail": "not found in the transcript"}  # fmt: skip
    (again,) = q.claim("p:1", "s2", now=T0 + 5)
    assert (again["id"], again["attempts"]) == (sent["id"], 1)  # attempts before this claim
    assert rows(q.store, "SELECT attempts FROM messages") == [(2,)]


def test_not_confirmed_within_confirm_seconds_goes_back_to_the_queue(q: Queue) -> None:
    sent = q.send("p:1", "hello", now=T0)
    q.claim("p:1", "s", now=T0)
    q.sweep(now=T0 + q.confirm_seconds - 1)
    assert state(q, sent["id"]) == "delivered"
    q.sweep(now=T0 + q.confirm_seconds)
    assert state(q, sent["id"]) == "queued"


def test_a_sweep_leaves_alone_a_delivery_made_since_it_read_the_stale_one(
    q: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel hooks (or the supervisor and a hook) read the same stale delivery; one of them
    requeues it and hands it over again before the other's sweep writes. That sweep must not
    put the fresh delivery, which the model has, back in the queue: a third hook, or the
    sweeping hook's own claim, would hand the message out once more."""
    log = transcript(tmp_path / "t.jsonl")
    sent = q.send("p:1", "once", now=T0)["id"]
    assert [m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=T0)] == [sent]
    stale = T0 + q.confirm_seconds + 1  # that reply never reached the transcript
    handed: list[list[str]] = []
    real = queue_module.seen_late

    def beside(delivered: Any) -> set[str]:  # the other hook runs between read and write
        if not handed:
            handed.append([])
            handed[0] = [m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=stale)]
        return real(delivered)

    monkeypatch.setattr(queue_module, "seen_late", beside)
    handed.append([m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=stale)])
    assert handed == [[sent], []]
    assert state(q, sent) == "delivered"


def test_a_miss_leaves_alone_a_delivery_made_since_the_hook_read_its_own(
    q: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook counts the last miss a delivery may have, while another hook (past
    ``confirm_seconds``) requeues it and hands it over afresh: the count was of the delivery
    before, and the fresh one stays delivered, not handed out by this hook too."""
    q.confirm_hooks = 2
    log = transcript(tmp_path / "t.jsonl")
    sent = q.send("p:1", "once", now=T0)["id"]
    q.deliver("p:1", "s", transcript_path=log, now=T0)
    q.deliver("p:1", "s", transcript_path=log, now=T0 + 5)  # one miss: its reply never came
    handed: list[list[str]] = []
    real = queue_module.transcript_tail

    def beside(*args: Any, **kwargs: Any) -> str:
        if not handed:
            handed.append([])
            later = T0 + q.confirm_seconds + 1
            handed[0] = [m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=later)]
        return real(*args, **kwargs)

    monkeypatch.setattr(queue_module, "transcript_tail", beside)
    handed.append([m["id"] for m in q.deliver("p:1", "s", transcript_path=log, now=T0 + 6)])
    assert handed == [[sent], []]
    assert state(q, sent) == "delivered"


def test_after_max_attempts_a_message_is_dead_and_blocks_nothing(q: Queue) -> None:
    q.max_attempts, q.confirm_hooks = 2, 1
    poison = q.send("p:1", "poison", priority=50, now=T0)
    behind = q.send("p:1", "behind", priority=0, now=T0)
    for attempt in range(2):
        (taken,) = q.claim("p:1", "s", budget=1, now=T0 + attempt)  # one message per hook
        assert taken["id"] == poison["id"]
        q.confirm("p:1", "s", None, now=T0 + attempt + 0.5)
    record = q.get(poison["id"])
    assert record is not None
    assert record["state"] == "dead"
    assert record["attempts"] == 2
    assert "after 2 deliveries" in record["reason"]
    assert [e["state"] for e in record["events"]] == [
        "queued", "delivered", "queued", "delivered", "dead",
    ]  # fmt: skip
    assert [m["id"] for m in q.claim("p:1", "s", now=T0 + 5)] == [behind["id"]]
    assert q.messages("p:1", "dead")[0]["id"] == poison["id"]


def test_a_requeued_message_past_max_attempts_dies_at_the_next_claim(q: Queue) -> None:
    q.max_attempts = 1
    sent = q.send("p:1", "x", now=T0)
    behind = q.send("p:1", "y", now=T0)
    q.claim("p:1", "s", budget=1, now=T0)
    assert q.requeue_session("s", "clear", now=T0 + 1) == 1
    taken = q.claim("p:1", "s2", now=T0 + 2)
    assert [m["id"] for m in taken] == [behind["id"]]
    assert state(q, sent["id"]) == "dead"


# -- managing -----------------------------------------------------------------------------------


def test_a_retry_never_leaves_two_messages_of_one_key_queued(q: Queue) -> None:
    first = q.send("p:1", "deploy", key="deploy-42", now=T0)
    q.cancel(first["id"], now=T0 + 1)
    second = q.send("p:1", "deploy again", key="deploy-42", now=T0 + 2)
    assert not second.get("duplicate")
    with pytest.raises(QueueError, match=f"{second['id']} is queued for p:1 with the same key"):
        q.retry(first["id"], now=T0 + 3)
    assert [m["id"] for m in q.messages("p:1", "queued")] == [second["id"]]
    q.claim("p:1", "s", now=T0 + 4)  # the second is delivered: the key is free again
    assert q.retry(first["id"], now=T0 + 5)["state"] == "queued"


def test_cancel_retry_and_purge(q: Queue) -> None:
    one = q.send("p:1", "one", ttl=5, now=T0)
    assert q.cancel(one["id"], now=T0 + 1)["state"] == "cancelled"
    assert q.claim("p:1", "s", now=T0 + 1) == []
    with pytest.raises(QueueError, match="already cancelled"):
        q.cancel(one["id"])
    with pytest.raises(QueueError, match="no message"):
        q.cancel("m-unknown")
    retried = q.retry(one["id"], now=T0 + 100)
    assert (retried["state"], retried["attempts"], retried["expires"]) == ("queued", 0, None)
    assert retried["events"][-1]["detail"] == "retried by a user"
    with pytest.raises(QueueError, match="only dead, expired or cancelled"):
        q.retry(one["id"])
    with pytest.raises(QueueError, match="no message"):
        q.retry("m-unknown")
    assert [m["id"] for m in q.claim("p:1", "s", now=T0 + 101)] == [one["id"]]

    q.send("p:2", "a")
    q.send("p:2", "b")
    q.claim("p:2", "s2", budget=1)  # one delivered, one queued: both pending
    kept = q.send("p:3", "not mine")
    assert q.purge("p:2") == 2
    assert {m["state"] for m in q.messages("p:2")} == {"cancelled"}
    assert all(m["reason"] == "purged by a user" for m in q.messages("p:2"))
    assert state(q, kept["id"]) == "queued"
    assert q.purge("p:2") == 0


# -- moving messages -----------------------------------------------------------------------------


def fill(q: Queue) -> dict[str, str]:
    ids = {
        "plain": q.send("p:1", WEIRD, sender="lead", key="k1", now=T0)["id"],
        "urgent": q.send("p:1", "urgent", priority=120, ttl=3600, now=T0)["id"],
        "other": q.send("p:2", "other", priority=10, not_before=T0 + 60, now=T0)["id"],
    }
    ids["inflight"] = q.send("p:3", "in flight", now=T0)["id"]
    q.claim("p:3", "s", now=T0)
    ids["gone"] = q.send("p:1", "gone", now=T0)["id"]
    q.cancel(ids["gone"], now=T0)
    return ids


def test_export_import_round_trip_into_a_fresh_db(orch: OrchState, q: Queue) -> None:
    ids = fill(q)
    exported = [json.loads(json.dumps(r)) for r in q.export()]  # as the JSON lines carry it
    assert {r["id"] for r in exported} == {ids[k] for k in ("plain", "urgent", "other", "inflight")}
    fresh = Queue(orch.other_store("fresh"))
    assert fresh.import_(exported) == 4
    assert fresh.import_(exported) == 0
    before = {r["id"]: r for r in exported}
    for record in fresh.export():
        old = before[record["id"]]
        for field in ("agent", "priority", "sender", "body", "key", "not_before", "expires",
                      "created"):  # fmt: skip
            assert record[field] == old[field], field
    assert fresh.get(ids["inflight"])["state"] == "queued"  # type: ignore[index]
    assert fresh.get(ids["plain"])["body"] == WEIRD  # type: ignore[index]
    assert rows(fresh.store, "SELECT count(*) FROM messages") == [(4,)]
    # the key still holds in the new home
    assert fresh.send("p:1", "again", key="k1")["duplicate"] is True
    order = [m["body"] for m in fresh.claim("p:1", "s", budget=100_000, now=T0 + 1)]
    assert order == ["urgent", WEIRD]


STATES_KEPT = ("queued", "requeued", "inflight", "pushed", "confirmed", "cancelled", "expired")


def every_state(q: Queue, tmp_path: Path) -> dict[str, str]:
    """A message in each state a store holds (one agent each), with the columns its way there
    filled in: delivered, requeued, confirmed, typed with ``--push``, ended three ways."""
    ids = {name: q.send(f"p:{name}", f"the {name} one", sender="lead", key=name,
                        ttl=60 if name == "expired" else None, now=T0)["id"]
           for name in STATES_KEPT}  # fmt: skip
    ids["dead"] = q.send("p:dead", "the dead one", after=ids["cancelled"], now=T0)["id"]
    log = transcript(tmp_path / "t.jsonl", "the session starts")
    for name, session in (("requeued", "s1"), ("confirmed", "s2"), ("inflight", "s3")):
        q.claim(f"p:{name}", session, transcript_path=log, now=T0 + 1)
    q.requeue_session("s1", "exited", now=T0 + 2)
    transcript(tmp_path / "t.jsonl", q.render([q.get(ids["confirmed"])]))  # type: ignore[list-item]
    assert q.confirm("p:confirmed", "s2", log, now=T0 + 3) == [ids["confirmed"]]
    assert q.mark_pushed(ids["pushed"], now=T0 + 3)
    q.cancel(ids["cancelled"], now=T0 + 4)  # and the dead one, which waited for it
    q.sweep(now=T0 + 90)  # the expired one
    return ids


def test_an_export_of_every_state_reads_the_same_once_imported(
    orch: OrchState, q: Queue, tmp_path: Path
) -> None:
    """Every column survives the trip (times, reason, session, transcript), but the numbers,
    given afresh in the same order, and a delivery in flight, which comes back queued as its
    session's end would leave it. A message typed with --push stays delivered: not again."""
    ids = every_state(q, tmp_path)
    exported = [json.loads(json.dumps(r)) for r in q.export(state=None)]  # as JSON lines carry it
    assert {r["id"]: r["state"] for r in exported} == {
        ids["queued"]: "queued", ids["requeued"]: "queued", ids["inflight"]: "delivered",
        ids["pushed"]: "delivered", ids["confirmed"]: "confirmed",
        ids["cancelled"]: "cancelled", ids["expired"]: "expired", ids["dead"]: "dead",
    }  # fmt: skip
    fresh = Queue(orch.other_store("fresh"))
    assert fresh.import_(exported, now=T0 + 100) == len(ids)
    again = [json.loads(json.dumps(r)) for r in fresh.export(state=None)]
    for record in (*exported, *again):
        record.pop("seq")
    wanted = {r["id"]: r for r in exported}
    inflight = wanted[ids["inflight"]]
    assert (inflight["session_id"], inflight["attempts"]) == ("s3", 1)
    wanted[ids["inflight"]] = {**inflight, "state": "queued", "session_id": None, "checks": 0}
    assert again == list(wanted.values())
    confirmed = fresh.get(ids["confirmed"])
    assert confirmed is not None and confirmed["confirmed"] == T0 + 3
    assert confirmed["events"] == [{"ts": T0 + 100, "state": "confirmed", "detail": "imported"}]
    # the pushed one is neither pending nor delivered again; the one in flight is, once more
    pending = {ids["queued"], ids["requeued"], ids["inflight"]}
    assert {r["id"] for r in fresh.export()} == {r["id"] for r in q.export()} == pending
    assert "p:pushed" not in fresh.pending_counts()
    assert fresh.deliver("p:pushed", "s9", now=T0 + 500) == []
    assert state(fresh, ids["pushed"]) == "delivered"
    assert [m["id"] for m in fresh.deliver("p:inflight", "s9", now=T0 + 500)] == [ids["inflight"]]
    assert fresh.get(ids["inflight"])["attempts"] == 2  # type: ignore[index]


def test_import_twice_into_the_same_db_adds_nothing(q: Queue) -> None:
    fill(q)
    everything = list(q.export(state=None))
    count = rows(q.store, "SELECT count(*) FROM messages")
    assert q.import_(everything) == 0
    assert q.import_(everything) == 0
    assert rows(q.store, "SELECT count(*) FROM messages") == count


def test_import_checks_every_field_of_every_record_before_storing_any(q: Queue) -> None:
    """One bad record stores nothing, the good one before it included; the error names the
    record and its field."""
    good = {"id": "m1", "agent": "p:1", "body": "hi", "priority": 0, "state": "queued"}
    for bad, said in (
        ({"created": "yesterday"}, "message 2: created must be a time in seconds since 1970"),
        ({"attempts": "many"}, "message 2: attempts must be a whole number, not 'many'"),
        ({"expires": float("inf")}, "message 2: expires must be a time"),
        ({"not_before": {}}, "message 2: not_before must be a time"),
        ({"after_id": "nosuch"}, "message 2: after_id must be a message id or null"),
        ({"after_id": "m2"}, "message 2: after_id is the message's own id"),
        ({"priority": False}, "message 2: priority must be an integer 0-200, not False"),
        ({"sender": "s" * 201}, "message 2: sender must be a string of at most 200 characters"),
    ):
        with pytest.raises(QueueError, match=f"^{re.escape(said)}"):
            q.import_([good, {**good, "id": "m2", **bad}])
    with pytest.raises(QueueError, match=r"^message 1: after_id: m1 waits for m2 waits for m1: "):
        q.import_([{**good, "after_id": "m2"}, {**good, "id": "m2", "after_id": "m1"}])
    assert q.messages() == []
    # a dependency that is not here (confirmed, so not exported) holds nothing: taken
    assert q.import_([{**good, "after_id": "m9"}]) == 1


def test_import_stores_all_in_one_transaction(q: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [{"id": f"m{n}", "agent": "p:1", "body": f"message {n}", "priority": 0,
                "state": "queued"} for n in range(1, 4)]  # fmt: skip
    transactions = counted_transactions(q, monkeypatch)
    assert q.import_(records) == 3
    assert len(transactions) == 1


def test_times_that_are_not_finite_or_absurdly_far_are_refused(q: Queue) -> None:
    """An infinite expiry was stored, and exported as ``Infinity``, which is not JSON."""
    q.send("p:1", "kept", now=T0)
    for fields, said in (
        ({"ttl": float("inf")}, "ttl inf is too long a time"),
        ({"ttl": MAX_DURATION + 1}, "is too long a time"),
        ({"ttl": float("nan")}, "ttl must be positive"),
        ({"ttl": "5m"}, "ttl must be a number of seconds, not '5m'"),
        ({"ttl": True}, "ttl must be a number of seconds, not True"),
        ({"not_before": float("inf")}, "not_before must be a time in seconds since 1970"),
        ({"not_before": float("nan")}, "not_before must be a time in seconds since 1970"),
        ({"not_before": "soon"}, "not_before must be a time in seconds since 1970"),
    ):
        with pytest.raises(QueueError, match=re.escape(said)):
            q.send("p:1", "refused", now=T0, **fields)
    assert [m["body"] for m in q.messages()] == ["kept"]
    q.send("p:1", "at the bounds", ttl=MAX_DURATION, now=T0)
    q.send("p:1", "due at the last time", not_before=MAX_TIME, now=T0)
    assert len(q.messages()) == 3


def test_a_duration_too_long_is_refused() -> None:
    assert parse_duration("365250d") == MAX_DURATION
    for text in ("365251d", "1" + "0" * 400, "1" + "0" * 400 + "s"):  # the last two: infinity
        with pytest.raises(QueueError, match=re.escape(f"{text!r} is too long a time")):
            parse_duration(text)


# -- rendering -----------------------------------------------------------------------------------


def test_header_then_the_body_byte_for_byte(q: Queue) -> None:
    sent = q.send("p:1", WEIRD, priority=60, sender="lead", now=T0)
    (taken,) = q.claim("p:1", "s", now=T0 + 1)
    text = q.render([taken], now=T0 + 301)
    header, body = text.split("\n", 1)
    assert header == (f"{MARK}{sent['id']} from lead · critical (priority 60) · queued 5m ago]")
    assert body == WEIRD
    anonymous = q.send("p:1", "x", now=T0)
    assert f"{MARK}{anonymous['id']} from unknown · normal (priority 0)" in q.render(
        q.claim("p:1", "s", now=T0)
    )


def test_a_body_over_the_budget_goes_to_a_private_file(orch: OrchState, q: Queue) -> None:
    body = ("é\r\n" + WEIRD) * 400  # about 40,000 characters
    sent = q.send("p:1", body, sender="lead", now=T0)
    (taken,) = q.claim("p:1", "s", budget=8000, now=T0)
    text = q.render([taken], budget=8000, now=T0)
    assert len(text) < 8000
    assert body not in text
    match = re.search(r"the full text is in (\S+)\n", text)
    assert match, text
    path = Path(match.group(1))
    assert path.is_relative_to(orch.env["ORCH_STATE_DIR"])
    assert sent["id"] in path.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == body.encode("utf-8")
    assert f"{len(body)} characters" in text
    assert text.endswith(f"Preview:\n{body[:PREVIEW]}")


def test_a_body_whose_file_cannot_be_written_still_goes_out_as_a_preview(
    orch: OrchState, q: Queue, tmp_path: Path
) -> None:
    """A full disk, or a link in place of the messages' folder (orch writes through none): the
    model gets the preview and the command that prints the whole text, and the log says why."""
    body = "z" * 20_000
    sent = q.send("p:1", body, now=T0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (Path(orch.env["ORCH_STATE_DIR"]) / "messages").symlink_to(elsewhere)
    logged: list[tuple[str, dict[str, Any]]] = []
    (taken,) = q.claim("p:1", "s", budget=8000, now=T0)
    text = q.render([taken], budget=8000, now=T0, log=lambda msg, **f: logged.append((msg, f)))
    assert len(text) < 8000
    assert (
        f"This message has 20000 characters, too long to show here; orch could not write it to"
        f" a file; `orch queue show {sent['id']}` prints it\nPreview:\n{body[:PREVIEW]}"
    ) in text
    assert list(elsewhere.iterdir()) == []
    ((msg, fields),) = logged
    assert (msg, fields["level"], fields["message_id"]) == (
        "cannot write a large message to its file", "error", sent["id"])  # fmt: skip
    assert "symbolic link" in fields["error"]


def test_several_messages_per_hook_up_to_the_budget_highest_first(q: Queue) -> None:
    budget = 8000
    sent = [q.send("p:1", chr(97 + i) * 3000, priority=i, now=T0) for i in range(6)]
    delivered: list[str] = []
    hooks = 0
    while len(delivered) < 6:
        taken = q.claim("p:1", "s", budget=budget, now=T0)
        assert taken, "something must go out at every hook while messages wait"
        text = q.render(taken, budget=budget, now=T0)
        assert len(text) <= budget
        for m in taken:
            assert f"{m['id']} " in text and m["body"] in text
        delivered += [m["id"] for m in taken]
        hooks += 1
    assert delivered == [m["id"] for m in reversed(sent)]
    assert 1 < hooks < 6  # several per hook, never all at once


def test_every_state_change_has_a_timestamped_event(q: Queue, tmp_path: Path) -> None:
    q.max_attempts, q.confirm_hooks = 1, 1
    ok = q.send("p:1", "ok", priority=9, now=T0)
    lost = q.send("p:1", "lost", priority=8, now=T0)
    old = q.send("p:1", "old", ttl=1, now=T0)
    nope = q.send("p:2", "nope", now=T0)
    taken = q.claim("p:1", "s", budget=100_000, now=T0 + 0.5)
    assert [m["id"] for m in taken] == [ok["id"], lost["id"], old["id"]]
    q.confirm("p:1", "s", transcript(tmp_path / "t", q.render(taken[:1])), now=T0 + 2)
    q.cancel(nope["id"], now=T0 + 3)
    q.retry(nope["id"], now=T0 + 4)
    per: dict[str, list[tuple[float, str]]] = {}
    for sent in (ok, lost, old, nope):
        record = q.get(sent["id"])
        assert record is not None
        per[sent["id"]] = [(e["ts"], e["state"]) for e in record["events"]]
    assert per[ok["id"]] == [(T0, "queued"), (T0 + 0.5, "delivered"), (T0 + 2, "confirmed")]
    assert per[lost["id"]] == [(T0, "queued"), (T0 + 0.5, "delivered"), (T0 + 2, "dead")]
    assert per[old["id"]] == [(T0, "queued"), (T0 + 0.5, "delivered"), (T0 + 2, "dead")]
    assert per[nope["id"]] == [(T0, "queued"), (T0 + 3, "cancelled"), (T0 + 4, "queued")]
    for message_id, events in per.items():
        assert events[-1][1] == state(q, message_id)


def test_an_imported_message_whose_dependency_stayed_behind_is_delivered(
    orch: OrchState, q: Queue, tmp_path: Path
) -> None:
    first = q.send("p:1", "first", now=T0)
    then = q.send("p:1", "then", after=first["id"], now=T0)
    taken = q.claim("p:1", "s", now=T0)
    q.confirm("p:1", "s", transcript(tmp_path / "t", q.render(taken)), now=T0 + 1)
    exported = list(q.export())  # pending only: the confirmed dependency is not in it
    assert [r["id"] for r in exported] == [then["id"]]
    fresh = Queue(orch.other_store("fresh"))
    fresh.import_(exported)
    assert [m["id"] for m in fresh.claim("p:1", "s", now=T0 + 2)] == [then["id"]]


def test_sends_in_the_same_millisecond_all_get_stored(orch: OrchState) -> None:
    queue = Queue(open_store(orch.env, durable=False))
    ids = {queue.send("p:1", f"burst {i}", now=1_700_000_000.0)["id"] for i in range(5000)}
    queue.store.close()
    assert len(ids) == 5000


@pytest.mark.orch_backends("sqlite")
def test_the_hooks_pending_read_uses_the_agent_state_index(orch: OrchState) -> None:
    store = orch.store
    assert isinstance(store, SQLiteStore)
    plan = store.conn.execute(
        f"EXPLAIN QUERY PLAN SELECT 1 FROM messages WHERE agent = ? AND {PENDING_SQL} LIMIT 1",
        ("p:1",),
    ).fetchall()
    assert "USING INDEX messages_ready (agent=? AND state=?)" in plan[0][3]


@pytest.mark.orch_backends("sqlite")
def test_the_hooks_one_read_finds_everything_through_indexes(q: Queue) -> None:
    """``deliver``'s read is all a hook of an agent with nothing pending does: each of its
    parts an index search by the agent (a session's deliveries to other agents are not read),
    none a scan of the messages."""
    store = q.store
    assert isinstance(store, SQLiteStore)
    for n in range(30):  # in flight to one session, none of them for p:1
        q.send(f"other:{n}", "busy")
        q.claim(f"other:{n}", "s")
    sql, args = q._hook_read("p:1", "s", 0, T0)
    steps = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    searches = [step for step in steps if step.startswith("SEARCH")]
    assert len(searches) == 6, steps
    assert all("(agent=?" in step or step.startswith("SEARCH a ") for step in searches), steps
    assert not [step for step in steps if step.startswith("SCAN") and "CONSTANT" not in step]
    assert q.deliver("p:1", "s", now=T0) == []


def test_a_hook_with_nothing_to_confirm_or_take_writes_nothing(
    q: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A delivery in flight and a message due later: the hooks until either changes make
    their one read and take no writer's turn."""
    t0 = time.time()
    q.send("p:1", "later", not_before=t0 + 3600, now=t0)
    sent = q.send("p:1", "now", now=t0)
    assert [m["id"] for m in q.deliver("p:1", "s", now=t0, deadline=t0 + 5)] == [sent["id"]]
    transactions = counted_transactions(q, monkeypatch)
    log = transcript(tmp_path / "t.jsonl", "the model is still reading")
    for hook in range(3):  # began before the delivering hook answered: no miss counted
        assert q.deliver("p:1", "s", transcript_path=log, since=t0 + 1, now=t0 + 1 + hook) == []
    assert transactions == []
    transcript(tmp_path / "t.jsonl", q.render([q.get(sent["id"])]))  # type: ignore[list-item]
    assert q.deliver("p:1", "s", transcript_path=log, since=t0 + 4, now=t0 + 4) == []
    assert len(transactions) == 1 and state(q, sent["id"]) == "confirmed"


def test_a_nul_character_is_refused_whatever_the_store(q: Queue) -> None:
    """PostgreSQL's text cannot hold one, so no store takes one: what a sender may send does
    not depend on where the fleet keeps its queue."""
    for fields in (
        {"text": "a\x00b"},
        {"text": "ok", "sender": "x\x00"},
        {"text": "ok", "key": "\x00"},
    ):
        with pytest.raises(QueueError, match="contains a NUL character"):
            q.send_many([{"agent": "p:1", **fields}])
    record = {"id": "m1", "agent": "p:1", "body": "\x00", "priority": 0, "state": "queued"}
    with pytest.raises(QueueError, match="body contains a NUL character"):
        q.import_([record])
    assert q.messages() == []


def test_send_many_stores_all_in_one_transaction_or_none(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = counted_transactions(q, monkeypatch)
    items = [{"agent": "p:1", "text": f"n{i}", "key": "same" if i < 2 else None} for i in range(4)]
    receipts = q.send_many(items, now=T0)
    assert len(transactions) == 1
    assert [r["seq"] for r in receipts] == [1, 1, 2, 3]  # the second repeats the first's key
    assert receipts[1]["duplicate"] and receipts[1]["id"] == receipts[0]["id"]
    with pytest.raises(QueueError, match="message 2: invalid agent id"):
        q.send_many([{"agent": "p:1", "text": "fine"}, {"agent": ":1", "text": "bad"}])
    with pytest.raises(QueueError, match="message 1: give agent and text"):
        q.send_many([{"agent": "p:1", "body": "misnamed"}])
    assert len(q.messages("p:1")) == 3  # nothing of the bad batches


def test_a_batch_without_keys_goes_in_one_insert_in_order_and_numbered_after_the_last(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send_many`` stores a batch of plain messages in one statement (a round trip to a
    server, not one a message): each agent's messages still numbered on from its last, in the
    order given, and an id another send took in the same millisecond drawn again."""
    from orch_core import queue as queue_module

    know(q.store, "p:2")
    first = q.send("p:1", "before", now=T0)
    taken = q.send("p:3", "holds an id", now=T0)
    draws = iter([taken["id"], *(f"m{n:09d}" for n in range(100))])
    monkeypatch.setattr(queue_module, "new_id", lambda now: next(draws))
    statements: list[str] = []
    real = q.store.transaction

    def watched() -> Any:
        tx = real()

        class Counting:
            def __enter__(self) -> Any:
                inner = tx.__enter__()

                class Statements:
                    def execute(self, sql: str, args: Any = ()) -> Any:
                        statements.append(sql.split()[0])
                        return inner.execute(sql, args)

                    def __getattr__(self, name: str) -> Any:
                        return getattr(inner, name)

                return Statements()

            def __exit__(self, *exc: Any) -> Any:
                return tx.__exit__(*exc)

        return Counting()

    monkeypatch.setattr(q.store, "transaction", watched)
    items = [{"agent": f"p:{1 + i % 2}", "text": f"n{i}", "priority": i % 3} for i in range(6)]
    receipts = q.send_many(items, now=T0 + 1)
    # the taken id: the others are taken back and all drawn again, so that their order holds
    assert statements == ["WITH", "DELETE", "WITH"]  # WITH the batch's rows ... INSERT
    assert [(r["agent"], r["seq"], r["body"]) for r in receipts] == [
        ("p:1", 2, "n0"), ("p:2", 1, "n1"), ("p:1", 3, "n2"),
        ("p:2", 2, "n3"), ("p:1", 4, "n4"), ("p:2", 3, "n5"),
    ]  # fmt: skip
    assert [r["id"] for r in receipts] == [f"m{n:09d}" for n in range(5, 11)]
    assert [r["known_agent"] for r in receipts] == [False, True] * 3
    assert [r["priority"] for r in receipts] == [0, 1, 2, 0, 1, 2]
    assert [m["body"] for m in q.messages("p:1")] == ["n2", "n4", "before", "n0"]
    assert q.get(first["id"]) is not None and len(q.messages("p:3")) == 1


def test_a_processes_ids_of_one_millisecond_ascend_and_a_forked_child_draws_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids drawn in one millisecond ascend from a random start (a batch's rows and history
    then sit side by side in the indexes keyed by id); a forked child starts elsewhere, or
    parent and child would draw the same ids."""
    from orch_core import queue as queue_module

    monkeypatch.setattr(os, "urandom", lambda n: b"\x00\x10\x00"[:n])
    queue_module._SUFFIXES.restart()
    ids = [queue_module.new_id(T0) for _ in range(500)]
    assert ids == sorted(ids) and len(set(ids)) == 500
    assert (ids[0][-6:], ids[-1][-6:]) == ("001001", "0011f4")
    assert {i[:-6] for i in ids} == {queue_module.new_id(T0)[:-6]}  # the millisecond's part
    monkeypatch.undo()
    queue_module._SUFFIXES.restart()  # a random start again
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, queue_module.new_id(T0).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    parents = [queue_module.new_id(T0) for _ in range(2)]
    assert child.startswith("m") and child not in parents


def test_a_receipt_is_the_stored_message_whichever_way_it_was_sent(q: Queue) -> None:
    """Receipts are built from what was sent and the number the store gave (a large body is
    not read back): each is the message as stored, for a send on its own, one in a
    transaction (with a key) and a batch; times given as integers come back as stored."""
    know(q.store, "p:2")
    t0 = int(T0)
    receipts = [
        q.send("p:1", "alone", sender="a", ttl=60, now=t0),
        q.send("p:2", "keyed", key="k", priority=50, not_before=t0 + 5, now=t0),
        *q.send_many(
            [{"agent": "p:1", "text": "b1", "not_before": t0 + 9}, {"agent": "p:2", "text": "b2"}],
            now=t0,
        ),
    ]
    stored = {m["id"]: m for m in q.messages()}
    for receipt in receipts:
        assert receipt == {**stored[receipt["id"]], "known_agent": receipt["agent"] == "p:2"}
    assert [type(r["created"]) for r in receipts] == [float] * 4
    assert (receipts[0]["expires"], receipts[1]["not_before"]) == (T0 + 60, T0 + 5)
    assert [r["seq"] for r in receipts] == [1, 1, 2, 2]


def test_a_send_that_keeps_losing_its_id_or_number_waits_for_its_turn(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send on its own tries a few times (another send may take its id or its number
    first), then stores the message in a transaction of its own, as a batch does."""
    from orch_core import queue as queue_module

    taken = q.send("p:1", "holds an id", now=T0)
    draws = iter([taken["id"]] * queue_module.ALONE_TRIES + ["m000000001"])
    monkeypatch.setattr(queue_module, "new_id", lambda now: next(draws))
    transactions = counted_transactions(q, monkeypatch)
    receipt = q.send("p:1", "after three tries", now=T0 + 1)
    assert (receipt["id"], receipt["seq"], receipt["body"]) == (
        "m000000001",
        2,
        "after three tries",
    )
    assert len(transactions) == 1  # the tries before: one statement each, no transaction
    assert [m["body"] for m in q.messages("p:1")] == ["holds an id", "after three tries"]


def test_a_schema_7_database_keeps_its_messages_and_history(tmp_path: Path) -> None:
    import sqlite3

    from orch_core.storage.store import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for step in range(1, 8):
        conn.executescript(MIGRATIONS[step])
    conn.execute("PRAGMA user_version = 7")
    conn.execute(
        "INSERT INTO messages (id, agent, seq, priority, sender, body, state, created)"
        " VALUES ('m1', 'p:1', 5, 0, 'lead', 'old one', 'queued', ?)",
        (T0,),
    )
    conn.execute("INSERT INTO queue_seq (agent, last_seq) VALUES ('p:1', 5)")
    conn.execute("INSERT INTO message_events VALUES ('m1', ?, 'queued', 'lead')", (T0,))
    conn.commit()
    conn.close()
    q = Queue(SQLiteStore(str(path)))
    record = q.get("m1")
    assert record is not None
    assert record["events"] == [{"ts": T0, "state": "queued", "detail": "lead"}]  # once
    assert q.send("p:1", "new one", now=T0 + 1)["seq"] == 6


def test_confirmation_reads_the_transcript_only_from_where_it_ended_at_delivery(
    q: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Path(transcript(tmp_path / "t.jsonl", "x" * 1_000_000))  # a long session so far
    before = log.stat().st_size
    sent = q.send("p:1", "read me", now=T0)
    taken = q.deliver("p:1", "s", transcript_path=str(log), now=T0)
    transcript(log, q.render(taken, now=T0))
    read: list[int] = []
    pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        read.append(length)
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counted)
    assert q.deliver("p:1", "s", transcript_path=str(log), now=T0 + 1) == []
    assert state(q, sent["id"]) == "confirmed"
    assert read == [log.stat().st_size - before]  # what was written after the delivery


def test_a_delivery_more_than_a_read_behind_the_transcripts_end_is_confirmed_not_handed_again(
    q: Queue, tmp_path: Path
) -> None:
    """A large write after a delivery (an image read, a long output) puts its text more than a
    read (4 MB) behind the transcript's end: it is still found where it was written, not missed
    by every hook and the sweep, then handed to the model a second time."""
    log = transcript(tmp_path / "t.jsonl", "so far")
    sent = q.send("p:1", "do it once", now=T0)["id"]
    taken = q.deliver("p:1", "s", transcript_path=log, now=T0)
    transcript(tmp_path / "t.jsonl", q.render(taken, now=T0), "x" * queue_module.TRANSCRIPT_READ)
    handed = [m["id"] for n in range(q.confirm_hooks + 1)
              for m in q.deliver("p:1", "s", transcript_path=log, now=T0 + 1 + n)]  # fmt: skip
    assert (handed, state(q, sent)) == ([], "confirmed")
    other = q.send("p:1", "swept", now=T0)["id"]  # and a stale one, found by the sweep
    taken = q.deliver("p:1", "s2", transcript_path=log, now=T0 + 10)
    transcript(tmp_path / "t.jsonl", q.render(taken, now=T0), "y" * queue_module.TRANSCRIPT_READ)
    q.sweep(now=T0 + 10 + q.confirm_seconds)
    assert state(q, other) == "confirmed"
