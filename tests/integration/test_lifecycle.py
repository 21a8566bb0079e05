"""Spawn, crash, restart, give up: the supervisor against a real tmux server and real processes.

The agent here is a small program that behaves like Claude Code towards orch: on start it runs
orch-hook with a SessionStart (``resume`` when started with ``--continue``), then waits. The
supervisor is the real ``orch supervise``, started by ``orch spawn``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from orch_builtin import auto_restart

from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.kit import OrchState, hook_script, orch_script
from orch_core.testing.payloads import payload

pytestmark = [pytest.mark.tmux, pytest.mark.orch_backends("sqlite", "postgresql")]

FAKE_AGENT = """
import json, os, subprocess, sys, time
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
source = "resume" if "--continue" in sys.argv else "startup"
event = {"hook_event_name": "SessionStart", "session_id": f"s-{os.getpid()}", "source": source}
subprocess.run([os.environ["ORCH_HOOK"]], input=json.dumps(event).encode(), check=False)
time.sleep(120)
"""


@pytest.fixture
def fleet(orch: OrchState, tmp_path: Path) -> Iterator[OrchState]:
    """orch with a private tmux server, fast backoff, and a supervisor that stops by itself."""
    # A hook that opens PostgreSQL imports psycopg inside its budget (about 100 ms, more on a
    # busy machine: docs/benchmarks.md), and on a busy machine a spawned agent's first hook may
    # wait for the supervisor starting beside it longer than 500 ms, on either store (a full
    # run once lost its SessionStart that way); these tests are about restarts, not time.
    orch.write_config("[orch]\nbudget_ms = 3000\n", user=True)
    socket = str(tmp_path / "tmux.sock")
    agent = tmp_path / "fake_agent.py"
    agent.write_text(FAKE_AGENT)
    orch.env.update(
        ORCH_TMUX_SOCKET=socket,
        ORCH_SUPERVISE_FOR="60",
        FAKE_LOG=str(tmp_path / "argv.log"),
        ORCH_HOOK=hook_script(),
        FAKE_AGENT=str(agent),
    )
    orch.write_config(
        "[plugin.auto_restart]\nbackoff_base = 0.2\nbackoff_cap = 1.0\nverify_seconds = 20\n"
    )
    yield orch
    pid = lifecycle.supervisor_running(orch.env)
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)
        # a tick still under way could start the tmux server again after it is killed
        deadline = time.monotonic() + 10
        while lifecycle.supervisor_running(orch.env) and time.monotonic() < deadline:
            time.sleep(0.05)
    subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, check=False)


def until(condition: Callable[[], object], what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def spawn(orch: OrchState, name: str = "worker") -> dict[str, object]:
    command = f"{sys.executable} {orch.env['FAKE_AGENT']}"
    done = orch.cli("spawn", name, "--dir", str(orch.project_dir), "--command", command)
    assert done.returncode == 0, done.stderr
    spec = lifecycle.get_spec(orch.store, name)
    assert spec is not None
    return spec


def starts(orch: OrchState, agent: str = "worker") -> int:
    return [r["event"] for r in orch.store.runs(500) if r["agent"] == agent].count("SessionStart")


def crash(orch: OrchState, agent: str = "worker") -> None:
    """SIGKILL the agent's process, as a crash would."""
    spec = lifecycle.get_spec(orch.store, agent)
    assert spec is not None
    pid = tmux.tmux(
        orch.env["ORCH_TMUX_SOCKET"],
        "display-message",
        "-p",
        "-t",
        str(spec["pane"]),
        "#{pane_pid}",
    )
    os.kill(int(pid), signal.SIGKILL)


def test_spawn_runs_the_agent_with_hooks_and_a_supervisor(fleet: OrchState) -> None:
    spec = spawn(fleet)
    until(lambda: starts(fleet) == 1, "SessionStart from the spawned agent")
    assert tmux.pane_state(str(spec["pane"]), fleet.env["ORCH_TMUX_SOCKET"]) == "alive"
    settings = json.loads((fleet.project_dir / ".claude" / "settings.json").read_text())
    assert "SessionStart" in settings["hooks"]
    until(lambda: bool(lifecycle.supervisor_running(fleet.env)), "the supervisor it started")
    again = fleet.cli("spawn", "worker", "--dir", str(fleet.project_dir))
    assert again.returncode == 1 and "already running" in again.stderr
    bad = fleet.cli("spawn", "bad name;rm", "--dir", str(fleet.project_dir))
    assert bad.returncode == 1 and "invalid agent name" in bad.stderr


OBSERVER = """
import json, os
from orch_core import hookimpl

@hookimpl
def orch_agent_restarted(agent, attempt, reason):
    with open(os.environ["RESTARTS_LOG"], "a") as log:
        log.write(json.dumps([agent, attempt, reason]) + "\\n")
"""


def test_hook_orch_agent_restarted_hears_a_crash_restarted_in_its_window(
    fleet: OrchState,
) -> None:
    fleet.plugin_module("observer", OBSERVER)
    fleet.env["RESTARTS_LOG"] = str(fleet.root / "restarts.log")
    fleet.write_config(
        "[plugins]\nload = ['observer']\n[plugin.auto_restart]\nbackoff_base = 0.2\n"
        "backoff_cap = 1.0\nverify_seconds = 20\n"
    )
    spec = spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    crash(fleet)
    until(lambda: starts(fleet) == 2, "SessionStart after the restart")
    until(lambda: lifecycle.history(fleet.store, "worker")[0]["state"] == "done", "verification")
    (restart,) = lifecycle.history(fleet.store, "worker")
    assert (restart["step"], restart["reason"], restart["outcome"]) == (
        "restart",
        "pane dead",
        "SessionStart arrived",
    )
    after = lifecycle.get_spec(fleet.store, "worker")
    assert after is not None and after["pane"] == spec["pane"]  # same window
    argvs = [json.loads(line) for line in Path(fleet.env["FAKE_LOG"]).read_text().splitlines()]
    assert argvs == [[], ["--continue"]]
    context = json.loads(fleet.cli("context", "worker", "--json").stdout)
    assert context["checkpoint_data"]["trigger"] == "restart"  # the rebrief follows the restart
    observed = Path(fleet.env["RESTARTS_LOG"]).read_text().splitlines()
    assert [json.loads(line) for line in observed] == [["worker", 1, "pane dead"]]


def test_four_crashes_in_an_hour_give_three_restarts_then_failed(fleet: OrchState) -> None:
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    for n in range(2, 5):
        crash(fleet)
        until(lambda n=n: starts(fleet) == n, f"SessionStart {n}")  # type: ignore[misc]
        until(lambda: lifecycle.history(fleet.store, "worker")[0]["state"] == "done", "verify")
        if n == 3:  # the supervisor itself dies and comes back: limits live in the database
            pid = lifecycle.supervisor_running(fleet.env)
            assert pid and pid > 0
            os.kill(pid, signal.SIGKILL)
            until(lambda: not lifecycle.supervisor_running(fleet.env), "the supervisor gone")
            subprocess.Popen(
                [orch_script(), "supervise"],
                env=fleet.env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            until(lambda: lifecycle.supervisor_running(fleet.env), "a new supervisor")
    crash(fleet)
    until(lambda: fleet.store.agents()[0]["state"] == "failed", "failed")
    steps = [(h["step"], h["state"]) for h in reversed(lifecycle.history(fleet.store, "worker"))]
    assert steps == [("restart", "done")] * 3 + [("give_up", "done")]
    time.sleep(3)  # a watch round later: still no fourth restart
    assert starts(fleet) == 4
    with fleet.store.transaction() as db:
        alerts = db.execute("SELECT agent, kind, message FROM alerts").fetchall()
    assert alerts == [
        ("worker", "failed", "worker failed: pane dead; 3 restarts this hour; no automatic restart")
    ]


SLOW_RESTART = """
import os, time
from orch_core import hookimpl

@hookimpl
def orch_before_restart(agent):
    open(os.environ["RESTARTING"], "w").close()
    time.sleep(600)
"""


def test_a_restart_cut_short_by_a_killed_supervisor_is_carried_out_by_the_next(
    fleet: OrchState,
) -> None:
    """A supervisor claims a step (``running``) before it carries it out; killed meanwhile, it
    left its claim, which held off every later recovery of the agent. The next one carries the
    step out, once."""
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    stop_supervisor(fleet)
    crash(fleet)
    # the store is not opened again before the supervisor's plan has the plugin (this process
    # cannot import it: its plan would leave it out, and the supervisor would use that plan)
    fleet.plugin_module("slow_restart", SLOW_RESTART)
    fleet.write_config("[plugins]\nload = ['slow_restart']\n[plugin.auto_restart]\n"
                       "backoff_base = 0.2\nbackoff_cap = 1.0\n")  # fmt: skip
    fleet.env["RESTARTING"] = str(fleet.root / "restarting")
    killed = subprocess.Popen([orch_script(), "supervise"], env=fleet.env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def history() -> list[dict[str, object]]:
        return lifecycle.history(fleet.store, "worker")

    until(lambda: os.path.exists(fleet.env["RESTARTING"]), "the restart under way")
    assert [h["state"] for h in history()] == ["running"]
    killed.kill()
    killed.wait()
    fleet.write_config("[plugin.auto_restart]\nverify_seconds = 1\n")
    time.sleep(1.1)  # the cut-short step's time to show it worked is over
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time())
    until(lambda: starts(fleet) == 2, "SessionStart after the restart")
    supervisor.upkeep(time.time())
    assert [(h["step"], h["state"], h["outcome"]) for h in reversed(history())] == [
        ("restart", "failed", "cut short: no SessionStart"),
        ("restart", "done", "SessionStart arrived"),
    ]
    time.sleep(1.1)
    supervisor.upkeep(time.time())
    assert len(history()) == 2 and starts(fleet) == 2


STOP_ON_RESTART = """
from orch_core import hookimpl
from orch_core.supervisor import lifecycle

@hookimpl
def orch_before_restart(agent, ctx):
    lifecycle.stop(ctx.store, agent, env=ctx.env)  # a user's `orch stop` meanwhile
"""


def test_an_agent_stopped_while_its_restart_begins_stays_stopped(fleet: OrchState) -> None:
    """``orch stop`` while a restart's plugins save what they keep: the restart must not start
    the agent again after it (it killed the pane, and a new window would take its place)."""
    spawned = fleet.cli("spawn", "r3", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    fleet.plugin_module("stop_on_restart", STOP_ON_RESTART)
    fleet.write_config("[plugins]\nload = ['stop_on_restart']\n")
    done = fleet.cli("restart", "r3", "--fresh")
    assert (done.returncode, done.stderr) == (1, "Error: r3 was stopped meanwhile\n")
    (row,) = [a for a in fleet.store.agents() if a["id"] == "r3"]
    assert row["state"] == "stopped"
    spec = lifecycle.get_spec(fleet.store, "r3")
    assert spec is not None and lifecycle.spec_pane_state(spec) == "gone"
    assert "r3" not in windows(fleet)


def restarted_with_plugin(
    fleet: OrchState,
    orch_module: Callable[[str, str], Path],
    agent: str,
    plugin: str,
    source: str,
) -> dict[str, Any]:
    """``agent`` spawned (``sleep 600``) and crashed, with ``plugin`` loaded, and the
    supervisor's restart of its dead pane planned and carried out; its launch spec."""
    spawned = fleet.cli("spawn", agent, "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    orch_module(plugin, source)  # the supervisor here imports it too
    fleet.write_config(f"[plugins]\nload = ['{plugin}']\n")
    crash(fleet, agent)
    spec = lifecycle.get_spec(fleet.store, agent)
    assert spec is not None
    until(lambda: lifecycle.spec_pane_state(spec) == "dead", "the pane dead")
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time())  # schedules the restart
    supervisor.upkeep(time.time() + 600)  # its time has come, whatever the backoff
    return spec


def test_an_agent_stopped_while_the_supervisor_restarts_it_stays_stopped(
    fleet: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """The same, with the restart the supervisor scheduled for a dead pane: the recovery stays
    cancelled, and nothing is escalated."""
    restarted_with_plugin(fleet, orch_module, "r4", "stop_on_restart", STOP_ON_RESTART)
    assert [
        (h["step"], h["state"], h["outcome"]) for h in lifecycle.history(fleet.store, "r4")
    ] == [("restart", "cancelled", "stopped by a user")]
    (row,) = [a for a in fleet.store.agents() if a["id"] == "r4"]
    assert row["state"] == "stopped"
    assert "r4" not in windows(fleet)


def test_an_agent_stopped_as_the_supervisor_finds_its_pane_gone_stays_stopped(
    fleet: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``orch stop`` kills the pane, then cancels what is planned, then records ``stopped``: the
    supervisor's pane watch between the last two (the agent not yet stopped, its pane gone)
    plans a restart the stop no longer cancels, and carrying it out started the agent again."""
    command = "sh -c 'sleep 600' sh"  # takes --continue
    spawned = fleet.cli("spawn", "r8", "--dir", str(fleet.project_dir), "--command", command)
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    supervisor = lifecycle.Supervisor(fleet.env)
    cancel = lifecycle.cancel_recoveries

    def then_a_tick(store: object, agent: str, why: str) -> None:
        cancel(store, agent, why)  # type: ignore[arg-type]
        supervisor.upkeep(time.time() + 60)  # its pane watch is due

    monkeypatch.setattr(lifecycle, "cancel_recoveries", then_a_tick)
    lifecycle.stop(fleet.store, "r8", fleet.env)
    monkeypatch.setattr(lifecycle, "cancel_recoveries", cancel)
    supervisor.upkeep(time.time() + 600)  # the restart's time has come, whatever the backoff
    (row,) = [a for a in fleet.store.agents() if a["id"] == "r8"]
    assert row["state"] == "stopped"
    assert "r8" not in windows(fleet)
    assert [h["state"] for h in lifecycle.history(fleet.store, "r8")] in ([], ["cancelled"])


RESTART_BY_HAND = """
from orch_core import hookimpl
from orch_core.supervisor import lifecycle

_restarted = []

@hookimpl
def orch_before_restart(agent, ctx):
    if not _restarted:  # a user's `orch restart --fresh` meanwhile (it comes here too)
        _restarted.append(agent)
        lifecycle.restart(ctx.store, agent, env=ctx.env, fresh=True)
"""


def test_a_restart_by_hand_while_the_supervisor_restarts_the_agent_is_the_only_one(
    fleet: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """``orch restart --fresh`` while the supervisor's restart of a dead pane saves what its
    plugins keep: the supervisor's restart went on, killed the fresh agent and started it a
    second time, with ``--continue`` (here ``sleep`` refuses that flag, and the pane died)."""
    spec = restarted_with_plugin(fleet, orch_module, "r6", "restart_by_hand", RESTART_BY_HAND)
    assert [
        (h["step"], h["state"], h["outcome"]) for h in lifecycle.history(fleet.store, "r6")
    ] == [("restart", "cancelled", "replaced by orch restart")]
    started = tmux.tmux(fleet.env["ORCH_TMUX_SOCKET"], "display-message", "-p", "-t",
                        str(spec["pane"]), "#{pane_start_command} #{pane_dead}")  # fmt: skip
    assert started.split()[-3:] == ["sleep", "600", "0"]


def test_an_agent_stopped_while_the_supervisor_reprompts_it_stays_stopped(
    fleet: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``orch stop`` while the supervisor types its re-prompt (it waits for the pane while
    another sender types there): typing into the killed pane failed, and the ladder climbed
    from the cancelled step to a restart, which started the stopped agent again."""
    spawned = fleet.cli("spawn", "r5", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    auto_restart.schedule(fleet.store, "r5", "StopFailure overloaded", "reprompt", env=fleet.env)
    typing = tmux.type_line

    def stopped_meanwhile(pane: str, socket: str | None, text: str, state_dir: str) -> bool:
        lifecycle.stop(fleet.store, "r5", env=fleet.env)  # the user's `orch stop`
        return typing(pane, socket, text, state_dir)

    monkeypatch.setattr(tmux, "type_line", stopped_meanwhile)
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time() + 600)  # the re-prompt's time has come
    supervisor.upkeep(time.time() + 1200)  # and that of anything planned after it
    assert [(h["step"], h["state"]) for h in lifecycle.history(fleet.store, "r5")] == [
        ("reprompt", "cancelled")
    ]
    assert lifecycle.agent_state(fleet.store, "r5") == "stopped"
    assert "r5" not in windows(fleet)


def test_the_last_restart_of_the_hour_that_ends_at_once_is_followed_by_a_fresh_start(
    fleet: OrchState,
) -> None:
    """A restart whose program ends at once (``--continue`` with no conversation) is no
    restart, and the ladder's fresh start follows, at the hourly limit too: the pane watch saw
    the dead pane before the step was verified, counted the step, and gave the agent up."""
    fleet.write_config("[plugin.auto_restart]\nmax_restarts_per_hour = 1\n")
    script = 'case "$*" in *--continue*) exit 1;; esac; sleep 600'
    command = shlex.join(["sh", "-c", script, "sh"])
    spawned = fleet.cli("spawn", "r7", "--dir", str(fleet.project_dir), "--command", command)
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    crash(fleet, "r7")
    spec = lifecycle.get_spec(fleet.store, "r7")
    assert spec is not None
    until(lambda: lifecycle.spec_pane_state(spec) == "dead", "the pane dead")
    supervisor = lifecycle.Supervisor(fleet.env)
    now = time.time()
    supervisor.upkeep(now)  # schedules the restart
    supervisor.upkeep(now + 600)  # carries it out: the program ends at once
    until(lambda: lifecycle.spec_pane_state(spec) == "dead", "the restarted program ended")
    supervisor.upkeep(now + 605)  # the pane watch's next look, then the step's verification
    supervisor.upkeep(now + 606)  # the fresh start, due at once
    assert [(h["step"], h["state"]) for h in reversed(lifecycle.history(fleet.store, "r7"))] == [
        ("restart", "failed"), ("fresh", "verifying")
    ]  # fmt: skip
    assert lifecycle.agent_state(fleet.store, "r7") == "starting"
    assert lifecycle.spec_pane_state(spec) == "alive"


def test_a_spawn_over_a_dead_pane_drops_the_restart_planned_for_it(fleet: OrchState) -> None:
    """``orch spawn`` of an agent whose pane died, before the supervisor's planned restart came
    due: that restart killed the new agent and started it again with ``--continue``."""
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    stop_supervisor(fleet)
    crash(fleet)
    spec = lifecycle.get_spec(fleet.store, "worker")
    assert spec is not None
    until(lambda: lifecycle.spec_pane_state(spec) == "dead", "the pane dead")
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time())  # schedules the restart, after its backoff
    assert [h["state"] for h in lifecycle.history(fleet.store, "worker")] == ["scheduled"]
    spawn(fleet)  # the user starts it again meanwhile
    until(lambda: starts(fleet) == 2, "SessionStart of the new spawn")
    supervisor.upkeep(time.time() + 600)  # the restart's time has come, whatever the backoff
    time.sleep(2)  # and the supervisor the spawn started had its ticks
    log = Path(fleet.env["FAKE_LOG"]).read_text().splitlines()
    assert [json.loads(line) for line in log] == [[], []]
    assert [(h["step"], h["state"]) for h in lifecycle.history(fleet.store, "worker")] == [
        ("restart", "cancelled")
    ]


def windows(orch: OrchState) -> list[str]:
    """The names of the test's tmux windows (none once the server went with its last)."""
    try:
        listed = tmux.tmux(orch.env["ORCH_TMUX_SOCKET"], "list-windows", "-a", "-F", "#W")
    except tmux.TmuxError:
        return []
    return listed.split()


def test_a_clock_set_back_does_not_stop_the_supervisor_watching_panes(fleet: OrchState) -> None:
    """The supervisor looks at the panes every few seconds of its clock: set back an hour (a
    machine resumed, NTP stepping it), it looked at none for that hour."""
    spawned = fleet.cli("spawn", "r2", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    supervisor = lifecycle.Supervisor(fleet.env)
    now = time.time()
    supervisor.upkeep(now + 3600)  # then the clock goes back an hour
    assert lifecycle.history(fleet.store, "r2") == []
    crash(fleet, "r2")
    spec = lifecycle.get_spec(fleet.store, "r2")
    assert spec is not None
    until(lambda: lifecycle.spec_pane_state(spec) == "dead", "the pane dead")
    supervisor.upkeep(now)
    assert [(h["step"], h["reason"]) for h in lifecycle.history(fleet.store, "r2")] == [
        ("restart", "pane dead")
    ]


def test_agents_busy_when_the_machine_went_to_sleep_are_not_taken_for_hung(
    fleet: OrchState,
) -> None:
    """Asleep, the machine runs no agent and no hook, and the monotonic clock stands still
    while the wall clock does not: the first tick after an hour's sleep took every agent busy
    when the lid closed for hung, and restarted it. Silent while awake, it still is."""
    fleet.write_config("[plugin.auto_restart]\nhung_after = 1\n")
    spawned = fleet.cli("spawn", "r2", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    fleet.store.set_agent_state("r2", "busy", session_id=None, project_dir=None)
    supervisor = lifecycle.Supervisor(fleet.env)
    now = time.time()
    supervisor.upkeep(now)
    supervisor.upkeep(now + 3600)  # the next tick, an hour later by the wall clock
    assert lifecycle.history(fleet.store, "r2") == []
    time.sleep(2.1)  # awake, and still no hook
    supervisor.upkeep(now + 3602.1)
    assert [(h["step"], h["reason"]) for h in lifecycle.history(fleet.store, "r2")] == [
        ("restart", "hung: busy with no hook")
    ]


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and all(w in line for w in words), line


def nothing_started(orch: OrchState) -> None:
    """No launch spec, agent, briefing, tmux server or supervisor."""
    for table in ("launch_specs", "agents", "agent_context"):
        assert orch.store.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    assert not os.path.exists(orch.env["ORCH_TMUX_SOCKET"])
    assert not lifecycle.supervisor_running(orch.env)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("w", ["--command", 'claude "x'], "--command 'claude \"x': No closing quotation"),
        ("w", ["--command", ""], "--command is empty"),
        ("w", ["--command", "no-such-binary-xyz"], "command 'no-such-binary-xyz' not found"),
        ("w", ["--command", "./agent.sh"], "agent.sh is not an executable file"),
        ("w", ["--command", "sleep 600", "--brief", "{brief}"], "not UTF-8 text"),
        ("w", ["--command", "sleep 600", "--dir", "{typo}"], "no such directory: "),
        ("bad name", ["--command", "sleep 600"], "invalid agent name"),
    ],
)
def test_spawn_refuses_bad_input_before_changing_anything(
    fleet: OrchState, tmp_path: Path, name: str, options: list[str], message: str
) -> None:
    """Checked before the hooks go in: a refused spawn installs nothing, starts nothing, and
    no plugin hears of it."""
    project = tmp_path / "fresh"
    project.mkdir()
    brief = tmp_path / "brief.md"
    brief.write_bytes(b"\xff\xfe\n")
    typo = tmp_path / "typo" / "path"
    given = [o.format(brief=brief, typo=typo) for o in options]
    one_line_error(fleet.cli("spawn", name, "--dir", str(project), *given), message)
    assert list(project.iterdir()) == []
    assert not typo.parent.exists()
    nothing_started(fleet)


@pytest.mark.parametrize("settings", [None, '{"permissions": {}}'])
def test_a_spawn_tmux_cannot_start_leaves_the_project_as_it_found_it(
    fleet: OrchState, tmp_path: Path, settings: str | None
) -> None:
    """The hooks go in before the agent starts (its first hook needs them) and come out again
    when tmux fails."""
    fleet.env["ORCH_TMUX_SOCKET"] = str(tmp_path / "no-such-folder" / "tmux.sock")
    project = tmp_path / "fresh"
    project.mkdir()
    if settings is not None:
        (project / ".claude").mkdir()
        (project / ".claude" / "settings.json").write_text(settings)
    done = fleet.cli("spawn", "w", "--dir", str(project), "--command", "sleep 600")
    one_line_error(done, "cannot start w: tmux new-session: no server could be started at")
    if settings is None:
        assert list(project.iterdir()) == []
    else:
        assert [p.name for p in (project / ".claude").iterdir()] == ["settings.json"]
        assert (project / ".claude" / "settings.json").read_text() == settings
    nothing_started(fleet)


def test_a_program_that_ends_before_tmux_keeps_its_window_is_said_so(
    fleet: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmux keeps a window only once told to; a program that ended before then took its window
    with it, and tmux's own error ("no such window") would not say so."""
    real = tmux.tmux

    def late(socket: str | None, *args: str, timeout: float = 5.0, stdin: str | None = None) -> str:
        if args[0] == "set-option":  # the program has ended by now
            until(lambda: tmux.pane_state(args[3], socket) == "gone", "the window closed", 10)
        return real(socket, *args, timeout=timeout, stdin=stdin)

    monkeypatch.setattr(tmux, "tmux", late)
    with pytest.raises(tmux.TmuxError, match=r"^true exited at once, and its window closed$"):
        tmux.start(fleet.env["ORCH_TMUX_SOCKET"], "s", "w", str(fleet.project_dir), {}, ["true"])


def test_a_program_that_ends_before_its_new_session_is_set_up_is_said_so(
    fleet: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first agent of a session (of a server not running yet): a program that ended at once
    took its session, and the server, with its window; tmux's error ("server exited
    unexpectedly") would not say that the program ended."""
    real = tmux.tmux
    socket = fleet.env["ORCH_TMUX_SOCKET"]

    def gone() -> bool:
        try:
            real(socket, "has-session", "-t", "=s")
        except tmux.TmuxError:
            return True
        return False

    def late(socket: str | None, *args: str, timeout: float = 5.0, stdin: str | None = None) -> str:
        if args[0] == "set-environment":  # the program has ended by now
            until(gone, "the session closed", 10)
        return real(socket, *args, timeout=timeout, stdin=stdin)

    monkeypatch.setattr(tmux, "tmux", late)
    with pytest.raises(tmux.TmuxError, match=r"^false exited at once, and its window closed$"):
        tmux.start(socket, "s", "w", str(fleet.project_dir), {"ORCH_AGENT": "w"}, ["false"])


def test_a_window_opened_by_hand_in_a_spawned_session_is_not_the_agent(tmp_path: Path) -> None:
    """``new-session -e`` would also set the session's environment: a window a person opens
    there later, with Claude in it, would then answer as the spawned agent and take its
    messages."""
    socket = str(tmp_path / "tmux.sock")
    variables = {"ORCH_AGENT": "reviewer", "ORCH_HOST": "build-1"}
    try:
        tmux.start(socket, "orch", "reviewer", str(tmp_path), variables, ["sleep", "60"])
        pane = tmux.tmux(
            socket, "new-window", "-d", "-P", "-F", "#{pane_pid}", "-t", "=orch:", "sleep 60"
        )
        mine = Path(f"/proc/{pane.strip()}/environ").read_bytes().split(b"\0")
        assert not [v for v in mine if v.startswith((b"ORCH_AGENT=", b"ORCH_HOST="))]
        spawned = tmux.tmux(socket, "display-message", "-p", "-t", "=orch:reviewer", "#{pane_pid}")
        theirs = Path(f"/proc/{spawned.strip()}/environ").read_bytes().split(b"\0")
        assert b"ORCH_AGENT=reviewer" in theirs and b"ORCH_HOST=build-1" in theirs
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, check=False)


@pytest.mark.parametrize(
    ("name", "directory", "command", "message"),
    [
        ("ad:1", None, "", "--command is empty"),
        ("ad:1", None, 'claude "x', "No closing quotation"),
        ("ad:1", None, "no-such-binary-xyz", "command 'no-such-binary-xyz' not found"),
        ("ad:1", "/nonexistent", "sleep 600", "no such directory: /nonexistent"),
        ("bad name", None, "sleep 600", "invalid agent name 'bad name'"),
        ("proj:x", None, "sleep 600", "invalid agent name 'proj:x'"),
    ],
)
def test_adopt_checks_what_spawn_checks(
    fleet: OrchState, name: str, directory: str | None, command: str, message: str
) -> None:
    done = fleet.cli("adopt", name, "--dir", directory or str(fleet.project_dir),
                     "--command", command)  # fmt: skip
    one_line_error(done, message)
    nothing_started(fleet)


@pytest.mark.parametrize("name", ["solo", "proj:2", "alpha/proj:2"])
def test_adopt_takes_the_names_hooks_give_agents_started_by_hand(
    fleet: OrchState, name: str
) -> None:
    done = fleet.cli("adopt", name, "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert done.returncode == 0, done.stderr
    spec = lifecycle.get_spec(fleet.store, name)
    assert spec is not None and spec["argv"] == ["sleep", "600"]


def test_stop_refuses_an_agent_orch_does_not_know(fleet: OrchState) -> None:
    """It would otherwise make up a ``stopped`` agent of that name."""
    one_line_error(fleet.cli("stop", "nosuch:1"), "no agent nosuch:1")
    nothing_started(fleet)
    fleet.run_hook(payload("SessionStart", session_id="s1"), ORCH_AGENT="hand")  # heard from
    assert fleet.cli("stop", "hand").returncode == 0
    assert [(a["id"], a["state"]) for a in fleet.store.agents()] == [("hand", "stopped")]


def test_stop_means_no_restart(fleet: OrchState) -> None:
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    assert fleet.cli("stop", "worker").returncode == 0
    time.sleep(3)
    assert fleet.store.agents()[0]["state"] == "stopped"
    assert lifecycle.history(fleet.store, "worker") == []


def test_an_agent_whose_directory_was_removed_is_not_restarted_elsewhere(
    fleet: OrchState, tmp_path: Path
) -> None:
    """tmux starts a window whose directory is gone in the folder it runs in (here the
    project's, where the supervisor was started): the agent would take up another project's
    conversation with ``--continue``, and its hooks say the restart worked."""
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    command = f"{sys.executable} {fleet.env['FAKE_AGENT']}"
    done = fleet.cli("spawn", "worker", "--dir", str(worktree), "--command", command)
    assert done.returncode == 0, done.stderr
    until(lambda: starts(fleet) == 1, "first SessionStart")
    shutil.rmtree(worktree)
    crash(fleet)
    until(lambda: lifecycle.agent_state(fleet.store, "worker") == "failed", "the agent given up")
    assert len(Path(fleet.env["FAKE_LOG"]).read_text().splitlines()) == 1  # started once only
    outcomes = [h["outcome"] for h in lifecycle.history(fleet.store, "worker")]
    assert f"no such directory: {worktree}" in outcomes


def test_a_hung_agent_is_restarted(fleet: OrchState) -> None:
    fleet.write_config(
        "[plugin.auto_restart]\nbackoff_base = 0.2\nbackoff_cap = 1.0\nhung_after = 1\n"
    )
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "first SessionStart")
    fleet.store.set_agent_state("worker", "busy", session_id=None, project_dir=None)
    with fleet.store.transaction() as db:  # busy, and no hook for a while
        db.execute("UPDATE agents SET last_seen = last_seen - 60 WHERE id = 'worker'")
    until(lambda: starts(fleet) == 2, "SessionStart after the restart")
    (restart,) = lifecycle.history(fleet.store, "worker")
    assert (restart["step"], restart["reason"]) == ("restart", "hung: busy with no hook")


def test_an_adopted_agent_started_by_hand_is_restarted(fleet: OrchState) -> None:
    socket = fleet.env["ORCH_TMUX_SOCKET"]
    command = [sys.executable, fleet.env["FAKE_AGENT"]]
    variables = {k: fleet.env[k] for k in ("ORCH_DB", "ORCH_STATE_DIR", "FAKE_LOG", "ORCH_HOOK")}
    pane = tmux.start(
        socket, "hand", "solo", str(fleet.project_dir), {**variables, "ORCH_AGENT": "solo"}, command
    )
    until(lambda: starts(fleet, "solo") == 1, "the hand-started agent's SessionStart")
    done = fleet.cli(
        "adopt",
        "solo",
        "--dir",
        str(fleet.project_dir),
        "--pane",
        pane,
        "--session",
        "hand",
        "--command",
        " ".join(command),
        *(f"--env={k}={v}" for k, v in variables.items()),
    )
    assert done.returncode == 0, done.stderr
    lifecycle.ensure_supervisor(fleet.env)
    crash(fleet, "solo")
    until(lambda: starts(fleet, "solo") == 2, "SessionStart after the restart")
    assert [h["step"] for h in lifecycle.history(fleet.store, "solo")] == ["restart"]


LIFECYCLE_OBSERVER = """
import json, os
from orch_core import hookimpl

def note(*fields):
    with open(os.environ["OBSERVED_LOG"], "a") as log:
        log.write(json.dumps(fields) + "\\n")

@hookimpl
def orch_agent_spawned(agent, briefing, ctx):
    note("spawned", agent, briefing, ctx.project_dir)

@hookimpl
def orch_before_restart(agent, ctx):
    note("before restart", agent, ctx.agent, ctx.project_dir)
"""


def observed(orch: OrchState) -> list[list[object]]:
    path = Path(orch.env["OBSERVED_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hook_orch_agent_spawned_hears_the_agent_and_its_briefing_before_it_starts(
    fleet: OrchState,
) -> None:
    fleet.plugin_module("lifecycle_observer", LIFECYCLE_OBSERVER)
    fleet.env["OBSERVED_LOG"] = str(fleet.root / "observed.log")
    fleet.write_config('[plugins]\nload = ["lifecycle_observer"]\n')
    command = f"{sys.executable} {fleet.env['FAKE_AGENT']}"
    done = fleet.cli("spawn", "briefed", "--dir", str(fleet.project_dir), "--command", command,
                     "--brief", "-", stdin="You review pull requests.")  # fmt: skip
    assert done.returncode == 0, done.stderr
    project = os.path.realpath(fleet.project_dir)
    assert observed(fleet) == [["spawned", "briefed", "You review pull requests.", project]]
    context = json.loads(fleet.cli("context", "briefed", "--json").stdout)
    assert context["briefing_content"] == "You review pull requests."  # the rebrief plugin's


def test_hook_orch_before_restart_hears_each_restart_in_the_agents_project(
    fleet: OrchState,
) -> None:
    fleet.plugin_module("lifecycle_observer", LIFECYCLE_OBSERVER)
    fleet.env["OBSERVED_LOG"] = str(fleet.root / "observed.log")
    fleet.write_config('[plugins]\nload = ["lifecycle_observer"]\n')
    spawn(fleet)
    until(lambda: starts(fleet) == 1, "the first SessionStart")
    assert fleet.cli("restart", "worker", "--fresh").returncode == 0
    until(lambda: starts(fleet) == 2, "SessionStart after the restart")
    restarts = [line for line in observed(fleet) if line[0] == "before restart"]
    assert restarts == [["before restart", "worker", "worker", str(fleet.project_dir)]]
    checkpoint = json.loads(fleet.cli("context", "worker", "--json").stdout)["checkpoint_data"]
    assert checkpoint["trigger"] == "restart"  # saved by the rebrief plugin, in its own hook


def test_no_restart_where_the_project_switched_auto_restart_off(fleet: OrchState) -> None:
    spawned = spawn(fleet)
    until(lambda: starts(fleet) == 1, "the first SessionStart")
    pid = lifecycle.supervisor_running(fleet.env)  # spawn started one: this test drives its own
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)
    fleet.write_config('[plugins]\ndisable = ["auto_restart"]\n')
    pane = str(spawned["pane"])
    crash(fleet)
    socket = fleet.env["ORCH_TMUX_SOCKET"]
    until(lambda: tmux.pane_state(pane, socket) == "dead", "the dead pane")
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time())
    assert lifecycle.history(fleet.store, "worker") == []
    fleet.write_config("")  # switched on again: the same dead pane is restarted
    supervisor.upkeep(time.time())
    assert [h["step"] for h in lifecycle.history(fleet.store, "worker")] == ["restart"]


def stop_supervisor(orch: OrchState) -> None:
    """End the supervisor ``orch spawn`` started (once it holds its lock): the test drives its
    own."""
    deadline = time.monotonic() + 10
    while (pid := lifecycle.supervisor_running(orch.env) or 0) <= 0:
        assert time.monotonic() < deadline, "no supervisor after 10 s"
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    until(lambda: not lifecycle.supervisor_running(orch.env), "the supervisor's end", 10)


def pane_process(socket: str, pane: str) -> str:
    return tmux.tmux(socket, "display-message", "-p", "-t", pane, "#{pane_pid} #{pane_dead}")


def new_server_pane(socket: str) -> str:
    """A user's own pane, the first of a new tmux server: tried again while the old server,
    killed a moment ago, is still ending (tmux then says "server exited unexpectedly")."""
    argv = ["tmux", "-S", socket, "new-session", "-d", "-P", "-F", "#{pane_id}", "-s",
            "users-own", "--", "sleep", "600"]  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.1)


@pytest.mark.parametrize("action", ["restart", "stop", "spawn", "supervisor"])
def test_a_pane_of_a_new_tmux_server_with_the_agents_old_pane_id_is_left_alone(
    fleet: OrchState, action: str
) -> None:
    """tmux numbers panes from %0 again on a new server: after a restart of tmux, the id orch
    kept for its agent names someone else's pane, which orch neither kills nor respawns."""
    socket = fleet.env["ORCH_TMUX_SOCKET"]
    spawned = fleet.cli("spawn", "r2", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    subprocess.run(["tmux", "-S", socket, "kill-server"], check=True)
    old = lifecycle.get_spec(fleet.store, "r2")
    assert old is not None
    # tmux gives its server's start in whole seconds: the new one's must be a later second
    time.sleep(max(0.0, int(old["updated"]) + 1 - time.time()))
    users = new_server_pane(socket)
    assert old["pane"] == users
    before = pane_process(socket, users)
    if action == "supervisor":  # `sleep 600 --continue` would exit at once
        fleet.write_config(
            "[orch]\nbudget_ms = 3000\n[plugin.auto_restart]\ncontinue_args = []\n", user=True
        )
        supervisor = lifecycle.Supervisor(fleet.env)
        supervisor.upkeep(time.time())  # the pane is gone: a restart is scheduled
        supervisor.upkeep(time.time() + 10)  # and carried out, in a new window
        assert [h["step"] for h in lifecycle.history(fleet.store, "r2")] == ["restart"]
    else:
        argv = {"restart": ["restart", "r2", "--fresh"], "stop": ["stop", "r2"]}.get(
            action, ["spawn", "r2", "--dir", str(fleet.project_dir), "--command", "sleep 600"]
        )
        done = fleet.cli(*argv)
        assert done.returncode == 0, done.stderr
    assert pane_process(socket, users) == before
    spec = lifecycle.get_spec(fleet.store, "r2")
    assert spec is not None
    if action != "stop":
        assert spec["pane"] != users
        assert tmux.pane_state(spec["pane"], socket, "r2") != "gone"


def test_an_agent_adopted_before_its_first_hook_is_watched_in_the_pane_its_hooks_report(
    fleet: OrchState,
) -> None:
    """Not restarted in a second window as though its pane were gone: the pane its hooks
    report becomes its launch spec's."""
    socket = fleet.env["ORCH_TMUX_SOCKET"]
    command = [sys.executable, fleet.env["FAKE_AGENT"]]
    variables = {k: fleet.env[k] for k in ("ORCH_DB", "ORCH_STATE_DIR", "FAKE_LOG", "ORCH_HOOK")}
    done = fleet.cli("adopt", "solo", "--dir", str(fleet.project_dir), "--session", "hand",
                     "--command", " ".join(command),
                     *(f"--env={k}={v}" for k, v in variables.items()))  # fmt: skip
    assert done.returncode == 0 and "no pane known yet" in done.stdout, done.stderr
    pane = tmux.start(
        socket, "hand", "solo", str(fleet.project_dir), {**variables, "ORCH_AGENT": "solo"}, command
    )
    until(lambda: starts(fleet, "solo") == 1, "the hand-started agent's SessionStart")
    supervisor = lifecycle.Supervisor(fleet.env)
    supervisor.upkeep(time.time())
    supervisor.upkeep(time.time() + 10)  # a restart it had scheduled would run now
    assert lifecycle.history(fleet.store, "solo") == []
    assert tmux.tmux(socket, "list-windows", "-a", "-F", "#{window_name}").split() == ["solo"]
    spec = lifecycle.get_spec(fleet.store, "solo")
    assert spec is not None and spec["pane"] == pane
    assert tmux.pane_state(pane, socket, "solo") == "alive"  # marked as the agent's
    restarted = fleet.cli("restart", "solo")
    assert restarted.returncode == 0 and f"in pane {pane}" in restarted.stdout, restarted.stderr


@pytest.fixture
def own_server(fleet: OrchState, tmp_path: Path) -> Iterator[str]:
    """A tmux server of the user's own (``tmux -L work``), whose session ``orch`` runs from
    (``$TMUX`` names it, and tmux takes the server from there), with no ``ORCH_TMUX_SOCKET``;
    the default server is a private one too (``TMUX_TMPDIR``). Yields the user's socket."""
    default_dir = tmp_path / "tmux-default"
    default_dir.mkdir()
    work = str(tmp_path / "work.sock")
    del fleet.env["ORCH_TMUX_SOCKET"]
    fleet.env["TMUX_TMPDIR"] = str(default_dir)
    subprocess.run(["tmux", "-S", work, "new-session", "-d", "-s", "mine", "--", "sleep", "600"],
                   check=True)  # fmt: skip
    fleet.env["TMUX"] = f"{work},1,0"
    yield work
    default = ["tmux", "-S", str(default_dir / f"tmux-{os.getuid()}" / "default")]
    for argv in (["tmux", "-S", work], default):
        subprocess.run([*argv, "kill-server"], capture_output=True, check=False)


def in_another_terminal(orch: OrchState, *args: str) -> None:
    """Run ``orch`` from a terminal outside that tmux server (no ``$TMUX``)."""
    env = orch.env.pop("TMUX")
    try:
        done = orch.cli(*args)
        assert done.returncode == 0, done.stderr
    finally:
        orch.env["TMUX"] = env


def panes(socket: str) -> list[str]:
    done = subprocess.run(["tmux", "-S", socket, "list-panes", "-a", "-F", "#{pane_id}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.split()


def test_an_agent_spawned_in_the_users_own_tmux_server_is_restarted_and_stopped_there(
    fleet: OrchState, own_server: str
) -> None:
    """Its launch spec keeps that server: `orch restart` and `orch stop` from another terminal
    looked on the default server, took the agent for gone, started a second one there, and
    said "stopped" while the first ran on."""
    spawned = fleet.cli("spawn", "r3", "--dir", str(fleet.project_dir), "--command", "sleep 600")
    assert spawned.returncode == 0, spawned.stderr
    stop_supervisor(fleet)
    spec = lifecycle.get_spec(fleet.store, "r3")
    assert spec is not None and spec["pane"] in panes(own_server)
    in_another_terminal(fleet, "restart", "r3", "--fresh")
    default = str(Path(fleet.env["TMUX_TMPDIR"]) / f"tmux-{os.getuid()}" / "default")
    assert panes(default) == []  # no second agent
    assert tmux.pane_state(spec["pane"], own_server, "r3") == "alive"
    in_another_terminal(fleet, "stop", "r3")
    assert spec["pane"] not in panes(own_server)


def test_an_agent_adopted_in_the_users_own_tmux_server_is_stopped_there(
    fleet: OrchState, own_server: str
) -> None:
    pane = tmux.tmux(own_server, "new-window", "-d", "-P", "-F", "#{pane_id}", "--",
                     "sleep", "600").strip()  # fmt: skip
    done = fleet.cli("adopt", "solo", "--dir", str(fleet.project_dir), "--pane", pane,
                     "--command", "sleep 600")  # fmt: skip
    assert done.returncode == 0, done.stderr
    in_another_terminal(fleet, "stop", "solo")
    assert pane not in panes(own_server)


def test_arguments_ending_in_a_semicolon_reach_the_agent_as_they_are(
    fleet: OrchState, tmp_path: Path
) -> None:
    """tmux ends a command at an argument ending in ``;`` (taken off) and runs the arguments
    after it as another: a project directory ``semi;`` could not be spawned into, and a
    command's ``'a;' kill-server`` would run tmux's kill-server."""
    project = tmp_path / "semi;"
    project.mkdir()
    command = f"{sys.executable} {fleet.env['FAKE_AGENT']} 'a;' 'kill-server;'"
    done = fleet.cli("spawn", "semi", "--dir", str(project), "--command", command)
    assert done.returncode == 0, done.stderr
    until(lambda: starts(fleet, "semi") == 1, "the agent's SessionStart")
    assert json.loads(Path(fleet.env["FAKE_LOG"]).read_text()) == ["a;", "kill-server;"]
    spec = lifecycle.get_spec(fleet.store, "semi")
    assert spec is not None
    where = tmux.tmux(spec["tmux_socket"], "display-message", "-p", "-t", spec["pane"],
                      "#{pane_current_path}")  # fmt: skip
    assert where.strip() == str(project)
