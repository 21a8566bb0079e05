"""``orch migrate --to postgresql://...`` and ``orch export``/``orch import`` across stores: a
real SQLite state (made by real hooks and commands) moved into the test kit's PostgreSQL, every
table compared row for row, runs repeated, cut short, refused; then orch switched to the target
and working on there."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orch_core.ops import alerts
from orch_core.queue import Queue
from orch_core.storage import migrate, open_store
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import ROOMY_BUDGET_MS, OrchState
from orch_core.testing.payloads import payload
from orch_core.testing.postgres import Cluster
from orch_core.testing.tmux import TmuxServer

AGENT = "proj:1"
HEADER = re.compile(r"\[orch message (m[0-9a-z]+) from ")
#: The tables this state fills, at least: the core's and the rebrief plugin's.
FILLED = ("messages", "message_events", "agents", "sessions", "hook_runs", "launch_specs",
          "recoveries", "alerts", "agent_context", "activity", "rebriefs")  # fmt: skip


@pytest.fixture
def target(orch: OrchState, orch_postgres: Cluster) -> Iterator[str]:
    """An empty PostgreSQL database (no tables yet) for the SQLite state of ``orch``."""
    url = orch_postgres.create_database(empty=True)
    yield url
    orch_postgres.drop_database(url)


def hook(orch: OrchState, event: str, session: str = "s1", **fields: Any) -> Any:
    transcript = orch.root / f"{session}.jsonl"
    transcript.touch()
    data = payload(event, session_id=session, transcript_path=str(transcript), **fields)
    result = orch.run_hook(data, ORCH_AGENT=AGENT, timeout=30)
    assert result.exit_code == 0, result.stderr
    with transcript.open("a") as f:  # what reached the model, as Claude Code writes it down
        f.write(json.dumps({"type": "attachment", "content": result.stdout}) + "\n")
    return result


def a_working_state(orch: OrchState) -> None:
    """What a machine's SQLite holds after a while: messages in every state with their
    history, an agent and its sessions, a briefing, a checkpoint and a rebrief, activity, a
    launch spec, a recovery, an alert, hook runs."""
    queue = Queue(orch.store)
    assert orch.cli("brief", AGENT, "-", stdin="You keep the docs.\n").returncode == 0
    for i in range(4):
        queue.send(AGENT, f"first {i}", sender="lead")
    hook(orch, "SessionStart", source="startup")
    hook(orch, "PostToolUse", tool_name="Edit", tool_input={"file_path": "README.md"})
    hook(orch, "PostToolUse")  # confirms what the last one delivered
    dead = queue.send(AGENT, "never seen")["id"]
    queue.cancel(dead)
    queue.send(AGENT, "still queued", priority=60, key="k-1")
    queue.send("other:2", "for an agent not heard from", ttl=3600)
    hook(orch, "PreCompact", trigger="auto")
    hook(orch, "SessionStart", session="s2", source="compact")
    store = orch.store
    lifecycle.save_spec(store, AGENT, argv=["claude"], cwd=str(orch.project_dir),
                        env={"A": "1"}, socket=None, session="proj", pane="%1",
                        host="here")  # fmt: skip
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO recoveries (agent, created, reason, step, due, state, finished,"
            " outcome) VALUES (?, ?, 'hung', 'continue', ?, 'done', ?, 'ok')",
            (AGENT, time.time() - 60, time.time() - 50, time.time() - 40),
        )
    alerts.record(store, "gave_up", "proj:1 failed 3 times", agent=AGENT)
    store.remember_session("s1", AGENT, "%1", "/tmp/tmux-0/default")  # a pane's agent


def tables_of(store: Any) -> dict[str, list[str]]:
    """Every row of every table orch moves, each as JSON with its column names, sorted."""
    if store.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    else:
        sql = ("SELECT table_name FROM information_schema.tables"
               " WHERE table_schema = current_schema()")  # fmt: skip
    found = {}
    for (name,) in store.execute(sql).fetchall():
        if name in migrate.OWN_TABLES:
            continue
        cur = store.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in cur.description]
        found[name] = sorted(
            json.dumps(dict(zip(columns, row, strict=True)), sort_keys=True) for row in cur
        )
    return found


def same_rows(orch: OrchState, url: str, *, left: tuple[str, ...] = ()) -> None:
    """The target holds exactly the SQLite state: each table (but those ``left`` behind), each
    row, each column (the ``rowid`` SQLite keeps implicitly aside)."""
    here = {name: rows for name, rows in tables_of(orch.store).items() if name not in left}
    there = open_store({**orch.env, "ORCH_DB": url})
    try:
        copied = tables_of(there)
    finally:
        there.close()
    copied["message_events"] = sorted(
        json.dumps({k: v for k, v in json.loads(row).items() if k != "rowid"}, sort_keys=True)
        for row in copied["message_events"]
    )
    assert set(here) <= set(copied)
    for name in here:
        assert copied[name] == here[name], name


def moved(stdout: str) -> dict[str, tuple[int, int]]:
    """The per-table counts orch migrate printed: rows here, rows moved."""
    return {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"^  (\w+) +(\d+) +(\d+)", stdout, re.MULTILINE)
    }


# -- orch migrate ------------------------------------------------------------------------------


def test_migrate_moves_every_table_and_a_second_run_changes_nothing(
    orch: OrchState, target: str
) -> None:
    a_working_state(orch)
    counts = {name: len(rows) for name, rows in tables_of(orch.store).items()}
    assert [name for name in FILLED if not counts[name]] == [], counts
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stderr
    assert moved(done.stdout) == {name: (n, n) for name, n in counts.items()}
    assert f"{sum(counts.values())} rows moved" in done.stdout
    assert f'database = "{target}"' in done.stdout
    assert f"orch still uses {orch.env['ORCH_DB']}" in done.stdout
    assert not os.path.exists(orch.root / "config" / "orch" / "config.toml"), "config edited"
    same_rows(orch, target)
    again = orch.cli("migrate", "--to", target)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing to move: {target} already holds this state "
                                   f"({sum(counts.values())} rows in ")  # fmt: skip
    same_rows(orch, target)
    # switched: orch goes on there, numbering after what was copied
    pending = sorted(m["body"] for m in Queue(orch.store).messages(state="pending"))
    last = max(m["seq"] for m in Queue(orch.store).messages(AGENT))
    orch.env["ORCH_DB"] = target
    # a hook on a server does its own work: psycopg's import and a connect, slow when busy
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
    assert sorted(m["body"] for m in Queue(orch.store).messages(state="pending")) == pending
    sent = orch.cli("send", AGENT, "after the move", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["seq"] == last + 1
    result = hook(orch, "PostToolUse", session="s3")
    assert json.loads(sent.stdout)["id"] in HEADER.findall(result.context or "")
    runs = orch.store.execute("SELECT count(*), count(DISTINCT id) FROM hook_runs").fetchone()
    assert runs == (counts["hook_runs"] + 1,) * 2
    context = orch.cli("context", AGENT, "--json")
    assert json.loads(context.stdout)["briefing_content"] == "You keep the docs.\n"


def test_a_run_cut_short_leaves_nothing_and_one_resumed_completes(
    orch: OrchState, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_working_state(orch)

    def fail(*_: object) -> None:
        raise RuntimeError("the copy stops here")

    with monkeypatch.context() as patched:
        patched.setattr(migrate, "_advance_sequences", fail)
        with pytest.raises(RuntimeError):
            migrate.migrate(orch.env, str(orch.project_dir), target)
    there = open_store({**orch.env, "ORCH_DB": target})
    assert there.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    there.close()
    # a target holding part of this state (an earlier run, when SQLite held less) is completed
    migrate.migrate(orch.env, str(orch.project_dir), target)
    os.unlink(orch.root / "state" / "migrate.json")  # no record of it: nothing may be replaced
    there = open_store({**orch.env, "ORCH_DB": target})
    with there.transaction() as tx:
        tx.execute("DELETE FROM messages WHERE body LIKE 'first%'")
        tx.execute("DELETE FROM activity")
    there.close()
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stderr
    counts = moved(done.stdout)
    assert counts["messages"][1] == 4 and counts["activity"][1] == counts["activity"][0]
    assert counts["message_events"][1] == 0
    same_rows(orch, target)


def test_what_changed_here_since_comes_over_while_the_target_is_untouched(
    orch: OrchState, target: str
) -> None:
    a_working_state(orch)
    assert orch.cli("migrate", "--to", target).returncode == 0
    queue = Queue(orch.store)
    waiting = queue.messages("other:2")[0]["id"]
    queue.cancel(waiting)  # a row that changed here (and an event that is new)
    hook(orch, "PostToolUse", session="s3")  # an agent still at work
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  messages +7 +1 \(1 changed here since\)$", done.stdout, re.M)
    same_rows(orch, target)


def test_a_target_holding_other_rows_is_refused_and_left_as_it_was(
    orch: OrchState, target: str
) -> None:
    a_working_state(orch)
    assert orch.cli("migrate", "--to", target).returncode == 0
    there = open_store({**orch.env, "ORCH_DB": target})
    Queue(there).send("elsewhere:1", "written since the switch")
    Queue(orch.store).send(AGENT, "sent here since")
    before = tables_of(there)
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: {target} holds rows this machine's state does not have (messages: 1): "
        "another installation's, or written since orch switched to it; nothing was written\n"
    )
    assert tables_of(there) == before
    there.close()


def test_the_database_line_migrate_prints_names_the_target_as_given(
    orch: OrchState, orch_postgres: Cluster, target: str
) -> None:
    """Over a Unix socket (``host=`` a folder), with libpq's parameters: the line once read
    ``postgresql:///folder/db``, a database named after the folder, and dropped ``sslmode``."""
    a_working_state(orch)
    name = target.rsplit("/", 1)[1]
    given = (f"postgresql://orch:pass%40word@/{name}?host={orch_postgres.folder}"
             f"&port={orch_postgres.port}&application_name=orch-test")  # fmt: skip
    done = orch.cli("migrate", "--to", given)
    assert done.returncode == 0, done.stderr
    line = re.search(r'^  database = "(.*)"  # with its password', done.stdout, re.M)
    assert line is not None, done.stdout
    assert line[1] == given.replace(":pass%40word", ""), line[1]
    here = sorted(m["id"] for m in Queue(orch.store).messages())
    orch.env["ORCH_DB"] = line[1]  # as the user's config would name it
    listed = orch.cli("queue", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(m["id"] for m in json.loads(listed.stdout)) == here


def test_migrate_is_refused_while_a_supervisor_runs_and_from_postgresql(
    orch: OrchState, target: str
) -> None:
    a_working_state(orch)
    lock = lifecycle.supervisor_lock(orch.env, blocking=False)
    assert lock is not None
    try:
        done = orch.cli("migrate", "--to", target)
    finally:
        os.close(lock)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: orch supervise is running (pid {os.getpid()}): stop it, then migrate\n"
    )
    done = orch.cli("migrate", "--to", "/tmp/elsewhere.db")
    assert done.returncode == 1 and "--to takes a postgresql:// URL" in done.stderr
    orch.env["ORCH_DB"] = target
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 1 and "orch already uses postgresql://" in done.stderr


def test_an_error_of_the_target_server_names_the_target(orch: OrchState, target: str) -> None:
    """Not ``postgresql://?``: the name of orch's own store, a SQLite file, as a server's."""
    a_working_state(orch)
    with psycopg.connect(target, autocommit=True) as conn:  # a database another program uses
        conn.execute("CREATE TABLE agents (name TEXT)")
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 1
    assert done.stderr.startswith(f'Error: {target}: relation "agents" already exists'), done.stderr


@pytest.mark.tmux
def test_a_windows_agent_goes_on_under_its_id_in_a_new_session_after_the_switch(
    orch: OrchState, target: str
) -> None:
    """A tmux window's agent, ``proj:1`` on SQLite: after the switch its next session there
    (``/clear``, Claude started again) was ``host/proj:1``, a new agent, and what was queued
    for ``proj:1``, moved or sent since, waited forever."""
    with TmuxServer() as tmux:
        pane = tmux.new_window("worker", [sys.executable, "-c", "import time; time.sleep(600)"])
        socket = tmux.cmd("display-message", "-p", "#{socket_path}").strip()
        window = {"TMUX_PANE": pane, "TMUX": f"{socket},1,0", "ORCH_HOST": "alpha"}

        def in_window(event: str, session: str, **fields: Any) -> Any:
            data = payload(event, session_id=session, **fields)
            result = orch.run_hook(data, timeout=30, **window)
            assert result.exit_code == 0, result.stderr
            return result

        in_window("SessionStart", "s1", source="startup")
        (agent,) = [a["id"] for a in orch.store.agents()]
        moved_over = Queue(orch.store).send(agent, "queued before the move")["id"]
        done = orch.cli("migrate", "--to", target)
        assert done.returncode == 0, done.stderr
        orch.env["ORCH_DB"] = target
        orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
        sent = orch.cli("send", agent, "sent after the switch", "--json")
        assert sent.returncode == 0, sent.stderr
        result = in_window("SessionStart", "s2", source="clear")
        delivered = HEADER.findall(result.context or "")
        assert sorted(delivered) == sorted([moved_over, json.loads(sent.stdout)["id"]])
        assert [a["id"] for a in orch.store.agents()] == [agent]


NOTES_PLUGIN = """
from orch_core import hookimpl

@hookimpl
def orch_schema(dialect):
    number = "BIGINT" if dialect == "postgresql" else "INTEGER"
    return {1: f"CREATE TABLE notes_parent (id {number} PRIMARY KEY, title TEXT NOT NULL);"
               f"CREATE TABLE notes (id {number} PRIMARY KEY,"
               f" parent {number} NOT NULL REFERENCES notes_parent (id), body TEXT)"}

@hookimpl
def orch_post_tool_use(event, ctx):
    with ctx.store.transaction() as tx:
        n = tx.execute("SELECT count(*) FROM notes_parent").fetchone()[0] + 1
        tx.execute("INSERT INTO notes_parent (id, title) VALUES (?, ?)", (n, f"call {n}"))
        tx.execute("INSERT INTO notes (id, parent, body) VALUES (?, ?, ?)", (n, n, "seen"))
"""


def test_each_plugins_tables_move_parents_first_and_one_not_loaded_is_named(
    orch: OrchState, target: str
) -> None:
    orch.plugin_module("notes_plugin", NOTES_PLUGIN)
    orch.write_config('[plugins]\nload = ["notes_plugin"]\n')
    for _ in range(3):
        hook(orch, "PostToolUse")
    with orch.store.transaction() as tx:  # a plugin this project no longer loads left this
        tx.execute("CREATE TABLE retired_plugin_log (line TEXT)")
        tx.execute("INSERT INTO retired_plugin_log (line) VALUES ('kept here')")
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 1
    assert moved(done.stdout)["notes"] == (3, 3) and moved(done.stdout)["notes_parent"] == (3, 3)
    assert done.stdout.index("  notes_parent ") < done.stdout.index("  notes ")
    assert ("left behind: retired_plugin_log: no such table in the target: its plugin is not "
            "loaded here, or gives no PostgreSQL schema") in done.stdout  # fmt: skip
    assert done.stderr == "Error: 1 tables were left behind\n"
    same_rows(orch, target, left=("retired_plugin_log",))


# -- orch export / orch import across stores ---------------------------------------------------


def listing(orch: OrchState) -> list[tuple[Any, ...]]:
    out = orch.cli("queue", "--json")
    assert out.returncode == 0, out.stderr
    return sorted(
        (m["id"], m["agent"], m["body"], m["priority"], m["sender"], m["key"])
        for m in json.loads(out.stdout)
    )


@pytest.mark.parametrize("direction", ["sqlite to postgresql", "postgresql to sqlite"])
def test_export_and_import_work_across_stores(orch: OrchState, target: str, direction: str) -> None:
    sqlite_db = orch.env["ORCH_DB"]
    source, destination = (
        (sqlite_db, target) if direction == "sqlite to postgresql" else (target, sqlite_db)
    )
    orch.env["ORCH_DB"] = source
    # hooks on PostgreSQL import psycopg and connect: a test of what moves, not of time
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
    queue = Queue(orch.store)
    queue.send(AGENT, "plain", sender="lead")
    queue.send(AGENT, "ünïcode ✓ and 'quotes' and %s", priority=60, key="k")
    queue.send("other:2", "later", ttl=600)
    hook(orch, "PostToolUse")  # delivers proj:1's: in flight, exported as pending
    exported = orch.cli("export")
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 3
    before = listing(orch)
    orch.env["ORCH_DB"] = destination
    file = orch.root / "pending.jsonl"
    file.write_text(exported.stdout)
    done = orch.cli("import", str(file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported 3 messages (0 already present)"
    assert listing(orch) == before
    assert {m["state"] for m in Queue(orch.store).messages()} == {"queued"}
    assert orch.cli("import", str(file)).stdout.strip() == "imported 0 messages (3 already present)"
    result = hook(orch, "PostToolUse", session="s9")
    assert len(HEADER.findall(result.context or "")) == 2


@pytest.mark.tmux
def test_an_import_into_sqlite_names_this_hosts_windows_as_sqlite_does(
    orch: OrchState, target: str
) -> None:
    """The rollback path from PostgreSQL: a window's agent there is ``alpha/proj:1``, here
    ``proj:1``; its messages were imported for ``alpha/proj:1``, which no hook here is."""
    sqlite_db = orch.env["ORCH_DB"]
    orch.env.update(ORCH_DB=target, ORCH_HOST="alpha")
    orch.write_config(f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n", user=True)
    with TmuxServer() as tmux:
        pane = tmux.new_window("worker", [sys.executable, "-c", "import time; time.sleep(600)"])
        socket = tmux.cmd("display-message", "-p", "#{socket_path}").strip()
        window = {"TMUX_PANE": pane, "TMUX": f"{socket},1,0"}
        data = payload("SessionStart", session_id="s1", source="startup")
        assert orch.run_hook(data, timeout=30, **window).exit_code == 0
        (agent,) = [a["id"] for a in orch.store.agents()]
        assert agent.startswith("alpha/")
        sent = [Queue(orch.store).send(agent, f"on the server {i}")["id"] for i in range(2)]
        other = Queue(orch.store).send("beta/proj:1", "another host's window")["id"]
        exported = orch.cli("export")
        assert exported.returncode == 0, exported.stderr
        orch.env["ORCH_DB"] = sqlite_db
        done = orch.cli("import", "-", stdin=exported.stdout)
        assert done.stdout.strip() == "imported 3 messages (0 already present)", done.stderr
        data = payload("SessionStart", session_id="s2", source="startup")
        result = orch.run_hook(data, timeout=30, **window)
        assert result.exit_code == 0, result.stderr
        assert HEADER.findall(result.context or "") == sent
        waiting = {m["id"]: m["agent"] for m in Queue(orch.store).messages(state="queued")}
        assert waiting == {other: "beta/proj:1"}


def test_a_table_left_behind_moves_on_a_later_run_though_rows_changed_here_since(
    orch: OrchState, target: str
) -> None:
    orch.plugin_module("notes_plugin", NOTES_PLUGIN)
    orch.write_config('[plugins]\nload = ["notes_plugin"]\n')
    hook(orch, "PostToolUse")
    a_working_state(orch)
    orch.write_config("")  # migrated first from a project that does not load the plugin
    first = orch.cli("migrate", "--to", target)
    assert first.returncode == 1 and "left behind: notes:" in first.stdout, first.stdout
    queue = Queue(orch.store)
    queue.cancel(queue.messages("other:2")[0]["id"])  # a row that changed here since
    orch.write_config('[plugins]\nload = ["notes_plugin"]\n')  # then from one that loads it
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stderr
    counts = moved(done.stdout)
    assert counts["notes"][0] == counts["notes"][1] == counts["notes_parent"][1] > 0
    assert re.search(r"^  messages +7 +1 \(1 changed here since\)$", done.stdout, re.M)
    same_rows(orch, target)


def test_a_row_changed_here_since_that_another_tables_rows_name_comes_over(
    orch: OrchState, target: str
) -> None:
    """A plugin's parent row changed here, its children not: written over in the target, not
    deleted (which their foreign key refused, every run again) and added again."""
    orch.plugin_module("notes_plugin", NOTES_PLUGIN)
    orch.write_config('[plugins]\nload = ["notes_plugin"]\n')
    for _ in range(2):
        hook(orch, "PostToolUse")
    assert orch.cli("migrate", "--to", target).returncode == 0
    with orch.store.transaction() as tx:
        tx.execute("UPDATE notes_parent SET title = 'renamed' WHERE id = 1")
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  notes_parent +2 +1 \(1 changed here since\)$", done.stdout, re.M)
    assert moved(done.stdout)["notes"] == (2, 0)
    same_rows(orch, target)


CASED_PLUGIN = """
from orch_core import hookimpl

@hookimpl
def orch_schema(dialect):
    number = "BIGINT" if dialect == "postgresql" else "INTEGER"
    return {1: f"CREATE TABLE ToolCalls (Id {number} PRIMARY KEY, Tool TEXT NOT NULL)"}

@hookimpl
def orch_post_tool_use(event, ctx):
    with ctx.store.transaction() as tx:
        n = tx.execute("SELECT count(*) FROM ToolCalls").fetchone()[0] + 1
        tx.execute("INSERT INTO ToolCalls (Id, Tool) VALUES (?, ?)", (n, event.tool_name))
"""


def test_a_plugins_table_named_in_capitals_moves_as_the_server_folded_its_name(
    orch: OrchState, target: str
) -> None:
    orch.plugin_module("cased_plugin", CASED_PLUGIN)
    orch.write_config('[plugins]\nload = ["cased_plugin"]\n')
    for _ in range(2):
        hook(orch, "PostToolUse", tool_name="Edit")
    done = orch.cli("migrate", "--to", target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert moved(done.stdout)["ToolCalls"] == (2, 2)
    assert "left behind" not in done.stdout
    there = open_store({**orch.env, "ORCH_DB": target})
    try:
        copied = there.execute("SELECT Id, Tool FROM ToolCalls ORDER BY Id").fetchall()
        assert copied == [(1, "Edit"), (2, "Edit")]
    finally:
        there.close()
    again = orch.cli("migrate", "--to", target)
    assert again.returncode == 0 and again.stdout.startswith("nothing to move"), again.stdout
