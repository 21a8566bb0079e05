"""A fleet across machines: each agent's host, names across hosts, the store's wake-up
notifications, each supervisor's own agents, and hosts gone silent. On both stores: SQLite is
one machine's and keeps its names; PostgreSQL is shared. (The tmux side, with real panes, is
tests/integration/test_fleet_hosts.py; real Claude Code on two hosts, tests/e2e.)"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orch_core import hosts
from orch_core.hosts import AmbiguousName, Names
from orch_core.ops import fleet, metrics
from orch_core.queue import WAKE_CHANNEL, Queue
from orch_core.storage.store import Store
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

# tests of what plugins do, not of time
pytestmark = [pytest.mark.orch_backends("sqlite", "postgresql"), pytest.mark.orch_roomy_hooks]


#: Two hosts' agents as their hooks record them on a shared store: tmux windows named for
#: their host, and names someone chose (``ORCH_AGENT``) as given.
FLEET = {"alpha/proj:1": "alpha", "beta/proj:1": "beta", "beta/solo:3": "beta",
         "reviewer": "beta", "lead": "alpha"}  # fmt: skip


def seen(store: Store, agents: dict[str, str] = FLEET, state: str = "idle") -> None:
    for agent, host in agents.items():
        store.set_agent_state(agent, state, session_id=None, project_dir=None, host=host)


def on(orch: OrchState, host: str) -> dict[str, str]:
    """The environment of a process of ``orch``'s fleet on ``host``."""
    return {**orch.env, "ORCH_HOST": host}


def cli(orch: OrchState, host: str, *args: str) -> Any:
    """``orch ARGS`` on ``host``."""
    import subprocess

    from orch_core.testing.kit import orch_script

    return subprocess.run(
        [orch_script(), *args], capture_output=True, text=True, env=on(orch, host),
        cwd=orch.project_dir, timeout=60, check=False,
    )  # fmt: skip


def test_every_agent_session_and_launch_spec_keeps_its_host(orch: OrchState) -> None:
    orch.run_hook(payload("SessionStart", session_id="s1"), ORCH_AGENT="lead",
                  ORCH_HOST="alpha", TMUX_PANE="%7")  # fmt: skip
    done = cli(orch, "alpha", "adopt", "lead", "--dir", str(orch.project_dir),
               "--command", "sleep 600")  # fmt: skip
    assert done.returncode == 0, done.stderr
    store = orch.store
    assert [(a["id"], a["host"]) for a in store.agents()] == [("lead", "alpha")]
    assert store.execute("SELECT host, pane FROM sessions").fetchall() == [("alpha", "%7")]
    assert lifecycle.get_spec(store, "lead")["host"] == "alpha"  # type: ignore[index]
    # a name someone chose is one agent fleet-wide: its hooks from another host move it there
    orch.run_hook(payload("Stop", session_id="s2"), ORCH_AGENT="lead", ORCH_HOST="beta")
    assert [(a["id"], a["host"]) for a in orch.store.agents()] == [("lead", "beta")]


def test_a_host_name_orch_cannot_use_is_a_one_line_error(orch: OrchState) -> None:
    done = cli(orch, "beta/2", "send", "lead", "hello")
    assert (done.returncode, done.stderr) == (
        1,
        "Error: 'beta/2' cannot name this host: set ORCH_HOST to 1-64 letters, digits, '.', "
        "'_' or '-'\n",
    )


def test_a_bare_name_is_this_hosts_agent_else_the_only_one_else_an_error_listing_them(
    orch: OrchState,
) -> None:
    seen(orch.store)
    on_alpha, on_gamma = Names(orch.store, on(orch, "alpha")), Names(orch.store, on(orch, "gamma"))
    assert on_alpha.resolve("proj:1") == "alpha/proj:1"  # this host's
    assert on_gamma.resolve("solo:3") == "beta/solo:3"  # the only one in the fleet
    assert on_gamma.resolve("beta/proj:1") == "beta/proj:1"  # host/name is exact
    assert on_gamma.resolve("beta/reviewer") == "reviewer"  # ...for a chosen name too
    assert on_gamma.resolve("reviewer") == "reviewer"
    assert on_gamma.resolve("new:1") == "new:1"  # unknown: waits for its first hook as named
    assert on_gamma.resolve("alpha/new:1") == "alpha/new:1"
    with pytest.raises(AmbiguousName) as caught:
        on_gamma.resolve("proj:1")
    assert str(caught.value) == (
        "'proj:1' is on 2 hosts: alpha/proj:1, beta/proj:1; name one as host/name"
    )


def test_a_bare_name_may_hold_a_slash_and_a_host_of_the_fleet_before_one_wins(
    orch: OrchState,
) -> None:
    """tmux takes ``my/proj`` as a session's name: its window 2 on host alpha is
    ``alpha/my/proj:2``, and ``my/proj:2`` its bare name while no host is called ``my``."""
    seen(orch.store, {**FLEET, "alpha/my/proj:2": "alpha"})
    sent = json.loads(cli(orch, "alpha", "send", "my/proj:2", "hello", "--json").stdout)
    assert sent["agent"] == "alpha/my/proj:2"
    result = orch.run_hook(payload("UserPromptSubmit", session_id="s-my"),
                           ORCH_AGENT="alpha/my/proj:2", ORCH_HOST="alpha")  # fmt: skip
    assert result.context is not None and "hello" in result.context
    assert Names(orch.store, on(orch, "gamma")).resolve("my/proj:2") == "alpha/my/proj:2"
    # once a host is called my, my/proj:2 is its window, started or not: never alpha's
    hosts.beat(orch.store, "my")
    assert Names(orch.store, on(orch, "alpha")).resolve("my/proj:2") == "my/proj:2"
    seen(orch.store, {"my/proj:2": "my"})
    names = Names(orch.store, on(orch, "alpha"))
    assert names.resolve("my/proj:2") == "my/proj:2"
    assert names.resolve("alpha/my/proj:2") == "alpha/my/proj:2"  # the full name reaches it


@pytest.mark.orch_backends("postgresql")
def test_a_bare_name_is_this_hosts_agent_even_where_another_hosts_agent_has_it_as_its_id(
    orch: OrchState,
) -> None:
    """An agent whose session went on across ``orch migrate`` keeps the id SQLite gave its
    window, ``proj:1``, on host alpha; beta's window is ``beta/proj:1``. On beta, ``proj:1``
    is beta's own: a message for it went to alpha's agent, and from a third host it was no
    error."""
    seen(orch.store, {"proj:1": "alpha", "beta/proj:1": "beta"})
    sent = json.loads(cli(orch, "beta", "send", "proj:1", "for beta", "--json").stdout)
    assert sent["agent"] == "beta/proj:1"
    done = cli(orch, "gamma", "send", "proj:1", "which one?")
    assert (done.returncode, done.stderr) == (
        1,
        "Error: 'proj:1' is on 2 hosts: alpha/proj:1, beta/proj:1; name one as host/name\n",
    )
    on_alpha = Names(orch.store, on(orch, "alpha"))
    assert (on_alpha.resolve("proj:1"), on_alpha.resolve("alpha/proj:1")) == ("proj:1", "proj:1")
    assert Names(orch.store, on(orch, "gamma")).resolve("beta/proj:1") == "beta/proj:1"
    result = orch.run_hook(payload("UserPromptSubmit", session_id="s-alpha"),
                           ORCH_AGENT="proj:1", ORCH_HOST="alpha")  # fmt: skip
    assert "for beta" not in (result.context or "")


def test_orch_send_delivers_to_the_agent_the_name_means_and_refuses_a_name_of_two_hosts(
    orch: OrchState,
) -> None:
    seen(orch.store)
    done = cli(orch, "gamma", "send", "proj:1", "which one?")
    assert (done.returncode, done.stderr) == (
        1,
        "Error: 'proj:1' is on 2 hosts: alpha/proj:1, beta/proj:1; name one as host/name\n",
    )
    mine = json.loads(cli(orch, "alpha", "send", "proj:1", "mine", "--json").stdout)
    theirs = json.loads(cli(orch, "alpha", "send", "beta/proj:1", "theirs", "--json").stdout)
    assert (mine["agent"], theirs["agent"]) == ("alpha/proj:1", "beta/proj:1")
    # each hook takes its own host's messages only
    for host in ("alpha", "beta"):
        result = orch.run_hook(payload("UserPromptSubmit", session_id=f"s-{host}"),
                               ORCH_AGENT=f"{host}/proj:1", ORCH_HOST=host)  # fmt: skip
        assert result.context is not None
        assert ("mine" in result.context, "theirs" in result.context) == (
            host == "alpha", host == "beta",
        )  # fmt: skip
    listing = json.loads(cli(orch, "gamma", "queue", "beta/proj:1", "--json").stdout)
    assert [(m["agent"], m["host"], m["body"]) for m in listing] == [
        ("beta/proj:1", "beta", "theirs")
    ]


def test_every_command_that_takes_an_agent_reads_its_name_the_same_way(
    orch: OrchState, orch_backend: str
) -> None:
    seen(orch.store)
    assert cli(orch, "gamma", "send", "beta/reviewer", "read the diff").returncode == 0
    lines = cli(orch, "gamma", "queue").stdout.splitlines()
    shown = "beta/reviewer" if orch_backend == "postgresql" else "reviewer"  # addressable
    assert [line.split("  ")[1] for line in lines] == [shown]
    done = cli(orch, "alpha", "rebrief", "proj:1")
    assert done.stdout == "alpha/proj:1 will be rebriefed at its next hook\n"
    done = cli(orch, "gamma", "queue", "purge", "proj:1")
    assert done.stderr == (
        "Error: 'proj:1' is on 2 hosts: alpha/proj:1, beta/proj:1; name one as host/name\n"
    )
    done = cli(orch, "gamma", "queue", "purge", "solo:3")
    assert done.stdout == "cancelled 0 pending messages of beta/solo:3\n"


def test_a_pattern_fans_out_over_the_names_of_every_host(orch: OrchState) -> None:
    seen(orch.store)
    names = Names(orch.store, on(orch, "alpha"))
    assert names.matching("proj:*") == ["alpha/proj:1", "beta/proj:1"]
    assert names.matching("beta/*") == ["beta/proj:1", "beta/solo:3", "reviewer"]
    assert names.matching("*") == sorted(FLEET)
    receipts = json.loads(cli(orch, "alpha", "send", "*:*", "standup", "--json").stdout)
    assert sorted(r["agent"] for r in receipts) == ["alpha/proj:1", "beta/proj:1", "beta/solo:3"]


@pytest.mark.orch_backends("postgresql")
def test_a_pattern_without_a_slash_does_not_match_the_host_in_an_agents_id(
    orch: OrchState,
) -> None:
    """``b*``, for the agents named ``b...``, also took every tmux window of host beta (its
    id ``beta/proj:1`` starts with a b, its name ``proj:1`` does not): the standup meant for
    ``bisect`` reached beta's agents too."""
    seen(orch.store, {**FLEET, "bisect": "alpha"})
    names = Names(orch.store, on(orch, "alpha"))
    assert names.matching("b*") == ["bisect"]
    assert names.matching("a*") == []
    assert names.matching("alpha/*") == ["alpha/proj:1", "bisect", "lead"]
    receipts = json.loads(cli(orch, "alpha", "send", "b*", "standup", "--json").stdout)
    assert [r["agent"] for r in receipts] == ["bisect"]
    assert Queue(orch.store).pending_counts() == {"bisect": 1}


def test_the_store_tells_listeners_which_agents_have_messages_ready_when_the_send_commits(
    orch: OrchState, orch_backend: str
) -> None:
    store = orch.store
    listener = store.listen(WAKE_CHANNEL)
    if orch_backend == "sqlite":  # one machine: the sender wakes the agent itself
        assert listener is None
        return
    assert listener is not None
    queue = Queue(store)
    queue.send_many([{"agent": "a:1", "text": "one"}, {"agent": "a:1", "text": "two"},
                     {"agent": "b:1", "text": "three", "key": "k"}])  # fmt: skip
    assert sorted(listener.wait(5)) == ["a:1", "b:1"]  # one per agent and transaction
    queue.send("b:1", "again", key="k")  # a duplicate of a pending message: nothing new
    queue.send("c:1", "later", not_before=time.time() + 3600)  # its supervisor's tick wakes it
    with pytest.raises(RuntimeError), store.transaction() as tx:
        store.notify(tx, WAKE_CHANNEL, ["d:1"])
        raise RuntimeError("rolled back")
    assert listener.wait(0.3) == []
    (gone,) = queue.send_many([{"agent": "e:1", "text": "cancelled, then retried"}])
    assert listener.wait(5) == ["e:1"]
    queue.cancel(gone["id"])
    queue.retry(gone["id"])
    assert listener.wait(5) == ["e:1"]
    listener.close()


WAKE_OBSERVER = """
import json
from orch_core import hookimpl

@hookimpl
def orch_wake_agent(agent, ctx):
    with open(ctx.env["WAKES_LOG"], "a") as log:
        log.write(json.dumps(agent) + "\\n")

@hookimpl
def orch_supervisor_tick(now, agents, ctx):
    with open(ctx.env["TICKS_LOG"], "a") as log:
        log.write(json.dumps(agents) + "\\n")
"""


def observed(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hook_orch_wake_agent_is_called_by_the_supervisor_of_the_agents_host_at_once(
    orch: OrchState,
    orch_backend: str,
    tmp_path: Path,
    orch_module: Callable[[str, str], Path],
) -> None:
    """A message sent anywhere reaches the supervisor of its agent's host as a notification,
    within the wait between two ticks; the other hosts' supervisors leave it alone."""
    orch_module("wake_observer", WAKE_OBSERVER)  # the supervisors run in this process
    orch.write_config('[plugins]\nload = ["wake_observer"]\n', user=True)
    seen(orch.store)
    logs = {}
    supervisors = {}
    for host in ("alpha", "beta"):
        logs[host] = tmp_path / f"{host}.wakes"
        env = {**on(orch, host), "WAKES_LOG": str(logs[host]), "TICKS_LOG": os.devnull}
        supervisors[host] = lifecycle.Supervisor(env)
        supervisors[host].wait(0.01)  # listening from here on
    try:
        assert cli(orch, "gamma", "send", "beta/proj:1", "for beta").returncode == 0
        assert cli(orch, "gamma", "send", "lead", "for alpha's lead").returncode == 0
        for supervisor in supervisors.values():
            supervisor.wait(2.0)  # no tick runs meanwhile
        expected = {"alpha": ["lead"], "beta": ["beta/proj:1"]}
        if orch_backend == "sqlite":  # one machine: nothing to listen to, the tick wakes
            expected = {"alpha": [], "beta": []}
        assert {host: observed(log) for host, log in logs.items()} == expected
    finally:
        for supervisor in supervisors.values():
            supervisor.close()


def test_each_supervisor_ticks_its_own_hosts_agents(
    orch: OrchState,
    orch_backend: str,
    tmp_path: Path,
    orch_module: Callable[[str, str], Path],
) -> None:
    orch_module("wake_observer", WAKE_OBSERVER)
    orch.write_config('[plugins]\nload = ["wake_observer"]\n', user=True)
    seen(orch.store)
    Queue(orch.store).send("ghost:1", "for an agent no host has heard from yet")
    ticks = {}
    for host in ("alpha", "beta"):
        log = tmp_path / f"{host}.ticks"
        env = {**on(orch, host), "TICKS_LOG": str(log), "WAKES_LOG": os.devnull}
        lifecycle.Supervisor(env).tick(time.time())
        ticks[host] = observed(log)
    if orch_backend == "sqlite":  # one machine: its supervisor looks after every agent
        everyone = sorted([*FLEET, "ghost:1"])
        assert ticks == {"alpha": [everyone], "beta": [everyone]}
        return
    assert ticks == {
        "alpha": [["alpha/proj:1", "ghost:1", "lead"]],
        "beta": [["beta/proj:1", "beta/solo:3", "ghost:1", "reviewer"]],
    }
    beats = {row["host"]: row["pid"] for row in hosts.listing(orch.store)}
    assert beats == {"alpha": os.getpid(), "beta": os.getpid()}


def test_a_clock_set_back_does_not_stop_the_heartbeat(orch: OrchState) -> None:
    """The supervisor beats every few seconds of its clock: set back an hour, it did not beat
    for that hour, and the other hosts took its agents for unreachable."""
    supervisor = lifecycle.Supervisor(on(orch, "alpha"))
    now = time.time()
    supervisor.tick(now + 3600)  # then the clock goes back an hour
    supervisor.tick(now + 10)
    assert [row["last_seen"] for row in hosts.listing(orch.store)] == [now + 10]


def test_the_agents_of_a_host_not_heard_from_are_unreachable_and_keep_their_messages(
    orch: OrchState, orch_backend: str
) -> None:
    store = orch.store
    seen(store)
    now = time.time()
    hosts.beat(store, "alpha", now)
    hosts.beat(store, "beta", now - 31)  # past [orch] host_timeout (30 s)
    sent = Queue(store).send("beta/proj:1", "waits for beta")
    shared = orch_backend == "postgresql"
    view = {a["id"]: a for a in fleet.snapshot(store, now)["agents"]}
    assert {a: (v["host"], v["unreachable"]) for a, v in view.items()} == {
        agent: (host, shared and host == "beta") for agent, host in FLEET.items()
    }
    listing = {a["id"]: a for a in json.loads(cli(orch, "alpha", "agents", "--json").stdout)}
    assert (listing["reviewer"]["host"], listing["reviewer"]["unreachable"]) == ("beta", shared)
    assert listing["beta/proj:1"]["pending"] == 1
    text = cli(orch, "alpha", "agents").stdout.splitlines()
    (line,) = [line for line in text if line.startswith("reviewer\t")]
    state = "unreachable" if shared else "idle"
    assert line.startswith(f"reviewer\t{state}\tseen ") and line.endswith("\ton beta\t0 pending")
    gone = hosts.unreachable(store, now)
    assert metrics.agent_stats(store, None, gone)["by_state"] == (
        {"idle": 2, "unreachable": 3} if shared else {"idle": 5}
    )
    assert metrics.host_stats(store, None, gone)["beta"] == {
        "agents": 3, "last_seen": pytest.approx(now - 31), "unreachable": shared,
    }  # fmt: skip
    stats = json.loads(cli(orch, "alpha", "stats", "--json").stdout)
    assert stats["hosts"]["alpha"] == {"agents": 2, "last_seen": pytest.approx(now),
                                       "unreachable": False}  # fmt: skip
    assert stats["hosts"]["beta"]["unreachable"] is shared
    text = cli(orch, "alpha", "stats").stdout.splitlines()
    (line,) = [line for line in text if line.startswith("hosts: ")]
    if shared:
        assert re.fullmatch(r"hosts: alpha \(2 agents\), beta \(3 agents, unreachable,"
                            r" supervisor last heard 3\ds ago\)", line)  # fmt: skip
    else:
        assert line == "hosts: alpha (2 agents), beta (3 agents)"
    report = cli(orch, "alpha", "doctor").stdout.splitlines()
    found = [n for n, line in enumerate(report) if line.startswith(("ok   hosts", "FAIL hosts"))]
    if shared:
        (n,) = found
        assert report[n].startswith("FAIL hosts: this host is alpha; supervisors last heard: ")
        assert report[n].endswith("; unreachable: beta (their agents' messages wait)")
        assert report[n + 1] == (
            "     fix: start `orch supervise` on beta, or see whether that machine is up"
        )
    else:
        assert found == []  # one machine's store: no hosts to hear from
    orch.write_config("[orch]\nhost_timeout = 60\n", user=True)
    listing = {a["id"]: a for a in json.loads(cli(orch, "alpha", "agents", "--json").stdout)}
    assert listing["reviewer"]["unreachable"] is False
    assert Queue(orch.store).get(sent["id"])["state"] == "queued"  # type: ignore[index]


def test_only_the_agents_host_touches_its_pane(orch: OrchState, orch_backend: str) -> None:
    """restart, stop, adopt and --push would reach this host's tmux, where another host's
    pane id means nothing: refused, naming the host. spawn refuses a name another host runs."""
    store = orch.store
    seen(store, {"reviewer": "beta"})
    lifecycle.save_spec(store, "reviewer", argv=["claude"], cwd=str(orch.project_dir), env={},
                        socket=None, session="orch", pane="%1", host="beta")  # fmt: skip
    if orch_backend == "sqlite":  # one machine: every pane is this host's (none runs here)
        assert (
            lifecycle.elsewhere(store, lifecycle.get_spec(store, "reviewer"), on(orch, "a")) is None
        )
        return
    for args in (["restart", "reviewer"], ["stop", "reviewer"],
                 ["adopt", "beta/reviewer", "--dir", "."]):  # fmt: skip
        done = cli(orch, "alpha", *args)
        assert (done.returncode, done.stderr) == (
            1, f"Error: reviewer runs on host beta: run `orch {args[0]}` there\n",
        )  # fmt: skip
    done = cli(orch, "alpha", "send", "reviewer", "typed", "--push")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: reviewer runs on host beta: --push types into this ")
    done = cli(orch, "alpha", "spawn", "reviewer", "--dir", str(orch.project_dir))
    assert (done.returncode, done.stderr) == (
        1, "Error: agent reviewer runs on host beta: stop it there first, or choose another name\n",
    )  # fmt: skip
    assert lifecycle.get_spec(store, "reviewer")["host"] == "beta"  # type: ignore[index]


@pytest.mark.orch_backends("postgresql")
def test_an_agent_started_by_hand_on_another_host_is_that_hosts_to_stop_and_its_name_taken(
    orch: OrchState,
) -> None:
    """Started by hand on beta (``ORCH_AGENT=reviewer``, no launch spec), ``reviewer`` was
    stopped from alpha, fleet-wide, while it went on running, and alpha then spawned a second
    ``reviewer``: two sessions taking one name's messages."""
    seen(orch.store, {"reviewer": "beta"})
    done = cli(orch, "alpha", "stop", "reviewer")
    assert (done.returncode, done.stderr) == (
        1, "Error: reviewer runs on host beta: run `orch stop` there\n",
    )  # fmt: skip
    with pytest.raises(lifecycle.LifecycleError) as refused:  # what orch spawn asks first
        lifecycle.check_spawn(orch.store, "reviewer", cwd=str(orch.project_dir), argv=["claude"],
                              extra_env={}, env=on(orch, "alpha"))  # fmt: skip
    assert str(refused.value) == (
        "agent reviewer runs on host beta: stop it there first, or choose another name"
    )
    assert lifecycle.agent_state(orch.store, "reviewer") == "idle"
    done = cli(orch, "beta", "stop", "reviewer")  # on its own host, as doctor's names fix says
    assert (done.returncode, done.stdout) == (0, "stopped reviewer\n"), done.stderr


@pytest.mark.orch_backends("postgresql")
def test_adopt_refuses_another_hosts_window_not_heard_from_yet(orch: OrchState) -> None:
    """``beta/work:1`` is beta's window whether its agent has spoken yet or not: adopted on
    alpha, alpha's supervisor took it for its own (beta's never looked after it), and would
    have restarted it in alpha's tmux."""
    hosts.beat(orch.store, "beta")
    done = cli(orch, "alpha", "adopt", "beta/work:1", "--dir", str(orch.project_dir),
               "--command", "sleep 600")  # fmt: skip
    assert (done.returncode, done.stderr) == (
        1, "Error: beta/work:1 runs on host beta: run `orch adopt` there\n",
    )  # fmt: skip
    assert lifecycle.get_spec(orch.store, "beta/work:1") is None
    # this host's own window, named in full before its first hook, is adopted as before
    done = cli(orch, "alpha", "adopt", "alpha/work:1", "--dir", str(orch.project_dir),
               "--command", "sleep 600")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert lifecycle.get_spec(orch.store, "alpha/work:1")["host"] == "alpha"  # type: ignore[index]


@pytest.mark.orch_backends("postgresql")
def test_an_agent_adopted_before_its_first_hook_is_left_to_its_own_hosts_supervisor(
    orch: OrchState,
) -> None:
    """Adopted on alpha in its pane there and sent a message before its first hook, ``lead``
    was ticked by every host's supervisor: beta's found no such pane in its own tmux, tried
    restarts that could only fail there, and gave the agent up (``failed``, no more restarts
    on alpha either)."""
    done = cli(orch, "alpha", "adopt", "lead", "--dir", str(orch.project_dir),
               "--command", "sleep 600", "--pane", "%3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    Queue(orch.store).send("lead", "before its first hook")
    beta = lifecycle.Supervisor(on(orch, "beta"))
    try:
        now = time.time()
        for tick in range(8):
            beta.tick(now + 3 * tick)
    finally:
        beta.close()
    assert orch.store.execute("SELECT agent, step, state FROM recoveries").fetchall() == []
    assert lifecycle.agent_state(orch.store, "lead") is None  # not heard from, not failed


CHANNEL = """
import json
import time
from orch_core import hookimpl

@hookimpl
def orch_alert(alert, ctx):
    time.sleep(0.3)  # a channel that takes its time: the other supervisor looks meanwhile
    with open(ctx.env["SENT_LOG"], "a") as log:
        log.write(json.dumps([ctx.env["ORCH_HOST"], alert["agent"]]) + "\\n")
    return True
"""


@pytest.mark.orch_backends("postgresql")
def test_each_host_looks_for_its_own_agents_alerts_and_each_alert_goes_out_once(
    orch: OrchState, tmp_path: Path, orch_module: Callable[[str, str], Path]
) -> None:
    """Both hosts work in the same project folder: neither closes the alerts of the other's
    agents, and the two supervisors, sending from one store, send each alert once."""
    from orch_core.ops import alerts

    orch_module("channel", CHANNEL)
    orch.write_config('[plugins]\nload = ["channel"]\n[alerts]\ncheck_every = 0\n', user=True)
    store = orch.store
    seen(store, {"lead": "alpha", "reviewer": "beta"}, state="needs_input")
    with store.transaction() as tx:  # both have waited for a person for 20 minutes
        tx.execute("UPDATE agents SET state_changed = ?", (time.time() - 1200,))
    log = tmp_path / "sent.log"
    supervisors = [
        lifecycle.Supervisor({**on(orch, host), "SENT_LOG": str(log)}) for host in ("alpha", "beta")
    ]
    now = time.time()
    for _ in range(2):
        for supervisor in supervisors:
            supervisor.upkeep(now)
            now += 1
    opened = [(a["agent"], a["kind"]) for a in alerts.listing(store) if a["sent"] is None]
    assert sorted(opened) == [("lead", "needs_input"), ("reviewer", "needs_input")]
    senders = [
        threading.Thread(target=alerts.send_due, args=(s.env, s.store, now, s.project_of))
        for s in supervisors
    ]  # at once, as two hosts' supervisors would
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=30)
    sent = sorted(agent for _, agent in observed(log))
    assert sent == ["lead", "reviewer"]  # once each, by whichever supervisor came first
    assert all(a["sent"] is not None for a in alerts.listing(store))


def test_a_chosen_name_answering_on_two_hosts_at_once_is_named_by_doctor(
    orch: OrchState, orch_backend: str
) -> None:
    """Two sessions started by hand with one ``ORCH_AGENT`` on two hosts both take its
    messages: doctor names them. An agent moved from one host to the other does not count."""

    def hook(event: str, session: str, agent: str, host: str) -> None:
        result = orch.run(payload(event, session_id=session), ORCH_AGENT=agent, ORCH_HOST=host,
                          TMUX_PANE="%1")  # fmt: skip
        assert result.exit_code == 0

    for session, host in (("moved-1", "alpha"), ("moved-2", "beta"), ("moved-3", "alpha")):
        for event in ("SessionStart", "PostToolUse"):  # there and back again
            hook(event, session, "mover", host)
    hook("SessionStart", "twice-1", "reviewer", "alpha")
    hook("SessionStart", "twice-2", "reviewer", "beta")
    hook("PostToolUse", "twice-1", "reviewer", "alpha")  # the first is still at work
    shared = orch_backend == "postgresql"
    assert hosts.on_two_hosts(orch.store, time.time()) == (
        {"reviewer": ["alpha", "beta"]} if shared else {}
    )
    report = cli(orch, "alpha", "doctor").stdout.splitlines()
    found = [n for n, line in enumerate(report) if line.startswith(("ok   names", "FAIL names"))]
    if shared:
        (n,) = found
        assert report[n] == (
            "FAIL names: answering on two hosts at once in the last 10 min: reviewer on hosts "
            "alpha, beta (each session takes messages meant for the other)"
        )
        assert report[n + 1] == (
            "     fix: stop reviewer on all hosts but one (`orch stop reviewer` there), or start "
            "the other under a name of its own"
        )
    else:
        assert found == []  # one machine's store: one host
