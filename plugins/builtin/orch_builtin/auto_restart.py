"""The auto_restart plugin: notices failures in the hooks and schedules their recovery.

StopFailure is classified by its structured ``error`` field, never by assistant text:
``rate_limit`` waits for the reset, then re-prompts; ``overloaded``, ``server_error`` and the like
re-prompt after a short capped backoff; ``authentication_failed``, ``billing_error`` and the like
are not restarted: the agent is marked ``failed`` and an alert recorded. A Notification whose
message matches ``error_patterns`` schedules a restart. The hook only writes one row; ``orch
supervise`` (started here if it is not running) carries the recovery out and verifies it.
"""

from __future__ import annotations

import re

from orch_core import hookimpl
from orch_core.supervisor import lifecycle

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return lifecycle.SETTINGS


def _reset_in(details: Any, fallback: float) -> float:
    """Seconds until a rate limit resets, when the error says so (``retry_after`` or a reset
    timestamp), else ``fallback``."""
    import time

    if isinstance(details, dict):
        for key in ("retry_after", "retry_after_seconds"):
            if isinstance(details.get(key), int | float):
                return float(details[key])
        for key in ("reset_at", "resets_at", "reset"):
            if isinstance(details.get(key), int | float) and details[key] > time.time():
                return float(details[key]) - time.time()
    return fallback


@hookimpl
def orch_stop_failure(event: ev.StopFailure, ctx: HookContext) -> None:
    if ctx.agent is None:
        return
    kind = lifecycle.classify(event.error)
    reason = f"StopFailure {event.error or 'unknown'}"
    if kind == "fatal":
        lifecycle.give_up(ctx.store, ctx.agent, reason)
        ctx.log("agent failed: no restart for this error", level="error", error=event.error)
        return
    settings = lifecycle.settings(ctx.config)
    wait = _reset_in(event.error_details, settings["rate_limit_wait"]) if kind == "wait" else None
    if lifecycle.schedule(ctx.store, ctx.agent, reason, "reprompt", ctx.config, wait=wait):
        lifecycle.ensure_supervisor(ctx.env)


@hookimpl
def orch_notification(event: ev.Notification, ctx: HookContext) -> None:
    if ctx.agent is None or not event.message:
        return
    for pattern in lifecycle.settings(ctx.config)["error_patterns"]:
        if isinstance(pattern, str) and re.search(pattern, event.message):
            reason = f"notification: {event.message[:200]}"
            if lifecycle.schedule(ctx.store, ctx.agent, reason, "restart", ctx.config):
                lifecycle.ensure_supervisor(ctx.env)
            return
