"""Nothing is lost silently, and what is lost can be restored: backups on a schedule and on
demand, ``orch restore``, a damaged database that every command names with its newest backup,
an export that reads what a damaged file still holds, an emptied database that is refused
rather than started over, and large-message files that go when their message has gone."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from orch_core.queue import Queue
from orch_core.storage import backup
from orch_core.storage.store import MIGRATIONS
from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload


def send(orch: OrchState, *bodies: str) -> list[str]:
    queue = Queue(orch.store)
    return [queue.send("a:1", body)["id"] for body in bodies]


def bodies(orch: OrchState) -> list[str]:
    return [m["body"] for m in Queue(orch.store).messages()]


def backed_up(orch: OrchState) -> Path:
    done = orch.cli("backup")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split(" to ")[-1].strip())
    assert path.parent == Path(orch.env["ORCH_STATE_DIR"]) / "backups"
    return path


def settle(db: str) -> None:
    """Everything written into the database file itself (an empty WAL), as after a quiet while."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def damage_a_page_of(db: str, table: str = "messages") -> None:
    """Overwrite one leaf page of ``table`` in the middle of the file, as a bad disk would."""
    settle(db)
    conn = sqlite3.connect(db)
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
        (table,),
    )]  # fmt: skip
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((leaves[len(leaves) // 2] - 1) * size)
        f.write(b"\xff" * size)


def test_orch_backup_takes_a_private_consistent_copy(orch: OrchState) -> None:
    send(orch, "one", "two")
    path = backed_up(orch)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert backup.check(str(path))["messages"] == 2


def test_the_supervisor_backs_up_on_schedule_and_keeps_the_newest(orch: OrchState) -> None:
    orch.write_config("[orch]\nbackup_every = 900\nbackup_keep = 3\n", user=True)
    send(orch, "kept")
    supervisor = lifecycle.Supervisor(orch.env)
    start = time.time()
    taken: list[str] = []
    for step in range(5):  # every 1,000 s a backup falls due
        now = start + step * 1000
        supervisor.housekeeping(now)
        newest = backup.newest(orch.env["ORCH_DB"])
        assert newest is not None and newest not in taken, step  # a new one is taken
        os.utime(newest, (now, now))  # taken at ``now`` on the test's clock, not the real one
        taken.append(newest)
        supervisor.housekeeping(now + 10)  # not due again yet
        assert backup.newest(orch.env["ORCH_DB"]) == newest, step
    kept = backup.backups(orch.env["ORCH_DB"])
    assert kept == taken[:-4:-1]  # the newest three, newest first
    assert all(backup.check(path)["messages"] == 1 for path in kept)


def test_a_backup_taken_after_the_clock_went_back_is_kept(orch: OrchState) -> None:
    """Named after a clock stepped back, it sorted behind the older backups, and rotation
    removed it as it was taken: `orch backup` named a file that was gone."""
    send(orch, "kept")
    db = orch.env["ORCH_DB"]
    start = time.time()
    older = [backup.take(db, keep=3, now=start + step) for step in range(3)]
    taken = backup.take(db, keep=3, now=start - 3600)
    assert backup.check(taken)["messages"] == 1
    assert backup.backups(db) == [older[2], older[1], taken]


def test_restore_puts_a_backup_back_and_keeps_the_current_file_aside(orch: OrchState) -> None:
    send(orch, "before the backup")
    path = backed_up(orch)
    send(orch, "after the backup")
    done = orch.cli("restore", str(path))
    assert done.returncode == 0, done.stderr
    assert bodies(orch) == ["before the backup"]
    aside = done.stdout.strip().split(" the one it replaced is ")[-1]
    conn = sqlite3.connect(aside)
    assert [b for (b,) in conn.execute("SELECT body FROM messages ORDER BY seq")] == [
        "before the backup",
        "after the backup",
    ]
    conn.close()
    assert os.stat(orch.env["ORCH_DB"]).st_mode & 0o777 == 0o600


def test_restore_says_which_messages_sent_after_the_backup_it_leaves_behind(
    orch: OrchState,
) -> None:
    """They were queued, and are no longer: the restore says how many, and how to queue them
    again from the database it set aside (an export of it, imported)."""
    send(orch, "before the backup")
    path = backed_up(orch)
    after, in_flight = send(orch, "after the backup", "in flight")
    queue = Queue(orch.store)
    queue.cancel(after)
    assert in_flight in [m["id"] for m in queue.claim("a:1", "s", budget=8000)]
    send(orch, "also after")
    done = orch.cli("restore", str(path))
    assert done.returncode == 0, done.stderr
    aside = done.stdout.strip().split(" the one it replaced is ")[-1]
    assert done.stderr.strip() == (
        f"note: 2 messages pending in {aside} are not in {path} (sent after it was taken), so no "
        f"longer queued: `ORCH_DB={aside} orch export | orch import -` queues them again"
    )
    exported = subprocess.run(
        [orch_script(), "export"], capture_output=True, text=True, env={**orch.env,
        "ORCH_DB": aside}, cwd=orch.project_dir, timeout=60, check=True,
    )  # fmt: skip
    assert orch.cli("import", "-", stdin=exported.stdout).returncode == 0
    assert sorted(bodies(orch)) == ["also after", "before the backup", "in flight"]
    again = orch.cli("restore", str(backed_up(orch)))  # nothing sent since: no note
    assert (again.returncode, again.stderr) == (0, "")


def test_restore_names_the_messages_it_queues_again_that_had_ended_since_the_backup(
    orch: OrchState,
) -> None:
    """Cancelled (or delivered and confirmed) after the backup, they are queued again by the
    restore: their agents would get them a second time, unless the person cancels them."""
    first, second, kept = send(orch, "first", "second", "kept")
    path = backed_up(orch)
    queue = Queue(orch.store)
    queue.cancel(first)
    queue.cancel(second)
    done = orch.cli("restore", str(path))
    assert done.returncode == 0, done.stderr
    aside = done.stdout.strip().split(" the one it replaced is ")[-1]
    assert done.stderr.strip() == (
        f"note: 2 messages queued again had ended in {aside} after {path} was taken "
        "(confirmed, expired, cancelled or dead): their agents get them again unless each is "
        f"cancelled (`orch queue cancel ID`): {' '.join(sorted([first, second]))}"
    )
    assert kept not in done.stderr
    assert sorted(bodies(orch)) == ["first", "kept", "second"]


def logged(orch: OrchState, msg: str) -> list[dict[str, object]]:
    """The lines of orch's log that say ``msg``."""
    log = Path(orch.env["ORCH_STATE_DIR"]) / "orch.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [record for record in map(json.loads, lines) if record["msg"] == msg]


@pytest.mark.parametrize("harm", ["emptied", "damaged"])
def test_an_emptied_or_damaged_database_never_replaces_the_good_backups(
    orch: OrchState, harm: str
) -> None:
    """Each such backup once rotated a good one out: ``backup_keep`` supervisor runs after
    the harm, every backup held nothing, and the error named one of them."""
    orch.write_config("[orch]\nbackup_every = 900\nbackup_keep = 2\n", user=True)
    send(orch, *(f"message {i:03d} " + "x" * 300 for i in range(100)))
    good = [backed_up(orch), backed_up(orch)]
    orch.store.close()
    if harm == "emptied":
        Path(orch.env["ORCH_DB"]).write_bytes(b"")
    else:
        damage_a_page_of(orch.env["ORCH_DB"])
    for _ in range(3):
        done = orch.cli("backup")
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        said = "is empty" if harm == "emptied" else "is damaged"
        assert f"{orch.env['ORCH_DB']} {said}" in line, line
        assert f"not backed up, the backups there are kept: put the newest back with `orch " \
            f"restore {good[-1]}`" in line, line  # fmt: skip
    supervisor = lifecycle.Supervisor(orch.env)
    start = time.time() + 1000
    for after in (0, 10, 20, 1000):  # tried again after backup_every, not on each housekeeping
        supervisor.housekeeping(start + after)
    refused = logged(orch, "supervisor could not back up the database")
    assert len(refused) == 2 and "not backed up" in str(refused[0]["error"])
    assert backup.backups(orch.env["ORCH_DB"]) == [str(path) for path in reversed(good)]
    assert sorted(os.listdir(good[0].parent)) == sorted(path.name for path in good)
    assert all(backup.check(str(path))["messages"] == 100 for path in good)


def test_orch_backup_refuses_a_link_at_the_database_path(orch: OrchState, tmp_path: Path) -> None:
    """The link was followed: the backup read another database, and SQLite wrote beside it
    (a checkpoint into it, its -wal and -shm made and removed)."""
    send(orch, "mine")
    orch.store.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = elsewhere / "other.db"
    orch_database(other, 13)
    before = (other.read_bytes(), other.stat().st_mtime_ns)
    db = Path(orch.env["ORCH_DB"])
    db.rename(elsewhere / "mine.db")
    db.symlink_to(other)
    done = orch.cli("backup")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert f"{db} is a symbolic link" in line, line
    assert (other.read_bytes(), other.stat().st_mtime_ns) == before
    assert sorted(os.listdir(elsewhere)) == ["mine.db", "other.db"]
    assert backup.backups(str(db)) == []
    db.unlink()
    os.mkfifo(db, 0o600)  # nor anything else that is no regular file
    done = orch.cli("backup")
    assert done.returncode == 1
    assert done.stderr == f"Error: {db} is not a regular file: not backed up\n"


def test_backups_leave_no_wal_beside_them_once_read(orch: OrchState) -> None:
    """Backups were WAL files: each read (a check, a restore) left a -wal and a -shm beside
    it, which no rotation removed. A backup of an older orch still has its removed too."""
    orch.write_config("[orch]\nbackup_keep = 2\n", user=True)
    send(orch, "kept")
    folder = Path(orch.env["ORCH_STATE_DIR"]) / "backups"
    folder.mkdir(mode=0o700)
    older = folder / "orch-20000101T000000.000000Z.db"
    source = sqlite3.connect(orch.env["ORCH_DB"])
    copy = sqlite3.connect(older)
    source.backup(copy)
    copy.close()
    source.close()
    backup.check(str(older))  # as an older orch's backup, read once
    assert {p.name for p in folder.iterdir()} >= {f"{older.name}-wal", f"{older.name}-shm"}
    taken = []
    for _ in range(3):
        taken.append(backed_up(orch))
        backup.check(str(taken[-1]))
        assert taken[-1].read_bytes()[18:20] == b"\x01\x01"  # a rollback journal, not a WAL
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in taken[1:]]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in taken[1:])


@pytest.mark.parametrize("seconds", ["nan", "-1", "inf"])
def test_supervise_for_a_time_that_is_no_time_is_refused(orch: OrchState, seconds: str) -> None:
    """``--for nan`` or ``-1`` ended at once, exit 0, saying nothing."""
    done = orch.cli("supervise", "--for", seconds)
    assert done.returncode == 2
    assert "give a number of seconds, 0 or more" in done.stderr
    orch.env["ORCH_SUPERVISE_FOR"] = seconds
    done = orch.cli("supervise")
    assert done.returncode == 2
    assert "give a number of seconds, 0 or more" in done.stderr


def test_restore_is_refused_while_a_supervisor_runs_and_for_a_bad_file(
    orch: OrchState, tmp_path: Path
) -> None:
    send(orch, "precious")
    path = backed_up(orch)
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("hello")
    done = orch.cli("restore", str(not_a_db))
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: {not_a_db} is not an orch database")
    supervisor = subprocess.Popen([orch_script(), "supervise", "--for", "20"], env=orch.env)
    try:
        deadline = time.monotonic() + 20
        while not lifecycle.supervisor_running(orch.env):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        done = orch.cli("restore", str(path))
        assert done.returncode == 1
        assert "orch supervise is running" in done.stderr and len(done.stderr.splitlines()) == 1
    finally:
        supervisor.terminate()
        supervisor.wait(10)
    assert bodies(orch) == ["precious"]


def test_no_supervisor_starts_while_a_restore_sets_the_database_aside(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook may start the supervisor (auto_restart, idle) while a restore copies: it then
    opened the database being set aside, and went on writing there once the backup took its
    place."""
    send(orch, "precious")
    path = backed_up(orch)
    set_aside = backup._set_aside
    started: list[int | None] = []

    def a_supervisor_starts_meanwhile(db: str) -> str | None:
        lock = lifecycle.supervisor_lock(orch.env, blocking=False)  # as Supervisor.run does
        started.append(lock)
        if lock is not None:
            os.close(lock)
        return set_aside(db)

    monkeypatch.setattr(backup, "_set_aside", a_supervisor_starts_meanwhile)
    assert backup.restore(orch.env, str(path)) is not None
    assert started == [None]
    assert lifecycle.supervisor_running(orch.env) is None  # and the restore let go of the lock


def held(db: str) -> list[str]:
    """The message bodies of a database file set aside."""
    conn = sqlite3.connect(db)
    try:
        return [b for (b,) in conn.execute("SELECT body FROM messages ORDER BY seq")]
    finally:
        conn.close()


def test_restoring_twice_in_one_second_keeps_every_database_aside(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The second restore once set its database aside under the first one's name, and the
    first, with the only copy of "precious2", was gone. A link planted at that name is not
    written through, nor replaced."""
    send(orch, "precious")
    path = backed_up(orch)
    send(orch, "precious2")
    second = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *_: second)
    victim = tmp_path / "victim"
    victim.write_text("not orch's")
    planted = Path(f"{orch.env['ORCH_DB']}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ')}")
    planted.symlink_to(victim)
    first_aside = backup.restore(orch.env, str(path))
    second_aside = backup.restore(orch.env, str(path))
    assert first_aside is not None and second_aside is not None
    assert len({first_aside, second_aside, str(planted)}) == 3
    assert held(first_aside) == ["precious", "precious2"]
    assert held(second_aside) == ["precious"]
    assert bodies(orch) == ["precious"]
    assert planted.is_symlink() and victim.read_text() == "not orch's"


def orch_database(path: Path, version: int) -> None:
    """An orch database of schema ``version``, as that orch made it, with one message."""
    conn = sqlite3.connect(path)
    for step in range(1, version + 1):
        conn.executescript(MIGRATIONS[step])
    conn.execute(
        "INSERT INTO messages (id, agent, seq, priority, body, state, created)"
        " VALUES ('m1', 'a:1', 1, 0, 'from an older orch', 'queued', 1700000000)"
    )
    conn.execute(f"PRAGMA user_version={version}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (None, "it has no orch schema version"),
        (
            "ALTER TABLE messages DROP COLUMN transcript",
            "it has schema 13 but no messages.transcript",
        ),
        ("DROP TABLE hosts", "it has schema 13 but no hosts"),
        ("UPDATE messages SET priority = 'x'", "holds values orch never writes"),
        ("UPDATE messages SET created = 'yesterday'", "holds values orch never writes"),
        ("UPDATE messages SET state = 'lost'", "holds values orch never writes"),
    ],
    ids=["a-messages-table-alone", "a-column-missing", "a-table-missing", "a-text-priority",
         "a-text-time", "an-unknown-state"],
)  # fmt: skip
def test_restore_refuses_a_file_that_is_not_an_orch_database(
    orch: OrchState, tmp_path: Path, change: str | None, said: str
) -> None:
    """Such a file was put in place: every command then failed (``table messages already
    exists``). It is refused before the current database is touched."""
    send(orch, "current")
    fake = tmp_path / "fake.db"
    if change is None:
        conn = sqlite3.connect(fake)
        conn.execute("CREATE TABLE messages (x)")
    else:
        shutil.copy(backed_up(orch), fake)
        conn = sqlite3.connect(fake)
        conn.execute(change)
    conn.commit()
    conn.close()
    done = orch.cli("restore", str(fake))
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: {fake} is not an orch database: ")
    assert done.stderr.endswith(f"{said}\n") and done.stderr.count("\n") == 1
    assert bodies(orch) == ["current"]
    assert not list(Path(orch.env["ORCH_STATE_DIR"]).glob("orch.db.before-restore-*"))
    assert orch.cli("queue").returncode == 0


def test_restore_where_there_was_no_database_says_none_was_set_aside(orch: OrchState) -> None:
    """It named an ``orch.db.before-restore-...`` that was never made."""
    send(orch, "precious")
    path = backed_up(orch)
    orch.store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(orch.env["ORCH_DB"] + suffix).unlink(missing_ok=True)
    done = orch.cli("restore", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"restored {path} (1 messages); there was none to set aside\n"
    assert not list(Path(orch.env["ORCH_STATE_DIR"]).glob("orch.db.before-restore-*"))
    assert bodies(orch) == ["precious"]


def test_restore_refuses_a_url_orch_does_not_know(orch: OrchState) -> None:
    """``ORCH_DB=mysql://x`` was taken for a path: the backup went into a file ``x`` of a
    folder ``mysql:``."""
    send(orch, "precious")
    path = backed_up(orch)
    folder = orch.project_dir / "mysql:"
    folder.mkdir()
    orch.env["ORCH_DB"] = "mysql://x"
    done = orch.cli("restore", str(path))
    assert done.returncode == 1
    assert done.stderr == (
        "Error: mysql:// is no store orch knows: give ORCH_DB a postgresql:// URL or a SQLite "
        "file's path\n"
    )
    assert list(folder.iterdir()) == []


def test_restore_takes_a_database_of_an_older_schema(orch: OrchState, tmp_path: Path) -> None:
    send(orch, "current")
    older = tmp_path / "older.db"
    orch_database(older, 10)
    done = orch.cli("restore", str(older))
    assert done.returncode == 0, done.stderr
    assert bodies(orch) == ["from an older orch"]  # and migrated on the way


def as_anyone() -> None:
    """In a child about to run a program: drop the capabilities that let root write and search
    any folder (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``), so that a folder's mode stops
    root as it stops any user, on any file system (``chattr +i`` needs one that has the flag:
    not tmpfs or overlayfs). Failing, the test fails rather than run as root unchecked."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, kept across exec
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")


def test_a_backup_into_a_folder_that_cannot_be_written_is_one_line(orch: OrchState) -> None:
    send(orch, "precious")
    state = Path(orch.env["ORCH_STATE_DIR"])
    state.chmod(0o500)
    try:
        done = subprocess.run(
            [orch_script(), "backup"], capture_output=True, text=True, env=orch.env,
            cwd=orch.project_dir, timeout=60, check=False,
            preexec_fn=as_anyone if os.geteuid() == 0 else None,
        )  # fmt: skip
    finally:
        state.chmod(0o700)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error: cannot back up {orch.env['ORCH_DB']}: "), line
    assert not (state / "backups").exists()
    assert bodies(orch) == ["precious"]


def test_a_backup_that_fills_the_disk_leaves_no_file_behind(orch: OrchState) -> None:
    """A write that fails half-way (a full disk; here a file size limit) fails the backup with
    one line, and leaves nothing in ``backups/``: not the copy, nor the journal SQLite kept
    beside it, which would otherwise pile up, one each try the supervisor makes."""
    # larger than SQLite's page cache (2 MB), so the copy is written out before it is whole
    Queue(orch.store).send_many([{"agent": "a:1", "text": f"{n} " + "y" * 20_000}
                                 for n in range(150)])  # fmt: skip
    kept = backed_up(orch)

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    done = subprocess.run(
        [orch_script(), "backup"], capture_output=True, text=True, env=orch.env,
        cwd=orch.project_dir, timeout=60, check=False, preexec_fn=small_files,
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error: cannot back up {orch.env['ORCH_DB']}: "), line
    assert os.listdir(kept.parent) == [kept.name]


def test_a_damaged_database_names_the_newest_backup_everywhere(orch: OrchState) -> None:
    send(orch, "one")
    path = backed_up(orch)
    orch.store.close()
    settle(orch.env["ORCH_DB"])
    with open(orch.env["ORCH_DB"], "r+b") as f:
        f.write(b"this is no longer a database header" * 3)
    for command in (["queue"], ["agents"], ["send", "a:1", "two"]):
        done = orch.cli(*command)
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert f"put it back with `orch restore {path}`" in line, line
    doctor = orch.cli("doctor")
    assert doctor.returncode == 1
    assert f"orch restore {path}" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr
    hook = orch.run_hook(payload("PostToolUse"), ORCH_AGENT="a:1")
    assert (hook.exit_code, hook.stdout) == (0, "")  # the agent goes on
    assert orch.cli("restore", str(path)).returncode == 0
    assert bodies(orch) == ["one"]


def test_export_reads_what_a_damaged_file_still_holds(orch: OrchState) -> None:
    sent = send(orch, *(f"message {i:03d} " + "x" * 300 for i in range(300)))
    orch.store.close()
    damage_a_page_of(orch.env["ORCH_DB"])
    done = orch.cli("export")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "malformed" in line and "messages that could still be read were exported" in line
    exported = [json.loads(row) for row in done.stdout.splitlines()]
    assert 200 < len(exported) < 300
    assert all(r["body"] == f"message {sent.index(r['id']):03d} " + "x" * 300 for r in exported)
    assert f"the {len(exported)} messages" in line


def test_export_reads_what_a_file_that_lost_its_end_still_holds(orch: OrchState) -> None:
    """A file shorter than its header says (its last pages lost), which no process has open,
    was refused whole by SQLite: not one of its messages was exported."""
    sent = send(orch, *(f"message {i:03d} " + "x" * 300 for i in range(300)))
    for store in list(orch.opened):  # else the WAL index left says how long the file was
        store.close()
    settle(orch.env["ORCH_DB"])
    assert sorted(os.listdir(Path(orch.env["ORCH_DB"]).parent)) == ["orch.db", "plans"]
    size = os.path.getsize(orch.env["ORCH_DB"])
    os.truncate(orch.env["ORCH_DB"], size - 3 * 2048)  # three pages of orch's size
    done = orch.cli("export")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    exported = [json.loads(row) for row in done.stdout.splitlines()]
    assert len(exported) > 250, line
    assert all(r["body"] == f"message {sent.index(r['id']):03d} " + "x" * 300 for r in exported)
    assert f"the {len(exported)} messages that could still be read were exported" in line


def test_export_of_a_file_whose_messages_table_cannot_be_read_says_so(orch: OrchState) -> None:
    """Not "0 messages read, at least 0 rows could not be", as if it had held none."""
    send(orch, *(f"message {i:03d}" for i in range(50)))
    orch.store.close()
    settle(orch.env["ORCH_DB"])
    with open(orch.env["ORCH_DB"], "r+b") as f:
        f.write(b"this is no longer a database header" * 3)
    done = orch.cli("export")
    assert (done.returncode, done.stdout) == (1, "")
    (line,) = done.stderr.splitlines()
    assert line.endswith("; no message could be read: the messages table itself cannot be, so "
                         "how many it held is unknown"), line  # fmt: skip


def test_a_salvaged_pending_export_is_what_a_pending_export_is(orch: OrchState) -> None:
    """Not a message typed with --push (delivered, no session): imported, it would be
    delivered a second time."""
    queue = Queue(orch.store)
    inflight, pushed, cancelled, queued = send(orch, "in flight", "pushed", "gone", "queued")
    assert queue.mark_pushed(pushed)
    queue.cancel(cancelled)
    assert [m["id"] for m in queue.claim("a:1", "s", budget=100)] == [inflight]
    pending = {r["id"] for r in queue.export()}
    assert pending == {queued, inflight}
    records, lost = backup.salvage(orch.env["ORCH_DB"], pending_only=True)
    assert ({r["id"] for r in records}, lost) == (pending, 0)
    records, _ = backup.salvage(orch.env["ORCH_DB"], pending_only=False)
    assert {r["id"] for r in records} == {queued, inflight, pushed, cancelled}


@pytest.mark.parametrize("evidence", ["backups", "wal"])
def test_an_emptied_database_is_refused_not_started_over(orch: OrchState, evidence: str) -> None:
    send(orch, "precious")
    if evidence == "backups":
        path = backed_up(orch)
    else:
        Path(orch.env["ORCH_DB"] + "-wal").write_bytes(b"\0" * 4096)
    orch.store.close()
    Path(orch.env["ORCH_DB"]).write_bytes(b"")
    done = orch.cli("queue")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "is missing or empty, but" in line
    if evidence == "backups":
        assert f"`orch restore {path}`" in line
    hook = orch.run_hook(payload("PostToolUse"), ORCH_AGENT="a:1")
    assert hook.exit_code == 0
    assert os.path.getsize(orch.env["ORCH_DB"]) == 0  # not silently re-initialised
    if evidence == "backups":
        assert orch.cli("restore", str(path)).returncode == 0
        assert bodies(orch) == ["precious"]


def test_large_message_files_go_when_their_message_has_gone(orch: OrchState) -> None:
    queue = Queue(orch.store)
    ended, pending = (queue.send("a:1", f"{name} " + "y" * 20_000)["id"] for name in "ab")
    for message in queue.claim("a:1", "s", budget=8000) + queue.claim("a:1", "s", budget=8000):
        queue.render([message])  # spills it to a file
    files = {p.stem: p for p in (Path(orch.env["ORCH_STATE_DIR"]) / "messages").iterdir()}
    assert set(files) == {ended, pending}
    queue.cancel(ended)
    queue.sweep()
    assert queue.prune_spills(retention=3600) == 0  # within the retention: the model may read it
    assert queue.prune_spills(retention=3600, now=time.time() + 3601) == 1
    assert not files[ended].exists() and files[pending].exists()


def test_doctor_reports_dead_messages_and_never_ends_in_a_traceback(orch: OrchState) -> None:
    queue = Queue(orch.store)
    queue.max_attempts = 1
    mid = queue.send("a:1", "never seen")["id"]
    queue.claim("a:1", "s", now=time.time() - 1000)
    queue.sweep()  # unconfirmed past confirm_seconds, out of attempts
    assert queue.get(mid)["state"] == "dead"  # type: ignore[index]
    lock = Path(orch.env["ORCH_STATE_DIR"]) / "supervise.lock"
    lock.mkdir()  # the lock cannot be opened: that check cannot run
    done = orch.cli("doctor")
    assert done.returncode == 1
    assert f"FAIL messages: 1 dead; newest {mid}: not confirmed in time, after 1 deliveries" in (
        done.stdout
    )
    assert "FAIL supervisor: cannot check: IsADirectoryError" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_full_disk_does_not_stop_the_supervisor_or_its_check(
    orch: OrchState, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", full)
    fd = lifecycle.supervisor_lock(orch.env, blocking=False)  # the pid cannot be written...
    assert fd is not None  # ...and the lock holds all the same
    try:
        assert lifecycle.supervisor_running(orch.env) == -1  # running, pid unknown
    finally:
        os.close(fd)
    assert lifecycle.supervisor_running(orch.env) is None


def test_a_supervisor_whose_state_folder_was_removed_stops_and_another_takes_its_place(
    orch: OrchState,
) -> None:
    """The state folder removed to start afresh took the supervisor's lock file with it: the
    next hook or send found no supervisor and started one, and both restarted and woke the
    same agents, the first for ever."""
    state = Path(orch.env["ORCH_STATE_DIR"])
    first = subprocess.Popen([orch_script(), "supervise", "--for", "60"], env=orch.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while lifecycle.supervisor_running(orch.env) != first.pid:
            assert time.monotonic() < deadline, "the supervisor never took its lock"
            time.sleep(0.05)
        shutil.rmtree(state, ignore_errors=True)  # the supervisor may write there meanwhile
        _, err = first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and b"Traceback" not in err
    (said,) = [r for r in orch.log() if r["msg"].startswith("supervisor stops")]
    assert said["lock"] == str(state / "supervise.lock")
    assert lifecycle.supervisor_running(orch.env) is None  # the next one may start
