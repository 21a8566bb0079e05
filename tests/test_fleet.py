"""The fleet snapshot ``orch top`` and ``orch serve`` show, from hooks run through the real
dispatcher and messages sent through the queue."""

from __future__ import annotations

import time

import pytest
from orch_builtin import auto_restart

from orch_core.ops import fleet, metrics
from orch_core.queue import Queue
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

pytestmark = pytest.mark.orch_backends("sqlite", "postgresql")


def test_the_snapshot_counts_each_agents_pending_messages_by_band(orch: OrchState) -> None:
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT="lead")
    queue = Queue(orch.store)
    for priority in (0, 0, 10, 60):
        queue.send("worker", f"job {priority}", priority=priority)
    queue.send("lead", "urgent", priority=120)
    view = fleet.snapshot(orch.store, time.time())
    agents = {a["id"]: a for a in view["agents"]}
    assert sorted(agents) == ["lead", "worker"]  # worker is known only by its messages
    assert agents["worker"]["pending"] == {
        "rebrief": 0, "emergency": 0, "critical": 1, "high": 1, "normal": 2,
    }  # fmt: skip
    assert agents["lead"]["pending"]["emergency"] == 1
    assert agents["lead"]["state"] == "idle"
    assert agents["worker"]["state"] == "unknown"
    assert [m["state"] for m in view["messages"]] == ["queued"] * 5
    assert view["messages"][0]["text"] == "urgent"  # newest first


def test_the_snapshot_shows_the_task_compaction_restarts_and_hook_health(
    orch: OrchState,
) -> None:
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT="a")
    Queue(orch.store).send("a", "write the parser " + "x" * 500)
    orch.run(payload("UserPromptSubmit", session_id="s1", prompt="go"), ORCH_AGENT="a")
    orch.run(payload("PreCompact", session_id="s1", trigger="auto"), ORCH_AGENT="a")
    auto_restart.schedule(orch.store, "a", "test", "restart", env=orch.env, wait=60)
    view = fleet.snapshot(orch.store, time.time())
    (agent,) = view["agents"]
    assert agent["task"]["text"] == ("write the parser " + "x" * 500)[: fleet.PREVIEW]
    assert agent["last_compaction"] is not None
    assert agent["pending"]["normal"] == 1  # delivered, not yet confirmed: still in flight
    assert agent["next_action"]["step"] == "restart"
    assert view["hooks"]["runs"] == 3
    assert view["hooks"]["failed"] == 0
    assert view["delivery"]["delivered"] == 1  # the prompt's hook handed the message over
    assert 0 <= view["delivery"]["p50_s"] == view["delivery"]["max_s"]


def test_the_current_task_is_the_first_message_of_the_latest_hook(orch: OrchState) -> None:
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT="a")
    queue = Queue(orch.store)
    queue.send("a", "an old job")
    orch.run(payload("UserPromptSubmit", session_id="s1", prompt="go"), ORCH_AGENT="a")
    queue.send("a", "a side note")
    queue.send("a", "the urgent job", priority=20)  # shown first in the next hook's batch
    orch.run(payload("UserPromptSubmit", session_id="s1", prompt="go"), ORCH_AGENT="a")
    (agent,) = fleet.snapshot(orch.store, time.time())["agents"]
    assert agent["task"]["text"] == "the urgent job"


def test_the_oldest_pending_waits_from_when_it_could_first_be_delivered_as_in_stats(
    orch: OrchState,
) -> None:
    """Not from its sending: a message due later waits for nothing yet, and one retried waits
    from its retry; ``orch stats`` says the same."""
    queue = Queue(orch.store)
    now = time.time()
    queue.send("later", "in an hour", not_before=now + 3600, now=now - 3600)
    retried = queue.send("again", "from two days ago", now=now - 172_800)["id"]
    queue.cancel(retried, now=now - 172_000)
    queue.retry(retried, now=now - 5)
    agents = {a["id"]: a for a in fleet.snapshot(orch.store, now)["agents"]}
    assert agents["later"]["pending"]["normal"] == 1
    assert agents["later"]["oldest_pending"] is None
    assert now - agents["again"]["oldest_pending"] == pytest.approx(5)
    stats = metrics.collect(orch.store, now - 3600, now)["queue"]["by_agent"]
    assert stats["later"]["oldest_seconds"] is None
    assert stats["again"]["oldest_seconds"] == pytest.approx(5)


def test_delivery_latency_counts_from_the_latest_retry_and_its_median_is_nearest_rank(
    orch: OrchState,
) -> None:
    """Waits of 1 s (a day-old message retried) and 100 s: the median is 1 s, as in
    ``orch stats``."""
    queue = Queue(orch.store)
    now = time.time()
    retried = queue.send("a", "from yesterday", now=now - 86_400)["id"]
    queue.cancel(retried, now=now - 86_000)
    queue.retry(retried, now=now - 3)
    queue.send("b", "waited", now=now - 102)
    for agent in ("a", "b"):
        assert len(queue.claim(agent, f"s-{agent}", now=now - 2)) == 1
    delivery = fleet.snapshot(orch.store, now)["delivery"]
    assert delivery["delivered"] == 2
    assert delivery["p50_s"] == pytest.approx(1)
    assert delivery["max_s"] == pytest.approx(100)
    stats = metrics.collect(orch.store, now - 3600, now)["messages"]["queued_to_delivered"]
    assert (stats["all"]["p50"], stats["all"]["p99"]) == (pytest.approx(1), pytest.approx(100))


def test_the_hooks_median_time_is_nearest_rank(orch: OrchState) -> None:
    for duration_ms in (1.0, 100.0):
        orch.store.record_run(event="Stop", agent="a", session_id="s1", duration_ms=duration_ms,
                              exit_code=0, plugins=[])  # fmt: skip
    hooks = fleet.snapshot(orch.store, time.time())["hooks"]
    assert (hooks["runs"], hooks["p50_ms"]) == (2, 1.0)


def test_a_pushed_or_imported_message_is_no_delivery_in_the_latency(orch: OrchState) -> None:
    """As in ``orch stats``: a message typed with ``--push`` was handed over by no hook, and
    ``orch import`` of one pushed a day ago is no day-long wait on the dashboard."""
    queue = Queue(orch.store)
    now = time.time()
    old = queue.send("c:1", "typed yesterday", now=now - 86_400)["id"]
    assert queue.mark_pushed(old, now=now - 86_400)
    elsewhere = Queue(orch.other_store("elsewhere"))
    assert elsewhere.import_(queue.export(None), now=now - 30) == 1
    fresh = elsewhere.send("c:1", "typed now", now=now - 10)["id"]
    assert elsewhere.mark_pushed(fresh, now=now - 10)
    delivery = fleet.snapshot(elsewhere.store, now)["delivery"]
    assert (delivery["delivered"], delivery["max_s"]) == (0, None)
    stats = metrics.collect(elsewhere.store, now - 3600, now)["messages"]
    assert stats["delivered"] == 0
