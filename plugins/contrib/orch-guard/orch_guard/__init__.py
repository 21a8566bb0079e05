"""orch-guard: deny (or ask before) shell commands a team never wants an agent to run.

Ten agents with Bash are ten chances a day for ``git push --force`` to main. The guard checks
each Bash (and Monitor) call on PreToolUse against regular expressions and answers ``deny`` or
``ask``; orch folds that with the other plugins' answers (deny > ask > allow). Configure it in
your own config, and per project::

    [plugin.guard]
    deny = ['\\bgit\\s+push\\b.*--force']
    ask = ['\\bgit\\s+reset\\s+--hard\\b']

A project's rules add to yours (or to the defaults), never replace them: a cloned repository may
forbid more, not less. They are checked after yours: Python's regular expressions have no time
limit, and a project's rule that never finishes could otherwise keep one of yours from
answering. Where one of your rules asks, the project's deny rules still beat it, checked in a
process of their own given half of what is left of the budget (past it, the guard asks). So
are all of them in the host's supervisor (``ctx.shared``): a regular expression holds the
interpreter lock while it runs, and there it would hold up every agent's hooks.

A rule is searched for anywhere in the command's text. The built-in rules are the exception:
each is matched once from the start of every simple command (the text between ``;``, ``&&``,
``||``, ``|``, ``&`` and line ends, continued lines joined), with atomic groups, so that checking
takes time linear in the command's length: a slow rule would let the hook's backstop end the
process, and Claude would run the command unchecked.
"""

from __future__ import annotations

import json
import re
import sys
import time

from orch_core import Answer, Setting, hookimpl
from orch_core.plugins.settings import regexes

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext

#: A longer command is asked about rather than checked: a user's rule may be slow on it.
MAX_COMMAND = 100_000
#: The tools that run ``tool_input.command`` in a shell: Monitor streams a command's output,
#: and an agent told not to wait with ``sleep`` in Bash is pointed at it.
SHELL_TOOLS = ("Bash", "Monitor")

#: Where a simple command ends; ``2>&1``, ``>&2`` and ``&>`` are redirections, not ``&``.
_SEPARATOR = re.compile(r"&&|\|\||(?<![<>])&(?!>)|[;|\n]")

# Each built-in rule finds the first ``git`` (``rm``, ...) of a simple command and commits to it
# (atomic ``(?>...)``); lookaheads then look at the rest once. A later ``git`` could only see
# less of the command than the first, so nothing is missed, and nothing is tried twice.
_RM_ROOT_OR_HOME = (  # /, ~, $HOME, ${HOME}; then /, ./ or ../; then *, .* or */; quoted or
    # not; any options; ending the word, a subshell's ``(...)``, ``$(...)`` or backquotes, or at
    # a redirection
    r"(?>.*?\brm\s)"
    r"(?=.*?(?<!\S)[\"']?+(?:/|~|\$HOME|\$\{HOME\})(?:/|\.\.?+/|[\"'])*+(?:\.?+\*/*+)?+"
    r"[\"']?+(?![^\s)`<>]))"
)
_FORCED_PUSH_TO_MAIN = (
    r"(?>.*?\bgit\b)(?>.*?\bpush\b)"
    r"(?=.*?(?:\s--force\b|\s-[a-zA-Z]*f|\s\+))"  # --force, -f, -uf, +main
    r"(?=.*?\b(?:main|master)\b)"
)
_MKFS = r"(?>.*?\bmkfs\b)"
_RESET_HARD = r"(?>.*?\bgit\b)(?>.*?\breset\b)(?=.*?\s--hard\b)"
_CLEAN_FORCED = r"(?>.*?\bgit\b)(?>.*?\bclean\b)(?=.*?\s(?:-[a-zA-Z]*f|--force\b))"

#: The rm rule before it took ``/./*`` and ``/*/``: a copy of it in your config keeps its
#: built-in matching.
_RM_ROOT_OR_HOME_0 = (
    r"(?>.*?\brm\s)"
    r"(?=.*?(?<!\S)[\"']?+(?:/|~|\$HOME|\$\{HOME\})/*+[\"']?+/*+(?:\.?+\*)?+[\"']?+"
    r"(?![^\s)`<>]))"
)

BUILT_IN = frozenset({_RM_ROOT_OR_HOME, _RM_ROOT_OR_HOME_0, _FORCED_PUSH_TO_MAIN, _MKFS,
                      _RESET_HARD, _CLEAN_FORCED})  # fmt: skip

SETTINGS: dict[str, Any] = {
    "deny": Setting(
        [_RM_ROOT_OR_HOME, _FORCED_PUSH_TO_MAIN, _MKFS], check=regexes, extend_only=True
    ),
    "ask": Setting([_RESET_HARD, _CLEAN_FORCED], check=regexes, extend_only=True),
}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


def joined(command: str) -> str:
    """The command with its continued lines (``\\`` at a line's end) joined, as the shell
    reads it: a rule's ``.*`` stops at a line's end, and Claude writes a long pipe over several
    lines."""
    return command.replace("\\\n", " ")


def simple_commands(command: str) -> list[str]:
    """The command's simple commands, continued lines joined (in linear time)."""
    return _SEPARATOR.split(joined(command))


def _first_match(patterns: list[str], command: str, parts: list[str]) -> str | None:
    for pattern in patterns:
        if pattern in BUILT_IN:
            if any(re.match(pattern, part) for part in parts):
                return pattern
        elif re.search(pattern, command):
            return pattern
    return None


#: :func:`_first_match` in a process of its own (``python -I -S``: nothing but ``re``).
_MATCH_APART = """
import json, re, sys
patterns, command, parts = json.load(sys.stdin)
for pattern, built_in in patterns:
    if any(re.match(pattern, p) for p in parts) if built_in else re.search(pattern, command):
        print(json.dumps(pattern))
        break
"""


def _first_match_within(
    patterns: list[str], command: str, parts: list[str], seconds: float
) -> str | None:
    """:func:`_first_match` in a process of its own, ended after ``seconds``
    (``TimeoutError``): a rule that never finishes cannot hold this one's interpreter."""
    import subprocess  # only here: 5 ms off the import of every hook that loads the guard

    given = json.dumps([[[p, p in BUILT_IN] for p in patterns], command, parts])
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _MATCH_APART],
            input=given, capture_output=True, text=True, timeout=max(0.01, seconds), check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
    found: str | None = json.loads(done.stdout) if done.stdout.strip() else None
    return found


def _rules(ctx: HookContext, decision: str) -> tuple[list[str], list[str]]:
    """Your rules for ``decision`` (or the defaults), and the project's after them."""
    patterns = ctx.config.get(decision)
    if not isinstance(patterns, list):
        return [], []
    added = ctx.added_by_project(decision)
    rules = [p for p in patterns if isinstance(p, str)]
    return [p for p in rules if p not in added], [p for p in rules if p in added]


def _answer(decision: str, pattern: str, yours: bool, also: str = "") -> Answer:
    whose = "" if yours else "the project's "
    reason = f"orch-guard: this command matches {whose}{decision} rule {pattern!r}{also}"
    return Answer(permission=decision, reason=reason)


@hookimpl
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> Answer | None:
    if event.tool_name not in SHELL_TOOLS:
        return None
    command = event.tool_input.get("command")
    if not isinstance(command, str):
        return None
    if len(command) > MAX_COMMAND and (ctx.config.get("deny") or ctx.config.get("ask")):
        reason = f"orch-guard: a command over {MAX_COMMAND} characters is too long to check"
        return Answer(permission="ask", reason=reason)
    command = joined(command)  # your rules and the project's see the lines the shell runs
    parts = simple_commands(command)
    your_deny, their_deny = _rules(ctx, "deny")
    your_ask, their_ask = _rules(ctx, "ask")
    pattern = _first_match(your_deny, command, parts)
    if pattern:
        return _answer("deny", pattern, yours=True)
    asked = _first_match(your_ask, command, parts)
    if asked and not their_deny:
        return _answer("ask", asked, yours=True)
    theirs = their_deny if asked else [*their_deny, *their_ask]  # deny first: it wins
    if not theirs:
        return None
    if asked or ctx.shared:  # bounded: a slow rule must not cost your ask, nor other hooks
        left = (ctx.deadline or time.time() + 0.5) - time.time()
        try:
            pattern = _first_match_within(theirs, command, parts, left / 2)
        except Exception as exc:  # too slow, or no process to check them in: the guard asks
            why = "took too long" if isinstance(exc, TimeoutError) else "could not be checked"
            if asked:
                return _answer("ask", asked, True, f" (the project's deny rules {why})")
            return Answer(permission="ask", reason=f"orch-guard: the project's rules {why}")
    else:  # past the budget, orch-hook's backstop ends this run alone
        pattern = _first_match(theirs, command, parts)
    if pattern:
        return _answer("deny" if pattern in their_deny else "ask", pattern, yours=False)
    return _answer("ask", asked, yours=True) if asked else None
