"""The supervisor's side of warm answers: hooks and sends for the host's own processes.

On a server store, ``orch supervise`` listens on a socket in the owner-only state folder and
does for ``orch-hook`` and ``orch send`` what they would do themselves, on connections it keeps
open (:mod:`orch_core.hook.warm` is the asking side and says why). A hook is dispatched as
``orch-hook`` would: the process's environment, its project's plan and budget, each plugin in a
thread of its own and abandoned at the deadline, a plugin's ``os._exit`` refused. Only
processes of the supervisor's own user are answered; one of another orch version or database is
declined and does its own work.
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from orch_core import __version__, log, paths
from orch_core.hook import warm
from orch_core.hook.answers import Reply
from orch_core.plugins import plan as plans
from orch_core.plugins.plan import Plan
from orch_core.storage import database, open_store
from orch_core.storage.store import Store

#: Requests answered at once; one more is declined (its process does its own work).
MAX_AT_ONCE = 32
#: Seconds a connection may take to send its request.
READ_WITHIN = 5.0
#: The longest request read (the asking side sends none longer).
MAX_REQUEST = warm.MAX_REQUEST
#: Seconds a stopping supervisor waits for the requests it took: their processes wait for the
#: answers (a hook's within the largest budget), and would otherwise answer nothing.
FINISH_WITHIN = plans.MAX_BUDGET_MS / 1000 + plans.ANSWER_MARGIN + plans.OBSERVERS_FLOOR + 1


class WarmServer:
    """Answers hooks and sends on :func:`orch_core.hook.warm.socket_path` until closed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.path = warm.socket_path(env)
        self.database = database(env)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._idle: dict[bool, list[Store]] = {False: [], True: []}
        self._lock = threading.Lock()
        self._busy = threading.BoundedSemaphore(MAX_AT_ONCE)
        self._started_ns = time.time_ns()
        #: The one user whose processes are answered.
        self.uid = os.geteuid()
        self._said_stale = False

    def start(self) -> bool:
        """Listen, in a thread of its own; ``False`` (and a log line) if it cannot."""
        try:
            self._listener = self._bind()
        except OSError as exc:
            log.write("warning", "supervisor cannot answer hooks warm; they do their own work",
                      self.env, error=str(exc))  # fmt: skip
            return False
        _refuse_exit_from_threads()
        threading.Thread(target=self._accept, name="orch-warm", daemon=True).start()
        return True

    def _bind(self) -> socket.socket:
        """The socket, in place of a stale one (this supervisor holds the lock), never of
        anything else found there."""
        if len(os.fsencode(self.path)) >= 108:
            raise OSError(f"{self.path}: too long a path for a socket")
        paths.ensure_private_dir(os.path.dirname(self.path))
        try:
            import stat

            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)  # just made, in a folder nobody else may change
            self._inode = os.lstat(self.path).st_ino
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        return listener

    def close(self) -> None:
        """Stop answering; the socket goes, unless another process replaced it. The requests
        taken are answered first (within :data:`FINISH_WITHIN`): this process's end would end
        them midway, a hook's messages claimed and its reply (a guard's deny) never given."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close does not)
        except OSError:
            pass
        listener.close()
        deadline = time.monotonic() + FINISH_WITHIN
        for _ in range(MAX_AT_ONCE):  # each request taken holds one until it is answered
            if not self._busy.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        with self._lock:
            stores = self._idle[False] + self._idle[True]
            self._idle = {False: [], True: []}
        for store in stores:
            store.close()

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._listener is None:
                    return
                time.sleep(0.01)  # out of file descriptors: let the others finish
                continue
            if not self._busy.acquire(blocking=False):
                _answer(conn, {"declined": "busy"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            request, body = self._read(conn)
            if request is None:  # declined, not dropped: the process does its own work
                _answer(conn, {"declined": "another user's supervisor"})
            else:
                answer = self._answer(request, body, lambda line: _answer(conn, line))
                if answer is not None:
                    _answer(conn, answer)
        except Exception as exc:  # a broken request or connection costs that request only
            log.write("error", "supervisor could not answer a request", self.env,
                      error=repr(exc))  # fmt: skip
        finally:
            conn.close()
            self._busy.release()

    def _read(self, conn: socket.socket) -> tuple[dict[str, Any] | None, bytes]:
        """The request and its body; ``None`` for a process of another user."""
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != self.uid:
            log.write("warning", "supervisor refused a request of another user", self.env,
                      uid=uid)  # fmt: skip
            return None, b""
        conn.settimeout(READ_WITHIN)
        data = b""
        while chunk := conn.recv(1 << 16):
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError(f"request over {MAX_REQUEST} bytes")
        line, _, body = data.partition(b"\n")
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("request is not a JSON object")
        if request.get("length") != len(body):  # the process went away mid-request
            raise ValueError("request cut short")
        return request, body

    def _answer(
        self, request: dict[str, Any], body: bytes, say: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """The answer to ``request``; ``None`` when ``say`` gave it already."""
        if request.get("version") != __version__:
            return {"declined": f"orch {__version__} answers here"}
        if request.get("database") != self.database:
            return {"declined": "another database"}
        if request.get("path") != sys.path[1:]:  # plugins would be found elsewhere
            return {"declined": "another Python path"}
        env = request.get("env")
        if not isinstance(env, dict):
            raise ValueError("request without an environment")
        if _libpq(env) != _libpq(self.env):  # the same URL may lead elsewhere for libpq
            return {"declined": "another database (its PG* variables differ)"}
        if request.get("op") == "hook":
            return self._hook(env, body, request, say)
        if request.get("op") == "send":
            return self._send(env, request)
        return {"declined": f"unknown request {request.get('op')!r}"}

    def _hook(
        self,
        env: dict[str, str],
        raw: bytes,
        request: dict[str, Any],
        say: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any] | None:
        """The hook's reply, said as soon as it is folded: the process that asked writes it and
        ends while this one records the run. ``None`` once said."""
        from orch_core.hook import dispatch

        project_dir = paths.project_dir(env, _event_cwd(raw, env) or str(request["cwd"]))
        try:
            plan = plans.load(
                env, project_dir, import_timeout=plans.DEFAULT_BUDGET_MS / 2000, uncached=True
            )
        except Exception:
            plan = None  # dispatch says why, and answers with what it has
        if plan is not None and self._changed_since_start(plan):
            return {"declined": "plugin code changed since the supervisor started"}
        store = self._store(durable=False)
        said: list[bool] = []

        def tell(reply: Reply) -> None:
            said.append(True)  # once: a process gone by now is not told again
            say(_reply(reply))

        outcome = dispatch.dispatch(
            raw,
            env,
            plan=plan,
            store=store,
            began=float(request["began"]),
            cwd=str(request["cwd"]),
            answer_by=lambda by: say({"answer_by": by}),
            reply_to=tell,
            shared=True,
        )
        if not outcome.abandoned:
            self._give_back(store, durable=False)  # else a thread of the run may still use it
        return None if said else _reply(outcome.reply)

    def _changed_since_start(self, plan: Plan) -> bool:
        """Whether code the plan runs changed after this process started: modules it imported
        before would run as they were. Said once; ``orch supervise`` restarted answers again."""
        watched = (plan.fingerprint or {}).get("mtimes", {})
        changed = any(
            mtime > self._started_ns for path, mtime in watched.items() if path.endswith(".py")
        )
        if changed and not self._said_stale:
            self._said_stale = True
            log.write("warning", "plugin code changed since the supervisor started: hooks do "
                      "their own work until orch supervise restarts", self.env)  # fmt: skip
        return changed

    def _send(self, env: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
        from orch_core import api
        from orch_core.cli import errors
        from orch_core.queue import Queue

        store = self._store(durable=True)
        try:
            receipts = api.send_many(
                request["items"],
                env=env,
                project_dir=paths.project_dir(env, str(request["cwd"])),
                queue=Queue(store),
                where=request.get("where"),
            )
        except Exception as exc:
            said = errors.said(exc)
            if said is None:  # not an expected error: a bug, for the log
                log.write("error", "supervisor could not send", self.env, error=repr(exc))
            return {"error": said or f"the supervisor could not send: {exc!r}"}
        finally:
            store.release()
            self._give_back(store, durable=True)
        return {"receipts": receipts}

    def _store(self, *, durable: bool) -> Store:
        with self._lock:
            store = self._idle[durable].pop() if self._idle[durable] else None
        if store is None:
            return open_store(self.env, durable=durable, one_connection=True)
        store.anew()  # a new process's request: a failure remembered for the last is not its
        return store

    def _give_back(self, store: Store, *, durable: bool) -> None:
        with self._lock:
            if self._listener is not None:
                self._idle[durable].append(store)
                return
        store.close()


def _event_cwd(raw: bytes, env: Mapping[str, str]) -> str | None:
    """The event's ``cwd``, which names the project where ``CLAUDE_PROJECT_DIR`` does not (as
    in :func:`orch_core.hook.dispatch.dispatch`); read only then."""
    if env.get("CLAUDE_PROJECT_DIR"):
        return None
    try:
        cwd = json.loads(raw).get("cwd")
    except (ValueError, AttributeError, RecursionError):
        return None
    return cwd if isinstance(cwd, str) and cwd else None


def _answer(conn: socket.socket, line: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(line, ensure_ascii=False).encode("utf-8", "replace") + b"\n")


def _refuse_exit_from_threads() -> None:
    """A plugin's ``os._exit`` ends its own call, not the supervisor (as in ``orch-hook``)."""
    if getattr(os._exit, "refuses_threads", False):
        return
    exit_now = os._exit
    main = _thread.get_ident()

    def refuse_exit(code: int) -> None:
        if _thread.get_ident() == main:
            exit_now(code)
        raise SystemExit(f"os._exit({code}) called by a plugin; refused")

    refuse_exit.refuses_threads = True  # type: ignore[attr-defined]
    os._exit = refuse_exit  # type: ignore[assignment]


def _libpq(env: Mapping[str, str]) -> dict[str, str]:
    """What libpq reads from the environment besides the URL (``PGHOST``, ``PGPORT``,
    ``PGPASSWORD``, ``PGSERVICE``, ...)."""
    return {name: value for name, value in env.items() if name.startswith("PG")}


def _reply(reply: Reply) -> dict[str, Any]:
    """A hook's reply as the asking process writes it."""
    return {"stdout": reply.stdout(), "stderr": reply.stderr, "exit_code": reply.exit_code}
