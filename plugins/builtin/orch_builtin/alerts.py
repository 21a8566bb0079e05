"""The alerts plugin: notices what needs a person and sends it to the user's channels.

On the supervisor's tick, every ``check_every`` seconds per project, it looks for messages gone
``dead``, agents that have needed input (``needs_input``) longer than ``needs_input_after``,
more than ``hook_failures`` failed hook runs within ``hook_failure_window``, and queues deeper
than ``queue_depth`` or whose oldest due message waited longer than ``queue_age``; each is
recorded once while it lasts (:mod:`orch_core.ops.alerts`). Agents given up on are recorded by the
core itself. Its ``orch_alert`` sends each alert to every URL of ``[alerts] urls`` through
apprise (ntfy, Slack, Discord, e-mail, webhooks...), each URL once. The URLs come from the
user's own config only: a project's ``.claude/orch.toml`` cannot add or change them. Nothing
here runs in ``orch-hook``, and apprise is imported only to send.
"""

from __future__ import annotations

import json
import re

from orch_core import Setting, hookimpl, paths
from orch_core.ops import alerts
from orch_core.plugins.settings import defaults
from orch_core.queue import PENDING_SQL, RETRIED, age, ready_sql

TYPE_CHECKING = False  # the hook imports built-ins to build its plan; typing costs it ~7 ms

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from orch_core.hook.context import HookContext
    from orch_core.storage.store import Store

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _urls(value: list[str]) -> None:
    """Each a URL; one that is not is named by its place, for it may hold a token all the same."""
    for place, url in enumerate(value, 1):
        if not URL.fullmatch(url):
            raise ValueError(f"item {place} is not a URL (scheme://...)")


SETTINGS: dict[str, Any] = {
    "urls": Setting([], check=_urls, trusted=True, secret=True),  # apprise URLs: your own only
    "needs_input_after": Setting(300.0, min=0),  # seconds; 0: no alert
    "hook_failures": Setting(5, min=0),  # failed hook runs of a project's agents; 0: no alert
    "hook_failure_window": Setting(300.0, min=1),  # ...within this many seconds
    "queue_depth": Setting(100, min=0),  # messages waiting for one agent; 0: no alert
    "queue_age": Setting(3600.0, min=0),  # seconds its oldest due message waited; 0: no alert
    "check_every": Setting(10.0, min=0),  # seconds between looks, per project
}
DEFAULTS = defaults(SETTINGS)
KINDS = ("dead", "needs_input", "hook_failures", "queue_depth", "queue_age")
#: Dead messages older than this when first seen (before the plugin ran) are left to `orch
#: doctor`: a first look must not send a notification for each.
DEAD_WITHIN = 86400.0
SEVERE = ("failed", "dead")
#: project: when its conditions were last looked at (this process is the supervisor)
_looked: dict[str, float] = {}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


@hookimpl
def orch_schema(dialect: str) -> dict[int, str]:
    """Which URL (by a hash: the URLs hold tokens) took which alert, so that a retry after one
    URL failed sends nothing twice to the others."""
    integer, real = (
        ("BIGINT", "DOUBLE PRECISION") if dialect == "postgresql" else ("INTEGER", "REAL")
    )
    return {
        1: f"""
        CREATE TABLE alert_urls (
            alert_id {integer} NOT NULL,
            url_hash TEXT NOT NULL,
            ts {real} NOT NULL,
            PRIMARY KEY (alert_id, url_hash)
        )
        """
    }


@hookimpl
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    settings = {**DEFAULTS, **ctx.config}
    if 0 <= now - _looked.get(ctx.project_dir, float("-inf")) < float(settings["check_every"]):
        return  # looked lately (a clock set back counts as long ago)
    _looked[ctx.project_dir] = now
    subject = failures_subject(ctx)
    seen = (
        list(conditions(ctx.store, ctx.project_dir, agents, settings, now, subject))
        if agents
        else []
    )
    # on a shared store this host looked at its own agents: it closes only their alerts
    scope = agents if ctx.store.shared else None
    for alert_id in alerts.observe(
        ctx.store, ctx.project_dir, KINDS, seen, now, agents=scope, general=(subject,),
        looked=agents,
    ):  # fmt: skip
        ctx.log("alert recorded", alert=alert_id)


def failures_subject(ctx: HookContext) -> str:
    """What the ``hook_failures`` alert is about: the project, and on a shared store the host
    whose agents' hooks failed (each host counts its own)."""
    return f"{ctx.project_dir} on {paths.host(ctx.env)}" if ctx.store.shared else ctx.project_dir


def conditions(
    store: Store,
    project: str,
    agents: list[str],
    settings: dict[str, Any],
    now: float,
    subject: str | None = None,
) -> Iterator[alerts.Condition]:
    """What holds now for the project's ``agents``; a threshold of 0 switches its kind off.
    A count or an age keeps its alert open down to half its threshold."""
    marks = ", ".join("?" for _ in agents)
    rows = store.execute(
        "SELECT id, agent, reason, ended FROM messages WHERE state = 'dead'"
        f" AND agent IN ({marks})",
        agents,
    ).fetchall()
    for message_id, agent, reason, ended in rows:
        text = (
            f"message {message_id} for {agent} is dead: {reason} (`orch queue show {message_id}`)"
        )
        yield alerts.Condition("dead", agent, f"{message_id}@{ended}", text,
                               fires=now - ended < DEAD_WITHIN)  # fmt: skip
    after = float(settings["needs_input_after"])
    if after > 0:
        rows = store.execute(
            f"SELECT id, state_changed FROM agents WHERE state = 'needs_input' AND id IN ({marks})",
            agents,
        ).fetchall()
        for agent, since in rows:
            text = f"{agent} has been waiting for input for {age(now - since)}"
            yield alerts.Condition("needs_input", agent, str(since), text,
                                   fires=now - since >= after)  # fmt: skip
    yield from hook_failures(store, project, agents, settings, now, subject or project)
    yield from queues(store, agents, settings, now)


def hook_failures(
    store: Store,
    project: str,
    agents: list[str],
    settings: dict[str, Any],
    now: float,
    subject: str,
) -> Iterator[alerts.Condition]:
    limit, window = int(settings["hook_failures"]), float(settings["hook_failure_window"])
    if limit <= 0:
        return
    marks = ", ".join("?" for _ in agents)
    count, latest = store.execute(
        f"SELECT count(*), max(id) FROM hook_runs WHERE ok = 0 AND ts > ? AND agent IN ({marks})",
        (now - window, *agents),
    ).fetchone()
    if 2 * count < limit:
        return
    event, agent, plugins = store.execute(
        "SELECT event, agent, plugins FROM hook_runs WHERE id = ?", (latest,)
    ).fetchone()
    text = f"{count} hook runs failed in {project} in the last {age(window)}"
    text += f"; latest {event} of {agent}"
    for plugin in json.loads(plugins):
        if plugin.get("outcome") != "ok":
            text += f": {plugin.get('plugin')} {plugin.get('outcome')} {plugin.get('error', '')}"
            break
    yield alerts.Condition("hook_failures", None, subject, text, fires=count >= limit)


def queues(
    store: Store, agents: list[str], settings: dict[str, Any], now: float
) -> Iterator[alerts.Condition]:
    depth, oldest = int(settings["queue_depth"]), float(settings["queue_age"])
    marks = ", ".join("?" for _ in agents)
    rows = store.execute(
        "SELECT agent, count(*), min(CASE WHEN coalesce(not_before, 0) <= ? THEN"
        f" {ready_sql(store.dialect)} END) FROM messages m WHERE {PENDING_SQL}"
        f" AND agent IN ({marks}) GROUP BY agent",
        (now, RETRIED, *agents),
    ).fetchall()
    for agent, count, since in rows:
        if depth > 0 and 2 * count >= depth:
            text = f"{count} message{'s' * (count != 1)} waiting for {agent}"
            yield alerts.Condition("queue_depth", agent, "", text, fires=count >= depth)
        if oldest > 0 and since is not None and 2 * (now - since) >= oldest:
            text = f"the oldest message for {agent} has waited {age(now - since)}"
            yield alerts.Condition("queue_age", agent, "", text, fires=now - since >= oldest)


def named(private: str, host: str) -> str:
    """A channel as a failure names it: apprise's privacy URL (passwords and tokens masked) cut
    to its scheme and host, for that URL still shows its path and query, where a webhook keeps
    its secret, a header's (``?+Authorization=``) or a parameter's (``?-key=``). What stands
    where a host would is shown only when apprise connects to it (``host``): ``ntfy://TOPIC``
    puts ntfy.sh's topic, its only secret, there."""
    from urllib.parse import urlsplit

    parts = urlsplit(private)
    shown = parts.netloc if (parts.hostname or "") == host.strip("[]").lower() else "..."
    return f"{parts.scheme}://{shown}/..."


def hidden(reason: str, url: str, name: str) -> str:
    """apprise's reason for a failure with each part of ``url`` it quotes masked, but those
    ``name`` shows: some say where they sent (ntfy names its topic, on ntfy.sh the secret)."""
    from urllib.parse import unquote

    rest = url.split("://", 1)[-1]
    parts = set(re.split(r"[/:@?&=#+,;\s]+", rest + " " + unquote(rest)))
    parts -= set(re.split(r"[/:@\[\]]+", name))
    for part in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        reason = reason.replace(part, "...")
    return reason


class NotSent(Exception):
    """Some URL did not take the alert."""


@hookimpl
def orch_alert(alert: dict[str, Any], ctx: HookContext) -> bool | None:
    """Each URL of ``[alerts] urls`` that has not taken the alert yet gets it, through
    apprise; one that fails is named (its secrets hidden) and tried again later."""
    urls = list({**DEFAULTS, **ctx.config}["urls"])
    if not urls:
        return None
    import hashlib
    import logging
    import time

    import apprise

    rows = ctx.store.execute("SELECT url_hash FROM alert_urls WHERE alert_id = ?", (alert["id"],))
    took = {url_hash for (url_hash,) in rows.fetchall()}
    title = f"orch: {alert['kind']}" + (f" {alert['agent']}" if alert["agent"] else "")
    kind = apprise.NotifyType.FAILURE if alert["kind"] in SEVERE else apprise.NotifyType.WARNING
    failures = []
    for url in urls:
        url_hash = hashlib.sha256(url.encode()).hexdigest()[:16]
        if url_hash in took:
            continue
        channel = apprise.Apprise()
        if not channel.add(url):
            failures.append(f"{url.split(':', 1)[0]}://...: not a URL apprise can send to")
            continue
        capture: Any = apprise.LogCapture  # apprise's reason for a failure, from its log
        with capture(level=logging.WARNING, fmt="%(message)s") as said:
            sent = channel.notify(body=alert["message"], title=title, notify_type=kind)
        if not sent:
            why = (said.getvalue().strip().splitlines() or ["no reason given"])[-1]
            name = named(channel.urls(privacy=True)[0], channel[0].host or "")
            failures.append(f"{name}: {hidden(why, url, name)}")
            continue
        with ctx.store.transaction() as tx:
            tx.execute(
                "INSERT INTO alert_urls (alert_id, url_hash, ts) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (alert["id"], url_hash, time.time()),
            )
    if failures:
        raise NotSent("; ".join(failures))
    return True
