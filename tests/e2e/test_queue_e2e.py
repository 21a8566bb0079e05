"""The message queue end to end: real Claude Code in tmux, hooks from ``orch install``, messages
sent with the real ``orch send``.

What is asserted is what reached the model (the request bodies the stand-in API received) and
what ``orch queue --json`` reports afterwards. Findings pinned here (Claude Code 2.1.328):

- PostToolUse and UserPromptSubmit ``additionalContext`` arrive as a ``system`` message right
  after the tool result or the prompt: ``PostToolUse:Bash hook additional context: TEXT``,
  ``UserPromptSubmit hook additional context: TEXT``.
- Claude writes its transcript lazily: at the Stop hook that ends a turn, that turn's hook
  contexts are not in the file yet. A delivery is confirmed by the first hook after the write,
  so each test ends with one more prompt (as an agent's next turn would) and checks every message
  is then ``confirmed``, delivered once.
- In auto mode (the default), a Bash command beyond a simple one in the project (``sleep 2``,
  ``cat FILE``) waits for a server-side safety check the stand-in does not serve, and the turn
  stops: the busy agent's tool is ``cat`` of a FIFO in the project, which the test opens.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from orch_builtin.idle import WAKE_LINE

from orch_core.queue import MARK, PREVIEW, Queue
from orch_core.storage.store import SQLiteStore
from orch_core.supervisor.lifecycle import Supervisor
from orch_core.supervisor.tmux import input_box
from orch_core.testing.claude import ClaudeFactory, ClaudeSession, wait_until
from orch_core.testing.standin import RecordedRequest, StandInAPI
from orch_core.testing.tmux import TmuxServer

pytestmark = pytest.mark.claude

ORCH = os.path.join(os.path.dirname(sys.executable), "orch")
WAIT = 20.0  # seconds, for anything one turn of the stand-in model should bring


class OrchCLI:
    """The real ``orch`` command line, with the same state and config as the Claude session."""

    def __init__(self, env: dict[str, str], project: Path) -> None:
        self.env = env
        self.project = project

    def run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [ORCH, *args],
            input=stdin,
            env={**os.environ, **self.env},
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"orch {args[0]} failed: {done.stderr}"
        return done.stdout

    def send(self, agent: str, text: str, *options: str, stdin: bool = False) -> dict[str, Any]:
        """``orch send AGENT TEXT --json`` (TEXT on stdin with ``stdin``); the receipt."""
        if stdin:
            out = self.run("send", agent, "-", *options, "--json", stdin=text)
        else:
            out = self.run("send", agent, text, *options, "--json")
        receipt: dict[str, Any] = json.loads(out)
        assert receipt["state"] == "queued" and receipt["known_agent"] is True, receipt
        return receipt

    def queue(self) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = json.loads(self.run("queue", "--json"))
        return listing

    def show(self, message_id: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.run("queue", "show", message_id, "--json"))
        return record

    def agent_state(self, agent: str) -> str | None:
        for row in json.loads(self.run("agents", "--json")):
            if row["id"] == agent:
                return str(row["state"])
        return None

    def wait_for_state(self, agent: str, state: str) -> None:
        wait_until(lambda: self.agent_state(agent) == state, WAIT, f"{agent} {state}")


@pytest.fixture
def orch_env(project: Path, tmp_path: Path) -> dict[str, str]:
    """orch's state for the session and the CLI alike; hooks installed by ``orch install``."""
    env = {
        "ORCH_STATE_DIR": str(tmp_path / "state"),
        "ORCH_DB": str(tmp_path / "state" / "orch.db"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "ORCH_SUPERVISE_FOR": "60",  # a supervisor started here stops by itself
    }
    subprocess.run([ORCH, "install", str(project)], check=True, env={**os.environ, **env})
    return env


@pytest.fixture
def orch(orch_env: dict[str, str], project: Path) -> OrchCLI:
    return OrchCLI(orch_env, project)


class Gate:
    """A Bash tool call that reads a FIFO, so it runs until the test opens the gate: the agent
    is busy in a tool for as long as the test needs, however slow the machine."""

    def __init__(self, folder: Path, orch_env: dict[str, str]) -> None:
        self.path = folder / "gate"  # in the project: reading it needs no auto-mode check
        os.mkfifo(self.path)
        self.store = SQLiteStore(orch_env["ORCH_DB"])

    def script(self, standin: StandInAPI) -> str:
        """Script the tool call; returns its tool_use id."""
        command = f"cat {shlex.quote(self.path.name)}"
        return standin.reply_tool_use("Bash", {"command": command, "description": "Wait"})

    def wait_until_running(self) -> None:
        """PreToolUse has run: from now on, only PostToolUse can deliver (below emergency)."""
        wait_until(
            lambda: any(r["event"] == "PreToolUse" for r in self.store.runs(50)), WAIT, "PreToolUse"
        )

    def open(self) -> None:
        """Let the tool finish: write a line once ``cat`` has the FIFO open for reading."""
        fd: list[int] = []

        def reader_is_there() -> bool:
            try:
                fd.append(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader yet
                return False
            return True

        wait_until(reader_is_there, WAIT, "cat reading the gate")
        os.write(fd[0], b"gate open\n")
        os.close(fd[0])


def agent_of(session: ClaudeSession, tmux: TmuxServer) -> str:
    """The agent id orch gives the session: ``session:window`` of its pane."""
    assert session.pane is not None
    shown = tmux.cmd("display-message", "-p", "-t", session.pane, "#{session_name}:#{window_index}")
    return shown.strip()


def header(message_id: str, sender: str, band: str, priority: int) -> str:
    """A regex for the header orch puts before each delivered message (its age varies)."""
    return re.escape(f"{MARK}{message_id} from {sender} · {band} (priority {priority}) · ") + (
        r"queued \d+[smhd] ago\]"
    )


def system_texts_after(request: RecordedRequest, index: int) -> list[str]:
    """The texts of the ``system`` messages right after ``messages[index]``."""
    texts: list[str] = []
    for message in request.messages[index + 1 :]:
        if message.get("role") != "system":
            break
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [block["text"] for block in content or [] if "text" in block]
    return texts


def prompt_index(request: RecordedRequest, text: str) -> int:
    """The index of the (only) user message that is exactly ``text``, as typed."""
    found = [
        i
        for i, message in enumerate(request.messages)
        if message.get("role") == "user"
        and text in [*_strings(message.get("content"))]
        and not _has_tool_result(message)
    ]
    assert len(found) == 1, f"{text!r} typed {len(found)} times"
    return found[0]


def _strings(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]


def _has_tool_result(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def transcript(session: ClaudeSession) -> Path:
    (path,) = (session.home / ".claude" / "projects").glob(f"*/{session.session_id}.jsonl")
    return path


def confirm_with_next_turn(
    session: ClaudeSession, orch: OrchCLI, receipts: list[dict[str, Any]]
) -> RecordedRequest:
    """Once Claude has written the deliveries to its transcript, start one more turn: its hooks
    confirm them. Then each message is ``confirmed``, delivered once, and the model saw it once.
    Returns the last request."""
    ids = [r["id"] for r in receipts]
    wait_until(
        lambda: all(f"{MARK}{i} " in transcript(session).read_text() for i in ids),
        WAIT,
        "the deliveries in the transcript",
    )
    count = len(session.requests())
    session.prompt("Thanks, carry on.")
    last = session.wait_for_requests(count + 1, WAIT)[-1]

    def states() -> dict[str, str]:
        return {m["id"]: m["state"] for m in orch.queue() if m["id"] in ids}

    wait_until(lambda: set(states().values()) == {"confirmed"}, WAIT, "confirmed messages")
    for message_id in ids:
        record = orch.show(message_id)
        delivered = [e for e in record["events"] if e["state"] == "delivered"]
        assert len(delivered) == 1, record["events"]
        assert record["attempts"] == 1
        assert record["reason"] == "found in the transcript"
        assert last.text().count(f"{MARK}{message_id} ") == 1
    return last


def busy_agent(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux: TmuxServer,
    env: dict[str, str],
    project: Path,
) -> tuple[Gate, str, ClaudeSession, str]:
    """An agent inside a Bash call that lasts until the test opens the gate."""
    gate = Gate(project, env)
    tool_id = gate.script(standin)
    standin.reply_text("done")
    session = claude(env=env)
    agent = agent_of(session, tmux)
    session.prompt("Wait for the gate with Bash.")
    gate.wait_until_running()
    return gate, tool_id, session, agent


def test_a_message_to_a_busy_agent_arrives_at_its_next_tool_call(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
) -> None:
    gate, tool_id, session, agent = busy_agent(claude, standin, tmux_server, orch_env, project)
    assert orch.agent_state(agent) == "busy"

    body = 'Rebase on main before you push; "quoted" $HOME `id` — ok ✅'
    receipt = orch.send(agent, body, "--from", "lead")
    gate.open()
    first, second = session.wait_for_requests(2, WAIT)[:2]

    assert not any(body in text for text in first.texts())
    index = second.tool_result_index(tool_id)
    assert index is not None
    (context,) = system_texts_after(second, index)
    prefix = "PostToolUse:Bash hook additional context: "
    assert re.fullmatch(
        re.escape(prefix) + header(receipt["id"], "lead", "normal", 0) + "\n" + re.escape(body),
        context,
    ), context
    assert second.text().count(f"{MARK}{receipt['id']} ") == 1
    # Busy: the message waited for the hook; nothing was typed into the pane.
    assert WAKE_LINE not in second.text()

    orch.wait_for_state(agent, "idle")
    last = confirm_with_next_turn(session, orch, [receipt])
    assert WAKE_LINE not in last.text()


def test_a_message_to_an_idle_agent_wakes_it(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    standin.reply_text("hello")
    session = claude(env=orch_env)
    agent = agent_of(session, tmux_server)
    session.prompt("Say hello.")
    session.wait_for_requests(1)
    orch.wait_for_state(agent, "idle")

    body = "Check the CI run for `main` and report back to $USER."
    receipt = orch.send(agent, body, "--priority", "20", "--from", "ci")
    woken = session.wait_for_requests(2, WAIT)[1]

    index = prompt_index(woken, WAKE_LINE)
    assert index == len(woken.messages) - 2  # the wake line, then its context, last
    (context,) = system_texts_after(woken, index)
    assert re.fullmatch(
        re.escape("UserPromptSubmit hook additional context: ")
        + header(receipt["id"], "ci", "high", 20)
        + "\n"
        + re.escape(body),
        context,
    ), context
    orch.wait_for_state(agent, "idle")

    last = confirm_with_next_turn(session, orch, [receipt])
    prompt_index(last, WAKE_LINE)  # typed once: the batch woke the agent once


def test_an_agent_waiting_at_its_first_prompt_is_woken(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    standin.reply_text("on it")
    session = claude(env=orch_env)  # nobody types anything
    agent = agent_of(session, tmux_server)
    orch.wait_for_state(agent, "idle")
    receipt = orch.send(agent, "Review the open pull request.", "--from", "lead")
    (woken,) = session.wait_for_requests(1, WAIT)
    prompt_index(woken, WAKE_LINE)
    # the first request of a conversation folds the hook's context into Claude's own reminders
    (context,) = [t for t in woken.texts() if "Review the open pull request." in t]
    assert re.search(
        re.escape("UserPromptSubmit hook additional context: ")
        + header(receipt["id"], "lead", "normal", 0)
        + re.escape("\nReview the open pull request.\n"),
        context,
    ), context
    assert woken.text().count("Review the open pull request.") == 1
    orch.wait_for_state(agent, "idle")
    confirm_with_next_turn(session, orch, [receipt])


def test_an_agent_that_starts_with_messages_waiting_acts_on_them(
    claude: ClaudeFactory, standin: StandInAPI, orch: OrchCLI, orch_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [ORCH, "send", "lead-1", "Waiting since before you started.", "--json"],
        env={**os.environ, **orch_env}, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    receipt = json.loads(done.stdout)
    standin.reply_text("on it")
    session = claude(env={**orch_env, "ORCH_AGENT": "lead-1"})  # nobody types anything
    (woken,) = session.wait_for_requests(1, WAIT)
    assert woken.text().count(f"{MARK}{receipt['id']} ") == 1
    assert woken.text().count("Waiting since before you started.") == 1
    prompt_index(woken, WAKE_LINE)  # typed once
    orch.wait_for_state("lead-1", "idle")
    confirm_with_next_turn(session, orch, [receipt])


def test_a_message_delivered_at_stop_reaches_the_model_once(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    thinking = threading.Event()  # the model answers once the message is queued
    standin.reply_text("first answer", hold=thinking)
    standin.reply_text("on it")
    session = claude(env=orch_env)
    agent = agent_of(session, tmux_server)
    session.prompt("Answer briefly.")
    session.wait_for_requests(1)
    assert orch.agent_state(agent) == "busy"

    body = 'Also bump the changelog; "quoted" $HOME `id`'
    receipt = orch.send(agent, body, "--from", "lead")
    thinking.set()
    first, second = session.wait_for_requests(2, WAIT)[:2]

    assert body not in first.text()
    (context,) = [t for t in second.texts() if body in t]
    assert re.fullmatch(
        re.escape("<system-reminder>\nStop hook additional context: ")
        + header(receipt["id"], "lead", "normal", 0)
        + "\n"
        + re.escape(body + "\n</system-reminder>"),
        context,
    ), context
    assert second.text().count(f"{MARK}{receipt['id']} ") == 1
    assert second.text().count(json.dumps(body)[1:-1]) == 1
    assert "blocking error" not in second.text()
    orch.wait_for_state(agent, "idle")  # the agent worked on it, then really stopped
    confirm_with_next_turn(session, orch, [receipt])


def test_priorities_arrive_highest_first_in_one_context(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
) -> None:
    # busy in the tool, so that even the emergency message waits for PostToolUse
    gate, tool_id, session, agent = busy_agent(claude, standin, tmux_server, orch_env, project)
    sent = [
        (0, "normal, sent first"),
        (150, "emergency"),
        (20, "high"),
        (0, "normal, sent second"),
        (70, "critical"),
        (9, "normal, priority 9"),
    ]
    receipts = [orch.send(agent, text, "--priority", str(p)) for p, text in sent]
    assert [r["seq"] for r in receipts] == list(range(1, len(sent) + 1))
    gate.open()
    second = session.wait_for_requests(2, WAIT)[1]

    index = second.tool_result_index(tool_id)
    assert index is not None
    (context,) = system_texts_after(second, index)
    order = [receipts[i] for i in (1, 4, 2, 5, 0, 3)]  # priority first, then seq
    expected = "\n\n".join(
        header(r["id"], "unknown", r["band"], r["priority"]) + "\n" + re.escape(r["body"])
        for r in order
    )
    prefix = re.escape("PostToolUse:Bash hook additional context: ")
    assert re.fullmatch(prefix + expected, context), context
    assert [r["band"] for r in order] == ["emergency", "critical", "high"] + ["normal"] * 3

    orch.wait_for_state(agent, "idle")
    confirm_with_next_turn(session, orch, receipts)


def big_text(target: Path, size: int = 20_000) -> str:
    """About ``size`` characters that a shell would love to run, and emoji, line by line."""
    line = (
        "{n:04d} He said \"don't\" and 'do'; $HOME ${{HOME}} `touch {t}` $(touch {t}) "
        "&& rm -rf \\$x; echo $((1+1)) | cat > /dev/null # 🚀 👩‍💻 🇫🇷 é ü ß 中文 \\n <b>&amp;</b>\n"
    )
    parts: list[str] = []
    n = 0
    while sum(map(len, parts)) < size:
        parts.append(line.format(n=n, t=target))
        n += 1
    return "".join(parts) + f"END $(touch {target}) `touch {target}` 🏁"


def test_a_20kb_message_arrives_intact_and_runs_nothing(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    target = Path(f"/tmp/orch-e2e-touched-{uuid.uuid4().hex}")
    body = big_text(target)
    assert len(body.encode()) > 20_000 and not body[PREVIEW - 1].isspace()
    standin.reply_text("hello")
    session = claude(env=orch_env)
    agent = agent_of(session, tmux_server)
    session.prompt("Say hello.")
    session.wait_for_requests(1)
    orch.wait_for_state(agent, "idle")

    receipt = orch.send(agent, body, "--priority", "60", "--from", "ops", stdin=True)
    assert orch.show(receipt["id"])["body"] == body
    woken = session.wait_for_requests(2, WAIT)[1]

    index = prompt_index(woken, WAKE_LINE)
    (context,) = system_texts_after(woken, index)
    match = re.fullmatch(
        re.escape("UserPromptSubmit hook additional context: ")
        + header(receipt["id"], "ops", "critical", 60)
        + re.escape(f"\nThis message has {len(body)} characters, too long to show here; ")
        + r"the full text is in (?P<path>\S+)\nPreview:\n(?P<preview>.*)",
        context,
        re.DOTALL,
    )
    assert match, context[:1000]
    assert match["preview"] == body[:PREVIEW]
    spilled = Path(match["path"])
    assert spilled.read_bytes() == body.encode("utf-8")
    assert spilled.stat().st_mode & 0o777 == 0o600
    assert spilled.is_relative_to(orch_env["ORCH_STATE_DIR"])
    assert not any(body[PREVIEW:] in text for text in woken.texts())  # never typed or inlined

    orch.wait_for_state(agent, "idle")
    confirm_with_next_turn(session, orch, [receipt])
    assert not target.exists(), f"something ran the message: {target} was created"


def idle_agent(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux: TmuxServer,
    orch: OrchCLI,
    env: dict[str, str],
) -> tuple[ClaudeSession, str]:
    standin.reply_text("hello")
    session = claude(env=env)
    agent = agent_of(session, tmux)
    session.prompt("Say hello.")
    session.wait_for_requests(1)
    orch.wait_for_state(agent, "idle")
    return session, agent


def test_a_message_the_model_saw_while_going_idle_is_not_delivered_again(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    session, agent = idle_agent(claude, standin, tmux_server, orch, orch_env)
    receipt = orch.send(agent, "deploy at noon")  # wakes the agent; its prompt hook delivers
    session.wait_for_requests(2, 20)
    orch.wait_for_state(agent, "idle")
    wait_until(lambda: f"{MARK}{receipt['id']} " in transcript(session).read_text(), 10)
    # the Stop hook ran before Claude wrote the turn down, and no hook runs while it idles:
    # a sweep past confirm_seconds looks at the transcript before requeueing anything
    Queue.open(orch_env).sweep(now=time.time() + 121)
    assert orch.show(receipt["id"])["state"] == "confirmed"
    session.prompt("Next task.")
    last = session.wait_for_requests(3, 20)[-1]
    assert last.text().count(f"{MARK}{receipt['id']} ") == 1  # the first delivery, in history


def test_a_message_the_model_saw_before_its_session_ended_is_not_delivered_again(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
) -> None:
    """The last Stop block hands over a message; the Stop after it, past ``stop_blocks``,
    confirms nothing, and the agent idles. Its session ends (``/exit``, a restart) before a
    sweep: SessionEnd finds the message in the transcript, and nothing hands it over again."""
    (project / ".claude" / "orch.toml").write_text("[plugin.queue]\nstop_blocks = 1\n")
    thinking = threading.Event()
    standin.reply_text("first answer", hold=thinking)
    standin.reply_text("on it")
    session = claude(env=orch_env)
    agent = agent_of(session, tmux_server)
    session.prompt("Answer briefly.")
    session.wait_for_requests(1)
    receipt = orch.send(agent, "deploy at noon", "--from", "lead")
    thinking.set()
    session.wait_for_requests(2, WAIT)
    orch.wait_for_state(agent, "idle")
    wait_until(lambda: f"{MARK}{receipt['id']} " in transcript(session).read_text(), WAIT)
    session.close()  # types /exit: SessionEnd
    orch.wait_for_state(agent, "offline")
    record = orch.show(receipt["id"])
    assert record["state"] == "confirmed", record["events"]


def test_a_scheduled_message_wakes_an_idle_agent_when_due_not_before(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
) -> None:
    session, agent = idle_agent(claude, standin, tmux_server, orch, orch_env)
    sent = time.time()
    receipt = orch.send(agent, "check the CI run", "--in", "3s")
    last = session.wait_for_requests(2, 30)[-1]
    assert time.time() - sent >= 3, "woken before the message was due"
    assert last.text().count(f"{MARK}{receipt['id']} ") == 1
    assert last.text().count("check the CI run") == 1
    prompt_index(last, WAKE_LINE)  # typed once
    assert sum(WAKE_LINE in r.texts() for r in session.requests()) == 1


def test_a_wake_up_waits_while_a_person_types_and_their_prompt_takes_the_messages(
    claude: ClaudeFactory,
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
) -> None:
    """A person has typed part of a prompt into an idle agent's input box. The wake-up line
    typed there would be sent joined to it (``...the flakyorch: new messages...``), and the
    supervisor's Enter would send it unfinished: orch types nothing, presses nothing, and tries
    again once the wake-up is stale; the person's own Enter brings the message along, once."""
    (project / ".claude" / "orch.toml").write_text("[plugin.idle]\nrewake_seconds = 1\n")
    session, agent = idle_agent(claude, standin, tmux_server, orch, orch_env)
    assert session.pane is not None
    draft = "please also look at the flaky"
    tmux_server.send_text(session.pane, draft, enter=False)
    wait_until(lambda: draft in session.screen(), WAIT, "the draft on screen")
    receipt = orch.send(agent, "deploy at noon", "--from", "lead")
    supervisor = Supervisor({**os.environ, **orch_env})
    try:
        for pause in (2.5, 1.5, 1.5):  # past nudge_seconds: an Enter; then wake-ups again
            time.sleep(pause)
            supervisor.upkeep(time.time())
    finally:
        supervisor.close()
        supervisor.store.close()
    assert len(session.requests()) == 1, "something was sent while the person was typing"
    assert draft in session.screen() and WAKE_LINE not in session.screen()

    tmux_server.send_keys(session.pane, "Enter")  # the person sends their prompt
    theirs = session.wait_for_requests(2, WAIT)[1]
    index = prompt_index(theirs, draft)  # as they typed it, nothing joined
    (context,) = system_texts_after(theirs, index)
    assert re.fullmatch(
        re.escape("UserPromptSubmit hook additional context: ")
        + header(receipt["id"], "lead", "normal", 0)
        + re.escape("\ndeploy at noon"),
        context,
    ), context
    assert theirs.text().count("deploy at noon") == 1
    assert not any(WAKE_LINE in r.text() for r in session.requests())
    orch.wait_for_state(agent, "idle")
    confirm_with_next_turn(session, orch, [receipt])


def test_an_input_box_showing_claudes_placeholder_is_empty_and_the_agent_is_woken(
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
    tmp_path: Path,
) -> None:
    """With prompt suggestions on, an empty input box shows one, dim (``Try "fix lint
    errors"``): no one typed it, and the wake-up goes in as into an empty box."""
    standin.reply_text("on it")
    agent = "lead-1"
    env = {**orch_env, "ORCH_AGENT": agent, "CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION": "1"}
    session = ClaudeSession(project, standin, tmux_server, home=tmp_path / "home", env=env)
    session._write_home()  # start() waits for a box showing nothing
    argv = [str(session.binary), "--session-id", session.session_id, *session.args]
    session.pane = tmux_server.new_window("claude", argv, env=session.environment(), cwd=project)
    try:
        tmux_server.wait_for_text(session.pane, '\u276f\xa0Try "', WAIT)
        assert input_box(session.pane, tmux_server.socket) == ""  # a box, found empty
        orch.wait_for_state(agent, "idle")
        receipt = orch.send(agent, "Review the open pull request.", "--from", "lead")
        (woken,) = session.wait_for_requests(1, WAIT)
        prompt_index(woken, WAKE_LINE)
        assert woken.text().count(f"{MARK}{receipt['id']} ") == 1
    finally:
        session.close()


def test_an_agent_whose_claude_died_back_to_its_shell_gets_nothing_typed_into_the_shell(
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
    tmp_path: Path,
) -> None:
    """Claude started by hand from a shell is killed (no SessionEnd): its agent stays idle,
    and the wake-up line would be typed into the shell, as a command, again and again."""
    agent = "lead-1"
    session = ClaudeSession(project, standin, tmux_server, home=tmp_path / "home",
                            env={**orch_env, "ORCH_AGENT": agent})  # fmt: skip
    session._write_home()
    session.pane = tmux_server.new_window("shell", ["bash", "--norc", "--noprofile", "-i"],
                                          env={**session.environment(), "PS1": "shell$ "},
                                          cwd=project)  # fmt: skip
    command = shlex.join([str(session.binary), "--session-id", session.session_id, *session.args])
    tmux_server.send_text(session.pane, command)
    try:
        session.wait_until_ready()
        orch.wait_for_state(agent, "idle")
        (claude_pid,) = subprocess.run(["pgrep", "-f", session.session_id], capture_output=True,
                                       text=True, check=True).stdout.split()  # fmt: skip
        os.kill(int(claude_pid), 9)
        wait_until(lambda: "shell$" in session.screen(), WAIT, "the shell")
        orch.send(agent, "deploy at noon")  # types before it returns, if it does
        # a terminal's answer to the killed Claude's query (`1;2c`) may be left in the line
        tmux_server.send_keys(session.pane, "C-u")
        tmux_server.send_text(session.pane, "echo typed-$((40 + 2))")
        tmux_server.wait_for_text(session.pane, "typed-42", WAIT)  # the shell read all
        assert WAKE_LINE not in session.screen()
        assert "orch:: command not found" not in session.screen()
    finally:
        session.close()


def test_an_agent_started_through_a_wrapper_script_is_woken(
    standin: StandInAPI,
    tmux_server: TmuxServer,
    orch: OrchCLI,
    orch_env: dict[str, str],
    project: Path,
    tmp_path: Path,
) -> None:
    """A shell script that runs Claude (not ``exec``) is what tmux names the pane's command:
    Claude, in its process group, is still there, and is woken."""
    agent = "lead-1"
    standin.reply_text("on it")
    session = ClaudeSession(project, standin, tmux_server, home=tmp_path / "home",
                            env={**orch_env, "ORCH_AGENT": agent})  # fmt: skip
    session._write_home()
    wrapper = tmp_path / "run-claude.sh"
    wrapper.write_text('#!/bin/bash\n"$@"\necho "claude exited"\n')
    wrapper.chmod(0o755)
    argv = [str(wrapper), str(session.binary), "--session-id", session.session_id, *session.args]
    session.pane = tmux_server.new_window("claude", argv, env=session.environment(), cwd=project)
    try:
        session.wait_until_ready()
        orch.wait_for_state(agent, "idle")
        shown = tmux_server.cmd("display-message", "-p", "-t", session.pane,
                                "#{pane_current_command}")  # fmt: skip
        assert shown.strip() == "bash"
        receipt = orch.send(agent, "deploy at noon")
        (woken,) = session.wait_for_requests(1, WAIT)
        prompt_index(woken, WAKE_LINE)
        assert woken.text().count(f"{MARK}{receipt['id']} ") == 1
    finally:
        session.close()
