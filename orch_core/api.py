"""Sending messages from other programs: what ``orch send`` does, as functions.

``send`` queues a message (or one copy per matching agent), ``send_many`` many in one
transaction, then each tells the plugins, so the idle plugin can wake an agent that waits at its
prompt. Reading and managing the queue is
:class:`orch_core.queue.Queue` (``Queue.open()``).
"""

from __future__ import annotations

import os
import sys

from orch_core import hosts, paths
from orch_core.hook import agents as agents_module
from orch_core.hook.context import Runtime
from orch_core.queue import MAX_SEND_PRIORITY, Queue, QueueError

TYPE_CHECKING = False  # importing typing costs each orch send ~4 ms

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any


PATTERN_CHARS = "*?["


def is_pattern(target: object, exact: bool = False) -> bool:
    """Whether ``target`` names agents by a pattern (``proj:*``), not one agent by name."""
    return not exact and isinstance(target, str) and any(c in target for c in PATTERN_CHARS)


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
    """Queue ``text`` for ``target``: an agent's name, or a pattern such as ``proj:*`` (``*``
    for every agent orch knows) that fans out into one copy per agent; with ``exact``,
    ``target`` is a name even if it holds ``*``, ``?`` or ``[``. On a store several hosts
    share, a bare name is this host's agent of that name, else the only one in the fleet
    (names on several hosts are an error listing them), and ``host/name`` names the agent of
    that host (:class:`orch_core.hosts.Names`). ``options`` are those of
    :meth:`Queue.send`; with ``fire=False`` the caller calls :func:`notify` itself. Returns
    the receipts."""
    item = {"agent": target, "text": text, "exact": exact, **options}
    return send_many([item], env=env, project_dir=project_dir, queue=queue, fire=fire)


def send_many(
    items: Iterable[Mapping[str, Any]],
    *,
    env: Mapping[str, str] = os.environ,
    project_dir: str | None = None,
    queue: Queue | None = None,
    fire: bool = True,
    where: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Queue many messages in one transaction: each item takes :func:`send`'s arguments by
    name (``agent``, which may be a pattern unless ``exact``, and ``text``), with a priority
    of at most :data:`~orch_core.queue.MAX_SEND_PRIORITY`, as ``orch send`` takes it (200 is
    the rebriefing's). All are checked before any is stored; an error names the item by its
    number (``message 2``), counted before patterns fan out, or by its label in ``where``.
    Returns the receipts, in order, patterns fanned out in place. A queue opened here is
    closed here (a store's connections would stay open until a garbage collection)."""
    if queue is None:
        opened = Queue.open(env)
        try:
            return send_many(items, env=env, project_dir=project_dir, queue=opened, fire=fire,
                             where=where)  # fmt: skip
        finally:
            opened.store.close()
    items = list(items)
    if where is None:
        where = [f"message {n}" if len(items) > 1 else "" for n in range(1, len(items) + 1)]
    names = hosts.Names(queue.store, env)
    expanded, placed = [], []
    for label, item in zip(where, items, strict=True):
        options = dict(item)
        target, exact = options.pop("agent", ""), options.pop("exact", False)
        try:
            priority = options.get("priority", 0)
            if isinstance(priority, int) and priority > MAX_SEND_PRIORITY:
                raise QueueError(f"priority {priority} is out of range 0-{MAX_SEND_PRIORITY}")
            if is_pattern(target, exact):
                agents = names.matching(target)
                if not agents:
                    raise QueueError(f"no known agent matches {target!r}")
            elif isinstance(target, str) and agents_module.valid_id(target):
                agents = [names.resolve(target)]
            else:
                agents = [target]  # refused with the others' checks, nothing stored
        except (QueueError, hosts.AmbiguousName) as exc:
            raise type(exc)(f"{label}: {exc}" if label else str(exc)) from None
        expanded += [{**options, "agent": agent} for agent in agents]
        placed += [label] * len(agents)
    receipts = queue.send_many(expanded, where=placed)
    if fire:
        _tell_plugins(receipts, env, project_dir or paths.project_dir(env), queue)
    if any(item.get("not_before") for item in expanded):  # wake an idle agent when it is due
        _start_supervisor(env, len(receipts))
    return receipts


def _tell_plugins(
    receipts: list[dict[str, Any]], env: Mapping[str, str], project_dir: str, queue: Queue
) -> None:
    """:func:`notify`, past the commit: the store failing now (the server gone, or silent)
    is a warning, not a failed send (a script would send again, and store them twice). An
    idle agent is woken all the same, by the supervisor's ticks."""
    try:
        notify(receipts, env, project_dir, queue)
    except Exception as exc:  # whatever it was, the send succeeded
        from orch_core import log

        what = "the message is" if len(receipts) == 1 else f"the {len(receipts)} messages are"
        sys.stderr.write(f"warning: {what} stored, but orch could not tell its plugins ({exc})"
                         "\n")  # fmt: skip
        log.write("warning", "messages stored, plugins not told", env, error=repr(exc),
                  stored=len(receipts))  # fmt: skip


def _start_supervisor(env: Mapping[str, str], stored: int) -> None:
    """Start the supervisor that delivers a message held back (``--in``, ``--at``) when it is
    due. The messages are stored by now: a supervisor that cannot be started is a warning, not
    a failed send (a script would send again, and store them twice)."""
    from orch_core.supervisor import lifecycle

    try:
        lifecycle.ensure_supervisor(env)
    except Exception as exc:  # whatever it was, the send succeeded
        what = "the message is" if stored == 1 else f"the {stored} messages are"
        sys.stderr.write(f"warning: {what} stored, but orch could not start its supervisor "
                         f"({exc}): start orch supervise to deliver when due\n")  # fmt: skip


def notify(
    receipts: list[dict[str, Any]], env: Mapping[str, str], project_dir: str, queue: Queue
) -> None:
    """Fire ``orch_message_enqueued`` for each newly queued message, with the plugins and
    settings of the project its agent works in (as the supervisor does): a plugin switched off
    there (the idle plugin's wake-up) does nothing for it, whoever sends. ``project_dir``, the
    sender's, stands for an agent orch knows no project of."""
    fresh = [r for r in receipts if not r.get("duplicate")]
    if not fresh:
        return
    where = queue.store.projects_of(sorted({r["agent"] for r in fresh}))
    runtimes: dict[str, Runtime] = {}
    for receipt in fresh:
        project = where.get(receipt["agent"]) or project_dir
        if project not in runtimes:
            runtimes[project] = Runtime.open(env, project, store=queue.store)
        runtimes[project].fire("orch_message_enqueued", {"message": receipt})
