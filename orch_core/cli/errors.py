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
    options such as ``--version``) and while running; and whose commands listed in ``lazy``
    (name: ``"module:attribute"``) are imported only when asked for, so ``orch send`` does not
    pay for every other command's imports."""

    lazy: dict[str, str] = {}  # noqa: RUF012 - set once, by the module that builds the group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            import importlib

            module, _, attribute = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line() -> Iterator[None]:
    """An :class:`OrchError` or an unusable database becomes a click error (a damaged one names
    the newest backup and how to put it back; a server's error names the server)."""
    try:
        yield
    except OrchError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(database_error(exc)) from None
    except UnicodeEncodeError as exc:  # bytes in argv that are not UTF-8 come as surrogates
        bad = exc.object[exc.start : exc.end]
        raise click.ClickException(f"{bad!r} is not text (not UTF-8)") from None
    except Exception as exc:
        from orch_core.storage import server_error

        said = server_error(exc, os.environ)
        if said is None:
            raise
        raise click.ClickException(said) from None


def database_error(exc: sqlite3.Error) -> str:
    db = paths.db_path(os.environ)
    if damaged(exc):
        from orch_core.storage import backup

        return f"{db}: {exc}; {backup.advice(db)}"
    return f"{db}: {exc}"


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, not missing)."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
