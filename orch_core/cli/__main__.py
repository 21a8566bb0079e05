"""``python -m orch_core.cli``: the ``orch`` command with the running interpreter, for a program
that must run an orch command (a plugin's, say) without looking ``orch`` up on PATH."""

from orch_core.cli import run

run()
