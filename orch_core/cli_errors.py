"""How every ``orch`` command reports an expected error: one line on stderr, exit 1.

The boundary is :class:`OrchGroup`, the class of the ``orch`` group: whatever a command raises
that orch expects (an :class:`OrchError`, an unusable database) becomes ``Error: ...``, for
built-in commands and the commands plugins register alike. Commands just raise.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING

import click

from orch_core import paths
from orch_core.errors import OrchError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class OrchGroup(click.Group):
    """A click group whose commands' expected errors become one line, while parsing (eager
    options such as ``--version``) and while running."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line() -> Iterator[None]:
    """An :class:`OrchError` or an unusable database becomes a click error (a damaged one names
    the newest backup and how to put it back)."""
    try:
        yield
    except OrchError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(database_error(exc)) from None
    except UnicodeEncodeError as exc:  # bytes in argv that are not UTF-8 come as surrogates
        bad = exc.object[exc.start : exc.end]
        raise click.ClickException(f"{bad!r} is not text (not UTF-8)") from None


def database_error(exc: sqlite3.Error) -> str:
    db = paths.db_path(os.environ)
    if damaged(exc):
        from orch_core import backup

        return f"{db}: {exc}; {backup.advice(db)}"
    return f"{db}: {exc}"


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, not missing)."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
