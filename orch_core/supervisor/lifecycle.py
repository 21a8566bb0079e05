"""Agents orch runs: launch specs, spawning, restarting and stopping, and the supervisor.

Hooks only *schedule* a recovery (one row in ``recoveries``); the long-running ``orch supervise``
ticks twice a second and fires ``orch_supervisor_tick`` once per project, with that project's
agents and plugins: the auto_restart plugin carries recoveries out and verifies them there, the
queue plugin sweeps, the idle plugin wakes. The supervisor itself keeps house (backups, old
large-message files, hook runs the backstop stopped).

On a store several machines share, each host runs its own supervisor, and each looks after its
own host's agents only (tmux reaches no other machine's panes): it records a heartbeat for its
host, and listens for the store's notifications, so that a message sent on another host wakes
an agent of this one at once (``orch_wake_agent``). Launch specs keep their host, and a
command that would touch another host's pane refuses, naming the host.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from orch_core import hosts, paths
from orch_core.errors import OrchError
from orch_core.ops import alerts
from orch_core.queue import WAKE_CHANNEL
from orch_core.storage import open_store
from orch_core.storage.store import DatabaseUnreachable
from orch_core.supervisor import tmux

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from orch_core.storage.store import Listener, Store

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: What ``orch adopt`` takes: a name :data:`NAME` allows, or the id hooks give an agent started
#: by hand in a tmux session so named, ``session:window`` (``host/session:window`` on a store
#: several machines share).
ADOPTABLE = re.compile(rf"{NAME.pattern}|(?:{NAME.pattern}/)?{NAME.pattern}:[0-9]+")
ACTIVE = ("scheduled", "running", "verifying")
#: What ``orch restart`` adds to keep the conversation (Claude Code's own flag).
KEEP_CONVERSATION = ("--continue",)
SPAWN_ENV = ("ORCH_DB", "ORCH_HOST", "ORCH_STATE_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
#: Seconds before a supervisor tries again to listen, after losing the connection.
RELISTEN_AFTER = 5.0
#: Seconds a stopping supervisor waits for the alerts it is sending.
SETTLE_SECONDS = 10.0
#: Seconds between the supervisor's tries while the database is unreachable: the first wait,
#: doubled after each failed try up to the last.
RECONNECT_FIRST = 1.0
RECONNECT_CAP = 30.0


class LifecycleError(OrchError):
    """A one-line reason a lifecycle command cannot proceed."""


class Stopped(LifecycleError):
    """The agent was stopped while its restart began (or, for the supervisor's, restarted or
    spawned again by hand): it stays as the user left it."""


# -- launch specs ------------------------------------------------------------------------------


def get_spec(store: Store, agent: str) -> dict[str, Any] | None:
    cur = store.execute("SELECT * FROM launch_specs WHERE agent = ?", (agent,))
    row = cur.fetchone()
    if row is None:
        return None
    spec = dict(zip([d[0] for d in cur.description], row, strict=True))
    spec["argv"], spec["env"] = json.loads(spec["argv"]), json.loads(spec["env"])
    return spec


def save_spec(
    store: Store,
    agent: str,
    *,
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    socket: str | None,
    session: str,
    pane: str | None,
    host: str | None,
) -> None:
    """Keep how to start ``agent`` again, and where: the tmux server, session and pane of
    ``host``."""
    now = time.time()
    with store.transaction() as tx:
        tx.execute(
            """INSERT INTO launch_specs (agent, argv, cwd, env, tmux_socket, tmux_session, pane,
                                         created, updated, host)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET
                 argv = excluded.argv, cwd = excluded.cwd, env = excluded.env,
                 tmux_socket = excluded.tmux_socket, tmux_session = excluded.tmux_session,
                 pane = excluded.pane, updated = excluded.updated, host = excluded.host""",
            (agent, json.dumps(argv), cwd, json.dumps(env), socket, session, pane, now, now,
             host),
        )  # fmt: skip


def spec_pane_state(spec: Mapping[str, Any]) -> str:
    """The state of the pane ``spec`` records, as its agent's: ``gone`` when it records none,
    or when that id now names a pane that is not the agent's (tmux numbers panes from ``%0``
    again after its server restarts)."""
    if not spec["pane"]:
        return "gone"
    return tmux.pane_state(
        spec["pane"], spec["tmux_socket"], spec["agent"], since=float(spec["updated"])
    )


def with_reported_pane(
    store: Store, spec: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    """``spec``, and when it records no pane (``orch adopt`` before the agent's first hook),
    the pane the agent's hooks reported on this host since, if it is still there and no other
    agent's: marked as the agent's and kept in the launch spec. While there is none, the pane
    stays ``None``: no pane known yet is not a dead pane."""
    agent = spec["agent"]
    if spec["pane"]:
        return dict(spec)
    row = store.execute(
        "SELECT pane, tmux_socket, host, created FROM sessions WHERE agent = ?"
        " AND pane IS NOT NULL ORDER BY created DESC LIMIT 1",
        (agent,),
    ).fetchone()
    if row is None or (store.shared and row[2] != paths.host(env)):
        return dict(spec)
    pane, socket, _, reported = row
    if tmux.pane_state(pane, socket, agent, since=float(reported)) == "gone":
        return dict(spec)
    try:
        tmux.mark(pane, socket, agent)
    except tmux.TmuxError:
        return dict(spec)
    with store.transaction() as tx:
        tx.execute(
            "UPDATE launch_specs SET pane = ?, tmux_socket = ? WHERE agent = ? AND pane IS NULL",
            (pane, socket, agent),
        )
    return {**spec, "pane": pane, "tmux_socket": socket}


def elsewhere(
    store: Store, spec: Mapping[str, Any] | None, env: Mapping[str, str], agent: str | None = None
) -> str | None:
    """The other host whose tmux holds ``spec``'s pane (without one, the host ``agent``'s hooks
    come from: started there by hand), or ``None`` when this host may touch it (always, on a
    store one machine uses)."""
    if not store.shared:
        return None
    if spec is None and agent is not None:
        row = store.execute("SELECT host FROM agents WHERE id = ?", (agent,)).fetchone()
        spec = {"host": row[0]} if row else None
    if spec is None or spec.get("host") in (None, paths.host(env)):
        return None
    return str(spec["host"])


def heard_elsewhere(store: Store, agent: str, since: float, env: Mapping[str, str]) -> str | None:
    """The other host whose hooks last spoke for ``agent``, after ``since`` (its launch spec's
    last start): started there by hand, it runs there now. ``None`` on a store one machine
    uses."""
    if not store.shared:
        return None
    row = store.execute(
        "SELECT host FROM agents WHERE id = ? AND last_seen > ?", (agent, since)
    ).fetchone()
    return None if row is None or row[0] in (None, paths.host(env)) else str(row[0])


def hand_over(store: Store, agent: str, host: str, env: Mapping[str, str]) -> None:
    """``agent`` now runs on ``host``, started there by hand: this host forgets how it started
    it and restarts it no more (like any agent started by hand, it is not restarted there)."""
    from orch_core import log

    with store.transaction() as tx:
        tx.execute("DELETE FROM launch_specs WHERE agent = ?", (agent,))
    cancel_recoveries(store, agent, f"now runs on host {host}")
    log.write("warning", f"{agent} now runs on host {host}: not restarted here", env,
              agent=agent, host=host)  # fmt: skip


def check_here(
    store: Store, agent: str, spec: Mapping[str, Any] | None, env: Mapping[str, str], verb: str
) -> None:
    """A one-line error when ``agent`` runs on another host: only that host reaches its pane."""
    other = elsewhere(store, spec, env, agent)
    if other is not None:
        raise LifecycleError(f"{agent} runs on host {other}: run `orch {verb}` there")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise LifecycleError(
            f"invalid agent name {name!r}: letters, digits, '.', '_', '-'; "
            "at most 64, starting with a letter or digit"
        )
    return name


def check_adoptable(name: str) -> str:
    """The name ``orch adopt`` gives a launch spec: one ``orch spawn`` would take, or such a
    tmux session's ``session:window`` (:data:`ADOPTABLE`); restarting the agent names its
    window and its ``ORCH_AGENT`` after it."""
    if not ADOPTABLE.fullmatch(name):
        raise LifecycleError(
            f"invalid agent name {name!r}: a name `orch spawn` takes (letters, digits, '.', "
            "'_', '-'; at most 64, starting with a letter or digit), or SESSION:WINDOW of a "
            "tmux session so named"
        )
    return name


def check_launch(
    cwd: str, argv: Sequence[str], extra_env: Mapping[str, str], env: Mapping[str, str]
) -> None:
    """A one-line error unless tmux can start ``argv`` in ``cwd``: the directory exists and the
    program is an executable file (a path, from ``cwd`` as tmux takes it) or on the PATH the
    pane gets (``extra_env``'s, else this process's). Else tmux opens a window that closes at
    once and says nothing, and a restart later fails the same way."""
    import shutil

    if not os.path.isdir(cwd):
        raise LifecycleError(f"no such directory: {cwd}")
    program = argv[0]
    if os.sep in program:
        path = os.path.join(cwd, program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise LifecycleError(f"{path} is not an executable file")
    elif shutil.which(program, path=extra_env.get("PATH", env.get("PATH", os.defpath))) is None:
        raise LifecycleError(f"command {program!r} not found on PATH")


def pane_env(agent: str, extra: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """What the agent's pane gets: its extra variables, orch's state location, ORCH_AGENT."""
    inherited = {key: env[key] for key in SPAWN_ENV if env.get(key)}
    return {**inherited, **extra, "ORCH_AGENT": agent}


def spawn(
    store: Store,
    name: str,
    *,
    cwd: str,
    argv: list[str],
    session: str,
    extra_env: Mapping[str, str],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Start an agent in a new tmux window and keep its launch spec; return the spec. A
    recovery planned for an agent of that name whose pane died is dropped: it would restart
    the new agent."""
    check_spawn(store, name, cwd=cwd, argv=argv, extra_env=extra_env, env=env)
    host = paths.host(env)
    socket = env.get("ORCH_TMUX_SOCKET") or None
    variables = pane_env(name, extra_env, env)
    cancel_recoveries(store, name, "replaced by orch spawn")
    try:
        pane = tmux.start(socket, session, name, cwd, variables, argv)
        socket = tmux.server_of(pane, socket)
        tmux.mark(pane, socket, name)
    except tmux.TmuxError as exc:
        raise LifecycleError(f"cannot start {name}: {exc}") from None
    save_spec(
        store,
        name,
        argv=argv,
        cwd=cwd,
        env=dict(extra_env),
        socket=socket,
        session=session,
        pane=pane,
        host=host,
    )
    store.set_agent_state(name, "starting", session_id=None, project_dir=cwd, host=host)
    with store.transaction() as tx:  # a conversation of an agent of that name before is not its
        tx.execute("UPDATE agents SET session_id = NULL WHERE id = ?", (name,))
    spec = get_spec(store, name)
    assert spec is not None
    return spec


def check_spawn(
    store: Store,
    name: str,
    *,
    cwd: str,
    argv: Sequence[str],
    extra_env: Mapping[str, str],
    env: Mapping[str, str],
) -> None:
    """Every reason :func:`spawn` refuses, all read-only: ``orch spawn`` asks before it
    installs the hooks, so a refused spawn changes nothing."""
    check_name(name)
    existing = get_spec(store, name)
    if check_free(store, name, env) is None and existing and spec_pane_state(existing) == "alive":
        raise LifecycleError(f"agent {name} is already running in pane {existing['pane']}")
    check_launch(cwd, argv, extra_env, env)


def check_free(store: Store, name: str, env: Mapping[str, str]) -> str | None:
    """A one-line error when another host runs an agent of that name (unless it stopped
    there, or that host went silent); else that other host, if any."""
    other = elsewhere(store, get_spec(store, name), env, name)
    if other is not None and not _let_go(store, name, other, env):
        raise LifecycleError(
            f"agent {name} runs on host {other}: stop it there first, or choose another name"
        )
    return other


def agent_state(store: Store, agent: str) -> str | None:
    row = store.execute("SELECT state FROM agents WHERE id = ?", (agent,)).fetchone()
    return None if row is None else str(row[0])


def _let_go(store: Store, agent: str, host: str, env: Mapping[str, str]) -> bool:
    """Whether another host's agent may start here instead: stopped there, or its host gone
    silent."""
    return agent_state(store, agent) == "stopped" or host in hosts.unreachable(
        store, time.time(), host_timeout(env)
    )


def host_timeout(env: Mapping[str, str]) -> float:
    """``[orch] host_timeout``: seconds without a heartbeat before a host is unreachable."""
    from orch_core.plugins import plan

    try:
        settings = plan.load(env, paths.project_dir(env)).settings
    except Exception:  # a broken config is `orch doctor`'s to report
        return hosts.HOST_TIMEOUT
    return float(settings.get("host_timeout", hosts.HOST_TIMEOUT))


def relaunch(
    store: Store,
    agent: str,
    *,
    env: Mapping[str, str],
    continue_args: Sequence[str] = KEEP_CONVERSATION,
    recovery: int | None = None,
) -> dict[str, Any]:
    """Restart the agent in its own window (a new one if that is gone), with
    ``continue_args`` added to its command (none: a fresh start). ``orch_before_restart``
    comes first (the rebrief plugin saves a checkpoint there, so the rebrief follows); the
    supervisor's ``recovery`` cancelled meanwhile (``orch restart``, ``orch spawn``) is not
    carried on: it would restart the agent a second time. A directory since removed is
    refused: tmux would start the agent in the folder it runs in (another project's, whose
    conversation ``--continue`` would take up)."""
    spec = get_spec(store, agent)
    if spec is None:
        raise LifecycleError(
            f"no launch spec for {agent}: start it with `orch spawn` or "
            "describe it with `orch adopt`"
        )
    check_here(store, agent, spec, env, "restart")
    if recovery is not None and agent_state(store, agent) == "stopped":
        # planned by a pane watch that read the agent's state just before `orch stop` recorded
        # it, after the stop cancelled what was planned
        cancel_recoveries(store, agent, "stopped by a user")
        raise Stopped(f"{agent} was stopped")
    if not os.path.isdir(spec["cwd"]):
        raise LifecycleError(f"no such directory: {spec['cwd']}")
    argv = [*spec["argv"], *own_conversation(store, agent, continue_args)]
    variables = pane_env(agent, spec["env"], env)
    from orch_core.hook.context import Runtime

    was = agent_state(store, agent)
    Runtime.open(env, spec["cwd"], store=store, agent=agent).fire(
        "orch_before_restart", {"agent": agent}
    )
    if agent_state(store, agent) == "stopped" != was:  # `orch stop` while plugins saved
        raise Stopped(f"{agent} was stopped meanwhile")
    if recovery is not None and not _under_way(store, recovery):
        raise Stopped(f"the restart of {agent} was cancelled meanwhile")
    spec = with_reported_pane(store, spec, env)
    try:
        if spec_pane_state(spec) != "gone":
            tmux.respawn(spec["pane"], spec["tmux_socket"], spec["cwd"], variables, argv)
            tmux.mark(spec["pane"], spec["tmux_socket"], agent)  # if it was one from before marks
        else:
            spec["pane"] = tmux.start(
                spec["tmux_socket"], spec["tmux_session"], agent, spec["cwd"], variables, argv
            )
            spec["tmux_socket"] = tmux.server_of(spec["pane"], spec["tmux_socket"])
            tmux.mark(spec["pane"], spec["tmux_socket"], agent)
            save_spec(
                store,
                agent,
                argv=spec["argv"],
                cwd=spec["cwd"],
                env=spec["env"],
                socket=spec["tmux_socket"],
                session=spec["tmux_session"],
                pane=spec["pane"],
                host=spec["host"],
            )
    except tmux.TmuxError as exc:
        raise LifecycleError(str(exc)) from None
    store.set_agent_state(
        agent, "starting", session_id=None, project_dir=spec["cwd"], host=spec["host"]
    )
    return spec


#: A Claude Code session id as ``--resume`` may take it: not a flag of its own.
SESSION_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")


def own_conversation(store: Store, agent: str, continue_args: Sequence[str]) -> list[str]:
    """``continue_args``, with Claude Code's ``--continue`` as ``--resume`` of the agent's own
    latest session, where orch knows it and its transcript is still there: ``--continue``
    takes up the folder's newest conversation, another agent's where several work in one
    folder (the restarted agent would go on with that one's work, its own lost)."""
    if KEEP_CONVERSATION[0] not in continue_args:
        return list(continue_args)
    row = store.execute(
        "SELECT a.session_id, s.transcript FROM agents a"
        " JOIN sessions s ON s.session_id = a.session_id AND s.agent = a.id WHERE a.id = ?",
        (agent,),
    ).fetchone()
    if row is None or not SESSION_ID.fullmatch(row[0]) or not os.path.isfile(row[1] or ""):
        return list(continue_args)
    own = f"--resume={row[0]}"
    return [own if arg == KEEP_CONVERSATION[0] else arg for arg in continue_args]


def _under_way(store: Store, recovery: int) -> bool:
    row = store.execute("SELECT state FROM recoveries WHERE id = ?", (recovery,)).fetchone()
    return row is not None and row[0] == "running"


def adopt(
    store: Store,
    agent: str,
    *,
    argv: list[str],
    cwd: str,
    extra_env: dict[str, str],
    socket: str | None,
    session: str,
    pane: str | None,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Keep a launch spec for an agent started by hand, in ``pane`` if given, else in the pane
    its hooks reported (if any yet); return the spec. The pane is marked as the agent's: orch
    restarts and stops only panes so marked."""
    if pane:
        try:
            tmux.mark(pane, socket, agent)
            socket = tmux.server_of(pane, socket)
        except tmux.TmuxError:
            pass  # no such pane: the supervisor restarts the agent in a new window
    save_spec(store, agent, argv=argv, cwd=cwd, env=extra_env, socket=socket, session=session,
              pane=pane, host=paths.host(env))  # fmt: skip
    spec = get_spec(store, agent)
    assert spec is not None
    return with_reported_pane(store, spec, env)


def restart(
    store: Store, agent: str, *, env: Mapping[str, str], fresh: bool = False
) -> dict[str, Any]:
    """What ``orch restart`` does: the agent now, in its window, its conversation kept unless
    ``fresh``; a recovery the supervisor had planned for it is dropped. Only on the agent's
    own host."""
    check_here(store, agent, get_spec(store, agent), env, "restart")
    cancel_recoveries(store, agent, "replaced by orch restart")
    return relaunch(store, agent, env=env, continue_args=() if fresh else KEEP_CONVERSATION)


def stop(store: Store, agent: str, env: Mapping[str, str] = os.environ) -> None:
    """Stop the agent and everything scheduled for it; the supervisor leaves it alone. Only on
    the agent's own host, and only an agent orch knows: a mistyped name would otherwise become
    a ``stopped`` agent of its own."""
    spec = get_spec(store, agent)
    check_here(store, agent, spec, env, "stop")
    if spec is None and not store.execute("SELECT 1 FROM agents WHERE id = ?", (agent,)).fetchone():
        raise LifecycleError(f"no agent {agent}: orch neither started it nor heard from it")
    if spec:
        spec = with_reported_pane(store, spec, env)
    # stopped before its pane goes: the supervisor's pane watch, finding the pane gone, would
    # take a running agent for crashed and plan its restart
    store.set_agent_state(agent, "stopped", session_id=None, project_dir=None)
    if spec and spec_pane_state(spec) != "gone":  # never a pane that is not the agent's
        try:
            tmux.tmux(spec["tmux_socket"], "kill-pane", "-t", spec["pane"])
        except tmux.TmuxError:
            pass  # gone meanwhile
    cancel_recoveries(store, agent, "stopped by a user")


# -- recoveries ---------------------------------------------------------------------------------


def cancel_recoveries(store: Store, agent: str, why: str) -> None:
    with store.transaction() as tx:
        tx.execute(
            "UPDATE recoveries SET state = 'cancelled', outcome = ?, finished = ?"
            " WHERE agent = ? AND state IN ('scheduled', 'running', 'verifying')",
            (why, time.time(), agent),
        )


NO_RECOVERY: dict[str, Any] = {"restarts_last_hour": 0, "next_action": None}


def overview(store: Store, now: float) -> dict[str, dict[str, Any]]:
    """Per agent, for ``orch agents``: restarts in the last hour and the next planned step."""
    result: dict[str, dict[str, Any]] = {}
    rows = store.execute(
        "SELECT agent, step, state, due, started FROM recoveries WHERE created > ?"
        " OR state IN ('scheduled', 'running', 'verifying') ORDER BY id",
        (now - 3600,),
    ).fetchall()
    for agent, step, state, due, started in rows:
        entry = result.setdefault(agent, {"restarts_last_hour": 0, "next_action": None})
        if step in ("restart", "fresh") and started and state != "failed":
            entry["restarts_last_hour"] += 1
        if state in ACTIVE:
            entry["next_action"] = {"step": step, "state": state, "due": due}
    return result


def history(store: Store, agent: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM recoveries", []
    if agent:
        sql, args = sql + " WHERE agent = ?", [agent]
    cur = store.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# -- the supervisor -----------------------------------------------------------------------------


class Supervisor:
    """Ticks every project's plugins (recoveries, sweeps, wake-ups) for this host's agents and
    keeps house: backups, old large-message files, hook runs the backstop stopped, the host's
    heartbeat. One per machine (a lock in the state directory)."""

    def __init__(self, env: Mapping[str, str], *, house_every: float = 10.0) -> None:
        self.env = env
        self.store = open_store(env)
        self.host = paths.host(env)
        #: The supervisor's own project, taken as it starts: the folder it was started in
        #: (``orch spawn``'s, a worktree) may be removed while it runs, and every tick that
        #: asked for it again failed, restarting and waking no agent of any project.
        self.home = paths.project_dir(env)
        self.house_every = house_every
        self._housekept = 0.0
        #: A backup refused (the database emptied or damaged) is tried again only after
        #: ``backup_every``: each try copies the whole file and logs a line.
        self._backup_refused = 0.0
        self._beat = 0.0
        self._sending: threading.Thread | None = None
        #: While the database is unreachable: since when, and the wait before the next try.
        self._outage: dict[str, Any] | None = None
        self._listener: Listener | None = None
        self._listen_again = 0.0
        self._listen_failed = False

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if due(now, self._beat, hosts.BEAT_EVERY):
            self._beat = now
            hosts.beat(self.store, self.host, now)
        self.upkeep(now)
        self.send_alerts(now)
        if due(now, self._housekept, self.house_every):
            self._housekept = now
            self.housekeeping(now)

    def housekeeping(self, now: float) -> None:
        """A backup when one is due, old large-message files removed, stopped hook runs
        recorded, ended hours of hook runs summed for ``orch stats``. Each step on its own: one
        that fails (a full disk) is logged, not fatal."""
        from orch_core import log
        from orch_core.hook import backstop
        from orch_core.ops import metrics
        from orch_core.plugins import plan
        from orch_core.queue import Queue

        loaded = plan.load(self.env, self.home)
        every = float(loaded.settings.get("backup_every", 900))
        keep = int(loaded.settings.get("backup_keep", 8))
        retention = float(loaded.config.get("queue", {}).get("spill_retention", 86400))
        steps: dict[str, Callable[[], object]] = {
            "collect stopped hook runs": lambda: backstop.collect(self.env, self.store, now),
            "remove old message files": lambda: Queue(self.store).prune_spills(retention, now),
            "sum up hook runs": lambda: metrics.roll_up(self.store, now),
        }
        if every > 0 and now - self._backup_refused >= every:
            steps["back up the database"] = lambda: self.back_up(keep, now, every)
        for what, step in steps.items():
            try:
                step()
            except Exception as exc:
                log.write("error", f"supervisor could not {what}", self.env, error=repr(exc))

    def back_up(self, keep: int, now: float, every: float) -> None:
        """A backup when the newest is older than ``every`` seconds."""
        from orch_core.storage.backup import BackupError

        try:
            self.store.back_up(keep, now, older_than=every)
        except BackupError:
            self._backup_refused = now
            raise

    def upkeep(self, now: float) -> None:
        """``orch_supervisor_tick`` once per project, with its agents of this host and its own
        plugins and settings (auto_restart recovers, the queue plugin sweeps, the idle plugin
        wakes agents whose messages came due). Agents orch has not heard from, with messages
        waiting or a recovery under way, count as the supervisor's own project's."""
        from orch_core.hook.context import Runtime
        from orch_core.queue import PENDING_SQL

        home = self.home
        rows = self.store.execute(
            "SELECT a.id, coalesce(s.cwd, a.project_dir), coalesce(s.host, a.host) FROM agents a"
            " LEFT JOIN launch_specs s ON s.agent = a.id"
        ).fetchall()
        project_of = {agent: project or home for agent, project, _ in rows}
        projects: dict[str, list[str]] = {}
        for agent in hosts.owned(self.store, self.host, [(a, host) for a, _, host in rows]):
            projects.setdefault(project_of[agent], []).append(agent)
        waiting = self.store.execute(
            f"SELECT DISTINCT agent FROM messages WHERE {PENDING_SQL} UNION"
            " SELECT agent FROM recoveries WHERE state IN ('scheduled', 'running', 'verifying')"
        ).fetchall()
        # one adopted on another host before its first hook is that host's: here its pane
        # would be taken for gone, its restarts tried and failed, and the agent given up
        elsewhere: set[str] = set()
        if self.store.shared:
            specs = self.store.execute(
                "SELECT agent FROM launch_specs WHERE host <> ?", (self.host,)
            ).fetchall()
            elsewhere = {agent for (agent,) in specs}
        projects.setdefault(home, []).extend(
            a for (a,) in waiting if a not in project_of and a not in elsewhere
        )
        for project, agents in projects.items():
            runtime = Runtime.open(self.env, project, store=self.store)
            runtime.fire("orch_supervisor_tick", {"now": now, "agents": sorted(agents)})

    def wait(self, seconds: float) -> None:
        """Until the next tick: asleep, or, on a shared store, listening, so that a message
        sent on any host for an agent of this one wakes it at once (the tick would only in
        ``seconds``). During an outage the listening connection is tried again every
        :data:`RELISTEN_AFTER` seconds, and the one that opens ends the wait: the next tick
        comes then, not at the end of a backoff of up to :data:`RECONNECT_CAP` seconds, while
        the host's heartbeat, older by then than ``host_timeout``, has every other host take
        its agents for unreachable."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            had = self._listener is not None
            listener = self._listening()
            if listener is None:
                if not self.store.shared:
                    time.sleep(left)
                    return
                time.sleep(min(left, max(0.0, self._listen_again - time.monotonic())))
                continue
            if not had and self._outage is not None:
                return  # the database answers again
            try:
                agents = listener.wait(left)
            except OrchError as exc:
                self._lost(exc)
                continue
            if agents:
                self.wake(sorted(set(agents)))

    def _listening(self) -> Listener | None:
        """The store's wake-up channel, opened on first use and after a lost connection."""
        if self._listener is None and self.store.shared:
            if time.monotonic() < self._listen_again:
                return None
            try:
                self._listener = self.store.listen(WAKE_CHANNEL)
                self._listen_failed = False
            except OrchError as exc:
                self._lost(exc)
        return self._listener

    def _lost(self, exc: Exception) -> None:
        """The listening connection failed: the ticks still wake every agent; try again after
        :data:`RELISTEN_AFTER`, and say so once until it works again."""
        from orch_core import log

        if self._listener is not None:
            self._listener.close()
        self._listener = None
        self._listen_again = time.monotonic() + RELISTEN_AFTER
        if not self._listen_failed:
            self._listen_failed = True
            log.write("warning", "supervisor cannot listen for wake-ups; its ticks still wake",
                      self.env, error=str(exc))  # fmt: skip

    def wake(self, agents: list[str]) -> None:
        """``orch_wake_agent`` for each of ``agents`` that is this host's, in its project."""
        from orch_core.hook.context import Runtime

        for agent in agents:
            try:
                if hosts.this_hosts(self.store, self.host, agent):
                    runtime = Runtime.open(self.env, self.project_of(agent), store=self.store)
                    runtime.fire("orch_wake_agent", {"agent": agent})
            except Exception as exc:  # the next tick wakes it all the same
                from orch_core import log

                log.write("error", "supervisor could not wake an agent", self.env,
                          agent=agent, error=repr(exc))  # fmt: skip

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def send_alerts(self, now: float) -> None:
        """Alerts whose time has come go to their channels in a thread of their own, one pass
        at a time: a channel that is slow to answer must not hold up restarts and wake-ups."""
        if self._sending is not None and self._sending.is_alive():
            return
        if not alerts.due(self.store, now):
            return
        import threading

        def send() -> None:
            try:
                alerts.send_due(self.env, self.store, now, self.project_of)
            except Exception as exc:  # the next pass tries again
                from orch_core import log

                log.write("error", "supervisor could not send alerts", self.env, error=repr(exc))
            finally:
                self.store.release()

        self._sending = threading.Thread(target=send, name="orch-alerts", daemon=True)
        self._sending.start()

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the alerts being sent, at most ``timeout`` seconds."""
        if self._sending is not None:
            self._sending.join(timeout)

    def project_of(self, agent: str | None) -> str:
        """The project an agent works in (its launch spec, or where its hooks came from);
        the supervisor's own for an agent orch knows nothing of."""
        known = self.store.projects_of([agent]) if agent else {}
        return known.get(agent or "") or self.home

    def run(self, seconds: float | None = None, interval: float = 0.5) -> bool:
        """Tick until ``seconds`` pass (for ever when ``None``); ``False`` if another
        supervisor holds the lock."""
        lock = supervisor_lock(self.env, blocking=False)
        if lock is None:
            return False
        write_outage(self.env, None)  # one a supervisor killed during an outage left behind
        end = None if seconds is None else time.monotonic() + seconds
        warm = None
        if self.store.shared:  # the host's hooks and sends skip the driver's import and connecting
            from orch_core.supervisor.warm import WarmServer

            warm = WarmServer(self.env)
            warm.start()
        try:
            while end is None or time.monotonic() < end:
                if not holds(lock, self.env):
                    from orch_core import log

                    log.write("warning", "supervisor stops: its lock file was removed (its "
                              "state folder with it?), and another supervisor may take its "
                              "place", self.env, lock=lock_path(self.env))  # fmt: skip
                    break
                pause = interval
                try:
                    self.tick()
                except DatabaseUnreachable as exc:
                    pause = self.unreachable(exc)
                except Exception as exc:  # keep supervising; say what went wrong
                    from orch_core import log

                    log.write("error", "supervisor tick failed", self.env, error=repr(exc))
                else:
                    self.reachable()
                left = None if end is None else end - time.monotonic()
                self.wait(pause if left is None else max(0.0, min(pause, left)))
        finally:
            if warm is not None:
                warm.close()
            self.close()
            self.settle(SETTLE_SECONDS)
            write_outage(self.env, None)
            os.close(lock)
        return True

    def unreachable(self, exc: DatabaseUnreachable) -> float:
        """The database cannot be reached: said in the log and in the status ``orch doctor``
        reads; returns the wait before the next try (doubling, up to :data:`RECONNECT_CAP`).
        Meanwhile the hooks answer without the store, and nothing is restarted or woken."""
        from orch_core import log

        now = time.time()
        first = self._outage is None
        if first and self._listener is not None:
            # idle, it may outlive the outage unbroken (a server stuck, a network gone
            # mid-session), and :meth:`wait` would sit out the whole backoff on it: opened
            # again, every RELISTEN_AFTER seconds, it tells when the server answers
            self._listener.close()
            self._listener = None
            self._listen_again = time.monotonic() + RELISTEN_AFTER
        if self._outage is None:
            self._outage = {"since": now, "retry_in": RECONNECT_FIRST}
        else:
            self._outage["retry_in"] = min(2 * self._outage["retry_in"], RECONNECT_CAP)
        self._outage.update(error=str(exc), tried=now, pid=os.getpid())
        wait = float(self._outage["retry_in"])
        said = "database unreachable" if first else "database still unreachable"
        log.write("error" if first else "warning", f"{said}: the supervisor tries again in "
                  f"{wait:g} s", self.env, error=str(exc), retry_in=wait)  # fmt: skip
        write_outage(self.env, self._outage)
        return wait

    def reachable(self) -> None:
        """A tick went through: an outage, if there was one, is over."""
        if self._outage is None:
            return
        from orch_core import log

        down = time.time() - self._outage["since"]
        log.write("info", f"database reachable again after {down:.0f} s", self.env,
                  down_seconds=round(down, 3))  # fmt: skip
        self._outage = None
        write_outage(self.env, None)


def due(now: float, last: float, every: float) -> bool:
    """Whether ``every`` seconds went by since ``last``, or the clock was set back before it:
    a clock set back an hour would otherwise hold off the next time for that hour."""
    return not last <= now < last + every


def lock_path(env: Mapping[str, str]) -> str:
    return os.path.join(paths.state_dir(env), "supervise.lock")


def outage_path(env: Mapping[str, str]) -> str:
    return os.path.join(paths.state_dir(env), "supervise.outage.json")


def write_outage(env: Mapping[str, str], outage: Mapping[str, Any] | None) -> None:
    """What the supervisor knows of a database outage (``None``: none), for ``orch doctor``.
    Best effort: a full disk must not stop the supervisor."""
    path = outage_path(env)
    try:
        if outage is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        partial = f"{path}.{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(outage, f)
        os.replace(partial, path)
    except OSError:
        pass


def read_outage(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The outage the running supervisor reported, if any."""
    try:
        with open(outage_path(env), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def supervisor_lock(env: Mapping[str, str], *, blocking: bool, claim: bool = True) -> int | None:
    """The single-instance lock, as an open fd, or ``None`` when another process holds it.
    With ``claim``, the holder writes its pid there (a mere check writes nothing)."""
    import fcntl

    paths.ensure_private_dir(paths.state_dir(env))
    fd = os.open(lock_path(env), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    if claim:
        try:  # for `orch doctor` to show; the lock holds without it (a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass
    return fd


def holds(lock: int, env: Mapping[str, str]) -> bool:
    """Whether ``lock`` is still the file at :func:`lock_path`. Removed (its state folder with
    it, to start afresh) or replaced, the next hook or send found no supervisor and started
    one on the new file: two then restarted and woke the same agents, for ever."""
    try:
        there = os.lstat(lock_path(env))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # cannot tell: keep supervising
        return True
    held = os.fstat(lock)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def supervisor_running(env: Mapping[str, str]) -> int | None:
    """The supervisor's pid if one runs, else ``None``."""
    fd = supervisor_lock(env, blocking=False, claim=False)
    if fd is not None:
        os.close(fd)
        return None
    try:
        with open(lock_path(env)) as f:
            return int(f.read().strip() or 0) or -1
    except (OSError, ValueError):
        return -1


def supervise_command() -> list[str]:
    """``orch supervise`` with this interpreter: the ``orch`` beside it, or, when there is none
    (``python -m orch_core.cli`` run by another interpreter, a ``pip install --user``), the
    interpreter itself; ``-P`` keeps the folder it is started in off its path (a ``click.py``
    there would be imported)."""
    orch = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch")
    if os.access(orch, os.X_OK):
        return [orch, "supervise"]
    return [sys.executable, "-P", "-m", "orch_core.cli", "supervise"]


def ensure_supervisor(env: Mapping[str, str]) -> None:
    """Start ``orch supervise`` in the background unless one runs already."""
    import subprocess

    if supervisor_running(env):
        return
    log = os.path.join(paths.state_dir(env), "supervise.log")
    try:  # not through a link, nor waiting on a FIFO put there
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                     0o600)  # fmt: skip
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    try:
        subprocess.Popen(
            supervise_command(),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
