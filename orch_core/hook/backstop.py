"""The hard time limit of one ``orch-hook`` run, and the record of the runs it stopped.

The dispatcher stops waiting for plugins at the deadline, but a plugin that holds the
interpreter lock (a catastrophic regular expression, a busy C extension) keeps the dispatcher
itself from running. :func:`arm` starts :mod:`faulthandler`'s watchdog, a C thread that needs no
lock: past the deadline plus :data:`~orch_core.plugins.plan.ANSWER_MARGIN` it writes every
thread's stack to the run's file under ``STATE/running/`` and ends the process (exit 1: Claude
Code goes on without the hook's answer). A stale plan's rebuild moves the limit to
:data:`~orch_core.plugins.plan.REBUILD_SECONDS` first. A run that ends normally removes its file.
:func:`collect` turns the files of runs that never ended into hook-run records naming the
plugins that were still running.
"""

from __future__ import annotations

import json
import os
import stat
import time

from orch_core import paths

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from orch_core.plugins.plan import Impl
    from orch_core.storage.store import Store

#: A run's file is made anew: one already there is a run of an earlier process this pid named
#: (pids wrap around), killed and not yet collected, or a link or FIFO orch did not make.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW

#: A run file this old belongs to a process that is gone, whatever its pid now names (hooks
#: end within their budget).
STALE_SECONDS = 60.0


class Armed:
    """One armed run: its file (the stacks go there), removed by :meth:`disarm`."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def note(self, fields: dict[str, Any]) -> None:
        """Add what is now known of the run (its event, its plugins) to its file."""
        try:
            os.write(self.fd, json.dumps(fields).encode() + b"\n")
        except OSError:
            pass

    def rearm(self, seconds: float, impls: list[Impl] | None = None) -> None:
        """Move the limit to ``seconds`` from now (once the plan tells the budget, and which
        plugins this run calls)."""
        import faulthandler

        if impls is not None:
            self.note({"plugins": [[i.plugin, i.module] for i in impls]})
        faulthandler.dump_traceback_later(max(seconds, 0.001), exit=True, file=self.fd)

    def hold(self) -> None:
        """No limit for now: a wait with a bound of its own (the supervisor's answer) follows."""
        import faulthandler

        faulthandler.cancel_dump_traceback_later()

    def disarm(self) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        if self.path != os.devnull:
            _remove(self.path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def arm(env: Mapping[str, str], seconds: float, header: dict[str, Any]) -> Armed:
    """Stop this process ``seconds`` from now unless :meth:`Armed.disarm` comes first.
    ``header`` says what the run is (event, session). Without a run file (its folder unusable)
    the limit holds all the same, its stacks written nowhere."""
    import faulthandler

    folder = os.path.join(paths.state_dir(env), "running")
    path = os.path.join(folder, f"{os.getpid()}.json")
    record = {**header, "started": time.time()}
    fd = -1
    try:
        paths.ensure_own_dir(folder)
        try:
            fd = os.open(path, _NEW, 0o600)
        except FileExistsError:  # an earlier process of this pid's, never collected: kept
            os.replace(path, os.path.join(folder, f"{os.getpid()}.{time.time_ns()}.json"))
            fd = os.open(path, _NEW, 0o600)
        os.write(fd, json.dumps(record).encode() + b"\n")
    except OSError:
        if fd >= 0:  # made but not written (a full disk): :func:`collect` would take it
            os.close(fd)  # for the file of a run killed from outside
            _remove(path)
        path, fd = os.devnull, os.open(os.devnull, os.O_WRONLY)
    faulthandler.dump_traceback_later(max(seconds, 0.001), exit=True, file=fd)
    return Armed(path, fd)


def collect(env: Mapping[str, str], store: Store, now: float | None = None) -> int:
    """Record the runs that never ended (stopped by the backstop, or killed from outside),
    naming the plugins whose code was on a stack; return how many."""
    now = time.time() if now is None else now
    folder = os.path.join(paths.state_dir(env), "running")
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    found = 0
    for name in names:
        path = os.path.join(folder, name)
        try:
            ended = os.lstat(path).st_mtime  # the stacks were written last
            if now - ended < STALE_SECONDS and _alive(name):
                continue
            text = _read(path)
            if text is None:
                continue
            os.unlink(path)
        except OSError:
            continue
        record: dict[str, Any] = {}
        lines = text.splitlines()
        while lines and lines[0].startswith("{"):
            try:
                record.update(json.loads(lines.pop(0)))
            except ValueError:
                break
        dump = "\n".join(lines)
        store.record_run(
            event=str(record.get("event") or ""),
            agent=store.session_agent(record["session_id"]) if record.get("session_id") else None,
            session_id=record.get("session_id"),
            duration_ms=max(0.0, ended - float(record.get("started") or ended)) * 1000,
            exit_code=1,
            plugins=offenders(record.get("plugins") or [], dump),
        )
        found += 1
    return found


def _read(path: str) -> str | None:
    """The start of run file ``path``; ``None`` for a link or FIFO there (orch made neither):
    opening a FIFO would block ``orch doctor``, ``orch stats`` and the supervisor."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(1 << 20).decode("utf-8", "replace")


def _alive(name: str) -> bool:
    try:
        os.kill(int(name.partition(".")[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except OSError:  # someone else's process: alive
        pass
    return True


def offenders(plugins: list[list[str | None]], dump: str) -> list[dict[str, Any]]:
    """The plugins whose module appears in the dumped stacks, as run outcomes."""
    stopped = "Timeout (" in dump
    how = (
        "still running when the backstop stopped orch-hook"
        if stopped
        else ("orch-hook was killed from outside while it ran")
    )
    named = []
    for plugin, module in plugins:
        if not module:
            continue
        tail = module.replace(".", "/")
        where = [
            line.strip()
            for line in dump.splitlines()
            if f'{tail}.py"' in line or f'{tail}/__init__.py"' in line
        ]
        if where:
            named.append({"plugin": plugin, "outcome": "killed", "error": f"{how}: {where[0]}"})
    return named or [{"plugin": "orch", "outcome": "killed", "error": how}]
