"""Waking idle agents and ``orch send --push``, against a real tmux server.

The agent's pane runs a small recorder instead of Claude Code: it appends every line typed into
the pane to a file, so the test sees exactly what orch typed, and that nothing ran.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from orch_builtin.idle import WAKE_LINE

from orch_core.queue import Queue
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import Recorder, TmuxServer, wait_until

pytestmark = pytest.mark.tmux

AGENT = "proj:1"
SESSION = "sess-wake"


@pytest.fixture
def tmux() -> Iterator[TmuxServer]:
    with TmuxServer() as server:
        yield server


class Pane(Recorder):
    """A recorder known to orch as AGENT's session pane."""

    def __init__(self, tmux: TmuxServer, orch: OrchState) -> None:
        super().__init__(tmux, orch.root / "typed.bin", cwd=orch.project_dir)
        orch.store.remember_session(SESSION, AGENT, self.pane, self.socket)


def hook(orch: OrchState, event: str, **fields: object) -> str:
    data = payload(event, session_id=SESSION, **fields)
    result = orch.run_hook(data, ORCH_AGENT=AGENT)
    return result.stdout


def agent_state(orch: OrchState) -> str:
    (row,) = [a for a in orch.store.agents() if a["id"] == AGENT]
    return str(row["state"])


def test_an_idle_agent_gets_one_wake_line_per_batch_and_never_the_body(
    tmux: TmuxServer, orch: OrchState
) -> None:
    pane = Pane(tmux, orch)
    assert hook(orch, "Stop") == ""  # nothing queued: it really stops
    assert agent_state(orch) == "idle"
    for body in ("secret body one", "secret body two"):
        done = orch.cli("send", AGENT, body)
        assert done.returncode == 0, done.stderr
    assert pane.lines() == [WAKE_LINE]
    screen = tmux.capture(pane.pane, history=True)
    assert "secret body" not in screen
    assert agent_state(orch) == "waking"
    # the wake line's prompt then delivers the queue through the hook
    delivered = hook(orch, "UserPromptSubmit", prompt=WAKE_LINE)
    assert "secret body one" in delivered and "secret body two" in delivered
    assert agent_state(orch) == "busy"
    # idle again: the next message wakes it again, once
    assert hook(orch, "Stop", stop_hook_active=False) == ""
    assert agent_state(orch) == "idle"
    assert orch.cli("send", AGENT, "secret body three").returncode == 0
    assert pane.lines() == [WAKE_LINE, WAKE_LINE]


@pytest.mark.parametrize(
    "events", [["UserPromptSubmit"], ["PostToolUse"], ["UserPromptSubmit", "SessionStart"]]
)
def test_an_agent_that_is_not_idle_is_not_woken(
    tmux: TmuxServer, orch: OrchState, events: list[str]
) -> None:
    pane = Pane(tmux, orch)
    for event in events:  # a compaction in the middle of a turn leaves the agent busy
        hook(orch, event, source="compact")
    assert agent_state(orch) == "busy"
    done = orch.cli("send", AGENT, "for later")
    assert done.returncode == 0, done.stderr
    assert pane.lines() == []
    assert agent_state(orch) == "busy"


def test_an_agent_waiting_at_a_permission_prompt_is_not_woken(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """The wake-up line would land in the dialog: neither a send nor the supervisor types it
    while the agent needs a person; once it works and stops, it is woken as usual."""
    from orch_core.supervisor import lifecycle

    pane = Pane(tmux, orch)
    hook(orch, "UserPromptSubmit")
    hook(orch, "Notification", notification_type="permission_prompt",
         message="Claude needs your permission to use Bash")  # fmt: skip
    assert agent_state(orch) == "needs_input"
    assert orch.cli("send", AGENT, "for later").returncode == 0
    lifecycle.Supervisor(orch.env).upkeep(time.time())
    assert pane.lines() == []
    assert agent_state(orch) == "needs_input"
    assert "for later" in hook(orch, "PostToolUse")  # the person allowed the tool
    assert hook(orch, "Stop") == ""
    assert agent_state(orch) == "idle"
    assert orch.cli("send", AGENT, "next").returncode == 0
    assert pane.lines() == [WAKE_LINE]


def test_a_message_left_waiting_by_the_stop_past_stop_blocks_wakes_the_agent(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """The Stop past ``stop_blocks`` lets the agent stop with a message ready (so does a Stop
    that a message sent as it ran missed): no send comes after to wake it, and agents started
    by hand have no supervisor to, unless something starts one: the message waited for
    the next send, or for ever."""
    orch.write_config("[plugin.queue]\nstop_blocks = 1\n")
    pane = Pane(tmux, orch)
    hook(orch, "UserPromptSubmit")
    assert orch.cli("send", AGENT, "first").returncode == 0  # busy: not woken
    assert "first" in hook(orch, "Stop")
    assert orch.cli("send", AGENT, "second").returncode == 0
    assert hook(orch, "Stop", stop_hook_active=True) == ""  # past stop_blocks: it stops
    assert agent_state(orch) in ("idle", "waking")
    wait_until(lambda: pane.lines() == [WAKE_LINE], 20, "wake-up line")
    assert "second" in hook(orch, "UserPromptSubmit", prompt=WAKE_LINE)


@pytest.mark.parametrize("source", ["startup", "resume", "clear"])
def test_an_agent_waiting_at_its_first_prompt_is_woken(
    tmux: TmuxServer, orch: OrchState, source: str
) -> None:
    pane = Pane(tmux, orch)
    assert hook(orch, "SessionStart", source=source) == ""  # nothing waiting: nothing typed
    assert agent_state(orch) == "idle"
    assert pane.lines() == []
    done = orch.cli("send", AGENT, "first job")
    assert done.returncode == 0, done.stderr
    assert pane.lines() == [WAKE_LINE]
    assert agent_state(orch) == "waking"
    assert "first job" in hook(orch, "UserPromptSubmit", prompt=WAKE_LINE)


def test_an_agent_that_starts_with_messages_waiting_is_woken_to_act_on_them(
    tmux: TmuxServer, orch: OrchState
) -> None:
    pane = Pane(tmux, orch)
    done = orch.cli("send", AGENT, "waiting since before it started")
    assert done.returncode == 0, done.stderr
    assert pane.lines() == []  # orch did not know its pane yet
    started = hook(orch, "SessionStart", source="startup")
    assert "waiting since before it started" in started  # its context holds the backlog...
    assert pane.lines() == [WAKE_LINE]  # ...and a turn makes the model act on it
    assert agent_state(orch) == "waking"
    assert "waiting since" not in hook(orch, "UserPromptSubmit", prompt=WAKE_LINE)  # once


def test_push_types_the_body_literally_once_and_runs_nothing(
    tmux: TmuxServer, orch: OrchState, tmp_path: Path
) -> None:
    pane = Pane(tmux, orch)
    victim = tmp_path / "victim"
    victim.mkdir()
    canary = tmp_path / "canary"
    body = (
        f"echo \"$HOME\" '$USER' `touch {canary}` $(touch {canary}) 🚀;"
        f" rm -rf {victim} && echo 'it ran'"
    )
    done = orch.cli("send", AGENT, body, "--push", "--json")
    assert done.returncode == 0, done.stderr
    assert pane.lines() == [body]
    assert victim.is_dir()
    assert not canary.exists()
    queue = Queue(orch.store)
    (message,) = queue.messages(AGENT)
    assert (message["state"], message["body"], message["attempts"]) == ("delivered", body, 1)
    record = queue.get(message["id"])
    assert record is not None
    assert [e["state"] for e in record["events"]] == ["queued", "delivered"]
    assert record["events"][-1]["detail"] == "typed into the pane (--push)"
    # no hook hands it out again
    for event in ("SessionStart", "UserPromptSubmit", "PostToolUse", "Stop"):
        assert body not in hook(orch, event), event
    assert queue.get(message["id"])["state"] == "delivered"  # type: ignore[index]


def test_push_to_a_pane_that_is_gone_is_an_error_and_keeps_the_message(
    tmux: TmuxServer, orch: OrchState
) -> None:
    pane = Pane(tmux, orch)
    tmux.kill_pane(pane.pane)
    done = orch.cli("send", AGENT, "hello", "--push")
    assert done.returncode == 1
    queue = Queue(orch.store)
    (message,) = queue.messages(AGENT)
    assert done.stderr == (
        f"Error: {AGENT}'s tmux pane {pane.pane} is gone (or, after tmux restarted, another "
        f"program's); the message {message['id']} stays queued\n"
    )
    assert (message["state"], message["attempts"]) == ("queued", 0)
    assert "hello" in hook(orch, "PostToolUse")  # still delivered, through the hook


#: A recorder that first draws the screen it is given, as Claude Code would.
_SCREEN = """
import sys
sys.stdout.write(sys.argv[2])
sys.stdout.flush()
with open(sys.argv[1], "ab", buffering=0) as out:
    out.write(b"ready\\n")
    for line in iter(sys.stdin.buffer.readline, b""):
        out.write(line)
"""
_RULE = "\x1b[38;5;244m" + "\u2500" * 60 + "\x1b[39m"
#: Claude Code 2.1's screens, as ``capture-pane -e`` gives them: an earlier prompt, then the
#: input box between two rules (dim: a placeholder; reverse video: its cursor)
_BOXES = {
    "empty": ("\u276f\xa0\x1b[7m \x1b[0m", ""),
    "placeholder": ('\u276f\xa0\x1b[2mTry "fix lint errors"\x1b[0m', ""),
    "placeholder, its cursor on it": ('\u276f\xa0\x1b[7mT\x1b[0m\x1b[2mry "fix lint"\x1b[0m', ""),
    "a draft": ("\u276f\xa0please also look at\x1b[7m \x1b[0m", "please also look at"),
    "a draft, its cursor at the start": ("\u276f\xa0\x1b[7mp\x1b[0mlease", "please"),
    "two lines": ("\u276f\xa0first\r\n  second\x1b[7m \x1b[0m", "first\nsecond"),
    "shell mode": ("!\xa0\x1b[7m \x1b[0m", "!"),
    "the wake line": (f"\u276f\xa0{WAKE_LINE}\x1b[7m \x1b[0m", WAKE_LINE),
}


class ClaudeScreen(Recorder):
    """A recorder known to orch as AGENT's session pane, showing Claude Code's input box with
    ``box`` in it (no box: ``None``)."""

    def __init__(self, tmux: TmuxServer, orch: OrchState, box: str | None) -> None:
        self.server, self.log = tmux, orch.root / "typed.bin"
        screen = "\u276f Say hello.\r\n\r\n\u25cf hello\r\n\r\n"
        screen += "$ " if box is None else f"{_RULE}\r\n{box}\r\n{_RULE}\r\n  auto mode on"
        argv = [sys.executable, "-c", _SCREEN, str(self.log), screen]
        self.pane = tmux.new_window("agent", argv, cwd=orch.project_dir)
        self.socket = tmux.cmd("display-message", "-p", "#{socket_path}").strip()
        wait_until(lambda: self.log.exists() and self.log.read_bytes() == b"ready\n", 15,
                   "the screen")  # fmt: skip
        wait_until(lambda: (box or "$")[:1] in tmux.capture(self.pane), 15, "the box")
        orch.store.remember_session(SESSION, AGENT, self.pane, self.socket)


@pytest.mark.parametrize("box", [*_BOXES, None])
def test_the_text_in_claudes_input_box_is_read_from_the_screen(
    tmux: TmuxServer, orch: OrchState, box: str | None
) -> None:
    from orch_core.supervisor.tmux import input_box

    pane = ClaudeScreen(tmux, orch, None if box is None else _BOXES[box][0])
    assert input_box(pane.pane, pane.socket) == (None if box is None else _BOXES[box][1])


def test_an_agent_whose_person_is_typing_gets_no_wake_line_and_no_enter(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """The line would be sent joined to the person's unsent text, and the supervisor's Enter
    would send their text unfinished: nothing is typed until the box is empty, or their own
    prompt takes the messages along."""
    from orch_core.supervisor import lifecycle

    pane = ClaudeScreen(tmux, orch, _BOXES["a draft"][0])
    assert hook(orch, "Stop") == ""
    assert orch.cli("send", AGENT, "deploy at noon").returncode == 0
    supervisor = lifecycle.Supervisor(orch.env)
    supervisor.upkeep(time.time() + 3)  # past nudge_seconds: an Enter once more
    with orch.store.transaction() as db:  # past rewake_seconds: the line again
        db.execute("UPDATE agents SET state_changed = ?", (time.time() - 31,))
    supervisor.upkeep(time.time())  # an Enter for that wake-up, then the line again
    supervisor.upkeep(time.time())
    assert pane.lines() == []
    assert "deploy at noon" in hook(orch, "UserPromptSubmit", prompt="please also look at")


@pytest.mark.parametrize("box", ["empty", "placeholder, its cursor on it"])
def test_an_agent_whose_input_box_is_empty_is_woken(
    tmux: TmuxServer, orch: OrchState, box: str
) -> None:
    pane = ClaudeScreen(tmux, orch, _BOXES[box][0])
    assert hook(orch, "Stop") == ""
    assert orch.cli("send", AGENT, "deploy at noon").returncode == 0
    assert pane.lines() == [WAKE_LINE]


def test_push_into_an_input_box_where_a_person_is_typing_is_an_error_and_keeps_the_message(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """Pasted and entered, the message would be sent joined to the person's unsent text."""
    pane = ClaudeScreen(tmux, orch, _BOXES["a draft"][0])
    done = orch.cli("send", AGENT, "deploy at noon", "--push")
    assert done.returncode == 1
    queue = Queue(orch.store)
    (message,) = queue.messages(AGENT)
    assert done.stderr == (
        f"Error: a person is typing in {AGENT}'s tmux pane {pane.pane}; the message "
        f"{message['id']} stays queued\n"
    )
    assert (message["state"], message["attempts"]) == ("queued", 0)
    assert pane.lines() == []
    assert "deploy at noon" in hook(orch, "UserPromptSubmit", prompt="please also look at")


def test_a_wake_line_left_in_the_input_box_gets_its_enter_not_a_second_line(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """A program still starting took the line but not its Enter: the wake-up, again, sends
    that line rather than add another to it."""
    pane = ClaudeScreen(tmux, orch, _BOXES["the wake line"][0])
    assert hook(orch, "Stop") == ""
    assert orch.cli("send", AGENT, "deploy at noon").returncode == 0
    assert pane.lines() == [""]


def typed_after_copy_mode(tmux: TmuxServer, pane: Pane) -> list[str]:
    """The lines ``pane`` read, once the test takes it out of copy mode (if orch did not)."""
    tmux.cmd("copy-mode", "-q", "-t", pane.pane)
    return pane.lines()


def test_an_agent_whose_pane_a_user_left_in_copy_mode_is_woken_all_the_same(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """A user reading back through the agent's pane leaves it in copy mode, where keys are
    copy-mode commands: the wake line and its Enter would never reach the program."""
    pane = Pane(tmux, orch)
    assert hook(orch, "Stop") == ""
    tmux.cmd("copy-mode", "-t", pane.pane)
    assert orch.cli("send", AGENT, "hello").returncode == 0
    assert typed_after_copy_mode(tmux, pane) == [WAKE_LINE]


def test_push_into_a_pane_left_in_copy_mode_submits_the_text(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """tmux pastes into a pane in copy mode, but the Enter after it is a copy-mode command: the
    text, marked delivered, would wait in the program's input unsent."""
    pane = Pane(tmux, orch)
    tmux.cmd("copy-mode", "-t", pane.pane)
    done = orch.cli("send", AGENT, "hello there", "--push")
    assert done.returncode == 0, done.stderr
    assert typed_after_copy_mode(tmux, pane) == ["hello there"]


def test_push_to_an_agent_without_hooks_types_only_into_the_window_so_named(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """An agent orch has not heard from is the window ``session:index`` of that name: as a
    tmux target, ``orch:0`` is also window 0 of a session whose name only starts with
    ``orch``, where the body, typed with its Enter, may be a shell's next command."""
    pane = Recorder(tmux, orch.root / "typed.bin")  # window 0 of session orch-test
    orch.env["TMUX"] = f"{pane.socket},0,0"  # run from that server, as tmux's default
    done = orch.cli("send", "orch:0", "rm -rf ~", "--push")
    (message,) = Queue(orch.store).messages("orch:0")
    assert (done.returncode, done.stderr) == (1, f"Error: no tmux window orch:0 (SESSION:INDEX) "
                                              f"to type into; the message {message['id']} "
                                              "stays queued\n")  # fmt: skip
    assert message["state"] == "queued"
    done = orch.cli("send", "orch-test:0", "for the window so named", "--push")
    assert done.returncode == 0, done.stderr
    assert pane.lines() == ["for the window so named"]


def test_a_pane_of_a_new_tmux_server_with_the_agents_old_pane_id_gets_no_wake_line(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """tmux numbers panes from %0 again on a new server: after tmux restarts, the id the
    agent's hooks reported names someone else's pane (a shell, an editor), which is not typed
    into."""
    pane = Pane(tmux, orch)
    assert hook(orch, "Stop") == ""
    assert agent_state(orch) == "idle"
    tmux.cmd("kill-server")
    time.sleep(int(time.time()) + 1 - time.time())  # tmux gives its start in whole seconds
    users = Recorder(tmux, orch.root / "users.bin", name="users")
    assert users.pane == pane.pane
    assert orch.cli("send", AGENT, "hello").returncode == 0
    assert users.lines() == []


def test_push_types_nothing_into_a_new_tmux_servers_pane_with_the_agents_old_id(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """As with wake-ups: the id the agent's hooks reported names someone else's pane after
    tmux restarts. ``--push`` refuses, and the message waits for the agent's next hook."""
    pane = Pane(tmux, orch)
    assert hook(orch, "Stop") == ""
    tmux.cmd("kill-server")
    time.sleep(int(time.time()) + 1 - time.time())  # tmux gives its start in whole seconds
    users = Recorder(tmux, orch.root / "users.bin", name="users")
    assert users.pane == pane.pane
    done = orch.cli("send", AGENT, "hello", "--push")
    (message,) = Queue(orch.store).messages(AGENT)
    assert (done.returncode, message["state"], message["attempts"]) == (1, "queued", 0)
    assert done.stderr.startswith(f"Error: {AGENT}'s tmux pane {pane.pane} is gone (or, after")
    assert users.lines() == []


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_an_agent_left_starting_is_woken_by_the_supervisor(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """Its SessionStart went by without presence (out of budget at a fleet's start): the
    supervisor takes an agent still `starting` after the grace period for idle (on
    PostgreSQL too, where that move once failed the idle plugin's tick: ``IN ()``)."""
    from orch_core import paths
    from orch_core.supervisor import lifecycle

    pane = Pane(tmux, orch)
    store = orch.store
    host = paths.host(orch.env)  # on a shared store, the supervisor looks after its host's
    store.remember_session(SESSION, AGENT, pane.pane, pane.socket, host=host)
    store.set_agent_state(AGENT, "starting", session_id=SESSION, project_dir=None, host=host)
    assert orch.cli("send", AGENT, "for an agent that never said it was ready").returncode == 0
    supervisor = lifecycle.Supervisor(orch.env)
    supervisor.upkeep(time.time())
    assert pane.lines() == []  # within the grace period: it may still be starting
    with store.transaction() as db:
        db.execute("UPDATE agents SET state_changed = ?", (time.time() - 31,))
    supervisor.upkeep(time.time())
    assert pane.lines() == [WAKE_LINE]
    assert agent_state(orch) == "waking"


TICK_OBSERVER = """
import json, os
from orch_core import Setting, hookimpl

@hookimpl
def orch_config_defaults():
    return {"label": Setting("default")}

@hookimpl
def orch_supervisor_tick(now, agents, ctx):
    with open(ctx.env["TICKS_LOG"], "a") as log:
        log.write(json.dumps([ctx.project_dir, agents, ctx.config["label"]]) + "\\n")
"""


def idle_in_two_projects(
    tmux: TmuxServer, orch: OrchState, tmp_path: Path, other_config: str
) -> tuple[Path, dict[str, Recorder]]:
    """Agent ``a:1`` idle in the test's project and ``b:1`` in another, configured with
    ``other_config``, each in a pane that records what is typed into it."""
    other = tmp_path / "other"
    (other / ".claude").mkdir(parents=True)
    (other / ".claude" / "orch.toml").write_text(other_config)
    panes = {}
    for agent, project in (("a:1", orch.project_dir), ("b:1", other)):
        panes[agent] = Recorder(tmux, tmp_path / f"{agent[0]}.typed", name=agent[0], cwd=project)
        orch.store.remember_session(f"s-{agent}", agent, panes[agent].pane, panes[agent].socket)
        orch.run_hook(payload("Stop", session_id=f"s-{agent}"), ORCH_AGENT=agent,
                      CLAUDE_PROJECT_DIR=str(project))  # fmt: skip
    return other, panes


def test_hook_orch_supervisor_tick_runs_per_project_with_its_own_plugins_and_settings(
    tmux: TmuxServer, orch: OrchState, tmp_path: Path, orch_module: Callable[[str, str], Path]
) -> None:
    """Two projects: the second labels the tick its own way and switches the idle plugin off,
    so the supervisor wakes the first project's agent and leaves the second's alone."""
    from orch_core.supervisor import lifecycle

    orch_module("tick_observer", TICK_OBSERVER)  # the supervisor runs in this process here
    orch.env["TICKS_LOG"] = str(tmp_path / "ticks.log")
    orch.write_config('[plugins]\nload = ["tick_observer"]\n', user=True)
    other, panes = idle_in_two_projects(
        tmux,
        orch,
        tmp_path,
        '[plugins]\ndisable = ["idle"]\n[plugin.tick_observer]\nlabel = "other"\n',
    )
    for agent in panes:
        Queue(orch.store).send(agent, "due now", not_before=time.time() - 1)
    lifecycle.Supervisor(orch.env).upkeep(time.time())
    ticks = [json.loads(line) for line in (tmp_path / "ticks.log").read_text().splitlines()]
    assert sorted(ticks) == sorted([[str(orch.project_dir), ["a:1"], "default"],
                                    [str(other), ["b:1"], "other"]])  # fmt: skip
    for agent, woken in (("a:1", True), ("b:1", False)):
        assert panes[agent].lines() == ([WAKE_LINE] if woken else []), agent


def test_a_send_wakes_an_agent_as_its_own_project_says_not_the_senders(
    tmux: TmuxServer, orch: OrchState, tmp_path: Path
) -> None:
    """The idle plugin switched off in a project stops its wake-ups for that project's agents
    whoever sends: a lead working in another project (where it is on) types nothing into
    their panes; and switched off where the sender works, it still wakes an agent of a
    project that has it on."""
    other, panes = idle_in_two_projects(tmux, orch, tmp_path, '[plugins]\ndisable = ["idle"]\n')
    done = orch.cli("send", "b:1", "from the lead's project")  # run in orch.project_dir
    assert done.returncode == 0, done.stderr
    orch.env["CLAUDE_PROJECT_DIR"] = str(other)  # a sender in the project with idle off
    done = orch.cli("send", "a:1", "from the other project")
    assert done.returncode == 0, done.stderr
    assert panes["b:1"].lines() == []
    assert panes["a:1"].lines() == [WAKE_LINE]


def test_a_message_held_back_by_after_wakes_nobody_until_it_can_be_delivered(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """A wake-up for a message ``--after`` another not yet delivered brings a prompt with
    nothing in it, and the agent, idle again, would be woken at each tick after: a turn of the
    model each time, for as long as the other message waits."""
    from orch_core.supervisor import lifecycle

    pane = Pane(tmux, orch)
    assert hook(orch, "Stop") == ""
    queue = Queue(orch.store)
    first = queue.send("other:1", "for a busy agent")
    done = orch.cli("send", AGENT, "after the first", "--after", first["id"])
    assert done.returncode == 0, done.stderr
    supervisor = lifecycle.Supervisor(orch.env)
    for _ in range(3):
        supervisor.upkeep(time.time())
    assert pane.lines() == []
    assert agent_state(orch) == "idle"
    assert queue.claim("other:1", "sess-other") != []  # the first is delivered: now it is due
    supervisor.upkeep(time.time())
    supervisor.upkeep(time.time())
    assert pane.lines() == [WAKE_LINE]
    assert "after the first" in hook(orch, "UserPromptSubmit", prompt=WAKE_LINE)


def test_the_end_of_an_agents_older_session_leaves_its_newer_one_to_be_woken(
    tmux: TmuxServer, orch: OrchState
) -> None:
    """Two Claude sessions may answer as one agent: tmux renumbered its windows and a Claude
    started since in the window that now has the old one's number takes its name (or one was
    restarted in place, and the old one's SessionEnd came late). The older one ending said
    the agent was offline, while the newer one waited at its prompt: no wake-up reached it."""
    old = Recorder(tmux, orch.root / "old.bin", name="old")
    orch.store.remember_session("sess-old", AGENT, old.pane, old.socket)
    orch.run_hook(payload("SessionStart", session_id="sess-old", source="startup"),
                  ORCH_AGENT=AGENT, TMUX_PANE=old.pane)  # fmt: skip
    new = Pane(tmux, orch)  # SESSION, the newer one, in its own pane
    orch.run_hook(payload("SessionStart", session_id=SESSION, source="startup"),
                  ORCH_AGENT=AGENT, TMUX_PANE=new.pane)  # fmt: skip
    assert agent_state(orch) == "idle"
    orch.run_hook(payload("SessionEnd", session_id="sess-old", reason="prompt_input_exit"),
                  ORCH_AGENT=AGENT, TMUX_PANE=old.pane)  # fmt: skip
    assert agent_state(orch) == "idle"
    assert orch.cli("send", AGENT, "for the agent still running").returncode == 0
    assert new.lines() == [WAKE_LINE]
    assert old.lines() == []
    # its own session's end still takes it offline
    hook(orch, "SessionEnd", reason="prompt_input_exit")
    assert agent_state(orch) == "offline"
