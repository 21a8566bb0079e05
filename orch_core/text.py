"""Text for terminals and for the model: untrusted text made inert, cut, and counted.

Message bodies, tool targets and briefings come from anyone who can send a message or commit
to a project. Typed into an agent's pane (``orch send --push``) a control character is a
keystroke: ``ESC [201~`` ends a bracketed paste, ``CR`` submits, ``Ctrl-C`` interrupts; printed
to an operator's terminal, ``ESC ] 52`` writes the clipboard and ``ESC ] 0`` the title. Every
control character but newline and tab is shown as an escape instead (``\\x1b``); ``--json``
output stays exact.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    """``text`` with every control character but newline and tab escaped (``\\r\\n`` is a
    newline)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n"))


def shortened(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` characters, an ellipsis saying where."""
    return text if len(text) <= most else text[: most - 1] + "…"


def length(text: str) -> int:
    """``text``'s length as Claude Code counts it: UTF-16 code units, two for an emoji. Its
    cap on a hook's context (10,000) is in these (tests/e2e/test_harness.py)."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def head(text: str, most: int) -> str:
    """The longest start of ``text`` of at most ``most`` characters as :func:`length` counts
    them (an emoji is never cut in two)."""
    if text.isascii():
        return text[:most]
    return text.encode("utf-16-le", "surrogatepass")[: 2 * most].decode("utf-16-le", "ignore")
