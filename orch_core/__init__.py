"""orch: keep a fleet of Claude Code agents fed, rebriefed and running, through hooks.

Plugin authors need one name, ``from orch_core import hookimpl``; plugins that block or decide
also return an :class:`Answer`, and plugins with settings declare each as a :class:`Setting`.
"""

from orch_core.hook.answers import Answer
from orch_core.plugins.markers import hookimpl
from orch_core.plugins.settings import Setting

__version__ = "0.1.0"
__all__ = ["Answer", "Setting", "__version__", "hookimpl"]
