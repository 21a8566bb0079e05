"""Two hosts of a fleet on one machine: two private tmux servers, two ``ORCH_HOST`` values and
state folders, one store. Names come from each host's real tmux; wake-ups and restarts happen
on the host whose tmux holds the pane, never from the other one (which, on one machine, could
reach it: only orch's own rules keep it out)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from orch_builtin.idle import WAKE_LINE

from orch_core import log
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import Recorder, TmuxServer

pytestmark = pytest.mark.tmux

HOSTS = ("alpha", "beta")


class Host:
    """One machine of the fleet: its tmux server, its state folder, its ``ORCH_HOST``."""

    def __init__(self, name: str, orch: OrchState) -> None:
        self.name = name
        self.tmux = TmuxServer()
        self.orch = orch
        state = orch.root / f"state-{name}"
        self.env = {**orch.env, "ORCH_HOST": name, "ORCH_STATE_DIR": str(state)}

    def socket(self) -> str:
        return self.tmux.cmd("display-message", "-p", "#{socket_path}").strip()

    def recorder(self) -> Recorder:
        """A window whose program keeps every line typed into it."""
        return Recorder(self.tmux, self.orch.root / f"typed-{self.name}.bin",
                        cwd=self.orch.project_dir)  # fmt: skip

    def hook(self, pane: str, event: str, **fields: Any) -> None:
        """``event`` of the Claude session in ``pane``, through the real orch-hook, which
        names its agent from this host's tmux (no ``ORCH_AGENT``)."""
        pid = self.tmux.cmd("display-message", "-p", "#{pid}").strip()
        data = payload(event, session_id=f"s-{self.name}-{pane}", **fields)
        result = self.orch.run_hook(data, ORCH_HOST=self.name, ORCH_STATE_DIR=self.env[
            "ORCH_STATE_DIR"], TMUX=f"{self.socket()},{pid},0", TMUX_PANE=pane)  # fmt: skip
        assert result.exit_code == 0

    def cli(self, *args: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
        """``orch ARGS`` on this host (or as if on ``host``)."""
        return subprocess.run(
            [orch_script(), *args], capture_output=True, text=True,
            env={**self.env, "ORCH_HOST": host or self.name}, cwd=self.orch.project_dir,
            timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture
def fleet(orch: OrchState) -> Iterator[dict[str, Host]]:
    # a hook that opens PostgreSQL imports psycopg within its budget (about 100 ms, more on a
    # busy machine: docs/benchmarks.md); these tests are about where things happen, not time
    orch.write_config("[orch]\nbudget_ms = 3000\n", user=True)
    found = {name: Host(name, orch) for name in HOSTS}
    try:
        yield found
    finally:
        for host in found.values():
            host.tmux.kill()


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_a_tmux_window_is_named_for_its_host_when_the_store_is_shared(
    orch: OrchState, orch_backend: str, fleet: dict[str, Host]
) -> None:
    """Both hosts have an ``orch-test:0`` window; on a shared store each is its host's."""
    for host in fleet.values():
        host.hook(host.recorder().pane, "SessionStart")
        if orch_backend == "sqlite":  # one machine's store: names as they always were
            break
    found = sorted((a["id"], a["host"]) for a in orch.store.agents())
    if orch_backend == "sqlite":
        assert found == [("orch-test:0", "alpha")]
    else:
        assert found == [("alpha/orch-test:0", "alpha"), ("beta/orch-test:0", "beta")]
        sessions = orch.store.execute("SELECT agent, host FROM sessions ORDER BY agent")
        assert sessions.fetchall() == found


@pytest.mark.orch_backends("postgresql")
def test_a_message_sent_on_one_host_wakes_the_other_hosts_agent_through_its_supervisor(
    orch: OrchState, fleet: dict[str, Host]
) -> None:
    alpha = fleet["alpha"]
    panes = {name: host.recorder() for name, host in fleet.items()}
    for name, host in fleet.items():
        host.hook(panes[name].pane, "SessionStart")  # at its prompt: idle
    supervisors = {name: lifecycle.Supervisor(host.env) for name, host in fleet.items()}
    try:
        for supervisor in supervisors.values():
            supervisor.wait(0.01)  # listening from here on
        done = alpha.cli("send", "orch-test:0", "for alpha's own")  # a bare name: this host's
        assert done.returncode == 0, done.stderr
        assert panes["alpha"].lines() == [WAKE_LINE]  # the sender wakes its host's agent
        done = alpha.cli("send", "beta/orch-test:0", "for beta's", "--json")
        assert json.loads(done.stdout)["agent"] == "beta/orch-test:0"
        assert panes["beta"].lines() == []  # alpha's sender leaves beta's pane alone
        supervisors["alpha"].wait(1.0)  # hears of it too, and leaves it to beta
        assert panes["beta"].lines() == []
        supervisors["beta"].wait(1.0)  # no tick: the notification alone
        assert panes["beta"].lines() == [WAKE_LINE]
        assert panes["alpha"].lines() == [WAKE_LINE]
        states = {a["id"]: a["state"] for a in orch.store.agents()}
        assert states == {"alpha/orch-test:0": "waking", "beta/orch-test:0": "waking"}
    finally:
        for supervisor in supervisors.values():
            supervisor.close()
    refused = alpha.cli("send", "orch-test:0", "which?", host="gamma")
    assert (refused.returncode, refused.stderr) == (
        1,
        "Error: 'orch-test:0' is on 2 hosts: alpha/orch-test:0, beta/orch-test:0; name one as "
        "host/name\n",
    )


@pytest.mark.orch_backends("postgresql")
def test_push_types_into_this_hosts_window_without_hooks_named_in_full(
    orch: OrchState, fleet: dict[str, Host]
) -> None:
    """A window whose agent orch has not heard from is named in full on a shared store (the
    bare name is another host's agent, once one has it). ``--push`` looked for a tmux session
    called ``alpha/orch-test`` in alpha's own tmux, found none, and typed nothing: no name
    reached alpha's window."""
    alpha, beta = fleet["alpha"], fleet["beta"]
    beta.hook(beta.recorder().pane, "SessionStart")  # beta/orch-test:0, heard from
    pane = alpha.recorder()  # alpha's orch-test:0: no hooks
    alpha.env["TMUX"] = f"{pane.socket},0,0"  # run from that server, as tmux's default
    done = alpha.cli("send", "alpha/orch-test:0", "typed in alpha", "--push", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "delivered"
    assert pane.lines() == ["typed in alpha"]


SLEEPER = "import time; time.sleep(600)"


@pytest.mark.orch_backends("postgresql")
def test_each_hosts_supervisor_restarts_its_own_dead_panes_only(
    orch: OrchState, fleet: dict[str, Host], tmp_path: Path
) -> None:
    """Both hosts' supervisors tick; beta's agent's pane dies. alpha's supervisor, which on
    this one machine could see that pane, leaves it be: beta's restarts it, in beta's tmux."""
    orch.write_config(
        "[orch]\nbudget_ms = 3000\n[plugin.auto_restart]\nbackoff_base = 0\njitter = 0\n",
        user=True,
    )
    store = orch.store
    for name, host in fleet.items():
        project = tmp_path / f"project-{name}"  # each host's agent in a project of its own
        project.mkdir()
        host.tmux.new_window("keep", [sys.executable, "-c", SLEEPER])  # the server, running
        env = {**host.env, "ORCH_TMUX_SOCKET": host.socket(), "CLAUDE_PROJECT_DIR": str(project)}
        lifecycle.spawn(store, f"{name}-worker", cwd=str(project), argv=[sys.executable, "-c",
                        SLEEPER], session="orch", extra_env={}, env=env)  # fmt: skip
    spec = lifecycle.get_spec(store, "beta-worker")
    assert spec is not None and spec["host"] == "beta"
    fleet["beta"].tmux.kill_pane(spec["pane"])
    supervisors = {name: lifecycle.Supervisor(host.env) for name, host in fleet.items()}
    now = time.time()
    for _ in range(3):  # watch, schedule, carry out: alpha's ticks do none of it
        supervisors["alpha"].upkeep(now)
        now += 3  # past the watch's pause
    assert lifecycle.history(store) == []
    for _ in range(3):
        supervisors["beta"].upkeep(now)
        now += 3
    (recovery,) = lifecycle.history(store, "beta-worker")
    assert (recovery["step"], recovery["reason"], recovery["state"]) == (
        "restart", "pane gone", "verifying",
    )  # fmt: skip
    restarted = lifecycle.get_spec(store, "beta-worker")
    assert restarted is not None and restarted["pane"] != spec["pane"]
    assert fleet["beta"].tmux.is_alive(restarted["pane"])
    windows = {
        name: sorted(host.tmux.cmd("list-windows", "-a", "-F", "#{window_name}").split())
        for name, host in fleet.items()
    }
    assert windows == {"alpha": ["alpha-worker", "keep"], "beta": ["beta-worker", "keep"]}


@pytest.mark.orch_backends("postgresql")
def test_an_agent_started_by_hand_on_another_host_is_not_restarted_where_it_was(
    orch: OrchState, fleet: dict[str, Host], tmp_path: Path
) -> None:
    """alpha spawned ``lead``; a user stops it there (as ``orch spawn`` elsewhere asks) and
    starts Claude by hand on beta with ``ORCH_AGENT=lead``. alpha's supervisor, which still
    holds how it started ``lead``, must not bring a second ``lead`` back in its own tmux: it
    lets the agent go, and says so in the log. Before that session on beta, the dead pane
    would have been restarted (the test above)."""
    orch.write_config(
        "[orch]\nbudget_ms = 3000\n[plugin.auto_restart]\nbackoff_base = 0\njitter = 0\n",
        user=True,
    )
    store = orch.store
    alpha, beta = fleet["alpha"], fleet["beta"]
    alpha.tmux.new_window("keep", [sys.executable, "-c", SLEEPER])  # the server, running
    env = {**alpha.env, "ORCH_TMUX_SOCKET": alpha.socket()}
    lifecycle.spawn(store, "lead", cwd=str(orch.project_dir), argv=[sys.executable, "-c",
                    SLEEPER], session="orch", extra_env={}, env=env)  # fmt: skip
    spec = lifecycle.get_spec(store, "lead")
    assert spec is not None and spec["host"] == "alpha"
    lifecycle.stop(store, "lead", env)
    result = orch.run_hook(payload("SessionStart", session_id="s-by-hand"), ORCH_AGENT="lead",
                           ORCH_HOST="beta", ORCH_STATE_DIR=beta.env["ORCH_STATE_DIR"])  # fmt: skip
    assert result.exit_code == 0
    assert [(a["id"], a["host"], a["state"]) for a in store.agents()] == [("lead", "beta", "idle")]
    supervisor = lifecycle.Supervisor(alpha.env)
    now = time.time()
    for _ in range(3):  # watch, schedule, carry out: nothing of it for lead
        supervisor.upkeep(now)
        now += 3
    assert lifecycle.history(store, "lead") == []
    assert lifecycle.get_spec(store, "lead") is None
    assert alpha.tmux.cmd("list-windows", "-a", "-F", "#{window_name}").split() == ["keep"]
    (said,) = [r for r in log.read(alpha.env) if r.get("agent") == "lead"]
    assert said["msg"] == "lead now runs on host beta: not restarted here"


@pytest.mark.orch_backends("postgresql")
def test_an_agent_moved_back_to_a_session_it_had_is_woken_where_it_runs_now(
    orch: OrchState, fleet: dict[str, Host]
) -> None:
    """``lead`` ran on alpha, was started by hand on beta, then taken up again on alpha with
    ``claude --continue``: Claude resumes its earlier session there, whose id the store knew
    from before the move. The wake-up goes to alpha's pane. The pane was looked up as that of
    the session first seen last, beta's: alpha's supervisor found none of its own to type into,
    and a send on beta typed the line into beta's old pane instead."""
    panes = {name: host.recorder() for name, host in fleet.items()}

    def start(name: str, session: str, source: str) -> None:
        host, pane = fleet[name], panes[name].pane
        pid = host.tmux.cmd("display-message", "-p", "#{pid}").strip()
        result = orch.run_hook(
            payload("SessionStart", session_id=session, source=source), ORCH_AGENT="lead",
            ORCH_HOST=name, ORCH_STATE_DIR=host.env["ORCH_STATE_DIR"],
            TMUX=f"{host.socket()},{pid},0", TMUX_PANE=pane,
        )  # fmt: skip
        assert result.exit_code == 0

    start("alpha", "s-lead-1", "startup")
    time.sleep(0.05)
    start("beta", "s-lead-2", "startup")  # moved by hand
    time.sleep(0.05)
    start("alpha", "s-lead-1", "resume")  # and back: `claude --continue` on alpha
    supervisors = {name: lifecycle.Supervisor(host.env) for name, host in fleet.items()}
    try:
        for supervisor in supervisors.values():
            supervisor.wait(0.01)  # listening from here on
        done = fleet["beta"].cli("send", "lead", "for lead, back on alpha")
        assert done.returncode == 0, done.stderr
        for supervisor in supervisors.values():
            supervisor.wait(1.0)
    finally:
        for supervisor in supervisors.values():
            supervisor.close()
    typed = {name: pane.lines() for name, pane in panes.items()}
    assert typed == {"alpha": [WAKE_LINE], "beta": []}
