"""The storage layer: each plugin's own tables (``orch_schema``), and what the core asks of a
store, on a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from orch_core.storage import open_store
from orch_core.storage.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from orch_core.testing.kit import OrchState
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
    assert schemas(orch)["rebrief"] == 2


def test_steps_that_are_not_numbered_1_2_3_leave_the_plugin_without_tables_and_say_so(
    orch: OrchState, orch_module: Callable[[str, str], Path]
) -> None:
    orch_module("gappy", NOTES.replace("STEPS = {1:", "STEPS = {2:"))
    orch.write_config('[plugins]\nload = ["gappy"]\n')
    assert orch.run_hook(payload("Stop"), ORCH_AGENT="p:1").exit_code == 0
    (run,) = orch.store.runs()
    assert [p["outcome"] for p in run["plugins"] if p["plugin"] == "gappy"] == ["error"]
    assert "gappy" not in schemas(orch)
    warned = [line["msg"] for line in orch.log() if "orch_schema" in line["msg"]]
    assert warned == ["plugin gappy: orch_schema: give SQL for steps numbered 1, 2, …"]


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
    assert schemas(orch)["rebrief"] == 2  # step 1 counted as there, step 2 applied
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


def test_the_store_is_opened_in_one_place_and_speaks_through_execute_and_transaction(
    orch: OrchState,
) -> None:
    store = open_store(orch.env)
    assert isinstance(store, SQLiteStore) and store.dialect == "sqlite"
    assert store.folder == str(Path(orch.env["ORCH_DB"]).parent)
    with store.transaction() as tx:
        tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (1, 'test', 'kept')")
    try:
        with store.transaction() as tx:
            tx.execute("INSERT INTO alerts (ts, kind, message) VALUES (2, 'test', 'undone')")
            raise RuntimeError("the block fails")
    except RuntimeError:
        pass
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
            for needle in (".conn.", "isinstance(ctx.store", "SQLiteStore", "lastrowid"):
                if needle in text:
                    offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
