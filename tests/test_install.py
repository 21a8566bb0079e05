"""``orch install`` / ``orch uninstall`` on a project that already has hooks of its own."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orch_core.cli import install
from orch_core.testing.kit import OrchState, hook_script, orch_script

THEIRS: dict[str, Any] = {
    "permissions": {"allow": ["Bash(make test)"]},
    "hooks": {
        "Stop": [{"hooks": [{"type": "command", "command": "/usr/local/bin/notify-me"}]}],
        "PreToolUse": [
            {
                "matcher": "Bash",
                "hooks": [{"type": "command", "command": "./lint.sh", "timeout": 3}],
            }
        ],
    },
}


@pytest.mark.parametrize("indent", [2, 4])
@pytest.mark.parametrize("local", [False, True])
def test_install_keeps_their_hooks_is_idempotent_and_uninstall_restores(
    orch: OrchState, indent: int, local: bool
) -> None:
    path = Path(install.settings_path(str(orch.project_dir), local))
    original = json.dumps(THEIRS, indent=indent) + "\n"
    path.write_text(original)
    flag = ["--local"] if local else []

    first = orch.cli("install", str(orch.project_dir), *flag)
    assert first.returncode == 0, first.stderr
    once = path.read_bytes()
    settings: dict[str, Any] = json.loads(once)
    assert settings["permissions"] == THEIRS["permissions"]
    assert settings["hooks"]["Stop"][0] == THEIRS["hooks"]["Stop"][0]
    assert settings["hooks"]["PreToolUse"][0] == THEIRS["hooks"]["PreToolUse"][0]

    assert orch.cli("install", str(orch.project_dir), *flag).returncode == 0
    assert path.read_bytes() == once  # byte-identical

    assert orch.cli("uninstall", str(orch.project_dir), *flag).returncode == 0
    assert path.read_text() == original


def test_install_registers_every_event_but_those_that_change_behaviour(orch: OrchState) -> None:
    assert orch.cli("install").returncode == 0
    settings = json.loads((orch.project_dir / ".claude" / "settings.json").read_text())
    hooks = settings["hooks"]
    assert "WorktreeCreate" not in hooks
    assert "MessageDisplay" not in hooks
    assert set(hooks) == set(install.INSTALLED_EVENTS)
    assert len(hooks) == 29
    for groups in hooks.values():
        (group,) = groups
        assert "matcher" not in group  # FileChanged would watch a file literally named "*"
        (handler,) = group["hooks"]
        assert handler["type"] == "command"
        assert os.path.isabs(handler["command"])
        assert os.access(handler["command"], os.X_OK)
        assert os.path.basename(handler["command"]) == "orch-hook"
        assert isinstance(handler["timeout"], int) and 0 < handler["timeout"] <= 10  # seconds


def test_uninstall_removes_a_file_that_install_created(orch: OrchState) -> None:
    """And the ``.claude`` folder install made for it (left behind, empty), but no folder that
    was there before, or that holds something else since."""
    folder = orch.project_dir / ".claude"
    path = folder / "settings.json"
    folder.rmdir()  # the kit's project has one
    assert orch.cli("install").returncode == 0
    assert path.exists()
    assert orch.cli("install").returncode == 0  # a second run remembers the folder too
    assert orch.cli("uninstall").returncode == 0
    assert not folder.exists()
    folder.mkdir()
    assert orch.cli("install").returncode == 0
    assert orch.cli("uninstall").returncode == 0
    assert folder.exists() and not path.exists()
    folder.rmdir()
    assert orch.cli("install").returncode == 0
    (folder / "orch.toml").write_text("")
    assert orch.cli("uninstall").returncode == 0
    assert [p.name for p in folder.iterdir()] == ["orch.toml"]


@pytest.mark.parametrize(
    "original",
    [
        b"{}",
        b"{}\n",
        b'{\n  "hooks": {}\n}\n',
        b'{\n  "hooks": {\n    "PreToolUse": []\n  },\n  "model": "x"\n}\n',
        b'{"model":"x",  "hooks":{"Stop":[]}}',  # not json.dumps's style
    ],
)
def test_uninstall_gives_back_the_file_install_found(orch: OrchState, original: bytes) -> None:
    """Empty lists and objects of the user's, and the file itself, were dropped."""
    path = orch.project_dir / ".claude" / "settings.json"
    path.write_bytes(original)
    assert orch.cli("install").returncode == 0
    assert orch.cli("install").returncode == 0  # a second run changes nothing, nor forgets
    kept = [p for p in (orch.root / "state").rglob("*") if p.is_file()]
    assert kept and [p for p in kept if p.stat().st_mode & 0o077] == []  # what it found: ours
    assert orch.cli("uninstall").returncode == 0
    assert path.read_bytes() == original


def test_uninstall_of_a_file_changed_since_keeps_the_change_and_the_file(
    orch: OrchState,
) -> None:
    """What install found cannot come back over a later change: only orch's handlers go, and a
    file left empty stays, as ``{}``, since whose it now is cannot be known."""
    path = orch.project_dir / ".claude" / "settings.json"
    assert orch.cli("install").returncode == 0
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"model": "x", **data}, indent=2) + "\n")
    assert orch.cli("uninstall").returncode == 0
    assert path.read_text() == '{\n  "model": "x"\n}\n'
    path.unlink()
    assert orch.cli("install").returncode == 0
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))  # another tool wrote it
    assert orch.cli("uninstall").returncode == 0
    assert path.read_text() == "{}"


def test_install_updates_a_moved_orch_hook_in_place(orch: OrchState) -> None:
    path = orch.project_dir / ".claude" / "settings.json"
    path.write_text(json.dumps(install.template("/old/venv/bin/orch-hook"), indent=2) + "\n")
    assert orch.cli("install").returncode == 0
    hooks = json.loads(path.read_text())["hooks"]
    assert all(len(groups) == 1 for groups in hooks.values())
    assert hooks["Stop"][0]["hooks"][0]["command"] == install.hook_command()


def test_install_finds_the_hook_where_pip_put_it_away_from_python(
    orch: OrchState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install --user`` puts orch-hook in ~/.local/bin, a system pip in /usr/local/bin:
    neither beside /usr/bin/python3, where alone install looked ("reinstall orch")."""
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    info = site / "orch-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: orch\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("../../../bin/orch-hook,,\n")
    script = tmp_path / "bin" / "orch-hook"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "usr" / "bin" / "python3"))
    install.install(str(orch.project_dir), env=orch.env)
    settings = json.loads((orch.project_dir / ".claude" / "settings.json").read_text())
    assert settings["hooks"]["Stop"][0]["hooks"][0]["command"] == str(script)


def one_line_error(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and message in line, line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\n", "is not UTF-8 text"),
        (b"[]", "the settings must be an object"),
        (b'{"hooks": []}', "hooks must be an object"),
        (b'{"hooks": {"Stop": {}}}', "hooks.Stop must be a list"),
        (b'{"hooks": {"Stop": [5]}}', "hooks.Stop[0] must be an object"),
        (b'{"hooks": {"Stop": [{"hooks": 5}]}}', "hooks.Stop[0].hooks must be a list"),
        (b'{"hooks": {"Stop": [{}]}}', "hooks.Stop[0].hooks must be a list"),
        (b'{"hooks": {"Stop": [{"matcher": 1, "hooks": []}]}}', "matcher must be a string"),
        (b'{"hooks": {"Stop": [{"hooks": [5]}]}}', "hooks.Stop[0].hooks[0] must be an object"),
        (b'{"hooks": {"Stop": [{"hooks": [{"command": "x"}]}]}}', "a string 'type'"),
        (
            b'{"hooks": {"Stop": [{"hooks": [{"type": "command", "command": 5}]}]}}',
            "hooks.Stop[0].hooks[0].command must be a string",
        ),
        (b'{"hooks": {"NotOurs": [{"hooks": 5}]}}', "hooks.NotOurs[0].hooks must be a list"),
    ],
)
@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_bad_settings_give_a_one_line_error_and_stay_untouched(
    orch: OrchState, content: bytes, message: str, verb: str
) -> None:
    """Whatever Claude Code's settings would not allow is refused whole, never half changed."""
    path = orch.project_dir / ".claude" / "settings.json"
    path.write_bytes(content)
    one_line_error(orch.cli(verb), message)
    assert path.read_bytes() == content


@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_a_directory_that_does_not_exist_is_refused_not_created(
    orch: OrchState, tmp_path: Path, verb: str
) -> None:
    typo = tmp_path / "typo" / "path"
    one_line_error(orch.cli(verb, str(typo)), f"no such directory: {typo}")
    assert not (tmp_path / "typo").exists()


class Failed(Exception):
    """The step after installing that failed."""


@pytest.mark.parametrize("before", [None, "folder", '{"permissions": {}}'])
def test_installed_puts_the_settings_back_when_the_next_step_fails(
    tmp_path: Path, before: str | None
) -> None:
    """What ``orch spawn`` relies on when tmux cannot start its agent."""
    project = tmp_path / "project"
    project.mkdir()
    folder = project / ".claude"
    path = folder / "settings.json"
    if before is not None:
        folder.mkdir()
    if before not in (None, "folder"):
        path.write_text(before)
        path.chmod(0o640)
    env = {"ORCH_STATE_DIR": str(tmp_path / "state")}
    with pytest.raises(Failed), install.installed(str(project), env) as changed:
        assert len(changed) == len(install.INSTALLED_EVENTS)
        assert "orch-hook" in path.read_text()
        raise Failed
    assert folder.exists() == (before is not None)
    if before not in (None, "folder"):
        assert path.read_text() == before
        assert path.stat().st_mode & 0o777 == 0o640
    else:
        assert not path.exists()
    assert not list(tmp_path.rglob(".settings.*"))  # no temporary file left behind
    assert not list((tmp_path / "state").rglob("*.json"))  # nor install's record of it


def test_installed_keeps_to_settings_local_after_install_local(orch: OrchState) -> None:
    """``orch install --local`` keeps orch out of the shared, committed settings.json; ``orch
    spawn`` wrote it there all the same (its absolute path, in the user's ``git status``)."""
    folder = orch.project_dir / ".claude"
    assert orch.cli("install", "--local").returncode == 0
    with install.installed(str(orch.project_dir), orch.env) as changed:
        assert changed == []
    assert not (folder / "settings.json").exists()
    local = folder / "settings.local.json"
    moved = json.dumps(install.template("/old/venv/bin/orch-hook"), indent=2) + "\n"
    local.write_text(moved)
    with pytest.raises(Failed), install.installed(str(orch.project_dir), orch.env) as changed:
        assert len(changed) == len(install.INSTALLED_EVENTS)  # brought up to date, there
        assert install.hook_command() in local.read_text()
        raise Failed
    assert local.read_text() == moved
    assert not (folder / "settings.json").exists()


def test_the_shipped_template_is_current() -> None:
    shipped = Path(__file__).parent.parent / "hooks" / "settings.template.json"
    assert json.loads(shipped.read_text()) == install.template()


def test_a_settings_file_that_is_a_fifo_is_refused_at_once(orch: OrchState) -> None:
    """A FIFO (an archive can carry one) would block install, spawn and doctor for ever."""
    path = orch.project_dir / ".claude" / "settings.json"
    os.mkfifo(path)
    spawn = ["spawn", "fifo1", "--dir", str(orch.project_dir), "--command", "sleep 1"]
    for command in (["install"], ["uninstall"], spawn):
        done = orch.cli(*command)
        assert (done.returncode, done.stderr) == (1, f"Error: {path} is not a regular file\n")
    assert f"FAIL settings: {path} is not a regular file" in orch.cli("doctor").stdout


def test_install_prepares_the_plan_and_tables_the_first_hooks_would_build(
    orch: OrchState, tmp_path: Path
) -> None:
    """Run from elsewhere, as ``orch install DIR`` often is: the agents' first hooks then find
    the project's plugin plan built and every plugin's tables there. Each would otherwise do
    both within its half-second budget, the store one writer at a time; in CI one such
    SessionStart ran out of time and its agent was never recorded, so never woken."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [orch_script(), "install", str(orch.project_dir)],
        capture_output=True, text=True, env=orch.env, cwd=elsewhere, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    plans = Path(orch.env["ORCH_STATE_DIR"]) / "plans"
    built = {p.name: p.stat().st_mtime_ns for p in plans.glob("*.json")}
    with sqlite3.connect(orch.env["ORCH_DB"]) as db:
        prepared = {row[0] for row in db.execute("SELECT plugin FROM plugin_schemas")}
    assert {"alerts", "rebrief"} <= prepared
    payload = {
        "hook_event_name": "SessionStart",
        "session_id": "s1",
        "source": "startup",
        "cwd": str(orch.project_dir),
        "transcript_path": str(tmp_path / "t.jsonl"),
    }
    hook = subprocess.run(
        [hook_script()], input=json.dumps(payload), capture_output=True, text=True,
        env={**orch.env, "CLAUDE_PROJECT_DIR": str(orch.project_dir)}, cwd=orch.project_dir,
        timeout=60, check=False,
    )  # fmt: skip
    assert hook.returncode == 0, hook.stderr
    assert {p.name: p.stat().st_mtime_ns for p in plans.glob("*.json")} == built  # not rebuilt


def test_install_registers_the_hooks_when_the_store_cannot_be_prepared(orch: OrchState) -> None:
    """The settings are what install is for: a database not there yet is named in a warning,
    and the first hooks set the store up when it is."""
    env = {**orch.env, "ORCH_DB": "postgresql://orch@127.0.0.1:1/orch?connect_timeout=2"}
    done = subprocess.run(
        [orch_script(), "install"], capture_output=True, text=True, env=env,
        cwd=orch.project_dir, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("warning: not prepared, the first hooks will try again: "), line
    settings = json.loads((orch.project_dir / ".claude" / "settings.json").read_text())
    assert set(settings["hooks"]) == set(install.INSTALLED_EVENTS)
