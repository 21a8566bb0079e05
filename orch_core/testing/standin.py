"""A local stand-in for the Anthropic Messages API, for driving the real Claude Code binary.

Claude Code is pointed at it with ``ANTHROPIC_BASE_URL``; nothing leaves the machine. Replies
to the main conversation are scripted in advance; everything Claude sends is recorded so tests
can assert on what actually reached the model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

JSON = dict[str, Any]

DEFAULT_TIMEOUT = 60.0
DEFAULT_REPLY_TEXT = "ok"
COMPACTION_SUMMARY = "<analysis>Stand-in.</analysis>\n<summary>Stand-in summary.</summary>"
_COMPACTION_MARKER = "summary of the conversation"


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the stand-in received it."""

    seq: int
    method: str
    path: str
    headers: dict[str, str]
    body: JSON | None
    received_at: float

    @property
    def route(self) -> str:
        """The path without its query string, e.g. ``/v1/messages``."""
        return self.path.split("?", 1)[0]

    @property
    def is_messages(self) -> bool:
        """True for a Messages API call (not count_tokens or anything else)."""
        return self.method == "POST" and self.route == "/v1/messages"

    @property
    def session_id(self) -> str:
        """The Claude Code session that sent this (its ``x-claude-code-session-id`` header)."""
        return self.headers.get("x-claude-code-session-id", "")

    @property
    def model(self) -> str:
        return str((self.body or {}).get("model", ""))

    @property
    def messages(self) -> list[JSON]:
        return list((self.body or {}).get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("name", "")) for t in (self.body or {}).get("tools", [])]

    @property
    def is_compaction(self) -> bool:
        """True for a request that asks the model to summarise the conversation (``/compact``).

        These carry the agent's full tool set (to share its prompt cache), so only the
        instruction in the last message tells them apart.
        """
        return self.is_messages and any(_COMPACTION_MARKER in text for text in self.texts(-1))

    @property
    def is_main_model(self) -> bool:
        """True for a turn of the agent's own conversation, as opposed to a side request.

        The agent's loop always offers its tool set, Bash included. Side jobs either offer no
        tools (session titles, sent only while non-essential traffic is allowed) or are
        compaction summaries. Subagent turns (the Agent tool) do count as main-model turns.
        """
        return self.is_messages and "Bash" in self.tool_names and not self.is_compaction

    def text(self) -> str:
        """The whole body as JSON text, for substring checks that ignore the structure."""
        return json.dumps(self.body, ensure_ascii=False)

    def texts(self, start: int = 0) -> list[str]:
        """Every text in ``messages[start:]``, tool results included; ``-1``: the last message."""
        return [
            text for message in self.messages[start:] for text in _texts(message.get("content"))
        ]

    def tool_result_index(self, tool_use_id: str) -> int | None:
        """Index of the message that carries the result of tool call ``tool_use_id``."""
        for index, message in enumerate(self.messages):
            content = message.get("content")
            if isinstance(content, list) and any(
                isinstance(block, dict)
                and block.get("type") == "tool_result"
                and block.get("tool_use_id") == tool_use_id
                for block in content
            ):
                return index
        return None


def _is_main_of(request: RecordedRequest, session_id: str | None) -> bool:
    return request.is_main_model and session_id in (None, request.session_id)


def _texts(content: Any) -> Iterator[str]:
    """Flatten a message ``content`` (string or list of blocks) into its text pieces."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    yield block["text"]
                yield from _texts(block.get("content"))


@dataclass(frozen=True)
class Reply:
    """An answer of the stand-in model: content blocks and a stop reason, or an HTTP error;
    ``delay`` seconds of "thinking" first, or until ``hold`` is set."""

    blocks: list[JSON] = field(default_factory=list)
    stop_reason: str = "end_turn"
    error_status: int | None = None
    error_type: str = ""
    hold: threading.Event | None = None
    delay: float = 0.0

    @classmethod
    def text(cls, text: str, *, delay: float = 0.0) -> Reply:
        """A plain text answer that ends the turn."""
        return cls(blocks=[{"type": "text", "text": text}], delay=delay)

    @classmethod
    def tool_use(cls, name: str, input: JSON, *, delay: float = 0.0) -> Reply:
        """A call of tool ``name`` with ``input``."""
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name,
                 "input": input}  # fmt: skip
        return cls(blocks=[block], stop_reason="tool_use", delay=delay)


#: Answers a main-model request the script has nothing for; ``None``: the plain default.
Responder = Callable[[RecordedRequest], Reply | None]


class StandInAPI:
    """Threaded HTTP server on 127.0.0.1 that answers Claude Code like the Messages API.

    Scripted replies are handed out in order to main-model requests only, so side requests
    cannot eat them; side requests and an empty script get a plain ``ok`` end_turn reply.
    """

    def __init__(self, lifetime: float = 900.0, *, respond: Responder | None = None) -> None:
        """``lifetime`` bounds how long the server may run if nobody stops it; ``respond``
        answers main-model requests once the script is used up (a model that keeps working)."""
        self.respond = respond
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="standin-api",
            daemon=True,
        )
        self._watchdog = threading.Timer(lifetime, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    # lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to put in ``ANTHROPIC_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._watchdog.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # script

    def reply_text(self, text: str, *, hold: threading.Event | None = None) -> None:
        """Queue a plain text answer that ends the turn. With ``hold``, the answer waits until
        the test sets it (at most the default timeout): the model is "thinking" meanwhile."""
        self._push(Reply(blocks=[{"type": "text", "text": text}], hold=hold))

    def reply_tool_use(self, name: str, input: dict[str, Any], text: str = "") -> str:
        """Queue a tool call (optionally preceded by text); returns its ``tool_use`` id."""
        tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
        blocks: list[JSON] = [{"type": "text", "text": text}] if text else []
        blocks.append({"type": "tool_use", "id": tool_id, "name": name, "input": input})
        self._push(Reply(blocks=blocks, stop_reason="tool_use"))
        return tool_id

    def reply_error(self, status: int, error_type: str) -> None:
        """Queue an HTTP error answer, e.g. ``(529, "overloaded_error")``."""
        self._push(Reply(error_status=status, error_type=error_type))

    def pending_replies(self) -> int:
        """How many scripted replies have not been handed out yet."""
        with self._lock:
            return len(self._script)

    def _push(self, reply: Reply) -> None:
        with self._lock:
            self._script.append(reply)

    # recorded traffic

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to_main_model(self, session_id: str | None = None) -> list[RecordedRequest]:
        """The agents' own turns, without side requests (see ``RecordedRequest.is_main_model``).

        With ``session_id``, only those of that Claude Code session.
        """
        return [r for r in self.requests if _is_main_of(r, session_id)]

    def wait_for(
        self,
        predicate: Callable[[list[RecordedRequest]], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "condition",
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds; return that snapshot or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                snapshot = list(self._requests)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"stand-in API: no {what} after {timeout:.0f}s; "
                        f"received {self._summary(snapshot)}"
                    )
                self._lock.wait(min(remaining, 1.0))

    def wait_for_main_requests(
        self, count: int, timeout: float = DEFAULT_TIMEOUT, session_id: str | None = None
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` main-model requests arrived; return them all."""
        self.wait_for(
            lambda reqs: sum(_is_main_of(r, session_id) for r in reqs) >= count,
            timeout,
            what=f"{count} main-model request(s)",
        )
        return self.requests_to_main_model(session_id)

    @staticmethod
    def _summary(requests: list[RecordedRequest]) -> str:
        if not requests:
            return "nothing"
        return ", ".join(
            f"{r.method} {r.route} model={r.model or '-'} main={r.is_main_model}" for r in requests
        )

    # serving

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: JSON | None
    ) -> tuple[RecordedRequest, Reply | None]:
        """Store a request; hand it the next scripted reply if it is a main-model turn."""
        with self._lock:
            request = RecordedRequest(
                len(self._requests) + 1, method, path, headers, body, time.time()
            )
            self._requests.append(request)
            reply = self._script.popleft() if request.is_main_model and self._script else None
            self._lock.notify_all()
            return request, reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(_Handler):
            standin = api

        return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a killed Claude) is no error of the server's."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request; the owning StandInAPI is set on a per-server subclass."""

    standin: StandInAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; the recorded requests are the log."""

    def do_GET(self) -> None:
        self._handle(None)

    def do_HEAD(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._handle(body if isinstance(body, dict) else None)

    def _handle(self, body: JSON | None) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        request, reply = self.standin._record(self.command, self.path, headers, body)
        if request.is_messages:
            if reply is None and request.is_main_model and self.standin.respond is not None:
                reply = self.standin.respond(request)
            self._answer_messages(request, reply or _default_reply(request))
        elif request.method == "POST" and request.route == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": _estimate_tokens(request)})
        else:
            self._send_json(404, _error_body("not_found_error", f"no route {request.route}"))

    def _answer_messages(self, request: RecordedRequest, reply: Reply) -> None:
        if reply.hold is not None:
            reply.hold.wait(DEFAULT_TIMEOUT)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.error_status is not None:
            self._send_json(
                reply.error_status, _error_body(reply.error_type, "scripted stand-in error")
            )
            return
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.model or "claude-standin",
            "content": reply.blocks,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": _estimate_tokens(request), "output_tokens": 1},
        }
        if (request.body or {}).get("stream"):
            self._send_sse(message)
        else:
            self._send_json(200, message)

    def _send_json(self, status: int, payload: JSON) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_standin_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_sse(self, message: JSON) -> None:
        data = b"".join(
            f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            for event in _stream_events(message)
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_standin_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        self.wfile.write(data)


def _default_reply(request: RecordedRequest) -> Reply:
    """Plain ``ok``; a well-formed summary for compaction, so Claude accepts it first time."""
    text = COMPACTION_SUMMARY if request.is_compaction else DEFAULT_REPLY_TEXT
    return Reply(blocks=[{"type": "text", "text": text}])


def _error_body(error_type: str, message: str) -> JSON:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _estimate_tokens(request: RecordedRequest) -> int:
    """A rough token count (4 characters a token) so usage numbers look plausible."""
    return max(1, len(request.text()) // 4)


def _stream_events(message: JSON) -> Iterator[JSON]:
    """The server-sent events that stream ``message`` the way the real API does."""
    head = {**message, "content": [], "stop_reason": None}
    yield {"type": "message_start", "message": head}
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {**block, "input": {}},
            }
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            delta = {"type": "text_delta", "text": block["text"]}
        yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": message["usage"]["output_tokens"]},
    }
    yield {"type": "message_stop"}
