"""``orch logs``: orch's JSON-lines log (:mod:`orch_core.log`), filtered, and followed.

The log is written by every orch process, hooks included, one line per record, and rotated by
size (``orch.log`` becomes ``orch.log.1``, and so on). Reading it takes nothing from them:
followed, the current file is polled, read in bounded chunks, and a rotation is noticed (the old
file is read to its end before the new one from its start).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from orch_core import log, paths

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any, BinaryIO

#: Bytes read at once while following.
CHUNK = 1 << 20
#: Seconds between looks at a log that did not grow.
POLL = 0.2


def files(env: Mapping[str, str]) -> list[str]:
    """The log's files that exist, oldest first: the rotated ones, then the current one."""
    path = paths.log_path(env)
    every = [f"{path}.{i}" for i in range(log.KEEP, 0, -1)] + [path]
    return [name for name in every if os.path.isfile(name)]


def parse(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The records among ``lines``; a line that is not one (cut by a rotation) is skipped. Half
    of a UTF-16 pair escaped (``\\ud800``, by hand: orch writes none) is no text that can be
    printed: it reads as ``?``, as :func:`orch_core.log.write` writes it."""
    for line in lines:
        try:
            record = json.loads(line)
            if b"\\ud" in line.lower():
                text = json.dumps(record, ensure_ascii=False).encode("utf-8", "replace")
                record = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            yield record


def matches(record: Mapping[str, Any], agent: str | None, event: str | None) -> bool:
    """Whether a record is about ``agent`` and hook event ``event`` (``None``: any)."""
    return (agent is None or record.get("agent") == agent) and (
        event is None or record.get("hook_event_name") == event
    )


def history(env: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Every record the log still holds, oldest first. Its files are all opened before any is
    read: a rotation while they are read (``orch logs | less``) renames each, and opening the
    next by name would skip a file of records, or fail on one just renamed."""
    opened: list[BinaryIO] = []
    try:
        for name in files(env):
            try:
                opened.append(open(name, "rb"))  # noqa: SIM115 - closed below
            except FileNotFoundError:  # renamed by a rotation at that very moment
                continue
        for f in opened:
            yield from parse(f)
    finally:
        for f in opened:
            f.close()


def follow(env: Mapping[str, str], *, poll: float = POLL) -> Iterator[dict[str, Any]]:
    """The current file's records, then each record as it is written, across rotations, until
    the caller stops (Ctrl-C)."""
    path = paths.log_path(env)
    handle: BinaryIO | None = None
    inode = -1
    pending = b""
    try:
        while True:
            try:
                info: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                info = None
            if info is not None and info.st_ino != inode:
                if handle is not None:  # rotated: the rest of the old file first
                    pending += handle.read()
                    handle.close()
                handle = open(path, "rb")  # noqa: SIM115 - open for as long as it is followed
                inode = info.st_ino
            elif info is not None and handle is not None and info.st_size < handle.tell():
                handle.seek(0)  # cut short in place: read again from its start
            chunk = handle.read(CHUNK) if handle is not None else b""
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from parse(lines)
            if not chunk:
                time.sleep(poll)
    finally:
        if handle is not None:
            handle.close()
