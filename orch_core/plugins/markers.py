"""The ``hookimpl`` marker plugins use, kept free of pluggy imports.

``orch-hook`` imports plugin modules on every tool call; pluggy costs about 10 ms to import, more
than the hook's whole budget for overhead. The marker only records options on the function; the
plugin manager (:mod:`orch_core.plugins.loader`, off the hot path) turns them into pluggy's own.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])
else:

    def overload(function):  # the last definition is the one that runs
        return function


ATTRIBUTE = "orch_hookimpl"


class HookimplMarker:
    """Mark a function as an orch hook implementation, as ``pluggy.HookimplMarker`` would.

    :param tryfirst: call this implementation before the others.
    :param trylast: call it after the others.
    :param specname: the hook it implements, when the function has another name.
    :param optionalhook: do not complain when no such hook exists (e.g. a newer orch's hook).
    """

    @overload
    def __call__(self, function: F) -> F: ...

    @overload
    def __call__(  # noqa: F811
        self,
        function: None = None,
        *,
        tryfirst: bool = False,
        trylast: bool = False,
        specname: str | None = None,
        optionalhook: bool = False,
    ) -> Callable[[F], F]: ...

    def __call__(  # noqa: F811
        self,
        function: F | None = None,
        *,
        tryfirst: bool = False,
        trylast: bool = False,
        specname: str | None = None,
        optionalhook: bool = False,
    ) -> F | Callable[[F], F]:
        options = {
            "tryfirst": tryfirst,
            "trylast": trylast,
            "specname": specname,
            "optionalhook": optionalhook,
        }

        def mark(func: F) -> F:
            setattr(func, ATTRIBUTE, options)
            return func

        return mark(function) if function is not None else mark


hookimpl = HookimplMarker()
