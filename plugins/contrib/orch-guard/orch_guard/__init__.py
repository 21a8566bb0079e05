"""orch-guard: deny (or ask before) shell commands a team never wants an agent to run.

Ten agents with Bash are ten chances a day for ``git push --force`` to main. The guard checks
each Bash call on PreToolUse against regular expressions and answers ``deny`` or ``ask``; orch
folds that with the other plugins' answers (deny > ask > allow). Configure it in your own config,
and per project::

    [plugin.guard]
    deny = ['\\bgit\\s+push\\b.*--force']
    ask = ['\\bgit\\s+reset\\s+--hard\\b']

A project's rules add to yours (or to the defaults), never replace them: a cloned repository may
forbid more, not less. They are checked after yours, deny and ask alike: Python's regular
expressions have no time limit, and a project's rule that never finishes could otherwise keep
one of yours from answering.

A rule is searched for anywhere in the command's text. The built-in rules are the exception:
each is matched once from the start of every simple command (the text between ``;``, ``&&``,
``||``, ``|``, ``&`` and line ends, continued lines joined), with atomic groups, so that checking
takes time linear in the command's length: a slow rule would let the hook's backstop end the
process, and Claude would run the command unchecked.
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

#: A longer command is asked about rather than checked: a user's rule may be slow on it.
MAX_COMMAND = 100_000

#: Where a simple command ends; ``2>&1``, ``>&2`` and ``&>`` are redirections, not ``&``.
_SEPARATOR = re.compile(r"&&|\|\||(?<![<>])&(?!>)|[;|\n]")

# Each built-in rule finds the first ``git`` (``rm``, ...) of a simple command and commits to it
# (atomic ``(?>...)``); lookaheads then look at the rest once. A later ``git`` could only see
# less of the command than the first, so nothing is missed, and nothing is tried twice.
_RM_ROOT_OR_HOME = (  # /, ~, $HOME, ${HOME}; then /, /*, /.*; quoted or not; any options
    r"(?>.*?\brm\s)"
    r"(?=.*?(?<!\S)[\"']?+(?:/|~|\$HOME|\$\{HOME\})/*+[\"']?+/*+(?:\.?+\*)?+[\"']?+(?!\S))"
)
_FORCED_PUSH_TO_MAIN = (
    r"(?>.*?\bgit\b)(?>.*?\bpush\b)"
    r"(?=.*?(?:\s--force\b|\s-[a-zA-Z]*f|\s\+))"  # --force, -f, -uf, +main
    r"(?=.*?\b(?:main|master)\b)"
)
_MKFS = r"(?>.*?\bmkfs\b)"
_RESET_HARD = r"(?>.*?\bgit\b)(?>.*?\breset\b)(?=.*?\s--hard\b)"
_CLEAN_FORCED = r"(?>.*?\bgit\b)(?>.*?\bclean\b)(?=.*?\s(?:-[a-zA-Z]*f|--force\b))"

BUILT_IN = frozenset({_RM_ROOT_OR_HOME, _FORCED_PUSH_TO_MAIN, _MKFS, _RESET_HARD, _CLEAN_FORCED})

SETTINGS: dict[str, Any] = {
    "deny": Setting(
        [_RM_ROOT_OR_HOME, _FORCED_PUSH_TO_MAIN, _MKFS], check=regexes, extend_only=True
    ),
    "ask": Setting([_RESET_HARD, _CLEAN_FORCED], check=regexes, extend_only=True),
}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


def simple_commands(command: str) -> list[str]:
    """The command's simple commands, continued lines joined (in linear time)."""
    return _SEPARATOR.split(command.replace("\\\n", " "))


def _first_match(patterns: object, command: str, parts: list[str]) -> str | None:
    if not isinstance(patterns, list):
        return None
    for pattern in patterns:
        if not isinstance(pattern, str):
            continue
        if pattern in BUILT_IN:
            if any(re.match(pattern, part) for part in parts):
                return pattern
        elif re.search(pattern, command):
            return pattern
    return None


@hookimpl
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> Answer | None:
    if event.tool_name != "Bash":
        return None
    command = event.tool_input.get("command")
    if not isinstance(command, str):
        return None
    if len(command) > MAX_COMMAND and (ctx.config.get("deny") or ctx.config.get("ask")):
        reason = f"orch-guard: a command over {MAX_COMMAND} characters is too long to check"
        return Answer(permission="ask", reason=reason)
    parts = simple_commands(command)
    added = {decision: ctx.added_by_project(decision) for decision in ("deny", "ask")}
    for yours in (True, False):
        for decision in ("deny", "ask"):
            patterns = ctx.config.get(decision)
            if not isinstance(patterns, list):
                continue
            pattern = _first_match(
                [p for p in patterns if (p not in added[decision]) == yours], command, parts
            )
            if pattern:
                whose = "" if yours else "the project's "
                reason = f"orch-guard: this command matches {whose}{decision} rule {pattern!r}"
                return Answer(permission=decision, reason=reason)
    return None
