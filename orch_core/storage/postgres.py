"""PostgreSQL as orch's store: one database that the agents of several machines can share.

:class:`PostgresStore` keeps :class:`~orch_core.storage.store.SQLiteStore`'s contract, so the
core and the plugins run on it unchanged:

- **SQL**: callers write ``?`` placeholders; :func:`translate` numbers them as the server's own
  ``$1``, ``$2``, …, once per statement text, and the connections' cursors are psycopg's
  ``RawCursor``: psycopg then sends the statement as it is, where its ``%s`` placeholders are
  parsed in Python on every call of a statement with more than 50 of them (a batch of 100
  messages: 3.7 ms of parsing, docs/benchmarks.md).
- **Writers take turns**, as SQLite's ``BEGIN IMMEDIATE`` makes them: every transaction begins
  with ``pg_advisory_xact_lock`` on :data:`WRITE_LOCK`, sent with its first statement.
  orch's claims read, then write, in one transaction (the messages an agent may take, the next
  sequence number, whether a recovery is under way) and count on nobody writing in between.
  SERIALIZABLE would abort one of two such transactions instead, and the block would have to
  run again, which a ``with store.transaction()`` block cannot. The transactions are short, with
  no I/O inside them, so one writer at a time costs little (docs/benchmarks.md), and readers
  never wait. Under READ COMMITTED each statement after the lock sees every earlier commit.
  A write whose unique keys keep it right goes alone (:meth:`PostgresStore.write_alone`: a
  plain ``orch send``, one round trip instead of three).
- **Time**: the store's timeout is the session's ``lock_timeout`` and ``statement_timeout``
  (the hook passes what is left of its budget). orch bounds the rest itself, as libpq would
  not: connecting gets :data:`CONNECT_SHARE` of the timeout, and each wait for the server's
  answer the timeout for each statement answered (a pipeline's lock and statements alike) and
  :data:`~orch_core.storage.bounded.SLACK`, so a server that stopped answering costs an agent
  no more than a locked SQLite file, and a command or the supervisor a few seconds, never for
  ever. A transaction left idle (a process stopped
  while it held the write lock) is ended by the server after :data:`IDLE_IN_TRANSACTION`.
- **Durability**: ``durable=False`` (the hook path) commits with ``synchronous_commit = off``:
  like SQLite's ``synchronous=NORMAL``, a commit survives the crash of any client; a crash of
  the server may lose the last fraction of a second of them, never their order.
- **Schema**: :data:`MIGRATIONS` are the core's tables in PostgreSQL's types, by core schema
  version; the first step is the whole SQLite schema at that version, each later core migration
  adds its step here as in SQLite's. The version is the one row of ``schema_version``.
- **Connections**: one per thread (handed to the next thread by :meth:`PostgresStore.release`),
  or with ``one_connection`` one for the whole process, on which threads take turns: a
  statement at a time, a transaction from its ``BEGIN`` to its ``COMMIT``. Each connection
  costs the server a process and the client a few milliseconds; orch-hook's plugins, which run
  at once in threads of their own and each make a few short statements, share one
  (docs/benchmarks.md).
- **Outages**: a connection the server dropped (it stopped, restarted, or the network went) is
  noticed on its next use, which fails with :class:`~orch_core.storage.store.DatabaseUnreachable`
  (never a half-done transaction: the server rolls it back); the use after opens a fresh one.
  A failed connection attempt, or a server that stopped answering, is answered from memory for
  :data:`HOLDOFF`, so the threads of one hook, or the steps of one command (each of
  ``orch doctor``'s checks), do not each wait for the server in turn.
- **Several machines**: :attr:`shared` is true, so each machine is a host of the fleet
  (:mod:`orch_core.hosts`). :meth:`PostgresStore.notify` is ``pg_notify`` inside the
  transaction that wrote (delivered when it commits, never if it rolls back), and
  :meth:`PostgresStore.listen` a connection of its own that runs ``LISTEN``: how a message sent on
  one host wakes an agent on another at once.
- **Backups**: none here (:meth:`Store.back_up` gives ``None``): ``pg_dump`` and the server's
  own are the operator's tools. :attr:`folder` is still this machine's private state folder,
  where the text of large messages goes.

psycopg is imported only here, when a ``postgresql://`` store is opened: never on SQLite's path.
"""

from __future__ import annotations

import _thread  # the documented low-level API, as in store.py
import contextlib
import time

from orch_core.storage.store import (
    SCHEMA_VERSION,
    DatabaseUnreachable,
    Pool,
    Store,
    StoreError,
)

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

    import psycopg

    from orch_core.storage.bounded import BoundedConnection
    from orch_core.storage.store import Connection

#: The advisory lock every write transaction takes first ("orch" in ASCII).
WRITE_LOCK = 0x6F726368
TAKE_WRITE_LOCK = f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"
IDLE_IN_TRANSACTION = "60s"
COMMITTING = " as it committed (whether the transaction took effect is unknown)"
#: Seconds a failed connection attempt, or a server that stopped answering, is remembered (and
#: repeated without asking the server) by every store of the process on that database.
HOLDOFF = 1.0
#: Per database URL, until when (``time.monotonic()``) it is known not to answer, and how.
_DOWN: dict[str, tuple[float, str]] = {}
#: The share of the store's timeout that connecting may take (a hook's: a quarter of a second
#: of its half second), bounded here: libpq's own bound is two seconds at least, and a server
#: that takes the connection and never answers (stopped, or packets dropped on the way) would
#: otherwise hold a hook past its backstop, its plugins' answers (a deny) with it.
CONNECT_SHARE = 0.5
#: The shortest piece of a password taken out of what libpq says (:func:`_secrets`): a shorter
#: one would take letters out of its words.
SECRET_PIECE = 4
#: Statements translated so far, by their text; cleared when it grows past :data:`KEEP_SQL`
#: (``IN (?, ?, …)`` lists make statements of many lengths).
_translated: dict[str, str] = {}
KEEP_SQL = 1000

# Column order follows SQLite's tables (``SELECT *`` gives the same records); ``REAL`` is double
# precision, ``INTEGER`` 64 bits. The text columns orch sorts by compare byte for byte
# (``COLLATE "C"``), as SQLite's do. ``message_events.rowid`` is SQLite's implicit row number
# made explicit: ``ORDER BY ts, rowid`` keeps events of one instant in the order they happened.
MIGRATIONS: dict[int, str] = {
    10: """
    CREATE TABLE schema_version (version BIGINT NOT NULL);
    INSERT INTO schema_version (version) VALUES (0);
    CREATE TABLE agents (
        id TEXT COLLATE "C" PRIMARY KEY,
        state TEXT NOT NULL DEFAULT 'unknown',
        session_id TEXT,
        project_dir TEXT,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        state_changed DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        pane TEXT,
        created DOUBLE PRECISION NOT NULL,
        tmux_socket TEXT,
        stop_blocks BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE hook_runs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        agent TEXT,
        session_id TEXT,
        duration_ms DOUBLE PRECISION NOT NULL,
        exit_code BIGINT NOT NULL,
        ok BIGINT NOT NULL,
        plugins TEXT NOT NULL
    );
    CREATE INDEX hook_runs_errors ON hook_runs(ok, id);
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        agent TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        priority BIGINT NOT NULL,
        sender TEXT,
        body TEXT NOT NULL,
        key TEXT,
        state TEXT NOT NULL,
        after_id TEXT,
        not_before DOUBLE PRECISION,
        expires DOUBLE PRECISION,
        attempts BIGINT NOT NULL DEFAULT 0,
        checks BIGINT NOT NULL DEFAULT 0,
        session_id TEXT,
        reason TEXT,
        created DOUBLE PRECISION NOT NULL,
        delivered DOUBLE PRECISION,
        confirmed DOUBLE PRECISION,
        ended DOUBLE PRECISION,
        transcript TEXT,
        answered_by DOUBLE PRECISION,
        transcript_from BIGINT,
        UNIQUE (agent, seq)
    );
    CREATE INDEX messages_ready ON messages(agent, state, priority DESC, seq);
    CREATE INDEX messages_key ON messages(agent, key) WHERE key IS NOT NULL;
    CREATE INDEX messages_expiring ON messages(agent, expires)
        WHERE state = 'queued' AND expires IS NOT NULL;
    CREATE INDEX messages_waiting ON messages(agent, after_id)
        WHERE state = 'queued' AND after_id IS NOT NULL;
    CREATE INDEX messages_inflight ON messages(session_id, delivered) WHERE state = 'delivered';
    CREATE TABLE message_events (
        message_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        detail TEXT,
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY
    );
    CREATE INDEX message_events_id ON message_events(message_id, ts);
    CREATE TABLE launch_specs (
        agent TEXT PRIMARY KEY,
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL,
        tmux_socket TEXT,
        tmux_session TEXT NOT NULL,
        pane TEXT,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE recoveries (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        step TEXT NOT NULL,
        due DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        started DOUBLE PRECISION,
        verify_by DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        outcome TEXT
    );
    CREATE INDEX recoveries_agent ON recoveries(agent, created);
    CREATE INDEX recoveries_state ON recoveries(state, due);
    CREATE TABLE alerts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent TEXT,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE TABLE plugin_schemas (
        plugin TEXT PRIMARY KEY,
        version BIGINT NOT NULL
    )
    """,
    11: """
    ALTER TABLE alerts ADD COLUMN key TEXT;
    ALTER TABLE alerts ADD COLUMN project_dir TEXT;
    ALTER TABLE alerts ADD COLUMN cleared DOUBLE PRECISION;
    ALTER TABLE alerts ADD COLUMN acked DOUBLE PRECISION;
    ALTER TABLE alerts ADD COLUMN sent DOUBLE PRECISION;
    ALTER TABLE alerts ADD COLUMN channels TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE alerts ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN next_try DOUBLE PRECISION;
    ALTER TABLE alerts ADD COLUMN error TEXT;
    CREATE UNIQUE INDEX alerts_open ON alerts(key) WHERE cleared IS NULL;
    CREATE INDEX alerts_due ON alerts(next_try) WHERE next_try IS NOT NULL;
    CREATE INDEX messages_dead ON messages(agent, ended) WHERE state = 'dead'
    """,
    12: """
    ALTER TABLE sessions ADD COLUMN transcript TEXT;
    CREATE TABLE run_hours (
        hour BIGINT NOT NULL,
        event TEXT NOT NULL,
        runs BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        timeouts BIGINT NOT NULL,
        killed BIGINT NOT NULL,
        durations TEXT NOT NULL,
        PRIMARY KEY (hour, event)
    );
    CREATE TABLE plugin_hours (
        hour BIGINT NOT NULL,
        plugin TEXT NOT NULL,
        runs BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        invalid BIGINT NOT NULL,
        timeouts BIGINT NOT NULL,
        killed BIGINT NOT NULL,
        PRIMARY KEY (hour, plugin)
    );
    CREATE TABLE agent_hours (
        hour BIGINT NOT NULL,
        agent TEXT NOT NULL,
        event TEXT NOT NULL,
        runs BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        timeouts BIGINT NOT NULL,
        killed BIGINT NOT NULL,
        durations TEXT NOT NULL,
        PRIMARY KEY (hour, agent, event)
    );
    CREATE INDEX agent_hours_agent ON agent_hours(agent, hour);
    CREATE TABLE rollups (
        name TEXT PRIMARY KEY,
        done BIGINT NOT NULL
    )
    """,
    13: """
    ALTER TABLE agents ADD COLUMN host TEXT COLLATE "C";
    ALTER TABLE sessions ADD COLUMN host TEXT;
    ALTER TABLE launch_specs ADD COLUMN host TEXT;
    CREATE TABLE hosts (
        host TEXT COLLATE "C" PRIMARY KEY,
        last_seen DOUBLE PRECISION NOT NULL,
        pid BIGINT
    )
    """,
}


def translate(sql: str) -> str:
    """``sql`` with its ``?`` placeholders numbered as the server's ``$1``, ``$2``, …; a ``?``
    inside a quoted literal stays as it is."""
    done = _translated.get(sql)
    if done is None:
        parts = sql.split("'")
        n = 0
        for i in range(0, len(parts), 2):
            pieces = parts[i].split("?")
            for j in range(1, len(pieces)):
                n += 1
                pieces[j] = f"${n}{pieces[j]}"
            parts[i] = "".join(pieces)
        done = "'".join(parts)
        if len(_translated) >= KEEP_SQL:
            _translated.clear()
        _translated[sql] = done
    return done


class PostgresStore(Store):
    """The store of a fleet that spans machines: a PostgreSQL database.

    :param url: ``postgresql://user@host/db`` (libpq's URL: password, port and options too).
    :param folder: this machine's private state folder (large messages' files).
    :param timeout: seconds a statement may wait or run; the hook passes what is left of its
        budget.
    :param durable: wait for each commit to reach the server's disk (``synchronous_commit``).
    :param one_connection: the process's threads take turns on one connection instead of one each,
        waiting for their turn no longer than a statement may wait.
    """

    dialect = "postgresql"
    shared = True

    def __init__(
        self,
        url: str,
        folder: str,
        *,
        timeout: float = 5.0,
        durable: bool = True,
        one_connection: bool = False,
    ) -> None:
        self.url = url
        self.folder = folder
        self.timeout = timeout
        self.durable = durable
        self.one_connection = one_connection
        #: With ``one_connection``: held by the thread whose turn it is on the connection, how long
        #: another waits for it (the statement timeout), and which thread has it.
        self._turn = _thread.allocate_lock()
        self._turn_wait = timeout
        self._turn_holder: int | None = None
        self._pool = Pool(self._connect, reusable=_idle, usable=lambda conn: not conn.closed)
        self._migrated = False
        self._lock = _thread.allocate_lock()

    @property
    def where(self) -> str:
        """The database, as messages may show it: without its password."""
        return public(self.url)

    @property
    def conn(self) -> BoundedConnection:
        """This thread's connection (with ``one_connection``, the process's), opened (and the schema
        migrated) on first use, and again after the server dropped it."""
        conn: BoundedConnection = self._pool.get(0 if self.one_connection else _thread.get_ident())
        return conn

    def release(self) -> None:
        """This thread is done with the store: keep its connection for the next thread."""
        if not self.one_connection:
            self._pool.give_back(_thread.get_ident())

    def anew(self) -> None:
        """As :meth:`Store.anew`, and a connection kept that the server has dropped meanwhile
        (restarted, or the session ended) is replaced before the next statement would fail on
        it: a look at its socket, no round trip."""
        _DOWN.pop(self.url, None)
        self._pool.close_if(_dropped)

    def _conninfo(self) -> str:
        """The URL with orch's session settings: its timeouts, durability, name, encoding."""
        import math

        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        down = _DOWN.get(self.url)
        if down is not None and time.monotonic() < down[0]:
            raise DatabaseUnreachable(down[1])
        wait = _ms(self.timeout)
        given = conninfo_to_dict(self.url)
        options = (
            f" -c lock_timeout={wait} -c statement_timeout={wait}"
            f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION}"
            f" -c synchronous_commit={'on' if self.durable else 'off'}"
        )
        return make_conninfo(
            self.url,
            options=(str(given.get("options") or "") + options).strip(),
            connect_timeout=given.get("connect_timeout") or max(2, math.ceil(self.timeout)),
            application_name=given.get("application_name") or "orch",
            client_encoding="UTF8",
        )

    def _connect(self) -> BoundedConnection:
        import psycopg

        try:
            conninfo = self._conninfo()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {one_line(exc, self.url)}") from None
        try:
            conn = _connect_within(conninfo, self.timeout * CONNECT_SHARE)
            conn.statement_timeout = self.timeout
        except (psycopg.Error, TimeoutError) as exc:
            said = f"{self.where} is unreachable: {one_line(exc, self.url)}"
            _DOWN[self.url] = (time.monotonic() + HOLDOFF, said)
            raise DatabaseUnreachable(said) from None
        _DOWN.pop(self.url, None)
        try:
            with self._lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        except Exception as exc:
            lost = self.lost(conn, exc)
            conn.close()
            if lost is exc:
                raise
            raise lost from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: BoundedConnection) -> None:
        """The core tables at :data:`SCHEMA_VERSION`: one read when they are."""
        import psycopg

        try:
            if _value(conn.execute("SELECT version FROM schema_version")) == SCHEMA_VERSION:
                return
        except psycopg.errors.UndefinedTable:
            pass
        with Transaction(self, conn) as tx:
            found = _value(tx.execute("SELECT to_regclass('schema_version') IS NOT NULL"))
            have = _value(tx.execute("SELECT version FROM schema_version")) if found else 0
            if have > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema {have} is newer than this orch ({SCHEMA_VERSION})"
                )
            if not have:
                encoding = _value(tx.execute("SHOW server_encoding"))
                if encoding != "UTF8":
                    raise StoreError(
                        f"{self.where} uses {encoding}: orch keeps any text, so create the "
                        "database with ENCODING 'UTF8'"
                    )
            for step in range(have + 1 if have else min(MIGRATIONS), SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        tx.execute(statement)
            tx.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        doing: str = "",
    ) -> psycopg.Cursor[Any]:
        """``sql`` on this thread's connection, in its turn; ``timeout``: the server's
        statement timeout that ``sql`` sets, which bounds the wait for its answer and after;
        ``doing``: what a lost connection interrupted (:meth:`lost`)."""
        taken = self.take_turn()
        try:
            conn = self.conn
            if timeout is not None:
                conn.statement_timeout = timeout
            try:
                return conn.execute(translate(sql), params)  # the rows are fetched already
            except Exception as exc:
                raise self.lost(conn, exc, doing) from exc
        finally:
            if taken:
                self.give_turn()

    def take_turn(self) -> bool:
        """With ``one_connection``, wait for this thread's turn on the connection; whether it was
        taken here (``False``: every thread has its own, or this one has its turn already)."""
        me = _thread.get_ident()
        if not self.one_connection or self._turn_holder == me:
            return False
        if not self._turn.acquire(timeout=max(0.001, self._turn_wait)):
            raise StoreError(
                f"{self.where}: another thread of this process kept the connection for "
                f"{self._turn_wait:.3f}s"
            )
        self._turn_holder = me
        return True

    def give_turn(self) -> None:
        self._turn_holder = None
        self._turn.release()

    def lost(self, conn: BoundedConnection, exc: Exception, doing: str = "") -> Exception:
        """``exc`` as :class:`DatabaseUnreachable` if it cost the connection (the next use
        opens another), else ``exc`` itself."""
        if not conn.closed:
            return exc
        said = f"{self.where}: the connection was lost{doing}: {one_line(exc)}"
        if conn.gave_up:  # the server stopped answering: ask it no sooner
            _DOWN[self.url] = (time.monotonic() + HOLDOFF, said)
        return DatabaseUnreachable(said)

    def transaction(self) -> Transaction:
        """A transaction that holds the write lock from its first statement on."""
        return Transaction(self)

    def later(self, tx: Connection, sql: str, params: Sequence[Any] = ()) -> Later:
        """Sent with ``tx``'s next statement or its ``COMMIT`` (:class:`Transaction`)."""
        statements: Statements = tx  # type: ignore[assignment] # they are, or wrap them
        return statements.later(sql, params)

    def set_timeout(self, seconds: float) -> None:
        self._turn_wait = seconds
        wait = str(_ms(seconds))
        self.execute(
            "SELECT set_config('lock_timeout', ?, false),"
            " set_config('statement_timeout', ?, false)",
            (wait, wait),
            timeout=seconds,
        )

    def notify(self, tx: Connection, channel: str, payloads: Sequence[str]) -> None:
        """``pg_notify`` in ``tx``, one statement for all ``payloads``: the listeners hear of
        them when it commits. The server sends one of identical notifications of a
        transaction."""
        if payloads:
            self.later(
                tx,
                "SELECT pg_notify(?, p) FROM unnest(CAST(? AS text[])) AS p",
                (channel, list(payloads)),
            )

    def write_alone(
        self, sql: str, params: Sequence[Any] = (), *, notify: tuple[str, Sequence[str]] = ("", ())
    ) -> list[Any]:
        """The statement on its own (autocommit), without the write lock; the notifications
        in a part of it that its answer reads (a ``WITH`` part nobody reads is not run), sent
        only when it wrote a row. It commits as it ends: a connection lost before its answer
        came leaves unknown whether it did (a send said to have failed may be stored)."""
        channel, payloads = notify
        if payloads:
            sql = (
                f"WITH written AS ({sql}), told AS (SELECT pg_notify(?, p)"
                " FROM unnest(CAST(? AS text[])) AS p WHERE EXISTS (SELECT 1 FROM written))"
                " SELECT * FROM written WHERE (SELECT count(*) FROM told) >= 0"
            )
            params = (*params, channel, list(payloads))
        return self.execute(sql, params, doing=COMMITTING).fetchall()

    def listen(self, channel: str) -> Listener:
        """A connection of its own, listening on ``channel`` (the schema made first)."""
        self.execute("SELECT 1")
        return Listener(self, channel)

    def health(self) -> dict[str, Any]:
        version = _value(self.execute("SELECT version FROM schema_version"))
        return {
            "path": self.where,
            "integrity": "ok",  # the server's to keep
            "journal_mode": None,
            "schema_version": version,
            "expected_schema_version": SCHEMA_VERSION,
        }

    def close(self) -> None:
        self._pool.close()

    def __del__(self) -> None:
        """A store nobody holds any more closes its connections (orch-hook never closes its
        own), as SQLite's do when they are collected."""
        try:
            self.close()
        except Exception:
            pass


class Listener:
    """Notifications of one channel, on a connection that does nothing else (it would miss
    none while a transaction of the store's runs). A lost connection is a :class:`StoreError`
    from :meth:`wait`; the listener is done then."""

    def __init__(self, store: PostgresStore, channel: str) -> None:
        import psycopg
        from psycopg import sql

        self.where = store.where
        try:
            self.conn = _connect_within(store._conninfo(), store.timeout * CONNECT_SHARE)
            self.conn.statement_timeout = store.timeout
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreError(f"{self.where}: {str(exc).strip()}") from None

    def wait(self, timeout: float) -> list[str]:
        """The payloads that came within ``timeout`` seconds: the wait ends with the first
        arrival, which brings along every other one already there."""
        import psycopg

        try:
            return [n.payload for n in self.conn.notifies(timeout=timeout, stop_after=1)]
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"{self.where}: {str(exc).strip()}") from None

    def close(self) -> None:
        self.conn.close()


class Transaction:
    """``BEGIN`` and the write lock, ... ``COMMIT``; rolled back on any exception (or by the
    block itself, with ``ROLLBACK``). PostgreSQL, unlike SQLite, gives up the whole
    transaction when one of its statements fails: a block that went on after such a failure
    is rolled back, and says so.

    The ``BEGIN`` and the lock go with the block's first statement, and statements whose rows
    the block reads later (:meth:`PostgresStore.later`) with the next one or the ``COMMIT``,
    in one round trip (psycopg's pipeline mode): a hook's claim is two round trips, not six.
    """

    def __init__(self, store: PostgresStore, conn: BoundedConnection | None = None) -> None:
        self.store = store  # a store nobody else holds closes its connections: not mid-block
        self._conn = conn  # the store's own (taken on entry) unless given
        self.taken = False
        self.statements: Statements | None = None

    @property
    def conn(self) -> BoundedConnection:
        if self._conn is None:
            self._conn = self.store.conn
        return self._conn

    def __enter__(self) -> Statements:
        self.taken = self.store.take_turn()  # with ``one_connection``, the turn lasts to the end
        try:
            self.statements = Statements(self.store, self.conn)
        except BaseException:
            self._give_turn()
            raise
        return self.statements

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self._end(exc_type)
        finally:
            self._give_turn()

    def _give_turn(self) -> None:
        if self.taken:
            self.taken = False
            self.store.give_turn()

    def _end(self, exc_type: object) -> None:
        from psycopg.pq import TransactionStatus

        statements = self.statements
        if statements is None or (
            statements.begun is None and (exc_type is not None or not statements.pending)
        ):
            return  # nothing was sent, so there is nothing to end
        if exc_type is None and statements.pending:
            try:
                statements.send("COMMIT", doing=COMMITTING)  # with the statements still to send
            except Exception:
                if self.conn.info.transaction_status == TransactionStatus.INERROR:
                    with contextlib.suppress(Exception):  # one failed: COMMIT did not run
                        self.conn.execute("ROLLBACK")
                raise
            return
        status = self.conn.info.transaction_status
        if status == TransactionStatus.IDLE:
            return  # the block rolled back itself
        committing = exc_type is None and status == TransactionStatus.INTRANS
        try:
            self.conn.execute("COMMIT" if committing else "ROLLBACK")
        except Exception as exc:
            if exc_type is not None:
                return  # the block's own error says more
            raise self.store.lost(self.conn, exc, COMMITTING if committing else "") from exc
        if exc_type is None and not committing:
            raise StoreError("a statement of the transaction failed: it was rolled back")


class Statements:
    """What a transaction block gets: ``execute`` and ``executemany`` with ``?`` SQL; what is
    still to be sent (``pending``: the ``BEGIN`` and the lock, then the statements of
    :meth:`later`) goes with the next statement."""

    __slots__ = ("begun", "conn", "pending", "store")

    def __init__(self, store: PostgresStore, conn: BoundedConnection) -> None:
        self.store = store
        self.conn = conn
        #: The transaction's first statement has been sent (``None``: nothing was sent yet).
        self.begun: bool | None = None
        self.pending: list[tuple[Later, str, Sequence[Any]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.pending or self.begun is None:
            return self.send(sql, params)
        try:
            return self.conn.execute(translate(sql), params)
        except Exception as exc:
            raise self.store.lost(self.conn, exc) from exc

    def later(self, sql: str, params: Sequence[Any] = ()) -> Later:
        rows = Later(self)
        self.pending.append((rows, translate(sql), params))
        return rows

    def send(self, sql: str = "", params: Sequence[Any] = (), *, doing: str = "") -> Any:
        """What is pending, then ``sql`` (if any), in one round trip; ``sql``'s cursor."""
        conn, pending = self.conn, self.pending
        # one wait for every answer, each statement's up to the server's timeout
        waiting = len(pending) + bool(sql)
        if self.begun is None:
            self.begun = False
            pending[:0] = [(Later(self), "BEGIN", ()), (Later(self), TAKE_WRITE_LOCK, ())]
            waiting += 1  # the lock (the BEGIN waits for nothing)
        self.pending = []
        cur = conn.cursor()
        try:
            with conn.answers(waiting), conn.pipeline():
                for rows, query, args in pending:
                    rows.cur = conn.cursor()
                    rows.cur.execute(query, args)
                if sql:
                    cur.execute(translate(sql), params)
        except Exception as exc:
            raise self.store.lost(conn, exc, doing) from exc
        self.begun = True
        return cur

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any:
        if self.pending or self.begun is None:
            self.send()
        cur = self.conn.cursor()
        rows = list(params)  # one wait for the answers of them all
        try:
            with self.conn.answers(len(rows)):
                cur.executemany(translate(sql), rows)
        except Exception as exc:
            raise self.store.lost(self.conn, exc) from exc
        return cur


class Later:
    """The rows of a statement sent later (:meth:`Statements.later`): reading them before it
    went sends it, with whatever else is pending."""

    __slots__ = ("cur", "statements")

    def __init__(self, statements: Statements) -> None:
        self.statements = statements
        self.cur: psycopg.Cursor[Any] | None = None

    def _sent(self) -> psycopg.Cursor[Any]:
        if self.cur is None:
            self.statements.send()
        assert self.cur is not None
        return self.cur

    @property
    def rowcount(self) -> int:
        return self._sent().rowcount

    @property
    def description(self) -> Any:
        return self._sent().description

    def fetchone(self) -> Any:
        return self._sent().fetchone()

    def fetchall(self) -> list[Any]:
        return self._sent().fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._sent().fetchall())


def _connect_within(conninfo: str, seconds: float) -> BoundedConnection:
    """A :class:`BoundedConnection`, giving up after ``seconds`` (``TimeoutError``). The attempt
    goes on in its thread until libpq's own bound, and closes what it got once nobody waits for
    it."""
    import psycopg

    from orch_core.storage.bounded import BoundedConnection

    got: list[Any] = []
    done = _thread.allocate_lock()
    done.acquire()
    guard = _thread.allocate_lock()

    def attempt() -> None:
        conn: BoundedConnection | None = None
        error: BaseException | None = None
        try:
            conn = BoundedConnection.connect(
                conninfo, autocommit=True, cursor_factory=psycopg.RawCursor
            )
        except BaseException as exc:  # handed to the waiting thread
            error = exc
        with guard:
            if got:  # the waiter gave up: this connection is nobody's
                if conn is not None:
                    conn.close()
                return
            got.append((conn, error))
        done.release()

    _thread.start_new_thread(attempt, ())
    answered = done.acquire(timeout=max(0.001, seconds))
    with guard:
        if not answered and not got:
            got.append((None, None))
            raise TimeoutError(f"no answer within {seconds:.3f}s")
    conn, error = got[0]
    if error is not None:
        raise error
    connected: BoundedConnection = conn
    return connected


def public(url: str) -> str:
    """The database of ``url``, as messages may show it: without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "postgresql://?"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return _scrub(f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}", url)


def without_password(url: str) -> str:
    """``url`` as given (its host, a socket's folder, ``sslmode`` and every other parameter)
    but for a password, in its user part or its ``password`` parameter."""
    from urllib.parse import unquote

    scheme, _, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        user, _, hosts = authority.rpartition("@")
        authority = f"{user.partition(':')[0]}@{hosts}"
    path, mark, query = path.partition("?")
    kept = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) != "password"]
    return f"{scheme}://{authority}{path}" + (f"{mark}{'&'.join(kept)}" if kept else "")


def one_line(exc: BaseException, url: str | None = None) -> str:
    """What the server or libpq said, on one line (libpq adds a hint on a line of its own),
    with ``url``'s password taken out: libpq quotes a URL it cannot read whole."""
    said = str(exc)
    if url and url in said:
        said = said.replace(url, without_password(url))
    if url:
        said = _scrub(said, url)
    return " ".join(said.split())


def _scrub(text: str, url: str) -> str:
    """``text`` without ``url``'s password, whole or in the pieces libpq may have read it as
    (:func:`_secrets`)."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> list[str]:
    """The password of ``url`` as written, longest first. libpq ends the user part at the first
    ``@`` or ``/``: the pieces of a password holding one are read as a host, a port or a
    database, and a value it cannot decode (a ``%`` not followed by two hex digits, a space) is
    quoted whole in its error. So: the user part's password up to the URL's last ``@``, its
    pieces, and the ``password`` parameters' values, but none shorter than
    :data:`SECRET_PIECE`."""
    from urllib.parse import unquote

    head, _, query = url.partition("://")[2].partition("?")
    found = []
    if "@" in head:
        password = head.rpartition("@")[0].partition(":")[2]
        found += [password, *password.replace("/", "@").split("@")]
    for param in query.split("&"):
        key, _, value = param.partition("=")
        if unquote(key) == "password":
            found += [value, unquote(value)]
    return sorted({s for s in found if len(s) >= SECRET_PIECE}, key=len, reverse=True)


def _value(cur: psycopg.Cursor[Any]) -> Any:
    """The one value a statement returns."""
    row = cur.fetchone()
    assert row is not None
    return row[0]


def _idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` is in no transaction: a thread done with it may hand it on."""
    from psycopg.pq import TransactionStatus

    return conn.info.transaction_status == TransactionStatus.IDLE


def _dropped(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has ended ``conn``'s session: at rest, with no statement running, a
    connection hears from the server only when it ends the session (its last words, then the
    end of the stream). Anything else said at rest costs a reconnection, no more."""
    import select

    if conn.closed or not _idle(conn):
        return False
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN)
    return bool(poll.poll(0))


def _ms(seconds: float) -> int:
    """A timeout in milliseconds, at least 1 (0 would mean none at all)."""
    return max(1, int(seconds * 1000))
