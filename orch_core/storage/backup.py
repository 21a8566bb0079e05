"""Backups of the database, putting one back, and reading what a damaged file still holds.

``orch supervise`` takes an online backup (SQLite's backup API: consistent while hooks write)
every ``[orch] backup_every`` seconds into ``backups/`` beside the database, owner-only, and keeps
the newest ``backup_keep``; ``orch backup`` takes one now. A database that is not whole (emptied,
damaged) is not backed up: its copies would push the good backups out. ``orch restore FILE``
checks FILE, sets the current database aside (never deleted) and puts FILE in its place.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from typing import TYPE_CHECKING

from orch_core import paths
from orch_core.errors import OrchError
from orch_core.queue import PENDING_SQL, STATES, pending
from orch_core.storage.store import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PREFIX = "orch-"
SUFFIX = ".db"


class BackupError(OrchError):
    """A backup cannot be taken or put back: a one-line reason."""


def backups(db: str) -> list[str]:
    """The backups of ``db``, newest first."""
    try:
        names = os.listdir(paths.backups_dir(db))
    except OSError:
        return []
    found = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    return [os.path.join(paths.backups_dir(db), n) for n in sorted(found, reverse=True)]


def newest(db: str) -> str | None:
    found = backups(db)
    return found[0] if found else None


def advice(db: str) -> str:
    """What to do about a damaged database: the newest backup and how to put it back."""
    latest = newest(db)
    if latest is None:
        return "no backup exists yet (orch supervise takes them; `orch backup` takes one now)"
    return f"the newest backup is {latest}: put it back with `orch restore {latest}`"


def take(db: str, keep: int = 8, now: float | None = None) -> str:
    """An online backup of ``db``; the oldest beyond ``keep`` are removed. Returns its path.

    Refused, keeping every backup there is, when ``db`` is not a file of orch's own (a link
    is not followed: it could lead to another database) or when what it holds is no whole
    orch database (emptied, damaged): the backups would otherwise be replaced, one every
    ``backup_every``, by copies of nothing. Each backup is a rollback-journal file, so that
    opening it read-only leaves no ``-wal`` or ``-shm`` beside it."""
    now = time.time() if now is None else now
    target_dir = paths.backups_dir(db)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:]
    final = os.path.join(target_dir, f"{PREFIX}{stamp}Z{SUFFIX}")
    partial = f"{final}.partial"
    try:
        paths.ensure_own_dir(target_dir)  # a folder that cannot be written: one line
        _refuse_unless_own_file(db)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        source = _readonly(db)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
            finally:
                copy.close()
        finally:
            source.close()
        _refuse_unless_whole(db, partial)
        os.replace(partial, final)
    except BackupError:
        _remove_copy(partial)
        raise
    except (OSError, sqlite3.Error) as exc:
        _remove_copy(partial)
        raise BackupError(f"cannot back up {db}: {exc}") from None
    # the new one, checked whole, always stays: named after a clock stepped back, it sorts
    # behind older ones, and was removed as it was taken
    for old in [path for path in backups(db) if path != final][max(keep, 1) - 1 :]:
        for suffix in ("", "-wal", "-shm"):
            _remove(old + suffix)
    return final


def _refuse_unless_own_file(db: str) -> None:
    """Refuse a database path that holds a link, anything but a regular file, or nothing, as
    the store does (:meth:`~orch_core.storage.store.SQLiteStore._connect`)."""
    try:
        info = os.lstat(db)
    except FileNotFoundError:
        raise BackupError(f"{db}: no database to back up") from None
    paths.check_private(db, info)
    if not stat.S_ISREG(info.st_mode):
        raise BackupError(f"{db} is not a regular file: not backed up")
    if info.st_size == 0:
        raise BackupError(f"{db} is empty: not backed up, {_kept(db)}")


def _refuse_unless_whole(db: str, copy: str) -> None:
    """Refuse a copy of ``db`` that :func:`check` would refuse to restore."""
    try:
        conn = _readonly(copy)
        try:
            _whole(db, conn)
        finally:
            conn.close()
    except BackupError as exc:
        raise BackupError(f"{exc}: not backed up, {_kept(db)}") from None
    except sqlite3.Error as exc:
        raise BackupError(f"{db} is damaged: {exc}: not backed up, {_kept(db)}") from None


def _kept(db: str) -> str:
    """What is left to a database that is not backed up: the backups taken before it."""
    latest = newest(db)
    if latest is None:
        return "and no backup exists"
    return f"the backups there are kept: put the newest back with `orch restore {latest}`"


def check(file: str) -> dict[str, Any]:
    """What ``file`` holds, if it is a whole orch database: undamaged, of a schema this orch
    knows, with every table and column that schema has (orch would migrate it from there), its
    messages of the types orch writes; else :class:`BackupError`."""
    if not os.path.isfile(file):
        raise BackupError(f"{file}: no such file")
    try:
        conn = _readonly(file)
        try:
            return _whole(file, conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{file} is not an orch database: {exc}") from None


def _whole(file: str, conn: sqlite3.Connection) -> dict[str, Any]:
    verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    have = _columns(conn)
    if verdict != "ok":
        raise BackupError(f"{file} is damaged: {' '.join(verdict.split())}")  # one line
    if version > SCHEMA_VERSION:
        raise BackupError(f"{file} has schema {version}, newer than this orch ({SCHEMA_VERSION})")
    if version < 1:
        raise BackupError(f"{file} is not an orch database: it has no orch schema version")
    wanted = _columns_of_schema(version)
    tables = {table for table, _ in have}
    lacking = sorted({table for table, _ in wanted} - tables) or sorted(
        f"{table}.{column}" for table, column in wanted - have
    )
    if lacking:
        more = f" (and {len(lacking) - 3} more)" if len(lacking) > 3 else ""
        raise BackupError(f"{file} is not an orch database: it has schema {version} but no "
                          f"{', '.join(lacking[:3])}{more}")  # fmt: skip
    mistyped = conn.execute(MISTYPED).fetchone()
    if mistyped:
        raise BackupError(f"{file} is not an orch database: message {mistyped[0]!r} holds "
                          "values orch never writes")  # fmt: skip
    messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return {"schema_version": version, "messages": messages}


#: A message whose values orch could not read (a text where a number goes), which every
#: command would then trip over: a file edited by hand, not a backup.
MISTYPED = f"""SELECT id FROM messages WHERE typeof(id) <> 'text' OR typeof(agent) <> 'text'
    OR typeof(body) <> 'text' OR typeof(priority) <> 'integer' OR typeof(seq) <> 'integer'
    OR typeof(attempts) <> 'integer' OR typeof(checks) <> 'integer'
    OR typeof(created) NOT IN ('integer', 'real') OR state NOT IN {STATES!r}
    OR typeof(not_before) NOT IN ('null', 'integer', 'real')
    OR typeof(expires) NOT IN ('null', 'integer', 'real')
    LIMIT 1"""


def _columns(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """Every (table, column) of a database."""
    return set(conn.execute(
        "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p"
        " WHERE m.type = 'table'"
    ).fetchall())  # fmt: skip


def _columns_of_schema(version: int) -> set[tuple[str, str]]:
    """Every (table, column) of orch's schema ``version``, as its migrations make them."""
    conn = sqlite3.connect(":memory:")
    try:
        for step in range(1, version + 1):
            conn.executescript(MIGRATIONS[step])
        return _columns(conn)
    finally:
        conn.close()


def restore(env: Mapping[str, str], file: str) -> str | None:
    """Put backup ``file`` in place of the database; the current one (and its WAL) is kept
    aside under a new name, returned (``None`` when there was none). Refused while ``orch
    supervise`` runs, and none starts meanwhile (a hook may start one): it would open the
    database being set aside, and go on writing there after the backup took its place."""
    from orch_core.storage import database
    from orch_core.supervisor import lifecycle

    db = database(env)
    if paths.is_url(db):
        raise BackupError("the store is PostgreSQL: restore it with the server's own tools")
    if not paths.is_file_path(db):  # never a file named after a URL
        raise BackupError(f"{db.partition('://')[0]}:// is no store orch knows: give ORCH_DB a "
                          "postgresql:// URL or a SQLite file's path")  # fmt: skip
    lock = lifecycle.supervisor_lock(env, blocking=False, claim=False)
    if lock is None:
        pid = lifecycle.supervisor_running(env)
        raise BackupError(f"orch supervise is running (pid {pid}): stop it, then restore")
    try:
        return _restore(db, file)
    finally:
        os.close(lock)


def _restore(db: str, file: str) -> str | None:
    check(file)
    incoming = f"{db}.restoring"
    try:
        os.close(os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        source = _readonly(file)
        try:
            copy = sqlite3.connect(incoming)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=WAL")
            finally:
                copy.close()
        finally:
            source.close()
        aside = _set_aside(db)
        os.replace(incoming, db)
    except (OSError, sqlite3.Error) as exc:
        _remove_copy(incoming)
        raise BackupError(f"cannot restore {file}: {exc}") from None
    return aside


def since_backup(aside: str, db: str) -> tuple[int, list[str]]:
    """What a restore undid of the queue, read from ``aside``, the database it set aside, and
    ``db``, the one restored: how many messages pending in ``aside`` ``db`` lacks (sent after
    the backup, queued no more), and the ids of those pending in ``db`` that had ended in
    ``aside`` (their agents would get them again). The person must learn both, not find
    messages gone or doubled. What a damaged ``aside`` still lets read counts."""
    try:
        conn = _readonly(aside)
        try:
            states = dict(conn.execute("SELECT id, state FROM messages"))
            waiting = {
                mid for (mid,) in conn.execute(f"SELECT id FROM messages WHERE {PENDING_SQL}")
            }
        except sqlite3.Error:
            found = salvage(aside, pending_only=False)[0]
            states = {record["id"]: record["state"] for record in found}
            waiting = {record["id"] for record in salvage(aside, pending_only=True)[0]}
        finally:
            conn.close()
        conn = _readonly(db)
        try:
            have = {mid for (mid,) in conn.execute("SELECT id FROM messages")}
            pending = [
                mid for (mid,) in conn.execute(f"SELECT id FROM messages WHERE {PENDING_SQL}")
            ]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0, []
    final = ("confirmed", "expired", "cancelled", "dead")
    ended = sorted(mid for mid in pending if states.get(mid) in final)
    return len(waiting - have), ended


def _set_aside(db: str) -> str | None:
    """Move ``db`` and its WAL to a name of their own, returned (``None`` when there is
    nothing to move): a name none of whose files exists, each created exclusively (never an
    existing file, nor through a symbolic link) before the move replaces it, so no database set
    aside before, even in the same second, is ever overwritten."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffixes = ("", "-wal", "-shm")
    present = [suffix for suffix in suffixes if os.path.lexists(db + suffix)]
    if not present:
        return None
    n = 0
    while True:
        n += 1
        aside = f"{db}.before-restore-{stamp}" + (f"-{n}" if n > 1 else "")
        if any(os.path.lexists(aside + suffix) for suffix in suffixes):
            continue
        made: list[str] = []
        try:
            for suffix in present:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                os.close(os.open(aside + suffix, flags, 0o600))
                made.append(aside + suffix)
        except FileExistsError:  # made meanwhile by another restore
            for path in made:
                _remove(path)
            continue
        for suffix in present:
            os.replace(db + suffix, aside + suffix)
        return aside


def _readonly(path: str) -> sqlite3.Connection:
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=10)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_copy(path: str) -> None:
    """A copy that failed, with the journal SQLite leaves beside it when a write fails half-way
    (a full disk): else each failed try, one every ``backup_every``, left a file for good."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        _remove(path + suffix)


def salvage(db: str, pending_only: bool) -> tuple[list[dict[str, Any]], int | None]:
    """The messages a damaged database still lets read, row by row, and how many rows could
    not be read (at least: rows behind a damaged inner page are not even seen; ``None`` when
    the table cannot be read at all, as when its schema is damaged, so that none is not taken
    for a count). With ``pending_only``, what ``orch export`` calls pending
    (:func:`orch_core.queue.pending`): not a message typed with ``--push``. Imported, they come
    back as from any export."""
    conn = _readonly(db)
    conn.row_factory = sqlite3.Row
    # A file shorter than its header says (its end lost) is otherwise refused whole, though
    # the pages it still has hold rows: with this SQLite reads the pages there are.
    conn.execute("PRAGMA writable_schema=ON")
    rowids: set[int] = set()
    read = False
    for scan in ("", " NOT INDEXED"):  # through an index, then the table: each may hold more
        try:
            for (rowid,) in conn.execute(f"SELECT rowid FROM messages{scan}"):
                rowids.add(rowid)
            read = True
        except sqlite3.Error:
            pass  # what was read before the damage still counts
    try:
        highest = conn.execute("SELECT max(rowid) FROM messages").fetchone()[0] or 0
        read = True
    except sqlite3.Error:
        highest = max(rowids, default=0)
    if not read and not rowids:
        conn.close()
        return [], None
    records, lost = [], 0
    for rowid in range(1, max(highest, max(rowids, default=0)) + 1):
        try:
            row = conn.execute("SELECT * FROM messages WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.Error:
            lost += 1
            continue
        if row is None:
            continue
        record = dict(row)
        if pending_only and not pending(record):
            continue
        records.append(record)
    conn.close()
    return records, lost
