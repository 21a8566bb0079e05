"""The orch demo: a real Claude Code session in tmux, with orch's hooks, on a local model.

Claude Code runs interactively in a private tmux server and talks to a stand-in for the
Messages API on 127.0.0.1 (nothing leaves the machine). ``orch install`` registers orch-hook; the
built-in presence plugin tracks the agent, the contrib plugin orch-guard denies a force-push, and
a project-local plugin adds context after each tool call. The demo prints what reached the model
(the request bodies the stand-in received) and what orch recorded.

    make demo
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from orch_core.store import SQLiteStore
from orch_core.testing.claude import ClaudeSession, wait_until
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer

BIN = Path(sys.executable).parent
PLUGIN = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use(event, ctx):
    return f"[team-notes] {ctx.agent} just ran {event.tool_name}; remember to update the changelog."
"""


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def orch(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "orch"), *args], env=env, capture_output=True, text=True)
    return (done.stdout + done.stderr).rstrip()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="orch-demo-") as tmp, StandInAPI() as api, \
            TmuxServer() as tmux:  # fmt: skip
        root = Path(tmp)
        project, lib = root / "project", root / "lib"
        (project / ".claude").mkdir(parents=True)
        lib.mkdir()
        (lib / "team_notes.py").write_text(PLUGIN)
        (project / ".claude" / "orch.toml").write_text('[plugins]\nload = ["team_notes"]\n')
        env = {
            **os.environ,
            "ORCH_STATE_DIR": str(root / "state"),
            "ORCH_DB": str(root / "state" / "orch.db"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "PYTHONPATH": str(lib),
        }
        step("orch install: one command, orch-hook, for every hook event")
        print(orch(env, "install", str(project)))
        print(orch({**env, "CLAUDE_PROJECT_DIR": str(project)}, "plugins", "--all"))

        step("A real Claude Code session in tmux, on the stand-in model")
        push = api.reply_tool_use("Bash", {"command": "git push --force origin main"})
        hello = api.reply_tool_use("Bash", {"command": "echo hello from the agent"})
        api.reply_text("Done: said hello; the force-push was refused.")
        hook_env = {
            k: env[k] for k in ("ORCH_STATE_DIR", "ORCH_DB", "XDG_CONFIG_HOME", "PYTHONPATH")
        }
        session = ClaudeSession(project, api, tmux, home=root / "home", env=hook_env, name="agent")
        session.start()
        session.prompt("Push the branch, then say hello.")
        requests = session.wait_for_requests(3)
        store = SQLiteStore(env["ORCH_DB"])
        wait_until(lambda: any(r["event"] == "Stop" for r in store.runs(100)), what="Stop")
        print(session.screen().strip()[-1500:])

        step("What reached the model (request bodies the stand-in received)")
        for request, tool_id in ((requests[1], push), (requests[2], hello)):
            index = request.tool_result_index(tool_id)
            for text in request.texts(index or 0)[:2]:
                print(f"  > {text[:200]}")

        step("What orch recorded: each hook run, its agent, its plugins")
        for run in reversed(store.runs(100)):
            plugins = ", ".join(f"{p['plugin']}:{p['outcome']}" for p in run["plugins"]) or "-"
            print(f"  {run['event']:<18} agent={run['agent']:<10} exit={run['exit_code']} "
                  f"{run['duration_ms']:6.1f} ms  {plugins}")  # fmt: skip
        step("orch agents / orch doctor")
        print(orch(env, "agents"))
        print(orch({**env, "CLAUDE_PROJECT_DIR": str(project)}, "doctor", str(project)))
        session.close()


if __name__ == "__main__":
    main()
