"""``orch install`` / ``orch uninstall`` on a project that already has hooks of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orch_core.cli import install
from orch_core.testing.kit import OrchState

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
    path = orch.project_dir / ".claude" / "settings.json"
    assert orch.cli("install").returncode == 0
    assert path.exists()
    assert orch.cli("uninstall").returncode == 0
    assert not path.exists()


def test_install_updates_a_moved_orch_hook_in_place(orch: OrchState) -> None:
    path = orch.project_dir / ".claude" / "settings.json"
    path.write_text(json.dumps(install.template("/old/venv/bin/orch-hook"), indent=2) + "\n")
    assert orch.cli("install").returncode == 0
    hooks = json.loads(path.read_text())["hooks"]
    assert all(len(groups) == 1 for groups in hooks.values())
    assert hooks["Stop"][0]["hooks"][0]["command"] == install.hook_command()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ('{"hooks": []}', "expected an object")],
)
def test_bad_settings_give_a_one_line_error_and_stay_untouched(
    orch: OrchState, content: str, message: str
) -> None:
    path = orch.project_dir / ".claude" / "settings.json"
    path.write_text(content)
    done = orch.cli("install")
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert path.read_text() == content


def test_the_shipped_template_is_current() -> None:
    shipped = Path(__file__).parent.parent / "hooks" / "settings.template.json"
    assert json.loads(shipped.read_text()) == install.template()
