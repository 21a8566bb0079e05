"""``orch migrate --to postgresql://...``: this machine's SQLite state, moved into PostgreSQL.

**What moves**: every table both stores have, column by column by name: the core's (messages
and their history, agents, sessions, launch specs, recoveries, alerts, hook runs and their
hourly sums) and each plugin's own (rebrief's briefings, checkpoints and activity, the alerts
plugin's deliveries), in an order where a table comes after those its foreign keys name. The
target gets its tables first as it would on first use: the core's from the store, the plugins'
from their ``orch_schema`` for this project's plan. Copying tables, rather than asking each
plugin to move its own records through a hook, asks nothing more of a plugin than the schema it
already declares in both dialects, and moves what a plugin wrote whatever its code does today.
A table the target lacks (a plugin not loaded in this project) or that has a column the target
lacks is left behind and named, so that ``orch migrate`` run again from a project that loads it
moves the rest. SQLite's implicit ``rowid`` goes into a ``rowid`` column where the target has
one (``message_events``: the order of events of one instant).

**Idempotent**: the target must hold nothing, or only rows of this state, which a run that was
cut short copied: the rows missing are added, all tables in one transaction (a run that stops
half-way leaves the target as it was), and a run with nothing missing writes nothing and says
so. Rows compare whole (every column copied), as multisets. After each run this machine keeps a
digest of what the target then held (``migrate.json`` in the state folder): a target still
exactly so may also lose rows that changed here since (a message delivered meanwhile) for their
new versions. Any other row in the target (another fleet's, or one written since orch switched
to it) refuses the whole run before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter
from typing import TYPE_CHECKING

from orch_core import paths
from orch_core.errors import OrchError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from typing import Any

    from orch_core.storage.store import Store

#: Tables each store keeps for itself: the versions of its own schema.
OWN_TABLES = ("plugin_schemas", "schema_version")
#: Seconds a statement of the copy may take (a large table's read).
COPY_TIMEOUT = 300.0
BATCH = 1000
NO_TABLE = (
    "no such table in the target: its plugin is not loaded here, or gives no PostgreSQL schema"
)


class MigrateError(OrchError):
    """The state cannot be moved: a one-line reason; nothing was written."""


class Table:
    """One table's move: the columns copied, the rows here and what the target lacked.

    :param there: the table's name and columns as the target spells them (:func:`_spelled`).
    """

    def __init__(self, name: str, columns: list[str], there: tuple[str, list[str]]) -> None:
        self.name = name
        self.columns = columns
        self.there, self.there_columns = there
        self.rows: list[tuple[Any, ...]] = []
        #: Where its primary key's columns are among ``there_columns`` (none: no key).
        self.key: list[int] = []
        self.added = 0
        self.replaced = 0

    def keyed(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """``row``'s primary key."""
        return tuple(row[i] for i in self.key)

    @property
    def digest(self) -> str:
        return digest(self.rows)


class Report:
    """What a run did: per table moved, per table left behind (and why), NUL characters
    replaced, and the databases on either side."""

    def __init__(self, source: str, target: str, url: str = "") -> None:
        self.source = source
        self.target = target
        #: The target's URL as given but for its password: what the user's config may name.
        self.url = url or target
        self.tables: list[Table] = []
        self.left_behind: dict[str, str] = {}
        self.nuls = 0
        #: Whether the URL given holds a password (which the report never shows).
        self.password = False

    @property
    def added(self) -> int:
        return sum(t.added for t in self.tables)

    @property
    def changed(self) -> bool:
        return any(t.added or t.replaced for t in self.tables)


def migrate(env: Mapping[str, str], project_dir: str, target: str) -> Report:
    """Move this machine's SQLite state into the PostgreSQL database ``target``. Refused while
    ``orch supervise`` runs here (and none starts meanwhile); changes nothing in the user's
    config: orch goes on using SQLite until ``[orch] database`` names the target."""
    import psycopg

    from orch_core.storage import database
    from orch_core.storage.postgres import one_line, public
    from orch_core.supervisor import lifecycle

    source = database(env)
    if paths.is_url(source):
        raise MigrateError(
            f"orch already uses {public(source)}: orch migrate moves a SQLite state into "
            "PostgreSQL (pg_dump moves one server's)"
        )
    if not paths.is_url(target):
        raise MigrateError(f"--to takes a postgresql:// URL, not {target!r}")
    if not os.path.isfile(source):
        raise MigrateError(f"{source}: no database to migrate")
    lock = lifecycle.supervisor_lock(env, blocking=False, claim=False)
    if lock is None:
        pid = lifecycle.supervisor_running(env)
        raise MigrateError(f"orch supervise is running (pid {pid}): stop it, then migrate")
    try:
        return _move(env, project_dir, source, target)
    except psycopg.Error as exc:  # the target's: else named after the SQLite file, as "?"
        raise MigrateError(f"{public(target)}: {one_line(exc, target)}") from None
    finally:
        os.close(lock)


def _move(env: Mapping[str, str], project_dir: str, source: str, target: str) -> Report:
    from psycopg.conninfo import conninfo_to_dict

    from orch_core.hook.context import Runtime
    from orch_core.storage import open_store
    from orch_core.storage.postgres import public, without_password

    report = Report(source, public(target), without_password(target))
    try:
        report.password = bool(conninfo_to_dict(target).get("password"))
    except Exception:
        pass  # connecting says what is wrong with it
    here = open_store(env)
    there_env = {**env, "ORCH_DB": target}
    there = open_store(there_env, timeout=COPY_TIMEOUT)
    try:
        Runtime.open(env, project_dir, store=here)  # each plugin's tables at its plan's version
        Runtime.open(there_env, project_dir, store=there)
        tables = _tables(here, there, report)
        _read(here, tables, report)
        recorded = _recorded(env).get(report.target)
        with there.transaction() as tx:
            _copy(tx, tables, report, recorded)
        _record(env, report.target, {t.name: t.digest for t in tables})
    finally:
        here.close()
        there.close()
    return report


def _tables(here: Store, there: Store, report: Report) -> list[Table]:
    """The tables to move, parents first; the others are noted as left behind."""
    import graphlib

    names = [row[0] for row in here.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    )]  # fmt: skip
    theirs: dict[str, list[str]] = {}
    for table, column in there.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ):
        theirs.setdefault(table, []).append(column)
    tables: dict[str, Table] = {}
    for name in names:
        if name in OWN_TABLES:
            continue
        spelling = _spelled(name, theirs)
        if spelling is None:
            report.left_behind[name] = NO_TABLE
            continue
        mine = [row[1] for row in here.execute(f"PRAGMA table_info({quote(name)})")]
        spelled = [_spelled(c, theirs[spelling]) for c in mine]
        lacking = [c for c, t in zip(mine, spelled, strict=True) if t is None]
        if lacking:
            report.left_behind[name] = f"the target's table has no column {', '.join(lacking)}"
            continue
        columns = [t for t in spelled if t is not None]
        if "rowid" in theirs[spelling] and "rowid" not in columns:
            mine.append("rowid")  # SQLite's implicit row number, made explicit there
            columns.append("rowid")
        tables[spelling] = Table(name, mine, (spelling, columns))
    keys: dict[str, list[str]] = {}
    for table, column in there.execute(
        "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu"
        " ON kcu.constraint_schema = tc.constraint_schema"
        " AND kcu.constraint_name = tc.constraint_name AND kcu.table_name = tc.table_name"
        " WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema()"
        " ORDER BY tc.table_name, kcu.ordinal_position"
    ):
        keys.setdefault(table, []).append(column)
    for name, key in keys.items():
        if name in tables and set(key) <= set(tables[name].there_columns):  # a whole key
            tables[name].key = [tables[name].there_columns.index(c) for c in key]
    order: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in tables:
        order.add(name)
    for child, parent in there.execute(
        "SELECT tc.table_name, ccu.table_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.constraint_column_usage ccu"
        " ON ccu.constraint_schema = tc.constraint_schema"
        " AND ccu.constraint_name = tc.constraint_name"
        " WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema()"
    ):
        if child in tables and parent in tables and child != parent:
            order.add(child, parent)
    return [tables[name] for name in order.static_order()]


def _spelled(name: str, found: Iterable[str]) -> str | None:
    """``name`` (of a table or column here) as the target spells it, if it has it: SQLite's
    names ignore case, and PostgreSQL lowers the case of a name not in quotes (a plugin's
    ``CREATE TABLE ToolCalls`` makes ``toolcalls`` there)."""
    found = list(found)
    if name in found:
        return name
    return next((f for f in found if f.lower() == name.lower()), None)


def _read(here: Store, tables: list[Table], report: Report) -> None:
    """Every table's rows, in one read transaction (messages and their history agree), in the
    order they were written; a NUL character, which PostgreSQL's text cannot hold, becomes
    U+FFFD (and is counted)."""
    here.execute("BEGIN")
    try:
        for table in tables:
            columns = ", ".join(quote(c) for c in table.columns)
            try:
                rows = here.execute(f"SELECT {columns} FROM {quote(table.name)} ORDER BY rowid")
            except sqlite3.OperationalError:  # a table WITHOUT ROWID
                rows = here.execute(f"SELECT {columns} FROM {quote(table.name)}")
            for row in rows:
                if any(isinstance(v, str) and "\x00" in v for v in row):
                    report.nuls += 1
                    row = tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v
                                for v in row)  # fmt: skip
                table.rows.append(tuple(row))
    finally:
        here.execute("COMMIT")


def _copy(tx: Any, tables: list[Table], report: Report, recorded: Mapping[str, str] | None) -> None:
    """Inside the target's write transaction: compare, then add what is missing (and, in a
    target untouched since this machine's last run, drop the rows that changed here since)."""
    found: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for table in tables:
        columns = ", ".join(quote(c) for c in table.there_columns)
        found[table.name] = [
            (row[0], tuple(row[1:]))
            for row in tx.execute(f"SELECT ctid::text, {columns} FROM {quote(table.there)}")
        ]
    # a table the last run left behind (its plugin not loaded there) was not recorded: still
    # empty in the target, nobody wrote there since
    untouched = recorded is not None and all(
        recorded.get(t.name, digest([])) == digest(r for _, r in found[t.name]) for t in tables
    )
    strays: dict[str, list[str]] = {}
    missing: dict[str, list[tuple[Any, ...]]] = {}
    for table in tables:
        wanted = Counter(table.rows)
        for ctid, row in found[table.name]:
            if wanted[row] > 0:
                wanted[row] -= 1
            else:
                strays.setdefault(table.name, []).append(ctid)
        missing[table.name] = []
        for row in table.rows:
            if wanted[row] > 0:
                wanted[row] -= 1
                missing[table.name].append(row)
    report.tables = tables
    if strays and not untouched:
        counts = ", ".join(f"{name}: {len(ctids)}" for name, ctids in strays.items())
        raise MigrateError(
            f"{report.target} holds rows this machine's state does not have ({counts}): "
            "another installation's, or written since orch switched to it; nothing was written"
        )
    changed = {t.name: _changed(t, strays.get(t.name, []), found[t.name], missing[t.name])
               for t in tables}  # fmt: skip
    for table in reversed(tables):  # children before the parents they name
        for ctid in strays.get(table.name, []):
            if ctid not in changed[table.name]:
                tx.execute(f"DELETE FROM {quote(table.there)} WHERE ctid = ?::tid", (ctid,))
        table.replaced = len(strays.get(table.name, []))
    for table in tables:
        rows = missing[table.name]
        table.added = len(rows)
        columns = ", ".join(quote(c) for c in table.there_columns)
        marks = ", ".join("?" for _ in table.columns)
        if changed[table.name]:
            tx.executemany(
                f"UPDATE {quote(table.there)} SET ({columns}) = ROW({marks}) WHERE ctid = ?::tid",
                [(*row, ctid) for ctid, row in changed[table.name].items()],
            )
            written = {table.keyed(row) for row in changed[table.name].values()}
            rows = [row for row in rows if table.keyed(row) not in written]
        for start in range(0, len(rows), BATCH):
            tx.executemany(
                f"INSERT INTO {quote(table.there)} ({columns}) VALUES ({marks})",
                rows[start : start + BATCH],
            )
    if report.changed:
        _advance_sequences(tx, {t.there for t in tables})


def _changed(
    table: Table,
    strays: list[str],
    found: list[tuple[str, tuple[Any, ...]]],
    missing: list[tuple[Any, ...]],
) -> dict[str, tuple[Any, ...]]:
    """The rows of ``table`` that changed here since: per stray's ``ctid``, the missing row of
    the same primary key, which is written over it rather than deleted and added again, so
    that the rows of another table that name it (a plugin's foreign key) keep a row to name."""
    if not table.key or not strays:
        return {}
    keyed = {table.keyed(row): row for row in missing}
    rows = dict(found)
    return {
        ctid: keyed[table.keyed(rows[ctid])] for ctid in strays if table.keyed(rows[ctid]) in keyed
    }


def _advance_sequences(tx: Any, tables: set[str]) -> None:
    """Numbers the target generates (identity columns) continue after the rows copied."""
    for table, column in tx.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
        " AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')"
    ).fetchall():
        if table in tables:
            tx.execute(
                f"SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max({quote(column)}), 0)"
                f" + 1, false) FROM {quote(table)}",
                (quote(table), column),
            )


def digest(rows: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]]) -> str:
    """A table's content, whatever the order of its rows."""
    lines = sorted(json.dumps(row, default=str) for row in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def quote(name: str) -> str:
    """``name`` as an SQL identifier both dialects read."""
    return '"' + name.replace('"', '""') + '"'


def _digests_path(env: Mapping[str, str]) -> str:
    return os.path.join(paths.state_dir(env), "migrate.json")


def _recorded(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per target, what it held after this machine's last run into it."""
    try:
        with open(_digests_path(env), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _record(env: Mapping[str, str], target: str, digests: dict[str, str]) -> None:
    path = _digests_path(env)
    kept = {**_recorded(env), target: digests}
    partial = f"{path}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(kept, f)
    os.replace(partial, path)
