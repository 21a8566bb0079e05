"""The one base for orch's expected errors: bad input or an unusable resource, said in one line.

The CLI turns any of them into ``Error: ...`` and exit 1 (:mod:`orch_core.cli.errors`); the hook
path logs them and carries on.
"""


class OrchError(Exception):
    """A one-line reason something cannot be done; nothing was changed."""
