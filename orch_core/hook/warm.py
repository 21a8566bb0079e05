"""Asking the host's supervisor to do a hook's or a send's work warm (server stores only).

On PostgreSQL, every ``orch-hook`` and ``orch send`` would import the database driver and
connect, about 150 ms (docs/benchmarks.md), for a few statements. The host's ``orch supervise``
holds both already: it answers on a socket in the owner-only state folder, for processes of
its own user, doing the same work with the same budget (:mod:`orch_core.supervisor.warm`). A
process that finds no supervisor there, or one of another orch version, database or Python
path, does the work itself, as on SQLite. One that asked and got no answer in time does not do
it again (the work may be done), and for :data:`COLD_FOR` seconds after that the host's
processes do their own.

The exchange: one JSON line and a body from the process, then JSON lines back, the last one
the answer; a hook's first says by when the answer will come (the budget is the project's).
"""

from __future__ import annotations

import _socket  # socket costs 7 ms to import (selectors, array); this needs none of it
import json
import os
import stat
import sys
import time

from orch_core import __version__, paths
from orch_core.errors import OrchError

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SOCKET_NAME = "supervise.sock"
#: Seconds the host's processes do their own work after a supervisor left one unanswered.
COLD_FOR = 30.0
#: The longest answer read (a hook's reply is bounded by its plugins' text).
MAX_ANSWER = 16 * 1024 * 1024
#: The longest request the supervisor reads: a hook's payload (orch-hook keeps 4 MiB and one
#: byte) and its environment. A longer one (a send of a large batch) is not asked.
MAX_REQUEST = 5 * 1024 * 1024


class Unanswered(OrchError):
    """The supervisor took the request and gave no answer in time: the work may be done."""


def socket_path(env: Mapping[str, str]) -> str:
    return os.path.join(paths.state_dir(env), SOCKET_NAME)


def cold_path(env: Mapping[str, str]) -> str:
    """A file whose recent change says: do the work yourself (see :data:`COLD_FOR`)."""
    return os.path.join(paths.state_dir(env), "warm.off")


def ask(
    env: Mapping[str, str],
    database: str,
    header: Mapping[str, Any],
    body: bytes = b"",
    *,
    within: float,
    says_first: bool = False,
) -> dict[str, Any] | None:
    """The supervisor's answer to one request, or ``None`` when there is none to ask or it
    declines (do the work yourself).

    :param database: the store this process would use: a supervisor of another declines.
    :param header: the request; the orch version, database and Python path (beyond the
        program's folder) a supervisor must share are this process's unless given.
    :param within: seconds for the answer, or for a line saying by when it comes
        (``answer_by``, ``time.time()``), which then counts instead.
    :param says_first: the supervisor says a line before it acts on the request (a hook's
        ``answer_by``): one that ended the connection before any (killed, or stopped before it
        took the request from its queue) did nothing, and the process does the work itself.
    :raises Unanswered: the request went out and no answer came in time.
    """
    if not paths.is_url(database) or cold_for(env):
        return None
    path = socket_path(env)
    if not _own_socket(path):
        return None
    request = {"version": __version__, "database": database, "path": sys.path[1:],
               "length": len(body), **header}  # fmt: skip
    data = json.dumps(request).encode() + b"\n" + body
    if len(data) > MAX_REQUEST:  # the supervisor would stop reading it and answer nothing
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(within)
        try:
            sock.connect(path)
        except OSError:  # nobody there (no file, refused), or too busy to take it
            return None
        if _peer_uid(sock) != os.geteuid():  # not this user's supervisor: told nothing
            return None
        lines = _Lines(sock)
        deadline = time.monotonic() + within
        try:
            sock.sendall(data)
            sock.shutdown(_socket.SHUT_WR)
        except OSError as exc:  # it did not all go out, and a request cut short is never acted on
            if isinstance(exc, TimeoutError):  # nobody reads: the supervisor is stuck
                _cool(env)
            return None
        try:
            answer = lines.next(deadline)
            while "answer_by" in answer:
                deadline = time.monotonic() + float(answer["answer_by"]) - time.time()
                answer = lines.next(deadline)
        except (OSError, ValueError, TypeError) as exc:
            if says_first and lines.said == 0 and isinstance(exc, ConnectionError):
                return None
            _cool(env)
            raise Unanswered(f"the host's supervisor gave no answer: {exc}") from None
    finally:
        sock.close()
    if answer.get("declined"):
        return None
    return answer


def _own_socket(path: str) -> bool:
    """Whether ``path`` is a socket of this user's own, not a link: the request carries the
    process's whole environment, and the answer is taken as the hook's reply (a permission
    decision among them). One another user put there is never asked."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()


def _peer_uid(sock: Any) -> int | None:
    """The user of the process at the other end (``SO_PEERCRED``: pid, uid, gid)."""
    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[4:8], sys.byteorder)


def cold_for(env: Mapping[str, str]) -> float:
    """Seconds the host's processes still do their own work after a supervisor left one
    unanswered (0 when they need not, or the clock was set back since: a clock an hour ahead
    then would otherwise keep them from the supervisor for that hour)."""
    try:
        since = time.time() - os.stat(cold_path(env)).st_mtime
    except OSError:
        return 0.0
    return COLD_FOR - since if 0 <= since < COLD_FOR else 0.0


def _cool(env: Mapping[str, str]) -> None:
    """Say for :data:`COLD_FOR` seconds that the supervisor does not answer (best effort)."""
    path = cold_path(env)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.utime(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class _Lines:
    """JSON lines read from a socket, each by a deadline (``time.monotonic()``)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        #: Bytes the other end said.
        self.said = 0

    def next(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(left)
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the supervisor closed the connection")
            self._buffer += chunk
            self.said += len(chunk)
            if len(self._buffer) > MAX_ANSWER:
                raise ValueError("answer too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("answer is not a JSON object")
        return data
