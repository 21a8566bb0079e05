"""orch: keep a fleet of Claude Code agents fed, rebriefed and running, through hooks.

Plugin authors need one name, ``from orch_core import hookimpl``; plugins that block or decide
also return an :class:`Answer`.
"""

from orch_core.answers import Answer
from orch_core.markers import hookimpl

__version__ = "0.1.0"
__all__ = ["Answer", "__version__", "hookimpl"]
