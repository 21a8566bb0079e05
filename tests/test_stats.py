"""``orch stats``: each metric computed from rows seeded the way orch writes them, and from
events fed through the real dispatcher; the hourly sums of hook runs; the plugins' sections."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orch_core import api
from orch_core.hook.context import Runtime
from orch_core.ops import metrics
from orch_core.queue import Queue
from orch_core.storage.store import KEEP_RUNS, Store
from orch_core.testing.kit import ROOMY_BUDGET_MS, OrchState
from orch_core.testing.payloads import payload

HOUR = 3600

pytestmark = pytest.mark.orch_backends("sqlite", "postgresql")


def collect(orch: OrchState, since: float, now: float, agent: str | None = None) -> dict[str, Any]:
    return metrics.collect(orch.store, since, now, agent)


def stats_json(orch: OrchState, *args: str) -> dict[str, Any]:
    done = orch.cli("stats", "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def add_runs(store: Store, runs: list[tuple[float, str, str | None, float, list[Any]]]) -> None:
    """Hook runs as ``record_run`` writes them, at given times: (ts, event, agent, ms, plugins)."""
    with store.transaction() as tx:
        tx.executemany(
            "INSERT INTO hook_runs (ts, event, agent, session_id, duration_ms, exit_code, ok,"
            " plugins) VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
            [
                (ts, event, agent, ms, int(any(p["outcome"] == "killed" for p in plugins)),
                 int(all(p["outcome"] == "ok" for p in plugins)), json.dumps(plugins))
                for ts, event, agent, ms, plugins in runs
            ],
        )  # fmt: skip


def ok(*names: str) -> list[dict[str, Any]]:
    return [{"plugin": name, "ms": 0.1, "outcome": "ok"} for name in names]


def middle(ms: float) -> float:
    """What a percentile that falls on ``ms`` reads: the middle of its 12%-wide bucket."""
    return round(10 ** ((math.floor(20 * math.log10(ms)) + 0.5) / 20), 2)


# -- messages ------------------------------------------------------------------------------------


def test_delivery_latency_percentiles_by_band_and_agent(orch: OrchState, tmp_path: Path) -> None:
    """Ten normal messages to a:1 wait 1..10 s and are confirmed 2 s after delivery, two critical
    ones to b:1 wait 20 and 40 s; one delivered before the window, one only due (``--in``) 100 s
    after it was sent, one redelivered (its first delivery counts), one typed with --push and
    one that died, was retried and then waited 7 s are the edge cases."""
    queue = Queue(orch.store)
    now = 1_000_000.0
    since = now - HOUR
    transcript = tmp_path / "a.jsonl"
    transcript.write_text("")

    def deliver(agent: str, sent: float, waited: float, priority: int = 0, **kw: Any) -> str:
        mid = str(queue.send(agent, f"m{sent}", priority=priority, now=sent, **kw)["id"])
        taken = queue.claim(agent, f"s-{agent}", transcript_path=str(transcript),
                            now=max(sent, kw.get("not_before") or sent) + waited)  # fmt: skip
        assert [m["id"] for m in taken] == [mid]
        return mid

    for i in range(1, 11):
        deliver("a:1", since + 100 * i, float(i))
        with transcript.open("a") as f:
            f.write(queue.render(queue.messages("a:1", "delivered"), now=now) + "\n")
        queue.confirm("a:1", "s-a:1", str(transcript), now=since + 100 * i + i + 2)
    deliver("b:1", since + 2000, 20.0, priority=60)
    deliver("b:1", since + 2100, 40.0, priority=60)
    deliver("a:1", since - 500, 100.0)  # handed over before the window
    deliver("c:1", since + 2200, 3.0, not_before=since + 2300)  # due 100 s after it was sent
    again = deliver("c:1", since + 2400, 5.0)
    queue.requeue_session("s-c:1", "ended", now=since + 2410)
    queue.claim("c:1", "s-c:2", now=since + 2500)
    pushed = queue.send("c:1", "typed", now=since + 2600)["id"]
    assert queue.mark_pushed(pushed, now=since + 2600)
    assert queue.get(again)["attempts"] == 2  # type: ignore[index]
    dead = deliver("d:1", since + 2700, 1.0)  # dies unconfirmed, is retried, then delivered
    queue.requeue_session("s-d:1", "ended", now=since + 2710)
    with orch.store.transaction() as tx:
        tx.execute("UPDATE messages SET attempts = 3 WHERE id = ?", (dead,))
    queue.claim("d:1", "s-d:1", now=since + 2720)
    queue.retry(dead, now=since + 2800)
    queue.claim("d:1", "s-d:1", now=since + 2807)

    messages = collect(orch, since, now)["messages"]
    latency = messages["queued_to_delivered"]
    assert latency["by_agent"]["a:1"] == {"n": 10, "p50": 5.0, "p90": 9.0, "p99": 10.0}
    assert latency["by_agent"]["b:1"] == {"n": 2, "p50": 20.0, "p90": 40.0, "p99": 40.0}
    assert latency["by_agent"]["c:1"] == {"n": 2, "p50": 3.0, "p90": 5.0, "p99": 5.0}
    assert latency["by_agent"]["d:1"] == {"n": 1, "p50": 7.0, "p90": 7.0, "p99": 7.0}
    assert latency["by_band"] == {
        "critical": {"n": 2, "p50": 20.0, "p90": 40.0, "p99": 40.0},
        "normal": {"n": 13, "p50": 5.0, "p90": 9.0, "p99": 10.0},
    }
    assert latency["all"] == {"n": 15, "p50": 6.0, "p90": 20.0, "p99": 40.0}
    confirmed = messages["delivered_to_confirmed"]
    assert confirmed["all"] == {"n": 10, "p50": 2.0, "p90": 2.0, "p99": 2.0}
    assert list(confirmed["by_agent"]) == ["a:1"]
    assert {k: messages[k] for k in ("sent", "delivered", "confirmed", "dead")} == {
        "sent": 16, "delivered": 15, "confirmed": 10, "dead": 0}  # fmt: skip


def test_queue_depth_by_band_and_agent_and_the_oldest_wait(orch: OrchState) -> None:
    queue = Queue(orch.store)
    now = 1_000_000.0
    for agent, priority, ago in (("a:1", 0, 300), ("a:1", 0, 30), ("a:1", 150, 5),
                                 ("b:1", 20, 60), ("b:1", 60, 10)):  # fmt: skip
        queue.send(agent, "x", priority=priority, now=now - ago)
    queue.send("b:1", "later", not_before=now + 600, now=now - 900)  # scheduled: waits for nothing
    queue.send("c:1", "was due", not_before=now - 120, now=now - 900)  # waits since it fell due
    queue.claim("b:1", "s-b", now=now - 1)  # in flight (takes b's two due ones)
    done = queue.send("a:1", "x", now=now - 5000)["id"]
    queue.cancel(done, now=now - 4000)

    depth = collect(orch, now - HOUR, now)["queue"]
    assert depth["pending"] == 7
    assert depth["scheduled"] == 1
    assert depth["oldest_seconds"] == 300.0
    assert depth["by_band"] == {"emergency": 1, "critical": 1, "high": 1, "normal": 4}
    bands = {"emergency": 1, "normal": 2}
    assert depth["by_agent"]["a:1"] == {"pending": 3, "oldest_seconds": 300.0, "by_band": bands}
    assert depth["by_agent"]["b:1"]["by_band"] == {"critical": 1, "high": 1, "normal": 1}
    assert depth["by_agent"]["c:1"]["oldest_seconds"] == 120.0
    only_b = collect(orch, now - HOUR, now, agent="b:1")["queue"]
    assert (only_b["pending"], list(only_b["by_agent"])) == (3, ["b:1"])


def test_messages_through_the_dispatcher(orch: OrchState, tmp_path: Path) -> None:
    """Sent with the API, delivered by a PostToolUse hook, confirmed by the next hook once the
    transcript holds it: one delivery and one confirmation, each with a latency."""
    transcript = tmp_path / "t.jsonl"
    transcript.write_text("")
    api.send("p:1", "run the tests", env=orch.env, project_dir=str(orch.project_dir))
    hook = payload("PostToolUse", session_id="s-1", transcript_path=str(transcript))
    delivered = orch.run(hook, ORCH_AGENT="p:1").context
    assert delivered is not None
    transcript.write_text(json.dumps({"type": "attachment", "content": delivered}) + "\n")
    orch.run(payload("PreToolUse", session_id="s-1", transcript_path=str(transcript)),
             ORCH_AGENT="p:1")  # fmt: skip
    (message,) = Queue(orch.store).messages("p:1")
    assert message["state"] == "confirmed"
    result = stats_json(orch)
    assert {k: result["messages"][k] for k in ("sent", "delivered", "confirmed")} == {
        "sent": 1, "delivered": 1, "confirmed": 1}  # fmt: skip
    waited = result["messages"]["queued_to_delivered"]["by_agent"]["p:1"]
    assert waited["n"] == 1
    assert waited["p50"] == round(message["delivered"] - message["created"], 3)
    confirming = result["messages"]["delivered_to_confirmed"]["all"]
    assert confirming["p99"] == round(message["confirmed"] - message["delivered"], 3)
    assert result["queue"]["pending"] == 0


# -- hook runs -----------------------------------------------------------------------------------


def test_hook_health_by_event_and_plugin_with_duration_percentiles(orch: OrchState) -> None:
    now = 1_000_000.0
    since = now - HOUR
    runs: list[tuple[float, str, str | None, float, list[Any]]] = [
        (since - 10, "Stop", "a:1", 1.0, [{"plugin": "queue", "ms": 1, "outcome": "error"}]),
    ]
    runs += [
        (since + i, "PostToolUse", "a:1", float(i), ok("presence", "queue")) for i in range(1, 101)
    ]
    runs += [
        (since + 200, "Stop", "a:1", 520.0,
         [{"plugin": "presence", "ms": 1, "outcome": "ok"},
          {"plugin": "queue", "ms": 500, "outcome": "timeout", "error": "still running"}]),
        (since + 201, "Stop", "a:1", 3.0,
         [{"plugin": "presence", "ms": 1, "outcome": "error", "error": "KeyError"},
          {"plugin": "presence", "ms": 1, "outcome": "invalid", "error": "bad answer"}]),
        (since + 202, "PreToolUse", None, 610.0,
         [{"plugin": "guard", "outcome": "killed", "error": "still running when the backstop"}]),
    ]  # fmt: skip
    add_runs(orch.store, runs)

    hooks = collect(orch, since, now)["hooks"]
    post = hooks["by_event"]["PostToolUse"]
    assert post == {"runs": 100, "failed": 0, "timeouts": 0, "killed": 0, "ok_rate": 1.0,
                    "p50_ms": middle(50), "p99_ms": middle(99)}  # fmt: skip
    assert abs(post["p50_ms"] - 50) / 50 < 0.06 and abs(post["p99_ms"] - 99) / 99 < 0.06
    assert hooks["by_event"]["Stop"] == {"runs": 2, "failed": 2, "timeouts": 1, "killed": 0,
                                         "ok_rate": 0.0, "p50_ms": middle(3),
                                         "p99_ms": middle(520)}  # fmt: skip
    assert hooks["by_event"]["PreToolUse"]["killed"] == 1
    assert hooks["by_plugin"]["presence"] == {"runs": 102, "failed": 1, "errors": 1,
                                              "invalid": 1, "timeouts": 0, "killed": 0,
                                              "ok_rate": round(1 - 1 / 102, 4)}  # fmt: skip
    assert hooks["by_plugin"]["queue"] == {"runs": 101, "failed": 1, "errors": 0, "invalid": 0,
                                           "timeouts": 1, "killed": 0,
                                           "ok_rate": round(1 - 1 / 101, 4)}  # fmt: skip
    assert (hooks["by_plugin"]["guard"]["killed"], hooks["by_plugin"]["guard"]["ok_rate"]) == (1, 0)
    assert (hooks["runs"], hooks["failed"], hooks["timeouts"], hooks["killed"]) == (103, 3, 1, 1)
    assert hooks["ok_rate"] == round(100 / 103, 4)
    assert hooks["since"] == since  # a run before the window shows the record reaches back
    only = collect(orch, since, now, agent="a:1")["hooks"]
    assert (only["runs"], list(only["by_event"])) == (102, ["PostToolUse", "Stop"])


def test_hook_runs_through_the_dispatcher_and_the_backstop(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A plugin that raises on Stop, and a run the backstop stopped (its file left behind):
    ``orch stats`` records the stopped run first, then counts it."""
    orch_module("breaks", "from orch_core import hookimpl\n\n@hookimpl\ndef orch_stop():\n"
                "    raise RuntimeError('broken')\n")  # fmt: skip
    orch.write_config('[plugins]\nload = ["breaks"]\n')
    for event in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
        assert orch.run(payload(event, session_id="s-1"), ORCH_AGENT="p:1").exit_code == 0
    running = orch.root / "state" / "running"
    running.mkdir(exist_ok=True)
    stopped = running / "999999999.json"
    started = time.time() - 120
    stopped.write_text(
        json.dumps({"event": "PreToolUse", "session_id": "s-1", "started": started}) + "\n"
        + json.dumps({"plugins": [["breaks", "breaks"]]}) + "\n"
        + 'Timeout (0:00:00.600)!\n  File "/lib/breaks.py", line 3 in orch_stop\n'
    )  # fmt: skip
    os.utime(stopped, (started + 0.6, started + 0.6))
    hooks = stats_json(orch)["hooks"]
    assert not stopped.exists()
    assert hooks["by_event"]["Stop"]["failed"] == 1
    assert hooks["by_event"]["PreToolUse"]["runs"] == 2
    assert hooks["by_event"]["PreToolUse"]["killed"] == 1
    assert hooks["by_plugin"]["breaks"] == {"runs": 2, "failed": 2, "errors": 1, "invalid": 0,
                                            "timeouts": 0, "killed": 1, "ok_rate": 0.0}  # fmt: skip
    assert hooks["by_plugin"]["presence"]["runs"] == 4  # its Stop observer is recorded if it fails
    assert (hooks["runs"], hooks["failed"], hooks["killed"]) == (6, 2, 1)


def test_ended_hours_are_summed_once_and_outlive_the_runs(orch: OrchState) -> None:
    store = orch.store
    now = 100 * HOUR + 1200.0  # 20 minutes into hour 100
    runs = []
    for hour in (97, 98, 99, 100):
        for minute in range(0, 60, 10):
            event = "PreCompact" if minute == 0 else "PostToolUse"
            runs.append((hour * HOUR + minute * 60.0, event, f"a:{hour % 2}", 10.0 + minute,
                         ok("presence")))  # fmt: skip
    add_runs(store, [r for r in runs if r[0] <= now])
    since = 97 * HOUR + 1800.0  # half way through hour 97
    before = collect(orch, since, now)

    assert metrics.roll_up(store, now) == 18  # hours 97 to 99 ended more than 5 minutes ago
    assert metrics.roll_up(store, now) == 0  # once
    summed = store.execute("SELECT hour, event, runs FROM run_hours ORDER BY hour, event")
    assert summed.fetchall() == [(h * HOUR, e, n) for h in (97, 98, 99)
                                 for e, n in (("PostToolUse", 5), ("PreCompact", 1))]  # fmt: skip
    assert collect(orch, since, now) == before  # the same numbers, from the sums

    with store.transaction() as tx:  # the hook path prunes the old runs
        tx.execute("DELETE FROM hook_runs WHERE ts < ?", (99 * HOUR,))
    after = collect(orch, since, now)
    hooks, compactions = after["hooks"], after["compactions"]
    # the half hour of hour 97 in the window is gone with its runs; whole hours are summed
    assert hooks["since"] == 98 * HOUR
    assert hooks["by_event"]["PostToolUse"]["runs"] == 5 + 5 + 2
    assert hooks["by_event"]["PostToolUse"]["p50_ms"] == middle(30)
    assert compactions["since"] == 98 * HOUR
    assert compactions["by_agent"] == {
        "a:0": {"count": 2, "per_hour": round(2 / (now - 98 * HOUR) * HOUR, 3)},
        "a:1": {"count": 1, "per_hour": round(1 / (now - 98 * HOUR) * HOUR, 3)},
    }
    assert compactions["total"] == 3
    mine = collect(orch, since, now, agent="a:0")["hooks"]
    assert mine["by_event"]["PostToolUse"]["runs"] == 5 + 2  # hours 98 and 100 are a:0's
    assert (mine["by_event"]["PreCompact"]["runs"], mine["by_plugin"]) == (2, {})


def test_a_busy_fleets_runs_are_summed_before_the_hook_path_prunes_them(orch: OrchState) -> None:
    """Ten agents at about 13 tool calls a minute (three hook runs each: PreToolUse,
    PostToolUse, PostToolBatch) record more runs in an hour than the store keeps: the
    supervisor, summing as it keeps house, sums the hour so far before they are pruned, and
    every run is counted once."""
    store = orch.store
    start, per_minute = 100 * HOUR, 400
    for minute in range(70):  # hour 100, and 10 minutes of hour 101
        add_runs(store, [(start + minute * 60 + i * 60 / per_minute, "PostToolUse",
                          f"a:{i % 10}", 5.0, ok("queue")) for i in range(per_minute)])  # fmt: skip
        with store.transaction() as tx:  # the hook path keeps the newest KEEP_RUNS
            (last,) = tx.execute("SELECT max(id) FROM hook_runs").fetchone()
            tx.execute("DELETE FROM hook_runs WHERE id <= ?", (last - KEEP_RUNS,))
        metrics.roll_up(store, start + (minute + 1) * 60)  # the supervisor, as the minute ends
    now = start + 70 * 60
    hooks = collect(orch, start, now)["hooks"]
    assert (hooks["since"], hooks["runs"]) == (start, 70 * per_minute)
    assert hooks["by_plugin"]["queue"]["runs"] == 70 * per_minute
    mine = collect(orch, start, now, agent="a:3")["hooks"]
    assert mine["runs"] == 70 * per_minute // 10
    summed = store.execute("SELECT sum(runs) FROM run_hours WHERE hour = ?", (start,)).fetchone()
    assert summed[0] == 60 * per_minute  # the whole of hour 100, once


def test_the_supervisor_sums_ended_hours_as_it_keeps_house(orch: OrchState) -> None:
    from orch_core.supervisor import lifecycle

    now = time.time()
    add_runs(orch.store, [(now - 3 * HOUR, "Stop", "p:1", 4.0, ok("queue"))])
    lifecycle.Supervisor(orch.env).housekeeping(now)
    summed = orch.store.execute("SELECT event, runs FROM agent_hours WHERE agent = 'p:1'")
    assert summed.fetchall() == [("Stop", 1)]


def test_compactions_through_the_dispatcher(orch: OrchState) -> None:
    for agent, times in (("p:1", 2), ("p:2", 1)):
        for _ in range(times):
            orch.run(payload("PreCompact", cwd=""), ORCH_AGENT=agent)
            orch.run(payload("SessionStart", source="compact", cwd=""), ORCH_AGENT=agent)
    result = stats_json(orch, "--since", "2h")
    compactions = result["compactions"]
    assert (compactions["total"], {a: r["count"] for a, r in compactions["by_agent"].items()}) == (
        3, {"p:1": 2, "p:2": 1})  # fmt: skip
    hours = (result["window"]["until"] - compactions["since"]) / HOUR
    assert compactions["by_agent"]["p:1"]["per_hour"] == round(2 / hours, 3)
    assert stats_json(orch, "--agent", "p:2")["compactions"]["total"] == 1


# -- recoveries, alerts, agents, tokens ----------------------------------------------------------


def test_recoveries_by_step_per_agent_per_hour(orch: OrchState) -> None:
    now = 1_000_000.0
    rows = [("a:1", "reprompt", "done", now - 600), ("a:1", "restart", "done", now - 500),
            ("a:1", "restart", "failed", now - 400), ("a:1", "fresh", "verifying", now - 300),
            ("b:1", "give_up", "done", now - 200), ("b:1", "reprompt", "done", now - 9000),
            ("b:1", "restart", "cancelled", None)]  # fmt: skip
    with orch.store.transaction() as tx:
        tx.executemany(
            "INSERT INTO recoveries (agent, created, reason, step, due, state, started)"
            " VALUES (?, ?, 'test', ?, ?, ?, ?)",
            [(a, (s or now) - 5, step, s or now, state, s) for a, step, state, s in rows],
        )
    restarts = collect(orch, now - 2 * HOUR, now)["restarts"]
    assert restarts["by_agent"] == {
        "a:1": {"reprompt": 1, "restart": 2, "fresh": 1, "give_up": 0, "failed": 1,
                "per_hour": 2.0},
        "b:1": {"reprompt": 0, "restart": 0, "fresh": 0, "give_up": 1, "failed": 0,
                "per_hour": 0.5},
    }  # fmt: skip
    assert (restarts["restart"], restarts["give_up"], restarts["per_hour"]) == (2, 1, 2.5)


def test_alerts_and_agents_by_state(orch: OrchState) -> None:
    from orch_builtin import auto_restart

    for agent, events in (("p:1", ["UserPromptSubmit"]), ("p:2", ["Stop"]),
                          ("p:3", ["PreToolUse", "Notification"])):  # fmt: skip
        for event in events:
            orch.run(payload(event, notification_type="permission_prompt"), ORCH_AGENT=agent)
    auto_restart.give_up(orch.store, "p:4", "StopFailure billing_error", orch.env)
    result = stats_json(orch)
    assert result["agents"] == {
        "total": 4, "by_state": {"busy": 1, "failed": 1, "idle": 1, "needs_input": 1}}  # fmt: skip
    assert result["alerts"] == {"failed": 1}
    assert stats_json(orch, "--agent", "p:3")["agents"] == {
        "total": 1, "by_state": {"needs_input": 1}}  # fmt: skip


def usage_line(msg_id: str, when: str, **tokens: int) -> str:
    message = {"id": msg_id, "role": "assistant", "usage": tokens}
    return json.dumps({"type": "assistant", "timestamp": when, "message": message})


def test_tokens_from_the_transcript_presence_remembered(orch: OrchState, tmp_path: Path) -> None:
    """A response is written as a line per content block, each with its usage: it counts once.
    A line from before the window and the tail's cut first line are left out."""
    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 60))
    old = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 3 * HOUR))
    transcript = tmp_path / "session.jsonl"
    transcript.write_text("\n".join([
        '{"cut": "by the tail", "usage": ',
        usage_line("msg_old", old, input_tokens=1000, output_tokens=1000),
        usage_line("msg_1", iso, input_tokens=10, output_tokens=5, cache_read_input_tokens=100),
        usage_line("msg_1", iso, input_tokens=10, output_tokens=5, cache_read_input_tokens=100),
        json.dumps({"type": "user", "timestamp": iso, "message": {"content": "hi"}}),
        usage_line("msg_2", iso, input_tokens=7, output_tokens=3,
                   cache_creation_input_tokens=50),
    ]) + "\n")  # fmt: skip
    start = payload("SessionStart", session_id="s-9", transcript_path=str(transcript))
    orch.run(start, ORCH_AGENT="p:9", TMUX_PANE="%9")
    assert stats_json(orch)["tokens"] == {"p:9": {"input": 17, "output": 8, "cache_creation": 50,
                                                  "cache_read": 100, "requests": 2}}  # fmt: skip
    assert stats_json(orch, "--since", "4h")["tokens"]["p:9"]["input"] == 1017
    assert stats_json(orch, "--agent", "p:1")["tokens"] == {}


# -- plugins' sections ---------------------------------------------------------------------------

NOTES = """
import time
from orch_core import hookimpl

@hookimpl
def orch_schema(dialect):
    return {1: "CREATE TABLE notes (agent TEXT, ts DOUBLE PRECISION)"}

@hookimpl
def orch_stop(ctx):
    with ctx.store.transaction() as tx:
        tx.execute("INSERT INTO notes VALUES (?, ?)", (ctx.agent, time.time()))

@hookimpl
def orch_stats(since, now, agent, ctx):
    where, args = ("WHERE ts >= ? AND agent = ?", (int(since), agent)) if agent else (
        "WHERE ts >= ?", (int(since),))
    (count,) = ctx.store.execute(f"SELECT count(*) FROM notes {where}", args).fetchone()
    return {"notes": count, "by": {"agent": agent or "every"}}
"""

BROKEN = """
from orch_core import hookimpl

@hookimpl
def orch_stats():
    raise ValueError("no numbers today")
"""


def test_hook_orch_stats_gives_each_plugin_its_own_section(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("notes", NOTES)
    orch_module("broken_stats", BROKEN)
    orch.write_config('[plugins]\nload = ["notes", "broken_stats"]\n')
    # the first hook also builds the plan and the tables: a busy machine's took longer than 0.5 s
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
    for agent in ("p:1", "p:1", "p:2"):
        orch.run(payload("Stop"), ORCH_AGENT=agent)
    plugins = stats_json(orch)["plugins"]
    assert plugins["notes"] == {"notes": 3, "by": {"agent": "every"}}
    assert plugins["broken_stats"] == {"error": "ValueError: no numbers today"}
    assert stats_json(orch, "--agent", "p:1")["plugins"]["notes"]["notes"] == 2
    shown = orch.cli("stats").stdout
    assert "\nnotes:\n  notes: 3\n  by: agent every\n" in shown
    assert "broken_stats:\n  error: ValueError: no numbers today" in shown
    assert [r["plugin"] for r in orch.log() if r["msg"] == "plugin stats failed"] == [
        "broken_stats", "broken_stats", "broken_stats"]  # fmt: skip


DATED = """
from datetime import datetime

from orch_core import hookimpl

@hookimpl
def orch_stats():
    return {"last": {"at": datetime(2026, 12, 7, 1, 2, 3)}, "since": datetime(2026, 12, 1)}
"""


def test_a_plugin_section_with_values_json_cannot_hold_reads_as_text_too(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("dated", DATED)
    orch.write_config('[plugins]\nload = ["dated"]\n')
    assert stats_json(orch)["plugins"]["dated"]["since"] == "2026-12-01 00:00:00"
    done = orch.cli("stats")
    assert done.returncode == 0, done.stderr
    assert '\ndated:\n  last: at "2026-12-07 01:02:03"\n  since: "2026-12-01 00:00:00"\n' in (
        done.stdout
    )


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)


def test_rebriefing_effectiveness_through_the_dispatcher(orch: OrchState, tmp_path: Path) -> None:
    """An agent edits app.py on branch feature-x, compacts, is rebriefed (the transcript then
    shows the rebrief), and edits app.py again; a second rebrief, asked for, does not show in
    what its transcript holds after it, and no tool call follows it."""
    project = orch.project_dir
    git(project, "init", "-q", "-b", "feature-x")
    git(project, "-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q",
        "--allow-empty", "-m", "Start")  # fmt: skip
    app = str(project / "app.py")
    transcript = tmp_path / "t.jsonl"
    transcript.write_text('{"type": "user"}\n')

    def hook(event: str, **fields: Any) -> str | None:
        data = payload(event, cwd="", session_id="s-1", transcript_path=str(transcript), **fields)
        return orch.run(data, ORCH_AGENT="p:1").context

    hook("PostToolUse", tool_name="Edit", tool_input={"file_path": app})
    hook("PreCompact")
    given = hook("SessionStart", source="compact")
    assert given is not None and given.startswith(
        "[orch rebrief: context restored after compaction]"
    )
    with transcript.open("a") as f:
        f.write(json.dumps({"type": "attachment", "content": given}) + "\n")
    hook("PreToolUse", tool_name="Edit", tool_input={"file_path": app})
    hook("PostToolUse", tool_name="Edit", tool_input={"file_path": app})
    store = orch.store
    (given_at,) = store.execute("SELECT ts FROM rebriefs").fetchone()
    (called_at,) = store.execute("SELECT ts FROM hook_runs WHERE event = 'PreToolUse'").fetchone()
    waited = round(called_at - given_at, 3)

    assert orch.cli("rebrief", "p:1").returncode == 0
    asked = hook("PostToolUse", tool_name="Bash", tool_input={"command": "ls"})
    assert asked is not None and asked.startswith("[orch rebrief: context restored after a request")
    with transcript.open("a") as f:
        f.write(json.dumps({"type": "assistant", "message": {"content": "ok"}}) + "\n")

    section = stats_json(orch)["plugins"]["rebrief"]
    assert section == {
        "given": {"compaction": 1, "restart": 0, "request": 1, "briefing": 0},
        "total": 2,
        "in_transcript": {"checked": 2, "found": 1},
        "to_next_tool_seconds": {"n": 1, "p50": waited, "p90": waited, "p99": waited},
        "same_files": {"checked": 1, "yes": 1},
        "same_branch": {"checked": 1, "yes": 1},
    }
    assert stats_json(orch, "--agent", "p:2")["plugins"]["rebrief"]["total"] == 0


# -- the command ---------------------------------------------------------------------------------


def test_the_readable_table_and_the_options(orch: OrchState) -> None:
    orch.run(payload("Notification", notification_type="permission_prompt"), ORCH_AGENT="p:1")
    api.send("p:1", "hello", env=orch.env, project_dir=str(orch.project_dir), priority=60)
    done = orch.cli("stats", "--since", "30m", "--agent", "p:1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("orch stats since ") and lines[0].endswith("(30m), p:1")
    assert "agents: 1 (1 needs_input)" in lines
    assert "messages: 1 sent, 0 delivered, 0 confirmed, 0 dead, 0 expired, 0 cancelled" in lines
    assert any(line.startswith("queue: 1 pending (0 scheduled), oldest waiting ") for line in lines)
    (row,) = [line.split() for line in lines if line.startswith("  p:1 ")]
    assert (row[:2], row[3:]) == (["p:1", "1"], ["1"])  # pending, oldest, then critical
    assert "alerts: none" in lines
    bad = orch.cli("stats", "--since", "soon")
    assert bad.returncode == 2
    assert "Invalid value for '--since': malformed duration 'soon'" in bad.stderr


def test_stats_only_reads_and_sums(orch: OrchState) -> None:
    """What a hook writes is unchanged by metrics: a tool call's run records the same rows."""
    orch.run(payload("PostToolUse"), ORCH_AGENT="p:1")
    store = orch.store
    tables = ("run_hours", "plugin_hours", "agent_hours", "rollups")
    counts = [store.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
    assert counts == [0, 0, 0, 0]  # the hook itself sums nothing
    runtime = Runtime.open(orch.env, str(orch.project_dir), store=store)
    later = time.time() + 2 * HOUR
    metrics.report(runtime, later - HOUR, later)
    assert store.execute("SELECT runs FROM run_hours").fetchall() == [(1,)]


@pytest.mark.parametrize("values", [[], [7.0], [3.0, 1.0, 2.0]])
def test_percentiles_are_nearest_rank(values: list[float]) -> None:
    ordered = sorted(values)
    got = metrics.summary(values)
    assert got["n"] == len(values)
    for p in (50, 90, 99):
        expected = ordered[math.ceil(p / 100 * len(ordered)) - 1] if ordered else None
        assert got[f"p{p}"] == expected


def test_a_pushed_message_imported_is_no_hook_delivery(orch: OrchState) -> None:
    """``orch import`` keeps a message typed with ``--push`` delivered; the event that says it
    was imported is no hand-over by a hook, and counts in no delivery latency."""
    queue = Queue(orch.store)
    now = time.time()
    pushed = queue.send("c:1", "typed", now=now - 60)["id"]
    assert queue.mark_pushed(pushed, now=now - 60)
    elsewhere = Queue(orch.other_store("elsewhere"))
    assert elsewhere.import_(queue.export(None), now=now - 30) == 1
    assert elsewhere.get(pushed)["state"] == "delivered"  # type: ignore[index]
    report = metrics.collect(elsewhere.store, now - HOUR, now)
    assert report["messages"]["delivered"] == 0
    assert report["messages"]["queued_to_delivered"]["all"]["n"] == 0
