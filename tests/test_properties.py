"""Property tests: arbitrary text at every name, path and body the CLI takes, and at every field
of every hook event. Whatever comes in: no traceback, no shell (the canaries that ``$(...)``,
backticks or tmux's ``#(...)`` would create never appear), nothing written outside the state
folder and the project, and the hook exits 0 (or 2 where a plugin blocks) within its budget."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orch_core.cli import main as cli
from orch_core.cli import send
from orch_core.hook import dispatch
from orch_core.hook.events import EVENTS
from orch_core.plugins import loader
from orch_core.plugins.plan import ANSWER_MARGIN, DEFAULT_BUDGET_MS
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState, hook_script
from orch_core.testing.payloads import COMMON, TYPICAL

CANARY = "orch-canary"
#: Pieces that would run something, end a paste, or leave a folder, if anything misread them.
NASTY = [
    f"$(touch {CANARY}-dollar)", f"`touch {CANARY}-tick`", f"#(touch {CANARY}-tmux)",
    f"; touch {CANARY}-semicolon", "\x1b[201~", "\x1b]52;c;eA==\x07", "\r\n", "\x03",
    "../../../../etc/passwd", "/dev/zero", "~/.ssh/id_rsa", "*", "[", "?", ":", "%1", "#{pane_id}",
    "\u202e", "🚀", "\ufeff", "a" * 300,
]  # fmt: skip
texts = st.one_of(
    st.text(st.characters(blacklist_characters="\x00"), max_size=40),
    st.lists(st.sampled_from(NASTY), min_size=1, max_size=3).map("".join),
    st.tuples(st.text(max_size=8), st.sampled_from(NASTY)).map(lambda t: t[0] + t[1]),
).filter(lambda s: "\x00" not in s)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
#: Folder names as a file system holds them: any bytes but / and NUL, as Python reads them.
folder_names = st.binary(min_size=1, max_size=40).map(
    lambda b: os.fsdecode(b.replace(b"/", b"_").replace(b"\x00", b"_"))
)
relative_paths = st.one_of(
    texts.filter(lambda s: not any("\ud800" <= c <= "\udfff" for c in s)), folder_names
).map(lambda s: "./" + s.replace("/", "_")[:60] or "./x")

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def sandbox(orch: OrchState, tmp_path: Path) -> Iterator[OrchState]:
    """Every example runs in here; afterwards nothing may exist outside the state, config and
    project folders, and no canary anywhere."""
    orch.env["HOME"] = str(tmp_path / "home")
    orch.env["ORCH_TMUX_SOCKET"] = str(tmp_path / "tmux.sock")
    orch.env["ORCH_SUPERVISE_FOR"] = "3"
    (tmp_path / "home").mkdir()
    cwd = os.getcwd()
    os.chdir(orch.project_dir)
    try:
        yield orch
    finally:
        os.chdir(cwd)
        subprocess.run(["tmux", "-S", orch.env["ORCH_TMUX_SOCKET"], "kill-server"],
                       capture_output=True, check=False)  # fmt: skip
    allowed = {"state", "config", "project", "home", "tmux.sock", "lib"}
    stray = sorted(p.name for p in tmp_path.iterdir() if p.name not in allowed)
    assert stray == [], f"written outside the state folder and the project: {stray}"
    assert not list(tmp_path.rglob(f"{CANARY}*")), "something ran a shell"
    assert list((tmp_path / "home").iterdir()) == []


def invoke(orch: OrchState, args: list[str], stdin: str = "") -> None:
    data = stdin.encode("utf-8", "surrogatepass")  # stdin is bytes, UTF-8 or not
    result = CliRunner().invoke(cli.cli, args, input=data, env=orch.env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"orch {args!r} raised") from result.exception
    assert result.exit_code in (0, 1, 2), (args, result.output)
    if result.exit_code == 1:
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, (args, result.output)


@PROPERTY
@given(name=texts, body=texts, other=texts, folder=relative_paths)
def test_the_cli_takes_any_text_as_names_paths_and_bodies(
    sandbox: OrchState, name: str, body: str, other: str, folder: str
) -> None:
    for args, stdin in (
        (["send", name, body], ""),
        (["send", name, body, "--exact", "--from", other, "--key", other], ""),
        (["send", name, "-"], body),
        (["brief", name, "-", "--role", other], body),
        (["context", name], ""),
        (["rebrief", name], ""),
        (["queue", name], ""),
        (["queue", "show", other], ""),
        (["queue", "cancel", other], ""),
        (["queue", "purge", name], ""),
        (["install", folder], ""),
        (["adopt", name, "--dir", ".", "--session", other, "--command", "sleep 1"], ""),
        (["restart", name], ""),
        (["stop", name], ""),
        (["agents"], ""),
        (["stats", "--agent", name, "--since", other], ""),
        (["logs", "--agent", name, "--event", other], ""),
    ):
        invoke(sandbox, args, stdin)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(name=texts | st.from_regex(lifecycle.NAME, fullmatch=True), folder=relative_paths,
       session=texts)  # fmt: skip
def test_spawn_takes_any_name_folder_and_session(
    sandbox: OrchState, name: str, folder: str, session: str
) -> None:
    os.makedirs(folder, exist_ok=True)
    invoke(sandbox, ["spawn", name, "--dir", folder, "--session", session, "--command", "sleep 3"])


def events_with_any_fields() -> st.SearchStrategy[dict[str, Any]]:
    def build(name: str) -> st.SearchStrategy[dict[str, Any]]:
        fields = {**COMMON, **TYPICAL[name]}
        return st.fixed_dictionaries(
            {"hook_event_name": st.just(name)},
            optional={key: json_values for key in fields},
        )

    return st.sampled_from(sorted(EVENTS)).flatmap(build)


@PROPERTY
@given(event=events_with_any_fields())
def test_any_event_field_in_process(sandbox: OrchState, event: dict[str, Any]) -> None:
    env = {**sandbox.env, "ORCH_AGENT": "prop:1"}
    plan = loader.build_plan(env, str(sandbox.project_dir))
    outcome = dispatch.dispatch(json.dumps(event).encode(), env, plan=plan)
    assert outcome.reply.exit_code in (0, 2)
    assert all(p["outcome"] == "ok" for p in outcome.plugins), outcome.plugins
    if outcome.reply.output is not None:
        assert json.loads(outcome.reply.stdout()) == outcome.reply.output


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(event=events_with_any_fields())
def test_any_event_field_through_the_real_hook(sandbox: OrchState, event: dict[str, Any]) -> None:
    start = time.monotonic()
    done = subprocess.run([hook_script()], input=json.dumps(event).encode(),
                          env={**sandbox.env, "ORCH_AGENT": "prop:1"}, capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    assert time.monotonic() - start < DEFAULT_BUDGET_MS / 1000 + ANSWER_MARGIN + 0.5
    assert done.returncode in (0, 2), done.stderr
    assert done.stderr == b"" or done.returncode == 2
    if done.stdout:
        json.loads(done.stdout)


#: Words that look like ``orch send``'s own, or like options it does not have.
SEND_WORDS = ["--", "-", "-p5", "--priority=7", "--from=", "--json=1", "--batch", "-x", "--nope",
              "--help", "proj:*", ":bad", ""]  # fmt: skip


@st.composite
def send_lines(draw: st.DrawFn) -> list[str]:
    """An ``orch send`` command line: a name and a text, any of its options in any spelling
    (``--opt VALUE``, ``--opt=VALUE``, ``-pVALUE``) in any order around them, now and then a
    word that is not one of its own."""
    groups = []
    for option in draw(st.lists(st.sampled_from(send.OPTIONS), max_size=5)):
        flag = draw(st.sampled_from(option.flags))
        if option.is_flag:
            groups.append([flag])
            continue
        value = draw(texts | st.sampled_from(["5", "30m", "--json", "-"]))
        if flag.startswith("--") and draw(st.booleans()):
            groups.append([f"{flag}={value}"])
        elif not flag.startswith("--") and value and draw(st.booleans()):
            groups.append([flag + value])
        else:
            groups.append([flag, value])
    agent = draw(st.sampled_from(["p:1", "build-1/proj:2", "a"]) | texts)
    text = draw(texts | st.sampled_from(["-", "hello"]))
    at = draw(st.integers(0, len(groups)))
    groups.insert(at, [agent])
    groups.insert(draw(st.integers(at + 1, len(groups))), [text])
    if draw(st.integers(0, 4)) == 0:
        groups.insert(draw(st.integers(0, len(groups))), [draw(st.sampled_from(SEND_WORDS))])
    return [word for group in groups for word in group]


@settings(max_examples=300, deadline=None)
@given(argv=send_lines())
def test_the_quick_send_reads_any_command_line_as_click_does_or_leaves_it_to_click(
    argv: list[str],
) -> None:
    """``orch send``'s quick path reads a command line only when click would read it the
    same: whatever it takes equals click's reading; what it leaves, click reads (to refuse or
    help). Never a different message, agent or option."""
    import click

    from orch_core.cli.queue import send_command

    quick = send.parse(argv)
    if quick is None:
        return  # click's to read, as before the quick path
    try:
        clicked = send_command.make_context("send", list(argv)).params
    except (click.exceptions.Exit, click.ClickException) as exc:
        raise AssertionError(f"the quick path took {argv!r}, which click refuses: {exc}") from exc
    assert quick == {k: v for k, v in clicked.items() if k != "batch"}
