"""orch-guard: deny (or ask before) shell commands a team never wants an agent to run.

Ten agents with Bash are ten chances a day for ``git push --force`` to main. The guard checks
each Bash call on PreToolUse against regular expressions and answers ``deny`` or ``ask``; orch
folds that with the other plugins' answers (deny > ask > allow). Configure it in your own config,
and per project::

    [plugin.guard]
    deny = ['\\bgit\\s+push\\b.*--force']
    ask = ['\\bgit\\s+reset\\s+--hard\\b']

A project's rules add to yours (or to the defaults), never replace them: a cloned repository may
forbid more, not less.
"""

from __future__ import annotations

import re

from orch_core import Answer, Setting, hookimpl
from orch_core.plugins.settings import regexes

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext

SETTINGS: dict[str, Any] = {
    "deny": Setting(
        [
            r"\brm\s+-[a-zA-Z]*[rR][a-zA-Z]*\s+(-[a-zA-Z]+\s+)*(/|~|\$HOME)(\s|$)",
            # forced (--force, -f, -uf, +main), before or after the branch, over lines too
            r"(?s)\bgit\b.*?\bpush\b(?=.*(\s--force\b|\s-[a-zA-Z]*f|\s\+))"
            r"(?=.*\b(main|master)\b)",
            r"\bmkfs(\.\w+)?\b",
        ],
        check=regexes,
        extend_only=True,
    ),
    "ask": Setting(
        [r"\bgit\s+reset\s+--hard\b", r"\bgit\s+clean\s+-[a-zA-Z]*f"],
        check=regexes,
        extend_only=True,
    ),
}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


def _first_match(patterns: object, command: str) -> str | None:
    if not isinstance(patterns, list):
        return None
    for pattern in patterns:
        if isinstance(pattern, str) and re.search(pattern, command):
            return pattern
    return None


@hookimpl
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> Answer | None:
    if event.tool_name != "Bash":
        return None
    command = event.tool_input.get("command")
    if not isinstance(command, str):
        return None
    for decision in ("deny", "ask"):
        pattern = _first_match(ctx.config.get(decision), command)
        if pattern:
            reason = f"orch-guard: this command matches the project's {decision} rule {pattern!r}"
            return Answer(permission=decision, reason=reason)
    return None
