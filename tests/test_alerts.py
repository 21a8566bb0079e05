"""Alerts: recorded once while their condition lasts, sent by the supervisor through apprise to
a real HTTP receiver on 127.0.0.1 (a ``json://`` URL) and to plugins' own channels, retried a
bounded number of times, listed and acknowledged with ``orch alerts``. The channels come from the
user's own config only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from orch_builtin import auto_restart

from orch_core import paths
from orch_core.ops import alerts
from orch_core.queue import Queue
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload


class Receiver:
    """A webhook endpoint on 127.0.0.1: keeps each POST (path and JSON body) and answers
    ``status``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, json.loads(body)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/orch") -> str:
        return f"json://127.0.0.1:{self.server.server_port}{path}"

    def messages(self, path: str = "/orch") -> list[str]:
        return [body["message"] for at, body in self.posts if at == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def channel(orch: OrchState, receiver: Receiver, extra: str = "") -> None:
    """The user's own config sends alerts to the receiver, looking at every tick."""
    orch.write_config(f'[alerts]\nurls = ["{receiver.url()}"]\ncheck_every = 0\n{extra}', user=True)


def ticks(supervisor: lifecycle.Supervisor, *times: float) -> None:
    """Supervisor steps at these times, each waiting for the alerts it sends."""
    for now in times:
        supervisor.tick(now)
        supervisor.settle(30)


def listed(orch: OrchState) -> list[dict[str, Any]]:
    done = orch.cli("alerts", "--json")
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_a_dead_message_is_one_alert_and_one_post_across_ticks(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver)
    store = orch.store
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=str(orch.project_dir))
    queue = Queue(store)
    first = queue.send("a:1", "first")["id"]
    second = queue.send("a:1", "then this", after=first)["id"]
    queue.cancel(first)  # the message it waits for ends undelivered: it goes dead
    supervisor = lifecycle.Supervisor(orch.env)
    now = time.time()
    ticks(supervisor, now, now + 1, now + 2, now + 60, now + 600)
    assert (queue.get(second) or {}).get("state") == "dead"
    (message,) = receiver.messages()
    assert message.startswith(f"message {second} for a:1 is dead: waited for {first}")
    (alert,) = listed(orch)
    assert (alert["agent"], alert["kind"], alert["message"]) == ("a:1", "dead", message)
    assert alert["sent"] is not None and alert["acked"] is None
    lines = orch.cli("alerts").stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{alert['id']}\t")
    assert "\ta:1\tdead\t-\tsent\tmessage " in lines[0]


def test_a_projects_config_cannot_add_or_change_the_urls(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver)
    orch.write_config(f'[alerts]\nurls = ["{receiver.url("/theirs")}"]\nqueue_depth = 1\n')
    done = orch.cli("alerts")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "orch.toml: [alerts] urls: only your own config may set this, not a project's; " in (
        done.stderr
    )
    assert "your own value is used" in done.stderr
    doctor = orch.cli("doctor").stdout
    assert "FAIL config: " in doctor and "[alerts] urls: only your own config" in doctor
    # the supervisor sends to the user's URL only, and logs why
    store = orch.store
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=str(orch.project_dir))
    Queue(store).send("a:1", "one is deep enough here")  # the project's own threshold counts
    ticks(lifecycle.Supervisor(orch.env), time.time())
    assert receiver.messages() == ["1 message waiting for a:1"]
    assert receiver.messages("/theirs") == []
    assert any("[alerts] urls: only your own config" in line["msg"] for line in orch.log())
    # the other spelling is refused the same way
    orch.write_config(f'[plugin.alerts]\nurls = ["{receiver.url("/theirs")}"]\n')
    assert "[alerts] urls: only your own config" in orch.cli("alerts").stderr


def test_a_url_that_is_not_one_is_refused(orch: OrchState) -> None:
    orch.write_config('[alerts]\nurls = ["slack"]\n', user=True)
    done = orch.cli("alerts")
    assert done.returncode == 1
    assert "[alerts] urls: item 1 is not a URL (scheme://...); the default [] is used" in (
        done.stderr
    )


@pytest.mark.parametrize(
    "urls",
    [
        '["json://127.0.0.1:9/hook/SECRETPATH", "ntfy:/ntfy.sh/SECRETTOPIC"]',
        '"ntfy://ntfy.sh/SECRETTOPIC"',  # a URL where a list should be
    ],
)
def test_urls_that_are_refused_are_not_quoted(orch: OrchState, urls: str) -> None:
    """Every command, ``orch doctor`` and the log say why the URLs are refused without quoting
    them: the good ones and the bad alike hold their channel's token."""
    orch.write_config(f"[alerts]\nurls = {urls}\n", user=True)
    done = orch.cli("alerts")
    orch.run_hook(payload("SessionStart"), ORCH_AGENT="a:1")
    logged = [line["msg"] for line in orch.log() if "[alerts] urls" in line["msg"]]
    doctor = orch.cli("doctor").stdout
    for shown in (done.stderr, doctor, json.dumps(logged)):
        assert "SECRET" not in shown
    assert done.returncode == 1 and "[alerts] urls: " in done.stderr
    assert logged and "FAIL config: " in doctor and "[alerts] urls: " in doctor


def test_an_agent_given_up_on_is_one_alert_until_it_runs_again_and_ack_silences_it(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver)
    failure = payload("StopFailure", error="billing_error")
    orch.run_hook(failure, ORCH_AGENT="a:1")
    orch.run_hook(failure, ORCH_AGENT="a:1")  # the same error again: still the same failure
    (alert,) = listed(orch)
    assert (alert["kind"], alert["agent"]) == ("failed", "a:1")
    assert alert["message"] == "a:1 failed: StopFailure billing_error; no automatic restart"
    done = orch.cli("alerts", "ack", str(alert["id"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"acknowledged alert {alert['id']}: {alert['message']}\n"
    ticks(lifecycle.Supervisor(orch.env), time.time())
    assert receiver.posts == []  # acknowledged before it went out: never sent
    (alert,) = listed(orch)
    assert alert["acked"] is not None and alert["sent"] is None
    assert "\tacked\tunsent\t" in orch.cli("alerts").stdout
    orch.run_hook(payload("SessionStart"), ORCH_AGENT="a:1")  # a user started it again
    orch.run_hook(failure, ORCH_AGENT="a:1")
    ticks(lifecycle.Supervisor(orch.env), time.time())
    assert [a["acked"] is None for a in listed(orch)] == [False, True]
    assert receiver.messages() == [alert["message"]]


def test_an_alert_quoting_a_payload_is_one_line_in_the_listing(orch: OrchState) -> None:
    """A notification's text (a hook payload's) reaches the message of the agent given up on:
    its newline and tabs print no line that reads as another alert."""
    orch.write_config(
        '[plugin.auto_restart]\nmax_restarts_per_hour = 0\nerror_patterns = ["overloaded"]\n'
    )
    forged = "overloaded\n7\t2026-01-01 00:00:00\tlead\tfailed\tacked\tsent\tall is well"
    orch.run_hook(payload("Notification", message=forged), ORCH_AGENT="a:1")
    (alert,) = listed(orch)
    assert forged in alert["message"]  # --json stays exact
    done = orch.cli("alerts")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.split("\t")[2:6] == ["a:1", "failed", "-", "sending"]
    assert line.count("\t") == 6
    done = orch.cli("alerts", "ack", str(alert["id"]))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and "\t" not in done.stdout


@pytest.mark.parametrize("given", ["999", "x", "0", "9" * 24])
def test_acknowledging_an_unknown_alert_is_a_one_line_error(orch: OrchState, given: str) -> None:
    done = orch.cli("alerts", "ack", given)
    assert done.returncode == 1
    assert done.stderr == f"Error: no alert with id {given!r} (see `orch alerts`)\n"


def test_an_agent_waiting_for_input_past_the_threshold_is_one_alert_per_wait(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver, "needs_input_after = 120\n")
    store = orch.store
    project = str(orch.project_dir)
    supervisor = lifecycle.Supervisor(orch.env)
    store.set_agent_state("a:1", "needs_input", session_id=None, project_dir=project)
    start = time.time()
    ticks(supervisor, start + 60)
    assert listed(orch) == []  # not long enough yet
    ticks(supervisor, start + 121, start + 200, start + 400)
    assert receiver.messages() == ["a:1 has been waiting for input for 2m"]
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=project)
    ticks(supervisor, start + 401)  # given input: that wait is over
    store.set_agent_state("a:1", "needs_input", session_id=None, project_dir=project)
    ticks(supervisor, start + 402, start + 403)
    assert [a["kind"] for a in listed(orch)] == ["needs_input", "needs_input"]
    assert len(receiver.posts) == 2


def test_a_deep_queue_and_an_old_message_are_alerts_with_the_projects_thresholds(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver)
    orch.write_config("[alerts]\nqueue_depth = 4\nqueue_age = 600\n")  # thresholds: per project
    store = orch.store
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=str(orch.project_dir))
    queue = Queue(store)
    sent = [queue.send("a:1", f"job {n}")["id"] for n in range(4)]
    queue.send("a:1", "for tomorrow", not_before=time.time() + 86400)  # not waiting yet
    supervisor = lifecycle.Supervisor(orch.env)
    now = time.time()
    ticks(supervisor, now, now + 1)
    assert receiver.messages() == ["5 messages waiting for a:1"]
    for message_id in sent[:3]:  # down to 2: half the threshold still holds the alert
        queue.cancel(message_id)
    ticks(supervisor, now + 2)
    queue.cancel(sent[3])  # down to 1: the alert ends
    ticks(supervisor, now + 3)
    for n in range(3):
        queue.send("a:1", f"more {n}")
    ticks(supervisor, now + 4, now + 700)
    assert receiver.messages() == [
        "5 messages waiting for a:1",
        "4 messages waiting for a:1",
        "the oldest message for a:1 has waited 11m",
    ]


def test_a_retried_message_waits_from_its_retry_for_the_queue_age_alert(
    orch: OrchState, receiver: Receiver
) -> None:
    channel(orch, receiver, "queue_age = 600\n")
    store = orch.store
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=str(orch.project_dir))
    queue = Queue(store)
    now = time.time()
    sent = queue.send("a:1", "from yesterday", now=now - 86_400)["id"]
    queue.cancel(sent, now=now - 86_000)
    queue.retry(sent, now=now)
    supervisor = lifecycle.Supervisor(orch.env)
    ticks(supervisor, now + 1, now + 2)
    assert receiver.messages() == []  # it has waited since its retry, not since yesterday
    ticks(supervisor, now + 700)
    assert receiver.messages() == ["the oldest message for a:1 has waited 11m"]


FAILING = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use(ctx):
    raise RuntimeError("boom")
"""


def test_hook_failures_past_the_rate_are_one_alert_per_project(
    orch: OrchState, receiver: Receiver, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("failing", FAILING)
    channel(orch, receiver, "hook_failures = 3\nhook_failure_window = 600\n")
    orch.write_config('[plugins]\nload = ["failing"]\n')
    supervisor = lifecycle.Supervisor(orch.env)
    for _ in range(2):
        assert orch.run_hook(payload("PostToolUse"), ORCH_AGENT="a:1").exit_code == 0
    ticks(supervisor, time.time())
    assert listed(orch) == []
    for _ in range(2):
        orch.run_hook(payload("PostToolUse"), ORCH_AGENT="b:1")
    ticks(supervisor, time.time(), time.time() + 1)
    (message,) = receiver.messages()
    assert message == (
        f"4 hook runs failed in {orch.project_dir} in the last 10m; latest PostToolUse of b:1:"
        " failing error RuntimeError: boom"
    )
    ticks(supervisor, time.time() + 700)  # out of the window: over
    assert [a["kind"] for a in listed(orch)] == ["hook_failures"]


CHANNEL = """
import json
from orch_core import hookimpl

@hookimpl
def orch_alert(alert, ctx):
    with open(ctx.env["CHANNEL_LOG"], "a") as log:
        log.write(json.dumps([alert["id"], alert["kind"], alert["agent"], ctx.project_dir]) + "\\n")
    with open(ctx.env["CHANNEL_LOG"]) as log:
        if len(log.readlines()) <= int(ctx.env["CHANNEL_FAILS"]):
            raise ConnectionError("pager unreachable")
    return True
"""


def test_hook_orch_alert_is_a_channel_retried_a_bounded_number_of_times(
    orch: OrchState, receiver: Receiver, orch_module: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A plugin's channel that fails is tried again after 30, 60, 120 s; the apprise URL that
    took the alert at once is not sent it twice."""
    orch_module("pager", CHANNEL)
    orch.env.update(CHANNEL_LOG=str(tmp_path / "pager.log"), CHANNEL_FAILS="2")
    channel(orch, receiver, '[plugins]\nload = ["pager"]\n')
    store = orch.store
    auto_restart.give_up(store, "a:1", "tests", orch.env)
    (alert_id,) = [a["id"] for a in alerts.listing(store)]
    supervisor = lifecycle.Supervisor(orch.env)
    now = time.time()
    ticks(supervisor, now, now + 10, now + 31, now + 60, now + 91, now + 1000)
    calls = [json.loads(line) for line in (tmp_path / "pager.log").read_text().splitlines()]
    assert calls == [[alert_id, "failed", "a:1", str(orch.project_dir)]] * 3
    assert receiver.messages() == ["a:1 failed: tests; no automatic restart"]
    (alert,) = alerts.listing(store)
    assert alert["sent"] is not None and alert["error"] is None
    warned = [line for line in orch.log() if line["msg"] == "alert not sent, will try again"]
    assert [line["error"] for line in warned] == ["pager: pager unreachable"] * 2


def test_a_channel_that_keeps_failing_is_given_up_and_the_supervisor_goes_on(
    orch: OrchState, receiver: Receiver
) -> None:
    receiver.status = 500
    channel(orch, receiver)
    store = orch.store
    auto_restart.give_up(store, "a:1", "tests", orch.env)
    supervisor = lifecycle.Supervisor(orch.env)
    now = time.time()
    ticks(supervisor, *(now + step * 100 for step in range(12)))
    assert len(receiver.posts) == alerts.ATTEMPTS
    (alert,) = alerts.listing(store)
    assert alert["sent"] is None and alert["next_try"] is None
    assert alert["error"].startswith(f"alerts: {receiver.url('/')}...: ")
    (gave_up,) = [line for line in orch.log() if line["msg"] == "alert not sent, giving up"]
    assert gave_up["attempt"] == alerts.ATTEMPTS
    auto_restart.give_up(store, "b:1", "tests", orch.env)  # the supervisor still works
    receiver.status = 200
    ticks(supervisor, now + 2000)
    assert len(receiver.posts) == alerts.ATTEMPTS + 1


def test_a_channel_that_fails_is_named_without_the_secrets_its_url_holds(
    orch: OrchState, receiver: Receiver
) -> None:
    """A webhook's URL may hold its secret in a header apprise sends (``?+Authorization=``),
    a query parameter (``?-key=``) or its path; apprise's "privacy" URL shows them all. The
    failure names the channel by its scheme and host only, in the alert's error and the log."""
    receiver.status = 500
    url = receiver.url("/hook/SECRETPATH") + "?+Authorization=Bearer%20SECRET1&-key=SECRET2"
    orch.write_config(f'[alerts]\nurls = ["{url}"]\ncheck_every = 0\n', user=True)
    store = orch.store
    auto_restart.give_up(store, "a:1", "tests", orch.env)
    ticks(lifecycle.Supervisor(orch.env), time.time())
    assert [path for path, _ in receiver.posts] == ["/hook/SECRETPATH?key=SECRET2"]  # refused
    (alert,) = alerts.listing(store)
    assert alert["error"].startswith(f"alerts: json://127.0.0.1:{receiver.server.server_port}/")
    logged = [line for line in orch.log() if line["msg"] == "alert not sent, will try again"]
    assert [line["error"] for line in logged] == [alert["error"]]
    for shown in (alert["error"], orch.cli("alerts", "--json").stdout, orch.cli("logs").stdout):
        assert "SECRET" not in shown


def test_an_ntfy_channel_that_fails_is_named_without_its_topic(
    orch: OrchState, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ntfy.sh a topic is the only secret: whoever knows it reads the fleet's alerts. apprise
    says which topic it failed to send to, and ``ntfy://TOPIC`` (ntfy.sh's) puts the topic
    where a host would be; neither reaches the alert's error or the log."""
    receiver.status = 500
    own = receiver.url("/").replace("json://", "ntfy://") + "SECRETTOPIC1"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # ntfy.sh unreachable, at once
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    orch.write_config(
        f'[alerts]\nurls = ["{own}", "ntfy://SECRETTOPIC2"]\ncheck_every = 0\n', user=True
    )
    store = orch.store
    auto_restart.give_up(store, "a:1", "tests", orch.env)
    ticks(lifecycle.Supervisor(orch.env), time.time())
    assert [path for path, _ in receiver.posts] == ["/"]  # the topic goes in the body: refused
    (alert,) = alerts.listing(store)
    port = receiver.server.server_port
    assert alert["error"].startswith(f"alerts: ntfy://127.0.0.1:{port}/...: Failed to send ")
    assert "; ntfys://.../...: A Connection error occurred" in alert["error"]
    for shown in (alert["error"], orch.cli("alerts", "--json").stdout, orch.cli("logs").stdout):
        assert "SECRETTOPIC" not in shown


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_an_agent_that_moved_to_another_project_keeps_one_alert_that_ends(
    orch: OrchState, receiver: Receiver, tmp_path: Path
) -> None:
    """An agent's name names it in whichever project it works now (``orch spawn worker`` in
    another repository, a tmux window reused): its alert raised in the project it left is
    ended by the project it is in, and its next deep queue there is a new alert."""
    channel(orch, receiver, "queue_depth = 2\n")
    store = orch.store
    first, second = str(tmp_path / "first"), str(tmp_path / "second")  # neither orch's own
    for project in (first, second):
        Path(project).mkdir()
    host = paths.host(orch.env)  # on a shared store, this host's agent
    store.set_agent_state("a:1", "busy", session_id=None, project_dir=first, host=host)
    queue = Queue(store)
    sent = [queue.send("a:1", f"job {n}")["id"] for n in range(2)]
    supervisor = lifecycle.Supervisor(orch.env)
    now = time.time()
    ticks(supervisor, now)
    store.set_agent_state("a:1", "idle", session_id=None, project_dir=second, host=host)
    ticks(supervisor, now + 1)  # still deep where it is now: the same alert
    for message_id in sent:
        queue.cancel(message_id)
    ticks(supervisor, now + 2)  # its queue drained: that alert ends
    for n in range(2):
        queue.send("a:1", f"more {n}")
    ticks(supervisor, now + 3, now + 4)
    assert receiver.messages() == ["2 messages waiting for a:1"] * 2
    assert [a["project"] for a in listed(orch)] == [second, second]  # the first one moved too
