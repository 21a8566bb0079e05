"""The storage layer: each plugin's own tables (``orch_schema``), what the core asks of a
store, on a real SQLite file and a real PostgreSQL database, and how the backend is chosen."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orch_core.hook.context import Runtime
from orch_core.queue import Queue
from orch_core.storage import open_store, postgres
from orch_core.storage import store as sqlite_store
from orch_core.storage.postgres import WRITE_LOCK, PostgresStore
from orch_core.storage.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, Store, StoreError
from orch_core.testing.kit import ROOMY_BUDGET_MS, OrchState
from orch_core.testing.payloads import payload

NOTES = """
from orch_core import hookimpl

STEPS = {1: "CREATE TABLE notes_seen (id INTEGER PRIMARY KEY, event TEXT NOT NULL)"}

@hookimpl
def orch_schema(dialect):
    return STEPS if dialect == "sqlite" else None

@hookimpl
def orch_stop(event, ctx):
    with ctx.store.transaction() as tx:
        tx.execute("INSERT INTO notes_seen (event) VALUES (?)", (event.name,))
    return f"seen {ctx.store.execute('SELECT count(*) FROM notes_seen').fetchone()[0]}"
"""
NOTES_2 = NOTES.replace(
    'event TEXT NOT NULL)"}',
    'event TEXT NOT NULL)",\n         2: "ALTER TABLE notes_seen ADD COLUMN kind TEXT; '
    "UPDATE notes_seen SET kind = 'old'\"}",
)


def schemas(orch: OrchState) -> dict[str, int]:
    with sqlite3.connect(orch.env["ORCH_DB"]) as db:
        return dict(db.execute("SELECT plugin, version FROM plugin_schemas").fetchall())


def test_hook_orch_schema_gives_a_plugin_its_own_tables_and_their_upgrades(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    module = orch_module("notes", NOTES)
    orch.write_config('[plugins]\nload = ["notes"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").context == "seen 1"
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").context == "seen 2"
    assert schemas(orch)["notes"] == 1
    module.write_text(NOTES_2)  # a new release of the plugin adds a step
    future = time.time() + 5
    os.utime(module, (future, future))  # the plan notices the changed source
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").context == "seen 3"
    assert schemas(orch)["notes"] == 2
    with sqlite3.connect(orch.env["ORCH_DB"]) as db:
        kinds = db.execute("SELECT kind FROM notes_seen ORDER BY id").fetchall()
    assert kinds == [("old",), ("old",), (None,)]  # step 2 ran once, on the rows then there


def test_a_plugins_step_that_fails_is_named_in_the_log_and_by_doctor(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A release whose new step fails: its hooks fail, and the log said only
    ``OperationalError('no such table: ...')``, naming neither plugin nor step, while
    ``orch doctor`` said every plugin was fine."""
    module = orch_module("notes", NOTES)
    orch.write_config('[plugins]\nload = ["notes"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").context == "seen 1"
    module.write_text(NOTES_2.replace("ALTER TABLE notes_seen", "ALTER TABLE notes_sen"))
    future = time.time() + 5
    os.utime(module, (future, future))
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").exit_code == 0
    assert schemas(orch)["notes"] == 1  # the step's transaction left nothing half done
    said = "plugin notes: orch_schema step 2: no such table: notes_sen"
    assert said in str(orch.log())
    assert f"FAIL plugins: {said}\n" in orch.cli("doctor").stdout


def test_the_first_hook_on_a_new_store_waits_its_turn_to_create_the_plugins_tables(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A fleet's first hooks on a new store each create the plugins' tables, one writer at a
    time: a hook whose turn came after a quarter of its budget gave up, though half of it was
    there to wait, and its plugins failed for want of tables (``no such table: agent_context``;
    rebrief's record of the agent's first prompts and tool calls lost)."""
    orch_module("notes", NOTES)
    orch.write_config('[orch]\nbudget_ms = 4000\n[plugins]\nload = ["notes"]\n', user=True)
    SQLiteStore(orch.env["ORCH_DB"]).execute("SELECT 1").fetchall()  # the core's tables only
    other = sqlite3.connect(orch.env["ORCH_DB"], isolation_level=None, check_same_thread=False)
    # another hook, creating tables: past a quarter of the budget (1 s), within the 1.6 s (80%
    # of its half) tables not there at all may wait
    other.execute("BEGIN IMMEDIATE")
    done = threading.Timer(1.25, lambda: other.execute("COMMIT"))
    done.start()
    result = orch.run(payload("Stop"), ORCH_AGENT="p:1")
    done.join()
    other.close()
    assert [p["outcome"] for p in result.plugins if p["plugin"] == "notes"] == ["ok"]
    assert result.context == "seen 1"
    assert schemas(orch)["notes"] == 1


def test_a_plugin_switched_off_creates_no_tables(orch: OrchState) -> None:
    orch.write_config('[plugins]\ndisable = ["rebrief"]\n')
    orch.run_hook(payload("SessionStart", source="startup"), ORCH_AGENT="p:1")
    with sqlite3.connect(orch.env["ORCH_DB"]) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "messages" in tables
    assert not {"agent_context", "activity"} & tables
    assert "rebrief" not in schemas(orch)
    orch.write_config("")  # switched on again: its tables come with its next hook
    orch.run_hook(payload("SessionStart", source="startup"), ORCH_AGENT="p:1")
    assert schemas(orch)["rebrief"] == 3


def test_steps_that_are_not_numbered_1_2_3_leave_the_plugin_without_tables_and_say_so(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("gappy", NOTES.replace("STEPS = {1:", "STEPS = {2:"))
    orch.write_config('[plugins]\nload = ["gappy"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").exit_code == 0
    (run,) = orch.store.runs()
    assert [p["outcome"] for p in run["plugins"] if p["plugin"] == "gappy"] == ["error"]
    assert "gappy" not in schemas(orch)
    # said by each process that builds its plan (the hook's, this test's: their paths differ)
    warned = {line["msg"] for line in orch.log() if "orch_schema" in line["msg"]}
    assert warned == {"plugin gappy: orch_schema: give SQL for steps numbered 1, 2, …"}


def test_a_schema_9_database_keeps_its_briefings(orch: OrchState) -> None:
    """Before schema 10 the core created rebrief's tables: they count as its step 1."""
    Path(orch.env["ORCH_DB"]).parent.mkdir(mode=0o700)
    db = sqlite3.connect(orch.env["ORCH_DB"])
    os.chmod(orch.env["ORCH_DB"], 0o600)
    for step in range(1, 10):
        db.executescript(MIGRATIONS[step] if step != 3 else OLD_STEP_3)
    db.execute("PRAGMA user_version = 9")
    db.execute(
        "INSERT INTO agent_context (agent_id, briefing_content, created_at, updated_at)"
        " VALUES ('p:1', 'You keep the changelog.', 0, 0)"
    )
    db.commit()
    db.close()
    done = orch.cli("context", "p:1", "--json")
    assert done.returncode == 0, done.stderr
    assert '"briefing_content": "You keep the changelog."' in done.stdout
    assert schemas(orch)["rebrief"] == 3  # step 1 counted as there, steps 2 and 3 applied
    assert orch.store.health()["schema_version"] == SCHEMA_VERSION


OLD_STEP_3 = """
CREATE TABLE activity (id INTEGER PRIMARY KEY, agent TEXT NOT NULL, ts REAL NOT NULL,
    kind TEXT NOT NULL, tool TEXT, target TEXT, ok INTEGER NOT NULL DEFAULT 1);
CREATE INDEX activity_agent ON activity(agent, id);
CREATE TABLE agent_context (agent_id TEXT PRIMARY KEY, role TEXT, briefing_content TEXT,
    last_briefing REAL, checkpoint_data TEXT, checkpoint_at REAL,
    rebrief_pending INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
"""


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_the_store_is_opened_in_one_place_and_speaks_through_execute_and_transaction(
    orch: OrchState, orch_backend: str
) -> None:
    store = orch.store
    kind = {"sqlite": SQLiteStore, "postgresql": PostgresStore}[orch_backend]
    assert isinstance(store, kind) and store.dialect == orch_backend
    assert store.folder == orch.env["ORCH_STATE_DIR"]
    with store.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'kept')")
    with pytest.raises(RuntimeError, match="the block fails"), store.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (2, 'test', 'undone')")
        raise RuntimeError("the block fails")  # rolled back, and raised on to the caller
    rows = store.execute("SELECT message FROM alerts ORDER BY id").fetchall()
    assert rows == [("kept",)]


def test_orch_core_speaks_to_the_store_only_through_its_interface() -> None:
    """Capability code asks the store for what it needs: no SQLite connection, no check for
    the SQLite class, outside the storage package."""
    root = Path(__file__).parent.parent
    offenders = []
    for folder in ("orch_core", "plugins/builtin"):
        for path in (root / folder).rglob("*.py"):
            if "storage" in path.parts or "testing" in path.parts:
                continue
            text = path.read_text()
            for needle in (".conn.", "isinstance(ctx.store", "SQLiteStore", "PostgresStore",
                           "psycopg", "lastrowid"):  # fmt: skip
                if needle in text:
                    offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


# -- PostgreSQL ---------------------------------------------------------------------------------


def test_a_postgresql_url_in_orch_db_or_the_users_own_config_picks_postgresql(
    tmp_path: Path,
) -> None:
    """Choosing needs no server: the store connects on first use."""
    env = {"ORCH_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    for url, shown in [
        ("postgresql://fleet:secret@db.internal:5433/orch", "fleet@db.internal:5433/orch"),
        ("postgres://fleet@db/orch", "fleet@db/orch"),
    ]:
        store = open_store({**env, "ORCH_DB": url})
        assert isinstance(store, PostgresStore) and store.dialect == "postgresql"
        assert store.where == f"postgresql://{shown}"  # no password in any message
        assert store.folder == env["ORCH_STATE_DIR"]  # large messages stay on this machine
    assert isinstance(open_store(env), SQLiteStore)  # nothing configured
    config = tmp_path / "cfg" / "orch" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[orch]\nbackup_keep = 3\n")
    assert isinstance(open_store(env), SQLiteStore)  # a config that does not name one
    config.write_text('[orch]\ndatabase = "postgresql://fleet@db.internal/orch"\n')
    store = open_store(env)
    assert isinstance(store, PostgresStore)
    assert store.where == "postgresql://fleet@db.internal/orch"
    assert isinstance(open_store({**env, "ORCH_DB": str(tmp_path / "x.db")}), SQLiteStore)
    config.write_text('[orch]\ndatabase = "/srv/orch.db"\n')
    with pytest.raises(StoreError, match=r"\[orch\] database must be a postgresql:// URL"):
        open_store(env)
    # what the plan refuses to read (too large, nested too deep) picks no database either
    named = '[orch]\ndatabase = "postgresql://fleet@db.internal/orch"\n'
    config.write_text(named + "# " + "x" * 256 * 1024 + "\n")
    with pytest.raises(StoreError, match=r"config.toml: larger than 256 KiB$"):
        open_store(env)
    config.write_text(named + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(StoreError, match="cannot tell which database to use"):
        open_store(env)


def test_a_projects_config_cannot_choose_the_database(orch: OrchState) -> None:
    """A cloned repository must not send an agent's messages to a server of its choosing."""
    del orch.env["ORCH_DB"]  # as on a real machine: the state folder's file, or the user's pick
    orch.write_config('[orch]\ndatabase = "postgresql://them@203.0.113.9/inbox"\n')
    done = orch.cli("queue")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: {orch.project_dir}/.claude/orch.toml: [orch] database: only your own config "
        'may set this, not a project\'s; the default "" is used'
    ]
    assert orch.run_hook(payload("PostToolUse"), ORCH_AGENT="p:1").exit_code == 0
    assert [a["id"] for a in orch.store.agents()] == ["p:1"]  # in the state folder's file
    assert isinstance(orch.store, SQLiteStore)


@pytest.mark.orch_backends("postgresql")
def test_the_users_own_config_sends_every_hook_and_command_to_postgresql(
    orch: OrchState,
) -> None:
    url = orch.env.pop("ORCH_DB")
    orch.write_config(f'[orch]\ndatabase = "{url}"\nbudget_ms = {ROOMY_BUDGET_MS}\n', user=True)
    assert orch.run_hook(payload("PostToolUse"), ORCH_AGENT="p:1").exit_code == 0
    done = orch.cli("send", "p:1", "hello")
    assert done.returncode == 0, done.stderr
    store = orch.store
    assert isinstance(store, PostgresStore)
    assert [a["id"] for a in store.agents()] == ["p:1"]
    assert store.execute("SELECT body FROM messages").fetchall() == [("hello",)]
    assert not os.path.exists(os.path.join(orch.env["ORCH_STATE_DIR"], "orch.db"))


def test_every_core_migration_has_its_postgresql_step() -> None:
    """PostgreSQL starts from the whole schema at its first version; each core migration after
    it needs a step in postgres.MIGRATIONS too."""
    first = min(postgres.MIGRATIONS)
    assert sorted(postgres.MIGRATIONS) == list(range(first, SCHEMA_VERSION + 1))


@pytest.mark.orch_backends("postgresql")
def test_the_postgresql_schema_is_sqlites_in_postgresql_types(
    orch: OrchState, tmp_path: Path
) -> None:
    """Same tables, same columns in the same order (``SELECT *`` gives the same records), same
    types and constraints, same indexes: the core's and the rebrief plugin's."""
    reference = SQLiteStore(str(tmp_path / "reference.db"))
    Runtime.open({**orch.env, "ORCH_DB": reference.path}, str(orch.project_dir), store=reference)
    sqlite_types = {"TEXT": "text", "REAL": "double precision", "INTEGER": "bigint"}
    tables = [
        name
        for (name,) in reference.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
    ]
    expected = {
        table: [
            (name, sqlite_types[kind], bool(notnull or pk))
            for _, name, kind, notnull, _, pk in reference.execute(f"PRAGMA table_info({table})")
        ]
        for table in tables
    }
    expected["message_events"].append(("rowid", "bigint", True))  # SQLite's, made explicit
    expected["schema_version"] = [("version", "bigint", True)]  # SQLite: PRAGMA user_version
    store = orch.store
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for table, name, kind, nullable in store.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ):
        found.setdefault(table, []).append((name, kind, nullable == "NO"))
    assert found == expected
    sqlite_indexes = reference.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall()
    pg_indexes = store.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname NOT IN (SELECT conname FROM pg_constraint)"  # keys' own
    ).fetchall()
    assert sorted(pg_indexes) == sorted(sqlite_indexes)
    assert store.health()["schema_version"] == SCHEMA_VERSION
    reference.close()


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_concurrent_claims_never_hand_a_message_over_twice(orch: OrchState) -> None:
    """Each claim reads the deliverable messages, then marks them delivered: writers must take
    turns (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock) or two hooks would both take
    the same ones."""
    sent = {
        receipt["id"]
        for receipt in Queue(orch.store).send_many(
            [{"agent": "p:1", "text": f"task {i}"} for i in range(120)]
        )
    }
    taken: list[str] = []
    errors: list[BaseException] = []

    def hook(session: str) -> None:
        store = open_store(orch.env)
        try:
            queue = Queue(store)
            while batch := queue.claim("p:1", session, budget=1):
                taken.extend(m["id"] for m in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=hook, args=(f"s{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(taken) == sorted(sent)  # each once


@pytest.mark.orch_backends("sqlite", "postgresql")
def test_concurrent_sends_number_each_agents_messages_once_and_in_the_order_each_sender_sent(
    orch: OrchState, orch_backend: str
) -> None:
    """A send on its own takes no turn on a server (one statement, numbered by the unique
    ``(agent, seq)``); batches take theirs. Several senders at once, each of either kind:
    every number once, each sender's messages in its order, each batch's in a row."""
    errors: list[BaseException] = []
    receipts: dict[str, list[list[dict[str, Any]]]] = {}

    def sender(name: str, batch: int) -> None:
        store = open_store(orch.env)
        try:
            queue = Queue(store)
            sent = receipts.setdefault(name, [])
            for n in range(30):
                items = [{"agent": "p:1", "text": f"{name} {n}.{i}"} for i in range(batch)]
                sent.append(queue.send_many(items))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=sender, args=(f"s{n}", 1)) for n in range(4)]
    threads += [threading.Thread(target=sender, args=(f"b{n}", 3)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    stored = Queue(orch.store).messages("p:1")
    assert sorted(m["seq"] for m in stored) == list(range(1, 4 * 30 + 2 * 30 * 3 + 1))
    seq = {m["id"]: m["seq"] for m in stored}
    for name, sends in receipts.items():
        numbers = [seq[r["id"]] for sent in sends for r in sent]
        assert numbers == sorted(numbers), name
        assert [r["seq"] for sent in sends for r in sent] == numbers  # as the receipts said
        for sent in sends:
            first = seq[sent[0]["id"]]
            assert [seq[r["id"]] for r in sent] == list(range(first, first + len(sent)))
    if orch_backend == "postgresql":  # a send on its own does not wait for the write lock
        import psycopg

        holder = psycopg.connect(orch.env["ORCH_DB"], autocommit=True)
        try:
            holder.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            alone = Queue(orch.store).send("p:1", "while a writer holds the lock")
        finally:
            holder.close()
        assert alone["seq"] == len(stored) + 1


def test_a_new_sqlite_store_waits_for_another_connection_to_give_up_the_file(
    tmp_path: Path,
) -> None:
    """SQLite switches a file to WAL without waiting for other connections (no busy handler):
    a store opened while another writes to the new file (hooks and a supervisor starting at
    once on a fresh store) tries again, within its timeout, instead of failing."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    path = folder / "orch.db"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE creating (x)")
    threading.Timer(0.3, other.execute, ("ROLLBACK",)).start()
    store = SQLiteStore(str(path), timeout=5)
    started = time.monotonic()
    assert store.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert time.monotonic() - started >= 0.25  # it waited for the other connection
    assert store.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    store.close()
    other.close()


def test_a_new_sqlite_file_gets_orchs_page_size_and_an_older_one_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite fixes a file's page size when it first writes it: the store sets orch's before
    the switch to WAL. A store made with SQLite's default 4 KiB pages (every orch before the
    change) keeps them and goes on working."""
    folder = tmp_path / "state"
    fresh = SQLiteStore(str(folder / "fresh.db"))
    assert fresh.execute("PRAGMA page_size").fetchone() == (sqlite_store.PAGE_SIZE,)
    assert sqlite_store.PAGE_SIZE != 4096
    fresh.close()

    monkeypatch.setattr(sqlite_store, "PAGE_SIZE", 4096)
    made_before = SQLiteStore(str(folder / "older.db"))
    assert made_before.execute("PRAGMA page_size").fetchone() == (4096,)
    made_before.close()
    monkeypatch.undo()
    older = SQLiteStore(str(folder / "older.db"))
    assert older.execute("PRAGMA page_size").fetchone() == (4096,)
    sent = Queue(older).send("p:1", "still delivered")
    assert older.execute("SELECT body FROM messages WHERE id = ?", (sent["id"],)).fetchall() == [
        ("still delivered",)
    ]
    older.close()


@pytest.mark.orch_backends("sqlite")
def test_a_send_on_its_own_waits_for_another_sqlite_writer_then_stores_once(
    orch: OrchState,
) -> None:
    """A plain send is one autocommit statement on SQLite: it waits for another writer's turn
    within the store's timeout (no "database is locked"), and stores the message once."""
    queue = Queue(orch.store)
    queue.send("p:1", "first")
    assert isinstance(orch.store, SQLiteStore)
    other = sqlite3.connect(orch.store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'held')")
    threading.Timer(0.3, other.execute, ("COMMIT",)).start()
    started = time.monotonic()
    receipt = queue.send("p:1", "while another writes")
    assert time.monotonic() - started >= 0.25  # it waited for the other writer
    assert [(m["body"], m["seq"]) for m in queue.messages("p:1")] == [
        ("first", 1),
        ("while another writes", 2),
    ]
    assert receipt["seq"] == 2
    other.close()


@pytest.mark.orch_backends("postgresql")
def test_postgresql_writers_take_turns_and_wait_no_longer_than_the_timeout(
    orch: OrchState,
) -> None:
    import psycopg

    first, second = orch.store, orch.store
    with first.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'first')")
        assert second.execute("SELECT count(*) FROM alerts").fetchone() == (0,)  # reads go on
        second.set_timeout(0.05)
        with pytest.raises(psycopg.OperationalError, match="timeout"), second.transaction() as tx:
            tx.execute("SELECT 1")  # the write lock is the first writer's until it commits
    second.set_timeout(second.timeout)
    with second.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (2, 'test', 'second')")
    rows = first.execute("SELECT message FROM alerts ORDER BY id").fetchall()
    assert rows == [("first",), ("second",)]


@pytest.mark.orch_backends("postgresql")
def test_threads_sharing_a_postgresql_connection_take_turns_a_transaction_at_a_time(
    orch: OrchState,
) -> None:
    """With ``one_connection``, a thread's statement never runs inside another thread's
    transaction: it waits for the transaction to end, and no longer than the store's timeout.
    The store is still one several hosts share."""
    store = open_store(orch.env, one_connection=True)
    assert store.shared
    seen: list[object] = []

    def read() -> None:
        try:
            seen.append(store.execute("SELECT count(*) FROM alerts").fetchone())
        except StoreError as exc:
            seen.append(str(exc))

    try:
        with store.transaction() as tx:
            tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'undone')")
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(timeout=0.5)  # it waits for its turn, which comes after this block
            tx.execute("ROLLBACK")
        reader.join()
        assert seen == [(0,)]  # never the row of a transaction not its own
        seen.clear()
        with store.transaction():
            store.set_timeout(0.05)
            reader = threading.Thread(target=read)
            reader.start()
            reader.join()
        assert len(seen) == 1 and "kept the connection for 0.050s" in str(seen[0])
        store.set_timeout(store.timeout)
        with store.transaction() as tx:
            tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'kept')")
        seen.clear()
        reader = threading.Thread(target=read)
        reader.start()
        reader.join()
        assert seen == [(1,)]
    finally:
        store.close()


@pytest.mark.orch_backends("postgresql")
def test_a_hook_on_postgresql_opens_one_connection_for_all_its_plugins(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection costs the server a process and the hook milliseconds: the plugins,
    each in its thread, take turns on one, and still read and write what they must."""
    from orch_core.hook import dispatch

    sent = Queue(orch.store).send("p:1", "Rebase on main")["id"]
    opened: list[PostgresStore] = []
    connect = PostgresStore._connect

    def counted(store: PostgresStore) -> object:
        opened.append(store)
        return connect(store)

    monkeypatch.setattr(PostgresStore, "_connect", counted)
    event = json.dumps(payload("PostToolUse")).encode()
    outcome = dispatch.dispatch(event, {**orch.env, "ORCH_AGENT": "p:1"})
    assert sorted((p["plugin"], p["outcome"]) for p in outcome.plugins) == [
        ("presence", "ok"), ("queue", "ok"), ("rebrief", "ok"),
    ]  # fmt: skip
    assert sent in (outcome.reply.stdout() or "")
    assert len(opened) == 1
    assert orch.store.execute("SELECT count(*) FROM hook_runs").fetchone() == (1,)


@pytest.mark.orch_backends("postgresql")
def test_postgresql_timeouts_and_durability_are_the_stores(orch: OrchState) -> None:
    def shown(store: Store, setting: str) -> str:
        return str(store.execute(f"SHOW {setting}").fetchone()[0])

    hook = open_store(orch.env, timeout=1.5, durable=False)
    cli = open_store(orch.env)
    try:
        assert [shown(hook, s) for s in ("lock_timeout", "statement_timeout")] == ["1500ms"] * 2
        assert (shown(hook, "synchronous_commit"), shown(cli, "synchronous_commit")) == (
            "off", "on",
        )  # fmt: skip
        hook.set_timeout(0.25)  # what is left of the hook's budget
        assert [shown(hook, s) for s in ("lock_timeout", "statement_timeout")] == ["250ms"] * 2
        with pytest.raises(Exception, match="statement timeout"):
            hook.execute("SELECT pg_sleep(2)")
    finally:
        hook.close()
        cli.close()


@pytest.mark.orch_backends("postgresql")
def test_a_transaction_that_went_on_past_a_failed_statement_is_rolled_back_and_says_so(
    orch: OrchState,
) -> None:
    """SQLite undoes only the failed statement; PostgreSQL gives up the whole transaction, so
    a block that carried on must not look committed."""
    store = orch.store
    with pytest.raises(StoreError, match="rolled back"), store.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'lost')")
        try:
            tx.execute("SELECT * FROM no_such_table")
        except Exception:
            pass
    assert store.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    with store.transaction() as tx:  # the connection is fine afterwards
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'kept')")
        tx.execute("ROLLBACK")  # a block may give up by itself, as the queue's claim does
    assert store.execute("SELECT count(*) FROM alerts").fetchone() == (0,)


def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What psycopg sends from now on, a round trip each: a statement on its own, or a
    pipeline of them ("pipeline")."""
    import psycopg

    sent: list[str] = []
    execute, pipeline = psycopg.Connection.execute, psycopg.Connection.pipeline

    def alone(conn: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if conn._pipeline is None:
            sent.append(str(query).split()[0])
        return execute(conn, query, *args, **kwargs)

    def piped(conn: Any) -> Any:
        sent.append("pipeline")
        return pipeline(conn)

    monkeypatch.setattr(psycopg.Connection, "execute", alone)
    monkeypatch.setattr(psycopg.Connection, "pipeline", piped)
    return sent


@pytest.mark.orch_backends("postgresql")
def test_postgresql_sends_a_transactions_statements_in_as_few_round_trips_as_they_allow(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``BEGIN`` and the write lock go with the block's first statement; what the block reads
    later, or never (``Store.later``), with its next statement or the ``COMMIT``."""
    store = orch.store
    store.execute("SELECT 1")
    sent = round_trips(monkeypatch)
    with store.transaction() as tx:
        first = store.later(tx, "INSERT INTO alerts (ts, kind, message) VALUES (1, 't', 'a')"
                                " RETURNING id")  # fmt: skip
        store.later(tx, "INSERT INTO alerts (ts, kind, message) VALUES (2, 't', 'b')")
        assert sent == []
        assert tx.execute("SELECT count(*) FROM alerts").fetchone() == (2,)
        assert sent == ["pipeline"]  # BEGIN, the lock, both inserts and the count
        (alert,) = first.fetchone()
        assert tx.execute("SELECT message FROM alerts WHERE id = ?", (alert,)).fetchone() == ("a",)
        store.later(tx, "UPDATE alerts SET message = 'c' WHERE id = ?", (alert,))
    assert sent == ["pipeline", "SELECT", "pipeline"]  # the update with the COMMIT
    assert rows_of(store, "SELECT message FROM alerts ORDER BY ts") == [("c",), ("b",)]
    with store.transaction():  # nothing in it: nothing sent, no lock taken
        other = orch.store
        other.set_timeout(0.05)
        with other.transaction() as tx:
            tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (3, 't', 'd')")
    assert len(rows_of(store, "SELECT * FROM alerts")) == 3


@pytest.mark.orch_backends("postgresql")
def test_a_postgresql_statement_sent_later_that_fails_rolls_back_its_transaction(
    orch: OrchState,
) -> None:
    import psycopg

    store = orch.store
    with pytest.raises(psycopg.errors.UndefinedTable), store.transaction() as tx:
        store.later(tx, "INSERT INTO alerts (ts, kind, message) VALUES (1, 't', 'lost')")
        store.later(tx, "INSERT INTO no_such_table VALUES (1)")
    assert rows_of(store, "SELECT * FROM alerts") == []
    with store.transaction() as tx:  # the connection is fine afterwards
        store.later(tx, "INSERT INTO alerts (ts, kind, message) VALUES (1, 't', 'kept')")
    assert rows_of(store, "SELECT message FROM alerts") == [("kept",)]


@pytest.mark.orch_backends("postgresql")
def test_a_hook_round_on_postgresql_is_three_round_trips(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The one read; the lock, the confirmation and the claim's read; the claim's update,
    the events and the ``COMMIT`` (seven round trips before they were sent together)."""
    q = Queue(orch.store)
    log = tmp_path / "t.jsonl"
    first, second = (q.send("p:1", text)["id"] for text in ("one", "two"))
    assert [m["id"] for m in q.deliver("p:1", "s", budget=1)] == [first]
    log.write_text(json.dumps({"content": q.render([q.get(first) or {}])}) + "\n")
    sent = round_trips(monkeypatch)
    taken = q.deliver("p:1", "s", transcript_path=str(log), budget=1)
    assert sent == ["SELECT", "pipeline", "pipeline"]
    assert [m["id"] for m in taken] == [second]
    assert (q.get(first) or {})["state"] == "confirmed"
    assert [e["state"] for e in (q.get(first) or {})["events"]] == [
        "queued",
        "delivered",
        "confirmed",
    ]
    assert [e["state"] for e in (q.get(second) or {})["events"]] == ["queued", "delivered"]


def rows_of(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.execute(sql).fetchall()]


def test_a_server_that_is_not_there_is_a_one_line_error_without_the_password(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once it is closed
    url = f"postgresql://fleet:hunter2@127.0.0.1:{port}/orch"
    store = open_store({"ORCH_DB": url, "ORCH_STATE_DIR": str(tmp_path)}, timeout=0.5)
    with pytest.raises(StoreError) as caught:
        store.execute("SELECT 1")
    message = str(caught.value)
    assert message.startswith(f"postgresql://fleet@127.0.0.1:{port}/orch is unreachable: ")
    assert "hunter2" not in message and "\n" not in message


def test_question_marks_become_numbered_placeholders_outside_quoted_literals() -> None:
    assert postgres.translate("SELECT '?', ? FROM t WHERE a LIKE '%x' AND b = ?") == (
        "SELECT '?', $1 FROM t WHERE a LIKE '%x' AND b = $2"
    )
    assert postgres.translate("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"


@pytest.mark.orch_backends("postgresql")
@pytest.mark.orch_roomy_hooks  # the first hook on a new database makes its tables
def test_a_plugin_without_postgresql_tables_fails_alone(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    """A plugin written for SQLite only: its hooks fail for want of tables, and say why; the
    other plugins get theirs."""
    orch_module("notes", NOTES)
    orch.write_config('[plugins]\nload = ["notes"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").exit_code == 0
    (run,) = orch.store.runs()
    assert [p["outcome"] for p in run["plugins"] if p["plugin"] == "notes"] == ["error"]
    assert "plugin notes: orch_schema gives no postgresql SQL" in str(orch.log())
    assert "notes" not in schemas_of(orch.store) and "rebrief" in schemas_of(orch.store)


def schemas_of(store: Store) -> dict[str, int]:
    return dict(store.execute("SELECT plugin, version FROM plugin_schemas").fetchall())


@pytest.mark.orch_backends("postgresql")
def test_backups_restores_and_doctor_leave_a_postgresql_store_to_its_server(
    orch: OrchState,
) -> None:
    from orch_core.storage import backup

    done = orch.cli("backup")
    assert (done.returncode, done.stderr) == (
        1,
        "Error: the store is postgresql, which orch does not back up: use the server's own "
        "tools (pg_dump)\n",
    )
    with pytest.raises(backup.BackupError, match="the store is PostgreSQL"):
        backup.restore(orch.env, str(orch.root / "some-backup.db"))
    assert orch.cli("install").returncode == 0
    report = orch.cli("doctor").stdout
    assert f"ok   database: {orch.env['ORCH_DB']}: schema {SCHEMA_VERSION}\n" in report
    assert "ok   backups: the PostgreSQL server's to take (pg_dump): orch takes none\n" in report


@pytest.mark.orch_backends("postgresql")
def test_an_empty_postgresql_database_gets_the_core_tables_on_first_use(orch: OrchState) -> None:
    env = {**orch.env, "ORCH_DB": orch.new_database(empty=True)}
    first, second = open_store(env), open_store(env)
    try:
        assert first.health()["schema_version"] == SCHEMA_VERSION
        assert second.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    finally:
        first.close()
        second.close()
    latin = open_store({**orch.env, "ORCH_DB": orch.new_database(empty=True, encoding="LATIN1")})
    with pytest.raises(StoreError, match="create the database with ENCODING 'UTF8'"):
        latin.execute("SELECT 1")
