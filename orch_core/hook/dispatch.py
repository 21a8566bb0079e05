"""``orch-hook``: the one command Claude Code runs for every hook event.

It reads one JSON event on stdin, resolves the agent, calls every plugin implementation for
that event, each in its own thread, and folds their answers into the one reply Claude accepts.
It never stalls or breaks an agent: a plugin that raises, returns garbage or overruns the event's
time budget is logged and skipped while the others still answer; bad input gives exit 0 and one
log line; a missing, locked or corrupt database costs at most the budget. Plugins cannot reach
the reply channel: stdout and stderr lead nowhere while they run (the reply goes out on a
private copy), ``os._exit`` from a plugin is refused, and a plugin that holds the interpreter
lock past the deadline meets :mod:`orch_core.hook.backstop`.

This module is the hot path: it imports only the standard library pieces it needs, and the
plugin machinery (pluggy, TOML, entry points) only when the cached plan is stale.
"""

from __future__ import annotations

import _thread  # the documented low-level API: threading costs the hook 0.6 ms to import
import json
import os
import sys
import time

from orch_core import log, paths
from orch_core.hook import agents, answers, backstop, events
from orch_core.hook.context import Runtime
from orch_core.plugins import plan as plans
from orch_core.storage import database, open_store

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from orch_core.plugins.plan import Impl, Plan
    from orch_core.storage.store import Store

#: Payloads larger than this are not parsed: exit 0, one log line.
MAX_PAYLOAD = 4 * 1024 * 1024


class Call:
    """One plugin implementation running in its own thread, which the dispatcher abandons
    (never waits for) once the budget is spent."""

    __slots__ = ("_done", "error", "finished", "impl", "ms", "result")

    def __init__(self, impl: Impl, kwargs: dict[str, Any], store: Store) -> None:
        self.impl = impl
        self.result: object = None
        self.error: str | None = None
        self.finished = False
        self.ms = 0.0
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (kwargs, store))

    def _run(self, kwargs: dict[str, Any], store: Store) -> None:
        start = time.perf_counter()
        try:
            self.result = self.impl.function(
                **{name: kwargs[name] for name in self.impl.argnames if name in kwargs}
            )
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            store.release()
            self.ms = (time.perf_counter() - start) * 1000
            self.finished = True
            self._done.release()

    def outcome(self, budget: float) -> dict[str, Any]:
        """How the call went, for the run record: ``ok``, ``error`` or ``timeout``."""
        outcome: dict[str, Any] = {"plugin": self.impl.plugin, "ms": round(self.ms, 3)}
        if not self.finished:
            outcome.update(outcome="timeout", error=f"still running after {budget:.3f}s budget")
        elif self.error:
            outcome.update(outcome="error", error=self.error)
        else:
            outcome["outcome"] = "ok"
        return outcome

    def wait(self, deadline: float) -> None:
        self._done.acquire(timeout=max(0.0, deadline - time.perf_counter()))


class Outcome:
    """Everything one dispatch did: the reply, and each plugin's outcome for the record.
    ``abandoned``: a thread of the run was left running (a plugin past its budget, or a store
    that did not answer), which may still use the store."""

    __slots__ = ("abandoned", "agent", "event", "plugins", "reply")

    def __init__(
        self,
        reply: answers.Reply,
        event: events.Event | None = None,
        agent: str | None = None,
        plugins: list[dict[str, Any]] | None = None,
        *,
        abandoned: bool = False,
    ) -> None:
        self.reply = reply
        self.event = event
        self.agent = agent
        self.plugins = plugins or []
        self.abandoned = abandoned or any(p["outcome"] == "timeout" for p in self.plugins)


def call_all(
    impls: list[Impl], kwargs: Mapping[str, Any], runtime: Runtime, deadline: float
) -> list[Call]:
    """Start every implementation at once and wait for them until ``deadline``."""
    calls = [
        Call(impl, {**kwargs, "ctx": runtime.context(impl.plugin)}, runtime.store) for impl in impls
    ]
    for call in calls:
        call.wait(deadline)
    return calls


def read_payload(raw: bytes, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The event as a dict, or ``None`` (with one log line) for anything else."""
    problem = None
    if len(raw) > MAX_PAYLOAD:
        problem = f"payload of {len(raw)} bytes is over the {MAX_PAYLOAD}-byte limit"
    elif not raw.strip():
        problem = "empty payload"
    else:
        try:  # strict UTF-8: encoded surrogates would be text no reply could carry
            data = json.loads(raw.decode("utf-8-sig"))
            if isinstance(data, dict):
                return _whole(data) if b"\\ud" in raw.lower() or b"\\u0000" in raw else data
            problem = f"payload is a JSON {type(data).__name__}, not an object"
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            problem = f"payload is not JSON: {exc}"
    log.write("warning", "bad hook input skipped", env, problem=problem)
    return None


def _whole(value: Any) -> Any:
    """``value`` with each lone surrogate (a ``\\ud800`` escape in the JSON, which is no text
    and which SQLite refuses) and each NUL (``\\u0000``: no path holds one, and PostgreSQL's
    text refuses it) replaced by U+FFFD."""
    if isinstance(value, str):
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value.replace("\0", "\ufffd")
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {_whole(k): _whole(v) for k, v in value.items()}
    return value


def dispatch(
    raw: bytes,
    env: Mapping[str, str] = os.environ,
    *,
    plan: Plan | None = None,
    store: Store | None = None,
    armed: backstop.Armed | None = None,
    began: float | None = None,
    cwd: str | None = None,
    answer_by: Callable[[float], object] | None = None,
    reply_to: Callable[[answers.Reply], object] | None = None,
    shared: bool = False,
) -> Outcome:
    """Handle one hook event from its raw stdin bytes. The budget counts from here (or from
    ``began``, the ``time.time()`` the hook process began, when the supervisor dispatches for
    it), a stale plan's rebuild included, though the plugins always get at least half of it.
    ``armed``: ``orch-hook``'s backstop, which ends the process should the dispatcher not get to
    answer in time, moved here to the event's budget. ``cwd``: the hook process's, should the
    event name none. ``answer_by`` hears, once the budget is known, by when (``time.time()``)
    the reply is due. ``reply_to`` hears the reply as soon as it is folded, before the
    ``orch_hook_answered`` observers and the run's record: a reply written there keeps its
    decision even if the process is ended after (Claude Code takes a valid JSON reply whatever
    the exit code: tests/e2e/test_harness.py). ``shared``: this process answers other hooks
    too (the supervisor's; :attr:`~orch_core.hook.context.HookContext.shared`)."""
    start = time.perf_counter()
    if began is not None:
        start -= max(0.0, time.time() - began)
    data = read_payload(raw, env)
    if data is None:
        return Outcome(answers.Reply(None))
    event = events.parse(data)
    if isinstance(event, events.UnknownEvent):
        log.write(
            "warning", "unknown event skipped", env, hook_event_name=data.get("hook_event_name")
        )
        return Outcome(answers.Reply(None), event)
    project_dir = paths.project_dir(env, event.cwd or cwd)
    default_budget = plans.DEFAULT_BUDGET_MS / 1000
    if armed is not None:
        armed.note({"event": event.name, "session_id": event.session_id})
    if plan is None:

        def rebuilding() -> None:  # a rebuild that could not finish would start again each run
            if armed is not None:
                armed.rearm(plans.REBUILD_SECONDS)

        try:  # a rebuild gives each plugin's import at most half the default budget
            plan = plans.load(
                env,
                project_dir,
                import_timeout=default_budget / 2,
                rebuilding=rebuilding,
                uncached=True,
            )
        except Exception as exc:
            log.write("error", "cannot build the plugin plan", env, error=repr(exc))
            plan = plans.Plan({}, {}, {})
    budget = plan.budget(event.name)
    # a rebuilt plan may have taken part of the budget, never more than half the plugins' time
    deadline = max(start + budget, time.perf_counter() + budget / 2)
    impls = plan.impls(events.hook_name(event.name))
    if armed is not None:
        running = [*impls, *plan.impls("orch_hook_answered"), *plan.impls("orch_text_left_out")]
        armed.rearm(deadline + plans.ANSWER_MARGIN - time.perf_counter(), running)
    if answer_by is not None:
        answer_by(time.time() + deadline + plans.ANSWER_MARGIN - time.perf_counter())
    kept = store is not None
    if store is None:
        # the plugins' few short statements take turns on one connection: a server's store
        # would cost a connection per plugin thread, several milliseconds each
        store = open_store(env, timeout=budget, durable=False, one_connection=True)
    runtime = Runtime(
        store=store, env=env, project_dir=project_dir, plan=plan, session_id=event.session_id
    )
    if began is not None:
        runtime.started = began
    runtime.deadline = time.time() + (deadline - time.perf_counter())
    runtime.event_name = event.name
    runtime.shared = shared
    runtime.agent, prepared = _prepare(
        runtime, event.session_id, deadline, timeout=budget if kept else None
    )

    calls = call_all(impls, {"event": event}, runtime, deadline)
    given: list[tuple[str, answers.Answer]] = []
    outcomes = []
    for call in calls:
        outcome = call.outcome(budget)
        if outcome["outcome"] == "ok":
            try:
                answer = answers.check(call.result, event)
            except TypeError as exc:
                outcome.update(outcome="invalid", error=str(exc))
            else:
                if answer is not None:
                    given.append((call.impl.plugin, answer))
        outcomes.append(outcome)
    folded, left_out = _within_cap(event, given, runtime)
    reply = answers.fold(event, folded)
    if reply_to is not None:
        try:
            reply_to(reply)
        except Exception as exc:  # the caller went away: the run is still recorded
            log.write("error", "cannot give the reply", env, error=repr(exc))
    answered = plan.impls("orch_hook_answered") + [
        impl for impl in plan.impls("orch_text_left_out") if impl.plugin in left_out
    ]
    if answered:
        kwargs = {"event": event, "blocked": reply.blocked}
        observe_by = max(deadline, time.perf_counter() + plans.OBSERVERS_FLOOR)
        if armed is not None and observe_by > deadline:
            armed.rearm(observe_by + plans.ANSWER_MARGIN - time.perf_counter())
        observed = [c.outcome(budget) for c in call_all(answered, kwargs, runtime, observe_by)]
        outcomes += [outcome for outcome in observed if outcome["outcome"] != "ok"]
    result = Outcome(reply, event, runtime.agent, outcomes, abandoned=not prepared)
    _record(result, store, env, start, deadline)
    return result


def _within_cap(
    event: events.Event, given: list[tuple[str, answers.Answer]], runtime: Runtime
) -> tuple[list[answers.Answer], frozenset[str]]:
    """The answers, less the text for the model of those that would take it past Claude Code's
    cap (:func:`~orch_core.hook.answers.over_cap`; their decisions stay), and the plugins that
    gave those, whose ``orch_text_left_out`` is called (the queue takes its messages back)."""
    kept = [answer for _, answer in given]
    over = answers.over_cap(event, kept)
    if not over:
        return kept, frozenset()
    for index in over:
        answer = kept[index]
        kept[index] = answers.Answer(
            block=answer.block if event.blocks_by != "context" else None,
            permission=answer.permission,
            reason=answer.reason,
            system_message=answer.system_message,
        )
    left_out = frozenset(given[index][0] for index in over)
    log.write("warning", "text for the model left out: over Claude Code's cap", runtime.env,
              hook_event_name=event.name, agent=runtime.agent, plugins=sorted(left_out),
              cap=answers.CONTEXT_CAP)  # fmt: skip
    return kept, left_out


def _prepare(
    runtime: Runtime, session_id: str | None, deadline: float, *, timeout: float | None = None
) -> tuple[str | None, bool]:
    """The agent, and the plugins' tables brought to their versions, in a thread of its own
    given half of what is left of the budget: a database that took the connection and then
    stopped answering must leave the plugins that need no store their time (orch-guard's
    deny). ``timeout``: the event's, for a store kept from an earlier event (the supervisor's),
    whose connection may be the one that stopped answering. Tables not there at all (a new
    store, which the fleet's first hooks all set up, one writer at a time) may take most of that
    half: their plugins could do nothing without them. The agent (``None`` if not known by
    then), and whether it all finished."""
    env, store = runtime.env, runtime.store
    until = time.perf_counter() + max(0.01, deadline - time.perf_counter()) / 2
    found: list[str | None] = []
    done = _thread.allocate_lock()
    done.acquire()

    def prepare() -> None:
        try:
            if timeout is not None:  # a kept store waits as long as one opened here would
                try:
                    store.set_timeout(timeout)
                except Exception:  # unreachable: the statements that follow say so
                    pass
            try:
                found.append(agents.resolve(
                    env, session_id, store, timeout=max(0.01, deadline - time.perf_counter())
                ))  # fmt: skip
            except Exception as exc:
                found.append(None)
                log.write("error", "cannot resolve the agent", env, error=repr(exc))
            runtime.ensure_schemas(
                timeout=max(0.01, deadline - time.perf_counter()) / 4,
                absent_timeout=max(0.01, until - time.perf_counter()) * 0.8,  # 0.2: to create
            )
        finally:
            store.release()
            done.release()

    _thread.start_new_thread(prepare, ())
    finished = done.acquire(timeout=max(0.005, until - time.perf_counter()))
    if not finished:
        log.write("error", "the store did not answer in time; plugins go on without it", env,
                  agent=found[0] if found else None)  # fmt: skip
    return (found[0] if found else None), finished


def _record(
    result: Outcome, store: Store, env: Mapping[str, str], start: float, deadline: float
) -> None:
    """Keep the run for metrics and ``orch doctor``; problems also go to the log."""
    event_name = result.event.name if result.event else ""
    duration_ms = (time.perf_counter() - start) * 1000
    failed = [p for p in result.plugins if p["outcome"] != "ok"]
    if failed:
        log.write(
            "warning",
            "plugins failed",
            env,
            hook_event_name=event_name,
            agent=result.agent,
            plugins=failed,
        )
    try:
        store.set_timeout(max(0.01, deadline - time.perf_counter()))
        store.record_run(
            event=event_name,
            agent=result.agent,
            session_id=result.event.session_id if result.event else None,
            duration_ms=duration_ms,
            exit_code=result.reply.exit_code,
            plugins=result.plugins,
        )
    except Exception as exc:
        log.write(
            "error",
            "cannot record the hook run",
            env,
            hook_event_name=event_name,
            agent=result.agent,
            duration_ms=round(duration_ms, 3),
            error=repr(exc),
        )


def read_stdin(limit: int = MAX_PAYLOAD) -> bytes:
    """Read stdin to the end, keeping at most ``limit + 1`` bytes (the rest is drained). A
    closed stdin (``<&-``; Python's ``sys.stdin`` is then ``None``) reads as empty."""
    if sys.stdin is None:
        return b""
    stream = sys.stdin.buffer
    kept = stream.read(limit + 1)
    while stream.read(1 << 20):
        pass
    return kept


def main() -> None:
    """Entry point of ``orch-hook``. The exit code is 2 only when a plugin blocks an event
    that Claude blocks on exit 2 (never Stop), else 0, whatever goes wrong."""
    exit_now = os._exit
    reply_out, reply_err = _private_channels()
    main_thread = _thread.get_ident()

    def refuse_exit(code: int) -> None:
        if _thread.get_ident() == main_thread:
            exit_now(code)
        raise SystemExit(f"os._exit({code}) called by a plugin; refused")

    os._exit = refuse_exit  # type: ignore[assignment]
    code = 0
    # from the start: a stdin that never closes, or a payload slow to read, is bounded too
    limit = plans.DEFAULT_BUDGET_MS / 1000 + plans.ANSWER_MARGIN
    armed = backstop.arm(os.environ, limit, {})
    try:
        raw = read_stdin()
        warmed = _warm(raw, armed, limit)
        if warmed is not None:
            armed.disarm()
            _write_all(reply_out, _utf8(warmed.get("stdout", "")))
            _write_all(reply_err, _utf8(warmed.get("stderr", "")))
            exit_now(int(warmed.get("exit_code", 0)))
        given: list[answers.Reply] = []

        def reply_now(reply: answers.Reply) -> None:
            nonlocal code
            given.append(reply)
            code = reply.exit_code  # whatever happens after: the reply is out
            if reply.output is not None:
                _write_all(reply_out, _utf8(reply.stdout()))
            if reply.stderr:
                _write_all(reply_err, _utf8(reply.stderr + "\n"))

        outcome = dispatch(raw, armed=armed, reply_to=reply_now)
        if not given:  # bad input or an unknown event: nothing was folded
            reply_now(outcome.reply)
    except BaseException as exc:  # the last line of defence: never break the agent
        log.write("error", "orch-hook failed", error=repr(exc))
    armed.disarm()
    # Everything is committed and written. Skipping interpreter teardown saves the agent about
    # 4 ms per hook (docs/benchmarks.md) and never waits for a plugin past its budget.
    exit_now(code)


def _warm(
    raw: bytes, armed: backstop.Armed, limit: float, env: Mapping[str, str] = os.environ
) -> dict[str, Any] | None:
    """The host's supervisor's reply to the event (:mod:`orch_core.hook.warm`), ``None`` to
    dispatch here. Given no reply in time, an empty one: the event may have been handled. The
    backstop waits meanwhile (the answer has a bound of its own), and starts ``limit`` afresh
    for a dispatch here."""
    try:
        where = database(env)
    except Exception:  # a config that names no database: dispatch says why
        return None
    if not paths.is_url(where):
        return None
    from orch_core.hook import warm

    header = {"op": "hook", "env": dict(env), "began": time.time(), "cwd": paths.cwd()}
    armed.hold()
    try:
        answer = warm.ask(env, where, header, raw, within=limit, says_first=True)
    except warm.Unanswered as exc:
        log.write("error", "no reply from the supervisor; the event is left unanswered", env,
                  error=str(exc))  # fmt: skip
        return {}
    if answer is None:
        armed.rearm(limit)
    return answer


def _private_channels() -> tuple[int, int]:
    """Copies of stdout and stderr for the reply alone; fds 1 and 2 then lead nowhere, so a
    plugin that prints (or closes them) cannot corrupt or lose the reply. One of 0-2 that was
    closed when the hook started is opened on ``/dev/null`` first, or a copy would take its
    number."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    out, err = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return out, err


def _utf8(text: str) -> bytes:
    """``text`` for Claude Code: a lone surrogate in a plugin's answer (a file name that is not
    UTF-8, say) becomes ``?`` rather than costing the whole reply, a deny included."""
    return text.encode("utf-8", "replace")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
