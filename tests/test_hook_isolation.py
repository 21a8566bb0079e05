"""Every ``orch-hook`` run ends on time and answers, whatever a plugin does: hold the
interpreter lock, hang at import, print, close the reply's file descriptors or call
``os._exit``. Each case runs the real ``orch-hook`` process, beside a well-behaved plugin whose
answer must still arrive where it can, and checks what ``orch doctor`` then says."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from orch_core.plugins.plan import ANSWER_MARGIN, DEFAULT_BUDGET_MS
from orch_core.queue import MARK, Queue
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from orch_core.testing.kit import HookResult, OrchState

BUDGET = DEFAULT_BUDGET_MS / 1000
#: Starting a Python process on a loaded test machine, on top of the hook's own promise.
STARTUP = 0.4

WELL_BEHAVED = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use():
    return "well-behaved context"

@hookimpl
def orch_user_prompt_submit():
    return "well-behaved context"
"""


def timed(orch: OrchState, data: dict[str, object], **env: str) -> tuple[float, HookResult]:
    start = time.monotonic()
    result = orch.run_hook(data, timeout=30, **env)
    return time.monotonic() - start, result


def plugins_of(orch: OrchState, *names: str, source: str) -> None:
    for name in names:
        orch.plugin_module(name, WELL_BEHAVED if name == "polite" else source)
    orch.write_config(f"[plugins]\nload = {json.dumps(list(names))}\n")


def doctor(orch: OrchState) -> str:
    done = orch.cli("doctor")
    assert done.stderr == "", done.stderr
    return done.stdout


def test_a_plugin_holding_the_interpreter_lock_is_stopped_by_the_backstop(
    orch: OrchState,
) -> None:
    """A catastrophic regular expression in ``error_patterns`` and a Notification that sets
    it off: the regex never lets go of the interpreter, so only the GIL-free backstop can end
    the run; doctor then names the plugin and the line."""
    orch.write_config('[plugin.auto_restart]\nerror_patterns = ["^(a+)+$"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="a:1").exit_code == 0  # the plan, cached
    event = payload("Notification", message="a" * 30 + "!", notification_type="other")
    elapsed, result = timed(orch, event, ORCH_AGENT="a:1")
    assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
    assert (result.exit_code, result.stdout) == (1, "")  # Claude goes on without the hook
    report = doctor(orch)
    assert "FAIL hook runs:" in report
    assert "auto_restart killed: still running when the backstop stopped orch-hook" in report
    assert "auto_restart.py" in report  # the line it was stuck on
    (run,) = orch.store.runs(1, failed=True)
    assert (run["event"], run["agent"], run["exit_code"]) == ("Notification", "a:1", 1)


def test_a_plugin_that_hangs_at_import_costs_at_most_the_budget(orch: OrchState) -> None:
    plugins_of(orch, "polite", "sleepy", source="import time\ntime.sleep(60)\n")
    event = payload("PostToolUse")
    for _ in range(2):  # the first builds the plan, the second uses it
        elapsed, result = timed(orch, event, ORCH_AGENT="a:1")
        assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
        assert result.exit_code == 0
        assert result.context == "well-behaved context"
    for command in (["send", "a:1", "hello"], ["queue"], ["agents"]):
        start = time.monotonic()
        done = orch.cli(*command)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - start < 5
    assert [m["body"] for m in Queue(orch.store).messages("a:1")] == ["hello"]  # stored once
    report = doctor(orch)
    assert "FAIL plugins: plugin sleepy: sleepy: import did not finish within" in report


def test_a_plugin_that_prints_cannot_corrupt_the_reply(orch: OrchState) -> None:
    noisy = """
import os, sys
from orch_core import hookimpl
print("noise at import")

@hookimpl
def orch_post_tool_use():
    print("noise in the hook")
    print("more noise", file=sys.stderr)
    os.write(1, b"raw noise")
    return "noisy context"
"""
    plugins_of(orch, "polite", "noisy", source=noisy)
    result = orch.run_hook(payload("PostToolUse"), ORCH_AGENT="a:1")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.output == {
        "hookSpecificOutput": {
            "hookEventName": "PostToolUse",
            "additionalContext": "noisy context\n\nwell-behaved context",
        }
    }


def test_a_plugin_that_closes_stdout_loses_no_delivered_message(orch: OrchState) -> None:
    closer = """
import os
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use():
    os.close(1)
    os.close(2)
"""
    plugins_of(orch, "closer", source=closer)
    sent = Queue(orch.store).send("a:1", "keep me")["id"]
    result = orch.run_hook(payload("PostToolUse"), ORCH_AGENT="a:1")
    assert result.exit_code == 0
    assert result.context is not None and result.context.startswith(f"{MARK}{sent} ")
    assert Queue(orch.store).get(sent)["state"] == "delivered"  # type: ignore[index]


def test_os_exit_in_a_plugin_is_refused_and_recorded(orch: OrchState) -> None:
    exits = """
import os
from orch_core import hookimpl

@hookimpl
def orch_user_prompt_submit():
    os._exit(2)
"""
    plugins_of(orch, "polite", "exits", source=exits)
    result = orch.run_hook(payload("UserPromptSubmit"), ORCH_AGENT="a:1")
    assert result.exit_code == 0  # exit 2 would have erased the user's prompt
    assert result.context == "well-behaved context"
    (run,) = orch.store.runs(1)
    outcomes = {p["plugin"]: p for p in run["plugins"]}
    assert outcomes["exits"]["outcome"] == "error"
    assert "os._exit(2) called by a plugin; refused" in outcomes["exits"]["error"]
