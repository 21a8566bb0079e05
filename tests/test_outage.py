"""PostgreSQL unreachable or restarting: hooks still answer within their budget, ``orch send``
fails in one line and stores nothing, the supervisor waits with backoff and says so (in the log
and in ``orch doctor``), and across a restart of the server in the middle of a stream of
messages nothing is lost or handed over twice. The server is the test kit's own, stopped and
started with ``pg_ctl`` as an operator would; hooks are real ``orch-hook`` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from orch_core.plugins.plan import DEFAULT_BUDGET_MS
from orch_core.queue import Queue
from orch_core.storage.postgres import HOLDOFF, WRITE_LOCK
from orch_core.storage.store import DatabaseUnreachable
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.postgres import Cluster, free_port

pytestmark = pytest.mark.orch_backends("postgresql")

AGENT = "p:1"
HEADER = re.compile(r"\[orch message (m[0-9a-z]+) from ")
#: What a hook may take past its budget while the database is down: process start and exit.
MARGIN = 1.0
EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop")


@pytest.fixture
def cluster(orch: OrchState) -> Iterator[Cluster]:
    """The session's server, running again after the test whatever happened in it."""
    assert orch.cluster is not None
    yield orch.cluster
    if not orch.cluster.running:
        orch.cluster.resume()


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"no {what} within {seconds} s"
        time.sleep(0.1)


def logged(orch: OrchState, msg: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The log's lines that start with ``msg``, from ``since`` on (the log keeps milliseconds)."""
    return [r for r in orch.log() if r["msg"].startswith(msg) and r["ts"] >= since - 0.001]


def timed_hook(orch: OrchState, event: str, session: str) -> tuple[float, Any]:
    data = payload(event, session_id=session, transcript_path=str(orch.root / f"{session}.jsonl"))
    start = time.monotonic()
    result = orch.run_hook(data, ORCH_AGENT=AGENT, timeout=30)
    return time.monotonic() - start, result


# -- hooks -------------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener takes connections and never answers, as a stopped server or a
    network that drops the replies does."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


class Mute:
    """A port in front of the server that, while :attr:`muted` is set, passes a connection
    until the server is ready for its first statement, and then nothing either way: a server
    that took the connection and stopped answering (stuck on its disk, or behind a network
    gone mid-session). Unmuted, it passes everything."""

    def __init__(self, server_port: int) -> None:
        import socket

        self.server_port = server_port
        self.muted = threading.Event()
        self.muted.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        #: Connections taken so far.
        self.connections = 0
        #: Unmuted: once a client sent a statement holding these bytes, the server's answers go
        #: no further (the statement ran, its answer never came: a network gone mid-session).
        self.deaf_after: bytes | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, url: str) -> str:
        return url.replace(f":{self.server_port}/", f":{self.port}/")

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            self.connections += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: Any) -> None:
        try:
            self._pass(client)
        except OSError:  # closed, by either side or by close()
            pass

    def _pass(self, client: Any) -> None:
        import select
        import socket

        server = socket.create_connection(("127.0.0.1", self.server_port))
        self._sockets.append(server)
        first = client.recv(8)  # SSL or GSS encryption asked for: refused, as a server may
        while first[4:8] in (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30"):
            client.sendall(b"N")
            first = client.recv(8)
        server.sendall(first)
        from_server, ready, deaf = b"", False, False
        while not self._closing.is_set():
            readable, _, _ = select.select([client, server], [], [], 0.2)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if ready and self.muted.is_set():
                    continue  # taken, and never answered
                if sock is client and self.deaf_after is not None and self.deaf_after in data:
                    deaf = True
                elif sock is server and deaf:
                    continue
                (client if sock is server else server).sendall(data)
                if sock is server and not ready:
                    from_server += data
                    while len(from_server) >= 5:  # each message: its type, its length, the rest
                        size = 1 + int.from_bytes(from_server[1:5], "big")
                        if len(from_server) < size:
                            break
                        ready = ready or from_server[:1] == b"Z"
                        from_server = from_server[size:]


@pytest.fixture
def mute(cluster: Cluster) -> Iterator[Mute]:
    proxy = Mute(cluster.port)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("down", ["stopped", "closed port", "silent", "mute"])
def test_hooks_answer_within_their_budget_while_the_database_is_down(
    orch: OrchState, cluster: Cluster, silent_port: int, mute: Mute, down: str
) -> None:
    queue = Queue(orch.store)
    sent = queue.send(AGENT, "waits out the outage")["id"]
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="warm:1").exit_code == 0  # plan cached
    if down == "stopped":
        cluster.pause()
    else:
        ports = {"silent": silent_port, "mute": mute.port, "closed port": free_port()}
        orch.env["ORCH_DB"] = orch.env["ORCH_DB"].replace(f":{cluster.port}/", f":{ports[down]}/")
    began = time.time()  # the first hook, cold on a busy machine, may have logged as these do
    timings = {}
    for event in EVENTS:
        elapsed, result = timed_hook(orch, event, "outage")
        timings[event] = elapsed
        assert result.exit_code == 0, result.stderr
        assert result.context is None and HEADER.findall(result.stdout) == []
        assert elapsed < DEFAULT_BUDGET_MS / 1000 + MARGIN, f"{event} took {elapsed:.2f} s"
    print(f"hooks while the database is {down}: " + ", ".join(
        f"{event} {ms * 1000:.0f} ms" for event, ms in timings.items()))  # fmt: skip
    # each run says why it went without the store, naming the server (never its password)
    unrecorded = logged(orch, "cannot record the hook run", since=began)
    assert len(unrecorded) == len(EVENTS)
    said = {"kept the connection"} if down == "mute" else {"is unreachable"}
    if down == "silent":  # on a busy machine the hook stops waiting before the connect gives up
        said.add("kept the connection")
    assert all(any(s in line["error"] for s in said) for line in unrecorded), unrecorded
    failed = logged(orch, "plugins failed")
    assert {p["plugin"] for line in failed for p in line["plugins"]} >= {"queue", "presence"}
    if down == "mute":  # each hook waited for its first statement half of what was left
        assert len(logged(orch, "the store did not answer in time", since=began)) == len(EVENTS)
    if down in ("silent", "mute"):  # the plugins that need no store still answer: orch-guard's deny
        forced = payload("PreToolUse", session_id="outage",
                         tool_input={"command": "git push --force origin main"})  # fmt: skip
        denied = orch.run_hook(forced, ORCH_AGENT=AGENT, timeout=30)
        assert denied.output is not None, denied
        assert denied.output["hookSpecificOutput"]["permissionDecision"] == "deny"
    if down == "stopped":
        cluster.resume()
    else:
        orch.env["ORCH_DB"] = orch.databases[-1]
    # back: the message waited, and goes out once (within the end to end tests' budget: what
    # is timed here is the outage, and a busy machine's cold hook connects late)
    orch.give_hooks_room()
    _, first = timed_hook(orch, "PostToolUse", "after")
    assert HEADER.findall(first.context or "") == [sent]
    _, second = timed_hook(orch, "PostToolUse", "after")
    assert second.context is None


def test_the_hosts_supervisor_answers_a_hook_in_time_when_the_server_stops_answering(
    orch: OrchState, mute: Mute
) -> None:
    """The supervisor's store was connected when the server stopped answering: the hook it
    answers for a process still gets orch-guard's deny within the budget, as one that does
    its own work does, rather than no answer at all (the command would then run)."""
    from orch_core.hook import warm
    from orch_core.plugins.plan import ANSWER_MARGIN
    from orch_core.supervisor.warm import WarmServer

    Queue(orch.store).has_pending(AGENT)  # tables made
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    mute.muted.clear()
    server = WarmServer(orch.env)
    assert server.start()

    def ask(event: dict[str, Any], within: float) -> dict[str, Any] | None:
        header = {"op": "hook", "env": {**orch.env, "ORCH_AGENT": AGENT}, "began": time.time(),
                  "cwd": str(orch.project_dir)}  # fmt: skip
        raw = json.dumps({**event, "cwd": str(orch.project_dir)}).encode()
        return warm.ask(orch.env, orch.env["ORCH_DB"], header, raw, within=within)

    try:
        assert ask(payload("Stop"), within=30) is not None  # the plan cached, the store kept
        mute.muted.set()
        forced = payload("PreToolUse", tool_input={"command": "git push --force origin main"})
        start = time.monotonic()
        answer = ask(forced, within=DEFAULT_BUDGET_MS / 1000 + ANSWER_MARGIN)  # as orch-hook
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert answer is not None
    assert json.loads(answer["stdout"])["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert elapsed < DEFAULT_BUDGET_MS / 1000 + MARGIN, elapsed
    assert logged(orch, "the store did not answer in time")


# -- orch send ---------------------------------------------------------------------------------


def test_orch_send_fails_in_one_line_and_stores_nothing_while_the_database_is_down(
    orch: OrchState, cluster: Cluster
) -> None:
    Queue(orch.store).has_pending(AGENT)  # tables made
    cluster.pause()
    done = orch.cli("send", AGENT, "lost in the outage?")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    where = f"postgresql://orch@127.0.0.1:{cluster.port}/{orch.databases[-1].rsplit('/', 1)[1]}"
    assert lines[0].startswith(f"Error: {where} is unreachable: "), lines
    listing = orch.cli("queue", "--json")
    assert listing.returncode == 1 and "Traceback" not in listing.stderr
    cluster.resume()
    assert Queue(orch.store).messages() == []
    again = orch.cli("send", AGENT, "after the outage")
    assert again.returncode == 0, again.stderr
    assert [m["body"] for m in Queue(orch.store).messages()] == ["after the outage"]


def test_a_command_fails_in_one_line_when_the_server_stops_answering(
    orch: OrchState, mute: Mute
) -> None:
    """A server that took the connection and answers no statement (stuck on its disk, or a
    network gone mid-session): its own ``statement_timeout`` never comes, so orch bounds each
    wait for it itself, a little past the store's timeout, and gives up on the connection."""
    Queue(orch.store).has_pending(AGENT)  # tables made
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    for command in (["send", AGENT, "into the silence"], ["queue", "--json"]):
        start = time.monotonic()
        done = orch.cli(*command)
        elapsed = time.monotonic() - start
        assert done.returncode == 1, done
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].endswith(": the connection was lost: no answer within 6.0s"), lines
        assert elapsed < 30, elapsed
    orch.env["ORCH_DB"] = orch.databases[-1]
    assert Queue(orch.store).messages() == []  # nothing reached the server


def test_a_send_whose_answer_never_came_says_it_may_be_stored(orch: OrchState, mute: Mute) -> None:
    """A plain send is one statement that commits as it ends: the server ran it, and the
    connection went before its answer came. The send fails, but says that the message may be
    stored: a script that took the error for "nothing stored" would send it again."""
    Queue(orch.store).has_pending(AGENT)  # tables made
    mute.muted.clear()
    mute.deaf_after = b"INSERT INTO messages"
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    done = orch.cli("send", AGENT, "stored, never answered")
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "the connection was lost as it committed (whether" in lines[0], lines
    assert "took effect is unknown)" in lines[0], lines
    orch.env["ORCH_DB"] = orch.databases[-1]
    assert [m["body"] for m in Queue(orch.store).messages()] == ["stored, never answered"]


def test_a_send_stored_before_the_server_stopped_answering_does_not_fail(
    orch: OrchState, mute: Mute
) -> None:
    """The message is committed and said to be; then, as the plugins are told of it (the
    project of its agent read for them), the server stops answering. The send failed, exit 1,
    with the message stored: a script that took the error for "nothing stored" sent it again.
    The plugins' part is a warning; the supervisor's ticks wake the agent all the same."""
    Queue(orch.store).has_pending(AGENT)  # tables made
    mute.muted.clear()
    mute.deaf_after = b"coalesce(s.cwd, a.project_dir)"  # the read for the plugins
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    done = orch.cli("send", AGENT, "stored, then silence")
    assert done.returncode == 0, done.stderr
    assert re.match(rf"queued m[0-9a-z]+ for {re.escape(AGENT)} ", done.stdout), done.stdout
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("warning: the message is stored, but "), warning
    assert "no answer within 6.0s" in warning, warning
    orch.env["ORCH_DB"] = orch.databases[-1]
    assert [m["body"] for m in Queue(orch.store).messages()] == ["stored, then silence"]


def test_a_transaction_that_waits_for_the_lock_and_then_works_is_not_given_up_on(
    orch: OrchState, tmp_path: Any
) -> None:
    """The lock and the statement sent with it (or ``executemany``'s statements) come back in
    one answer, and the server gives each of them its own timeout: together they may take
    longer than the store's timeout and its slack, and the server is answering all along."""
    from orch_core.storage.postgres import PostgresStore

    url = orch.env["ORCH_DB"]
    holder = PostgresStore(url, str(tmp_path), timeout=10)
    store = PostgresStore(url, str(tmp_path), timeout=2)
    store.execute("SELECT 1")
    held = threading.Event()

    def hold() -> None:
        with holder.transaction() as tx:
            tx.execute("SELECT 1")
            held.set()
            time.sleep(1.8)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait(10)
        with store.transaction() as tx:  # the lock in 1.8 s, then 1.5 s of work: 3.3 s > 3 s
            assert tx.execute("SELECT 7 FROM pg_sleep(1.5)").fetchone() == (7,)
    finally:
        thread.join()
    with store.transaction() as tx:
        tx.execute("SELECT 1")
        tx.executemany("SELECT pg_sleep(?)", [(1.1,), (1.1,), (1.1,)])  # 3.3 s > 3 s
    assert store.execute("SELECT 1").fetchone() == (1,)
    holder.close()
    store.close()


def test_doctor_asks_a_server_that_stopped_answering_once(orch: OrchState, mute: Mute) -> None:
    """Its first check waits for the server; the others are answered from memory, as after a
    failed connection, rather than each waiting in turn."""
    Queue(orch.store).has_pending(AGENT)
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    code, report = doctor(orch)
    assert code == 1
    assert re.search(r"FAIL database: \S+: the connection was lost: no answer within 3\.0s", report)
    assert "FAIL queue: not checked: the database is unreachable" in report
    assert mute.connections == 1, report


def test_a_server_error_mid_command_is_one_line_not_a_traceback(orch: OrchState) -> None:
    """Past connecting, psycopg's own errors (here a lock another client holds, not had
    within the command's 5 s) reach the CLI's boundary: one line naming the server, exit 1,
    nothing stored. A send on its own waits for no write lock; a batch does."""
    import psycopg

    Queue(orch.store).has_pending(AGENT)
    holder = psycopg.connect(orch.env["ORCH_DB"], autocommit=True)
    try:
        holder.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        lines = "".join(json.dumps({"agent": AGENT, "text": t}) + "\n" for t in ("a", "b"))
        batch = orch.cli("send", "--batch", "-", stdin=lines)
        holder.execute("LOCK TABLE messages IN SHARE MODE")
        done = orch.cli("send", AGENT, "behind a held lock")
    finally:
        holder.close()
    assert batch.returncode == 1 and batch.stderr.count("\n") == 1, batch.stderr
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    said = r"Error: postgresql://orch@127\.0\.0\.1:\d+/\w+: canceling statement due to \w+ timeout"
    assert re.fullmatch(said, done.stderr.strip()), done.stderr
    assert Queue(orch.store).messages() == []


# -- the store and the supervisor ----------------------------------------------------------------


def test_the_store_opens_a_fresh_connection_after_the_server_dropped_it(
    orch: OrchState, cluster: Cluster
) -> None:
    store = orch.store
    assert store.execute("SELECT 1").fetchone() == (1,)
    cluster.pause()
    cluster.resume()
    with pytest.raises(DatabaseUnreachable, match="the connection was lost"):
        store.execute("SELECT 1")  # the old connection: the server ended it
    assert store.execute("SELECT 1").fetchone() == (1,)
    cluster.pause()
    for said in ("the connection was lost", "is unreachable"):  # then no server to connect to
        with pytest.raises(DatabaseUnreachable, match=said), store.transaction() as tx:
            tx.execute("SELECT 1")
    cluster.resume()
    # a failed attempt is remembered a moment (a hook's threads do not each try), then retried
    with pytest.raises(DatabaseUnreachable, match="is unreachable"):
        store.execute("SELECT 1")
    time.sleep(HOLDOFF)
    with store.transaction() as tx:
        assert tx.execute("SELECT 1").fetchone() == (1,)
    # the next hook or command on a store kept by a long-lived process (the supervisor's warm
    # answers) tries afresh at once
    cluster.pause()
    with pytest.raises(DatabaseUnreachable):
        store.execute("SELECT 1")
    with pytest.raises(DatabaseUnreachable, match="is unreachable"):
        store.execute("SELECT 1")
    cluster.resume()
    store.anew()
    assert store.execute("SELECT 1").fetchone() == (1,)
    # ...and finds a connection the server dropped while it was kept, before using it
    cluster.pause()
    cluster.resume()
    store.anew()
    assert store.execute("SELECT 1").fetchone() == (1,)


def test_the_supervisor_waits_with_backoff_and_doctor_names_the_outage(
    orch: OrchState, cluster: Cluster
) -> None:
    Queue(orch.store).has_pending(AGENT)
    supervisor = supervise(orch, 60)
    try:
        wait_for(lambda: "supervisor" in doctor(orch)[1], 20, "supervisor")
        cluster.pause()
        wait_for(lambda: logged(orch, "database still unreachable"), 20, "second try")
        code, report = doctor(orch)
        assert code == 1
        where = f"postgresql://orch@127.0.0.1:{cluster.port}/"
        assert re.search(rf"FAIL database: {re.escape(where)}\w+ is unreachable: ", report)
        assert "fix: start the PostgreSQL server, or correct [orch] database in" in report
        assert re.search(rf"FAIL supervisor: orch supervise runs \(pid {supervisor.pid}\) but has"
                         r" not reached the database for \d+ s", report), report  # fmt: skip
        assert "FAIL queue: not checked: the database is unreachable" in report
        assert "Traceback" not in report
        time.sleep(3)
        cluster.resume()
        wait_for(lambda: logged(orch, "database reachable again"), 40, "reconnection")
        code, report = doctor(orch)
        assert f"ok   supervisor: orch supervise runs (pid {supervisor.pid})" in report, report
        assert "ok   database:" in report
        assert supervisor.poll() is None, "the supervisor did not survive the outage"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    first = logged(orch, "database unreachable")
    assert len(first) == 1 and first[0]["retry_in"] == 1.0
    waits = [line["retry_in"] for line in logged(orch, "database still unreachable")]
    assert waits[:3] == [2.0, 4.0, 8.0][: len(waits[:3])] and len(waits) >= 1, waits
    assert logged(orch, "supervisor tick failed") == []
    assert b"Traceback" not in err


def test_an_outage_a_killed_supervisor_saw_is_not_the_next_ones(
    orch: OrchState, cluster: Cluster
) -> None:
    """A supervisor killed during an outage (SIGKILL, a closed terminal's SIGHUP) leaves its
    status behind: the next, reaching the database, was said not to, for as long as it ran."""
    Queue(orch.store).has_pending(AGENT)
    first = supervise(orch, 60)
    try:
        cluster.pause()
        wait_for(lambda: logged(orch, "database unreachable"), 30, "the outage noticed")
    finally:
        first.kill()
        first.wait(timeout=30)
        cluster.resume()
    second = supervise(orch, 60)
    try:
        wait_for(lambda: f"(pid {second.pid})" in doctor(orch)[1], 20, "the next supervisor")
        report = doctor(orch)[1]
        assert f"ok   supervisor: orch supervise runs (pid {second.pid})" in report, report
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


def test_the_supervisor_gives_up_on_a_server_that_stops_answering_and_goes_on_after(
    orch: OrchState, mute: Mute
) -> None:
    """Its statements would wait for ever; each gives up a second past the store's timeout,
    the supervisor waits with backoff as in any outage, and takes up its work once the server
    answers again."""
    Queue(orch.store).has_pending(AGENT)
    mute.muted.clear()
    orch.env["ORCH_DB"] = mute.url(orch.env["ORCH_DB"])
    supervisor = supervise(orch, 120)
    try:
        wait_for(lambda: "supervisor" in doctor(orch)[1], 20, "supervisor")
        mute.muted.set()
        wait_for(lambda: logged(orch, "database unreachable"), 30, "the outage noticed")
        mute.muted.clear()
        wait_for(lambda: logged(orch, "database reachable again"), 60, "reconnection")
        assert supervisor.poll() is None, "the supervisor did not survive the outage"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    (first,) = logged(orch, "database unreachable")
    assert "no answer within 6.0s" in first["error"], first
    assert logged(orch, "supervisor tick failed") == []
    assert b"Traceback" not in err


def test_the_supervisor_is_back_soon_after_the_server_though_its_backoff_is_long(
    orch: OrchState, cluster: Cluster
) -> None:
    """Its backoff has grown to 16 s when the server comes back: the listening connection,
    tried again every few seconds meanwhile, brings the next tick forward. Waiting out the
    backoff, the host's last heartbeat stayed older than ``host_timeout``, and every host's
    agents showed as unreachable to the whole fleet, long after the outage."""
    from orch_core import hosts, paths
    from orch_core.supervisor.lifecycle import RELISTEN_AFTER

    orch.write_config("[orch]\nhost_timeout = 10\n", user=True)
    Queue(orch.store).has_pending(AGENT)
    supervisor = supervise(orch, 120)
    try:
        wait_for(lambda: orch.store.execute("SELECT 1 FROM hosts").fetchone(), 20, "heartbeat")
        cluster.pause()
        wait_for(lambda: any(line["retry_in"] == 16.0
                             for line in logged(orch, "database still unreachable")),
                 40, "a long backoff")  # fmt: skip
        cluster.resume()
        here = paths.host(orch.env)
        assert hosts.unreachable(orch.store, time.time(), 10) == {here}
        wait_for(lambda: not hosts.unreachable(orch.store, time.time(), 10),
                 RELISTEN_AFTER + 3, "the host heard from again")  # fmt: skip
        assert logged(orch, "database reachable again")
        assert supervisor.poll() is None, "the supervisor did not survive the outage"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    assert b"Traceback" not in err


@pytest.mark.tmux
def test_agents_busy_through_an_outage_are_not_taken_for_hung_after_it(
    orch: OrchState, cluster: Cluster, tmp_path: Any
) -> None:
    """While the server is down the agents' hooks run unrecorded, and the supervisor does not
    tick: the first tick after an outage longer than ``hung_after`` took every agent busy
    through it for hung, and restarted it, its work cut short. Silent once the server is back,
    it still is."""
    from orch_core.supervisor import lifecycle

    socket = str(tmp_path / "tmux.sock")
    orch.env["ORCH_TMUX_SOCKET"] = socket
    orch.write_config("[plugin.auto_restart]\nhung_after = 5\n")
    try:
        spawned = orch.cli("spawn", "r2", "--dir", str(orch.project_dir), "--command", "sleep 600")
        assert spawned.returncode == 0, spawned.stderr
        wait_for(lambda: (lifecycle.supervisor_running(orch.env) or 0) > 0, 10, "supervisor")
        os.kill(lifecycle.supervisor_running(orch.env) or 0, signal.SIGTERM)  # driven here
        wait_for(lambda: not lifecycle.supervisor_running(orch.env), 10, "the supervisor's end")
        orch.store.set_agent_state("r2", "busy", session_id=None, project_dir=None)
        supervisor = lifecycle.Supervisor(orch.env)
        supervisor.upkeep(time.time())
        cluster.pause()
        with pytest.raises(DatabaseUnreachable):
            supervisor.upkeep(time.time())
        time.sleep(11)  # the agent works on, its hooks unrecorded
        cluster.resume()

        def ticked() -> bool:
            try:
                supervisor.upkeep(time.time())
            except DatabaseUnreachable:
                return False
            return True

        wait_for(ticked, 20, "a tick once the server is back")
        assert lifecycle.history(orch.store, "r2") == []
        time.sleep(5.1)  # back, and still no hook
        supervisor.upkeep(time.time())
        assert [(h["step"], h["reason"]) for h in lifecycle.history(orch.store, "r2")] == [
            ("restart", "hung: busy with no hook")
        ]
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, check=False)


def test_the_supervisor_is_back_soon_after_a_server_that_stopped_answering(
    orch: OrchState, mute: Mute
) -> None:
    """The server stops answering (stuck on its disk, or a network gone mid-session) and
    answers again while the backoff is long. The listening connection, idle throughout, is
    never found broken: the supervisor waited on it for the whole backoff (up to 30 s), its
    heartbeat older than ``host_timeout`` meanwhile. Dropped as the outage begins, it is
    opened again every few seconds, and the one that opens brings the next tick forward."""
    from orch_core.supervisor.lifecycle import RELISTEN_AFTER, Supervisor

    mute.muted.clear()
    supervisor = Supervisor({**orch.env, "ORCH_DB": mute.url(orch.env["ORCH_DB"])})
    try:
        supervisor.tick()
        supervisor.wait(0.01)  # listening from here on
        mute.muted.set()
        with pytest.raises(DatabaseUnreachable) as raised:
            supervisor.tick()
        for _ in range(5):  # as after each failed try: 1, 2, 4, 8, 16 s
            pause = supervisor.unreachable(raised.value)
        assert pause == 16.0
        mute.muted.clear()  # the server answers again
        start = time.monotonic()
        supervisor.wait(pause)
        assert time.monotonic() - start < RELISTEN_AFTER + 2
        supervisor.tick()
        supervisor.reachable()
    finally:
        supervisor.close()
    assert logged(orch, "database reachable again")


def supervise(orch: OrchState, seconds: int) -> subprocess.Popen[bytes]:
    """The real ``orch supervise --for SECONDS``, its stderr kept."""
    return subprocess.Popen(
        [orch_script(), "supervise", "--for", str(seconds)],
        env=orch.env,
        cwd=orch.project_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def doctor(orch: OrchState) -> tuple[int, str]:
    done = orch.cli("doctor")
    return done.returncode, done.stdout + done.stderr


# -- a stream of messages across a restart -----------------------------------------------------

SENDER = """
import json, sys, time
from orch_core import api
from orch_core.queue import Queue

count, progress = int(sys.argv[1]), sys.argv[2]
queue = Queue.open()  # one store throughout: its connection is lost, and opened again
failures = []
for i in range(count):
    while True:  # as a script would: try again, with the same key, until it is taken
        try:
            (receipt,) = api.send(sys.argv[3], f"stream {i}", key=f"stream-{i}", sender="stream",
                                  queue=queue)
            break
        except Exception as exc:
            failures.append(type(exc).__name__)
            time.sleep(0.2)
    with open(progress, "a") as f:
        f.write(json.dumps({"i": i, "id": receipt["id"]}) + "\\n")
    time.sleep(0.05)
print(json.dumps(failures))
"""


def restart(cluster: Cluster, seconds: float) -> None:
    """``pg_ctl stop``, a while down, ``pg_ctl start``."""
    cluster.pause()
    time.sleep(seconds)
    cluster.resume()


def test_nothing_is_lost_or_doubled_across_a_restart_of_the_server(
    orch: OrchState, cluster: Cluster
) -> None:
    orch.write_config("[orch]\nbudget_ms = 3000\n[plugin.queue]\nmax_attempts = 1000\n", user=True)
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="warm:1").exit_code == 0
    count = 80
    progress = orch.root / "progress.jsonl"
    progress.touch()
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(count), str(progress), AGENT],
        env=orch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    transcript = orch.root / "stream.jsonl"
    printed: list[str] = []
    outage = threading.Thread(target=restart, args=(cluster, 3.0))
    during = 0  # hooks that ran while the server was down
    try:
        for _ in range(400):
            if outage.ident is None and len(progress.read_text().splitlines()) >= count // 3:
                outage.start()
            down = not cluster.running
            result = orch.run_hook(
                payload("PostToolUse", session_id="stream", transcript_path=str(transcript)),
                ORCH_AGENT=AGENT,
                timeout=30,
            )
            assert result.exit_code == 0, result.stderr
            during += down and not cluster.running
            printed += HEADER.findall(result.context or "")
            with transcript.open("a") as f:  # Claude writes each answer down
                f.write(json.dumps({"type": "attachment", "content": result.stdout}) + "\n")
            if sender.poll() is not None and not Queue(orch.store).has_ready(AGENT):
                break
        out, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.communicate()
        if outage.ident is not None:
            outage.join()
    assert sender.returncode == 0, err.decode()
    assert during >= 2, "no hook ran while the server was down"
    failures = json.loads(out)
    assert failures, "no send met the outage"
    receipts = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [r["i"] for r in receipts] == list(range(count))
    ids = [r["id"] for r in receipts]
    # every message stored once, and handed to the model once
    assert len(set(ids)) == count
    assert Counter(printed) == Counter(dict.fromkeys(ids, 1)), "lost or doubled"
    rows = orch.store.execute("SELECT body, count(*) FROM messages GROUP BY body").fetchall()
    assert sorted(rows) == sorted((f"stream {i}", 1) for i in range(count))
    print(f"{during} hooks while down; sends retried: {Counter(failures)}")
