"""The auto_restart plugin: notices failures in the hooks and schedules their recovery.

StopFailure is classified by its structured ``error`` field, never by assistant text:
``rate_limit`` waits for the reset, then re-prompts; ``overloaded``, ``server_error`` and the like
re-prompt after a short capped backoff; ``authentication_failed``, ``billing_error`` and the like
are not restarted: the agent is marked ``failed`` and an alert recorded. A Notification whose
message matches ``error_patterns`` schedules a restart. The hook only writes one row; ``orch
supervise`` (started here if it is not running) carries the recovery out on its ticks, climbs the
ladder when a step does not work (:mod:`orch_builtin.recovery`), and watches for dead panes and
hung agents. At most ``max_restarts_per_hour`` restarts per agent, with exponential backoff and
jitter; the history lives in the database, so limits survive a restart of the supervisor.
"""

from __future__ import annotations

import re
import time

from orch_core import Setting, hookimpl, log
from orch_core.plugins.settings import defaults, regexes
from orch_core.supervisor import lifecycle

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext
    from orch_core.storage.store import Store

#: StopFailure ``error`` values that no restart can fix: a person must act (credentials,
#: billing, account, model or request). Every other value, a new one included, is transient.
FATAL = (
    "authentication_failed",
    "oauth_org_not_allowed",
    "account_on_hold",
    "verification_required",
    "billing_error",
    "cloud_credential_error",
    "model_not_found",
    "invalid_request",
)


def _a_line(value: str) -> None:
    """A line typed into Claude's prompt is a request: one that starts with ``!`` would run as
    a shell command (bash mode), ``/`` as a command, ``#`` as a memory."""
    if not value.strip() or not value.isprintable():
        raise ValueError("must be one line of printable text")
    if value.lstrip()[0] in "!/#":
        raise ValueError("must not start with ! (a shell command), / (a command) or # (memory)")


SETTINGS: dict[str, Any] = {
    "max_restarts_per_hour": Setting(3, min=0),
    "backoff_base": Setting(10.0, min=0),  # seconds, doubling per recovery in the last hour...
    "backoff_cap": Setting(300.0, min=0),  # ...up to this
    "jitter": Setting(0.2, min=0, max=1),
    "rate_limit_wait": Setting(900.0, min=0),  # when the error does not say when it resets
    "verify_seconds": Setting(90.0, min=1),
    "hung_after": Setting(1800.0, min=1),  # busy with no hook for this long
    # Notification messages (regular expressions) that mean a restart
    "error_patterns": Setting([], check=regexes),
    "continue_args": Setting(list(lifecycle.KEEP_CONVERSATION), trusted=True),  # restarts add
    "reprompt_line": Setting(  # typed into the agent's prompt: your own config only
        "orch: the last request failed; please continue where you left off.",
        check=_a_line,
        trusted=True,
    ),
    "reprompt_min_wait": Setting(2.0, min=0),  # Claude needs a moment after StopFailure
}
DEFAULTS = defaults(SETTINGS)


def settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULTS, **(config or {})}


def classify(error: str | None) -> str:
    """``fatal``, ``wait`` (rate limit: wait for the reset) or ``transient``, from the
    structured StopFailure ``error`` field only, never from assistant text."""
    if error in FATAL:
        return "fatal"
    return "wait" if error == "rate_limit" else "transient"


def give_up(store: Store, agent: str, reason: str, env: Mapping[str, str]) -> None:
    """No more automatic recovery: ``failed``, an alert and a log line, until a user acts. An
    agent already failed (its prompt answered with the same error again) gets no second
    alert."""
    from orch_core.ops import alerts

    now = time.time()
    log.write("error", "gave up on the agent: no automatic restart", env, agent=agent,
              reason=reason)  # fmt: skip
    lifecycle.cancel_recoveries(store, agent, "gave up")
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO recoveries (agent, created, reason, step, due, state, started,"
            " finished, outcome) VALUES (?, ?, ?, 'give_up', ?, 'done', ?, ?, 'failed')",
            (agent, now, reason, now, now, now),
        )
    if store.set_agent_state(agent, "failed", session_id=None, project_dir=None) != "failed":
        message = f"{agent} failed: {reason}; no automatic restart"
        alerts.record(store, "failed", message, agent=agent, renew=True, now=now)


def restarts_last_hour(store: Store, agent: str, now: float) -> int:
    """Restarts carried out in the last hour. A step that failed at once (``--continue`` with
    no conversation to continue) is not one: the ladder's next step is."""
    return int(
        store.execute(
            "SELECT count(*) FROM recoveries WHERE agent = ? AND step IN ('restart', 'fresh')"
            " AND started IS NOT NULL AND state != 'failed' AND created > ?",
            (agent, now - 3600),
        ).fetchone()[0]
    )


def _under_way(db: Any, agent: str) -> bool:
    """Whether a recovery of ``agent`` is scheduled, running or being verified."""
    return bool(
        db.execute(
            "SELECT 1 FROM recoveries WHERE agent = ? AND state IN ('scheduled', 'running',"
            " 'verifying')",
            (agent,),
        ).fetchone()
    )


def schedule(
    store: Store,
    agent: str,
    reason: str,
    step: str,
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str],
    wait: float | None = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """Plan ``step`` for ``agent`` after its backoff, and say so in the log (``env``'s); ``None``
    if a recovery is already under way (its own outcome decides what follows: the pane watch
    seeing a restart's program end at once must not count it and give up before the ladder's
    fresh start). A restart past the hourly limit gives up instead."""
    import random

    now = time.time() if now is None else now
    conf = settings(config)
    if step == "give_up":
        give_up(store, agent, reason, env)
        return None
    if step in ("restart", "fresh") and (
        not _under_way(store, agent)
        and restarts_last_hour(store, agent, now) >= int(conf["max_restarts_per_hour"])
    ):
        limit = conf["max_restarts_per_hour"]
        give_up(store, agent, f"{reason}; {limit} restarts this hour", env)
        return None
    with store.transaction() as tx:
        if _under_way(tx, agent):
            return None
        recent = tx.execute(
            "SELECT count(*) FROM recoveries WHERE agent = ? AND created > ?", (agent, now - 3600)
        ).fetchone()[0]
        if wait is None:
            wait = min(float(conf["backoff_cap"]), float(conf["backoff_base"]) * 2**recent)
            wait *= 1 + random.uniform(-1, 1) * float(conf["jitter"])
        if step == "reprompt":
            wait = max(wait, float(conf["reprompt_min_wait"]))
        (added,) = tx.execute(
            "INSERT INTO recoveries (agent, created, reason, step, due, state)"
            " VALUES (?, ?, ?, ?, ?, 'scheduled') RETURNING id",
            (agent, now, reason, step, now + wait),
        ).fetchone()
    log.write("warning", "recovery planned", env, agent=agent, step=step, reason=reason,
              wait=round(wait, 1))  # fmt: skip
    return {"id": added, "agent": agent, "step": step, "due": now + wait}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


#: The longest a rate limit holds (a weekly one): a longer wait is no reset time.
LONGEST_RESET = 7 * 86400.0


def _reset_in(details: Any, fallback: float) -> float:
    """Seconds until a rate limit resets, when the error says so (``retry_after`` or a reset
    timestamp), else ``fallback``. Only a number of at most :data:`LONGEST_RESET` says so: a
    ``NaN`` (which Python's JSON reads) is no time to store, and an endless wait would hold
    the agent's recovery, and every later one, forever."""
    if isinstance(details, dict):
        now = time.time()
        for key in ("retry_after", "retry_after_seconds"):
            value = details.get(key)
            if isinstance(value, int | float) and 0 <= value <= LONGEST_RESET:
                return float(value)
        for key in ("reset_at", "resets_at", "reset"):
            value = details.get(key)
            if isinstance(value, int | float) and now < value <= now + LONGEST_RESET:
                return float(value) - now
    return fallback


@hookimpl
def orch_stop_failure(event: ev.StopFailure, ctx: HookContext) -> None:
    if ctx.agent is None:
        return
    kind = classify(event.error)
    reason = f"StopFailure {event.error or 'unknown'}"
    if kind == "fatal":
        give_up(ctx.store, ctx.agent, reason, ctx.env)
        return
    conf = settings(ctx.config)
    wait = _reset_in(event.error_details, conf["rate_limit_wait"]) if kind == "wait" else None
    if schedule(ctx.store, ctx.agent, reason, "reprompt", ctx.config, env=ctx.env, wait=wait):
        lifecycle.ensure_supervisor(ctx.env)


@hookimpl
def orch_notification(event: ev.Notification, ctx: HookContext) -> None:
    if ctx.agent is None or not event.message:
        return
    for pattern in settings(ctx.config)["error_patterns"]:
        if isinstance(pattern, str) and re.search(pattern, event.message):
            reason = f"notification: {event.message[:200]}"
            if schedule(ctx.store, ctx.agent, reason, "restart", ctx.config, env=ctx.env):
                lifecycle.ensure_supervisor(ctx.env)
            return


@hookimpl
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    """Carry out and verify this project's recoveries with its own settings, and watch its
    spawned agents for dead panes and hangs. Switched off in a project: none of this there."""
    from orch_builtin import recovery

    recovery.Ladder(ctx, agents, settings(ctx.config)).tick(now)
