"""Agent ids from a real tmux server: the hook's own pane, asked once per Claude session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch_core.testing.kit import OrchState, hook_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import TmuxServer

pytestmark = pytest.mark.tmux

RUNNER = """
import subprocess, sys
with open(sys.argv[2], "rb") as stdin, open(sys.argv[3], "wb") as stdout:
    subprocess.run([sys.argv[1]], stdin=stdin, stdout=stdout, check=False)
open(sys.argv[3] + ".done", "w").close()
"""


@pytest.fixture
def tmux() -> Iterator[TmuxServer]:
    with TmuxServer() as server:
        yield server


def run_in_pane(tmux: TmuxServer, orch: OrchState, window: str, event: dict[str, object]) -> str:
    """Run orch-hook inside a new tmux window, as Claude Code would; return its pane id."""
    stdin, stdout = orch.root / f"{window}.json", orch.root / f"{window}.out"
    stdin.write_text(json.dumps(event))
    env = {k: orch.env[k] for k in ("ORCH_STATE_DIR", "ORCH_DB", "XDG_CONFIG_HOME")}
    env["ORCH_LOAD_PLUGINS"] = "presence"
    argv = [sys.executable, "-c", RUNNER, hook_script(), str(stdin), str(stdout)]
    pane = tmux.new_window(window, argv, env=env, cwd=orch.project_dir)
    done = Path(f"{stdout}.done")
    deadline = time.monotonic() + 30
    while not done.exists():
        assert time.monotonic() < deadline, "orch-hook did not finish in its pane"
        time.sleep(0.05)
    return pane


def test_the_agent_is_the_hooks_own_pane_not_the_active_window(
    tmux: TmuxServer, orch: OrchState
) -> None:
    tmux.new_window("active", [sys.executable, "-c", "import time; time.sleep(60)"])
    pane = run_in_pane(tmux, orch, "worker", payload("SessionStart", session_id="sess-a"))
    expected = tmux.cmd("display-message", "-p", "-t", pane, "#{session_name}:#{window_index}")
    active = tmux.cmd("display-message", "-p", "#{session_name}:#{window_index}")
    assert expected.strip() != active.strip()
    (agent,) = orch.store.agents()
    assert agent["id"] == expected.strip()
    assert agent["state"] == "idle"  # at its first prompt
    assert orch.store.session_agent("sess-a") == expected.strip()


def test_tmux_is_asked_once_per_session(tmux: TmuxServer, orch: OrchState) -> None:
    pane = run_in_pane(tmux, orch, "worker", payload("SessionStart", session_id="sess-b"))
    agent = orch.store.agents()[0]["id"]
    socket = tmux.cmd("display-message", "-p", "#{socket_path}").strip()
    tmux.kill()  # from now on tmux cannot answer: only the cache can
    # as in the pane: $TMUX names its server (not the user's own, which may have a pane so named)
    env = {**orch.env, "TMUX_PANE": pane, "TMUX": f"{socket},1,0", "ORCH_LOAD_PLUGINS": "presence"}
    for session, state in (("sess-b", "busy"), ("sess-unknown", None)):
        subprocess.run(
            [hook_script()],
            input=json.dumps(payload("PreToolUse", session_id=session)).encode(),
            env=env, capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        runs = orch.store.runs(1)
        assert runs[0]["agent"] == (agent if state else None)
    assert orch.store.agents()[0]["state"] == "busy"
