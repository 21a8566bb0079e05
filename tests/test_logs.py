"""``orch logs``: the JSON-lines log, filtered by agent and hook event, readable or as JSON, and
followed as it grows and rotates (a real ``orch logs -f`` process, stopped with Ctrl-C)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from orch_core import log
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload

RAISES = """
from orch_core import hookimpl

@hookimpl
def orch_post_tool_use(ctx):
    ctx.log("looked at the tool call", tool="Bash")
    raise RuntimeError("broken")
"""


def records(orch: OrchState, *args: str) -> list[dict[str, object]]:
    done = orch.cli("logs", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_filters_by_agent_and_hook_event(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """What a plugin logs in a hook carries the agent and the event; so does the dispatcher's
    own line about the plugin that failed."""
    orch_module("raises", RAISES)
    orch.write_config('[plugins]\nload = ["raises"]\n')
    orch.run(payload("PostToolUse"), ORCH_AGENT="p:1")
    orch.run(payload("PostToolUse"), ORCH_AGENT="p:2")
    orch.run(payload("Stop"), ORCH_AGENT="p:1")
    log.write("info", "not about an agent", orch.env)

    every = records(orch)
    assert [r["msg"] for r in every] == ["looked at the tool call", "plugins failed"] * 2 + [
        "not about an agent"
    ]
    mine = records(orch, "--agent", "p:1")
    assert [(r["msg"], r["agent"], r["hook_event_name"]) for r in mine] == [
        ("looked at the tool call", "p:1", "PostToolUse"),
        ("plugins failed", "p:1", "PostToolUse"),
    ]
    assert mine[0]["plugin"] == "raises" and mine[0]["tool"] == "Bash"
    assert records(orch, "--event", "Stop") == []
    assert len(records(orch, "--event", "PostToolUse", "--agent", "p:2")) == 2
    assert records(orch, "--agent", "p:3") == []


def test_readable_lines_and_rotated_files_oldest_first(orch: OrchState) -> None:
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.mkdir(mode=0o700)
    for name, msg in (("orch.log.2", "oldest"), ("orch.log.1", "older")):
        record = {"ts": 1_700_000_000.25, "level": "warning", "msg": msg, "agent": "p:1"}
        (state / name).write_text(json.dumps(record) + "\n" + "not json\n")
    log.write("error", "newest\x1b]0;title\x07", orch.env, agent="p:1", plugins=[{"a": 1}])
    done = orch.cli("logs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[3] for line in lines] == ["oldest", "older", "newest\\x1b]0;title\\x07"]
    assert lines[0].endswith(".250 warning oldest  agent=p:1")
    assert lines[2].endswith('  agent=p:1 plugins=[{"a": 1}]')


def test_a_rotation_while_the_history_is_read_skips_no_file(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``orch logs | less`` reads the files as the pager asks: a rotation meanwhile renamed
    each, and the next file opened by name was the one after, a file of records skipped."""
    from orch_core.ops import logs

    monkeypatch.setattr(log, "MAX_BYTES", 2_000)
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.mkdir(mode=0o700)
    for name, msg in (("orch.log.3", "oldest"), ("orch.log.2", "older"), ("orch.log.1", "old")):
        (state / name).write_text(json.dumps({"ts": 1.0, "level": "info", "msg": msg}) + "\n")
    log.write("info", "newest", orch.env)
    read = logs.history(orch.env)
    assert next(read)["msg"] == "oldest"
    log.write("info", "past full", orch.env, pad="x" * 2_000)  # the log rotates
    assert (state / "orch.log.1").read_text().count("past full") == 1
    log.write("info", "after the rotation", orch.env)  # not yet there when the reading began
    assert [r["msg"] for r in read] == ["older", "old", "newest", "past full"]


def test_a_line_with_a_time_out_of_range_is_shown_without_one(orch: OrchState) -> None:
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.mkdir(mode=0o700)
    lines = [{"ts": ts, "level": "info", "msg": f"m{n}"}
             for n, ts in enumerate([1e300, -1e300, "soon", None])]  # fmt: skip
    (state / "orch.log").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"ts": 1e999}\n'
    )
    done = orch.cli("logs")
    assert done.returncode == 0, done.stderr
    shown = [line.split()[:3] for line in done.stdout.splitlines()]
    assert shown == [["-", "info", f"m{n}"] for n in range(4)] + [["-", "-"]]


@pytest.mark.parametrize("as_json", [False, True])
def test_a_line_holding_no_text_is_shown_and_the_lines_after_it_too(
    orch: OrchState, as_json: bool
) -> None:
    """A line written by hand may escape half of a UTF-16 pair (``\\ud800``), which no
    terminal can print: it is shown as orch writes it (``?``), not the end of the listing."""
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.mkdir(mode=0o700)
    (state / "orch.log").write_text(
        '{"ts": 1700000000, "level": "info", "msg": "half \\ud800 a pair", "agent": "p:1"}\n'
        '{"ts": 1700000001, "level": "info", "msg": "after", "agent": "p:1"}\n'
    )
    done = orch.cli("logs", "--agent", "p:1", *(["--json"] if as_json else []))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shown = [json.loads(line)["msg"] for line in lines] if as_json else lines
    assert len(shown) == 2 and "half ? a pair" in shown[0] and "after" in shown[1]


def test_a_level_that_is_not_text_is_shown_as_json(orch: OrchState) -> None:
    """A plugin may log with any level (``ctx.log(msg, level=None)``): the line is shown, and
    the lines after it too."""
    for level in (None, ["a"], {"b": 1}, 5):
        log.write(level, "odd", orch.env)  # type: ignore[arg-type]
    log.write("info", "after", orch.env)
    done = orch.cli("logs")
    assert done.returncode == 0, done.stderr
    shown = [line.split(maxsplit=2)[2] for line in done.stdout.splitlines()]
    assert shown == ["null    odd", '["a"]   odd', '{"b": 1} odd', "5       odd", "info    after"]


def test_a_record_of_its_message_alone_is_one_line_too(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A plugin that cannot be imported is logged with the exception's text as the message and
    no other field: its newline prints no second line, which would read as another record."""
    forged = "2026-01-01 00:00:00.000 error   all is well"
    orch_module("broken", f'raise RuntimeError("broken\\n{forged}")\n')
    orch.write_config('[plugins]\nload = ["broken"]\n')
    orch.run(payload("PostToolUse"), ORCH_AGENT="p:1")
    (record,) = records(orch)
    assert set(record) == {"ts", "level", "msg"}
    assert str(record["msg"]).endswith(f"broken\n{forged}")
    done = orch.cli("logs")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.endswith(f"cannot import broken: broken {forged}")


def test_a_broken_config_does_not_hide_the_log(orch: OrchState) -> None:
    orch.write_config("[plugins]\ndisable = 3\n")
    log.write("warning", "something", orch.env)
    assert [r["msg"] for r in records(orch)] == ["something"]


def test_follow_prints_what_is_written_across_a_rotation_until_ctrl_c(orch: OrchState) -> None:
    log.write("info", "before", orch.env, agent="p:1")
    process = subprocess.Popen(
        [orch_script(), "logs", "-f", "--json", "--agent", "p:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=orch.env,
        cwd=orch.project_dir,
    )
    out = process.stdout
    assert out is not None
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in out:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def next_msg() -> str:
        return str(json.loads(lines.get(timeout=20))["msg"])

    try:
        assert next_msg() == "before"
        log.write("info", "about another agent", orch.env, agent="p:2")
        log.write("info", "after", orch.env, agent="p:1")
        assert next_msg() == "after"
        path = orch.env["ORCH_STATE_DIR"] + "/orch.log"
        log.write("info", "last in the old file", orch.env, agent="p:1")
        os.replace(path, path + ".1")  # as log rotation does
        log.write("info", "first in the new file", orch.env, agent="p:1")
        assert [next_msg(), next_msg()] == ["last in the old file", "first in the new file"]
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
    assert code == 0
    assert process.stderr is not None and process.stderr.read() == b""
    assert lines.empty()


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_an_agent_is_named_in_the_logs_filter_as_everywhere_in_the_fleet(
    orch: OrchState, orch_backend: str
) -> None:
    """On a store hosts share, the log records this host's tmux agents by ``host/name``:
    ``--agent proj:1`` is this host's, as for ``orch send``; with the database down the name
    is taken as given, and the log still reads."""
    orch.env["ORCH_HOST"] = "alpha"
    shared = orch_backend == "postgresql"
    mine = "alpha/proj:1" if shared else "proj:1"
    orch.store.add_agent(mine, "idle", session_id="s", project_dir=None, host="alpha")
    log.write("info", "about alpha's window", orch.env, agent=mine)
    log.write("info", "about beta's window", orch.env, agent="beta/proj:1")
    assert [r["msg"] for r in records(orch, "--agent", "proj:1")] == ["about alpha's window"]
    assert [r["msg"] for r in records(orch, "--agent", "beta/proj:1")] == ["about beta's window"]
    if shared:
        orch.env["ORCH_DB"] = "postgresql://orch@127.0.0.1:9/nowhere"  # nothing listens there
        assert records(orch, "--agent", "proj:1") == []
        assert [r["msg"] for r in records(orch, "--agent", mine)] == ["about alpha's window"]
