"""One test per event hook, ``test_hook_orch_<event>``, each through the real dispatcher: the hook
gets its own event class and the agent, and what it answers reaches the reply exactly as the
hook's ``:answers:`` line in hookspecs.py says (context, a block of the event's kind, or
nothing). The flags in events.py are checked against those lines here too."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from orch_core import Answer, hookimpl
from orch_core.hook import events
from orch_core.plugins import hookspecs
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload


def declared(name: str) -> set[str]:
    """What the hookspec's ``:answers:`` line says an event's answer may carry."""
    doc = getattr(hookspecs, events.hook_name(name)).__doc__ or ""
    (line,) = re.findall(r":answers: (.+)", doc)
    return {part.strip() for part in line.split(",")} - {"none"}


def flags(cls: type[events.Event]) -> set[str]:
    found = {"context"} if cls.takes_context else set()
    if cls.blocks_by == "permission":
        found.add("permission")
    elif cls.blocks_by:
        found.add(f"block ({cls.blocks_by})")
    return found


@pytest.mark.parametrize("name", sorted(events.EVENTS))
def test_event_flags_follow_the_hookspec_docs(name: str) -> None:
    assert flags(events.EVENTS[name]) == declared(name)


def run_with(orch: OrchState, name: str, answer: object) -> tuple[Any, list[Any]]:
    seen: list[tuple[events.Event, str | None]] = []

    def impl(event: events.Event, ctx: Any) -> object:
        seen.append((event, ctx.agent))
        return answer

    plugin = type("Plugin", (), {events.hook_name(name): staticmethod(hookimpl(impl))})()
    orch.extra.clear()
    orch.register(plugin, "answers")
    return orch.run(payload(name), ORCH_AGENT="proj:1", ORCH_LOAD_PLUGINS=""), seen


def exercise(name: str) -> Callable[[OrchState], None]:
    cls = events.EVENTS[name]
    can = declared(name)

    def test(orch: OrchState) -> None:
        result, seen = run_with(orch, name, "a word for the model")
        assert [(type(e), agent) for e, agent in seen] == [(cls, "proj:1")]
        assert seen[0][0].data == payload(name)
        if "context" in can:
            assert result.context == "a word for the model"
        else:
            assert result.output is None and result.exit_code == 0

        blocked, _ = run_with(orch, name, Answer(block="not now"))
        (outcome,) = blocked.plugins
        if "block (decision)" in can:
            assert (blocked.output or {})["decision"] == "block"
            assert blocked.exit_code == 2
        elif "block (exit)" in can:
            assert (blocked.exit_code, blocked.stderr) == (2, "not now")
        elif "block (context)" in can:
            assert (blocked.exit_code, blocked.context) == (0, "not now")
        elif "permission" in can:
            specific = (blocked.output or {})["hookSpecificOutput"]
            assert (specific["permissionDecision"], blocked.exit_code) == ("deny", 2)
        else:
            assert outcome["outcome"] == "invalid" and "cannot be blocked" in outcome["error"]
            assert (blocked.output, blocked.exit_code) == (None, 0)
        (run,) = orch.store.runs(1)
        assert (run["event"], run["agent"]) == (name, "proj:1")

    test.__doc__ = f"{name}: its event object, and answers as ``{', '.join(sorted(can))}``."
    return test


for _name in events.EVENTS:
    globals()[f"test_hook_{events.hook_name(_name)}"] = exercise(_name)
