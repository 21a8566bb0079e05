"""The hook path stays lean: with a cached plan, no heavy module is imported.

Speed itself is measured in bench/ (docs/benchmarks.md); this guards what makes it fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

from orch_core.queue import Queue
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

HEAVY = ("pluggy", "attrs", "attr", "click", "tomllib", "typing", "threading", "logging",
         "importlib.metadata", "subprocess", "apprise", "textual", "rich",
         "prometheus_client", "psycopg", "sqlite3", "datetime", "zlib")  # fmt: skip

PROBE = """
import json, sys
from orch_core.hook import dispatch
outcome = dispatch.dispatch(sys.stdin.buffer.read())
print(json.dumps({"loaded": [m for m in json.loads(sys.argv[1]) if m in sys.modules],
                  "plugins": outcome.plugins}))
"""


def test_a_cached_plan_keeps_heavy_imports_off_the_hook_path(orch: OrchState) -> None:
    """Also with a user config, which the hook reads for ``[orch] database``: SQLite's path
    parses no TOML and never imports psycopg."""
    orch.write_config("[plugin.queue]\nbudget = 8000\n", user=True)
    del orch.env["ORCH_DB"]  # the store is the state folder's file unless the config says
    event = json.dumps(payload("PostToolUse")).encode()
    env = {**orch.env, "ORCH_AGENT": "proj:1"}
    assert orch.run_hook(event, ORCH_AGENT="proj:1").exit_code == 0  # builds and caches the plan
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        input=event, capture_output=True, env=env, check=True, timeout=30,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    assert sorted(p["plugin"] for p in report["plugins"]) == ["presence", "queue", "rebrief"]
    assert orch.store.agents()[0]["state"] == "busy"


def test_the_core_imports_no_built_in_plugin() -> None:
    """The core is a framework: what it needs of a capability goes through hooks. The built-ins
    are ordinary plugins, registered by name (orch_core/plugins/loader.py) like any other."""
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "orch_core"
    found = []
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "orch_builtin"]
    assert found == []


#: Never imported by a plain ``orch send``: the CLI framework, typing, plugin loading, TOML.
SEND_HEAVY = ("click", "typing", "pluggy", "attr", "tomllib", "importlib.metadata",
              "subprocess", "orch_core.supervisor.lifecycle", "psycopg")  # fmt: skip


def test_a_plain_orch_send_imports_no_click_and_no_plugin_machinery(orch: OrchState) -> None:
    """Scripts run ``orch send`` once a message: its plain forms skip click (whose import costs
    more than the insert), typing and, with a cached plan, plugin loading. The agent is at its
    prompt without a pane, so the idle plugin runs and finds nothing to type."""
    orch.store.add_agent("proj:1", "idle", session_id="s1", project_dir=None)
    assert orch.cli("send", "proj:1", "warm the plan cache").returncode == 0
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orch_core.cli", "send", "proj:1", "hello",
         "--from", "ci", "-p", "12"],
        capture_output=True, text=True, env=orch.env, cwd=orch.project_dir, check=True,
        timeout=30,
    )  # fmt: skip
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "orch_core.cli.send" in imported
    assert sorted(imported & set(SEND_HEAVY)) == []
    assert done.stdout.startswith("queued ") and "priority 12 high" in done.stdout
    (last,) = [m for m in Queue(orch.store).messages("proj:1") if m["body"] == "hello"]
    assert (last["sender"], last["priority"]) == ("ci", 12)
