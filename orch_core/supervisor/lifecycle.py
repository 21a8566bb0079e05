"""Agents orch runs: launch specs, failure classification, the recovery ladder, the supervisor.

Hooks only *schedule* a recovery (one row in ``recoveries``); the long-running ``orch supervise``
carries it out, then verifies it: a re-prompt counts when the agent's next prompt hook arrives, a
restart when its SessionStart arrives, each within ``verify_seconds``. A failed step climbs the
ladder: re-prompt → restart in the same window keeping the conversation (``--continue``) → fresh
start → give up (``failed`` plus an alert). At most ``max_restarts_per_hour`` restarts per agent,
with exponential backoff and jitter; the history lives in the database, so limits survive a
restart of the supervisor itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from typing import TYPE_CHECKING

from orch_core import paths
from orch_core.errors import OrchError
from orch_core.plugins.settings import Setting, defaults, regexes
from orch_core.storage import open_store
from orch_core.supervisor import tmux

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from orch_core.storage.store import Store

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
LADDER = ("reprompt", "restart", "fresh", "give_up")
ACTIVE = ("scheduled", "running", "verifying")


def _a_line(value: str) -> None:
    if not value.strip() or not value.isprintable():
        raise ValueError("must be one line of printable text")


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
    "continue_args": Setting(["--continue"], trusted=True),  # added to the agent's argv
    "reprompt_line": Setting(
        "orch: the last request failed; please continue where you left off.", check=_a_line
    ),
    "reprompt_min_wait": Setting(2.0, min=0),  # Claude needs a moment after StopFailure
}
DEFAULTS = defaults(SETTINGS)
SPAWN_ENV = ("ORCH_DB", "ORCH_STATE_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME")


class LifecycleError(OrchError):
    """A one-line reason a lifecycle command cannot proceed."""


def settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULTS, **(config or {})}


def classify(error: str | None) -> str:
    """``fatal``, ``wait`` (rate limit: wait for the reset) or ``transient``, from the
    structured StopFailure ``error`` field only, never from assistant text."""
    if error in FATAL:
        return "fatal"
    return "wait" if error == "rate_limit" else "transient"


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
) -> None:
    now = time.time()
    with store.transaction() as tx:
        tx.execute(
            """INSERT INTO launch_specs (agent, argv, cwd, env, tmux_socket, tmux_session, pane,
                                         created, updated)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT (agent) DO UPDATE SET
                 argv = ?2, cwd = ?3, env = ?4, tmux_socket = ?5, tmux_session = ?6, pane = ?7,
                 updated = ?8""",
            (agent, json.dumps(argv), cwd, json.dumps(env), socket, session, pane, now),
        )


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise LifecycleError(
            f"invalid agent name {name!r}: letters, digits, '.', '_', '-'; "
            "at most 64, starting with a letter or digit"
        )
    return name


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
    """Start an agent in a new tmux window and keep its launch spec; return the spec."""
    check_name(name)
    if not os.path.isdir(cwd):
        raise LifecycleError(f"no such directory: {cwd}")
    existing = get_spec(store, name)
    if existing and tmux.pane_state(existing["pane"] or "", existing["tmux_socket"]) == "alive":
        raise LifecycleError(f"agent {name} is already running in pane {existing['pane']}")
    socket = env.get("ORCH_TMUX_SOCKET") or None
    variables = pane_env(name, extra_env, env)
    try:
        pane = tmux.start(socket, session, name, cwd, variables, argv)
    except tmux.TmuxError as exc:
        raise LifecycleError(str(exc)) from None
    save_spec(
        store,
        name,
        argv=argv,
        cwd=cwd,
        env=dict(extra_env),
        socket=socket,
        session=session,
        pane=pane,
    )
    store.set_agent_state(name, "starting", session_id=None, project_dir=cwd)
    spec = get_spec(store, name)
    assert spec is not None
    return spec


def relaunch(
    store: Store,
    agent: str,
    *,
    fresh: bool,
    env: Mapping[str, str],
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restart the agent in its own window (a new one if that is gone), keeping the
    conversation unless ``fresh``. ``orch_before_restart`` comes first (the rebrief plugin
    saves a checkpoint there, so the rebrief follows)."""
    spec = get_spec(store, agent)
    if spec is None:
        raise LifecycleError(
            f"no launch spec for {agent}: start it with `orch spawn` or "
            "describe it with `orch adopt`"
        )
    argv = list(spec["argv"])
    if not fresh:
        argv += list(settings(config)["continue_args"])
    variables = pane_env(agent, spec["env"], env)
    from orch_core.hook.context import Runtime

    Runtime.open(env, spec["cwd"], store=store, agent=agent).fire(
        "orch_before_restart", {"agent": agent}
    )
    try:
        if spec["pane"] and tmux.pane_state(spec["pane"], spec["tmux_socket"]) != "gone":
            tmux.respawn(spec["pane"], spec["tmux_socket"], spec["cwd"], variables, argv)
        else:
            spec["pane"] = tmux.start(
                spec["tmux_socket"], spec["tmux_session"], agent, spec["cwd"], variables, argv
            )
            save_spec(
                store,
                agent,
                argv=spec["argv"],
                cwd=spec["cwd"],
                env=spec["env"],
                socket=spec["tmux_socket"],
                session=spec["tmux_session"],
                pane=spec["pane"],
            )
    except tmux.TmuxError as exc:
        raise LifecycleError(str(exc)) from None
    store.set_agent_state(agent, "starting", session_id=None, project_dir=spec["cwd"])
    return spec


def stop(store: Store, agent: str) -> None:
    """Stop the agent and everything scheduled for it; the supervisor leaves it alone."""
    spec = get_spec(store, agent)
    if spec and spec["pane"]:
        try:
            tmux.tmux(spec["tmux_socket"], "kill-pane", "-t", spec["pane"])
        except tmux.TmuxError:
            pass  # already gone
    cancel_recoveries(store, agent, "stopped by a user")
    store.set_agent_state(agent, "stopped", session_id=None, project_dir=None)


# -- recoveries ---------------------------------------------------------------------------------


def cancel_recoveries(store: Store, agent: str, why: str) -> None:
    with store.transaction() as tx:
        tx.execute(
            "UPDATE recoveries SET state = 'cancelled', outcome = ?, finished = ?"
            " WHERE agent = ? AND state IN ('scheduled', 'running', 'verifying')",
            (why, time.time(), agent),
        )


def alert(store: Store, agent: str, kind: str, message: str) -> None:
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO alerts (agent, ts, kind, message) VALUES (?, ?, ?, ?)",
            (agent, time.time(), kind, message),
        )


def give_up(store: Store, agent: str, reason: str) -> None:
    """No more automatic recovery: ``failed`` and an alert, until a user acts."""
    now = time.time()
    cancel_recoveries(store, agent, "gave up")
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO recoveries (agent, created, reason, step, due, state, started,"
            " finished, outcome) VALUES (?, ?, ?, 'give_up', ?, 'done', ?, ?, 'failed')",
            (agent, now, reason, now, now, now),
        )
    store.set_agent_state(agent, "failed", session_id=None, project_dir=None)
    alert(store, agent, "failed", f"{agent} failed: {reason}; no automatic restart")


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


def schedule(
    store: Store,
    agent: str,
    reason: str,
    step: str,
    config: Mapping[str, Any] | None = None,
    *,
    wait: float | None = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """Plan ``step`` for ``agent`` after its backoff; ``None`` if a recovery is already under
    way. A restart past the hourly limit gives up instead."""
    now = time.time() if now is None else now
    conf = settings(config)
    if step == "give_up":
        give_up(store, agent, reason)
        return None
    if step in ("restart", "fresh") and restarts_last_hour(store, agent, now) >= int(
        conf["max_restarts_per_hour"]
    ):
        give_up(store, agent, f"{reason}; {conf['max_restarts_per_hour']} restarts this hour")
        return None
    with store.transaction() as tx:
        busy = tx.execute(
            "SELECT 1 FROM recoveries WHERE agent = ? AND state IN ('scheduled', 'running',"
            " 'verifying')",
            (agent,),
        ).fetchone()
        if busy:
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
        return {"id": added, "agent": agent, "step": step, "due": now + wait}


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
    """Carries out and verifies recoveries, watches panes, finds hung agents, expires TTLs,
    retries wake-ups, and keeps house: backups, old large-message files, hook runs the backstop
    stopped. One per machine (a lock in the state directory)."""

    def __init__(
        self, env: Mapping[str, str], *, watch_every: float = 2.0, house_every: float = 10.0
    ) -> None:
        self.env = env
        self.store = open_store(env)
        self.watch_every = watch_every
        self.house_every = house_every
        self._watched = 0.0
        self._housekept = 0.0

    def config(self, agent: str) -> dict[str, Any] | None:
        """The auto_restart settings of the agent's project; ``None`` where that project
        switched the plugin off (the supervisor then restarts none of its agents)."""
        from orch_core.plugins import plan

        try:
            found = plan.load(self.env, self.project_of(agent)).config.get("auto_restart")
        except Exception:
            return settings(None)
        return None if found is None else settings(found)

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._watched >= self.watch_every:
            self._watched = now
            self.watch(now)
        self.verify(now)
        self.run_due(now)
        self.upkeep(now)
        if now - self._housekept >= self.house_every:
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

        loaded = plan.load(self.env, paths.project_dir(self.env))
        every = float(loaded.settings.get("backup_every", 900))
        keep = int(loaded.settings.get("backup_keep", 8))
        retention = float(loaded.config.get("queue", {}).get("spill_retention", 86400))
        steps: dict[str, Callable[[], object]] = {
            "collect stopped hook runs": lambda: backstop.collect(self.env, self.store, now),
            "remove old message files": lambda: Queue(self.store).prune_spills(retention, now),
            "sum up hook runs": lambda: metrics.roll_up(self.store, now),
        }
        if every > 0:
            steps["back up the database"] = lambda: self.store.back_up(keep, now, older_than=every)
        for what, step in steps.items():
            try:
                step()
            except Exception as exc:
                log.write("error", f"supervisor could not {what}", self.env, error=repr(exc))

    def watch(self, now: float) -> None:
        """Dead or vanished panes of spawned agents, and agents busy without a hook too long:
        a restart is scheduled for each, unless its project switched auto_restart off."""
        rows = self.store.execute(
            "SELECT s.agent, s.pane, s.tmux_socket, a.state, a.last_seen FROM launch_specs s"
            " LEFT JOIN agents a ON a.id = s.agent"
        ).fetchall()
        for agent, pane, socket, state, last_seen in rows:
            conf = self.config(agent)
            if state in ("failed", "stopped") or conf is None:
                continue
            found = tmux.pane_state(pane or "", socket)
            if found != "alive":
                schedule(self.store, agent, f"pane {found}", "restart", conf, now=now)
            elif state == "busy" and last_seen and now - last_seen > float(conf["hung_after"]):
                schedule(self.store, agent, "hung: busy with no hook", "restart", conf, now=now)

    def run_due(self, now: float) -> None:
        due = self.store.execute(
            "SELECT id, agent, step, reason FROM recoveries WHERE state = 'scheduled'"
            " AND due <= ? ORDER BY due",
            (now,),
        ).fetchall()
        for recovery_id, agent, step, reason in due:
            with self.store.transaction() as tx:
                claimed = tx.execute(
                    "UPDATE recoveries SET state = 'running', started = ? WHERE id = ?"
                    " AND state = 'scheduled'",
                    (now, recovery_id),
                ).rowcount
            if claimed:
                self.carry_out(recovery_id, agent, step, reason, now)

    def carry_out(self, recovery_id: int, agent: str, step: str, reason: str, now: float) -> None:
        conf = self.config(agent)
        if conf is None:
            self.finish(recovery_id, "cancelled", "auto_restart is off in the agent's project", now)
            return
        try:
            if step == "reprompt":
                target = self.store.agent_pane(agent)
                spec = get_spec(self.store, agent)
                if spec and spec["pane"]:
                    target = (spec["pane"], spec["tmux_socket"])
                if target is None or not tmux.type_line(
                    target[0], target[1], str(conf["reprompt_line"]), paths.state_dir(self.env)
                ):
                    raise LifecycleError("could not type into the agent's pane")
            else:
                relaunch(self.store, agent, fresh=step == "fresh", env=self.env, config=conf)
                self.fire(
                    "orch_agent_restarted",
                    agent=agent,
                    attempt=restarts_last_hour(self.store, agent, now),
                    reason=reason,
                )
        except LifecycleError as exc:
            self.finish(recovery_id, "failed", str(exc), now)
            self.escalate(agent, step, reason, now)
            return
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE recoveries SET state = 'verifying', verify_by = ? WHERE id = ?",
                (now + float(conf["verify_seconds"]), recovery_id),
            )

    def verify(self, now: float) -> None:
        """A re-prompt worked when a prompt hook followed; a restart when SessionStart did."""
        rows = self.store.execute(
            "SELECT id, agent, step, reason, started, verify_by FROM recoveries"
            " WHERE state = 'verifying'"
        ).fetchall()
        for recovery_id, agent, step, reason, started, verify_by in rows:
            event = "UserPromptSubmit" if step == "reprompt" else "SessionStart"
            seen = self.store.execute(
                "SELECT 1 FROM hook_runs WHERE agent = ? AND event = ? AND ts > ? LIMIT 1",
                (agent, event, started),
            ).fetchone()
            if seen:
                self.finish(recovery_id, "done", f"{event} arrived", now)
            elif now > verify_by or (step != "reprompt" and self.exited(agent)):
                self.finish(recovery_id, "failed", f"no {event}", now)
                self.escalate(agent, step, reason, now)

    def exited(self, agent: str) -> bool:
        """The restarted program already exited (e.g. no conversation to ``--continue``)."""
        spec = get_spec(self.store, agent)
        return bool(spec and tmux.pane_state(spec["pane"] or "", spec["tmux_socket"]) != "alive")

    def escalate(self, agent: str, step: str, reason: str, now: float) -> None:
        """The next rung of the ladder, right away (its limits still apply)."""
        following = LADDER[min(LADDER.index(step) + 1, len(LADDER) - 1)]
        conf = self.config(agent)
        if conf is None:
            return
        schedule(
            self.store,
            agent,
            f"{reason}; {step} did not work",
            following,
            conf,
            wait=0.0,
            now=now,
        )

    def finish(self, recovery_id: int, state: str, outcome: str, now: float) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE recoveries SET state = ?, outcome = ?, finished = ? WHERE id = ?",
                (state, outcome, now, recovery_id),
            )

    def upkeep(self, now: float) -> None:
        """``orch_supervisor_tick`` once per project, with its agents and its own plugins and
        settings (the queue plugin sweeps, the idle plugin wakes agents whose messages came
        due). Agents orch has not heard from, with messages waiting, count as the
        supervisor's own project's."""
        from orch_core.hook.context import Runtime
        from orch_core.queue import PENDING_SQL

        home = paths.project_dir(self.env)
        projects: dict[str, list[str]] = {}
        rows = self.store.execute(
            "SELECT a.id, coalesce(s.cwd, a.project_dir) FROM agents a"
            " LEFT JOIN launch_specs s ON s.agent = a.id"
        ).fetchall()
        for agent, project in rows:
            projects.setdefault(project or home, []).append(agent)
        known = {agent for agent, _ in rows}
        waiting = self.store.execute(
            f"SELECT DISTINCT agent FROM messages WHERE {PENDING_SQL}"
        ).fetchall()
        projects.setdefault(home, []).extend(a for (a,) in waiting if a not in known)
        for project, agents in projects.items():
            runtime = Runtime.open(self.env, project, store=self.store)
            runtime.fire("orch_supervisor_tick", {"now": now, "agents": sorted(agents)})

    def fire(self, hook: str, **kwargs: Any) -> None:
        """Observer ``hook`` for ``kwargs["agent"]``, with the plugins and settings of the
        agent's own project."""
        from orch_core.hook.context import Runtime

        agent = kwargs.get("agent")
        runtime = Runtime.open(self.env, self.project_of(agent), store=self.store, agent=agent)
        runtime.fire(hook, kwargs)

    def project_of(self, agent: str | None) -> str:
        """The project an agent works in (its launch spec, or where its hooks came from);
        the supervisor's own for an agent orch knows nothing of."""
        row = self.store.execute(
            "SELECT coalesce(s.cwd, a.project_dir) FROM agents a LEFT JOIN launch_specs s"
            " ON s.agent = a.id WHERE a.id = ?",
            (agent,),
        ).fetchone()
        return row[0] if row and row[0] else paths.project_dir(self.env)

    def run(self, seconds: float | None = None, interval: float = 0.5) -> bool:
        """Tick until ``seconds`` pass (for ever when ``None``); ``False`` if another
        supervisor holds the lock."""
        lock = supervisor_lock(self.env, blocking=False)
        if lock is None:
            return False
        end = None if seconds is None else time.monotonic() + seconds
        try:
            while end is None or time.monotonic() < end:
                try:
                    self.tick()
                except Exception as exc:  # keep supervising; say what went wrong
                    from orch_core import log

                    log.write("error", "supervisor tick failed", self.env, error=repr(exc))
                time.sleep(interval)
        finally:
            os.close(lock)
        return True


def lock_path(env: Mapping[str, str]) -> str:
    return os.path.join(paths.state_dir(env), "supervise.lock")


def supervisor_lock(env: Mapping[str, str], *, blocking: bool, claim: bool = True) -> int | None:
    """The single-instance lock, as an open fd, or ``None`` when another process holds it.
    With ``claim``, the holder writes its pid there (a mere check writes nothing)."""
    import fcntl

    paths.ensure_private_dir(paths.state_dir(env))
    fd = os.open(lock_path(env), os.O_RDWR | os.O_CREAT, 0o600)
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


def ensure_supervisor(env: Mapping[str, str]) -> None:
    """Start ``orch supervise`` in the background unless one runs already."""
    import subprocess

    if supervisor_running(env):
        return
    orch = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch")
    log = os.path.join(paths.state_dir(env), "supervise.log")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        subprocess.Popen(
            [orch, "supervise"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
