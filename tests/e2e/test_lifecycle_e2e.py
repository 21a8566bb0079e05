"""Agent lifecycle end to end: real Claude Code spawned by ``orch spawn`` in tmux, failures
made by the stand-in model or by SIGKILL, recovered by the real ``orch supervise``.

Assertions are on the requests the stand-in received and on orch's recovery history.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from orch_builtin import auto_restart
from orch_builtin.idle import WAKE_LINE

from orch_core.queue import MARK
from orch_core.storage.store import SQLiteStore
from orch_core.supervisor import lifecycle, tmux
from orch_core.testing.claude import PROMPT_MARK, ClaudeSession
from orch_core.testing.kit import orch_script
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer

pytestmark = pytest.mark.claude

REPROMPT = auto_restart.DEFAULTS["reprompt_line"]


class Fleet:
    """One agent started with ``orch spawn``, and the means to poke at it."""

    def __init__(self, root: Path, project: Path, standin: StandInAPI, server: TmuxServer) -> None:
        self.root, self.project, self.standin = root, project, standin
        self.socket = str(root / "tmux.sock")
        # the harness prepares HOME and the environment Claude needs; orch spawn starts it
        self.claude = ClaudeSession(project, standin, server, home=root / "home")
        self.claude._write_home()
        self.env = {
            **os.environ,
            "ORCH_STATE_DIR": str(root / "state"),
            "ORCH_DB": str(root / "state" / "orch.db"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "ORCH_TMUX_SOCKET": self.socket,
            "ORCH_SUPERVISE_FOR": "120",
        }
        (project / ".claude").mkdir(exist_ok=True)
        (project / ".claude" / "orch.toml").write_text(
            "[plugin.auto_restart]\nbackoff_base = 0.5\nbackoff_cap = 1\njitter = 0\n"
            "verify_seconds = 30\n"
        )
        self.store = SQLiteStore(self.env["ORCH_DB"])

    def orch(self, *args: str) -> str:
        done = subprocess.run([orch_script(), *args], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def spawn(self, brief: str | None = None, name: str = "pay") -> None:
        pairs = [f"--env={k}={v}" for k, v in self.claude.environment().items()]
        command = f"{self.claude.binary} --allowedTools Bash"
        briefing: list[str] = []
        if brief is not None:
            (self.root / "brief.md").write_text(brief)
            briefing = ["--brief", str(self.root / "brief.md")]
        self.orch("spawn", name, "--dir", str(self.project), "--command", command, *briefing,
                  *pairs)  # fmt: skip
        self.wait(lambda: self.ready(name), "Claude's prompt")

    @property
    def pane(self) -> str:
        return self.pane_of("pay")

    def pane_of(self, name: str) -> str:
        spec = lifecycle.get_spec(self.store, name)
        assert spec is not None and spec["pane"]
        return str(spec["pane"])

    def screen(self, name: str = "pay") -> str:
        return tmux.tmux(self.socket, "capture-pane", "-p", "-t", self.pane_of(name))

    def ready(self, name: str = "pay") -> bool:
        return any(line.strip() == PROMPT_MARK for line in self.screen(name).splitlines())

    def prompt(self, text: str, name: str = "pay") -> None:
        self.wait(lambda: self.ready(name), "Claude's prompt")
        assert tmux.type_line(self.pane_of(name), self.socket, text, self.env["ORCH_STATE_DIR"])

    def kill(self) -> None:
        pid = tmux.tmux(self.socket, "display-message", "-p", "-t", self.pane, "#{pane_pid}")
        os.kill(int(pid), signal.SIGKILL)

    def requests(self) -> list[str]:
        return [r.text() for r in self.standin.requests_to_main_model()]

    def starts(self) -> int:
        return self.runs("SessionStart")

    def runs(self, event: str) -> int:
        return [r["event"] for r in self.store.runs(500)].count(event)

    def transcripts(self) -> list[Path]:
        return list((self.root / "home" / ".claude" / "projects").glob("*/*.jsonl"))

    def transcript_written(self) -> bool:
        """Claude wrote the turn's answer to its transcript (asynchronously, after Stop)."""
        files = (self.root / "home" / ".claude" / "projects").glob("*/*.jsonl")
        return any("On it." in f.read_text() or "Working on it." in f.read_text() for f in files)

    def steps(self) -> list[tuple[str, str]]:
        return [(h["step"], h["state"]) for h in reversed(lifecycle.history(self.store, "pay"))]

    def state(self) -> str:
        return str(next(a["state"] for a in self.store.agents() if a["id"] == "pay"))

    @staticmethod
    def wait(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.1)


@pytest.fixture
def fleet(tmp_path: Path, project: Path, standin: StandInAPI, tmux_server: TmuxServer
          ) -> Iterator[Fleet]:  # fmt: skip
    fleet = Fleet(tmp_path, project, standin, tmux_server)
    yield fleet
    pid = lifecycle.supervisor_running(fleet.env)
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)
    subprocess.run(["tmux", "-S", fleet.socket, "kill-server"], capture_output=True, check=False)


def test_an_overloaded_model_is_reprompted_and_the_agent_carries_on(fleet: Fleet) -> None:
    fleet.standin.reply_error(529, "overloaded_error")
    fleet.standin.reply_text("Back at work.")
    fleet.spawn()
    fleet.prompt("Ship the release notes.")
    fleet.wait(lambda: len(fleet.requests()) >= 2, "the request after the re-prompt")
    assert fleet.requests()[1].count(REPROMPT) == 1
    fleet.wait(lambda: fleet.steps() == [("reprompt", "done")], "a verified re-prompt")
    assert fleet.starts() == 1  # re-prompted, not restarted


def test_a_killed_claude_comes_back_in_its_window_with_the_restart_rebrief(fleet: Fleet) -> None:
    fleet.standin.reply_text("Working on it.")
    fleet.spawn()
    pane = fleet.pane
    fleet.prompt("Start the migration.")
    fleet.wait(fleet.transcript_written, "the transcript of the first turn")
    fleet.kill()
    fleet.wait(lambda: fleet.starts() == 2, "SessionStart after the restart")
    fleet.wait(lambda: fleet.steps() == [("restart", "done")], "a verified restart")
    assert fleet.pane == pane
    fleet.standin.reply_text("Resuming.")
    fleet.prompt("Go on.")
    fleet.wait(lambda: len(fleet.requests()) == 2, "the request after the restart")
    after = fleet.requests()[1]
    assert after.count("[orch rebrief: context restored after a restart]") == 1
    # --continue kept the conversation: the prompt is there once as the user's own message
    # (the rebrief's recent activity quotes it too, so its text alone proves nothing)
    assert fleet.standin.requests_to_main_model()[1].texts().count("Start the migration.") == 1


def test_a_restart_takes_up_the_agents_own_conversation_not_the_newest_in_its_folder(
    fleet: Fleet,
) -> None:
    """Two agents in one project: ``orch restart`` of the first takes up its own conversation.
    ``claude --continue`` takes up the folder's newest, the other agent's: the restarted agent
    would go on with that agent's work, its own lost."""
    fleet.standin.reply_text("Paying.")
    fleet.spawn()
    fleet.prompt("Pay the March invoices.")
    fleet.wait(lambda: len(fleet.requests()) == 1, "pay's first request")
    fleet.wait(lambda: fleet.runs("Stop") == 1, "the Stop of pay's turn")
    fleet.wait(lambda: any("Paying." in f.read_text() for f in fleet.transcripts()),
               "pay's turn in its transcript")  # fmt: skip
    fleet.standin.reply_text("Rotating.")
    fleet.spawn(name="ops")
    fleet.prompt("Rotate the server logs.", name="ops")
    fleet.wait(lambda: len(fleet.requests()) == 2, "ops's first request")
    fleet.wait(lambda: fleet.runs("Stop") == 2, "the Stop of ops's turn")
    fleet.wait(lambda: sum("Rotating." in f.read_text() for f in fleet.transcripts()) == 1,
               "ops's turn in its transcript")  # fmt: skip
    fleet.kill()
    fleet.wait(lambda: fleet.steps() == [("restart", "done")], "pay's verified restart")
    fleet.standin.reply_text("Still paying.")
    fleet.prompt("Go on.")
    fleet.wait(lambda: len(fleet.requests()) == 3, "pay's request after the restart")
    after = fleet.standin.requests_to_main_model()[2].texts()
    assert after.count("Pay the March invoices.") == 1
    assert "Rotate the server logs." not in "\n".join(after)


def test_an_agent_spawned_again_gets_its_new_briefing_at_its_first_start(fleet: Fleet) -> None:
    """``orch stop`` then ``orch spawn`` of the same name with a new briefing: the new agent's
    first request holds that briefing, once, as a new session's (the earlier agent of that
    name had been given its own: the new one was taken for briefed already, and got none)."""
    fleet.spawn(brief="You are the release engineer; ship version 2.4.")
    fleet.standin.reply_text("Working on it.")
    fleet.prompt("Start the release.")
    fleet.wait(fleet.transcript_written, "the transcript of the first turn")
    assert fleet.requests()[0].count("You are the release engineer") == 1
    fleet.orch("stop", "pay")
    fleet.wait(lambda: fleet.state() == "stopped", "the agent stopped")
    fleet.spawn(brief="You are the docs writer; write the FAQ.")
    fleet.standin.reply_text("On the FAQ.")
    fleet.prompt("Begin.")
    fleet.wait(lambda: len(fleet.requests()) == 2, "the new agent's first request")
    first = fleet.requests()[1]
    assert first.count("[orch briefing: a new session]") == 1
    assert first.count("You are the docs writer; write the FAQ.") == 1
    assert "[orch rebrief" not in first and "You are the release engineer" not in first


def test_four_crashes_in_an_hour_make_three_restarts_then_failed(fleet: Fleet) -> None:
    fleet.standin.reply_text("On it.")
    fleet.spawn()
    fleet.prompt("Watch the queue.")  # a conversation, so that --continue has one to continue
    fleet.wait(fleet.transcript_written, "the transcript of the first turn")
    for n in (2, 3, 4):
        fleet.kill()
        fleet.wait(lambda n=n: fleet.starts() == n, f"SessionStart {n}")  # type: ignore[misc]
        fleet.wait(lambda: fleet.steps()[-1][1] == "done", "verification")
        fleet.wait(fleet.ready, "Claude's prompt")
    fleet.kill()
    fleet.wait(lambda: fleet.state() == "failed", "the agent marked failed")
    assert fleet.steps() == [("restart", "done")] * 3 + [("give_up", "done")]
    assert fleet.starts() == 4


def test_an_authentication_error_is_not_restarted(fleet: Fleet) -> None:
    fleet.standin.reply_error(401, "authentication_error")
    fleet.spawn()
    fleet.prompt("Deploy.")
    fleet.wait(lambda: fleet.state() == "failed", "the agent marked failed")
    assert fleet.steps() == [("give_up", "done")]
    with fleet.store.transaction() as db:
        (alert,) = db.execute("SELECT kind, message FROM alerts").fetchall()
    assert alert[0] == "failed" and "StopFailure authentication_failed" in alert[1]
    assert fleet.starts() == 1


def test_a_spawned_agent_waiting_at_its_first_prompt_is_woken_and_fed(fleet: Fleet) -> None:
    fleet.standin.reply_text("On the release.")
    fleet.spawn()  # nobody types anything
    fleet.wait(lambda: fleet.state() == "idle", "the agent idle at its first prompt")
    receipt = json.loads(fleet.orch("send", "pay", "Cut the release branch.", "--json"))
    fleet.wait(lambda: len(fleet.requests()) >= 1, "the woken agent's request")
    (request,) = fleet.requests()
    assert request.count(f"{MARK}{receipt['id']} ") == 1
    assert request.count("Cut the release branch.") == 1
    assert request.count(WAKE_LINE) == 1


def test_a_stopped_claude_stays_stopped(fleet: Fleet) -> None:
    """Claude Code ends its session when `orch stop` kills its pane: that SessionEnd must not
    make the agent ``offline``, which the supervisor would take for a crash and restart."""
    fleet.standin.reply_text("On it.")
    fleet.spawn()
    fleet.prompt("Watch the queue.")
    fleet.wait(fleet.transcript_written, "the transcript of the first turn")
    fleet.orch("stop", "pay")
    fleet.wait(lambda: "SessionEnd" in [r["event"] for r in fleet.store.runs(50)],
               "the SessionEnd of the killed session")  # fmt: skip
    time.sleep(4)  # the supervisor watches panes every 2 s, and restarts after 0.5-1 s
    assert (fleet.state(), fleet.steps(), fleet.starts()) == ("stopped", [], 1)


def test_an_agent_its_person_stopped_with_esc_waits_for_them_and_gets_its_messages_once(
    fleet: Fleet,
) -> None:
    """Esc during a tool call: Claude Code asks what to do instead and fires no hook at all
    (no PostToolUseFailure, no Stop, no idle notification within a minute, as tried on this
    binary). The supervisor reads the interrupt from the transcript: ``needs_input``, so a
    message sent meanwhile is not typed into the question, and goes with the person's answer,
    once."""
    fleet.standin.reply_tool_use(
        "Bash", {"command": "python3 -c 'import time; time.sleep(60)'", "description": "Wait"}
    )
    fleet.standin.reply_text("On it.")
    fleet.spawn()
    fleet.prompt("Run the long job.")
    fleet.wait(lambda: "PreToolUse" in [r["event"] for r in fleet.store.runs(50)], "the call")
    time.sleep(1)  # running
    tmux.tmux(fleet.socket, "send-keys", "-t", fleet.pane, "Escape")
    fleet.wait(lambda: fleet.state() == "needs_input", "the interrupt seen", timeout=30)
    events = [r["event"] for r in fleet.store.runs(50)]
    assert "Stop" not in events and "PostToolUseFailure" not in events

    receipt = json.loads(fleet.orch("send", "pay", "Ship the hotfix.", "--json"))
    time.sleep(3)  # the supervisor ticks twice a second: it would have woken an idle agent
    assert fleet.state() == "needs_input"
    assert len(fleet.requests()) == 1
    assert WAKE_LINE not in fleet.screen()

    fleet.prompt("Skip the job.")
    fleet.wait(lambda: len(fleet.requests()) >= 2, "the answer's request")
    time.sleep(1)
    requests = fleet.requests()
    assert len(requests) == 2
    assert requests[1].count(f"{MARK}{receipt['id']} ") == 1
    assert requests[1].count("Ship the hotfix.") == 1
    assert fleet.steps() == []  # never taken for hung, never restarted


def test_restarts_with_continue_give_the_briefing_once_and_again_after_compaction(
    fleet: Fleet,
) -> None:
    """Each restart orch makes takes the conversation up with ``--continue``, and Claude Code
    gives the model the texts hooks put in it again: the briefing given at the first start,
    then the rebrief after a compaction, are each the one copy of the briefing the model
    has; a restart adds none."""
    brief = "You are the release engineer; ship version 2.4."
    fleet.spawn(brief=brief)

    def turn(n: int, prompt: str) -> str:
        fleet.standin.reply_text(f"Working on it {n}.")
        fleet.prompt(prompt)
        fleet.wait(lambda: len(fleet.requests()) == n, f"request {n}")
        fleet.wait(lambda: fleet.runs("Stop") == n, f"the Stop of turn {n}")
        return fleet.requests()[n - 1]

    def restart(n: int, written: str) -> None:
        # Claude Code writes its transcript after the hooks: what the restart takes up
        fleet.wait(lambda: any(written in f.read_text() for f in fleet.transcripts()),
                   f"{written} in the transcript")  # fmt: skip
        fleet.kill()
        fleet.wait(lambda: fleet.steps() == [("restart", "done")] * (n - 1), f"restart {n - 1}")

    assert turn(1, "Start.").count(brief) == 1
    restart(2, "Working on it 1.")
    second = turn(2, "Go on.")
    assert (second.count(brief), second.count("[orch rebrief")) == (1, 0)
    fleet.prompt("/compact")
    fleet.wait(lambda: fleet.runs("SessionStart") == 3, "SessionStart after /compact")
    restart(3, "[orch rebrief: context restored after compaction]")
    third = turn(3, "Again.")
    assert third.count("[orch rebrief: context restored after compaction]") == 1
    assert third.count(brief) == 1
    assert "[orch rebrief: context restored after a restart]" not in third
