"""The recovery ladder the auto_restart plugin runs on the supervisor's ticks.

Each host's supervisor runs it for its own agents (their panes are in its tmux); the limits
and the history are the store's, so they hold fleet-wide.

A scheduled step is carried out, then verified: a re-prompt counts when the agent's next prompt
hook arrives, a restart when its SessionStart arrives, each within ``verify_seconds``; a
re-prompt whose agent was prompted meanwhile (a turn that has not failed) needs no typing. A
failed step climbs the ladder: re-prompt → restart in the same window keeping the conversation
(``continue_args``) → fresh start → give up (``failed`` plus an alert).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orch_builtin import auto_restart
from orch_core import log, paths
from orch_core.supervisor import lifecycle, tmux

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook.context import HookContext

LADDER = ("reprompt", "restart", "fresh", "give_up")
#: Seconds between looks at the panes of one project's agents (a tmux call each).
WATCH_EVERY = 2.0
_watched: dict[str, float] = {}
#: Seconds the wall clock may run ahead of the monotonic one between two ticks before the
#: supervisor takes it that the machine slept (or its clock was set forward), and seconds
#: between two ticks before it takes it that it could not tick (the database unreachable).
JUMP = 10.0
#: The last tick's ``now`` and ``time.monotonic()``, and when the machine last woke.
_clock: dict[str, float] = {}


def awake_since(now: float) -> float:
    """When the machine last woke (``now`` of the first tick after it slept, or after its
    clock was set forward), else 0: no hook can come while it sleeps, and every agent busy
    when the lid closed would be taken for hung when it opens (the monotonic clock stands
    still while the wall clock does not). So too the first tick after a long gap in them: the
    database was unreachable, and the hooks that came meanwhile went unrecorded."""
    mono = time.monotonic()
    if _clock and (
        (now - _clock["now"]) - (mono - _clock["mono"]) > JUMP or mono - _clock["mono"] > JUMP
    ):
        _clock["woke"] = now
    _clock.update(now=now, mono=mono)
    return _clock.get("woke", 0.0)


class Ladder:
    """One project's recoveries, for one supervisor tick."""

    def __init__(self, ctx: HookContext, agents: list[str], settings: dict[str, Any]) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.agents = agents
        self.settings = settings

    def tick(self, now: float) -> None:
        self.woke = awake_since(now)
        if not self.agents:
            return
        if lifecycle.due(now, _watched.get(self.ctx.project_dir, 0.0), WATCH_EVERY):
            _watched[self.ctx.project_dir] = now
            self.watch(now)
        self.resume(now)
        self.verify(now)
        self.run_due(now)

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        """``sql``'s rows for this project's agents (``{agents}`` in ``sql``)."""
        marks = ", ".join("?" for _ in self.agents)
        return self.store.execute(sql.format(agents=marks), (*args, *self.agents)).fetchall()

    def watch(self, now: float) -> None:
        """Dead or vanished panes of spawned agents, and agents busy without a hook for
        ``hung_after`` while the machine was awake: a restart is scheduled for each."""
        rows = self._rows(
            "SELECT s.agent, s.pane, s.tmux_socket, s.updated, a.state, a.last_seen"
            " FROM launch_specs s LEFT JOIN agents a ON a.id = s.agent"
            " WHERE s.agent IN ({agents})"
        )
        for agent, pane, socket, started, state, last_seen in rows:
            if state in ("failed", "stopped"):
                continue
            spec = {"agent": agent, "pane": pane, "tmux_socket": socket, "updated": started}
            spec = lifecycle.with_reported_pane(self.store, spec, self.ctx.env)
            if spec["pane"]:
                found = lifecycle.spec_pane_state(spec)
            elif self.store.agent_pane(agent, host=paths.host(self.ctx.env)) is None:
                continue  # adopted before its first hook: no pane to watch yet
            else:
                found = "gone"  # the pane its hooks reported
            if found != "alive":
                moved = lifecycle.heard_elsewhere(self.store, agent, started, self.ctx.env)
                if moved:  # its pane here is gone, and it was started again over there
                    lifecycle.hand_over(self.store, agent, moved, self.ctx.env)
                else:
                    self.schedule(agent, f"pane {found}", "restart", now)
            elif (
                state == "busy"
                and last_seen
                and now - max(last_seen, self.woke) > float(self.settings["hung_after"])
            ):
                self.schedule(agent, "hung: busy with no hook", "restart", now)

    def schedule(self, agent: str, reason: str, step: str, now: float, **kw: Any) -> None:
        auto_restart.schedule(
            self.store, agent, reason, step, self.settings, env=self.ctx.env, now=now, **kw
        )

    def run_due(self, now: float) -> None:
        due = self._rows(
            "SELECT id, agent, step, reason, created FROM recoveries WHERE state = 'scheduled'"
            " AND due <= ? AND agent IN ({agents}) ORDER BY due",
            now,
        )
        for recovery_id, agent, step, reason, created in due:
            with self.store.transaction() as tx:
                claimed = tx.execute(
                    "UPDATE recoveries SET state = 'running', started = ? WHERE id = ?"
                    " AND state = 'scheduled'",
                    (now, recovery_id),
                ).rowcount
            if not claimed:
                continue
            if step == "reprompt" and self.prompted_since(agent, created):
                self.finish(recovery_id, agent, step, "done", "prompted meanwhile", now)
            else:
                self.carry_out(recovery_id, agent, step, reason, now)

    def prompted_since(self, agent: str, since: float) -> bool:
        """Whether ``agent`` was prompted after ``since`` (by its person, a wake-up) and that
        turn has not failed: a re-prompt typed now would come on top of its work."""
        latest = self.store.execute(  # from the newest run back: a week holds a million
            "SELECT event, ts FROM hook_runs WHERE agent = ?"
            " AND event IN ('UserPromptSubmit', 'StopFailure') ORDER BY id DESC LIMIT 1",
            (agent,),
        ).fetchone()
        return latest is not None and latest[0] == "UserPromptSubmit" and latest[1] > since

    def carry_out(self, recovery_id: int, agent: str, step: str, reason: str, now: float) -> None:
        try:
            if step == "reprompt":
                self.reprompt(agent)
            else:
                args = () if step == "fresh" else self.settings["continue_args"]
                lifecycle.relaunch(self.store, agent, env=self.ctx.env, continue_args=args,
                                   recovery=recovery_id)  # fmt: skip
                self.ctx.fire(
                    "orch_agent_restarted",
                    agent=agent,
                    attempt=auto_restart.restarts_last_hour(self.store, agent, now),
                    reason=reason,
                )
        except lifecycle.Stopped:
            return  # `orch stop` (or restart, spawn) cancelled this recovery as it began
        except lifecycle.LifecycleError as exc:
            self.failed(recovery_id, agent, step, reason, str(exc), now)
            return
        with self.store.transaction() as tx:  # unless `orch stop` cancelled it meanwhile
            tx.execute(
                "UPDATE recoveries SET state = 'verifying', verify_by = ? WHERE id = ?"
                " AND state = 'running'",
                (now + float(self.settings["verify_seconds"]), recovery_id),
            )

    def reprompt(self, agent: str) -> None:
        """Type ``reprompt_line`` into the agent's pane: its launch spec's while that is still
        the agent's, else (one started by hand, never adopted) the one its hooks came from."""
        spec = lifecycle.get_spec(self.store, agent)
        if spec is None:
            target = tmux.reported_pane(self.store, agent, paths.host(self.ctx.env))
        else:  # never typed into a pane that is not the agent's
            spec = lifecycle.with_reported_pane(self.store, spec, self.ctx.env)
            alive = lifecycle.spec_pane_state(spec) == "alive"
            target = (spec["pane"], spec["tmux_socket"]) if alive else None
        line = str(self.settings["reprompt_line"])
        if target is None or not tmux.type_line(
            target[0], target[1], line, paths.state_dir(self.ctx.env)
        ):
            raise lifecycle.LifecycleError("could not type into the agent's pane")

    def resume(self, now: float) -> None:
        """A step still ``running`` after ``verify_seconds`` was cut short (its supervisor
        killed mid-way): done if it worked all the same, else carried out again, the same step.
        Left ``running``, it would hold off every later recovery of its agent."""
        rows = self._rows(
            "SELECT id, agent, step, reason, started FROM recoveries WHERE state = 'running'"
            " AND started < ? AND agent IN ({agents})",
            now - float(self.settings["verify_seconds"]),
        )
        for recovery_id, agent, step, reason, started in rows:
            event = self.expected(step)
            if self.arrived(agent, event, started):
                self.finish(recovery_id, agent, step, "done", f"{event} arrived", now)
            elif self.finish(recovery_id, agent, step, "failed", f"cut short: no {event}", now):
                self.schedule(agent, reason, step, now, wait=0.0)

    @staticmethod
    def expected(step: str) -> str:
        """The hook that shows ``step`` worked."""
        return "UserPromptSubmit" if step == "reprompt" else "SessionStart"

    def arrived(self, agent: str, event: str, since: float) -> bool:
        return bool(
            self.store.execute(
                "SELECT 1 FROM hook_runs WHERE agent = ? AND event = ? AND ts > ? LIMIT 1",
                (agent, event, since),
            ).fetchone()
        )

    def verify(self, now: float) -> None:
        """A re-prompt worked when a prompt hook followed; a restart when SessionStart did."""
        rows = self._rows(
            "SELECT id, agent, step, reason, started, verify_by FROM recoveries"
            " WHERE state = 'verifying' AND agent IN ({agents})"
        )
        for recovery_id, agent, step, reason, started, verify_by in rows:
            event = self.expected(step)
            if self.arrived(agent, event, started):
                self.finish(recovery_id, agent, step, "done", f"{event} arrived", now)
            elif now > verify_by or (step != "reprompt" and self.exited(agent)):
                self.failed(recovery_id, agent, step, reason, f"no {event}", now)

    def exited(self, agent: str) -> bool:
        """The restarted program already exited (e.g. no conversation to ``--continue``)."""
        spec = lifecycle.get_spec(self.store, agent)
        return bool(spec and lifecycle.spec_pane_state(spec) != "alive")

    def escalate(self, agent: str, step: str, reason: str, now: float) -> None:
        """The next rung of the ladder, right away (its limits still apply)."""
        following = LADDER[min(LADDER.index(step) + 1, len(LADDER) - 1)]
        self.schedule(agent, f"{reason}; {step} did not work", following, now, wait=0.0)

    def failed(
        self, recovery_id: int, agent: str, step: str, reason: str, outcome: str, now: float
    ) -> None:
        """The step did not work: the ladder's next rung, unless ``orch stop`` (or a spawn, a
        restart by hand) cancelled the step meanwhile: the stopped agent would be started."""
        if self.finish(recovery_id, agent, step, "failed", outcome, now):
            self.escalate(agent, step, reason, now)

    def finish(
        self, recovery_id: int, agent: str, step: str, state: str, outcome: str, now: float
    ) -> bool:
        """The step ``done`` or ``failed``, in the history and orch's log; whether it was still
        under way (not cancelled meanwhile, nor finished by another look)."""
        with self.store.transaction() as tx:
            finished = tx.execute(
                "UPDATE recoveries SET state = ?, outcome = ?, finished = ? WHERE id = ?"
                " AND state IN ('running', 'verifying')",
                (state, outcome, now, recovery_id),
            ).rowcount
        if finished:
            said = "recovery worked" if state == "done" else "recovery step failed"
            level = "info" if state == "done" else "warning"
            log.write(level, said, self.ctx.env, agent=agent, step=step, outcome=outcome)
        return bool(finished)
