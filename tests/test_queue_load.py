"""The queue under load and faults, on a real SQLite file with real ``orch-hook`` processes:
concurrent hooks never hand one message out twice, concurrent senders lose nothing and keep
their order, a hook killed at any point loses nothing, and a locked database costs a hook at
most its budget and loses nothing. Every claim is checked against the database itself."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orch_core.queue import Queue
from orch_core.testing.kit import HookResult, OrchState, hook_script, orch_script
from orch_core.testing.payloads import payload

AGENT = "p:1"
HEADER = re.compile(r"\[orch message (m[0-9a-z]+) from ")
LIVE = {"queued", "delivered", "confirmed"}
#: Dead letters are policy, not loss: these tests look at crashes and races, so no message
#: should ever run out of attempts here.
PATIENT = "[plugin.queue]\nmax_attempts = 1000\n"


def delivered_ids(result: HookResult) -> list[str]:
    """Message ids in one hook's ``additionalContext``, in the order given."""
    return HEADER.findall(result.context or "")


def rows(orch: OrchState, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(orch.env["ORCH_DB"])
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def states(orch: OrchState) -> dict[str, str]:
    return dict(rows(orch, "SELECT id, state FROM messages"))


def delivered_events(orch: OrchState) -> Counter[str]:
    found = rows(orch, "SELECT message_id FROM message_events WHERE state = 'delivered'")
    return Counter(mid for (mid,) in found)


def post_tool_use(session: str, transcript: Path | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"session_id": session}
    if transcript is not None:
        fields["transcript_path"] = str(transcript)
    return payload("PostToolUse", **fields)


def drain(orch: OrchState, session: str) -> list[str]:
    """Run one hook at a time until nothing is deliverable, each answer appended to the
    session's transcript as Claude Code does (so the next hook confirms it); the ids handed
    out, in order. Bounded by the messages waiting (each hook hands out one at least, but a
    hook on a loaded machine may find its deadline too near to claim)."""
    transcript = orch.root / f"{session}.jsonl"
    given: list[str] = []
    rounds = 2 * sum(state == "queued" for state in states(orch).values()) + 5
    for _ in range(rounds):
        if not Queue(orch.store).has_ready(AGENT):
            return given
        result = orch.run_hook(post_tool_use(session, transcript), ORCH_AGENT=AGENT, timeout=30)
        assert result.exit_code == 0, result.stderr
        given += delivered_ids(result)
        record(transcript, result.stdout)
    raise AssertionError(f"still deliverable after {rounds} hooks")


def record(transcript: Path, text: str) -> None:
    """Append what a hook answered to a transcript, one JSON line, as Claude Code writes it."""
    with transcript.open("a") as f:
        f.write(json.dumps({"type": "attachment", "content": text}) + "\n")


# -- parallel hooks ----------------------------------------------------------------------------


def test_a_burst_of_one_sessions_hooks_hands_each_message_over_once(orch: OrchState) -> None:
    """Ten parallel tool calls of one session finish at once, ten messages waiting: the hook
    that takes them must not be undone by its siblings (which cannot see them in the
    transcript yet), so nothing is handed over twice, burst after burst. The budget is generous:
    this is about the race between the siblings, not about time (on a busy machine ten hooks
    at once passed 500 ms)."""
    orch.write_config("[orch]\nbudget_ms = 4000\n", user=True)
    queue = Queue(orch.store)
    warm = orch.run_hook(payload("Stop"), ORCH_AGENT="warm:1")
    assert warm.exit_code == 0
    transcript = orch.root / "burst.jsonl"
    transcript.touch()
    handed: Counter[str] = Counter()
    sent: list[str] = []
    with ThreadPoolExecutor(10) as pool:
        for burst in range(15):
            sent += [queue.send(AGENT, f"burst {burst} message {i}")["id"] for i in range(10)]
            results = list(
                pool.map(
                    lambda _: orch.run_hook(post_tool_use("burst", transcript), ORCH_AGENT=AGENT),
                    range(10),
                )
            )
            assert [r.exit_code for r in results] == [0] * 10
            for result in results:
                handed.update(delivered_ids(result))
                record(transcript, result.stdout)  # Claude writes each answer down
    assert [mid for mid, n in handed.items() if n > 1] == [], "handed over twice"
    assert sorted(handed) == sorted(sent), "each burst's messages handed over in that burst"
    assert delivered_events(orch) == Counter({mid: 1 for mid in handed})


def test_parallel_hooks_deliver_each_message_exactly_once(orch: OrchState) -> None:
    # ~4 messages per hook, so 200 messages take ~50 hooks racing 16 at a time. The budget is
    # generous on purpose: this is about the race between claims, not about time (the dispatcher
    # abandons a plugin thread past its budget, not its transaction: a late claim still commits,
    # and no reply carries it).
    orch.write_config("[orch]\nbudget_ms = 4000\n" + PATIENT + "budget = 600\n", user=True)
    queue = Queue(orch.store)
    warm = orch.run_hook(payload("Stop"), ORCH_AGENT="warm:1")  # builds and caches the plan
    assert warm.exit_code == 0
    sent = [queue.send(AGENT, f"parallel {i}", sender="load")["id"] for i in range(200)]
    seq = {mid: i for i, mid in enumerate(sent)}
    results: list[HookResult] = []
    ran: list[str] = []
    with ThreadPoolExecutor(16) as pool:
        for wave in range(12):
            if not queue.has_ready(AGENT):
                break
            sessions = [f"par-{wave}-{i}" for i in range(16)]
            ran += sessions
            results += pool.map(
                lambda s: orch.run_hook(post_tool_use(s), ORCH_AGENT=AGENT, timeout=60),
                sessions,
            )
    assert not queue.has_ready(AGENT), "12 waves of 16 hooks did not drain 200 messages"
    assert [r.exit_code for r in results] == [0] * len(results)
    handed = [delivered_ids(r) for r in results]
    counts = Counter(mid for ids in handed for mid in ids)
    assert sorted(counts) == sorted(sent), "a message was never handed to the model"
    assert [mid for mid, n in counts.items() if n > 1] == [], "handed out twice"
    for ids in handed:  # one hook's batch keeps the agent's order
        assert [seq[mid] for mid in ids] == sorted(seq[mid] for mid in ids)
    assert sum(1 for ids in handed if ids) >= 30, "the hooks did not actually share the work"
    # the database agrees: one delivery each, to the session whose hook printed it
    assert delivered_events(orch) == Counter(dict.fromkeys(sent, 1))
    assert set(states(orch).values()) == {"delivered"}
    printed_by = {mid: session for session, ids in zip(ran, handed, strict=True) for mid in ids}
    assert dict(rows(orch, "SELECT id, session_id FROM messages")) == printed_by
    runs = rows(orch, "SELECT ok, plugins FROM hook_runs WHERE agent = ?", AGENT)
    assert len(runs) == len(results)
    failed = [json.loads(p) for ok, p in runs if not ok]
    assert failed == [], "a plugin failed under contention"


# -- parallel senders --------------------------------------------------------------------------

SENDER = """
import sys
from orch_core.queue import Queue

name, count = sys.argv[1], int(sys.argv[2])
queue = Queue.open()
for i in range(count):
    queue.send(f"p:{i % 2 + 1}", f"{name} #{i}", sender=name)
"""


def test_parallel_senders_lose_nothing_and_keep_each_senders_order(orch: OrchState) -> None:
    Queue(orch.store).has_pending(AGENT)  # the schema exists before the race starts
    senders = [f"w{k}" for k in range(8)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, name, "200"],
            env=orch.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in senders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    found = rows(orch, "SELECT agent, seq, sender, body, state FROM messages")
    assert len(found) == 1600
    assert {state for *_, state in found} == {"queued"}
    assert Counter(sender for _, _, sender, _, _ in found) == Counter(dict.fromkeys(senders, 200))
    for agent in ("p:1", "p:2"):
        seqs = sorted(seq for a, seq, *_ in found if a == agent)
        assert seqs == list(range(1, 801)), f"{agent}: seq is not gap-free 1..800"
    assert rows(orch, "SELECT agent, max(seq) FROM messages GROUP BY agent ORDER BY agent") == [
        ("p:1", 800),
        ("p:2", 800),
    ]
    for name in senders:
        mine = sorted(
            (int(body.split("#")[1]), agent, seq)
            for agent, seq, sender, body, _ in found
            if sender == name
        )
        assert [i for i, _, _ in mine] == list(range(200)), f"{name}: a send is missing"
        for agent in ("p:1", "p:2"):
            order = [seq for _, a, seq in mine if a == agent]
            assert order == sorted(order) and len(set(order)) == len(order), name
    # the whole history was kept too: each message's creation time, and no other event yet
    assert rows(orch, "SELECT count(*) FROM messages WHERE created > 0") == [(1600,)]
    assert rows(orch, "SELECT count(*) FROM message_events") == [(0,)]


# -- a hook killed at any point ----------------------------------------------------------------


def start_hook(orch: OrchState, stdin: Path, **env: str) -> subprocess.Popen[bytes]:
    with stdin.open("rb") as f:
        return subprocess.Popen(
            [hook_script()],
            stdin=f,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**orch.env, "ORCH_AGENT": AGENT, **env},
            cwd=orch.project_dir,
        )


def wait_for_claim(proc: subprocess.Popen[bytes], claimed: Path) -> None:
    """Until the hook says it has claimed (the slow observer's mark), or has exited."""
    deadline = time.monotonic() + 30
    while not claimed.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)


#: Work after the claim (another plugin observing deliveries): it widens the window between the
#: claim's commit and the reply, so that random kills land there often. With ``CLAIMED`` set it
#: says when the claim has committed, and waits, so that the test's kill lands in that window.
SLOW_OBSERVER = """
import os, pathlib, time
from orch_core import hookimpl

@hookimpl
def orch_message_delivered(message):
    claimed = os.environ.get("CLAIMED")
    if claimed:
        pathlib.Path(claimed).touch()
        time.sleep(0.2)
    time.sleep(0.005)
"""


def test_a_hook_killed_at_any_point_loses_nothing(orch: OrchState) -> None:
    orch.plugin_module("slow_observer", SLOW_OBSERVER)
    orch.write_config('[plugins]\nload = ["slow_observer"]\n' + PATIENT + "budget = 600\n")
    queue = Queue(orch.store, max_attempts=1000)
    rng = random.Random(20260)
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="warm:1").exit_code == 0  # plan cached
    # how long a hook delivering a batch lives, so the kills land anywhere from start-up to exit
    sent: list[str] = []
    lifetimes = []
    for n in range(5):
        batch = [queue.send(AGENT, f"probe {n}.{j}", sender="load")["id"] for j in range(4)]
        probe = orch.root / f"probe-{n}.json"
        probe.write_text(json.dumps(post_tool_use(f"probe-{n}")))
        start = time.monotonic()
        out, _ = start_hook(orch, probe).communicate(timeout=30)
        lifetimes.append(time.monotonic() - start)
        assert HEADER.findall(out.decode()) == batch
        sent += batch
    lifetime = sorted(lifetimes)[2]
    probes = "".join(f"[orch message {mid} " for mid in sent)  # what the probes printed
    transcripts = {f"kill-{n}": orch.root / f"kill-{n}.jsonl" for n in range(3)}
    killed = finished = 0
    cut_off: set[str] = set()
    # every fifth round kills between the claim and its reply, the last one included, so that
    # the end below has such claims to find; the others at random, from start-up to exit. At
    # least 30 rounds, on until enough hooks finished (on a loaded machine the timing shifts)
    for i in range(150):
        if i >= 30 and i % 5 == 0 and killed >= 5 and finished >= 2:
            break
        sent += [queue.send(AGENT, f"kill {i}.{j}", sender="load")["id"] for j in range(3)]
        session = f"kill-{i % 3}"
        stdin = orch.root / f"hook-{i}.json"
        stdin.write_text(json.dumps(post_tool_use(session, transcripts[session])))
        claimed = orch.root / f"claimed-{i}"
        if i % 5 == 4:
            proc = start_hook(orch, stdin, CLAIMED=str(claimed))
            wait_for_claim(proc, claimed)
        else:
            proc = start_hook(orch, stdin)
            time.sleep(rng.uniform(0, 1.5) * lifetime)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        if i % 5 == 4:
            assert claimed.exists(), "the hook claimed nothing"
            assert proc.returncode == -signal.SIGKILL, "the kill after the claim came too late"
        if proc.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert proc.returncode == 0
            finished += 1
            record(transcripts[session], out.decode())  # what reached the model
        assert set(states(orch)) == set(sent), "a message vanished"
        assert set(states(orch).values()) <= LIVE
        printed = probes + "".join(p.read_text() for p in transcripts.values() if p.exists())
        # claims whose hook died before it could print them: the case this test is about
        cut_off = {mid for mid in delivered_events(orch) if f"[orch message {mid} " not in printed}
    assert killed >= 5 and finished >= 2, (killed, finished)
    assert cut_off, f"no kill of {killed} landed between a claim and its reply"
    assert rows(orch, "PRAGMA integrity_check") == [("ok",)]
    for mid, state in states(orch).items():  # confirmed means the model really saw it
        if state == "confirmed":
            assert f"[orch message {mid} " in printed, mid
    # past confirm_seconds every unconfirmed delivery is looked for once more in its
    # transcript: confirmed if the model saw it, else back to the queue ...
    in_flight = {mid for mid, s in states(orch).items() if s == "delivered"}
    written = {
        mid: Path(path).read_text() if path and Path(path).exists() else ""
        for mid, path in rows(orch, "SELECT id, transcript FROM messages")
    }
    Queue(orch.store, max_attempts=1000, confirm_seconds=0).sweep()
    after = states(orch)
    assert set(after.values()) <= {"queued", "confirmed"}
    for mid in in_flight:
        seen = f"[orch message {mid} " in written[mid]
        assert after[mid] == ("confirmed" if seen else "queued")
    assert cut_off <= {mid for mid in in_flight if after[mid] == "queued"}
    # ... and is delivered again: every message not confirmed reaches a clean hook, once
    again = drain(orch, "clean")
    assert sorted(again) == sorted(mid for mid, s in after.items() if s == "queued")
    assert cut_off <= set(again), "a claim cut off by a kill was not delivered again"
    assert len(again) == len(set(again))
    final = states(orch)
    assert set(final) == set(sent)
    assert set(final.values()) <= {"delivered", "confirmed"}
    # only the last clean batch can still wait for its confirmation
    assert {mid for mid, s in final.items() if s == "delivered"} <= set(again)
    assert rows(orch, "PRAGMA integrity_check") == [("ok",)]


# -- a writer holding the lock -----------------------------------------------------------------


def test_a_held_write_lock_costs_the_budget_and_loses_nothing(orch: OrchState) -> None:
    orch.write_config("[orch]\nbudget_ms = 300\n", user=True)
    queue = Queue(orch.store)
    sent = [queue.send(AGENT, f"locked {i}", sender="load")["id"] for i in range(10)]
    orch.run_hook(payload("Stop"), ORCH_AGENT="other:1")  # plan cached: a warm hook
    holder = sqlite3.connect(orch.env["ORCH_DB"], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        answers: list[tuple[float, HookResult]] = []
        for n in range(2):
            start = time.monotonic()
            result = orch.run_hook(post_tool_use(f"locked-{n}"), ORCH_AGENT=AGENT, timeout=30)
            answers.append((time.monotonic() - start, result))
        # still held: nobody could write while the hooks ran
        assert holder.in_transaction
    finally:
        holder.rollback()
        holder.close()
    for elapsed, result in answers:
        assert result.exit_code == 0, result.stderr
        assert result.context is None
        assert elapsed < 5, f"the hook took {elapsed:.1f} s on a 0.3 s budget"
    # the hook's own account: it gave up on the lock at its budget, not at SQLite's 5 s wait
    gave_up = [line for line in orch.log() if line["msg"] == "cannot record the hook run"]
    assert len(gave_up) == 2
    assert all(line["duration_ms"] < 1000 for line in gave_up), gave_up
    skipped = [line for line in orch.log() if line["msg"] == "plugins failed"]
    assert len(skipped) == 2
    for line in skipped:
        outcomes = {p["plugin"]: p["outcome"] for p in line["plugins"]}
        assert outcomes["queue"] in ("timeout", "error"), outcomes
    assert states(orch) == dict.fromkeys(sent, "queued")
    assert delivered_events(orch) == Counter()
    # released: the next hook delivers all ten, in order
    result = orch.run_hook(post_tool_use("after"), ORCH_AGENT=AGENT, timeout=30)
    assert result.exit_code == 0
    assert delivered_ids(result) == sent
    assert states(orch) == dict.fromkeys(sent, "delivered")
    assert delivered_events(orch) == Counter(dict.fromkeys(sent, 1))
    assert rows(orch, "PRAGMA integrity_check") == [("ok",)]


# -- transcripts that are not files ------------------------------------------------------------


def test_a_transcript_that_is_not_a_regular_file_reads_as_empty(orch: OrchState) -> None:
    """``transcript_path`` comes from the payload: a FIFO would block the hook, ``orch queue``
    and the supervisor for ever, and ``/dev/zero`` would eat memory."""
    fifo = orch.root / "fifo.jsonl"
    os.mkfifo(fifo)
    queue = Queue(orch.store)
    for n, path in enumerate((str(fifo), "/dev/zero", "/dev/tty", str(orch.root))):
        sent = queue.send(AGENT, f"via {path}")["id"]
        first = orch.run_hook(post_tool_use(f"odd-{n}", Path(path)), ORCH_AGENT=AGENT, timeout=10)
        assert delivered_ids(first) == [sent]
        second = orch.run_hook(post_tool_use(f"odd-{n}", Path(path)), ORCH_AGENT=AGENT, timeout=10)
        assert second.exit_code == 0 and second.context is None
    assert {m["state"] for m in queue.messages(AGENT)} == {"delivered"}
    # the sweep past confirm_seconds reads each transcript once more, then requeues
    queue.sweep(now=time.time() + 121)
    assert {m["state"] for m in queue.messages(AGENT)} == {"queued"}
    listing = subprocess.run(
        [orch_script(), "queue", "--json"], env=orch.env, capture_output=True, timeout=10,
        check=True,
    )  # fmt: skip
    assert len(json.loads(listing.stdout)) == 4
