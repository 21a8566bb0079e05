"""A rotated JSON-lines log in the state directory.

Hand-written rather than :mod:`logging` because it runs inside ``orch-hook`` on every tool call:
one ``open(O_APPEND)`` and one write per line, rotated by size, never raising.
"""

from __future__ import annotations

import json
import os
import time

from orch_core import paths

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_BYTES = 5 * 1024 * 1024
KEEP = 3
#: The longest text a line keeps of one field: a hook payload's fields are anyone's, and a
#: field of megabytes would push the log's history out.
MAX_FIELD = 2000


def write(level: str, msg: str, env: Mapping[str, str] = os.environ, **fields: Any) -> None:
    """Append one line; rotate when the file passes :data:`MAX_BYTES`. Errors are swallowed:
    a log that cannot be written must never break a hook."""
    record = {"ts": round(time.time(), 3), "level": level, "msg": msg, **fields}
    try:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        if len(line) > 4 * MAX_FIELD:
            record = {key: _short(value) for key, value in record.items()}
            line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    except (ValueError, RecursionError) as exc:  # a field nested past what JSON writes
        record = {key: record[key] for key in ("ts", "level", "msg")}
        line = json.dumps({**record, "fields_unwritten": repr(exc)}, ensure_ascii=False) + "\n"
    path = paths.log_path(env)
    try:
        paths.ensure_private_dir(os.path.dirname(path))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, line.encode("utf-8", "replace"))
            if os.fstat(fd).st_size > MAX_BYTES:
                _rotate(path, fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _short(value: Any) -> Any:
    """``value``, or at most :data:`MAX_FIELD` characters of its text."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_FIELD:
        return value
    return f"{text[:MAX_FIELD]}... ({len(text)} characters)"


def _rotate(path: str, fd: int) -> None:
    """Rotate the full file ``fd`` was written through, if ``path`` still names it. Writers
    that found it full together rotate it once: each rotation after the first pushed a file of
    history out for the fresh one, nearly empty."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another writer is rotating this file now
        return
    except OSError:  # a file system without locks: the check below narrows the race still
        pass
    written, named = os.fstat(fd), os.lstat(path)
    if (written.st_dev, written.st_ino) != (named.st_dev, named.st_ino):
        return  # rotated already
    for i in range(KEEP - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def read(env: Mapping[str, str] = os.environ, limit: int = 50) -> list[dict[str, Any]]:
    """The last ``limit`` records of the current log file (for ``orch doctor`` and tests)."""
    try:
        with open(paths.log_path(env), encoding="utf-8", errors="replace") as f:
            lines = f.readlines()[-limit:]
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
