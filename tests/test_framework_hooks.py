"""Framework hooks and the log: plugin commands, rotation."""

from __future__ import annotations

import json
import os

import pytest

from orch_core import log
from orch_core.testing.kit import OrchState

COMMANDS = """
import click
from orch_core import hookimpl

@hookimpl
def orch_register_commands(cli):
    @cli.command()
    @click.argument("name")
    def greet(name):
        "Say hello."
        click.echo(f"hello {name}")
"""


def test_hook_orch_register_commands_adds_cli_commands(orch: OrchState) -> None:
    orch.plugin_module("greeter", COMMANDS)
    orch.write_config('[plugins]\nload = ["greeter"]\n')
    done = orch.cli("greet", "team")
    assert (done.returncode, done.stdout) == (0, "hello team\n")
    assert "greet" in orch.cli("--help").stdout


def test_a_broken_plugin_does_not_take_the_cli_down(orch: OrchState) -> None:
    source = "from orch_core import hookimpl\n\n@hookimpl\ndef orch_register_commands(cli):\n"
    orch.plugin_module("bad", source + "    raise KeyError\n")
    orch.write_config('[plugins]\nload = ["bad"]\n')
    done = orch.cli("--help")  # help lists plugin commands, so it loads the plugins
    assert done.returncode == 0
    assert "warning: plugin commands not loaded" in done.stderr
    assert "send" in done.stdout
    built_in = orch.cli("plugins", "--json")  # built-in commands do not load them for commands
    assert built_in.returncode == 0
    assert "warning: plugin commands not loaded" not in built_in.stderr


def test_a_plugin_whose_commands_fail_leaves_the_other_plugins_commands(
    orch: OrchState,
) -> None:
    """The plugins' ``orch_register_commands`` ran in one ``try``: the first to raise (the
    last registered is called first) left out every command of the plugins after it, and its
    warning did not say which plugin (a bare ``KeyError`` said nothing at all)."""
    orch.plugin_module("greeter", COMMANDS)
    source = "from orch_core import hookimpl\n\n@hookimpl\ndef orch_register_commands(cli):\n"
    orch.plugin_module("bad", source + "    raise KeyError\n")
    orch.write_config('[plugins]\nload = ["greeter", "bad"]\n')
    done = orch.cli("greet", "team")
    assert (done.returncode, done.stdout) == (0, "hello team\n"), done.stderr
    assert done.stderr == "warning: plugin commands not loaded: bad: KeyError: \n"


CLASHING = """
import click
from orch_core import hookimpl

@hookimpl
def orch_register_commands(cli):
    @cli.command("stats")
    def stats():
        "The plugin's own stats."
        click.echo("plugin stats")

    @cli.command()
    def greet():
        "Say hello, a second time."
        click.echo("hello again")
"""


def test_a_plugins_command_named_as_another_owners_is_left_out_with_a_warning(
    orch: OrchState,
) -> None:
    """A plugin's ``stats`` never ran (orch's own commands load no plugins) yet took the place
    of orch's in ``orch --help``, and a second plugin's ``greet`` silently replaced the first's:
    neither plugin's author was told."""
    orch.plugin_module("greeter", COMMANDS)
    orch.plugin_module("clashing", CLASHING)
    orch.write_config('[plugins]\nload = ["greeter", "clashing"]\n')
    done = orch.cli("--help")
    assert done.returncode == 0
    assert "The plugin's own stats." not in done.stdout
    assert "Say hello." in done.stdout and "a second time" not in done.stdout
    assert sorted(done.stderr.splitlines()) == [
        "warning: plugin clashing: command 'greet' left out: plugin greeter's",
        "warning: plugin clashing: command 'stats' left out: one of orch's own",
    ]
    assert orch.cli("greet", "team").stdout == "hello team\n"
    assert "plugin stats" not in orch.cli("stats").stdout


def test_the_log_rotates_and_keeps_a_bounded_history(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log, "MAX_BYTES", 2_000)
    for i in range(200):
        log.write("info", f"line {i}", orch.env, pad="x" * 50)
    state = orch.root / "state"
    files = sorted(p.name for p in state.iterdir() if p.name.startswith("orch.log"))
    assert files == ["orch.log", "orch.log.1", "orch.log.2", "orch.log.3"]
    assert all(os.path.getsize(state / f) <= 2_200 for f in files)
    assert log.read(orch.env)[-1]["msg"] == "line 199"
    assert all((state / f).stat().st_mode & 0o077 == 0 for f in files)


def test_writers_that_find_the_log_full_together_rotate_it_once(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hooks write at once: one opened the full file, another's line then rotated it, and the
    first, its line written to the rotated file, rotated again: a file of history was pushed
    out (here "oldest") and the fresh file's place left empty."""
    from orch_core.ops import logs

    monkeypatch.setattr(log, "MAX_BYTES", 2_000)
    state = orch.root / "state"
    state.mkdir(mode=0o700)
    for name, msg in (("orch.log.3", "dropped"), ("orch.log.2", "oldest"), ("orch.log.1", "older")):
        (state / name).write_text(json.dumps({"ts": 1.0, "level": "info", "msg": msg}) + "\n")
    while not (state / "orch.log").exists() or (state / "orch.log").stat().st_size < 1_900:
        log.write("info", "filler", orch.env)
    write, meanwhile = os.write, ["the other hook's line"]

    def another_hook_first(fd: int, data: bytes) -> int:
        while meanwhile:  # this hook has opened the file; the other's line takes it past full
            log.write("info", meanwhile.pop(), orch.env, pad="x" * 200)
        return write(fd, data)

    monkeypatch.setattr(os, "write", another_hook_first)
    log.write("info", "this hook's line", orch.env)
    monkeypatch.setattr(os, "write", write)
    msgs = [r["msg"] for r in logs.history(orch.env) if r["msg"] != "filler"]
    assert msgs == ["oldest", "older", "the other hook's line", "this hook's line"]
