"""``orch serve``: the dashboard, its JSON, its event stream and its metrics, served from one
sampler over a real store seeded through the queue and hooks run by the real dispatcher; the
page itself in a real headless chromium."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orch_core import paths
from orch_core.ops import fleet, serve
from orch_core.queue import Queue
from orch_core.testing.browser import Browser
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from orch_core.storage.store import Store

#: Seconds between snapshots in these tests: live updates come quickly.
QUICK = 0.2
#: The most events a test reads while waiting for the one it expects.
MAX_EVENTS = 100
DOCS = Path(__file__).resolve().parents[1] / "docs"


def seed(orch: OrchState, agents: tuple[str, ...] = ("lead", "worker")) -> None:
    """Agents known from their hooks (idle at their prompt), and messages waiting for them."""
    for agent in agents:
        orch.run(payload("SessionStart", session_id=f"s-{agent}"), ORCH_AGENT=agent)
    queue = Queue(orch.store)
    queue.send("worker", "build the parser", sender="lead")
    queue.send("worker", "and its tests", priority=10, sender="lead")


class Counting:
    """:func:`fleet.snapshot`, counting the reads of the store."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, store: Store, now: float) -> dict[str, Any]:
        self.calls += 1
        return fleet.snapshot(store, now)


@pytest.fixture
def start(orch: OrchState) -> Iterator[Callable[..., serve.Dashboard]]:
    """Start a dashboard on 127.0.0.1, on a free port; every one is closed after the test."""
    started: list[serve.Dashboard] = []

    def start_one(**options: Any) -> serve.Dashboard:
        options = {"host": "127.0.0.1", "port": 0, "interval": QUICK, **options}
        dashboard = serve.Dashboard(orch.store, **options)
        dashboard.start()
        started.append(dashboard)
        return dashboard

    yield start_one
    for dashboard in started:
        dashboard.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = get(url, headers)
    assert status == 200, body
    return json.loads(body)


class Stream:
    """A server-sent events client: the events of ``/events`` one by one."""

    def __init__(self, dashboard: serve.Dashboard, query: str = "") -> None:
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", dashboard.server.server_port, timeout=10
        )
        self.connection.request("GET", "/events" + query)
        self.response = self.connection.getresponse()

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next event (keep-alive comments and retry hints skipped)."""
        name, data = "message", ""
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                name = text.removeprefix("event: ")
            elif text.startswith("data: "):
                data += text.removeprefix("data: ")
            elif not text and data:
                return name, json.loads(data)

    def until(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(MAX_EVENTS):
            _name, state = self.next()
            if check(state):
                return state
        raise AssertionError(f"no event in {MAX_EVENTS} satisfied the check")

    def close(self) -> None:
        self.response.close()  # the response holds the socket, not the connection
        self.connection.close()


def agents_of(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {agent["id"]: agent for agent in state["snapshot"]["agents"]}


# --- JSON, events, metrics ---------------------------------------------------------------------


def test_the_json_endpoints_show_the_fleet(orch: OrchState, start: Callable[..., Any]) -> None:
    seed(orch)
    orch.run(payload("UserPromptSubmit", session_id="s-lead", prompt="go"), ORCH_AGENT="lead")
    dashboard = start()
    state = get_json(dashboard.url + "api/fleet")
    agents = agents_of(state)
    assert sorted(agents) == ["lead", "worker"]
    assert agents["lead"]["state"] == "busy"
    assert agents["worker"]["state"] == "idle"
    assert agents["worker"]["pending"] == {
        "rebrief": 0, "emergency": 0, "critical": 0, "high": 1, "normal": 1,
    }  # fmt: skip
    assert agents["worker"]["oldest_pending"] is not None
    assert [m["text"] for m in state["snapshot"]["messages"]] == ["and its tests",
                                                                  "build the parser"]  # fmt: skip
    assert state["snapshot"]["hooks"]["runs"] == 3
    assert state["error"] is None
    history = get_json(dashboard.url + "api/history")
    assert history["points"][-1]["depth"] == 2
    assert [p["seq"] for p in history["points"]] == list(range(1, history["seq"] + 1))


def test_the_event_stream_delivers_an_update_after_a_message_is_sent(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    seed(orch)
    dashboard = start()
    stream = Stream(dashboard)
    name, first = stream.next()
    assert name == "history"
    assert agents_of(first)["worker"]["pending"]["normal"] == 1
    assert first["points"][-1]["depth"] == 2
    Queue(orch.store).send("worker", "and the docs", sender="lead")
    later = stream.until(lambda state: agents_of(state)["worker"]["pending"]["normal"] == 2)
    assert later["points"][-1]["depth"] == 3
    assert later["snapshot"]["messages"][0]["text"] == "and the docs"
    assert later["seq"] > first["seq"]
    stream.close()


def test_the_store_is_read_once_per_snapshot_however_many_clients(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    """Four open pages, JSON requests and scrapes between snapshots read nothing: the
    sampler's snapshots are the only reads."""
    seed(orch)
    counting = Counting()
    dashboard = start(interval=3600, take=counting)  # snapshots only when this test takes one
    streams = [Stream(dashboard) for _ in range(4)]
    assert all(stream.next()[1]["seq"] == 1 for stream in streams)
    for _ in range(10):
        get_json(dashboard.url + "api/fleet")
        get_json(dashboard.url + "api/history")
        assert get(dashboard.url + "metrics")[0] == 200
        assert get(dashboard.url)[0] == 200
    assert counting.calls == 1
    for expected in (2, 3):
        dashboard.sampler.sample()
        assert [stream.next()[1]["seq"] for stream in streams] == [expected] * 4
    assert counting.calls == 3
    for stream in streams:
        stream.close()


def test_the_sampler_reads_at_most_once_per_interval_while_clients_pull(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    """With the real interval: however busy the clients, each snapshot is one read, and
    there is no more than one per second."""
    seed(orch)
    counting = Counting()
    began = time.monotonic()
    dashboard = start(interval=serve.INTERVAL, take=counting)
    streams = [Stream(dashboard) for _ in range(3)]
    seen = 0
    while seen < 3:
        for stream in streams:
            seen = stream.next()[1]["seq"]
        get_json(dashboard.url + "api/fleet")
        get(dashboard.url + "metrics")
    for stream in streams:
        stream.close()
    dashboard.close()  # no snapshot is half taken while the reads are counted
    elapsed = time.monotonic() - began
    assert counting.calls <= 1 + elapsed / serve.INTERVAL
    assert counting.calls == dashboard.sampler.current()["seq"]


def test_metrics_are_prometheus_text_with_the_fleets_values_and_labels(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    seed(orch)
    Queue(orch.store).send("lead", "review #42", priority=60, sender="ci")
    orch.run(payload("UserPromptSubmit", session_id="s-lead", prompt="go"), ORCH_AGENT="lead")
    dashboard = start()
    status, headers, body = get(dashboard.url + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    assert all(name.startswith("orch_") for name in names)  # no process_ or python_ defaults
    assert samples["orch_agents", (("state", "busy"),)] == 1
    assert samples["orch_agents", (("state", "idle"),)] == 1
    here = ("host", paths.host({}))  # each agent's series carry its host
    lead, worker = (("agent", "lead"), here), (("agent", "worker"), here)
    assert samples["orch_queue_depth", (worker[0], ("band", "high"), here)] == 1
    assert samples["orch_queue_depth", (worker[0], ("band", "normal"), here)] == 1
    assert samples["orch_queue_depth", (lead[0], ("band", "critical"), here)] == 1  # in flight
    assert samples["orch_queue_depth", (lead[0], ("band", "normal"), here)] == 0
    assert samples["orch_queue_oldest_seconds", worker] > 0
    assert samples["orch_restarts_last_hour", worker] == 0
    assert samples["orch_agent_last_seen_timestamp_seconds", lead] > 0
    assert samples["orch_agent_unreachable", lead] == 0
    assert samples["orch_hook_runs", ()] == 3
    assert samples["orch_hook_failures", ()] == 0
    assert samples["orch_deliveries", ()] == 1
    assert samples["orch_delivery_latency_p50_seconds", ()] >= 0
    assert samples["orch_snapshot_ok", ()] == 1


def test_a_store_that_cannot_be_read_keeps_the_last_picture_and_says_so(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    seed(orch)
    reads = Counting()

    def flaky(store: Store, now: float) -> dict[str, Any]:
        if reads.calls:
            raise sqlite3.OperationalError("database is locked")
        return reads(store, now)

    dashboard = start(take=flaky)
    stream = Stream(dashboard)
    failed = stream.until(lambda state: state["error"] is not None)
    assert failed["error"] == "OperationalError: database is locked"
    assert sorted(agents_of(get_json(dashboard.url + "api/fleet"))) == ["lead", "worker"]
    families = text_string_to_metric_families(get(dashboard.url + "metrics")[2].decode())
    ok = next(f for f in families if f.name == "orch_snapshot_ok")
    assert ok.samples[0].value == 0
    stream.close()


def test_closing_ends_the_streams_and_the_sampler(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    seed(orch)
    dashboard = start()
    stream = Stream(dashboard)
    stream.next()
    dashboard.close()
    with pytest.raises((EOFError, OSError)):
        stream.until(lambda _state: False)
    assert "orch-serve-sampler" not in [thread.name for thread in threading.enumerate()]


def test_one_stream_too_many_is_refused(
    orch: OrchState, start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(orch)
    monkeypatch.setattr(serve, "MAX_STREAMS", 2)
    dashboard = start()
    streams = [Stream(dashboard) for _ in range(2)]
    for stream in streams:
        stream.next()
    status, _, body = get(dashboard.url + "events")
    assert (status, body) == (503, b"too many open streams\n")
    streams[0].close()
    for _ in range(MAX_EVENTS):  # its slot comes back when its handler's next write fails
        dashboard.sampler.sample()
        retry = Stream(dashboard)
        if retry.response.status == 200:
            break
        retry.close()
        time.sleep(0.05)
    else:
        raise AssertionError("the closed stream's slot never came back")
    assert retry.next()[0] == "history"
    retry.close()
    streams[1].close()


# --- access: loopback, token, Host --------------------------------------------------------------


def test_a_host_other_than_loopback_is_refused_without_a_token(orch: OrchState) -> None:
    done = orch.cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: --host 0.0.0.0 is not a loopback address: anyone who reaches it would see"
        " the fleet; give a token with --token or ORCH_SERVE_TOKEN"
    ]
    assert done.stdout == ""
    with pytest.raises(serve.ServeError):
        serve.Dashboard(orch.store, host="192.0.2.1", port=0)
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1")
    assert serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("example.org")


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [(["--token", "s3cret\udcff"], {}, "--token"),
     ([], {"ORCH_SERVE_TOKEN": "s3cret\udcff"}, "--token"),
     (["--host", "local\udcffhost", "--token", "s3cret"], {}, "--host")],
)  # fmt: skip
def test_a_token_or_host_that_is_not_text_is_refused_before_serving(
    orch: OrchState, args: list[str], env: dict[str, str], said: str
) -> None:
    """Bytes that are not UTF-8 (in argv or ORCH_SERVE_TOKEN) are no token a client could send,
    nor a name to listen on: one line, before anything listens (the token is not shown)."""
    done = subprocess.run(
        [orch_script(), "serve", "--port", "0", *args], capture_output=True, text=True,
        env={**orch.env, **env}, cwd=orch.project_dir, timeout=30, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"Error: {said} is not text (not UTF-8)\n"


def test_with_a_token_every_request_needs_it(orch: OrchState, start: Callable[..., Any]) -> None:
    seed(orch)
    dashboard = start(token="s3cret-token")
    url = dashboard.url
    good = {"Authorization": "Bearer s3cret-token"}
    for path in ("", "api/fleet", "api/history", "events", "metrics"):
        status, headers, _ = get(url + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Bearer realm="orch"'
        assert get(url + path, {"Authorization": "Bearer s3cret-tokeN"})[0] == 401, path
        assert get(url + path + "?token=wrong")[0] == 401, path
    for path in ("", "api/fleet", "api/history", "metrics"):
        assert get(url + path, good)[0] == 200, path
    # the query string is for what a browser opens without headers: the page and its stream
    assert get(url + "?token=s3cret-token")[0] == 200
    stream = Stream(dashboard, "?token=s3cret-token")
    assert stream.next()[0] == "history"
    stream.close()
    assert get(url + "api/fleet?token=s3cret-token")[0] == 401
    assert get(url + "metrics?token=s3cret-token")[0] == 401


def test_the_cli_takes_its_token_from_the_environment(orch: OrchState) -> None:
    env = {**orch.env, "ORCH_SERVE_TOKEN": "from-env"}
    seed(orch)
    process = subprocess.Popen(
        [orch_script(), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=orch.project_dir,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("orch serve: http://127.0.0.1:"), line
        assert line.rstrip().endswith("/ (token required)")
        url = line.split()[2]
        assert get(url + "api/fleet")[0] == 401
        state = get_json(url + "api/fleet", {"Authorization": "Bearer from-env"})
        assert sorted(agents_of(state)) == ["lead", "worker"]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_without_a_token_only_a_loopback_host_header_is_served(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    """A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) reads nothing."""
    seed(orch)
    dashboard = start()
    port = dashboard.server.server_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert get(dashboard.url + "api/fleet", {"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"10.0.0.1:{port}"):
        assert get(dashboard.url + "api/fleet", {"Host": host})[0] == 403, host


def test_the_page_renders_data_as_text_under_a_strict_policy(
    orch: OrchState, start: Callable[..., Any]
) -> None:
    dashboard = start()
    status, headers, body = get(dashboard.url)
    assert status == 200
    page = body.decode()
    policy = headers["Content-Security-Policy"]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page
    assert "default-src 'none'" in policy
    assert "{{nonce}}" not in page
    assert get(dashboard.url)[1]["Content-Security-Policy"] != policy  # a nonce per response
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in page, sink
    assert headers["Referrer-Policy"] == "no-referrer"


# --- the page in a real browser -----------------------------------------------------------------


class Rows(HTMLParser):
    """The agents table of a dumped DOM: each agent's name and pending total."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.pending: dict[str, int] = {}
        self._agent: str | None = None
        self._in_pending = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "data-agent" in found:
            self._agent = found["data-agent"]
        self._in_pending = tag == "span" and found.get("class") == "pending"

    def handle_data(self, data: str) -> None:
        if self._in_pending and self._agent is not None:
            self.pending[self._agent] = int(data)
            self._in_pending = False


def chromium_browser(tmp_path: Path) -> Browser:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run `make setup` (it installs Debian's chromium)")
    return Browser(tmp_path / "chromium", width=1280, height=900)


HOSTILE = '<img src=x id="pwn" onerror="document.title=1">'
FLEET = ("lead", "reviewer", "worker-1", "worker-2", HOSTILE)


def work(orch: OrchState, agent: str) -> None:
    """One tool call of ``agent``: its hook hands it what waits, and Claude writes that into
    the session's transcript, where the next call's hook confirms it."""
    session = f"s{FLEET.index(agent)}"
    transcript = orch.root / f"{session}.jsonl"
    transcript.touch()
    done = orch.run(
        payload("PostToolUse", session_id=session, transcript_path=str(transcript)),
        ORCH_AGENT=agent,
    )
    if done.context:
        with transcript.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"type": "attachment", "content": done.context}) + "\n")


def keep_working(orch: OrchState, browser: Browser, rounds: int) -> None:
    """The fleet at work for a while, so the charts have something to show: messages come in
    for some agents while others work through theirs, a snapshot or two each round."""
    queue = Queue(orch.store)
    for turn in range(rounds):
        if turn % 3 != 2:
            queue.send(f"worker-{turn % 2 + 1}", f"Step {turn} of the parser", sender="lead")
        if turn % 7 == 0:
            queue.send("reviewer", f"Review change {turn}", priority=60, sender="ci")
        if turn % 11 == 0:
            queue.send("lead", f"Status report {turn}", priority=10, sender="ci")
        for agent, every in (("worker-1", 2), ("worker-2", 3), ("reviewer", 5), ("lead", 4)):
            if turn % every == 0:
                work(orch, agent)
        seq = browser.evaluate("Number(document.body.dataset.seq)")
        browser.wait_for(f"Number(document.body.dataset.seq) >= {seq + 2}")


def cell(agent: str, what: str) -> str:
    """A JavaScript expression: the text of the ``what`` element in ``agent``'s row."""
    return f"document.querySelector('tr[data-agent={json.dumps(agent)}] {what}').textContent"


def test_the_page_in_a_real_browser_shows_the_fleet_and_follows_it(
    orch: OrchState, start: Callable[..., Any], tmp_path: Path
) -> None:
    for index, agent in enumerate(FLEET):
        orch.run(payload("SessionStart", session_id=f"s{index}"), ORCH_AGENT=agent)
    queue = Queue(orch.store)
    queue.send("worker-1", "Build the parser", sender="lead")
    queue.send("worker-2", "Write the tests <b>now</b>", priority=10, sender="lead")
    dashboard = start(token="page-token")
    rows = "document.querySelectorAll('#agents tr[data-agent]').length"
    with chromium_browser(tmp_path) as browser:
        browser.goto(dashboard.url + "?token=page-token")
        assert browser.wait_for(f"{rows} === 5 && Number(document.body.dataset.seq)")
        before = Rows(browser.dom())
        assert sorted(before.pending) == sorted(FLEET)  # the hostile name, as a name
        assert before.pending == {**dict.fromkeys(FLEET, 0), "worker-1": 1, "worker-2": 1}
        assert browser.evaluate("document.getElementById('pwn') === null")
        assert browser.evaluate("document.querySelectorAll('#messages b').length") == 0
        assert browser.evaluate("document.title") == "orch fleet"
        assert browser.evaluate("document.getElementById('status').textContent") == "live"

        queue.send("worker-1", "Then the docs", sender="lead")
        queue.send("lead", "Review #42", priority=60, sender="ci")
        browser.wait_for(
            f"{cell('worker-1', '.pending')} === '2' && {cell('lead', '.pending')} === '1'"
        )
        after = Rows(browser.dom())
        assert after.pending == {**before.pending, "worker-1": 2, "lead": 1}
        messages = browser.evaluate(
            "[...document.querySelectorAll('#messages td.text')].map(td => td.textContent)"
        )
        assert messages[:2] == ["Review #42", "Then the docs"]

        work(orch, "worker-1")  # takes both...
        work(orch, "worker-1")  # ...which the next call finds in the transcript
        browser.wait_for(f"{cell('worker-1', '.pending')} === '0'")
        assert browser.evaluate(cell("worker-1", ".badge")) == "busy"
        assert browser.evaluate("document.querySelectorAll('#chart-depth path').length") == 1

        if os.environ.get("ORCH_SCREENSHOTS") == "docs":
            keep_working(orch, browser, rounds=60)
        shot = browser.screenshot(tmp_path / "dashboard.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("ORCH_SCREENSHOTS") == "docs":
        shutil.copyfile(shot, DOCS / "dashboard.png")
