"""``orch doctor``'s operational checks: each failing check names the one thing that fixes it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orch_core.cli import install
from orch_core.queue import Queue
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import TmuxServer


def report(orch: OrchState) -> list[str]:
    done = orch.cli("doctor")
    return done.stdout.splitlines()


def line_after(lines: list[str], start: str) -> str:
    (index,) = [i for i, line in enumerate(lines) if line.startswith(start)]
    return lines[index + 1]


def test_a_deep_queue_fails_and_says_where_to_look(orch: OrchState) -> None:
    Queue(orch.store).send_many([{"agent": "w", "text": f"job {i}"} for i in range(101)])
    lines = report(orch)
    assert any(line.startswith("FAIL queue: more than 100 pending") and "w (101 pending" in line
               for line in lines)  # fmt: skip
    assert line_after(lines, "FAIL queue").startswith("     fix: orch queue w ")


def test_an_old_message_fails_the_queue_check(orch: OrchState) -> None:
    (receipt,) = Queue(orch.store).send_many([{"agent": "w", "text": "old"}])
    assert any(line.startswith("ok   queue: 1 pending, none stuck") for line in report(orch))
    with orch.store.transaction() as tx:
        tx.execute("UPDATE messages SET created = ? WHERE id = ?",
                   (time.time() - 3600, receipt["id"]))  # fmt: skip
    assert any("w (1 pending, oldest 60 min" in line for line in report(orch))


def test_an_agent_whose_pane_is_gone_fails_with_the_restart_command(orch: OrchState) -> None:
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT="a")
    with TmuxServer() as server:
        pane = server.new_window("agent", [sys.executable, "-c", "import time; time.sleep(60)"])
        socket = server.cmd("display-message", "-p", "#{socket_path}").strip()
        orch.store.remember_session("s1", "a", pane, socket)
        assert any(line.startswith("ok   panes: 1 agents running") for line in report(orch))
        server.cmd("kill-pane", "-t", pane)
        lines = report(orch)
    assert "FAIL panes: no tmux pane for a" in lines
    assert line_after(lines, "FAIL panes") == "     fix: orch restart a (or `orch stop a` if it " \
        "should not run)"  # fmt: skip


def test_an_agent_waiting_for_a_person_fails_the_panes_check(orch: OrchState) -> None:
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT="a")
    orch.store.set_agent_state("a", "needs_input", session_id="s1", project_dir=None)
    lines = report(orch)
    assert "FAIL panes: waiting for a person: a" in lines
    assert line_after(lines, "FAIL panes") == "     fix: answer a's prompt in its window"


#: An agent's name comes from a hook payload or a tmux window: a fix line pasted as printed
#: must not run what the name says.
EVIL = "my agent; touch pwned"


def test_fix_lines_quote_the_agent_they_name(orch: OrchState, tmp_path: Path) -> None:
    Queue(orch.store).send_many([{"agent": EVIL, "text": f"job {i}"} for i in range(101)])
    orch.run(payload("SessionStart", session_id="s1"), ORCH_AGENT=EVIL)
    with TmuxServer() as server:
        pane = server.new_window("agent", [sys.executable, "-c", "import time; time.sleep(60)"])
        socket = server.cmd("display-message", "-p", "#{socket_path}").strip()
        orch.store.remember_session("s1", EVIL, pane, socket)
        server.cmd("kill-pane", "-t", pane)
        lines = report(orch)
    quoted = "'my agent; touch pwned'"
    assert line_after(lines, "FAIL queue").startswith(f"     fix: orch queue {quoted} (then")
    assert line_after(lines, "FAIL panes") == (
        f"     fix: orch restart {quoted} (or `orch stop {quoted}` if it should not run)"
    )
    fix = line_after(lines, "FAIL panes").removeprefix("     fix: ").split(" (or")[0]
    subprocess.run(["sh", "-c", f"echo {fix}"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "pwned").exists()


def test_settings_that_are_not_json_fail_with_a_fix(orch: OrchState) -> None:
    """The README promises a fix line after every failure."""
    settings = orch.project_dir / ".claude" / "settings.json"
    settings.write_text("{not json")
    lines = report(orch)
    (line,) = [line for line in lines if line.startswith("FAIL settings")]
    assert line.startswith(f"FAIL settings: {settings} is not valid JSON")
    assert line_after(lines, "FAIL settings") == (
        "     fix: correct or remove the file named (Claude Code cannot read it either), then "
        f"orch install {orch.project_dir}"
    )


def test_every_failure_is_followed_by_a_fix_line(orch: OrchState) -> None:
    """Checks that cannot run (here: a database that is a folder) say where to look too."""
    orch.env["ORCH_DB"] = str(orch.project_dir)
    lines = report(orch)
    failures = [i for i, line in enumerate(lines) if line.startswith("FAIL")]
    assert failures
    assert all(lines[i + 1].startswith("     fix: ") for i in failures), lines


def test_settings_that_call_another_orch_hook_are_drift(orch: OrchState, tmp_path: Path) -> None:
    assert orch.cli("install").returncode == 0
    other = tmp_path / "old-venv" / "bin" / "orch-hook"  # another install's, still there
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\nexit 0\n")
    other.chmod(0o700)
    settings = orch.project_dir / ".claude" / "settings.json"
    data = json.loads(settings.read_text())
    ours = data["hooks"]["Stop"][0]["hooks"][0]["command"]
    data["hooks"]["Stop"][0]["hooks"][0]["command"] = str(other)
    settings.write_text(json.dumps(data))
    lines = report(orch)
    (line,) = [line for line in lines if line.startswith("FAIL settings")]
    assert line == f"FAIL settings: settings call {other}, not this orch's {ours} (another install)"
    assert line_after(lines, "FAIL settings") == f"     fix: orch install {orch.project_dir}"


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_hooks_that_ran_out_of_time_on_postgresql_are_told_to_take_a_larger_budget(
    orch: OrchState, orch_backend: str
) -> None:
    """A hook's start on PostgreSQL (psycopg's import, a connection) counts against its
    budget: plugins that timed out there point at ``budget_ms``; on SQLite, at the log."""
    timed_out = {"plugin": "queue", "ms": 500.0, "outcome": "timeout",
                 "error": "still running after 0.500s budget"}  # fmt: skip
    orch.store.record_run(event="PostToolUse", agent="a", session_id="s1", duration_ms=612.0,
                          exit_code=0, plugins=[timed_out])  # fmt: skip
    lines = report(orch)
    assert any(line.startswith("FAIL hook runs: 1 failed") for line in lines)
    fix = line_after(lines, "FAIL hook runs")
    if orch_backend == "postgresql":
        assert fix.startswith("     fix: raise budget_ms under [orch] in ")
        assert fix.endswith("then orch logs --event PostToolUse")
    else:
        assert fix == "     fix: orch logs --event PostToolUse"


@pytest.mark.parametrize("where", ["settings.local.json", "settings.json", "user"])
def test_hooks_disabled_in_any_settings_claude_reads_fail_the_settings_check(
    orch: OrchState, tmp_path: Path, where: str
) -> None:
    """With ``"disableAllHooks": true`` in the project's settings or the user's, Claude Code
    runs no hook (checked on the real binary): doctor said orch-hook was registered, all ok,
    while no message reached an agent. A project's ``false`` overrides the user's ``true``."""
    assert orch.cli("install").returncode == 0
    orch.env["CLAUDE_CONFIG_DIR"] = str(tmp_path / "claude-config")
    user = tmp_path / "claude-config" / "settings.json"
    user.parent.mkdir()
    folder = orch.project_dir / ".claude"
    path = user if where == "user" else folder / where
    data = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**data, "disableAllHooks": True}))
    lines = report(orch)
    (line,) = [line for line in lines if line.startswith("FAIL settings")]
    assert line.startswith(f"FAIL settings: disableAllHooks is true in {path}: Claude Code")
    assert line_after(lines, "FAIL settings").startswith(
        f"     fix: remove disableAllHooks from {path}"
    )
    if where != "settings.local.json":
        (folder / "settings.local.json").write_text('{"disableAllHooks": false}')
        assert "ok   settings: orch-hook registered for 29 events" in report(orch)


def test_the_fix_for_a_stale_local_install_installs_there(orch: OrchState, tmp_path: Path) -> None:
    """After ``orch install --local``, an orch-hook moved away was to be fixed by plain ``orch
    install``: that registered orch again in the shared settings.json (both then run), left
    the stale path in settings.local.json, and doctor failed as before."""
    assert orch.cli("install", "--local").returncode == 0
    local = orch.project_dir / ".claude" / "settings.local.json"
    local.write_text(json.dumps(install.template("/gone/venv/bin/orch-hook")))
    lines = report(orch)
    assert "FAIL settings: orch-hook not executable: /gone/venv/bin/orch-hook" in lines
    fix = line_after(lines, "FAIL settings").removeprefix("     fix: ")
    assert fix == f"orch install --local {orch.project_dir}"
    assert orch.cli(*shlex.split(fix)[1:]).returncode == 0
    assert "ok   settings: orch-hook registered for 29 events" in report(orch)
    assert not (orch.project_dir / ".claude" / "settings.json").exists()
