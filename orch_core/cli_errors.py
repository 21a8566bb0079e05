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
    """Run ``action``; an :class:`OrchError` or an unusable database becomes a click error (a
    damaged one names the newest backup and how to put it back)."""
    try:
        return action()
    except OrchError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(database_error(exc)) from None


def database_error(exc: sqlite3.Error) -> str:
    db = paths.db_path(os.environ)
    if damaged(exc):
        from orch_core import backup

        return f"{db}: {exc}; {backup.advice(db)}"
    return f"{db}: {exc}"


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, not missing)."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
