"""A fleet across machines, end to end: two hosts on one machine (two private tmux servers, two
``ORCH_HOST`` values, state folders and user configs), one PostgreSQL database (the test kit's
private server), a real ``orch supervise`` on each host, and real Claude Code agents started
with ``orch spawn``, each host's talking to a stand-in model of its own.

What is asserted is what reached each host's model (the stand-ins' recorded requests) and what
the shared store recorded: recoveries, hook runs, sessions and launch specs, each with its host.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from orch_builtin.idle import WAKE_LINE

from orch_core.queue import MARK
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.fleet import Host, rows, stored, wait

pytestmark = pytest.mark.claude


def test_two_hosts_each_wake_and_restart_their_own_agents(hosts: dict[str, Host]) -> None:
    alpha, beta = hosts["alpha"], hosts["beta"]
    for host in (alpha, beta):
        host.supervise()
    alpha.spawn("lead")
    beta.standin.reply_text("On the release.")
    beta.spawn("worker")
    wait(lambda: rows(alpha.env, "SELECT state FROM agents WHERE id = 'worker'") == [("idle",)],
         "worker idle at its first prompt")  # fmt: skip

    # (a) sent on alpha, for beta's idle agent: beta's supervisor wakes it, once
    receipt = json.loads(alpha.orch("send", "worker", "Cut the release branch.", "--json"))
    assert receipt["agent"] == "worker"
    wait(lambda: len(beta.requests()) >= 1, "the woken agent's request on beta")
    wait(lambda: beta.transcript_written("On the release."), "beta's answer in its transcript")
    (request,) = beta.requests()
    assert request.count(f"{MARK}{receipt['id']} ") == 1
    assert request.count("Cut the release branch.") == 1
    assert request.count(WAKE_LINE) == 1
    assert not any("Cut the release branch." in text for text in alpha.requests())
    shown = json.loads(alpha.orch("queue", "show", receipt["id"], "--json"))
    delivered = [e["ts"] for e in shown["events"] if e["state"] == "delivered"]
    assert len(delivered) == 1
    ((ended, took_ms),) = rows(alpha.env, "SELECT ts, duration_ms FROM hook_runs WHERE agent ="
                               " 'worker' AND event = 'UserPromptSubmit'")  # fmt: skip
    sent = shown["created"]
    print(
        f"\nA->B: sent on alpha at 0; beta's prompt hook began {ended - took_ms / 1000 - sent:.3f}"
        f" s later (the wake-up line typed and taken), delivered at {delivered[0] - sent:.3f} s"
    )

    # (b) beta's Claude is SIGKILLed: beta's supervisor restarts it, alpha's does nothing
    with stored(beta.env) as store:
        pane = beta.pane(store, "worker")
        pid = beta.pane_pid(store, "worker")
    alpha_panes = tmux.tmux(alpha.socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid}")
    os.kill(pid, signal.SIGKILL)
    starts = "SELECT count(*) FROM hook_runs WHERE agent = ? AND event = 'SessionStart'"
    wait(lambda: rows(alpha.env, starts, "worker") == [(2,)], "worker's SessionStart again")
    steps = "SELECT agent, step, state FROM recoveries ORDER BY id"
    wait(lambda: rows(alpha.env, steps) == [("worker", "restart", "done")], "a verified restart")
    assert rows(alpha.env, starts, "lead") == [(1,)]  # alpha's agent untouched
    sessions = "SELECT DISTINCT host FROM sessions WHERE agent = ?"
    assert rows(alpha.env, sessions, "worker") == [("beta",)]  # restarted with beta's settings
    assert rows(alpha.env, sessions, "lead") == [("alpha",)]
    with stored(alpha.env) as store:
        spec = lifecycle.get_spec(store, "worker")
    assert spec is not None
    assert (spec["host"], spec["tmux_socket"], spec["pane"]) == ("beta", beta.socket, pane)
    assert tmux.pane_state(pane, beta.socket) == "alive"
    assert tmux.tmux(alpha.socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid}") == (
        alpha_panes
    )
    listing = {a["id"]: a for a in json.loads(alpha.orch("agents", "--json"))}
    assert {a: (v["host"], v["unreachable"]) for a, v in listing.items()} == {
        "lead": ("alpha", False), "worker": ("beta", False),
    }  # fmt: skip

    # beta vanishes: its agent shows unreachable, and what is sent for it waits
    assert beta.supervisor is not None
    beta.supervisor.kill()
    beta.supervisor.wait(timeout=20)

    def unreachable() -> bool:
        listing = {a["id"]: a for a in json.loads(alpha.orch("agents", "--json"))}
        return bool(listing["worker"]["unreachable"]) and not listing["lead"]["unreachable"]

    wait(unreachable, "worker unreachable from alpha", timeout=30)
    later = json.loads(alpha.orch("send", "worker", "For when beta is back.", "--json"))
    time.sleep(3)  # well past the wake-up above: alpha, which could reach beta's pane, must not
    assert json.loads(alpha.orch("queue", "show", later["id"], "--json"))["state"] == "queued"
    assert len(beta.requests()) == 1
