"""Plugins in and out: built-ins, entry points, config, environment, and the cached plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orch_core.plugins import loader, plan
from orch_core.testing.kit import ROOMY_BUDGET_MS, hook_script
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from orch_core.testing.kit import OrchState

HELLO = """
from orch_core import hookimpl

@hookimpl
def orch_config_defaults():
    return {"greeting": "hello", "punctuation": "!"}

@hookimpl
def orch_stop(ctx):
    return ctx.config["greeting"] + ctx.config["punctuation"]
"""


def names(orch: OrchState, **env: str) -> list[str]:
    loaded = loader.load({**orch.env, **env}, str(orch.project_dir))
    return [info.name for info in loaded.plugins]


def test_builtins_and_entry_points_load_by_default(orch: OrchState) -> None:
    loaded = loader.load(orch.env, str(orch.project_dir))
    sources = {info.name: info.source for info in loaded.plugins}
    assert sources["presence"] == "builtin"
    assert sources["guard"] == "entry point"  # plugins/contrib/orch-guard, installed with pip
    assert loaded.errors == ()


def test_config_disables_any_plugin_by_name(orch: OrchState) -> None:
    orch.write_config('[plugins]\ndisable = ["presence", "guard"]\n')
    assert "presence" not in names(orch)
    assert "guard" not in names(orch)


def test_a_misspelt_plugin_name_in_the_config_is_named(orch: OrchState) -> None:
    """A table or a switch for no plugin at all would otherwise do nothing, silently."""
    user = orch.write_config("[plugin.queu]\nbudget = 100\n", user=True)
    project = orch.write_config('[plugins]\ndisable = ["gaurd", "guard"]\n')
    loaded = loader.load(orch.env, str(orch.project_dir))
    assert loaded.errors == (
        f"{project}: no plugin named 'gaurd' (`orch plugins --all` lists them)",
        f"{user}: no plugin named 'queu' (`orch plugins --all` lists them)",
    )
    assert "guard" not in [info.name for info in loaded.plugins]
    orch.write_config('[plugins]\ndisable = ["guard"]\n[plugin.guard]\nask = []\n')
    orch.write_config("[plugin.queue]\nbudget = 1000\n", user=True)
    assert loader.load(orch.env, str(orch.project_dir)).errors == ()  # disabled, not unknown


def test_environment_overrides_per_process(orch: OrchState) -> None:
    assert names(orch, ORCH_LOAD_PLUGINS="") == []
    assert names(orch, ORCH_LOAD_PLUGINS="guard") == ["guard"]
    assert "presence" not in names(orch, ORCH_DISABLE_PLUGINS="presence, other")


def test_dotted_modules_load_from_config_with_their_settings(orch: OrchState) -> None:
    orch.plugin_module("hello_plugin", HELLO)
    orch.write_config('[plugin.hello_plugin]\npunctuation = "?"\n', user=True)
    orch.write_config(
        '[plugins]\nload = ["hello_plugin"]\n[plugin.hello_plugin]\ngreeting = "bonjour"\n'
    )
    result = orch.run_hook(payload("Stop"))
    assert result.context == "bonjour?"  # project over user over the plugin's defaults


LISTS = """
from orch_core import Setting, hookimpl

@hookimpl
def orch_config_defaults():
    return {"rules": Setting(["default"], extend_only=True), "note": "default"}

@hookimpl
def orch_stop(ctx):
    return repr((ctx.config["rules"], ctx.added_by_project("rules"), ctx.from_project("note"),
                 ctx.added_by_project("note")))
"""


def test_a_plugin_tells_what_the_project_added_to_a_list_it_may_only_extend(
    orch: OrchState,
) -> None:
    """``ctx.added_by_project``: the items after yours that a cloned repository chose (a
    plugin may weigh them less, as orch-guard checks them last)."""
    orch.plugin_module("lists", LISTS)
    orch.write_config('[plugin.lists]\nrules = ["yours", "shared"]\n', user=True)
    orch.write_config('[plugins]\nload = ["lists"]\n')
    assert orch.run_hook(payload("Stop")).context == "(['yours', 'shared'], [], False, [])"
    orch.write_config(
        '[plugins]\nload = ["lists"]\n[plugin.lists]\nrules = ["shared", "theirs"]\n'
        'note = "theirs"\n'
    )
    expected = "(['yours', 'shared', 'theirs'], ['theirs'], True, [])"
    assert orch.run_hook(payload("Stop")).context == expected


def test_a_projects_plugin_lists_add_to_yours(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A cloned repository's ``[plugins] disable = []`` switched back on a plugin you switched
    off, and its ``load = []`` left out the plugin your own config loads (a guard of your own,
    say): a project may switch more off and load more, never undo your choice."""
    orch_module("hello_plugin", HELLO)
    orch.write_config('[plugins]\ndisable = ["presence"]\nload = ["hello_plugin"]\n', user=True)
    orch.write_config('[plugins]\ndisable = ["idle"]\nload = []\n')
    loaded = names(orch)
    assert "presence" not in loaded and "idle" not in loaded
    assert "hello_plugin" in loaded
    assert orch.run_hook(payload("Stop")).context == "hello!"
    orch.write_config('[plugins]\ndisable = ["hello_plugin"]\n')
    assert "hello_plugin" in names(orch)
    done = orch.cli("agents")
    assert done.stderr.endswith(
        "[plugins] disable: hello_plugin: your own config configures it, and only your own"
        " config may switch it off\n"
    )


NEVER_ANSWERS = """
import time
from orch_core import hookimpl

@hookimpl
def orch_config_defaults():
    time.sleep(600)

@hookimpl
def orch_schema(dialect):
    time.sleep(600)
"""


def test_a_plugin_whose_settings_never_come_holds_no_hook_and_no_command(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """Its import was bounded, not its ``orch_config_defaults`` or ``orch_schema``: one that
    never returned kept the plan from being built, so the rebuild's backstop ended every hook
    after 3 s with no answer (orch-guard's deny lost), and every command hung."""
    orch_module("never_answers", NEVER_ANSWERS)
    orch.write_config('[plugins]\nload = ["never_answers"]\n', user=True)
    push = payload("PreToolUse", tool_input={"command": "git push --force origin main"})
    assert orch.run_hook(push).exit_code == 2  # denied
    done = orch.cli("agents")
    assert (done.returncode, done.stderr) == (0, "")  # the plugin's problem, not the config's
    report = orch.cli("doctor").stdout
    assert "FAIL plugins: plugin never_answers: orch_config_defaults did not finish" in report
    assert "orch_schema did not finish" in report


def test_a_plugin_whose_settings_fail_stops_no_command(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """An ``orch_config_defaults`` that raised was taken for a config file's error: every
    command (``orch plugins``, ``orch send`` and the other plugins' own) refused to run, and
    ``orch doctor`` said to correct a key in the config, which had none."""
    orch_module("settings_fail", HELLO.replace("    return {", "    raise KeyError('x')\n    {"))
    orch.write_config('[plugins]\nload = ["settings_fail"]\n')
    for command in (["plugins"], ["send", "p:1", "hi"]):
        done = orch.cli(*command)
        assert done.returncode == 0, done.stderr
    report = orch.cli("doctor").stdout
    assert "ok   config: every configured value is in use\n" in report
    assert "FAIL plugins: plugin settings_fail: orch_config_defaults failed: KeyError: 'x'" in (
        report
    )


def test_settings_that_are_not_a_dict_are_named(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """``orch_config_defaults`` returning a list of settings was taken for none declared:
    every value of its table went to the plugin unchecked, and nobody said so."""
    orch_module("settings_list", HELLO.replace('return {"greeting": "hello", "punctuation": "!"}',
                                               'return [Setting("hello")]')
                .replace("import hookimpl", "import Setting, hookimpl"))  # fmt: skip
    orch.write_config('[plugins]\nload = ["settings_list"]\n')
    report = orch.cli("doctor").stdout
    assert ("FAIL plugins: plugin settings_list: orch_config_defaults returned list, expected "
            "a dict or None") in report  # fmt: skip


def test_broken_plugins_are_left_out_with_a_reason(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module(
        "typo",
        "from orch_core import hookimpl\n\n@hookimpl\ndef orch_post_tool_usee():\n    return 'x'\n",
    )
    orch_module(
        "wrongargs",
        "from orch_core import hookimpl\n\n@hookimpl\ndef orch_stop(evt):\n    return 'x'\n",
    )
    orch_module("crashes", "raise ImportError('missing dependency')\n")
    orch_module("hello_plugin", HELLO)
    env = {**orch.env, "ORCH_LOAD_PLUGINS": "typo,wrongargs,crashes,hello_plugin"}
    loaded = loader.load(env, str(orch.project_dir))
    assert [info.name for info in loaded.plugins] == ["hello_plugin"]
    joined = "\n".join(loaded.errors)
    assert "plugin typo: unknown hook orch_post_tool_usee" in joined
    assert "plugin wrongargs:" in joined
    assert all("\n" not in error for error in loaded.errors)  # pluggy's own spans three lines
    assert "plugin crashes: cannot import crashes: missing dependency" in joined
    assert orch.run_hook(payload("Stop"), ORCH_LOAD_PLUGINS=env["ORCH_LOAD_PLUGINS"]).context == (
        "hello!"
    )


def test_a_plugin_whose_name_is_taken_is_left_out_with_a_reason(
    orch: OrchState, orch_module: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point named as a built-in (or as another distribution's) was skipped without
    a word: installed, listed nowhere, its hooks never called, ``orch doctor`` all ok."""
    from importlib.metadata import EntryPoint

    orch_module("my_queue", HELLO)
    installed = loader._entry_points()
    taken = EntryPoint(name="queue", value="my_queue", group=loader.ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        loader, "_entry_points", lambda: sorted([*installed, taken], key=lambda ep: ep.name)
    )
    loaded = loader.load(orch.env, str(orch.project_dir))
    assert [i.module for i in loaded.plugins if i.name == "queue"] == ["orch_builtin.queue"]
    assert loaded.errors == (
        "plugin queue: my_queue left out: orch_builtin.queue has that name already",
    )


def test_a_broken_config_file_is_skipped_on_the_hook_path(orch: OrchState) -> None:
    orch.write_config("[plugins\ndisable = ")
    result = orch.run_hook(payload("Stop"), ORCH_AGENT="p:1")
    assert result.exit_code == 0
    assert orch.store.agents()[0]["state"] == "idle"  # presence still ran
    assert any("orch.toml" in line["msg"] for line in orch.log())


def test_the_plan_is_cached_and_rebuilt_when_config_changes(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("hello_plugin", HELLO)
    env = {**orch.env, "ORCH_LOAD_PLUGINS": "hello_plugin"}
    project = str(orch.project_dir)
    first = plan.load(env, project)
    path = plan.cache_path(env, project)
    assert os.path.exists(path)
    cached = plan.load(env, project)
    assert cached.impls("orch_stop")[0]._function is None  # from the file: nothing imported
    assert cached.config == first.config
    config = orch.write_config('[plugin.hello_plugin]\ngreeting = "hi"\n')
    os.utime(config, ns=(1, 1))  # a change the mtime check must see, even within one tick
    assert plan.load(env, project).config["hello_plugin"]["greeting"] == "hi"
    with open(path) as f:
        assert json.load(f)["config"]["hello_plugin"]["greeting"] == "hi"


def test_a_plan_that_cannot_be_cached_is_built_all_the_same(orch: OrchState) -> None:
    """A full disk or a read-only state folder (here a file where the plans' folder goes):
    each run builds its own plan, orch-guard's deny included, where every hook went without
    plugins."""
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    (state / "plans").write_text("")
    forced = payload("PreToolUse", tool_input={"command": "git push --force origin main"})
    for _ in range(2):
        result = orch.run_hook(forced, ORCH_AGENT="a:1")
        assert result.exit_code == 2, result
        assert result.output is not None
        assert result.output["hookSpecificOutput"]["permissionDecision"] == "deny"
    said = [r for r in orch.log() if r["msg"].startswith("the plugin plan cannot be cached")]
    assert len(said) == 2 and "NotADirectoryError" in said[0]["error"], said
    report = orch.cli("doctor").stdout
    assert "FAIL plugins: loaded: " in report and "but the plan cannot be cached at" in report
    assert f"fix: free space on that disk, or make {state / 'plans'} a folder" in report


def test_a_plan_built_from_another_user_config_is_not_reused(
    orch: OrchState, tmp_path: Path
) -> None:
    """A process with another ``XDG_CONFIG_HOME`` (that config switching the guard off) and
    the same state folder: its cached plan watched only its own config, so it still looked
    true to the hooks of your own, and the guard stayed off."""
    other = tmp_path / "other-config"
    (other / "orch").mkdir(parents=True)
    (other / "orch" / "config.toml").write_text('[plugins]\ndisable = ["guard"]\n')
    push = payload("PreToolUse", tool_input={"command": "git push --force origin main"})
    assert orch.run_hook(push, XDG_CONFIG_HOME=str(other)).output is None
    assert orch.run_hook(push).exit_code == 2  # denied


def test_the_plan_is_rebuilt_when_a_plugin_changes(orch: OrchState) -> None:
    module = orch.plugin_module("hello_plugin", HELLO)
    orch.write_config('[plugins]\nload = ["hello_plugin"]\n')
    assert orch.run_hook(payload("Stop")).context == "hello!"
    module.write_text(HELLO.replace("def orch_stop", "def orch_post_tool_use"))
    os.utime(module, ns=(1, 1))
    assert orch.run_hook(payload("Stop")).context is None
    assert orch.run_hook(payload("PostToolUse")).context == "hello!"


def test_the_venvs_python_and_python3_share_one_plan(orch: OrchState) -> None:
    """``orch-hook`` runs as ``python3``, a program sending messages often as ``python``: they
    must not rebuild the plan for each other (a soak found every hook rebuilding it)."""
    project = str(orch.project_dir)
    probe = "from orch_core.plugins import plan; import os; plan.load(os.environ, os.environ['P'])"
    env = {**orch.env, "P": project}
    interpreters = [os.path.join(sys.prefix, "bin", name) for name in ("python3", "python")]
    subprocess.run([interpreters[0], "-c", probe], env=env, check=True, timeout=60)
    plans = Path(orch.env["ORCH_STATE_DIR"], "plans")
    (path,) = plans.glob("*.json")  # its name: the key of that process
    built = os.stat(path)
    subprocess.run([interpreters[1], "-c", probe], env=env, check=True, timeout=60)
    assert [p.name for p in plans.glob("*.json")] == [path.name]
    again = os.stat(path)
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "longer-than-one-import"])
def test_agents_starting_together_build_the_plan_once(orch: OrchState, slow: bool) -> None:
    """A fleet starts: its agents' first hooks find no plan. One builds it, the others wait
    for it, instead of each importing every plugin at once and running out of budget; also
    when the build takes longer than one plugin's import may (a loaded machine)."""
    builds = orch.root / "builds.log"
    orch.plugin_module(
        "counted",
        f"import os\nopen({str(builds)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from orch_core import hookimpl\n\n@hookimpl\ndef orch_stop():\n    return 'stop'\n",
    )
    pause = "import time\ntime.sleep(0.15)\n"  # each within the import's bound, not both
    orch.plugin_module("slow_a", pause)
    orch.plugin_module("slow_b", pause)
    load = '"slow_a", "slow_b", "counted"' if slow else '"counted"'
    orch.write_config(f"[plugins]\nload = [{load}]\n")
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)  # a busy machine
    hooks = [
        subprocess.Popen(
            [hook_script()], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=orch.env
        )
        for _ in range(4)
    ]
    for hook in hooks:  # all at once
        assert hook.stdin is not None
        hook.stdin.write(json.dumps(payload("PostToolUse")).encode())
        hook.stdin.close()
    for hook in hooks:
        assert hook.wait(30) == 0
    assert len(builds.read_text().splitlines()) == 1  # imported by the one that built the plan


def test_plans_beyond_the_last_two_hundred_are_pruned_oldest_first(orch: OrchState) -> None:
    """Each project a payload names gets a plan: their number stays bounded."""
    folder = Path(orch.env["ORCH_STATE_DIR"]) / "plans"
    folder.mkdir(parents=True)
    for n in range(plan.MAX_PLANS + 5):
        old = folder / f"{n:08x}.json"
        old.write_text("{}")
        (folder / f"{n:08x}.json.lock").write_text("")
        os.utime(old, (1_000_000 + n, 1_000_000 + n))
    plan.load(orch.env, str(orch.project_dir))  # builds and saves this project's plan
    kept = sorted(p.name for p in folder.glob("*.json"))
    assert len(kept) == plan.MAX_PLANS
    assert "00000000.json" not in kept and "00000006.json" in kept
    assert not (folder / "00000005.json.lock").exists()


def test_the_kits_plugin_modules_keep_the_authors_own_pythonpath(
    orch: OrchState, tmp_path: Path
) -> None:
    """A plugin's author runs the tests with ``PYTHONPATH`` at the plugin's sources; a module
    the kit writes must not take that away from the hooks the test runs."""
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "authors_plugin.py").write_text(
        "from orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_post_tool_use():\n    return Answer(context='from the sources')\n"
    )
    orch.env["PYTHONPATH"] = str(sources)
    orch.plugin_module(
        "kits_module",
        "from orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_post_tool_use():\n    return Answer(context='from the kit')\n",
    )
    result = orch.run_hook(payload("PostToolUse"), ORCH_LOAD_PLUGINS="authors_plugin,kits_module")
    assert sorted((result.context or "").split("\n\n")) == ["from the kit", "from the sources"]


def test_a_plan_built_without_a_plugins_folder_on_the_path_is_not_the_hooks(
    orch: OrchState,
) -> None:
    """``orch send`` from a shell without ``PYTHONPATH`` at a plugin the agents load (here:
    this test's own process) builds a plan that cannot import it: the agents' hooks, which
    can, must not take that plan from the cache and run without the plugin."""
    orch.plugin_module(
        "pathed",
        "from orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_post_tool_use():\n    return Answer(context='from the path')\n",
    )
    orch.write_config('[plugins]\nload = ["pathed"]\n')
    without = plan.load(orch.env, str(orch.project_dir))  # this process has no such folder
    assert "pathed" not in {impl.plugin for impl in without.impls("orch_post_tool_use")}
    assert orch.run_hook(payload("PostToolUse")).context == "from the path"


FIXED = """
from orch_core import Answer, hookimpl

@hookimpl
def orch_post_tool_use():
    return Answer(context="fixed")
"""


@pytest.mark.parametrize(
    "broken",
    [
        "this is not python(",  # cannot be parsed
        "import no_such_dependency_of_it",  # raises as it loads
        FIXED.replace("orch_post_tool_use", "orch_post_tool_usee"),  # a hook orch lacks
        FIXED.replace("orch_post_tool_use()", "orch_post_tool_use(evt)"),  # a wrong argument
        None,  # not written yet
    ],
    ids=["unparsable", "raises", "unknown-hook", "wrong-argument", "missing"],
)
def test_a_plugin_left_out_is_loaded_once_it_is_fixed(orch: OrchState, broken: str | None) -> None:
    """The cached plan watched only the plugins it loaded: one left out (orch-guard, say)
    stayed out after it was fixed, until some other change."""
    module = orch.plugin_module("fixme", broken or "")
    if broken is None:
        module.unlink()
    orch.write_config('[plugins]\nload = ["fixme"]\n')
    assert orch.run_hook(payload("PostToolUse")).context is None
    module.write_text(FIXED)
    assert orch.run_hook(payload("PostToolUse")).context == "fixed"


def test_a_plan_built_from_code_older_than_its_file_is_not_saved(orch: OrchState) -> None:
    """A long-lived process (``orch supervise``) that imported a plugin before it changed
    builds the plan from the code of before: saved, the hooks took it and never ran the
    hook the plugin gained."""
    module = orch.plugin_module("grows", HELLO)
    orch.write_config('[plugins]\nload = ["grows"]\n')
    grown = HELLO + "\n@hookimpl\ndef orch_post_tool_use():\n    return 'grown'\n"
    long_lived = (
        "import os, sys\n"
        "from orch_core.plugins import plan\n"
        "plan.load(os.environ, sys.argv[1])\n"
        "with open(sys.argv[2], 'w') as f:\n"
        "    f.write(sys.argv[3])\n"
        "os.utime(sys.argv[2], ns=(1, 1))\n"
        "stale = plan.load(os.environ, sys.argv[1]).impls('orch_post_tool_use')\n"
        "assert 'grows' not in {impl.plugin for impl in stale}\n"
    )
    subprocess.run(
        [sys.executable, "-c", long_lived, str(orch.project_dir), str(module), grown],
        env=orch.env, check=True, timeout=60,
    )  # fmt: skip
    assert orch.run_hook(payload("PostToolUse")).context == "grown"


def test_a_plugin_left_out_for_a_slow_import_is_tried_again_when_the_clock_went_back(
    orch: OrchState,
) -> None:
    """The plan that left it out was built while the clock was an hour ahead (a machine
    booting before its clock was set): it was to be tried again in a minute, not an hour."""
    slow = orch.root / "slow"
    slow.touch()
    orch.plugin_module(
        "slow_once",
        f"import os, time\nif os.path.exists({str(slow)!r}):\n    time.sleep(3)\n"
        "from orch_core import Answer, hookimpl\n\n"
        "@hookimpl\ndef orch_post_tool_use():\n    return Answer(context='in')\n",
    )
    orch.write_config('[plugins]\nload = ["slow_once"]\n')
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)  # a busy machine
    ahead = (
        "import os, sys, time\n"
        "from orch_core.plugins import plan\n"
        "real = time.time\n"
        "time.time = lambda: real() + 3600\n"
        "built = plan.load(os.environ, sys.argv[1], import_timeout=0.2)\n"
        "assert 'slow_once' not in {impl.plugin for impl in built.impls('orch_post_tool_use')}\n"
    )
    subprocess.run(
        [sys.executable, "-c", ahead, str(orch.project_dir)],
        env=orch.env, check=True, timeout=60,
    )  # fmt: skip
    slow.unlink()
    assert orch.run_hook(payload("PostToolUse")).context == "in"
