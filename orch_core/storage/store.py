"""The state store: SQLite in WAL mode, short transactions, schema migrated on first use.

:class:`Store` is all the core and plugins know of it, so that another backend can take
:class:`SQLiteStore`'s place (PostgreSQL: :mod:`orch_core.storage.postgres`): SQL through
:meth:`Store.execute` and :meth:`Store.transaction`, with ``?`` placeholders and the SQL both
SQLite and PostgreSQL speak (``ON CONFLICT``, ``RETURNING``); the core's own tables migrated by
the store, each plugin's by its ``orch_schema`` (:meth:`Store.ensure_schemas`). Each thread gets
its own SQLite connection (the dispatcher runs plugins in threads, and transactions must not
interleave); a thread that is done hands its connection back with :meth:`SQLiteStore.release`,
so the next one needs no new open.
"""

from __future__ import annotations

# sqlite3's package adds only the date and time adapters orch does not use, and importing them
# imports datetime: 1.3-1.5 ms of every hook. Its module is _sqlite3, with the same objects.
import _sqlite3 as sqlite3
import _thread  # the documented low-level API: threading costs the hook 0.6 ms to import
import abc
import json
import os
import time

from orch_core import paths
from orch_core.errors import OrchError

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager
    from typing import Any, Protocol

    class Rows(Protocol):
        """What a statement returns: its rows, and how many it changed."""

        @property
        def rowcount(self) -> int: ...
        @property
        def description(self) -> Any: ...
        def fetchone(self) -> Any: ...
        def fetchall(self) -> list[Any]: ...
        def __iter__(self) -> Iterator[Any]: ...

    class Connection(Protocol):
        """Where a transaction's statements go."""

        def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...
        def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Rows: ...

    class Listener(Protocol):
        """A channel's notifications, as they come (:meth:`Store.listen`)."""

        def wait(self, timeout: float) -> list[str]: ...
        def close(self) -> None: ...


#: A new file's page size. A send or a hook round changes a few hundred bytes in four to six
#: b-trees, and every page it touches goes to the WAL whole: sends one at a time are 7-18%
#: faster than with SQLite's default 4 KiB, and batches lose nothing (docs/benchmarks.md,
#: "Smaller pages"). A file made before keeps its own.
PAGE_SIZE = 2048
SCHEMA_VERSION = 13
#: The order that puts an agent's current session first among ``sessions s`` (``agents a``
#: joined), then the rest newest first: Claude keeps a session's id when it resumes it
#: (``--continue``, ``--resume``), and the row keeps the time it was first seen, so an agent
#: taken up again in an earlier session (on another host, in another pane) would otherwise be
#: looked for where its later one ran.
CURRENT_SESSION_FIRST = "CASE WHEN s.session_id = a.session_id THEN 0 ELSE 1 END, s.created DESC"
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT 'unknown',
        session_id TEXT,
        project_dir TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        state_changed REAL NOT NULL
    );
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        pane TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE hook_runs (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        agent TEXT,
        session_id TEXT,
        duration_ms REAL NOT NULL,
        exit_code INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        plugins TEXT NOT NULL
    );
    CREATE INDEX hook_runs_errors ON hook_runs(ok, id);
    """,
    2: """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        seq INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        sender TEXT,
        body TEXT NOT NULL,
        key TEXT,
        state TEXT NOT NULL,
        after_id TEXT,
        not_before REAL,
        expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        checks INTEGER NOT NULL DEFAULT 0,
        session_id TEXT,
        reason TEXT,
        created REAL NOT NULL,
        delivered REAL,
        confirmed REAL,
        ended REAL,
        UNIQUE (agent, seq)
    );
    CREATE INDEX messages_ready ON messages(agent, state, priority DESC, seq);
    CREATE INDEX messages_state ON messages(state);
    CREATE INDEX messages_key ON messages(agent, key) WHERE key IS NOT NULL;
    CREATE TABLE message_events (
        message_id TEXT NOT NULL,
        ts REAL NOT NULL,
        state TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX message_events_id ON message_events(message_id, ts);
    CREATE TABLE queue_seq (
        agent TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    ALTER TABLE sessions ADD COLUMN tmux_socket TEXT;
    ALTER TABLE sessions ADD COLUMN stop_blocks INTEGER NOT NULL DEFAULT 0;
    """,
    3: "",  # the rebrief plugin's tables, created by its own orch_schema since schema 10
    4: """
    CREATE TABLE launch_specs (
        agent TEXT PRIMARY KEY,
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL,
        tmux_socket TEXT,
        tmux_session TEXT NOT NULL,
        pane TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE recoveries (
        id INTEGER PRIMARY KEY,
        agent TEXT NOT NULL,
        created REAL NOT NULL,
        reason TEXT NOT NULL,
        step TEXT NOT NULL,
        due REAL NOT NULL,
        state TEXT NOT NULL,
        started REAL,
        verify_by REAL,
        finished REAL,
        outcome TEXT
    );
    CREATE INDEX recoveries_agent ON recoveries(agent, created);
    CREATE INDEX recoveries_state ON recoveries(state, due);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        agent TEXT,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    """,
    5: """
    ALTER TABLE messages ADD COLUMN transcript TEXT;
    """,
    6: """
    CREATE INDEX messages_expiring ON messages(agent, expires)
        WHERE state = 'queued' AND expires IS NOT NULL;
    CREATE INDEX messages_waiting ON messages(agent, after_id)
        WHERE state = 'queued' AND after_id IS NOT NULL;
    """,
    7: """
    ALTER TABLE messages ADD COLUMN answered_by REAL;
    """,
    8: """
    DROP INDEX messages_state;
    CREATE INDEX messages_inflight ON messages(session_id, delivered) WHERE state = 'delivered';
    DROP TABLE queue_seq;
    DELETE FROM message_events WHERE rowid IN (
        SELECT e.rowid FROM message_events e JOIN messages m ON m.id = e.message_id
        WHERE e.state = 'queued' AND e.ts = m.created);
    """,
    9: """
    ALTER TABLE messages ADD COLUMN transcript_from INTEGER;
    """,
    10: """
    CREATE TABLE plugin_schemas (
        plugin TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    );
    INSERT INTO plugin_schemas (plugin, version)
        SELECT 'rebrief', 1 FROM sqlite_master WHERE type = 'table' AND name = 'agent_context';
    """,
    11: """
    ALTER TABLE alerts ADD COLUMN key TEXT;
    ALTER TABLE alerts ADD COLUMN project_dir TEXT;
    ALTER TABLE alerts ADD COLUMN cleared REAL;
    ALTER TABLE alerts ADD COLUMN acked REAL;
    ALTER TABLE alerts ADD COLUMN sent REAL;
    ALTER TABLE alerts ADD COLUMN channels TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE alerts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN next_try REAL;
    ALTER TABLE alerts ADD COLUMN error TEXT;
    CREATE UNIQUE INDEX alerts_open ON alerts(key) WHERE cleared IS NULL;
    CREATE INDEX alerts_due ON alerts(next_try) WHERE next_try IS NOT NULL;
    CREATE INDEX messages_dead ON messages(agent, ended) WHERE state = 'dead';
    """,
    12: """
    ALTER TABLE sessions ADD COLUMN transcript TEXT;
    CREATE TABLE run_hours (
        hour INTEGER NOT NULL,
        event TEXT NOT NULL,
        runs INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        timeouts INTEGER NOT NULL,
        killed INTEGER NOT NULL,
        durations TEXT NOT NULL,
        PRIMARY KEY (hour, event)
    );
    CREATE TABLE plugin_hours (
        hour INTEGER NOT NULL,
        plugin TEXT NOT NULL,
        runs INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        invalid INTEGER NOT NULL,
        timeouts INTEGER NOT NULL,
        killed INTEGER NOT NULL,
        PRIMARY KEY (hour, plugin)
    );
    CREATE TABLE agent_hours (
        hour INTEGER NOT NULL,
        agent TEXT NOT NULL,
        event TEXT NOT NULL,
        runs INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        timeouts INTEGER NOT NULL,
        killed INTEGER NOT NULL,
        durations TEXT NOT NULL,
        PRIMARY KEY (hour, agent, event)
    );
    CREATE INDEX agent_hours_agent ON agent_hours(agent, hour);
    CREATE TABLE rollups (
        name TEXT PRIMARY KEY,
        done INTEGER NOT NULL
    );
    """,
    13: """
    ALTER TABLE agents ADD COLUMN host TEXT;
    ALTER TABLE sessions ADD COLUMN host TEXT;
    ALTER TABLE launch_specs ADD COLUMN host TEXT;
    CREATE TABLE hosts (
        host TEXT PRIMARY KEY,
        last_seen REAL NOT NULL,
        pid INTEGER
    );
    """,
}
#: Hook runs kept; older ones are pruned now and then, so the table stays small (their hourly
#: sums outlive them: :mod:`orch_core.ops.metrics`).
KEEP_RUNS = 20_000


class StoreError(OrchError):
    """The store cannot be used: a clear, one-line reason."""


class DatabaseUnreachable(StoreError):
    """The database server cannot be reached, or the connection to it was lost: a command
    fails with this line, a hook answers without the store, the supervisor tries again later.
    The next use opens a fresh connection."""


class Store(abc.ABC):
    """What orch keeps, and the one way to it: the core's records (sessions, agents, hook
    runs) as methods, everything else as SQL in short transactions. The methods are written
    once, in the SQL every backend speaks, so that they mean the same on each; a backend
    gives the connection, the transactions and the schema."""

    #: The SQL dialect, as ``orch_schema`` receives it.
    dialect = "sqlite"
    #: Whether the agents of several machines may share this store (a server's database):
    #: then each machine is a host, names of its tmux windows carry its name, and each host's
    #: supervisor looks after its own agents (:mod:`orch_core.hosts`).
    shared = False
    #: Seconds a statement waits for another writer, unless :meth:`set_timeout` says less.
    timeout: float
    #: A private folder on this machine for files that go with the store (the text of large
    #: messages, which the model reads from there).
    folder: str

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """One statement on its own: a read, or a write that needs no transaction."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Connection]:
        """``with store.transaction() as tx:`` a short write transaction, committed at the
        end of the block and rolled back on an exception. Keep tmux, git and network calls
        outside it."""

    def write_alone(
        self, sql: str, params: Sequence[Any] = (), *, notify: tuple[str, Sequence[str]] = ("", ())
    ) -> list[Any]:
        """One write that needs nobody's turn, its unique keys being what keeps it right (an
        insert that a conflict leaves undone, ``ON CONFLICT DO NOTHING``), and the rows it
        returns; with them, ``notify``'s channel is told its payloads as it commits. Here a
        transaction of its own; on a server one statement, without the write lock: one round
        trip where a transaction takes three."""
        with self.transaction() as tx:
            rows = tx.execute(sql, params).fetchall()
            if rows and notify[1]:
                self.notify(tx, *notify)
        return rows

    def later(self, tx: Connection, sql: str, params: Sequence[Any] = ()) -> Rows:
        """A statement of ``tx`` whose rows are read after its next statement, or not at all
        (the block's own updates and inserts): a server's store sends it with that statement
        (or the ``COMMIT``) in one round trip. Here it runs now."""
        return tx.execute(sql, params)

    def set_timeout(self, seconds: float) -> None:  # noqa: B027 - a store may not wait at all
        """Wait at most this long for another writer from now on (the hook's budget left)."""

    def notify(self, tx: Connection, channel: str, payloads: Sequence[str]) -> None:  # noqa: B027
        """Tell whoever listens on ``channel`` each of ``payloads``, when ``tx`` commits (never
        if it rolls back). A store only one machine uses has nobody to tell: the process that
        wrote acts itself."""

    def listen(self, channel: str) -> Listener | None:
        """``channel``'s notifications from every machine, on a connection of their own;
        ``None`` where nobody else writes (:attr:`shared` is false)."""
        return None

    def back_up(self, keep: int, now: float, *, older_than: float = 0.0) -> str | None:
        """A backup, unless the newest is younger than ``older_than`` seconds; where it went.
        A store that a server backs up takes none here (``None``)."""
        return None

    def ensure_schemas(
        self,
        wanted: Mapping[str, int],
        migrations: Callable[[str], Mapping[int, str]],
        *,
        timeout: float | None = None,
        absent_timeout: float | None = None,
    ) -> None:
        """Bring each plugin's own tables to the version its plan names: one read when they
        are there already; otherwise ``migrations(plugin)`` gives the steps (version to SQL
        statements, separated by ``;``), applied with the version in one transaction, waiting
        at most ``timeout`` in all for other writers, or ``absent_timeout`` when a plugin has
        no tables yet (a new store, whose fleet's first hooks all create them in turn): its
        hooks could do nothing without them. A plugin whose steps fail (written for another
        dialect) leaves the others their tables; the first failure is raised at the end."""
        have = dict(self.execute("SELECT plugin, version FROM plugin_schemas").fetchall())
        behind = [(p, v) for p, v in wanted.items() if have.get(p, 0) < v]
        if not behind:
            return
        absent = any(p not in have for p, _ in behind)
        if absent and timeout is not None and absent_timeout is not None:
            timeout = max(timeout, absent_timeout)
        start = time.monotonic()
        failed: Exception | None = None
        try:
            for plugin, version in behind:
                if timeout is not None:
                    left = timeout - (time.monotonic() - start)
                    if left <= 0:
                        break  # the rest next time
                    self.set_timeout(left)
                try:
                    self._migrate_plugin(plugin, version, migrations(plugin))
                except Exception as exc:
                    failed = failed or exc
        finally:
            if timeout is not None:
                self.set_timeout(self.timeout)
        if failed is not None:
            raise failed

    def _migrate_plugin(self, plugin: str, version: int, steps: Mapping[int, str]) -> None:
        """Apply ``plugin``'s steps past the version it has, and record ``version``."""
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT version FROM plugin_schemas WHERE plugin = ?", (plugin,)
            ).fetchone()
            for step in range((row[0] if row else 0) + 1, version + 1):
                if step not in steps:
                    raise StoreError(f"plugin {plugin}: orch_schema gives no {self.dialect} SQL")
                for statement in steps[step].split(";"):
                    if statement.strip():
                        try:
                            tx.execute(statement)
                        except DatabaseUnreachable:
                            raise
                        except Exception as exc:  # the plugin's author must learn whose step
                            raise StoreError(
                                f"plugin {plugin}: orch_schema step {step}: {exc}"
                            ) from exc
            tx.execute(
                "INSERT INTO plugin_schemas (plugin, version) VALUES (?, ?)"
                " ON CONFLICT (plugin) DO UPDATE SET version = excluded.version",
                (plugin, version),
            )

    def session_agent(self, session_id: str) -> str | None:
        """The agent a Claude session was resolved to, if known."""
        row = self.execute(
            "SELECT agent FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        return row[0] if row else None

    def remember_session(
        self,
        session_id: str,
        agent: str,
        pane: str | None,
        tmux_socket: str | None = None,
        transcript: str | None = None,
        host: str | None = None,
    ) -> None:
        """Which agent a Claude session is, and where: its host, tmux pane and server, and its
        transcript (where ``orch stats`` counts its tokens)."""
        with self.transaction() as tx:
            tx.execute(
                """INSERT INTO sessions (session_id, agent, pane, tmux_socket, transcript, created,
                                         host)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (session_id) DO UPDATE SET
                     agent = excluded.agent, pane = coalesce(excluded.pane, sessions.pane),
                     tmux_socket = coalesce(excluded.tmux_socket, sessions.tmux_socket),
                     transcript = coalesce(excluded.transcript, sessions.transcript),
                     host = coalesce(excluded.host, sessions.host)""",
                (session_id, agent, pane, tmux_socket, transcript, time.time(), host),
            )

    def agent_pane(self, agent: str, *, host: str | None = None) -> tuple[str, str | None] | None:
        """The tmux pane (and server socket) of the agent's current session (else its latest
        one), if known; given ``host``, only if that session runs there: on a shared store,
        another host's tmux is out of reach (its panes' ids mean something else here)."""
        row = self.execute(
            "SELECT s.pane, s.tmux_socket, s.host FROM sessions s LEFT JOIN agents a"
            " ON a.id = s.agent WHERE s.agent = ? AND s.pane IS NOT NULL"
            f" ORDER BY {CURRENT_SESSION_FIRST} LIMIT 1",
            (agent,),
        ).fetchone()
        if row is None or (host is not None and self.shared and row[2] != host):
            return None
        return (row[0], row[1])

    def projects_of(self, agents: Sequence[str]) -> dict[str, str]:
        """The project each of ``agents`` works in, where orch knows it: its launch spec's
        folder, else where its hooks came from (its plugins and their settings are that
        project's)."""
        found: dict[str, str] = {}
        for start in range(0, len(agents), 500):  # within SQLite's variables a statement
            chunk = list(agents[start : start + 500])
            rows = self.execute(
                "SELECT a.id, coalesce(s.cwd, a.project_dir) FROM agents a LEFT JOIN"
                f" launch_specs s ON s.agent = a.id WHERE a.id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((agent, project) for agent, project in rows if project)
        return found

    def stop_blocks(
        self, session_id: str, agent: str, *, reset: bool = False, add: bool = False
    ) -> int:
        """Consecutive Stop blocks in a session, after resetting it or adding one."""
        if reset or add:
            with self.transaction() as tx:
                tx.execute(
                    """INSERT INTO sessions (session_id, agent, created, stop_blocks)
                       VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET
                         stop_blocks = CASE WHEN excluded.stop_blocks = 1
                                       THEN sessions.stop_blocks + 1 ELSE 0 END""",
                    (session_id, agent, time.time(), int(add)),
                )
        row = self.execute(
            "SELECT stop_blocks FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_agent_state(
        self,
        agent: str,
        state: str,
        *,
        session_id: str | None,
        project_dir: str | None,
        host: str | None = None,
    ) -> str | None:
        """Record that ``agent`` was seen in ``state`` (on ``host``, when given); return its
        previous state."""
        now = time.time()
        row = self.execute(
            "SELECT state, last_seen, session_id, host FROM agents WHERE id = ?", (agent,)
        ).fetchone()
        if (
            row
            and row[0] == state
            and row[2] == session_id
            and host in (None, row[3])
            and now - row[1] < 1.0
        ):
            return str(row[0])  # nothing new worth a write
        with self.transaction() as tx:
            row = tx.execute("SELECT state FROM agents WHERE id = ?", (agent,)).fetchone()
            previous = row[0] if row else None
            tx.execute(
                """INSERT INTO agents (id, state, session_id, project_dir, first_seen, last_seen,
                                       state_changed, host)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                     state = excluded.state, last_seen = excluded.last_seen,
                     session_id = coalesce(excluded.session_id, agents.session_id),
                     project_dir = coalesce(excluded.project_dir, agents.project_dir),
                     state_changed = CASE WHEN agents.state = excluded.state
                                     THEN agents.state_changed ELSE excluded.state_changed END,
                     host = coalesce(excluded.host, agents.host)""",
                (agent, state, session_id, project_dir, now, now, now, host),
            )
        return previous

    def add_agent(
        self,
        agent: str,
        state: str,
        *,
        session_id: str | None,
        project_dir: str | None,
        host: str | None = None,
    ) -> bool:
        """Record an agent orch has not heard from, in ``state``; ``False`` when it is known
        already, whatever another hook made of it meanwhile."""
        now = time.time()
        with self.transaction() as tx:
            cur = tx.execute(
                "INSERT INTO agents (id, state, session_id, project_dir, first_seen, last_seen,"
                " state_changed, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (agent, state, session_id, project_dir, now, now, now, host),
            )
            return cur.rowcount > 0

    def transition(
        self,
        agent: str,
        new: str,
        *,
        only_from: tuple[str, ...],
        or_stale: tuple[str, float] = ("", 0.0),
    ) -> bool:
        """Atomically move ``agent`` to ``new`` if it is in one of ``only_from`` (or in state
        ``or_stale[0]`` for more than ``or_stale[1]`` seconds); return whether it moved."""
        now = time.time()
        # no ``only_from`` (the stale state alone): ``IN ()`` is an error on PostgreSQL
        listed = f"state IN ({', '.join('?' for _ in only_from)})" if only_from else "1 = 0"
        with self.transaction() as tx:
            cur = tx.execute(
                "UPDATE agents SET state = ?, state_changed = ? WHERE id = ? AND"
                f" ({listed} OR (state = ? AND state_changed < ?))",
                (new, now, agent, *only_from, or_stale[0], now - or_stale[1]),
            )
            return cur.rowcount > 0

    def agents(self) -> list[dict[str, Any]]:
        return _dicts(self.execute("SELECT * FROM agents ORDER BY id"))

    def record_run(
        self,
        *,
        event: str,
        agent: str | None,
        session_id: str | None,
        duration_ms: float,
        exit_code: int,
        plugins: list[dict[str, Any]],
    ) -> None:
        """Record one ``orch-hook`` run and each plugin's outcome."""
        ok = all(p.get("outcome") == "ok" for p in plugins)
        with self.transaction() as tx:
            (added,) = tx.execute(
                "INSERT INTO hook_runs (ts, event, agent, session_id, duration_ms, exit_code, ok,"
                " plugins) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    time.time(),
                    event,
                    agent,
                    session_id,
                    round(duration_ms, 3),
                    exit_code,
                    int(ok),
                    json.dumps(plugins, ensure_ascii=False),
                ),
            ).fetchone()
            if added % 1000 == 0:
                tx.execute("DELETE FROM hook_runs WHERE id <= ?", (added - KEEP_RUNS,))

    def runs(self, limit: int = 50, *, failed: bool = False) -> list[dict[str, Any]]:
        where = "WHERE ok = 0" if failed else ""
        cur = self.execute(f"SELECT * FROM hook_runs {where} ORDER BY id DESC LIMIT ?", (limit,))
        rows = _dicts(cur)
        for row in rows:
            row["plugins"] = json.loads(row["plugins"])
        return rows

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """Integrity, journal mode and schema version, for ``orch doctor``."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def release(self) -> None:  # noqa: B027 - optional for stores that keep nothing per thread
        """The calling thread is done with the store for now (a hint for pooling)."""

    def anew(self) -> None:  # noqa: B027 - optional for stores that remember nothing
        """Another hook or command starts on this store (a long-lived process keeps it): it
        tries the server afresh, whatever failed for the one before."""


class SQLiteStore(Store):
    """The default store: one SQLite file per machine.

    :param timeout: seconds to wait for another writer (``busy_timeout``); the hook passes what
        is left of its budget, so a locked database never holds an agent longer than that.
    :param durable: fsync every commit (``synchronous=FULL``); the CLI uses it for what users
        enqueue, the hook path uses ``NORMAL``, which survives a crash of any process.
    """

    def __init__(self, path: str, *, timeout: float = 5.0, durable: bool = True) -> None:
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.timeout = timeout
        self.durable = durable
        self._pool = Pool(self._connect, reusable=lambda conn: not conn.in_transaction)
        self._migrated = False
        self._lock = _thread.allocate_lock()

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema migrated) on first use."""
        conn: sqlite3.Connection = self._pool.get(_thread.get_ident())
        return conn

    def release(self) -> None:
        """This thread is done with the store: keep its connection for the next thread."""
        self._pool.give_back(_thread.get_ident())

    def _connect(self) -> sqlite3.Connection:
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            info = os.lstat(self.path)  # a link here is refused, not followed
        except FileNotFoundError:
            size: int | None = None
        else:
            paths.check_private(self.path, info)
            paths.check_private(folder, os.stat(folder))
            size = info.st_size
        if not size:
            self._refuse_to_start_over()
        if size is None:
            paths.ensure_private_dir(folder)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            with self._lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _refuse_to_start_over(self) -> None:
        """A missing or empty database is created afresh only when nothing shows it held data:
        a WAL with content, or backups of it."""
        evidence = []
        try:
            if os.path.getsize(self.path + "-wal") > 0:
                evidence.append("its WAL")
        except OSError:
            pass
        folder = paths.backups_dir(self.path)
        try:
            found = sorted(n for n in os.listdir(folder) if n.endswith(".db"))
        except OSError:
            found = []
        if found:
            evidence.append(f"{len(found)} backups")
        if evidence:
            latest = os.path.join(folder, found[-1]) if found else "FILE"
            raise StoreError(
                f"{self.path} is missing or empty, but {' and '.join(evidence)} show it held "
                f"data: put a backup back with `orch restore {latest}`, or move {folder} and "
                "the WAL away to start afresh"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema {version} is newer than this orch ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._to_wal(conn)
        with self.transaction(conn) as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        tx.execute(statement)
            tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _to_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new file to WAL. SQLite does not wait for other connections to do so (no
        busy handler): while another creates the schema (hooks and a supervisor starting at
        once on a fresh store), try again until the timeout."""
        give_up = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= give_up:
                    raise
                time.sleep(0.005)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def write_alone(
        self, sql: str, params: Sequence[Any] = (), *, notify: tuple[str, Sequence[str]] = ("", ())
    ) -> list[Any]:
        """The statement in autocommit: SQLite takes the write lock as it starts and commits
        as it ends, one call where ``BEGIN IMMEDIATE`` ... ``COMMIT`` takes three (a tenth of
        a send). Nobody else is told (``notify``): the store is this machine's."""
        return self.conn.execute(sql, params).fetchall()

    def transaction(self, conn: sqlite3.Connection | None = None) -> Transaction:
        """A ``BEGIN IMMEDIATE`` transaction: it takes the write lock first, so it never
        fails half-way for another writer."""
        return Transaction(conn or self.conn)

    def set_timeout(self, seconds: float) -> None:
        self.conn.execute(f"PRAGMA busy_timeout={max(1, int(seconds * 1000))}")

    def back_up(self, keep: int, now: float, *, older_than: float = 0.0) -> str | None:
        """An online backup into ``backups/`` beside the file (:mod:`orch_core.storage.backup`)."""
        from orch_core.storage import backup

        latest = backup.newest(self.path)
        if older_than > 0 and latest is not None and now - os.path.getmtime(latest) < older_than:
            return None
        return backup.take(self.path, keep, now)

    def health(self) -> dict[str, Any]:
        conn = self.conn
        return {
            "path": self.path,
            "integrity": conn.execute("PRAGMA quick_check").fetchone()[0],
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "schema_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "expected_schema_version": SCHEMA_VERSION,
        }

    def close(self) -> None:
        self._pool.close()


class Pool:
    """A store's connections, one per thread while it works (a connection is not for two
    threads at once), handed to the next thread when one is done (:meth:`Store.release`):
    orch-hook runs each plugin in a thread of its own, and opening a connection costs more
    than the statements a plugin makes.

    :param connect: opens a connection.
    :param reusable: whether a connection a thread is done with may go to the next (one left
        in a transaction is closed instead).
    :param usable: whether a connection kept is still good (a server may have dropped it).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        reusable: Callable[[Any], bool],
        usable: Callable[[Any], bool] = lambda conn: True,
    ) -> None:
        self._connect = connect
        self._reusable = reusable
        self._usable = usable
        self._taken: dict[int, Any] = {}
        self._idle: list[Any] = []
        self._lock = _thread.allocate_lock()

    def get(self, slot: int) -> Any:
        """The connection of ``slot`` (a thread), opened or handed on when it has none."""
        conn = self._taken.get(slot)
        if conn is not None and not self._usable(conn):
            del self._taken[slot]
            conn = None
        if conn is None:
            with self._lock:
                while self._idle and conn is None:
                    conn = self._idle.pop()
                    conn = conn if self._usable(conn) else None
            conn = conn or self._connect()
            self._taken[slot] = conn
        return conn

    def give_back(self, slot: int) -> None:
        conn = self._taken.pop(slot, None)
        if conn is None:
            return
        if self._reusable(conn):
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def close_if(self, dropped: Callable[[Any], bool]) -> None:
        """Close the connections kept that ``dropped`` says are gone, for :meth:`get` to open
        others in their place; only while no thread uses them."""
        with self._lock:
            conns = [*self._taken.values(), *self._idle]
        for conn in conns:
            if dropped(conn):
                conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [*self._taken.values(), *self._idle]
            self._taken.clear()
            self._idle.clear()
        for conn in conns:
            conn.close()


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception (or by the block
    itself, with ``ROLLBACK``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _dicts(cur: Rows) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
