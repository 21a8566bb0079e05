"""Every hook is documented and exercised by a test (the way datasette keeps itself honest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orch_core import api, events, hookimpl, hookspecs
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

ALL_HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("orch_"))
EVENT_HOOKS = {events.hook_name(name) for name in events.EVENTS}


@pytest.mark.parametrize("name", ALL_HOOKS)
def test_every_hook_is_documented(name: str) -> None:
    doc = getattr(hookspecs, name).__doc__
    assert doc and len(doc.strip()) > 20


def test_every_framework_hook_is_exercised_by_a_test() -> None:
    """Event hooks are all called in tests/test_dispatch.py; the others by name."""
    sources = "".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    missing = [n for n in ALL_HOOKS if n not in EVENT_HOOKS and f"def {n}(" not in sources]
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
