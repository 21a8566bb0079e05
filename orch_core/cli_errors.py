"""How every ``orch`` command reports an expected error: one line on stderr, exit 1."""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

import click

from orch_core import paths
from orch_core.errors import OrchError

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``; an :class:`OrchError` or an unusable database becomes a click error."""
    try:
        return action()
    except OrchError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(f"{paths.db_path(os.environ)}: {exc}") from None
