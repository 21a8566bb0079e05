"""Untrusted text made inert before it reaches a terminal.

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
