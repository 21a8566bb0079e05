"""The dispatcher: isolation, budgets, bad input, a broken store, and the run record."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from orch_core import Answer, hookimpl
from orch_core.hook import events
from orch_core.queue import Queue
from orch_core.testing.kit import hook_script
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from orch_core.testing.kit import OrchState


class Says:
    """A plugin that gives the same context on Stop and PostToolUse."""

    def __init__(self, text: str) -> None:
        self.text = text

    @hookimpl
    def orch_post_tool_use(self) -> str:
        return self.text

    @hookimpl
    def orch_stop(self) -> str:
        return self.text


class Raises:
    @hookimpl
    def orch_post_tool_use(self) -> str:
        raise RuntimeError("boom")


class Hangs:
    @hookimpl
    def orch_post_tool_use(self) -> str:
        time.sleep(30)
        return "too late"


class Garbage:
    @hookimpl
    def orch_post_tool_use(self) -> object:
        return {"additionalContext": "not how plugins answer"}


def test_failing_plugins_are_skipped_and_the_others_answer(orch: OrchState) -> None:
    orch.env["ORCH_LOAD_PLUGINS"] = ""
    orch.write_config("[orch]\nbudget_ms = 300\n", user=True)
    for plugin in (Says("first"), Raises(), Hangs(), Garbage(), Says("last")):
        orch.register(plugin, f"{type(plugin).__name__}-{id(plugin)}")
    start = time.monotonic()
    result = orch.run(payload("PostToolUse"))
    elapsed = time.monotonic() - start
    assert result.exit_code == 0
    # registered last is called first: pluggy's order, kept for the contexts too
    assert result.context == "last\n\nfirst"
    outcomes = sorted(p["outcome"] for p in result.plugins)
    assert outcomes == ["error", "invalid", "ok", "ok", "timeout"]
    assert elapsed < 10, "a hanging plugin must not hold the hook past its budget"
    errors = {p["outcome"]: p.get("error", "") for p in result.plugins}
    assert "RuntimeError: boom" in errors["error"]
    assert "returned dict" in errors["invalid"]
    (record,) = orch.store.runs()
    assert record["event"] == "PostToolUse"
    assert not record["ok"]
    assert sorted(p["outcome"] for p in record["plugins"]) == outcomes
    assert any(line["msg"] == "plugins failed" for line in orch.log())


CHATTY = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use():
    return "still here"

@hookimpl
def orch_stop():
    return "ctx"
"""


def test_a_hanging_plugin_does_not_hold_the_real_hook(orch: OrchState) -> None:
    orch.plugin_module(
        "sleepy",
        "import time\nfrom orch_core import hookimpl\n\n"
        "@hookimpl\ndef orch_post_tool_use():\n    time.sleep(30)\n",
    )
    orch.plugin_module("chatty", CHATTY)
    orch.write_config(
        '[orch]\nbudget_ms = 200\n[plugins]\nload = ["sleepy", "chatty"]\n', user=True
    )
    orch.run_hook(payload("Stop"))  # builds the plan: its time counts in the budget too
    start = time.monotonic()
    result = orch.run_hook(payload("PostToolUse"), timeout=20)
    assert time.monotonic() - start < 10
    assert result.exit_code == 0
    assert result.context == "still here"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n",
        b"not json",
        b"\xff\xfe\x00binary\x00",
        b"[1, 2]",
        b'"a string"',
        b"{" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"hook_event_name": "PostToolUse", "x": "' + b"a" * 10_000_000 + b'"}',
        b'{"hook_event_name": "PostToolUse", "session_id": "s", "x": "\xed\xa0\x80"}',
    ],
    ids=["empty", "blank", "text", "binary", "array", "string", "deep", "nested", "10MB", "cesu"],
)
def test_bad_input_exits_0_silently_with_one_log_line(orch: OrchState, raw: bytes) -> None:
    orch.register(Says("should not run"), "says")
    result = orch.run_hook(raw)
    assert (result.exit_code, result.stdout) == (0, "")
    lines = orch.log()
    assert len(lines) == 1
    assert lines[0]["msg"] == "bad hook input skipped"


def test_a_closed_stdin_is_bad_input_too(orch: OrchState) -> None:
    """``orch-hook <&-``: Python has no ``sys.stdin`` at all; this logged a failure."""
    orch.register(Says("should not run"), "says")
    done = subprocess.run(
        [hook_script()], stdout=subprocess.PIPE, env=orch.env,
        cwd=orch.project_dir, timeout=10, check=False, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"")
    assert [(line["msg"], line.get("problem")) for line in orch.log()] == [
        ("bad hook input skipped", "empty payload")
    ]


def test_a_lone_surrogate_in_an_answer_does_not_cost_the_reply(orch: OrchState) -> None:
    """A file name that is not UTF-8 comes to Python with a lone surrogate in it; a plugin
    that quotes it must not lose the whole reply, another plugin's deny included."""
    orch.plugin_module(
        "quotes_file",
        "import os\nfrom orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_pre_tool_use():\n"
        "    return Answer(context='touches ' + os.fsdecode(b'report-\\xff.txt'))\n",
    )
    orch.plugin_module(
        "denies",
        "from orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_pre_tool_use():\n"
        "    return Answer(permission='deny', reason='not here')\n",
    )
    result = orch.run_hook(
        payload("PreToolUse", tool_name="Bash", tool_input={"command": "ls"}),
        ORCH_LOAD_PLUGINS="quotes_file,denies",
    )
    output = json.loads(result.stdout)["hookSpecificOutput"]
    assert output["permissionDecision"] == "deny"
    assert output["additionalContext"] == "touches report-?.txt"
    assert not [line for line in orch.log() if line["msg"] == "orch-hook failed"]


@pytest.mark.parametrize("closed", [1, 2], ids=["stdout", "stderr"])
def test_a_hook_started_with_stdout_or_stderr_closed_still_answers(
    orch: OrchState, closed: int
) -> None:
    orch.plugin_module("chatty", CHATTY)
    closes = f"import os, sys; os.close({closed}); os.execv(sys.argv[1], sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", closes, hook_script()],
        input=json.dumps(payload("Stop")).encode(),
        stdout=subprocess.PIPE,
        env={**orch.env, "ORCH_LOAD_PLUGINS": "chatty"},
        cwd=orch.project_dir,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0
    if closed == 2:  # the reply goes to stdout whole, not to /dev/null
        assert json.loads(done.stdout)["hookSpecificOutput"]["additionalContext"] == "ctx"
    assert not [line for line in orch.log() if line["msg"] == "orch-hook failed"]
    assert [run["event"] for run in orch.store.runs()] == ["Stop"]


def test_unknown_event_gets_no_output(orch: OrchState) -> None:
    result = orch.run_hook({"hook_event_name": "PreModelSwitch", "session_id": "s"})
    assert (result.exit_code, result.stdout) == (0, "")
    assert orch.log()[0]["msg"] == "unknown event skipped"


def test_stop_block_keeps_the_agent_working_through_context(orch: OrchState) -> None:
    class Blocks:
        @hookimpl
        def orch_stop(self, event: events.Stop) -> Answer | None:
            return None if event.stop_hook_active else Answer(block="two messages wait")

    orch.register(Blocks(), "blocks")
    result = orch.run(payload("Stop"), ORCH_LOAD_PLUGINS="")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.context == "two messages wait"
    assert result.output == {
        "hookSpecificOutput": {"hookEventName": "Stop", "additionalContext": "two messages wait"}
    }
    assert orch.run(payload("Stop", stop_hook_active=True)).output is None


def test_every_run_is_recorded(orch: OrchState) -> None:
    orch.register(Says("hello"), "says")  # answers PostToolUse, beside presence
    orch.run(
        payload("PostToolUse", session_id="s-1"), ORCH_AGENT="proj:2", ORCH_LOAD_PLUGINS="presence"
    )
    (run,) = orch.store.runs()
    assert run["event"] == "PostToolUse"
    assert run["agent"] == "proj:2"
    assert run["session_id"] == "s-1"
    assert run["exit_code"] == 0
    assert run["ok"] == 1
    assert run["duration_ms"] > 0
    assert {p["plugin"]: p["outcome"] for p in run["plugins"]} == {"presence": "ok", "says": "ok"}


def test_a_corrupt_database_fails_open(orch: OrchState) -> None:
    db = orch.root / "state" / "orch.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database" * 100)
    orch.register(Says("no store needed"), "says")
    result = orch.run(payload("Stop"), ORCH_AGENT="proj:1")
    assert result.exit_code == 0
    assert result.context == "no store needed"
    assert any(line["msg"] == "cannot record the hook run" for line in orch.log())


def test_a_locked_database_costs_at_most_the_budget(orch: OrchState) -> None:
    orch.write_config("[orch]\nbudget_ms = 300\n", user=True)
    orch.store.runs()  # create the schema
    holder = sqlite3.connect(orch.env["ORCH_DB"], isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(15, holder.rollback)
    release.start()
    try:
        start = time.monotonic()
        result = orch.run_hook(payload("Stop"), ORCH_AGENT="proj:1", timeout=20)
        elapsed = time.monotonic() - start
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert result.exit_code == 0
    assert elapsed < 5, "the hook waited on the lock far past its 0.3 s budget"
    assert any(line["msg"] == "cannot record the hook run" for line in orch.log())


def test_no_agent_means_agent_bound_plugins_do_nothing(orch: OrchState) -> None:
    result = orch.run(payload("PostToolUse"))
    assert result.exit_code == 0
    assert orch.store.agents() == []
    assert orch.store.runs()[0]["agent"] is None


def test_hook_orch_agent_state_changed_hears_what_presence_saw(orch: OrchState) -> None:
    heard: list[tuple[str, str | None, str]] = []

    class Observer:
        @hookimpl
        def orch_agent_state_changed(self, agent: str, old: str | None, new: str) -> None:
            heard.append((agent, old, new))

    orch.register(Observer(), "observer")
    for name in ("SessionStart", "PreToolUse", "PostToolUse", "Stop", "SessionEnd"):
        orch.run(payload(name), ORCH_AGENT="proj:3", ORCH_LOAD_PLUGINS="presence")
    assert heard == [
        ("proj:3", None, "idle"),
        ("proj:3", "idle", "busy"),
        ("proj:3", "busy", "idle"),
        ("proj:3", "idle", "offline"),
    ]
    (agent,) = orch.store.agents()
    assert (agent["id"], agent["state"]) == ("proj:3", "offline")

    heard.clear()  # a failed turn: from the state it failed in, or from none when first heard of
    for name, agent_id in (("UserPromptSubmit", "proj:4"), ("StopFailure", "proj:4"),
                           ("StopFailure", "proj:5")):  # fmt: skip
        orch.run(payload(name), ORCH_AGENT=agent_id, ORCH_LOAD_PLUGINS="presence")
    assert heard == [
        ("proj:4", None, "busy"),
        ("proj:4", "busy", "error"),
        ("proj:5", None, "error"),
    ]


def test_state_files_are_private(orch: OrchState) -> None:
    orch.run_hook(payload("Stop"), ORCH_AGENT="proj:1")
    state = orch.root / "state"
    assert state.stat().st_mode & 0o077 == 0
    for path in state.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_outputs_are_json_claude_accepts(orch: OrchState) -> None:
    orch.plugin_module("chatty", CHATTY)
    result = orch.run_hook(payload("Stop"), ORCH_LOAD_PLUGINS="chatty")
    assert json.loads(result.stdout) == {
        "hookSpecificOutput": {"hookEventName": "Stop", "additionalContext": "ctx"}
    }


def test_a_lone_surrogate_in_the_payload_is_no_plugins_error(orch: OrchState) -> None:
    """JSON may escape half a UTF-16 pair (``\\ud800``): no text, and SQLite refuses it."""
    raw = json.dumps(payload("UserPromptSubmit", prompt="half \ud800 pair, whole 🚀")).encode()
    assert b"\\ud800" in raw
    result = orch.run_hook(raw, ORCH_AGENT="p:1")
    assert result.exit_code == 0
    (run,) = orch.store.runs(1)
    assert run["ok"], run["plugins"]
    prompts = orch.store.execute("SELECT target FROM activity WHERE kind = 'prompt'")
    assert [t for (t,) in prompts] == ["half \ufffd pair, whole 🚀"]


@pytest.mark.orch_backends("sqlite", "postgresql")
@pytest.mark.orch_roomy_hooks
@pytest.mark.parametrize("field", ["session_id", "transcript_path", "cwd"])
def test_a_nul_in_the_payload_is_no_plugins_error(orch: OrchState, field: str) -> None:
    """JSON may escape a NUL (``\\u0000``), which no path holds and PostgreSQL's text refuses:
    it costs no plugin its answer (and, in the ``cwd`` that names the project, every plugin)."""
    Queue(orch.store).send("p:1", "delivered all the same")
    data = payload("UserPromptSubmit", **{field: "/nonexistent/nul\0here"})
    result = orch.run_hook(data, ORCH_AGENT="p:1", TMUX_PANE="%0", CLAUDE_PROJECT_DIR="")
    assert result.context is not None and "delivered all the same" in result.context
    (run,) = orch.store.runs(1)
    assert run["ok"], run["plugins"]
