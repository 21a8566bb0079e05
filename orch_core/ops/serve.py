"""``orch serve``: the fleet in a browser, live, with Prometheus metrics beside it.

One sampler thread reads the store once a second (:func:`orch_core.ops.fleet.snapshot`) and
keeps the figures of the last :data:`HISTORY` snapshots for the charts; every page, JSON
request, event stream and scrape is answered from what it took, so the store is read at most
once a second however many pages are open.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from orch_core.errors import OrchError
from orch_core.ops import fleet, prometheus

if TYPE_CHECKING:
    from collections.abc import Callable
    from urllib.parse import SplitResult

    from orch_core.storage.store import Store

#: Seconds between two snapshots: the most often the store is read.
INTERVAL = 1.0
#: Snapshots whose figures the charts keep (ten minutes at one a second).
HISTORY = 600
#: Event streams open at once; each holds a thread, so one more is refused (503).
MAX_STREAMS = 32
#: Seconds a quiet stream waits before a keep-alive comment; also how long a client that
#: stops reading may hold a thread.
KEEPALIVE = 15.0
#: Paths where the token may come as ``?token=``: those a browser opens without headers.
TOKEN_IN_QUERY = ("/", "/events")
PAGE = Path(__file__).with_name("dashboard.html")


class ServeError(OrchError):
    """The dashboard cannot start as asked."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access(host: str, token: str | None) -> None:
    """Loopback, or a token: the fleet (message bodies included) is for its owner. Both are
    text: bytes that are not UTF-8 (argv, ``ORCH_SERVE_TOKEN``) would fail the bind, or every
    request's check of the token."""
    for option, value in (("--host", host), ("--token", token)):
        try:
            (value or "").encode()
        except UnicodeEncodeError:
            raise ServeError(f"{option} is not text (not UTF-8)") from None
    if not token and not is_loopback(host):
        raise ServeError(
            f"--host {host} is not a loopback address: anyone who reaches it would see the"
            " fleet; give a token with --token or ORCH_SERVE_TOKEN"
        )


class Sampler:
    """The one reader of the store: a snapshot every ``interval`` seconds in one bounded
    thread, the latest kept for every client, a ring of its figures for the charts, and a
    condition clients wait on for the next one."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = INTERVAL,
        history: int = HISTORY,
        take: Callable[[Store, float], dict[str, Any]] = fleet.snapshot,
    ) -> None:
        self.store = store
        self.interval = interval
        self._take = take
        self._points: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._latest: dict[str, Any] = {}
        self._error: str | None = None
        self._seq = 0
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orch-serve-sampler", daemon=True)

    def start(self) -> None:
        """Take the first snapshot here, so a store orch cannot read fails the start, then
        keep sampling in the background."""
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopped.set()
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(self.interval + 5)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def sample(self) -> None:
        """Take one snapshot and wake every client waiting for it."""
        view = self._take(self.store, time.time())
        with self._changed:
            self._seq += 1
            self._latest, self._error = view, None
            self._points.append({"seq": self._seq, **figures(view)})
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                try:
                    self.sample()
                except Exception as exc:  # a locked or damaged store: keep the last picture
                    with self._changed:
                        self._seq += 1
                        self._error = f"{type(exc).__name__}: {exc}"
                        self._changed.notify_all()
        finally:
            self.store.release()

    def current(self, since: int = 0) -> dict[str, Any]:
        """The latest snapshot, its number, the error of the last try if it failed, and the
        chart figures taken after snapshot ``since``."""
        with self._changed:
            return {
                "seq": self._seq,
                "error": self._error,
                "snapshot": self._latest,
                "points": [p for p in self._points if p["seq"] > since],
            }

    def wait(self, seen: int, timeout: float) -> int:
        """Block until there is something newer than ``seen``, the sampler stops, or
        ``timeout`` passes; the latest number."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seen or self.stopped, timeout)
            return self._seq


def figures(view: dict[str, Any]) -> dict[str, Any]:
    """What the charts plot of one snapshot: queue depth, how long the oldest pending message
    has waited, and delivery latency."""
    now = view["now"]
    waits = [now - a["oldest_pending"] for a in view["agents"] if a["oldest_pending"]]
    return {
        "t": now,
        "depth": sum(sum(a["pending"].values()) for a in view["agents"]),
        "oldest_s": max(waits, default=0.0),
        "latency_p50_s": view["delivery"]["p50_s"],
        "latency_max_s": view["delivery"]["max_s"],
    }


class Dashboard:
    """The HTTP server and its sampler. Refuses a host other than loopback without a token."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        token: str | None = None,
        interval: float = INTERVAL,
        take: Callable[[Store, float], dict[str, Any]] = fleet.snapshot,
    ) -> None:
        check_access(host, token)
        self.host = host
        self.sampler = Sampler(store, interval=interval, take=take)
        self.token = token or None
        self.registry = prometheus.registry(self.sampler.current)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        try:
            self.server = _Server(host, port, self)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host.strip("[]")
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server.server_port}/"

    def start(self) -> None:
        """Serve from a background thread; :meth:`close` stops it."""
        self.sampler.start()
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="orch-serve", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve from this thread until interrupted."""
        self.sampler.start()
        self.server.serve_forever(poll_interval=0.5)

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
        self.sampler.stop()  # wakes every open stream, which then ends
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, dashboard: Dashboard) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.dashboard = dashboard
        super().__init__((host.strip("[]"), port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "orch-serve"
    timeout = KEEPALIVE + 15  # a client that stops reading frees its thread

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: every open page makes a request a second or keeps a stream open."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        route = ROUTES.get(url.path)
        if route is None:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")
        elif not self._host_allowed():
            self._reply(403, b"this dashboard answers to its loopback address only\n",
                        "text/plain; charset=utf-8")  # fmt: skip
        elif not self._authorized(url):
            self._reply(401, b"token required\n", "text/plain; charset=utf-8",
                        {"WWW-Authenticate": 'Bearer realm="orch"'})  # fmt: skip
        else:
            route(self, url)

    def _host_allowed(self) -> bool:
        """Without a token, only a loopback ``Host`` is served: a web page elsewhere cannot
        point its own name at 127.0.0.1 (DNS rebinding) and read the fleet."""
        if self.server.dashboard.token:
            return True
        host = self.headers.get("Host", "")
        name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0]
        return not host or is_loopback(name or host)

    def _authorized(self, url: SplitResult) -> bool:
        token = self.server.dashboard.token
        if token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        # headers arrive decoded as latin-1: back to the bytes the client sent
        offered = given.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""
        if not offered and url.path in TOKEN_IN_QUERY:
            offered = (parse_qs(url.query).get("token") or [""])[0].encode()
        return bool(offered) and hmac.compare_digest(offered, token.encode())

    def _reply(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(headers)
        self.wfile.write(body)

    def _common_headers(self, headers: dict[str, str] | None = None) -> None:
        for name, value in {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",  # the page's address may carry the token
            **(headers or {}),
        }.items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, data: object) -> None:
        self._reply(200, json.dumps(data).encode(), "application/json")

    def page(self, _url: SplitResult) -> None:
        nonce = secrets.token_urlsafe(16)
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}';"
            " connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none';"
            " frame-ancestors 'none'"
        )
        body = PAGE.read_text(encoding="utf-8").replace("{{nonce}}", nonce).encode()
        self._reply(200, body, "text/html; charset=utf-8", {"Content-Security-Policy": policy})

    def fleet(self, _url: SplitResult) -> None:
        state = self.server.dashboard.sampler.current()
        self._json({key: state[key] for key in ("seq", "error", "snapshot")})

    def history(self, _url: SplitResult) -> None:
        state = self.server.dashboard.sampler.current()
        self._json({"seq": state["seq"], "points": state["points"]})

    def metrics(self, _url: SplitResult) -> None:
        self._reply(200, prometheus.render(self.server.dashboard.registry), prometheus.CONTENT_TYPE)

    def events(self, _url: SplitResult) -> None:
        """Server-sent events: ``history`` once (every chart figure kept, and the latest
        snapshot), then ``fleet`` after each new snapshot, with the figures the client lacks."""
        dashboard = self.server.dashboard
        if not dashboard.streams.acquire(blocking=False):
            self._reply(503, b"too many open streams\n", "text/plain; charset=utf-8")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self._common_headers()
            self.wfile.write(b"retry: 2000\n\n")
            sampler = dashboard.sampler
            state = sampler.current()
            self._event("history", state)
            seen = state["seq"]
            while not sampler.stopped:
                if sampler.wait(seen, KEEPALIVE) == seen:
                    self.wfile.write(b": keep-alive\n\n")
                    continue
                state = sampler.current(since=seen)
                seen = state["seq"]
                self._event("fleet", state)
        except OSError:  # the page went away, or stopped reading
            pass
        finally:
            dashboard.streams.release()

    def _event(self, name: str, data: object) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


ROUTES: dict[str, Callable[[_Handler, SplitResult], None]] = {
    "/": _Handler.page,
    "/api/fleet": _Handler.fleet,
    "/api/history": _Handler.history,
    "/events": _Handler.events,
    "/metrics": _Handler.metrics,
}
