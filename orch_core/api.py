"""Sending messages from other programs: what ``orch send`` does, as functions.

``send`` queues a message (or one copy per matching agent), then tells the plugins, so the idle
plugin can wake an agent that waits at its prompt. Reading and managing the queue is
:class:`orch_core.queue.Queue` (``Queue.open()``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from orch_core import dispatch, paths
from orch_core import plan as plans
from orch_core.context import Runtime
from orch_core.queue import Queue, QueueError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PATTERN_CHARS = "*?["


def send(
    target: str,
    text: str,
    *,
    env: Mapping[str, str] = os.environ,
    project_dir: str | None = None,
    queue: Queue | None = None,
    fire: bool = True,
    exact: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Queue ``text`` for ``target``: an agent id, or a pattern such as ``proj:*`` (``*`` for
    every agent orch knows) that fans out into one copy per agent; with ``exact``, ``target``
    is a name even if it holds ``*``, ``?`` or ``[``. ``options`` are those of
    :meth:`Queue.send`; with ``fire=False`` the caller calls :func:`notify` itself. Returns
    the receipts."""
    queue = queue or Queue.open(env)
    if not exact and any(c in target for c in PATTERN_CHARS):
        agents = queue.targets(target)
        if not agents:
            raise QueueError(f"no known agent matches {target!r}")
    else:
        agents = [target]
    receipts = [queue.send(agent, text, **options) for agent in agents]
    if fire:
        notify(receipts, env, project_dir or paths.project_dir(env), queue)
    if options.get("not_before"):  # someone must wake an idle agent when it falls due
        from orch_core import lifecycle

        lifecycle.ensure_supervisor(env)
    return receipts


def notify(
    receipts: list[dict[str, Any]], env: Mapping[str, str], project_dir: str, queue: Queue
) -> None:
    """Fire ``orch_message_enqueued`` for each newly queued message."""
    fresh = [r for r in receipts if not r.get("duplicate")]
    if not fresh:
        return
    plan = plans.load(env, project_dir)
    runtime = Runtime(
        store=queue.store,
        env=env,
        project_dir=project_dir,
        config=plan.config,
        from_project=plan.from_project,
    )
    runtime.fire = dispatch.observers(plan, runtime)
    for receipt in fresh:
        runtime.fire("orch_message_enqueued", {"message": receipt})
