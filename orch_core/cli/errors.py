"""What an expected error says: one line, for every ``orch`` command.

Commands just raise. Whatever orch expects (an :class:`OrchError`, an unusable database, a
server that cannot be reached) becomes ``Error: ...`` and exit 1 at one boundary: the ``orch``
group (:class:`orch_core.cli.group.OrchGroup`) for every command, built-in or a plugin's, and
``orch send``'s quick path (:mod:`orch_core.cli.send`). This module imports no click.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from orch_core import paths
from orch_core.errors import OrchError

TYPE_CHECKING = False  # importing typing costs each orch send ~4 ms

if TYPE_CHECKING:
    from collections.abc import Mapping


def said(exc: BaseException) -> str | None:
    """The one line an expected error says (a damaged database names the newest backup and how
    to put it back; a server's error names the server); ``None`` for anything else, a bug."""
    if isinstance(exc, OrchError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return database_error(exc)
    if isinstance(exc, UnicodeEncodeError):  # bytes in argv that are not UTF-8 come as surrogates
        return f"{exc.object[exc.start : exc.end]!r} is not text (not UTF-8)"
    if isinstance(exc, RecursionError):  # JSON given to a command, nested beyond reading
        return "the input is nested too deeply to read"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # a state folder that is a file, or read-only
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(exc.strerror)  # a write to a full disk: stdout sent to a file there, say
    if isinstance(exc, Exception):
        from orch_core.storage import server_error

        return server_error(exc, os.environ)
    return None


def database_error(exc: sqlite3.Error) -> str:
    db = paths.db_path(os.environ)
    if damaged(exc):
        from orch_core.storage import backup

        return f"{db}: {exc}; {backup.advice(db)}"
    return f"{db}: {exc}"


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, not missing)."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def check_config(env: Mapping[str, str]) -> None:
    """A configured value orch cannot use is a one-line error naming its file and key (the
    hooks meanwhile use that key's default)."""
    from orch_core.plugins import plan

    errors = plan.load(env, os.path.abspath(paths.project_dir(env))).config_errors
    if errors:
        more = f" (and {len(errors) - 1} more: see `orch doctor`)" if len(errors) > 1 else ""
        raise OrchError(errors[0] + more)
