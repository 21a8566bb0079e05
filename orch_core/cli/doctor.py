"""``orch doctor``: loud checks at set-up time, so the hot path can degrade quietly."""

from __future__ import annotations

import os
import shlex
import time
from typing import TYPE_CHECKING

import attrs

from orch_core import hosts, paths
from orch_core.cli import install
from orch_core.cli.errors import damaged
from orch_core.hook import backstop
from orch_core.plugins import plan as plans
from orch_core.storage import backup, database, open_store
from orch_core.storage.store import DatabaseUnreachable
from orch_core.supervisor import lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: Hook runs that failed this recently make the installation unhealthy.
RECENT_SECONDS = 600
#: Pending messages for one agent, and the age of the oldest, past which the queue is stuck.
QUEUE_DEPTH = 100
OLDEST_SECONDS = 900.0
#: Agent states in which its pane should be there.
LIVE_STATES = ("starting", "idle", "waking", "busy", "needs_input")
GUIDE = "docs/troubleshooting.md"


@attrs.frozen
class Check:
    """One line of the report; a failing check says the one thing that fixes it. Names in
    ``fix`` that come from hooks or tmux (agents, hosts) are quoted as a shell would need
    them (:func:`shlex.quote`): the line is meant to be pasted."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_settings(project_dir: str, env: Mapping[str, str] = os.environ) -> Check:
    try:
        found = install.installed_events(project_dir)
    except install.InstallError as exc:
        return Check(
            "settings",
            False,
            str(exc),
            f"correct or remove the file named (Claude Code cannot read it either), then "
            f"orch install {shlex.quote(project_dir)}",
        )
    reinstall = _reinstall(project_dir)
    missing = [name for name in install.INSTALLED_EVENTS if name not in found]
    if len(missing) == len(install.INSTALLED_EVENTS):
        return Check(
            "settings",
            False,
            f"orch-hook is not registered in {project_dir}; run `orch install`",
            reinstall,
        )
    disabled = install.hooks_disabled(project_dir, env)
    if disabled:
        local = install.settings_path(project_dir, local=True)
        also = "" if disabled == local else f", or set it to false in {local}"
        return Check(
            "settings",
            False,
            f"disableAllHooks is true in {disabled}: Claude Code runs no hook, orch-hook neither",
            f"remove disableAllHooks from {disabled}{also}",
        )
    broken = sorted({c for cs in found.values() for c in cs if not os.access(c, os.X_OK)})
    if broken:
        return Check("settings", False, f"orch-hook not executable: {', '.join(broken)}", reinstall)
    ours = install.hook_command()
    other = sorted({c for cs in found.values() for c in cs if c != ours})
    if other:
        return Check(
            "settings",
            False,
            f"settings call {', '.join(other)}, not this orch's {ours} (another install)",
            reinstall,
        )
    if missing:
        return Check("settings", False, f"orch-hook missing for: {', '.join(missing)}", reinstall)
    return Check("settings", True, f"orch-hook registered for {len(found)} events")


def _reinstall(project_dir: str) -> str:
    """``orch install`` for each settings file that holds orch's handlers, ``--local`` for
    settings.local.json: told plain ``orch install`` after ``orch install --local``, the user
    registered orch a second time in the shared file and left the stale local one as it was."""
    quoted = shlex.quote(project_dir)
    flags = [" --local" if local else "" for local in install.holders(project_dir)] or [""]
    return " && ".join(f"orch install{flag} {quoted}" for flag in flags)


def unreachable_fix(env: Mapping[str, str]) -> str:
    """What brings an unreachable database back."""
    return (
        "start the PostgreSQL server, or correct [orch] database in "
        f"{paths.user_config_path(env)} (ORCH_DB if set); meanwhile hooks answer without it "
        "and messages wait"
    )


def check_database(env: Mapping[str, str]) -> Check:
    try:
        store = open_store(env, timeout=2.0)
        try:
            health = store.health()
        finally:
            store.close()
    except DatabaseUnreachable as exc:
        return Check("database", False, str(exc), unreachable_fix(env))
    except Exception as exc:
        if paths.is_url(database(env)):  # the error names the server, without its password
            return Check("database", False, str(exc), GUIDE)
        advice = f"; {backup.advice(paths.db_path(env))}" if damaged(exc) else ""
        return Check("database", False, f"{paths.db_path(env)}: {exc}{advice}", GUIDE)
    problems = []
    if health["integrity"] != "ok":
        advice = backup.advice(paths.db_path(env))
        problems.append(f"integrity check: {health['integrity']}; {advice}")
    journal = health["journal_mode"]  # None: a server's, not a file's
    if journal is not None and journal != "wal":
        problems.append(f"journal mode {journal}, expected wal")
    if health["schema_version"] != health["expected_schema_version"]:
        problems.append(
            f"schema {health['schema_version']}, expected {health['expected_schema_version']}"
        )
    file = "integrity ok, WAL, " if journal else ""
    detail = "; ".join(problems) or f"{health['path']}: {file}schema {health['schema_version']}"
    return Check("database", not problems, detail, "" if not problems else GUIDE)


def check_config(env: Mapping[str, str], project_dir: str) -> Check:
    """Values in the config files that orch does not use (the hooks use the defaults)."""
    plan = plans.load(env, project_dir)
    if plan.config_errors:
        return Check(
            "config", False, "; ".join(plan.config_errors), "correct or remove the key named"
        )
    return Check("config", True, "every configured value is in use")


def check_plugins(env: Mapping[str, str], project_dir: str) -> Check:
    """What the hooks run: the plan (built here if stale, each import bounded) and what was
    left out of it, and why."""
    plan = plans.load(env, project_dir, uncached=True)  # as the hooks would
    problems = [*plan.errors, *_tables_behind(env, plan)]
    if problems:
        return Check(
            "plugins",
            False,
            "; ".join(problems),
            "fix the plugin named, or switch it off: [plugins] disable = [NAME]",
        )
    names = sorted({impl.plugin for impls in plan.hooks.values() for impl in impls})
    cache = plans.cache_path(env, project_dir)
    if plan.cacheable and not os.path.isfile(cache):
        return Check(
            "plugins",
            False,
            f"loaded: {', '.join(names) or 'none'}; but the plan cannot be cached at {cache}, "
            "so each hook builds its own (slower)",
            f"free space on that disk, or make {os.path.dirname(cache)} a folder orch can write",
        )
    return Check("plugins", True, f"loaded: {', '.join(names) or 'none'}")


def _tables_behind(env: Mapping[str, str], plan: plans.Plan) -> list[str]:
    """Why a plugin's own tables are not at its ``orch_schema``'s version, brought there as
    every hook and command would: a step that fails only logs, and the plugin then fails in
    its own hooks, where nothing else said which plugin or step."""
    if not plan.schemas:
        return []
    store = open_store(env, timeout=2.0)
    try:
        plan.ensure_tables(store, timeout=2.0)
    except DatabaseUnreachable:
        raise
    except Exception as exc:
        return [str(exc)]
    finally:
        store.close()
    return []


def check_recent_runs(env: Mapping[str, str]) -> Check:
    store = open_store(env, timeout=2.0)
    dialect = store.dialect
    try:
        backstop.collect(env, store)
        failed = [r for r in store.runs(100, failed=True) if r["ts"] > time.time() - RECENT_SECONDS]
    except DatabaseUnreachable:
        raise
    except Exception as exc:
        return Check("hook runs", False, f"cannot read hook runs: {exc}", GUIDE)
    finally:
        store.close()
    if not failed:
        return Check("hook runs", True, f"no failed hook runs in the last {RECENT_SECONDS} s")
    stopped = sum(any(p["outcome"] == "killed" for p in run["plugins"]) for run in failed)
    last = failed[0]
    errors = "; ".join(
        f"{p['plugin']} {p['outcome']}: {p.get('error', '')}"
        for p in last["plugins"]
        if p["outcome"] != "ok"
    )
    killed = f" ({stopped} stopped by the backstop)" if stopped else ""
    fix = f"orch logs --event {last['event']}"
    if dialect == "postgresql" and any(p["outcome"] == "timeout" for p in last["plugins"]):
        fix = (f"raise budget_ms under [orch] in {paths.user_config_path(env)}: on PostgreSQL a "
               "hook's start (importing its driver, connecting) counts against it (README, "
               f"'Running a fleet across machines'); then {fix}")  # fmt: skip
    return Check(
        "hook runs",
        False,
        f"{len(failed)} failed in the last {RECENT_SECONDS} s{killed}; "
        f"latest ({last['event']}): {errors}",
        fix,
    )


def check_supervisor(env: Mapping[str, str]) -> Check:
    """``orch supervise`` must run when orch has agents to restart."""
    pid = lifecycle.supervisor_running(env)
    outage = lifecycle.read_outage(env) if pid else None
    if outage:
        down = time.time() - float(outage.get("since", time.time()))
        return Check(
            "supervisor",
            False,
            f"orch supervise runs (pid {pid}) but has not reached the database for {down:.0f} s"
            f" (it tries again every {outage.get('retry_in')} s): {outage.get('error')}",
            unreachable_fix(env),
        )
    if pid:
        return Check("supervisor", True, f"orch supervise runs (pid {pid}){warm_answers(env)}")
    store = open_store(env, timeout=2.0)
    try:
        spawned = store.execute("SELECT count(*) FROM launch_specs").fetchone()[0]
    except DatabaseUnreachable:
        raise
    except Exception:
        spawned = 0
    finally:
        store.close()
    if spawned:
        return Check(
            "supervisor",
            False,
            f"orch supervise is not running, but {spawned} "
            "agents have launch specs: run `orch supervise`",
            "orch supervise &",
        )
    return Check("supervisor", True, "not running (no agents with a launch spec)")


def warm_answers(env: Mapping[str, str]) -> str:
    """On a server store, whether the running supervisor answers the host's hooks and sends
    (:mod:`orch_core.hook.warm`)."""
    from orch_core.hook import warm

    if not paths.is_url(database(env)):
        return ""
    if not os.path.exists(warm.socket_path(env)):
        return "; it does not answer hooks and sends (they do their own work: see orch logs)"
    cold_for = warm.cold_for(env)
    if cold_for:
        return (f"; it left a hook or send unanswered: they do their own work for {cold_for:.0f} s"
                " more (see orch logs)")  # fmt: skip
    return ", answering this host's hooks and sends"


def check_alerts(env: Mapping[str, str]) -> Check:
    """Agents orch gave up on: unhealthy until a user restarts (or stops) them."""
    store = open_store(env, timeout=2.0)
    try:
        rows = store.execute(
            "SELECT l.agent, l.message FROM alerts l JOIN agents a ON a.id = l.agent"
            " WHERE a.state = 'failed' AND l.ts >= a.state_changed - 1 ORDER BY l.id DESC"
        ).fetchall()
    except DatabaseUnreachable:
        raise
    except Exception as exc:
        return Check("alerts", False, f"cannot read alerts: {exc}", GUIDE)
    finally:
        store.close()
    if rows:
        agent = shlex.quote(rows[0][0])
        fix = f"fix the cause, then `orch restart {agent}` (or `orch stop {agent}`)"
        return Check("alerts", False, "; ".join(f"{message}" for _, message in rows), fix)
    return Check("alerts", True, "no agent left failed")


def check_messages(env: Mapping[str, str]) -> Check:
    """Messages that went dead: delivered too often without a sign the model saw them, or
    waiting for one that ended. Each needs a look (``orch queue show``, ``orch queue retry``)."""
    store = open_store(env, timeout=2.0)
    try:
        count, newest = store.execute(
            "SELECT count(*), max(ended) FROM messages WHERE state = 'dead'"
        ).fetchone()
        if not count:
            return Check("messages", True, "no dead messages")
        mid, reason = store.execute(
            "SELECT id, reason FROM messages WHERE state = 'dead' AND ended = ?", (newest,)
        ).fetchone()
    finally:
        store.close()
    return Check(
        "messages",
        False,
        f"{count} dead; newest {mid}: {reason} (see `orch queue show {mid}`, "
        f"`orch queue retry {mid}`)",
        f"orch queue retry {mid}",
    )


def check_queue(env: Mapping[str, str]) -> Check:
    """Queues that grow or wait too long: an agent that takes no messages."""
    from orch_core.ops import fleet

    store = open_store(env, timeout=2.0)
    try:
        agents = fleet.snapshot(store, time.time())["agents"]
    finally:
        store.close()
    now = time.time()
    stuck = []
    for agent in agents:
        depth = sum(agent["pending"].values())
        age = now - agent["oldest_pending"] if agent["oldest_pending"] else 0.0
        if depth > QUEUE_DEPTH or age > OLDEST_SECONDS:
            stuck.append(
                (agent["id"], f"{depth} pending, oldest {age / 60:.0f} min, {agent['state']}")
            )
    if stuck:
        return Check(
            "queue",
            False,
            f"more than {QUEUE_DEPTH} pending or older than {OLDEST_SECONDS / 60:.0f} min: "
            + "; ".join(f"{agent} ({state})" for agent, state in stuck),
            f"orch queue {shlex.quote(stuck[0][0])} (then see {GUIDE}, messages stuck queued)",
        )
    total = sum(sum(a["pending"].values()) for a in agents)
    return Check("queue", True, f"{total} pending, none stuck")


def check_panes(env: Mapping[str, str]) -> Check:
    """Agents orch believes are running whose tmux pane is gone, and agents waiting for a
    person (a permission prompt, a question)."""
    from orch_core.supervisor import tmux

    store = open_store(env, timeout=2.0)
    try:
        found = store.execute(
            "SELECT a.id, a.state, coalesce(s.host, a.host) FROM agents a LEFT JOIN launch_specs"
            f" s ON s.agent = a.id WHERE a.state IN ({', '.join('?' for _ in LIVE_STATES)})",
            LIVE_STATES,
        ).fetchall()
        mine = set(hosts.owned(store, paths.host(env), [(a, host) for a, _, host in found]))
        rows = [(agent, state) for agent, state, _ in found if agent in mine]  # panes here
        panes = {agent: store.agent_pane(agent) for agent, _ in rows}
        for agent in panes:
            spec = lifecycle.get_spec(store, agent)
            if spec and spec["pane"]:
                panes[agent] = (spec["pane"], spec["tmux_socket"])
    finally:
        store.close()
    gone = [a for a, p in panes.items() if p and tmux.pane_state(p[0], p[1]) == "gone"]
    waiting = [agent for agent, state in rows if state == "needs_input"]
    if gone:
        agent = shlex.quote(gone[0])
        return Check(
            "panes",
            False,
            f"no tmux pane for {', '.join(gone)}",
            f"orch restart {agent} (or `orch stop {agent}` if it should not run)",
        )
    if waiting:
        pane = panes.get(waiting[0])
        where = f" (tmux pane {pane[0]})" if pane else ""
        return Check(
            "panes",
            False,
            f"waiting for a person: {', '.join(waiting)}",
            f"answer {waiting[0]}'s prompt in its window{where}",
        )
    return Check("panes", True, f"{len(rows)} agents running, each in its pane")


def check_hosts(env: Mapping[str, str]) -> Check:
    """On a store several machines share: this machine's name in the fleet, and the hosts
    whose supervisor has gone silent (their agents are unreachable)."""
    here = paths.host(env)
    store = open_store(env, timeout=2.0)
    try:
        now = time.time()
        known = hosts.listing(store)
        gone = hosts.unreachable(store, now, lifecycle.host_timeout(env))
    finally:
        store.close()
    others = ", ".join(f"{row['host']} ({now - row['last_seen']:.0f} s ago)" for row in known)
    detail = f"this host is {here}; supervisors last heard: {others or 'none yet'}"
    if gone:
        first = sorted(gone)[0]
        return Check(
            "hosts",
            False,
            f"{detail}; unreachable: {', '.join(sorted(gone))} (their agents' messages wait)",
            f"start `orch supervise` on {first}, or see whether that machine is up",
        )
    return Check("hosts", True, detail)


def check_names(env: Mapping[str, str]) -> Check:
    """On a store several machines share: no chosen name answers on two hosts at once."""
    store = open_store(env, timeout=2.0)
    try:
        twice = hosts.on_two_hosts(store, time.time())
    finally:
        store.close()
    if twice:
        agent = shlex.quote(min(twice))
        said = "; ".join(f"{a} on hosts {', '.join(h)}" for a, h in sorted(twice.items()))
        return Check(
            "names",
            False,
            f"answering on two hosts at once in the last {hosts.TWICE_WITHIN / 60:.0f} min: "
            f"{said} (each session takes messages meant for the other)",
            f"stop {agent} on all hosts but one (`orch stop {agent}` there), or start the "
            "other under a name of its own",
        )
    return Check("names", True, "each chosen name answers on one host")


def check_backups(env: Mapping[str, str]) -> Check:
    """The newest backup, and whether the supervisor keeps taking them."""
    if paths.is_url(database(env)):
        return Check("backups", True, "the PostgreSQL server's to take (pg_dump): orch takes none")
    db = paths.db_path(env)
    found = backup.backups(db)
    if not found:
        return Check("backups", True, "none yet (orch supervise takes them; `orch backup` now)")
    every = float(plans.load(env, paths.project_dir(env)).settings.get("backup_every", 900))
    age = time.time() - os.path.getmtime(found[0])
    detail = f"{len(found)} kept; newest {found[0]}, {age / 60:.0f} min old"
    late = every > 0 and age > 2 * every + 60 and lifecycle.supervisor_running(env)
    if late:
        return Check(
            "backups", False, f"{detail}: the supervisor has not taken one since", "orch backup"
        )
    return Check("backups", True, detail)


def run(env: Mapping[str, str], project_dir: str) -> list[Check]:
    """Every check; one that cannot run (a full disk, a damaged file) fails with the reason
    instead of ending doctor."""
    checks: dict[str, Callable[[], Check]] = {
        "settings": lambda: check_settings(project_dir, env),
        "database": lambda: check_database(env),
        "config": lambda: check_config(env, project_dir),
        "plugins": lambda: check_plugins(env, project_dir),
        "hook runs": lambda: check_recent_runs(env),
        "messages": lambda: check_messages(env),
        "queue": lambda: check_queue(env),
        "panes": lambda: check_panes(env),
        "supervisor": lambda: check_supervisor(env),
        "alerts": lambda: check_alerts(env),
        "backups": lambda: check_backups(env),
    }
    if paths.is_url(database(env)):  # a fleet's store: which hosts are heard from
        checks["hosts"] = lambda: check_hosts(env)
        checks["names"] = lambda: check_names(env)
    results = []
    for name, check in checks.items():
        try:
            results.append(check())
        except DatabaseUnreachable:
            results.append(
                Check(name, False, "not checked: the database is unreachable", unreachable_fix(env))
            )
        except Exception as exc:
            results.append(Check(name, False, f"cannot check: {type(exc).__name__}: {exc}", GUIDE))
    return results
