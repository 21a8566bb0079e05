"""Every ``orch-hook`` run ends on time and answers, whatever a plugin does: hold the
interpreter lock, hang at import, print, close the reply's file descriptors or call
``os._exit``. Each case runs the real ``orch-hook`` process, beside a well-behaved plugin whose
answer must still arrive where it can, and checks what ``orch doctor`` then says."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orch_core import log
from orch_core.hook import backstop
from orch_core.plugins.plan import ANSWER_MARGIN, DEFAULT_BUDGET_MS, OBSERVERS_FLOOR
from orch_core.queue import MARK, Queue
from orch_core.testing.kit import hook_script, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import wait_until

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


def test_a_reply_given_before_the_backstop_keeps_its_decision(orch: OrchState) -> None:
    """The reply is written as soon as the plugins' answers are folded: an observer of
    ``orch_hook_answered`` that then holds the interpreter lock ends the run with exit 1, and
    the deny already on stdout still decides (Claude Code takes a valid JSON reply whatever
    the exit code: tests/e2e/test_harness.py::test_how_each_pre_tool_use_answer_is_taken)."""
    stuck = """
import re
from orch_core import Answer, hookimpl

@hookimpl
def orch_pre_tool_use():
    return Answer(permission="deny", reason="not this one")

@hookimpl
def orch_hook_answered(event):
    if event.name == "PreToolUse":
        re.match("^(a+)+$", "a" * 30 + "!")
"""
    plugins_of(orch, "stuck", source=stuck)
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="a:1").exit_code == 0  # the plan, cached
    elapsed, result = timed(orch, payload("PreToolUse"), ORCH_AGENT="a:1")
    assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
    assert result.exit_code == 1  # the backstop's
    assert result.output == {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": "not this one",
        }
    }
    assert result.stderr == "not this one\n"
    assert "stuck killed: still running when the backstop stopped orch-hook" in doctor(orch)


def test_a_plugin_past_the_budget_leaves_the_observers_their_time(orch: OrchState) -> None:
    """A Stop plugin that outlasted the budget left the ``orch_hook_answered`` observers
    none: presence never took the agent for idle, so no message woke it."""
    slow = "import time\nfrom orch_core import hookimpl\n\n@hookimpl\ndef orch_stop():\n"
    plugins_of(orch, "slow_stop", source=slow + "    time.sleep(5)\n")
    orch.run_hook(payload("UserPromptSubmit"), ORCH_AGENT="a:1")
    elapsed, result = timed(orch, payload("Stop"), ORCH_AGENT="a:1")
    assert elapsed < BUDGET + ANSWER_MARGIN + OBSERVERS_FLOOR + STARTUP, elapsed
    assert result.exit_code == 0
    assert orch.store.agents()[0]["state"] == "idle"
    (run,) = orch.store.runs(1)
    assert [p["plugin"] for p in run["plugins"] if p["outcome"] != "ok"] == ["slow_stop"]


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


def test_a_project_naming_thousands_of_plugins_costs_one_slow_hook(orch: OrchState) -> None:
    """A cloned project's ``[plugins] load`` may name thousands of modules, each imported in a
    thread of its own: bounded together, the plan's rebuild ends before its backstop and is
    kept, rather than cut short, and started again, by every hook."""
    Queue(orch.store).send("a:1", "delivered all the same")
    names = ",".join(f'"m{i}"' for i in range(20_000))  # within the config's 256 KiB
    orch.write_config(f"[plugins]\nload = [{names}]\n")
    elapsed, result = timed(orch, payload("UserPromptSubmit"), ORCH_AGENT="a:1")
    assert result.exit_code == 0
    assert "delivered all the same" in result.stdout
    elapsed, result = timed(orch, payload("PostToolUse"), ORCH_AGENT="a:1")
    assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
    assert result.exit_code == 0


def test_a_slow_rebuild_of_the_plan_finishes_and_is_kept(orch: OrchState) -> None:
    """Five plugins each well within their import bound, together past the hook's budget (a
    loaded machine, a cold disk): the backstop gives the rebuild its own time, so the plan is
    cached and the runs after it are quick. Cut short, every later hook would rebuild it."""
    slow = "import time\ntime.sleep(0.15)\n" + WELL_BEHAVED.replace("well-behaved", "slow")
    plugins_of(orch, "polite", *(f"slow{i}" for i in range(5)), source=slow)
    elapsed, result = timed(orch, payload("PostToolUse"), ORCH_AGENT="a:1")
    assert elapsed > BUDGET + ANSWER_MARGIN, elapsed  # past the limit a run has otherwise
    assert result.exit_code == 0
    assert result.context is not None and result.context.count("slow context") == 5
    assert "well-behaved context" in result.context
    elapsed, result = timed(orch, payload("PostToolUse"), ORCH_AGENT="a:1")
    assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
    assert result.exit_code == 0
    assert result.context is not None and result.context.count("slow context") == 5
    report = doctor(orch)
    assert "FAIL plugins" not in report and "FAIL hook runs" not in report


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


@pytest.mark.parametrize("running", ["a folder", "a file"])
def test_a_stdin_that_never_closes_costs_at_most_the_budget(orch: OrchState, running: str) -> None:
    """The backstop is armed before stdin is read: a writer that keeps it open holds no
    agent longer than the budget, and the queued message waits for the next hook. Where the
    run's file cannot be written (a file where its folder goes), the limit holds all the same."""
    Queue(orch.store).send("a:1", "still queued")
    if running == "a file":
        (Path(orch.env["ORCH_STATE_DIR"]) / "running").write_text("")
    env = {**orch.env, "ORCH_AGENT": "a:1"}
    start = time.monotonic()
    with subprocess.Popen([hook_script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=env, cwd=orch.project_dir) as hook:  # fmt: skip
        assert hook.stdin is not None
        hook.stdin.write(json.dumps(payload("UserPromptSubmit")).encode())
        hook.stdin.flush()
        code = hook.wait(timeout=30)
        elapsed = time.monotonic() - start
        assert hook.stdout is not None and hook.stdout.read() == b""
        hook.stdin.close()
    assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
    assert code == 1  # Claude goes on without the hook
    assert [m["state"] for m in Queue(orch.store).messages("a:1")] == ["queued"]
    assert MARK in orch.run_hook(payload("UserPromptSubmit"), ORCH_AGENT="a:1").stdout


def test_a_full_disk_leaves_no_run_file_taken_for_a_killed_run(orch: OrchState) -> None:
    """Where the run's file can be made but not written (a full disk, here a file size limit
    of 0), none is left behind: ``orch doctor`` would take each for a run killed from outside."""
    assert orch.run_hook(payload("PostToolUse")).exit_code == 0  # the plan, cached
    done = subprocess.run([hook_script()], input=json.dumps(payload("PostToolUse")).encode(),
                          capture_output=True, env=orch.env, cwd=orch.project_dir, timeout=30,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
                          check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"")
    assert list((Path(orch.env["ORCH_STATE_DIR"]) / "running").iterdir()) == []
    assert backstop.collect(orch.env, orch.store) == 0


def test_a_killed_run_is_recorded_after_its_pid_is_given_to_another_hook(
    orch: OrchState,
) -> None:
    """Pids wrap around (32768 by default): a later process given the pid of a run killed
    from outside, its file not yet collected (no supervisor runs), made its own file in that
    one's place and removed it, and the killed run was never recorded."""
    running = Path(orch.env["ORCH_STATE_DIR"]) / "running"
    with subprocess.Popen([hook_script()], stdin=subprocess.PIPE, env=orch.env,
                          cwd=orch.project_dir) as hook:  # fmt: skip
        wait_until(lambda: (running / f"{hook.pid}.json").exists(), 10, "the run's file")
        hook.kill()
    (running / f"{hook.pid}.json").rename(running / f"{os.getpid()}.json")  # the later one
    armed = backstop.arm(orch.env, 30, {})
    armed.disarm()
    os.close(armed.fd)
    assert backstop.collect(orch.env, orch.store, time.time() + backstop.STALE_SECONDS) == 1
    (run,) = orch.store.runs(1, failed=True)
    assert (run["exit_code"], [p["outcome"] for p in run["plugins"]]) == (1, ["killed"])
    assert list(running.iterdir()) == []


@pytest.mark.parametrize("command", ["doctor", "stats"])
def test_a_fifo_among_the_run_files_blocks_no_command(orch: OrchState, command: str) -> None:
    """``orch doctor``, ``orch stats`` and the supervisor collect the runs that never ended
    from ``STATE/running/``: a FIFO there (orch makes none) blocked each of them for good."""
    running = Path(orch.env["ORCH_STATE_DIR"]) / "running"
    running.mkdir(mode=0o700, parents=True)
    os.mkfifo(running / "1.json", 0o600)
    os.utime(running / "1.json", (time.time() - 3600,) * 2)
    done = subprocess.run([orch_script(), command], capture_output=True, text=True, env=orch.env,
                          cwd=orch.project_dir, timeout=15, check=False)  # fmt: skip
    assert done.stderr == ""
    if command == "doctor":
        assert "ok   hook runs: no failed hook runs" in done.stdout
    assert orch.store.runs(10) == []


@pytest.mark.parametrize("where", ["orch.log", "plan"])
def test_a_fifo_in_the_state_folder_blocks_no_hook(orch: OrchState, where: str) -> None:
    """Only orch writes its state folder; should a FIFO be there all the same (the log, a
    cached plan), a hook neither blocks on it nor stops answering."""
    Queue(orch.store).send("a:1", "delivered all the same")
    assert orch.run_hook(payload("PostToolUse")).exit_code == 0  # the plan, cached
    state = Path(orch.env["ORCH_STATE_DIR"])
    path = state / "orch.log" if where == "orch.log" else next((state / "plans").glob("*.json"))
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    for data in (b"not json", payload("UserPromptSubmit")):
        elapsed, result = timed(orch, data, ORCH_AGENT="a:1")  # type: ignore[arg-type]
        assert elapsed < BUDGET + ANSWER_MARGIN + STARTUP, elapsed
        assert result.exit_code == 0
    assert "delivered all the same" in result.stdout
    start = time.monotonic()
    assert orch.cli("queue").returncode == 0
    assert time.monotonic() - start < 5


def test_a_huge_payload_field_is_logged_short(orch: OrchState) -> None:
    """A field of megabytes in each of a few bad payloads would rotate the log's history out."""
    log.write("info", "the history", orch.env)
    for _ in range(3):
        orch.run_hook({"hook_event_name": "Z" * 3_000_000, "session_id": "s"})
    text = (Path(orch.env["ORCH_STATE_DIR"]) / "orch.log").read_text()
    assert "the history" in text
    assert len(text) < 20_000
    assert "... (3000000 characters)" in text


def test_a_cwd_no_folder_could_have_costs_no_plan_of_its_own(orch: OrchState) -> None:
    """Without ``CLAUDE_PROJECT_DIR``, the project is the payload's ``cwd``: one longer than
    any path is none, and would each leave a plan three times its size in the state folder."""
    env = {k: v for k, v in orch.env.items() if k != "CLAUDE_PROJECT_DIR"}
    Queue(orch.store).send("a:1", "delivered all the same")
    plans = Path(orch.env["ORCH_STATE_DIR"]) / "plans"
    replies = []
    for n in range(3):
        data = payload("UserPromptSubmit", cwd="/tmp/" + str(n) * 100_000)
        done = subprocess.run([hook_script()], input=json.dumps(data).encode(),
                              capture_output=True, env={**env, "ORCH_AGENT": "a:1"},
                              cwd=orch.project_dir, timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0
        replies.append(done.stdout.decode())
    assert sum(reply.count("delivered all the same") for reply in replies) == 1
    assert sum(f.stat().st_size for f in plans.glob("*.json")) < 100_000
