"""End-to-end checks of the harness: real Claude Code, real tmux, hand-written hooks.

Every assertion is on what the stand-in API received, i.e. on what actually reached the model,
or on what the hooks themselves logged. Findings pinned here (Claude Code 2.1.328):

- PostToolUse ``additionalContext`` arrives once, in a ``system`` message right after the
  tool_result: ``PostToolUse:Bash hook additional context: TEXT``.
- Stop ``{"decision":"block","reason":R}`` makes Claude send exactly one more request, which
  carries R twice: a user message ``Stop hook feedback:\\nR`` and a system message
  ``Stop hook blocking error from command: "CMD": R``. Exit code 2 with that JSON on stdout
  gives the same request as exit 0; stderr is then ignored. ``hookSpecificOutput``
  ``additionalContext`` on exit 0 also keeps the agent working, and carries R once, in a
  ``<system-reminder>`` headed ``Stop hook additional context:``; exit 2 with R on stderr
  alone carries it once too, but as ``Stop hook feedback:\\n[CMD]: R`` and the screen says the
  hook "reported a problem".
- PostToolUse ``{"decision":"block","reason":R}`` arrives once, as a system message after the
  (unchanged) tool_result: ``PostToolUse:Bash hook blocking error from command: "CMD": R``.
  Exit 2 with that JSON is again the same as exit 0, stderr ignored.
- ``additionalContext`` of more than 10,000 characters, counted in UTF-16 code units (an emoji
  is two), reaches the model as a ``<persisted-output>`` preview of its start and a file's path.
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orch_core.testing.claude import ClaudeFactory, wait_until, write_hook_settings
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer

# Each hook logs the JSON it got, plus the environment variables a dispatcher relies on, to
# <script>.jsonl; then it does its one job.
HOOK_PREAMBLE = """\
import json, os, pathlib, sys
event = json.load(sys.stdin)
env = {k: os.environ.get(k, "") for k in ("ORCH_AGENT", "CLAUDE_PROJECT_DIR", "TMUX_PANE")}
with open(pathlib.Path(__file__).with_suffix(".jsonl"), "a") as log:
    log.write(json.dumps({**event, "env": env}) + "\\n")
"""

LOG_ONLY_HOOK = HOOK_PREAMBLE

POST_TOOL_USE_CONTEXT_HOOK = (
    HOOK_PREAMBLE
    + """\
context = "orch-e2e context for " + event["tool_use_id"]
output = {"hookEventName": "PostToolUse", "additionalContext": context}
print(json.dumps({"hookSpecificOutput": output}))
"""
)

# argv[1] is the exit code; stderr shows whether Claude uses it when the JSON has a reason.
BLOCK_REASON = "orch-e2e reason: check the tests"
BLOCK_HOOK = (
    HOOK_PREAMBLE
    + f"REASON = {BLOCK_REASON!r}\n"
    + """\
if not event.get("stop_hook_active"):
    print(json.dumps({"decision": "block", "reason": REASON}))
    print("orch-e2e stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]))
"""
)


def install_hook(tmp_path: Path, name: str, source: str, *args: str) -> tuple[str, Path]:
    """Write a hook script outside the project; return its command line and its event log."""
    script = tmp_path / "hooks" / f"{name}.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(source)
    command = shlex.join([sys.executable, str(script), *args])
    return command, script.with_suffix(".jsonl")


def answering_hook(
    tmp_path: Path, project: Path, event: str, source: str, answer: object
) -> tuple[str, Path]:
    """A hook for ``event`` that answers what ``answer`` says, read from a file (not argv: the
    command line reaches the model too); its command line and its event log."""
    given = tmp_path / "answer.json"
    given.write_text(json.dumps(answer))
    command, log = install_hook(tmp_path, event, source, str(given))
    write_hook_settings(project, {event: command})
    return command, log


def logged_events(log: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The events a hook logged so far, optionally only those of one ``hook_event_name``."""
    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [e for e in events if name in (None, e["hook_event_name"])]


def script_echo_hi(standin: StandInAPI) -> str:
    """First turn calls Bash ``echo hi``, the next one ends with text; returns the tool id."""
    tool_id = standin.reply_tool_use("Bash", {"command": "echo hi", "description": "Say hi"})
    standin.reply_text("done")
    return tool_id


# --- the real binary -------------------------------------------------------------------------


@pytest.mark.claude
def test_post_tool_use_additional_context_reaches_model(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    command, _ = install_hook(tmp_path, "post_tool_use", POST_TOOL_USE_CONTEXT_HOOK)
    write_hook_settings(project, {"PostToolUse": command})
    tool_id = script_echo_hi(standin)

    session = claude()
    session.prompt("Say hi with Bash.")
    first, second = session.wait_for_requests(2)[:2]

    index = second.tool_result_index(tool_id)
    assert index is not None, "the Bash result never reached the model"
    assert second.texts(index)[:1] == ["hi"]
    expected = f"PostToolUse:Bash hook additional context: orch-e2e context for {tool_id}"
    assert expected in second.texts(index + 1)
    assert second.text().count(f"orch-e2e context for {tool_id}") == 1
    assert "orch-e2e" not in first.text()


# What a Stop hook may answer to keep the agent working: (stdout JSON, exit code, stderr).
STOP_SHAPES: dict[str, tuple[dict[str, Any] | None, int, str]] = {
    "decision block, exit 0": ({"decision": "block", "reason": BLOCK_REASON}, 0, ""),
    "decision block, exit 2": ({"decision": "block", "reason": BLOCK_REASON}, 2, "orch-e2e stderr"),
    "additionalContext, exit 0": (
        {"hookSpecificOutput": {"hookEventName": "Stop", "additionalContext": BLOCK_REASON}},
        0,
        "",
    ),
    "stderr only, exit 2": (None, 2, BLOCK_REASON),
}
#: Answers (stdout JSON, exit code, stderr) from its argv[1] file; a second Stop, nothing.
SHAPE_HOOK = (
    HOOK_PREAMBLE
    + """\
output, code, stderr = json.loads(pathlib.Path(sys.argv[1]).read_text())
if not event.get("stop_hook_active"):
    if output is not None:
        print(json.dumps(output))
    print(stderr, file=sys.stderr)
    sys.exit(code)
"""
)


@pytest.mark.claude
@pytest.mark.parametrize("shape", list(STOP_SHAPES))
def test_how_each_stop_answer_reaches_the_model(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path, shape: str
) -> None:
    """Every shape keeps the agent working for exactly one more request; only
    ``additionalContext`` on exit 0 shows the reason once and calls nothing an error, which is
    why orch answers a blocking Stop that way."""
    command, log = answering_hook(tmp_path, project, "Stop", SHAPE_HOOK, STOP_SHAPES[shape])
    standin.reply_text("first answer")

    session = claude()
    session.prompt("Answer briefly.")
    wait_until(lambda: len(logged_events(log, "Stop")) >= 2, what="a second Stop")

    stops = logged_events(log, "Stop")
    assert [e["stop_hook_active"] for e in stops] == [False, True]
    first, second = session.requests()  # the turn is over: exactly one extra request
    assert BLOCK_REASON not in first.text()
    after_answer = second.texts(len(first.messages) + 1)
    if shape.startswith("decision block"):
        assert f"Stop hook feedback:\n{BLOCK_REASON}" in after_answer
        blocking = f'Stop hook blocking error from command: "{command}": {BLOCK_REASON}'
        assert blocking in after_answer
        assert second.text().count(BLOCK_REASON) == 2
        assert "orch-e2e stderr" not in second.text()
    elif shape.startswith("additionalContext"):
        reminder = f"<system-reminder>\nStop hook additional context: {BLOCK_REASON}\n"
        assert [t for t in after_answer if BLOCK_REASON in t] == [f"{reminder}</system-reminder>"]
        assert second.text().count(BLOCK_REASON) == 1
        assert "error" not in " ".join(after_answer).lower()
    else:
        assert [t for t in after_answer if BLOCK_REASON in t] == [
            f"Stop hook feedback:\n[{command}]: {BLOCK_REASON}\n"
        ]
        assert second.text().count(BLOCK_REASON) == 1


@pytest.mark.claude
@pytest.mark.parametrize("exit_code", [0, 2])
def test_post_tool_use_block_reason_reaches_model(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path, exit_code: int
) -> None:
    command, _ = install_hook(tmp_path, "post_tool_use", BLOCK_HOOK, str(exit_code))
    write_hook_settings(project, {"PostToolUse": command})
    tool_id = script_echo_hi(standin)

    session = claude()
    session.prompt("Say hi with Bash.")
    second = session.wait_for_requests(2)[1]

    index = second.tool_result_index(tool_id)
    assert index is not None
    assert second.texts(index)[:1] == ["hi"], "the tool's own output still reaches the model"
    expected = f'PostToolUse:Bash hook blocking error from command: "{command}": {BLOCK_REASON}'
    assert expected in second.texts(index + 1)
    assert second.text().count(BLOCK_REASON) == 1
    assert "orch-e2e stderr" not in second.text()


# What a PreToolUse hook may answer: (a deny on stdout, exit code). Exit 1 is what orch-hook's
# backstop leaves when it ends a run that had already written its reply.
DENY_REASON = "orch-e2e deny: not this command"
DENY = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                               "permissionDecisionReason": DENY_REASON}}  # fmt: skip
PRE_TOOL_USE_SHAPES: dict[str, tuple[dict[str, Any] | None, int, str]] = {
    "deny, exit 0": (DENY, 0, "orch-e2e stderr"),
    "deny, exit 2": (DENY, 2, "orch-e2e stderr"),
    "deny, exit 1": (DENY, 1, "orch-e2e stderr"),
    "nothing, exit 1": (None, 1, "orch-e2e stderr"),
}


@pytest.mark.claude
@pytest.mark.parametrize("shape", list(PRE_TOOL_USE_SHAPES))
def test_how_each_pre_tool_use_answer_is_taken(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path, shape: str
) -> None:
    """A deny on stdout stops the call whatever the exit code, 1 included: a reply written
    before the process is ended keeps its decision. With nothing on stdout, exit 1 lets the
    call run (fails open)."""
    answer = PRE_TOOL_USE_SHAPES[shape]
    _, log = answering_hook(tmp_path, project, "PreToolUse", SHAPE_HOOK, answer)
    marker = project / "ran"  # in the working folder: a call there needs no other permission
    tool_id = standin.reply_tool_use("Bash", {"command": "touch ran", "description": "Touch"})
    standin.reply_text("done")

    session = claude()
    session.prompt("Touch the file with Bash.")
    second = session.wait_for_requests(2)[1]

    assert len(logged_events(log, "PreToolUse")) == 1
    index = second.tool_result_index(tool_id)
    assert index is not None, "the call's result never reached the model"
    if PRE_TOOL_USE_SHAPES[shape][0] is None:
        assert marker.exists(), "exit 1 without a decision lets the call run"
        assert DENY_REASON not in second.text()
    else:
        assert not marker.exists(), f"{shape}: the denied command ran"
        assert [t for t in second.texts(index) if DENY_REASON in t], second.texts(index)
        assert second.text().count(DENY_REASON) == 1
    assert "orch-e2e stderr" not in second.text()


@pytest.mark.claude
def test_session_lifecycle_hooks_see_the_callers_env(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    command, log = install_hook(tmp_path, "lifecycle", LOG_ONLY_HOOK)
    write_hook_settings(project, {"SessionStart": command, "SessionEnd": command})

    session = claude(env={"ORCH_AGENT": "agent-7"})
    wait_until(lambda: bool(logged_events(log, "SessionStart")), what="SessionStart")
    session.close()

    (start,) = logged_events(log, "SessionStart")
    assert start["source"] == "startup"
    assert start["session_id"] == session.session_id
    assert start["env"]["ORCH_AGENT"] == "agent-7"
    assert start["env"]["CLAUDE_PROJECT_DIR"] == str(project.resolve())
    assert start["env"]["TMUX_PANE"]
    (end,) = logged_events(log, "SessionEnd")
    assert end["reason"] == "prompt_input_exit"
    assert standin.requests_to_main_model() == []


@pytest.mark.claude
def test_scripted_api_error_ends_turn_with_stop_failure(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    command, log = install_hook(tmp_path, "failure", LOG_ONLY_HOOK)
    write_hook_settings(project, {"Stop": command, "StopFailure": command})
    standin.reply_error(529, "overloaded_error")

    session = claude()
    session.prompt("Answer briefly.")
    wait_until(lambda: bool(logged_events(log)), what="a Stop or StopFailure")

    (event,) = logged_events(log)
    assert event["hook_event_name"] == "StopFailure"
    assert len(session.requests()) == 1, "CLAUDE_CODE_MAX_RETRIES=0: no retry"
    assert standin.pending_replies() == 0


@pytest.mark.claude
def test_compaction_is_a_side_request(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path
) -> None:
    command, log = install_hook(tmp_path, "session_start", LOG_ONLY_HOOK)
    write_hook_settings(project, {"SessionStart": command})

    session = claude()
    session.prompt("Answer briefly.")
    session.wait_for_requests(1)
    standin.reply_text("kept for the next real turn")
    session.prompt("/compact")

    def sources() -> list[str]:
        return [e["source"] for e in logged_events(log, "SessionStart")]

    wait_until(lambda: sources() == ["startup", "compact"], what="SessionStart after /compact")

    (compaction,) = [r for r in standin.requests if r.is_compaction]
    assert compaction.tool_names == session.requests()[0].tool_names
    assert len(session.requests()) == 1
    assert standin.pending_replies() == 1


# --- the stand-in and tmux on their own (fast, no Claude) ------------------------------------


def post(api: StandInAPI, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST JSON the way Claude would; HTTP errors are returned, not raised."""
    request = urllib.request.Request(
        api.base_url + path, data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


MAIN_BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
}


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The ``data:`` payloads of a server-sent event stream."""
    return [
        json.loads(line.removeprefix("data: "))
        for line in raw.decode().splitlines()
        if line.startswith("data: ")
    ]


@pytest.mark.claude
def test_a_typed_line_that_starts_with_a_bang_runs_as_a_shell_command(
    claude: ClaudeFactory, project: Path, tmp_path: Path
) -> None:
    """Why orch never types such a line (auto_restart's ``reprompt_line``): Claude runs it as
    a shell command (bash mode), with no permission asked. The ``!`` switches the input box's
    mode, which may take the Enter typed right after it; orch presses Enter again for a line
    left in the box (``tmux.press_enter``), as this test does."""
    marker = tmp_path / "ran"
    session = claude(args=("--permission-mode", "default"))
    session.prompt(f"!touch {marker}")
    pane = session.pane
    assert pane is not None

    def ran() -> bool:
        if not marker.exists():
            session.tmux.send_keys(pane, "Enter")  # as orch presses it again
        return marker.exists()

    wait_until(ran, timeout=30, interval=2.0, what="the shell command to run")


def test_standin_gives_scripted_replies_to_main_requests_only(standin: StandInAPI) -> None:
    standin.reply_text("scripted")

    status, side = post(standin, "/v1/messages", {"model": "m", "messages": []})
    assert status == 200
    assert json.loads(side)["content"] == [{"type": "text", "text": "ok"}]
    assert standin.pending_replies() == 1

    status, main = post(standin, "/v1/messages?beta=true", MAIN_BODY)
    assert json.loads(main)["content"] == [{"type": "text", "text": "scripted"}]
    assert [r.is_main_model for r in standin.requests] == [False, True]
    assert standin.requests_to_main_model()[0].texts() == ["hi"]


def test_standin_streams_tool_use_as_sse(standin: StandInAPI) -> None:
    tool_id = standin.reply_tool_use("Bash", {"command": "echo hi"})

    status, raw = post(standin, "/v1/messages", {**MAIN_BODY, "stream": True})

    events = sse_events(raw)
    assert status == 200
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1]["content_block"] == {
        "type": "tool_use",
        "id": tool_id,
        "name": "Bash",
        "input": {},
    }
    assert json.loads(events[2]["delta"]["partial_json"]) == {"command": "echo hi"}
    assert events[4]["delta"]["stop_reason"] == "tool_use"


def test_standin_errors_and_other_routes(standin: StandInAPI) -> None:
    standin.reply_error(529, "overloaded_error")

    status, raw = post(standin, "/v1/messages", MAIN_BODY)
    assert (status, json.loads(raw)["error"]["type"]) == (529, "overloaded_error")
    status, raw = post(standin, "/v1/messages/count_tokens", MAIN_BODY)
    assert status == 200
    assert json.loads(raw)["input_tokens"] > 0
    assert post(standin, "/v1/other", {})[0] == 404
    with pytest.raises(TimeoutError, match="stand-in API"):
        standin.wait_for(lambda reqs: len(reqs) > 3, timeout=0.2)


@pytest.mark.tmux
def test_tmux_server_runs_argv_with_env_and_keeps_dead_panes(tmux_server: TmuxServer) -> None:
    program = "import os; print(os.environ['GREETING'], input()[::-1])"
    pane = tmux_server.new_window("echo", [sys.executable, "-c", program], env={"GREETING": "hey"})

    tmux_server.send_text(pane, "-olleh; $(true)")

    assert "hey )eurt($ ;hello-" in tmux_server.wait_for_text(pane, "hey ", timeout=10)
    wait_until(lambda: not tmux_server.is_alive(pane), timeout=10, what="program exit")
    assert "hey " in tmux_server.capture(pane)
    tmux_server.kill()
    assert not tmux_server.is_alive(pane)


@pytest.mark.tmux
def test_tmux_server_leaves_no_socket_behind() -> None:
    """tmux keeps its socket file after kill-server; each demo run and e2e test left one in
    /tmp/tmux-UID."""
    server = TmuxServer()
    server.new_window("sleep", [sys.executable, "-c", "import time; time.sleep(60)"])
    socket = Path(server.cmd("display-message", "-p", "#{socket_path}").strip())
    assert socket.exists()

    server.kill()

    assert not socket.exists()


@pytest.mark.tmux
def test_tmux_server_kill_waits_for_its_programs(tmp_path: Path) -> None:
    """A Claude Code killed with its server runs SessionEnd hooks that write into the test's
    folders: those were removed under them (the demo failed with 'Directory not empty')."""
    done = tmp_path / "done"
    program = (
        "import pathlib, signal, sys, time\n"
        "def leave(*_):\n"
        "    time.sleep(1); pathlib.Path(sys.argv[1]).write_text('x'); sys.exit(0)\n"
        "signal.signal(signal.SIGHUP, leave)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    server = TmuxServer()
    pane = server.new_window("slow", [sys.executable, "-c", program, str(done)])
    server.wait_for_text(pane, "ready", timeout=10)

    server.kill()

    assert done.exists()


#: A context's length as Claude Code counts it, and whether its end reaches the model.
CAPPED_CONTEXTS = {
    "10,000 plain characters": ("a" * 9_990, True),
    "10,001 plain characters": ("a" * 9_991, False),
    "5,001 emoji (10,002 UTF-16 units)": ("\U0001f680" * 4_996, False),
}


@pytest.mark.claude
@pytest.mark.parametrize("shape", list(CAPPED_CONTEXTS))
def test_a_hooks_context_over_10000_characters_reaches_the_model_as_a_preview(
    claude: ClaudeFactory, standin: StandInAPI, project: Path, tmp_path: Path, shape: str
) -> None:
    """Past 10,000 characters (UTF-16 code units: an emoji is two) Claude Code keeps the text
    in a file and the model gets only its start and the path: what orch folds must stay
    within that (orch_core.hook.answers.CONTEXT_CAP)."""
    filler, whole = CAPPED_CONTEXTS[shape]
    context = f"HEAD {filler} TAIL"  # 10 more characters
    output = {"hookEventName": "UserPromptSubmit", "additionalContext": context}
    answering_hook(tmp_path, project, "UserPromptSubmit", SHAPE_HOOK,
                   [{"hookSpecificOutput": output}, 0, ""])  # fmt: skip
    standin.reply_text("ok")

    session = claude()
    session.prompt("Answer briefly.")
    (request,) = session.wait_for_requests(1)
    text = request.text()
    assert text.count("HEAD ") == 1
    if whole:
        assert text.count(context) == 1
    else:
        assert " TAIL" not in text
        assert "<persisted-output>" in text
