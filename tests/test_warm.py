"""Warm answers: on PostgreSQL, the host's supervisor does the work of ``orch-hook`` and
``orch send`` for them, over a socket in the state folder, so that neither imports psycopg.

Real processes throughout: the real ``orch supervise``, the real hook and CLI (the hook's
imports watched by an audit hook in its own process), a real PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orch_core import paths
from orch_core.cli import doctor
from orch_core.hook import warm
from orch_core.queue import Queue
from orch_core.supervisor import lifecycle
from orch_core.supervisor.warm import WarmServer
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import TmuxServer, wait_until

# Hooks that do their own work import psycopg and connect: on a loaded machine that may outlast
# the default budget, and these tests are of who answers, not of time.
pytestmark = [pytest.mark.orch_backends("postgresql"), pytest.mark.orch_roomy_hooks]


#: orch-hook's own ``main`` (or orch's), in a process that notes each heavy module it imports:
#: psycopg, and socket (7 ms: the hook's side of the exchange needs only ``_socket``).
HOOK = """
import sys
seen = sys.argv[1]
def audit(event, args):
    if event == "import" and args[0].split(".")[0] in ("psycopg", "socket"):
        with open(seen, "a") as f:
            f.write(args[0].split(".")[0] + "\\n")
sys.addaudithook(audit)
if sys.argv[2] == "hook":
    from orch_core.hook.dispatch import main
else:
    from orch_core.cli import run as main
    sys.argv[1:] = sys.argv[3:]
main()
"""


class Ran:
    def __init__(
        self, done: subprocess.CompletedProcess[bytes], imported: list[str], state: Path
    ) -> None:
        self.code = done.returncode
        self.stdout = done.stdout.decode()
        self.stderr = done.stderr.decode()
        self.heavy = set(imported)
        self.imported_psycopg = "psycopg" in self.heavy
        # a run the backstop ended (exit 1) left its threads' stacks there: what held it up
        self.stopped = [p.read_text(errors="replace") for p in state.glob("running/*")]

    def __repr__(self) -> str:
        return f"Ran(code={self.code}, stderr={self.stderr!r}, stopped={self.stopped!r})"

    @property
    def context(self) -> str:
        output = json.loads(self.stdout) if self.stdout else {}
        return str(output.get("hookSpecificOutput", {}).get("additionalContext", ""))


def run(
    orch: OrchState,
    tmp_path: Path,
    what: str,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> Ran:
    """The real hook (``what`` = "hook") or CLI ("orch" and its ``args``), watched; the agent
    is ``p:1`` unless ``env`` says otherwise."""
    seen = tmp_path / f"imports-{os.urandom(4).hex()}"
    done = subprocess.run(
        [sys.executable, "-c", HOOK, str(seen), what, *args],
        input=stdin, capture_output=True, env=env or {**orch.env, "ORCH_AGENT": "p:1"},
        cwd=orch.project_dir, timeout=60, check=False,
    )  # fmt: skip
    imported = seen.read_text().split() if seen.exists() else []
    return Ran(done, imported, Path((env or orch.env)["ORCH_STATE_DIR"]))


def prompt(orch: OrchState, tmp_path: Path, session: str = "s1") -> Ran:
    event = payload("UserPromptSubmit", session_id=session, cwd=str(orch.project_dir))
    return run(orch, tmp_path, "hook", stdin=json.dumps(event).encode())


def state_of(queue: Queue, message_id: str) -> str:
    message = queue.get(message_id)
    assert message is not None
    return str(message["state"])


def known(orch: OrchState) -> None:
    """Agent ``p:1`` known, and the test's store's plan built (before any plugin of the
    test's own is configured, which its process could not import)."""
    orch.store.add_agent("p:1", "busy", session_id="s1", project_dir=str(orch.project_dir))


@contextlib.contextmanager
def supervising(orch: OrchState) -> Iterator[subprocess.Popen[bytes]]:
    """The host's real ``orch supervise``, answering on its socket, with the plugins the
    test configured before."""
    process = subprocess.Popen(
        [orch_script(), "supervise"], env=orch.env, cwd=orch.project_dir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: os.path.exists(warm.socket_path(orch.env)), what="the supervisor's socket"
        )
        yield process
    finally:
        orch.stop_supervisor()
        process.wait(timeout=30)


@pytest.fixture
def supervisor(orch: OrchState) -> Iterator[subprocess.Popen[bytes]]:
    """The host's real ``orch supervise``, agent ``p:1`` known."""
    known(orch)
    with supervising(orch) as process:
        yield process


def test_a_hook_is_answered_by_the_hosts_supervisor_without_importing_psycopg(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    queue = Queue(orch.store)
    first = queue.send("p:1", "first, through the supervisor")
    warmed = prompt(orch, tmp_path)
    assert (warmed.code, warmed.heavy) == (0, set())
    assert warmed.context.count("first, through the supervisor") == 1
    assert state_of(queue, first["id"]) == "delivered"
    said = f"ok   supervisor: orch supervise runs (pid {supervisor.pid}), answering this host's"
    assert said in orch.cli("doctor").stdout
    # the supervisor gone, the hook does the same work itself
    orch.stop_supervisor()
    supervisor.wait(timeout=30)
    assert not os.path.exists(warm.socket_path(orch.env))
    second = queue.send("p:1", "second, by the hook itself")
    cold = prompt(orch, tmp_path)
    assert (cold.code, cold.imported_psycopg) == (0, True), cold
    assert cold.context.count("second, by the hook itself") == 1
    assert "first, through" not in cold.context
    assert state_of(queue, second["id"]) == "delivered"
    runs = orch.store.execute(
        "SELECT count(*) FROM hook_runs WHERE event = 'UserPromptSubmit' AND agent = 'p:1'"
    ).fetchone()[0]
    assert runs == 2


@pytest.mark.tmux
def test_a_hook_answered_by_the_supervisor_names_its_agent_from_its_own_tmux_server(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    """The supervisor runs outside the hook's tmux: it asks the server the hook's ``$TMUX``
    names, not its own (or none)."""
    with TmuxServer() as tmux:
        pane = tmux.new_window("work", ["sleep", "60"])
        server = tmux.cmd("display-message", "-p", "#{socket_path},#{pid},0").strip()
        env = {**orch.env, "TMUX": server, "TMUX_PANE": pane, "ORCH_HOST": "alpha"}
        event = payload("SessionStart", session_id="s-pane", cwd=str(orch.project_dir))
        warmed = run(orch, tmp_path, "hook", stdin=json.dumps(event).encode(), env=env)
        assert (warmed.code, warmed.imported_psycopg) == (0, False)
        assert orch.store.session_agent("s-pane") == "alpha/orch-test:0"


def test_orch_send_is_sent_by_the_hosts_supervisor_without_importing_psycopg(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    sent = run(orch, tmp_path, "orch", "send", "p:1", "hello warm", "--from", "ci", "-p", "12")
    assert (sent.code, sent.heavy) == (0, set()), sent.stderr
    assert sent.stdout.startswith("queued ") and "priority 12 high" in sent.stdout
    (message,) = Queue(orch.store).messages("p:1")
    assert (message["body"], message["sender"], message["priority"]) == ("hello warm", "ci", 12)
    batch = "\n".join(json.dumps({"agent": "p:1", "text": f"b{i}"}) for i in range(3))
    sent = run(orch, tmp_path, "orch", "send", "--batch", "-", "--json", stdin=batch.encode())
    assert (sent.code, sent.imported_psycopg) == (0, False), sent.stderr
    assert [json.loads(line)["agent"] for line in sent.stdout.splitlines()] == ["p:1"] * 3
    # what the supervisor refuses is said as the command would say it, and stores nothing
    refused = run(orch, tmp_path, "orch", "send", "nobody*", "hi")
    assert refused.code == 1
    assert refused.stderr.strip() == "Error: no known agent matches 'nobody*'"
    batch = '{"agent": "p:1", "text": "ok"}\n\n{"agent": "p:1", "text": "x", "after": "mnope"}\n'
    refused = run(orch, tmp_path, "orch", "send", "--batch", "-", stdin=batch.encode())
    assert (refused.code, refused.imported_psycopg) == (1, False)
    assert refused.stderr.strip() == "Error: --batch line 3: --after: no message with id 'mnope'"
    assert len(Queue(orch.store).messages()) == 4


def test_a_batch_larger_than_the_supervisor_reads_is_sent_by_the_command_itself(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    """Asked, the supervisor stopped reading past ``MAX_REQUEST`` and closed without a word:
    a request a little longer went out whole, and the send failed ("gave no answer ... may be
    queued all the same"), nothing stored. It is not asked: the command sends it itself."""
    size = 100_000
    texts = [f"{n:03d}" + "x" * (size - 3) for n in range(warm.MAX_REQUEST // size)]
    texts.append("y" * (warm.MAX_REQUEST % size + 16_000))  # env and keys: some 20-40 kB more
    batch = "\n".join(json.dumps({"agent": "p:1", "text": text}) for text in texts)
    sent = run(orch, tmp_path, "orch", "send", "--batch", "-", stdin=batch.encode())
    assert (sent.code, sent.stderr, sent.imported_psycopg) == (0, "", True)
    assert sent.stdout.count("queued ") == len(texts)
    assert [m["body"] for m in Queue(orch.store).messages("p:1")] == texts
    assert [r for r in orch.log() if r["level"] == "error"] == []
    assert not os.path.exists(warm.cold_path(orch.env))  # the host's next sends ask it again


def test_the_first_send_and_hook_after_the_server_dropped_the_supervisors_connections_succeed(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    """A server restart ends every session: the connections the supervisor keeps for the next
    send and hook are found dropped and opened afresh, not used to fail that send or hook."""
    sent = run(orch, tmp_path, "orch", "send", "p:1", "up-1")
    assert (sent.code, sent.heavy) == (0, set()), sent.stderr
    assert prompt(orch, tmp_path).context.count("up-1") == 1  # the hooks' connection is kept too
    ended = orch.store.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'orch' AND pid <> pg_backend_pid()"
    ).fetchone()[0]
    assert ended >= 2
    sent = run(orch, tmp_path, "orch", "send", "p:1", "after-restart", "--json")
    assert (sent.code, sent.heavy, sent.stderr) == (0, set(), "")
    warmed = prompt(orch, tmp_path)
    assert (warmed.code, warmed.imported_psycopg) == (0, False), warmed
    assert warmed.context.count("after-restart") == 1
    assert state_of(Queue(orch.store), json.loads(sent.stdout)["id"]) == "delivered"


def test_a_supervisor_that_takes_a_hook_and_never_answers_costs_one_budget(
    orch: OrchState, tmp_path: Path
) -> None:
    """The event may have been handled: it is not dispatched again (a message could arrive
    twice), the hook answers nothing, exit 0, and the host's hooks do their own work for a
    while after."""
    known(orch)
    Queue(orch.store).send("p:1", "waits for a hook that does its own work")
    taken: list[socket.socket] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(warm.socket_path(orch.env))
    listener.listen(8)

    def take() -> None:
        conn, _ = listener.accept()
        taken.append(conn)  # and never a word back

    threading.Thread(target=take, daemon=True).start()
    try:
        silent = prompt(orch, tmp_path)
        assert (silent.code, silent.stdout, silent.imported_psycopg) == (0, "", False)
        assert len(taken) == 1
        said = [r for r in orch.log() if r["msg"].startswith("no reply from the supervisor")]
        assert len(said) == 1 and "timed out" in said[0]["error"]
        cold = prompt(orch, tmp_path)
        assert (cold.code, cold.imported_psycopg) == (0, True), cold
        assert cold.context.count("waits for a hook that does its own work") == 1
        assert len(taken) == 1
        assert doctor.warm_answers(orch.env).startswith(
            "; it left a hook or send unanswered: they do their own work for "
        )
    finally:
        listener.close()
        for conn in taken:
            conn.close()


def _ask(orch: OrchState, within: float = 10, **header: Any) -> dict[str, Any] | None:
    event = json.dumps(payload("PostToolUse", cwd=str(orch.project_dir))).encode()
    request = {"op": "hook", "env": {**orch.env, "ORCH_AGENT": "p:1"}, "began": 0.0, "cwd": ""}
    return warm.ask(orch.env, orch.env["ORCH_DB"], {**request, **header}, event, within=within)


def test_the_supervisor_declines_a_process_it_would_not_answer_as_that_process_would(
    orch: OrchState,
) -> None:
    """Another orch version, another Python path (plugins found elsewhere), another database
    (or the same URL with other ``PG*`` variables), another user: declined, and the process
    does its own work. A request cut short: no answer, nothing done."""
    server = WarmServer(orch.env)
    assert server.start()
    try:
        assert _ask(orch, began=time.time()) == {"stdout": "", "stderr": "", "exit_code": 0}
        assert _ask(orch, version="0.0.1") is None
        assert _ask(orch, path=["/elsewhere", *sys.path[1:]]) is None
        assert _ask(orch, database=orch.new_database()) is None
        for libpq in ({"PGPORT": "1"}, {"PGHOST": "db.elsewhere"}):  # the same URL, elsewhere
            assert _ask(orch, env={**orch.env, "ORCH_AGENT": "p:1", **libpq}) is None
        # a request cut short (its process went away) is not acted on
        runs = orch.store.execute("SELECT count(*) FROM hook_runs").fetchone()[0]
        with pytest.raises(warm.Unanswered):
            _ask(orch, length=10**6)
        assert orch.store.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == runs
        os.unlink(warm.cold_path(orch.env))  # (the host's processes would do their own a while)
        server.uid = os.geteuid() + 1
        assert _ask(orch) is None
        assert not os.path.exists(warm.cold_path(orch.env))  # the host's processes still ask
        assert any(r["msg"] == "supervisor refused a request of another user" for r in orch.log())
    finally:
        server.close()
    assert not os.path.exists(warm.socket_path(orch.env))


#: A socket that answers as the supervisor would, in a process that runs as ``nobody`` from
#: before it listens (the user its clients see), and prints how much it was told; the socket
#: file is nobody's too with ``socket``, else the user's (taken over by another's process).
PLANTED = """
import json, os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
if sys.argv[2] == "socket":
    os.chown(sys.argv[1], 65534, 65534)
os.setgid(65534)
os.setuid(65534)
listener.listen(8)
print("ready", flush=True)
conn, _ = listener.accept()
told = b""
while chunk := conn.recv(1 << 16):
    told += chunk
print(len(told), flush=True)
if told:
    conn.sendall(json.dumps({"stdout": "planted", "stderr": "", "exit_code": 0}).encode() + b"\\n")
conn.close()
"""


def test_a_socket_another_user_planted_or_a_link_to_one_is_never_asked(
    orch: OrchState, tmp_path: Path
) -> None:
    """The request carries the process's whole environment, and the answer is taken as the
    hook's reply (a permission decision among them): only a socket of the user's own, in the
    state folder itself, served by a process of the user's own, is asked; else the process
    does its own work, telling nothing."""
    other = {**orch.env, "ORCH_STATE_DIR": str(tmp_path / "elsewhere")}
    server = WarmServer(other)
    assert server.start()
    paths.ensure_private_dir(orch.env["ORCH_STATE_DIR"])
    try:  # a link to a supervisor's socket is not followed, even one of the user's own
        os.symlink(warm.socket_path(other), warm.socket_path(orch.env))
        assert _ask(orch, began=time.time()) is None
        assert not os.path.exists(warm.cold_path(orch.env))
    finally:
        server.close()
        os.unlink(warm.socket_path(orch.env))
    if os.geteuid() != 0:
        return  # another user's process is one this test cannot start
    for owned in ("socket", "process"):
        planted = subprocess.Popen(
            [sys.executable, "-c", PLANTED, warm.socket_path(orch.env), owned],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert planted.stdout is not None and planted.stdout.readline() == "ready\n"
            assert _ask(orch, began=time.time()) is None, owned
            with socket.socket(socket.AF_UNIX) as done:  # its end, if it was not asked at all
                try:
                    done.connect(warm.socket_path(orch.env))
                except ConnectionRefusedError:  # it was, to learn whose it is, and is gone
                    pass
            told, _ = planted.communicate(timeout=30)
        finally:
            planted.kill()
            planted.wait()
            os.unlink(warm.socket_path(orch.env))
        assert told == "0\n"  # neither the environment nor the event
        assert not os.path.exists(warm.cold_path(orch.env))


PLUGIN = """
import os
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit(event, ctx):
    os._exit(3)
"""


def test_a_plugin_that_calls_os_exit_ends_its_own_call_not_the_supervisor(
    orch: OrchState, tmp_path: Path
) -> None:
    """And once the plugin's code changes, the supervisor, which imported it before, lets the
    hooks run it themselves."""
    known(orch)
    module = orch.plugin_module("exits", PLUGIN)
    orch.write_config('[plugins]\nload = ["exits"]\n')
    with supervising(orch) as process:
        Queue(orch.store).send("p:1", "still delivered")
        warmed = prompt(orch, tmp_path)
        assert (warmed.code, warmed.imported_psycopg) == (0, False)
        assert warmed.context.count("still delivered") == 1
        assert process.poll() is None
        assert lifecycle.supervisor_running(orch.env) == process.pid
        refused = "os._exit(3) called by a plugin; refused"

        def logged() -> bool:  # the supervisor logs the run after it gave the reply
            return refused in json.dumps([r for r in orch.log() if r["msg"] == "plugins failed"])

        wait_until(logged, what="the refused exit in the log")
        module.write_text(PLUGIN.replace("os._exit(3)", "return 'changed'"))
        later = time.time_ns() + 10**9  # whatever the file system's clock
        os.utime(module, ns=(later, later))
        cold = prompt(orch, tmp_path)
        assert (cold.code, cold.imported_psycopg) == (0, True), cold
        assert "changed" in cold.context


def test_a_supervisor_left_unanswered_while_the_clock_was_ahead_is_asked_again_once_set_back(
    orch: OrchState,
) -> None:
    """A hook left unanswered an hour ahead of the clock set since: the hooks were to do their
    own work (import psycopg, connect) for 30 s, not for that hour."""
    path = warm.cold_path(orch.env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    open(path, "w").close()
    ahead = time.time() + 3600
    os.utime(path, (ahead, ahead))
    assert warm.cold_for(orch.env) == 0


GROWS = """
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit():
    return "one"
"""


def test_a_hook_a_plugin_gains_runs_though_the_supervisor_imported_it_before(
    orch: OrchState, tmp_path: Path
) -> None:
    """The supervisor rebuilt the plan from the module it had imported, without the new hook,
    and saved it: the hooks, doing their own work, took that plan and never ran the hook."""
    known(orch)
    module = orch.plugin_module("grows", GROWS)
    orch.write_config('[plugins]\nload = ["grows"]\n')
    with supervising(orch):
        warmed = prompt(orch, tmp_path)
        assert (warmed.code, warmed.imported_psycopg, warmed.context) == (0, False, "one")
        module.write_text(GROWS + "\n@hookimpl\ndef orch_post_tool_use():\n    return 'two'\n")
        later = time.time_ns() + 10**9  # whatever the file system's clock
        os.utime(module, ns=(later, later))
        event = payload("PostToolUse", session_id="s1", cwd=str(orch.project_dir))
        cold = run(orch, tmp_path, "hook", stdin=json.dumps(event).encode())
        assert (cold.code, cold.context) == (0, "two"), cold


SLOW_OBSERVER = """
import pathlib, time
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit():
    return "answered early"

@hookimpl
def orch_hook_answered(event):
    time.sleep(0.4)
    pathlib.Path(event.cwd, "observed").write_text("done")
"""


def test_the_supervisor_gives_a_hooks_reply_before_its_observers_and_record(
    orch: OrchState, tmp_path: Path
) -> None:
    """The asking process writes the reply and ends as soon as the answers are folded; the
    supervisor then runs the ``orch_hook_answered`` observers and records the run."""
    known(orch)
    orch.plugin_module("slow_observer", SLOW_OBSERVER)
    orch.write_config('[plugins]\nload = ["slow_observer"]\n')
    with supervising(orch):
        warmed = prompt(orch, tmp_path)
        observed = orch.project_dir / "observed"
        assert not observed.exists(), "the reply waited for the observer"
        assert (warmed.code, warmed.imported_psycopg) == (0, False), warmed
        assert warmed.context == "answered early"
        wait_until(observed.exists, what="the observer")
        recorded = "SELECT count(*) FROM hook_runs WHERE event = 'UserPromptSubmit'"
        wait_until(lambda: orch.store.execute(recorded).fetchone()[0] == 1, what="the record")


SLOW_ANSWER = """
import time
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit():
    time.sleep(0.3)
    return "too late for anyone"
"""


def test_a_hook_whose_process_went_away_is_recorded_and_its_reply_tried_once(
    orch: OrchState, orch_module: Any
) -> None:
    """The asking process ended before its reply came (killed, or past its wait): the run is
    still recorded, and the reply that found nobody is not sent a second time (one line in
    the log says so)."""
    from orch_core import __version__

    orch_module("slow_answer", SLOW_ANSWER)
    orch.write_config('[plugins]\nload = ["slow_answer"]\n')
    server = WarmServer(orch.env)
    assert server.start()
    try:
        event = json.dumps(payload("UserPromptSubmit", cwd=str(orch.project_dir))).encode()
        request = {"version": __version__, "database": orch.env["ORCH_DB"],
                   "path": sys.path[1:], "length": len(event), "op": "hook",
                   "env": {**orch.env, "ORCH_AGENT": "p:1"}, "began": time.time(),
                   "cwd": str(orch.project_dir)}  # fmt: skip
        asking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        asking.settimeout(30)
        asking.connect(warm.socket_path(orch.env))
        asking.sendall(json.dumps(request).encode() + b"\n" + event)
        asking.shutdown(socket.SHUT_WR)
        assert b"answer_by" in asking.recv(1 << 16)
        asking.close()  # gone before the reply
        recorded = "SELECT count(*) FROM hook_runs WHERE event = 'UserPromptSubmit'"
        wait_until(lambda: orch.store.execute(recorded).fetchone()[0] == 1, what="the record")
        time.sleep(0.2)
    finally:
        server.close()
    errors = [line["msg"] for line in orch.log() if line["level"] == "error"]
    assert errors == ["cannot give the reply"], errors


def test_nothing_is_written_or_removed_through_what_someone_planted_in_the_state_folder(
    orch: OrchState, tmp_path: Path
) -> None:
    """A file where the socket goes is left alone (the supervisor answers nothing warm), and
    a link where the cool-down mark goes is not written through."""
    paths.ensure_private_dir(paths.state_dir(orch.env))  # the state folder, as orch makes it
    planted = warm.socket_path(orch.env)
    Path(planted).write_text("not a socket")
    server = WarmServer(orch.env)
    assert server.start() is False
    assert Path(planted).read_text() == "not a socket"
    assert any(r["msg"].startswith("supervisor cannot answer hooks warm") for r in orch.log())
    os.unlink(planted)

    target = tmp_path / "elsewhere"
    target.write_text("kept")
    os.utime(target, (1_000_000_000, 1_000_000_000))
    os.symlink(target, warm.cold_path(orch.env))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(planted)
    listener.listen(1)  # takes the request, never answers
    try:
        with pytest.raises(warm.Unanswered):
            _ask(orch, within=0.2)
    finally:
        listener.close()
    assert (target.read_text(), target.stat().st_mtime) == ("kept", 1_000_000_000)


def test_a_projects_slow_guard_rule_keeps_the_supervisor_answering_the_hosts_hooks(
    orch: OrchState, tmp_path: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    """Python's regular expressions hold the interpreter lock for as long as they run: a
    cloned repository's guard rule that never finishes on a command, checked in the
    supervisor's own process, stopped it answering every hook of the host (the user's own
    rules of every project among them) until the rule finished: the hooks went unanswered,
    and Claude ran their commands unchecked. The project's rules are checked apart."""
    orch.write_config("[plugin.guard]\ndeny = ['(a+)+$']\n")

    def bash(command: str) -> bytes:
        event = payload("PreToolUse", tool_input={"command": command}, cwd=str(orch.project_dir))
        return json.dumps(event).encode()

    assert run(orch, tmp_path, "hook", stdin=bash("ls")).code == 0  # the plan built
    slow = subprocess.Popen(
        [sys.executable, "-c", HOOK, str(tmp_path / "imports-slow"), "hook"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**orch.env, "ORCH_AGENT": "p:1"}, cwd=orch.project_dir,
    )  # fmt: skip
    try:
        slow.communicate(bash("ls # " + "a" * 40 + "!"), timeout=0.8)
    except subprocess.TimeoutExpired:
        pass  # taken by the supervisor, which is checking it
    pushed = run(orch, tmp_path, "hook", stdin=bash("git push --force origin main"))
    asked, _ = slow.communicate(timeout=30)
    assert (pushed.code, pushed.imported_psycopg) == (2, False), pushed
    assert "orch-guard: this command matches deny rule" in pushed.stdout
    assert "orch-guard: the project's rules took too long" in asked.decode()


STOPPED_MIDWAY = """
import pathlib, time
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit(event):
    pathlib.Path(event.cwd, "taken").write_text("")
    time.sleep(1)
    return "answered by the supervisor stopping"
"""


def test_a_supervisor_stopped_while_it_answers_a_hook_gives_its_reply_before_it_ends(
    orch: OrchState, tmp_path: Path
) -> None:
    """``orch supervise`` restarted (after an upgrade, as the README says) while its host's
    hooks were in flight: it ended in the middle of their runs, its messages claimed and its
    guard's denials never told, and each of those hooks answered nothing. It answers them
    first; hooks that come after do their own work."""
    known(orch)
    orch.plugin_module("stopped_midway", STOPPED_MIDWAY)
    orch.write_config('[plugins]\nload = ["stopped_midway"]\n')
    Queue(orch.store).send("p:1", "claimed as the supervisor stopped")
    event = payload("UserPromptSubmit", session_id="s1", cwd=str(orch.project_dir))
    with supervising(orch):
        hook = subprocess.Popen(
            [sys.executable, "-c", HOOK, str(tmp_path / "imports-midway"), "hook"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**orch.env, "ORCH_AGENT": "p:1"}, cwd=orch.project_dir,
        )  # fmt: skip
        assert hook.stdin is not None
        hook.stdin.write(json.dumps(event).encode())
        hook.stdin.close()
        wait_until((orch.project_dir / "taken").exists, what="the supervisor to take the hook")
        orch.stop_supervisor()
    assert hook.stdout is not None
    out = hook.stdout.read()
    assert hook.wait(timeout=30) == 0
    context = json.loads(out)["hookSpecificOutput"]["additionalContext"] if out else ""
    assert context.count("claimed as the supervisor stopped") == 1, out
    assert "answered by the supervisor stopping" in context
    assert not os.path.exists(warm.cold_path(orch.env))


SLOW_IMPORT = """
import os, pathlib, time
from orch_core import hookimpl

importing = pathlib.Path(os.environ["ORCH_STATE_DIR"], "importing")
if not importing.exists():  # the supervisor's import, not the hook's after
    importing.write_text("")
    time.sleep(2)

@hookimpl
def orch_user_prompt_submit():
    return "a plugin the plan gained"
"""


def test_a_supervisor_killed_before_it_took_a_hooks_event_leaves_the_hook_its_own_work(
    orch: OrchState, tmp_path: Path
) -> None:
    """Killed (``kill -9``, the OOM killer) while it rebuilt the plan for a hook's event, before
    it said by when the answer comes (before it acts on the event): the hook answered nothing,
    its messages left for a later hook, and the host's hooks were told to stay away for 30 s
    from a supervisor no longer there. Nothing was done: the hook does its own work."""
    known(orch)
    orch.plugin_module("slow_import", SLOW_IMPORT)
    with supervising(orch) as process:
        assert prompt(orch, tmp_path).code == 0  # the plan without the plugin, warm
        Queue(orch.store).send("p:1", "delivered once all the same")
        orch.write_config('[plugins]\nload = ["slow_import"]\n')
        event = payload("UserPromptSubmit", session_id="s1", cwd=str(orch.project_dir))
        hook = subprocess.Popen(
            [sys.executable, "-c", HOOK, str(tmp_path / "imports-killed"), "hook"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**orch.env, "ORCH_AGENT": "p:1"}, cwd=orch.project_dir,
        )  # fmt: skip
        assert hook.stdin is not None and hook.stdout is not None
        hook.stdin.write(json.dumps(event).encode())
        hook.stdin.close()
        importing = Path(orch.env["ORCH_STATE_DIR"], "importing")
        wait_until(importing.exists, what="the supervisor to import the plugin")

        def asking() -> bool:  # the hook's socket open: connected and told a moment after
            fds = Path(f"/proc/{hook.pid}/fd")
            with contextlib.suppress(OSError):
                return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())
            return False

        wait_until(asking, what="the hook to ask the supervisor")
        time.sleep(0.1)
        process.kill()
        process.wait(timeout=30)
        out = hook.stdout.read()
        assert hook.wait(timeout=30) == 0
    assert out, "the hook answered nothing"
    context = json.loads(out)["hookSpecificOutput"]["additionalContext"]
    assert context.count("delivered once all the same") == 1
    assert "a plugin the plan gained" in context
    assert not os.path.exists(warm.cold_path(orch.env))
    assert not [r for r in orch.log() if r["msg"].startswith("no reply from the supervisor")]
