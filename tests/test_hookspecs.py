"""Every hook is documented and exercised by a test (the way datasette keeps itself honest)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orch_core import api, hookimpl
from orch_core.hook import events
from orch_core.plugins import hookspecs
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

ALL_HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("orch_"))
EVENT_HOOKS = {events.hook_name(name) for name in events.EVENTS}


@pytest.mark.parametrize("name", ALL_HOOKS)
def test_every_hook_is_documented(name: str) -> None:
    doc = getattr(hookspecs, name).__doc__
    assert doc and len(doc.strip()) > 20


def test_every_hook_has_a_test_named_for_it() -> None:
    """``test_hook_<hook>...`` for each, as datasette does: the event hooks' are made in
    test_event_hooks.py, the framework hooks' are written beside what they are about."""
    import test_event_hooks

    written: set[str] = set()
    for path in Path(__file__).parent.rglob("test_*.py"):
        written |= set(re.findall(r"def (test_hook_orch_\w+)\(", path.read_text()))
    tested = set(vars(test_event_hooks)) | written
    missing = [n for n in ALL_HOOKS if not any(t.startswith(f"test_hook_{n}") for t in tested)]
    assert missing == []


def test_hook_orch_hook_answered_sees_whether_the_event_was_blocked(orch: OrchState) -> None:
    seen: list[tuple[str, bool]] = []

    class Blocker:
        @hookimpl
        def orch_stop(self) -> Any:
            from orch_core import Answer

            return Answer(block="keep going")

    class Watcher:
        @hookimpl
        def orch_hook_answered(self, event: events.Event, blocked: bool) -> None:
            seen.append((event.name, blocked))

    orch.register(Watcher(), "watcher")
    orch.run(payload("Stop"), ORCH_LOAD_PLUGINS="")
    orch.register(Blocker(), "blocker")
    orch.run(payload("Stop"), ORCH_LOAD_PLUGINS="")
    assert seen == [("Stop", False), ("Stop", True)]


def test_hook_orch_text_left_out_is_called_on_the_plugins_left_out_only(
    orch: OrchState,
) -> None:
    """Two texts that would pass Claude Code's cap together: the second in call order is left
    out, and only its plugin hears of it, with what its event hook kept in ``ctx.notes``."""
    heard: list[tuple[str, str, object]] = []

    def wordy(name: str, size: int) -> object:
        class Wordy:
            @hookimpl
            def orch_post_tool_use(self, ctx: Any) -> str:
                ctx.notes["said"] = size
                return name * size

            @hookimpl
            def orch_text_left_out(self, event: events.Event, ctx: Any) -> None:
                heard.append((ctx.plugin, event.name, ctx.notes.get("said")))

        return Wordy()

    orch.register(wordy("a", 6000), "first")  # the most recently registered is called first
    orch.register(wordy("b", 3000), "second")
    result = orch.run(payload("PostToolUse"), ORCH_LOAD_PLUGINS="")
    assert result.context == "b" * 3000 + "\n\n" + "a" * 6000
    assert heard == []
    orch.register(wordy("c", 2000), "third")
    result = orch.run(payload("PostToolUse"), ORCH_LOAD_PLUGINS="")
    assert result.context == "c" * 2000 + "\n\n" + "b" * 3000
    assert heard == [("first", "PostToolUse", 6000)]


ENQUEUED = """
import json
from orch_core import hookimpl

@hookimpl
def orch_message_enqueued(message, ctx):
    with open(ctx.env["ENQUEUED_LOG"], "a") as log:
        log.write(json.dumps([message["agent"], message["body"]]) + "\\n")
"""


def test_hook_orch_message_enqueued_hears_each_new_message(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("enqueued_observer", ENQUEUED)
    orch.env["ENQUEUED_LOG"] = str(orch.root / "enqueued.log")
    orch.write_config('[plugins]\nload = ["enqueued_observer"]\n')
    api.send("p:1", "first", env=orch.env, key="k")
    api.send("p:1", "first", env=orch.env, key="k")  # a duplicate is not news
    assert orch.cli("send", "p:2", "second").returncode == 0
    lines = (orch.root / "enqueued.log").read_text().splitlines()
    assert lines == ['["p:1", "first"]', '["p:2", "second"]']


DECLARES = """
from orch_core import Setting, hookimpl

@hookimpl
def orch_config_defaults():
    return {"greeting": Setting("hello"), "times": Setting(1, min=1, max=3)}

@hookimpl
def orch_stop(ctx):
    return " ".join([ctx.config["greeting"]] * ctx.config["times"])
"""


def test_hook_orch_config_defaults_declares_checked_settings(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("declares", DECLARES)
    orch.write_config('[plugins]\nload = ["declares"]\n[plugin.declares]\ntimes = 2\n')
    assert orch.run_hook(payload("Stop"), ORCH_LOAD_PLUGINS="declares").context == "hello hello"
    orch.write_config('[plugins]\nload = ["declares"]\n[plugin.declares]\ntimes = 9\n')
    assert orch.run_hook(payload("Stop"), ORCH_LOAD_PLUGINS="declares").context == "hello"
    doctor = orch.cli("doctor").stdout
    assert "[plugin.declares] times = 9: must be at most 3; the default 1 is used" in doctor


CHECK_FAILS = """
from orch_core import Setting, hookimpl

def fussy(value):
    return {"ok": None}[value]  # a KeyError for anything else: the check's own bug

@hookimpl
def orch_config_defaults():
    return {"mode": Setting("ok", check=fussy)}

@hookimpl
def orch_stop(ctx):
    return "mode " + ctx.config["mode"]
"""


def test_a_settings_check_that_raises_costs_that_key_not_the_plan(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A project's value that makes a plugin's check fail some other way than ``ValueError``
    is that key's error: every plugin still runs, orch-guard too."""
    orch_module("fussy", CHECK_FAILS)
    orch.write_config('[plugins]\nload = ["fussy"]\n[plugin.fussy]\nmode = "odd"\n')
    assert orch.run_hook(payload("Stop"), ORCH_LOAD_PLUGINS="fussy").context == "mode ok"
    forced = payload("PreToolUse", tool_input={"command": "git push --force origin main"})
    assert orch.run_hook(forced).output is not None  # the guard, in the same plan
    doctor = orch.cli("doctor").stdout
    assert "[plugin.fussy] mode = \"odd\": cannot be checked (KeyError('odd'))" in doctor


DELIVERED = """
import json
from orch_core import hookimpl

@hookimpl
def orch_message_delivered(message, ctx):
    with open(ctx.env["DELIVERED_LOG"], "a") as log:
        log.write(json.dumps([ctx.agent, message["id"]]) + "\\n")
"""


def test_hook_orch_message_delivered_hears_each_message_handed_over(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("delivered_observer", DELIVERED)
    orch.env["DELIVERED_LOG"] = str(orch.root / "delivered.log")
    orch.write_config('[plugins]\nload = ["delivered_observer"]\n')
    sent = [api.send("p:1", text, env=orch.env)[0]["id"] for text in ("one", "two")]
    result = orch.run_hook(payload("PostToolUse"), ORCH_AGENT="p:1")
    assert result.context is not None
    lines = (orch.root / "delivered.log").read_text().splitlines()
    assert lines == [f'["p:1", "{mid}"]' for mid in sent]
    assert orch.run_hook(payload("PostToolUse"), ORCH_AGENT="p:1").context is None
    assert len((orch.root / "delivered.log").read_text().splitlines()) == 2  # once each
