"""The real ``orch`` CLI for the queue: send, queue, agents, export and import, as processes."""

from __future__ import annotations

import datetime
import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orch_core.queue import MARK, MAX_TEXT, Queue, marked
from orch_core.testing.kit import ROOMY_BUDGET_MS, OrchState, hook_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import Recorder, TmuxServer, wait_until

# tests of what plugins do, not of time
pytestmark = [pytest.mark.orch_backends("sqlite", "postgresql"), pytest.mark.orch_roomy_hooks]


def test_the_roomy_hooks_marker_gives_hooks_room_on_postgresql_only(
    orch: OrchState, orch_backend: str
) -> None:
    """``orch_roomy_hooks`` (this module's): the user's config gives hooks 3 s on PostgreSQL,
    where each imports psycopg and connects; on SQLite the default budget stands."""
    config = Path(orch.env["XDG_CONFIG_HOME"]) / "orch" / "config.toml"
    if orch_backend == "postgresql":
        assert config.read_text() == f"[orch]\nbudget_ms = {ROOMY_BUDGET_MS}\n"
    else:
        assert not config.exists()


ORCH = os.path.join(os.path.dirname(sys.executable), "orch")
WEIRD = (
    "  leading spaces\n\ttab, \"double\" and 'single' quotes, $HOME and ${PATH},\n"
    "`whoami` and $(id -u); rm -rf /tmp/x\r\nCRLF line, emoji 🚀👩‍💻, trailing  \n\n"
)


def cli(
    orch: OrchState, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``orch ARGS`` as a user would; stdout/stderr decoded as UTF-8, byte for byte."""
    done = subprocess.run(
        [ORCH, *args],
        input=stdin,
        capture_output=True,
        env=env or orch.env,
        cwd=orch.project_dir,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def ok(orch: OrchState, *args: str, stdin: bytes = b"") -> str:
    done = cli(orch, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def db(orch: OrchState, sql: str, *args: object) -> list[tuple[Any, ...]]:
    store = orch.store
    try:
        return store.execute(sql, args).fetchall()
    finally:
        store.close()


def send_json(orch: OrchState, *args: str, stdin: bytes = b"") -> dict[str, Any]:
    receipt: dict[str, Any] = json.loads(ok(orch, "send", *args, "--json", stdin=stdin))
    return receipt


def hook(orch: OrchState, agent: str, event: str = "PostToolUse", **fields: Any) -> None:
    """A hook of ``agent``, so that orch has heard from it."""
    assert orch.run_hook(payload(event, **fields), ORCH_AGENT=agent).exit_code in (0, 2)


# -- orch send ---------------------------------------------------------------------------------


def test_send_prints_a_receipt_and_notes_an_unknown_agent(orch: OrchState) -> None:
    out = ok(orch, "send", "proj:1", "build the docs")
    ((message_id, seq, state, body),) = db(orch, "SELECT id, seq, state, body FROM messages")
    assert (seq, state, body) == (1, "queued", "build the docs")
    assert out.splitlines() == [
        f"queued {message_id} for proj:1 (#1, priority 0 normal)",
        "note: orch has not heard from proj:1 yet; the message waits for its first hook "
        "(or use --push)",
    ]
    hook(orch, "proj:1")
    out = ok(orch, "send", "proj:1", "and the tests", "--priority", "120")
    ((second,),) = db(orch, "SELECT id FROM messages WHERE seq = 2")
    assert out == f"queued {second} for proj:1 (#2, priority 120 emergency)\n"


def test_send_json_with_every_option(orch: OrchState) -> None:
    hook(orch, "proj:1")
    first = send_json(orch, "proj:1", "first")
    receipt = send_json(
        orch, "proj:1", "second", "--priority", "60", "--from", "lead", "--key", "k-1",
        "--ttl", "1h30m", "--after", first["id"], "--in", "10m",
    )  # fmt: skip
    assert receipt["id"].startswith("m") and receipt["id"] != first["id"]
    assert {k: receipt[k] for k in ("agent", "seq", "priority", "state", "known_agent")} == {
        "agent": "proj:1", "seq": 2, "priority": 60, "state": "queued", "known_agent": True,
    }  # fmt: skip
    ((sender, key, after, created, expires, not_before),) = db(
        orch, "SELECT sender, key, after_id, created, expires, not_before FROM messages"
        " WHERE id = ?", receipt["id"],
    )  # fmt: skip
    assert (sender, key, after) == ("lead", "k-1", first["id"])
    assert expires - created == pytest.approx(5400)
    assert 590 < not_before - created <= 600
    at = send_json(orch, "proj:1", "third", "--at", "2099-01-02T03:04:05")
    assert db(orch, "SELECT not_before FROM messages WHERE id = ?", at["id"]) == [
        (datetime.datetime(2099, 1, 2, 3, 4, 5).timestamp(),)
    ]
    clock = send_json(orch, "proj:1", "fourth", "--at", "07:30")
    ((when, created),) = db(
        orch, "SELECT not_before, created FROM messages WHERE id = ?", clock["id"]
    )
    local = datetime.datetime.fromtimestamp(when)
    assert (local.hour, local.minute, local.second) == (7, 30, 0)
    assert created < when <= created + 86400


def test_send_in_through_python_m_starts_the_supervisor_with_that_python(
    orch: OrchState, tmp_path: Path
) -> None:
    """``python -m orch_core.cli`` of an interpreter with no ``orch`` beside it (a ``pip install
    --user``): the supervisor that delivers the message when due is started through it."""
    from orch_core.supervisor import lifecycle

    # a virtual environment of its own, with no scripts, that sees this one's packages (an
    # editable install's too: its .pth files are read by addsitedir, not from PYTHONPATH)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    (venv / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(os.path.realpath(sys.executable))}\n"
    )
    packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    packages.mkdir(parents=True)
    (packages / "outer.pth").write_text(
        "".join(f"import site; site.addsitedir({folder!r})\n" for folder in site.getsitepackages())
    )
    done = subprocess.run(
        [str(python), "-m", "orch_core.cli", "send", "proj:1", "later", "--in", "10m"],
        capture_output=True, text=True, env=orch.env, cwd=orch.project_dir, timeout=60,
        check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert db(orch, "SELECT body, state FROM messages") == [("later", "queued")]
    deadline = time.monotonic() + 20
    while (pid := lifecycle.supervisor_running(orch.env)) in (None, -1):
        assert time.monotonic() < deadline, Path(orch.env["ORCH_STATE_DIR"], "supervise.log")
        time.sleep(0.05)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert argv == [os.fsencode(python), b"-P", b"-m", b"orch_core.cli", b"supervise"]


def test_send_in_stores_and_succeeds_when_the_supervisor_cannot_start(orch: OrchState) -> None:
    """The message is committed before the supervisor is started: a failure there is a
    warning and exit 0, or a script that retries would store the message twice."""
    os.makedirs(Path(orch.env["ORCH_STATE_DIR"], "supervise.lock"))  # cannot be opened
    done = cli(orch, "send", "proj:1", "later", "--in", "10m")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued ")
    assert done.stderr.startswith("warning: the message is stored, but orch could not start its "
                                  "supervisor (")  # fmt: skip
    assert done.stderr.count("\n") == 1, done.stderr
    assert "supervise.lock" in done.stderr and "start orch supervise" in done.stderr
    assert db(orch, "SELECT body, state FROM messages") == [("later", "queued")]


def test_send_reads_the_text_from_stdin_byte_for_byte(orch: OrchState) -> None:
    receipt = send_json(orch, "proj:1", "-", stdin=WEIRD.encode())
    assert db(orch, "SELECT body FROM messages WHERE id = ?", receipt["id"]) == [(WEIRD,)]
    assert receipt["body"] == WEIRD


def test_send_with_a_pending_key_stores_nothing_new(orch: OrchState) -> None:
    first = send_json(orch, "proj:1", "deploy", "--key", "d1")
    out = ok(orch, "send", "proj:1", "deploy again", "--key", "d1")
    assert out == f"{first['id']} already queued for proj:1 with key 'd1': nothing new stored\n"
    again = send_json(orch, "proj:1", "deploy again", "--key", "d1")
    assert again["id"] == first["id"]
    assert again["duplicate"] is True
    assert db(orch, "SELECT id, body FROM messages") == [(first["id"], "deploy")]
    # past its TTL, unswept, the first is no longer pending: a resend is stored, and delivered
    short = send_json(orch, "proj:2", "deploy v1", "--key", "d2", "--ttl", "0.3s")
    time.sleep(0.5)
    resent = send_json(orch, "proj:2", "deploy v1 (retry)", "--key", "d2")
    assert not resent.get("duplicate")
    listing = json.loads(ok(orch, "queue", "proj:2", "--json"))
    assert {m["id"]: m["state"] for m in listing} == {
        short["id"]: "expired", resent["id"]: "queued",
    }  # fmt: skip


def test_the_key_help_says_a_repeat_is_stored_once_the_first_is_delivered(
    orch: OrchState,
) -> None:
    """A key stands for a queued message: once a hook has handed it over (in flight, still
    pending), a repeat is stored anew. The help said "while the first is pending", which a
    script resending after a lost reply took for no second copy."""
    first = send_json(orch, "proj:1", "deploy", "--key", "d1")
    store = orch.store
    try:
        assert [m["id"] for m in Queue(store).claim("proj:1", "s1")] == [first["id"]]
    finally:
        store.close()
    assert not send_json(orch, "proj:1", "deploy", "--key", "d1").get("duplicate")
    helped = " ".join(ok(orch, "send", "--help").split())
    assert "a repeat while the first is queued (not yet delivered) stores nothing" in helped


def test_a_pattern_prints_a_list_of_receipts_even_when_one_agent_matches(
    orch: OrchState,
) -> None:
    """``--json`` of a fan-out (a pattern, as ``--all``) is a list however many agents it
    reached: a script reading it must not find an object when the fleet is one agent."""
    hook(orch, "proj:1")
    receipts = json.loads(ok(orch, "send", "proj:*", "to the project", "--json"))
    assert [r["agent"] for r in receipts] == ["proj:1"]
    everyone = json.loads(ok(orch, "send", "--all", "to all", "--json"))
    assert [r["agent"] for r in everyone] == ["proj:1"]
    assert send_json(orch, "proj:1", "by name")["agent"] == "proj:1"  # one agent: its receipt
    assert send_json(orch, "proj:*", "a name", "--exact")["agent"] == "proj:*"


def test_send_fans_out_to_known_agents(orch: OrchState) -> None:
    for agent in ("proj:1", "proj:2", "other:1"):
        hook(orch, agent)
    receipts = json.loads(ok(orch, "send", "proj:*", "to the project", "--json"))
    assert sorted(r["agent"] for r in receipts) == ["proj:1", "proj:2"]
    everyone = json.loads(cli(orch, "send", "ignored", "to all", "--all", "--json").stdout)
    assert sorted(r["agent"] for r in everyone) == ["other:1", "proj:1", "proj:2"]
    # with --all, the one argument is the text, whatever it looks like
    text = "to everyone: " + "x" * 200
    everyone = json.loads(ok(orch, "send", "--all", text, "--json"))
    assert sorted((r["agent"], r["state"]) for r in everyone) == [
        ("other:1", "queued"), ("proj:1", "queued"), ("proj:2", "queued"),
    ]  # fmt: skip
    each = "SELECT agent, count(*) FROM messages WHERE body = ? GROUP BY agent ORDER BY agent"
    assert db(orch, each, text) == [("other:1", 1), ("proj:1", 1), ("proj:2", 1)]
    assert db(orch, "SELECT agent, count(*) FROM messages GROUP BY agent ORDER BY agent") == [
        ("other:1", 2), ("proj:1", 3), ("proj:2", 3),
    ]  # fmt: skip


BAD_SENDS: dict[str, tuple[list[str], str]] = {
    "empty": (["proj:1", ""], "message text is empty"),
    "blank": (["proj:1", " \n\t "], "message text is empty"),
    "priority-word": (["proj:1", "x", "--priority", "high"], "priority must be an integer"),
    "priority-float": (["proj:1", "x", "--priority", "1.5"], "priority must be an integer"),
    "priority-negative": (["proj:1", "x", "--priority", "-1"], "out of range 0-199"),
    "priority-reserved": (["proj:1", "x", "--priority", "200"], "out of range 0-199"),
    "priority-huge": (["proj:1", "x", "--priority", "1000"], "out of range 0-199"),
    "after-unknown": (["proj:1", "x", "--after", "m-nope"], "no message with id 'm-nope'"),
    "after-empty": (["proj:1", "x", "--after", ""], "after is empty"),
    "key-empty": (["proj:1", "x", "--key="], "the key is empty"),
    "ttl-unit": (["proj:1", "x", "--ttl", "5q"], "malformed duration '5q'"),
    "ttl-negative": (["proj:1", "x", "--ttl", "-3m"], "malformed duration '-3m'"),
    "ttl-empty": (["proj:1", "x", "--ttl", ""], "malformed duration ''"),
    "ttl-zero": (["proj:1", "x", "--ttl", "0s"], "malformed duration '0s'"),
    "ttl-dots": (["proj:1", "x", "--ttl", "1.2.3m"], "malformed duration '1.2.3m'"),
    "in-unit": (["proj:1", "x", "--in", "5q"], "malformed duration '5q'"),
    "in-empty": (["proj:1", "x", "--in", ""], "malformed duration ''"),
    "at-bad": (["proj:1", "x", "--at", "25:00"], "--at: cannot read '25:00'"),
    "at-empty": (["proj:1", "x", "--at", ""], "--at: cannot read ''"),
    "in-and-at": (["proj:1", "x", "--in", "5m", "--at", "10:00"], "give --in or --at"),
    "ttl-before-due": (
        ["proj:1", "x", "--in", "2h", "--ttl", "30m"],
        "the ttl ends before the message is due",
    ),
    "ttl-before-at": (
        ["proj:1", "x", "--at", "9999-12-31", "--ttl", "1d"],
        "the ttl ends before the message is due",
    ),
    "sender-too-long": (["proj:1", "x", "--from", "x" * 201], "the limit is 200"),
    "agent": ([":1", "x"], "':1' is not an agent name"),
    "agent-empty": (["", "x"], "'' is not an agent name"),
    "agent-newline": (["a\nb", "x"], "is not an agent name"),
    "agent-escape": (["a\x1b]0;pwned\x07", "x"], "is not an agent name"),
    "pattern-unknown": (["nobody:*", "x"], "no known agent matches"),
}


@pytest.mark.parametrize("case", sorted(BAD_SENDS))
def test_bad_send_is_one_line_error_and_stores_nothing(orch: OrchState, case: str) -> None:
    args, reason = BAD_SENDS[case]
    done = cli(orch, "send", *args)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.startswith("Error: ")
    assert reason in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]
    assert db(orch, "SELECT count(*) FROM message_events") == [(0,)]


def test_send_after_a_cancelled_message_is_one_line_error_and_stores_nothing(
    orch: OrchState,
) -> None:
    """Stored and said queued (exit 0), it was ended dead by the next sweep, never delivered."""
    first = send_json(orch, "proj:1", "first")["id"]
    ok(orch, "queue", "cancel", first)
    for args, stdin in (
        (["proj:1", "then", "--after", first], b""),
        (
            ["--batch", "-"],
            json.dumps({"agent": "proj:1", "text": "then", "after": first}).encode(),
        ),
    ):
        done = cli(orch, "send", *args, stdin=stdin)
        assert (done.returncode, done.stdout) == (1, "")
        where = "--batch line 1: " if args[0] == "--batch" else ""
        assert done.stderr == (
            f"Error: {where}--after: {first} ended cancelled: this message would never be "
            "delivered\n"
        )
    assert db(orch, "SELECT id, state FROM messages") == [(first, "cancelled")]


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        (("x" * (MAX_TEXT + 1)).encode(), f"the limit is {MAX_TEXT}"),
        (b"", "message text is empty"),
        (b"\xff\xfe not utf-8", "stdin is not UTF-8 text"),
    ],
    ids=["over-the-limit", "empty", "not-utf8"],
)
def test_bad_stdin_is_one_line_error_and_stores_nothing(
    orch: OrchState, stdin: bytes, reason: str
) -> None:
    done = cli(orch, "send", "proj:1", "-", stdin=stdin)
    assert done.returncode != 0
    assert done.stderr.startswith("Error: ")
    assert reason in done.stderr
    assert done.stderr.count("\n") == 1
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]


def test_text_at_the_limit_is_accepted(orch: OrchState) -> None:
    receipt = send_json(orch, "proj:1", "-", stdin=b"y" * MAX_TEXT)
    assert db(orch, "SELECT length(body) FROM messages WHERE id = ?", receipt["id"]) == [
        (MAX_TEXT,)
    ]


# -- orch queue --------------------------------------------------------------------------------


def test_queue_lists_in_delivery_order_and_filters(orch: OrchState) -> None:
    low = send_json(orch, "proj:1", "low")
    high = send_json(orch, "proj:1", "high", "--priority", "50")
    low2 = send_json(orch, "proj:1", "low too")
    other = send_json(orch, "proj:2", "other")
    listing = json.loads(ok(orch, "queue", "--json"))
    assert [m["id"] for m in listing] == [high["id"], low["id"], low2["id"], other["id"]]
    for m in listing:
        assert {"id", "agent", "seq", "priority", "state", "band"} <= m.keys()
    mine = json.loads(ok(orch, "queue", "proj:1", "--json"))
    assert [m["id"] for m in mine] == [high["id"], low["id"], low2["id"]]
    ok(orch, "queue", "cancel", low2["id"])
    assert [m["id"] for m in json.loads(ok(orch, "queue", "--state", "cancelled", "--json"))] == [
        low2["id"]
    ]
    pending = json.loads(ok(orch, "queue", "proj:1", "--state", "pending", "--json"))
    assert [m["id"] for m in pending] == [high["id"], low["id"]]
    lines = ok(orch, "queue", "proj:1").splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{high['id']}  proj:1  #2   50 critical")
    assert "queued" in lines[0] and lines[0].endswith("high")
    assert "cancelled" in lines[2]
    done = cli(orch, "queue", "--state", "bogus")
    assert done.returncode != 0
    assert done.stderr.startswith("Error: unknown state 'bogus'")


def test_queue_show_cancel_retry_purge(orch: OrchState) -> None:
    one = send_json(orch, "proj:1", "one", "--from", "lead")
    two = send_json(orch, "proj:1", "two")
    kept = send_json(orch, "proj:2", "kept")
    shown = json.loads(ok(orch, "queue", "show", one["id"]))
    assert (shown["id"], shown["sender"], shown["state"]) == (one["id"], "lead", "queued")
    assert [e["state"] for e in shown["events"]] == ["queued"]

    assert ok(orch, "queue", "cancel", one["id"]) == f"{one['id']} is now cancelled\n"
    assert db(orch, "SELECT state FROM messages WHERE id = ?", one["id"]) == [("cancelled",)]
    again = cli(orch, "queue", "cancel", one["id"])
    assert again.returncode != 0
    assert again.stderr == f"Error: message {one['id']} is already cancelled\n"

    assert ok(orch, "queue", "retry", one["id"]) == f"{one['id']} is now queued\n"
    retried = json.loads(ok(orch, "queue", "show", one["id"], "--json"))
    assert [e["state"] for e in retried["events"]] == ["queued", "cancelled", "queued"]
    not_ended = cli(orch, "queue", "retry", two["id"])
    assert not_ended.returncode != 0
    assert "only dead, expired or cancelled" in not_ended.stderr

    assert ok(orch, "queue", "purge", "proj:1") == "cancelled 2 pending messages of proj:1\n"
    assert db(orch, "SELECT id, state FROM messages ORDER BY agent, seq") == [
        (one["id"], "cancelled"), (two["id"], "cancelled"), (kept["id"], "queued"),
    ]  # fmt: skip


@pytest.mark.parametrize("verb", ["show", "cancel", "retry"])
def test_queue_unknown_id_is_an_error(orch: OrchState, verb: str) -> None:
    send_json(orch, "proj:1", "x")
    done = cli(orch, "queue", verb, "m-nope")
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == "Error: no message with id 'm-nope'\n"


# -- orch agents -------------------------------------------------------------------------------


def test_agents_json_lists_state_last_seen_and_pending(orch: OrchState) -> None:
    hook(orch, "proj:1", "UserPromptSubmit")
    hook(orch, "proj:2", "Stop", session_id="s2")  # nothing queued: it stops, idle
    send_json(orch, "proj:1", "a")
    send_json(orch, "proj:1", "b")
    send_json(orch, "ghost:1", "for an agent without hooks")
    listing = json.loads(ok(orch, "agents", "--json"))
    assert [a["id"] for a in listing] == ["ghost:1", "proj:1", "proj:2"]
    by_id = {a["id"]: a for a in listing}
    for agent in listing:
        assert {"id", "state", "last_seen", "pending"} <= agent.keys()
    assert (by_id["proj:1"]["state"], by_id["proj:1"]["pending"]) == ("busy", 2)
    assert (by_id["proj:2"]["state"], by_id["proj:2"]["pending"]) == ("idle", 0)
    assert by_id["ghost:1"] == {
        "id": "ghost:1", "state": "unknown", "last_seen": None, "pending": 1,
        "restarts_last_hour": 0, "next_action": None, "host": None, "unreachable": False,
    }  # fmt: skip
    assert isinstance(by_id["proj:1"]["last_seen"], float)
    text = ok(orch, "agents").splitlines()
    assert text[0] == "ghost:1\tunknown\tnever seen\t1 pending"
    assert text[1].startswith("proj:1\tbusy\tseen ") and text[1].endswith("\t2 pending")


# -- orch export / import ----------------------------------------------------------------------


def test_export_pending_then_import_twice_adds_no_duplicates(
    orch: OrchState, tmp_path: Path
) -> None:
    sent = [
        send_json(orch, "proj:1", "-", stdin=WEIRD.encode()),
        send_json(orch, "proj:1", "urgent", "--priority", "150", "--key", "k"),
        send_json(orch, "proj:2", "later", "--in", "1h"),
    ]
    gone = send_json(orch, "proj:1", "gone")
    ok(orch, "queue", "cancel", gone["id"])
    exported = ok(orch, "export", "--state", "pending")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert {r["id"] for r in lines} == {r["id"] for r in sent}
    assert ok(orch, "export") == exported  # pending is the default
    everything = ok(orch, "export", "--state", "all").splitlines()
    assert len(everything) == 4
    dump = tmp_path / "pending.jsonl"
    dump.write_text(exported, encoding="utf-8")

    fresh = OrchState.create(tmp_path / "fresh")
    assert ok(fresh, "import", str(dump)) == "imported 3 messages (0 already present)\n"
    assert ok(fresh, "import", str(dump)) == "imported 0 messages (3 already present)\n"
    assert ok(orch, "import", str(dump)) == "imported 0 messages (3 already present)\n"
    moved = [json.loads(line) for line in ok(fresh, "export").splitlines()]
    for record in (*lines, *moved):
        record.pop("seq")  # numbered afresh in the new home, in the same order
    assert moved == lines
    assert db(fresh, "SELECT count(*) FROM messages") == [(3,)]
    assert db(orch, "SELECT count(*) FROM messages") == [(4,)]
    assert db(fresh, "SELECT body FROM messages WHERE id = ?", sent[0]["id"]) == [(WEIRD,)]
    # stdin works too
    assert ok(fresh, "import", "-", stdin=exported.encode()).startswith("imported 0 messages")


def test_export_all_then_import_reads_the_same_but_for_deliveries_in_flight(
    orch: OrchState, tmp_path: Path
) -> None:
    """`orch export --state all | orch import -`: confirmed and cancelled keep their times and
    reasons; a message typed with --push stays delivered (its text is in the pane already);
    one delivered by a hook to a session comes back queued."""
    queue = Queue(orch.store)
    sent = {name: send_json(orch, f"proj:{name}", f"the {name} one")["id"]
            for name in ("confirmed", "cancelled", "pushed", "inflight")}  # fmt: skip
    log = tmp_path / "transcript.jsonl"
    log.write_text(json.dumps({"content": queue.render(queue.claim("proj:confirmed", "s1"))}))
    assert queue.confirm("proj:confirmed", "s1", str(log)) == [sent["confirmed"]]
    ok(orch, "queue", "cancel", sent["cancelled"])
    assert queue.mark_pushed(sent["pushed"])
    queue.claim("proj:inflight", "s2")
    exported = ok(orch, "export", "--state", "all")

    fresh = OrchState.create(tmp_path / "fresh")
    assert ok(fresh, "import", "-", stdin=exported.encode()) == (
        "imported 4 messages (0 already present)\n"
    )
    again = ok(fresh, "export", "--state", "all")
    before, after = ({r["id"]: r for r in map(json.loads, out.splitlines())}
                     for out in (exported, again))  # fmt: skip
    for record in (*before.values(), *after.values()):
        record.pop("seq")
    inflight = before.pop(sent["inflight"])
    assert after.pop(sent["inflight"]) == {**inflight, "state": "queued", "session_id": None}
    assert after == before
    assert before[sent["confirmed"]]["confirmed"] and before[sent["cancelled"]]["ended"]
    assert before[sent["pushed"]]["state"] == "delivered"
    pending = [json.loads(line)["id"] for line in ok(fresh, "export").splitlines()]
    assert pending == [sent["inflight"]]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"id": "m1", "agent": "p:1", "body": "x", "priority": 0, "state": "queued"}\n'
         "not json\n", "line 2: "),
        ('{"id": "m1", "agent": "p:1"}\n', "line 1: not an exported message"),
        ('{"id": "m1", "agent": "p:1", "body": "x"}\n', "lacks priority, state"),
        ('{"id": "m1", "agent": "p:1", "body": "x", "priority": 0, "state": "lost"}\n',
         "line 1: state must be one of queued, delivered, confirmed, expired, cancelled, dead, "
         "not 'lost'"),
        ('{"id": "m1", "agent": "p:1", "body": "x", "priority": 0, "state": "queued"}\n'
         '{"id": "m2", "agent": "p:1", "body": "", "priority": 0, "state": "queued"}\n',
         "line 2: body must be text, not blank"),
    ],
    ids=["not-json", "no-body", "no-priority", "bad-state", "second-empty"],
)  # fmt: skip
def test_bad_import_is_one_line_error_and_stores_nothing(
    orch: OrchState, tmp_path: Path, content: str, reason: str
) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_text(content)
    done = cli(orch, "import", str(dump))
    assert done.returncode != 0
    assert done.stderr.startswith("Error: ")
    assert reason in done.stderr
    assert done.stderr.count("\n") == 1
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]


GOOD = {
    "id": "m1good",
    "agent": "a:1",
    "body": "kept\u2028whole",
    "priority": 0,
    "state": "queued",
    "created": 1_700_000_000.0,
}


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("created", "yesterday", "created must be a time in seconds since 1970"),
        ("created", None, "created must be a time in seconds since 1970"),
        ("created", -1, "created must be a time"),
        ("attempts", "many", "attempts must be a whole number, not 'many'"),
        ("attempts", True, "attempts must be a whole number, not True"),
        ("attempts", 2**63, "attempts must be a whole number"),
        ("expires", "soon", "expires must be a time in seconds since 1970"),
        ("expires", float("inf"), "expires must be a time in seconds since 1970"),
        ("not_before", {}, "not_before must be a time in seconds since 1970"),
        ("after_id", "nosuch", "after_id must be a message id or null, not 'nosuch'"),
        ("after_id", "m2bad", "after_id is the message's own id"),
        ("priority", True, "priority must be an integer 0-200, not True"),
        ("priority", 1.5, "priority must be an integer 0-200"),
        ("priority", 201, "priority must be an integer 0-200"),
        ("id", "x5", "id must be a message id"),
        ("agent", 5, "agent must be an agent name"),
        ("body", 5, "body must be text"),
        ("sender", ["lead"], "sender must be a string of at most 200 characters or null"),
        ("key", "a\x00b", "the message's key contains a NUL character"),
    ],
)  # fmt: skip
def test_an_import_checks_every_field_and_stores_nothing_of_a_bad_file(
    orch: OrchState, tmp_path: Path, field: str, value: Any, said: str
) -> None:
    """The line and the field are named; the good line before it is not stored either, and
    the queue still reads (a created of "yesterday" once broke orch queue, orch stats and the
    hooks)."""
    ok(orch, "send", "a:1", "good message")
    bad = {**GOOD, "id": "m2bad", field: value}
    dump = tmp_path / "poison.jsonl"
    dump.write_text(f"{json.dumps(GOOD)}\n\n{json.dumps(bad)}\n", encoding="utf-8")
    done = cli(orch, "import", str(dump))
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: line 3: {said}"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert db(orch, "SELECT body FROM messages") == [("good message",)]
    for command in (["queue"], ["queue", "--json"], ["stats"], ["export"]):
        cli_ok = cli(orch, *command)
        assert cli_ok.returncode == 0, cli_ok.stderr
    dump.write_text(f"{json.dumps(GOOD, ensure_ascii=False)}\n", encoding="utf-8")
    assert ok(orch, "import", str(dump)) == "imported 1 messages (0 already present)\n"
    assert db(orch, "SELECT body FROM messages WHERE id = 'm1good'") == [("kept\u2028whole",)]


def test_an_import_of_messages_that_wait_for_each_other_is_refused(
    orch: OrchState, tmp_path: Path
) -> None:
    """Neither could ever be delivered."""
    records = [{**GOOD, "id": "m1", "after_id": "m2"}, {**GOOD, "id": "m2", "after_id": "m1"}]
    dump = tmp_path / "cycle.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    done = cli(orch, "import", str(dump))
    assert done.returncode == 1
    assert done.stderr == (
        "Error: line 1: after_id: m1 waits for m2 waits for m1: none could ever be delivered\n"
    )
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_an_import_that_is_not_utf8_is_one_line_naming_it(
    orch: OrchState, tmp_path: Path, source: str
) -> None:
    ok(orch, "send", "a:1", "good message")
    dump = tmp_path / "bad.bin"
    dump.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    if source == "file":
        done = cli(orch, "import", str(dump))
    else:
        done = cli(orch, "import", "-", stdin=dump.read_bytes())
    assert done.returncode == 1
    assert done.stderr == f"Error: {dump if source == 'file' else 'stdin'} is not UTF-8 text\n"
    assert db(orch, "SELECT body FROM messages") == [("good message",)]


HUGE = "1" + "0" * 400 + "s"  # infinity, read as a number


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["a:1", "hi", "--ttl", HUGE], b""),
        (["a:1", "hi", "--in", HUGE], b""),
        (["a:1", "hi", "--ttl", "365251d"], b""),
        (["--batch", "-"], b'{"agent": "a:1", "text": "hi", "ttl": 1e300}\n'),
        (["--batch", "-"], b'{"agent": "a:1", "text": "hi", "in": 1e300}\n'),
    ],
    ids=["ttl", "in", "ttl-1001-years", "batch-ttl", "batch-in"],
)
def test_a_time_too_long_is_refused_not_stored_as_infinity(
    orch: OrchState, args: list[str], stdin: bytes
) -> None:
    """An infinite expiry was stored, and exported as ``Infinity``, which is not JSON."""
    ok(orch, "send", "a:1", "good message")
    done = cli(orch, "send", *args, stdin=stdin)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "is too long a time" in done.stderr
    assert done.stderr.startswith("Error: --batch line 1: ") == (args[0] == "--batch")
    assert db(orch, "SELECT body FROM messages") == [("good message",)]
    assert ok(orch, "send", "a:1", "in a while", "--ttl", "365250d", "--in", "1000d")
    exported = ok(orch, "export")
    assert "Infinity" not in exported
    assert len([json.loads(line) for line in exported.splitlines()]) == 2


# -- orch send --push, against a tmux that behaves like Claude Code ------------------------------

FAKE_TMUX = """#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
if "display-message" in args:  # the pane is alive, on a server older than the agent's hooks
    print(args[args.index("-t") + 1], 0, 1, "")
    sys.exit(0)
if os.environ.get("FAKE_TMUX_FAILS") in ("1", args[-1]):  # the pane is there, takes nothing
    sys.exit(1)
stdin = sys.stdin.read() if "load-buffer" in args else None
with open(os.environ["FAKE_TMUX_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
if args[-1] == "Enter":  # Claude Code takes the prompt at once: its UserPromptSubmit hook runs
    event = {{"hook_event_name": "UserPromptSubmit", "session_id": "s-push", "prompt": "",
              "transcript_path": "/nonexistent", "cwd": os.getcwd()}}
    done = subprocess.run([{hook!r}], input=json.dumps(event).encode(), capture_output=True)
    with open(os.environ["FAKE_TMUX_LOG"] + ".hook", "ab") as out:
        out.write(done.stdout + b"\\n")
"""


def fake_tmux(tmp_path: Path) -> Path:
    """A folder holding a tmux that logs what it is asked (``FAKE_TMUX``), to go first on
    ``PATH``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tmux"
    fake.write_text(FAKE_TMUX.format(python=sys.executable, hook=hook_script()))
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("agent_state", ["busy", "idle"])
def test_push_is_never_also_delivered_by_the_prompt_it_starts(
    orch: OrchState, tmp_path: Path, agent_state: str
) -> None:
    bin_dir = fake_tmux(tmp_path)
    typed_log = tmp_path / "tmux.log"
    store = orch.store
    store.remember_session("s-push", "proj:1", "%7", "/nonexistent/socket")
    store.set_agent_state("proj:1", agent_state, session_id="s-push", project_dir=None)
    env = {**orch.env, "PATH": f"{bin_dir}:{orch.env['PATH']}", "ORCH_AGENT": "proj:1",
           "FAKE_TMUX_LOG": str(typed_log)}  # fmt: skip
    done = cli(orch, "send", "proj:1", "the pushed body", "--push", "--json", env=env)
    assert done.returncode == 0, done.stderr
    typed = [json.loads(line) for line in typed_log.read_text().splitlines()]
    commands = [t["args"][2:] for t in typed]  # after "-S", socket
    buffer = commands[2][2]
    assert commands == [
        ["copy-mode", "-q", "-t", "%7"],  # out of copy mode, where Enter would be no key
        ["capture-pane", "-p", "-e", "-t", "%7"],  # no one's unsent text in its input box
        ["load-buffer", "-b", buffer, "-"],
        ["paste-buffer", "-p", "-d", "-b", buffer, "-t", "%7"],
        ["send-keys", "-t", "%7", "Enter"],
    ]
    assert typed[2]["stdin"] == "the pushed body"  # the body goes on stdin, never in argv
    assert "the pushed body" not in Path(f"{typed_log}.hook").read_text()
    receipt = json.loads(done.stdout)
    assert receipt["state"] == "delivered"
    assert db(orch, "SELECT state, attempts FROM messages") == [("delivered", 1)]
    stored = Queue(orch.store).get(receipt["id"])
    assert stored is not None  # the receipt is what was stored: no delivery time, attempt lost
    assert {k: v for k, v in receipt.items() if k != "known_agent"} == {
        k: v for k, v in stored.items() if k != "events"
    }


@pytest.mark.parametrize(
    "held", [["--in", "10m"], ["--at", "2099-01-01T09:00"], ["--after", "FIRST"]],
    ids=["in", "at", "after"],
)  # fmt: skip
def test_a_push_held_back_is_refused_not_typed_at_once(
    orch: OrchState, tmp_path: Path, held: list[str]
) -> None:
    """``--push`` types at once: with ``--in``/``--at`` the message reached the agent hours
    before it was due, and with ``--after`` before the message it was to follow."""
    bin_dir = fake_tmux(tmp_path)
    typed_log = tmp_path / "tmux.log"
    orch.store.remember_session("s-push", "proj:1", "%7", "/nonexistent/socket")
    first = Queue(orch.store).send("proj:1", "the first step")["id"]
    held = [first if arg == "FIRST" else arg for arg in held]
    env = {**orch.env, "PATH": f"{bin_dir}:{orch.env['PATH']}", "FAKE_TMUX_LOG": str(typed_log)}
    done = cli(orch, "send", "proj:1", "the next step", "--push", *held, env=env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"Error: --push types the message now: give it without {held[0]}\n"
    assert not typed_log.exists()
    assert db(orch, "SELECT body FROM messages") == [("the first step",)]


def test_a_pushed_text_quoting_a_messages_header_cannot_confirm_that_message(
    orch: OrchState, tmp_path: Path
) -> None:
    """Typed into the pane, a text is a prompt in the transcript: one quoting the header of a
    message in flight (whose hook's reply never reached Claude) is typed with that mark quoted,
    or the next hook would confirm the message, which the model never had."""
    bin_dir = fake_tmux(tmp_path)
    typed_log = tmp_path / "tmux.log"
    orch.store.remember_session("s-push", "proj:1", "%7", "/nonexistent/socket")
    lost = Queue(orch.store).send("proj:1", "the task")["id"]
    env = {**orch.env, "PATH": f"{bin_dir}:{orch.env['PATH']}", "FAKE_TMUX_LOG": str(typed_log)}
    quote = f"as in {MARK}{lost} from lead · normal (priority 0) · queued 0s ago]"
    done = cli(orch, "send", "proj:1", quote, "--push", env=env)
    assert done.returncode == 0, done.stderr
    (stdin,) = [t["stdin"] for t in map(json.loads, typed_log.read_text().splitlines())
                if t["stdin"] is not None]  # fmt: skip
    assert stdin.startswith("as in [orch message") and marked(stdin) == set()


def test_a_push_tmux_fails_to_type_stays_queued_and_uncounted(
    orch: OrchState, tmp_path: Path
) -> None:
    """Marked delivered before typing (so the prompt its Enter starts does not deliver it too);
    when typing fails, it is queued again, the attempt not counted, and a hook delivers it."""
    bin_dir = fake_tmux(tmp_path)
    orch.store.remember_session("s-push", "proj:1", "%7", "/nonexistent/socket")
    env = {**orch.env, "PATH": f"{bin_dir}:{orch.env['PATH']}", "FAKE_TMUX_FAILS": "1",
           "FAKE_TMUX_LOG": str(tmp_path / "tmux.log")}  # fmt: skip
    done = cli(orch, "send", "proj:1", "the pushed body", "--push", env=env)
    (message,) = Queue(orch.store).messages("proj:1")
    assert (done.returncode, done.stderr) == (
        1,
        f"Error: could not type into tmux pane %7; the message {message['id']} stays queued\n",
    )
    assert (message["state"], message["attempts"], message["reason"]) == ("queued", 0, None)
    record = Queue(orch.store).get(message["id"])
    assert record is not None
    assert [(e["state"], e["detail"]) for e in record["events"]] == [
        ("queued", None),
        ("delivered", "typed into the pane (--push)"),
        ("queued", "could not type into tmux pane %7"),
    ]


def test_a_push_to_many_types_into_every_pane_though_one_fails(
    orch: OrchState, tmp_path: Path
) -> None:
    """A pane that takes nothing leaves its message queued, and says so; the agents after it
    still get theirs typed (they were left queued, unsaid, their panes never tried)."""
    bin_dir = fake_tmux(tmp_path)
    typed_log = tmp_path / "tmux.log"
    for n in (1, 2, 3):
        hook(orch, f"p:{n}")
        orch.store.remember_session(f"s{n}", f"p:{n}", f"%{n}", "/nonexistent/socket")
    env = {**orch.env, "PATH": f"{bin_dir}:{orch.env['PATH']}", "FAKE_TMUX_FAILS": "%1",
           "FAKE_TMUX_LOG": str(typed_log)}  # fmt: skip
    done = cli(orch, "send", "p:*", "for each", "--push", "--json", env=env)
    states = dict(db(orch, "SELECT agent, state FROM messages"))
    assert states == {"p:1": "queued", "p:2": "delivered", "p:3": "delivered"}
    (queued,) = db(orch, "SELECT id FROM messages WHERE state = 'queued'")
    assert (done.returncode, done.stderr) == (
        1,
        f"Error: could not type into tmux pane %1; the message {queued[0]} stays queued\n",
    )
    receipts = json.loads(done.stdout)  # what became of each: typed, or queued
    assert {r["agent"]: r["state"] for r in receipts} == states
    typed = [json.loads(line)["stdin"] for line in typed_log.read_text().splitlines()]
    assert [t for t in typed if t is not None] == ["for each", "for each"]


def test_a_push_to_an_agent_orch_has_not_heard_from_prints_no_note_to_push(
    orch: OrchState, tmp_path: Path
) -> None:
    """The note says the message waits for the agent's first hook (or ``--push``): not so
    once it was typed into the pane."""
    with TmuxServer() as server:
        pane = Recorder(server, tmp_path / "typed.bin")
        orch.store.remember_session("s", "a:1", pane.pane, pane.socket)  # no hook yet
        out = ok(orch, "send", "a:1", "typed into the pane", "--push")
        wait_until(lambda: pane.typed() == "typed into the pane\n", 15, "the pushed text", 0.02)
    ((message_id, state),) = db(orch, "SELECT id, state FROM messages")
    assert state == "delivered"
    assert out == f"queued {message_id} for a:1 (#1, priority 0 normal)\n"


def test_orch_queue_sweeps_with_the_projects_queue_settings(orch: OrchState) -> None:
    orch.write_config("[plugin.queue]\nconfirm_seconds = 600\n")
    assert orch.cli("send", "a:1", "hello").returncode == 0
    Queue.open(orch.env).claim("a:1", "sess-1", now=time.time() - 200)  # delivered 200 s ago
    listing = json.loads(orch.cli("queue", "--json").stdout)
    assert [m["state"] for m in listing] == ["delivered"]  # 200 s < confirm_seconds = 600
    orch.write_config("[plugin.queue]\nconfirm_seconds = 100\n")
    listing = json.loads(orch.cli("queue", "--json").stdout)
    assert [m["state"] for m in listing] == ["queued"]


def test_send_batch_queues_json_lines_in_one_go(orch: OrchState) -> None:
    hook(orch, "p:1")
    hook(orch, "p:2")
    lines = "\n".join(json.dumps(line) for line in [
        {"agent": "p:1", "text": "first", "priority": 20, "from": "lead"},
        {"agent": "p:*", "text": "to both", "ttl": "10m"},
        {"agent": "p:2", "text": "later", "in": 3600, "key": "k"},
        {"agent": "p:2", "text": "later", "in": 3600, "key": "k"},
    ]) + "\n"  # fmt: skip
    done = cli(orch, "send", "--batch", "-", "--json", stdin=lines.encode())
    assert done.returncode == 0, done.stderr
    receipts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["agent"], r["body"]) for r in receipts] == [
        ("p:1", "first"), ("p:1", "to both"), ("p:2", "to both"), ("p:2", "later"),
        ("p:2", "later"),
    ]  # fmt: skip
    assert (receipts[0]["priority"], receipts[0]["sender"]) == (20, "lead")
    assert receipts[1]["expires"] == pytest.approx(receipts[1]["created"] + 600)
    assert receipts[4]["duplicate"] and receipts[4]["id"] == receipts[3]["id"]
    assert db(orch, "SELECT count(*) FROM messages") == [(4,)]


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ('{"agent": "p:1", "text": "ok"}\nnot json\n', "--batch line 2: "),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": "p:1", "txt": "x"}\n', "unknown keys"),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": "p:1", "text": "x", "priority": 500}\n',
         "out of range"),
        ('{"agent": ":bad", "text": "x"}\n', "invalid agent id"),
        ('{"agent": "p:1", "text": "x", "at": 12}\n', "line 1: at must be a string or null"),
        ('{"agent": "p:1", "text": "x", "priority": 1e999}\n', "priority must be an integer"),
        ('{"agent": "p:1", "text": "x", "priority": 1.5}\n', "priority must be an integer"),
        ('{"agent": "p:1", "text": "x", "priority": true}\n', "priority must be an integer"),
        ('{"agent": "p:1", "text": "x", "priority": "high"}\n', "priority must be an integer"),
        ('{"agent": "p:1", "text": "x", "exact": "no"}\n', "exact must be true or false"),
        ('{"agent": "p:1", "text": "x", "from": {}}\n', "from must be a string or null"),
        ('{"agent": "p:1", "text": "x", "key": [1]}\n', "key must be a string or null"),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": "p:1", "text": "x", "key": ""}\n',
         "--batch line 2: the key is empty"),
        ('{"agent": "p:1", "text": "ok"}\n\n{"agent": "p:1", "text": "  "}\n',
         "--batch line 3: message text is empty"),
        ('{"agent": "p:*", "text": "ok"}\n{"agent": "p:1", "text": "x", "from": "a\\u0000"}\n',
         "--batch line 2: the message's sender contains a NUL"),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": ":bad", "text": "x"}\n',
         "--batch line 2: invalid agent id"),
        ('{"agent": "p:1", "text": "x", "after": ""}\n', "after is empty"),
        ('{"agent": "p:1", "text": "x", "ttl": 1e999}\n', "ttl must be a finite number"),
        ('{"agent": "p:1", "text": "ok"}\n\n{"agent": "p:1", "text": "x", "in": "soon"}\n',
         "--batch line 3: malformed duration 'soon'"),
        ('{"agent": "p:1"}\n', "--batch line 1: give agent and text"),
        ('{"agent": "p:1", "text": "ok"}\n\n{"agent": "p:1", "text": "x", "after": "mnope"}\n',
         "--batch line 3: --after: no message with id 'mnope'"),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": "nobody:*", "text": "x"}\n',
         "--batch line 2: no known agent matches 'nobody:*'"),
        ('{"agent": "p:1", "text": "x", "in": 7200, "ttl": "30m"}\n',
         "--batch line 1: the ttl ends before the message is due"),
        ('{"agent": "p:1", "text": "ok"}\n{"agent": "p:1", "text": "\xff"}\n'.replace(
            "\xff", "\udcff"), "stdin is not UTF-8 text"),
    ],
)  # fmt: skip
def test_a_bad_batch_line_stores_nothing(orch: OrchState, lines: str, reason: str) -> None:
    done = cli(orch, "send", "--batch", "-",
               stdin=lines.encode("utf-8", "surrogateescape"))  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("Error: "), done.stderr
    assert done.stderr.count("\n") == 1 and reason in done.stderr, done.stderr
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]


def test_a_batch_priority_may_be_a_number_or_its_digits(orch: OrchState) -> None:
    lines = (b'{"agent": "p:1", "text": "a", "priority": 20}\n'
             b'{"agent": "p:1", "text": "b", "priority": "30"}\n')  # fmt: skip
    ok(orch, "send", "--batch", "-", stdin=lines)
    assert db(orch, "SELECT body, priority FROM messages ORDER BY body") == [("a", 20), ("b", 30)]


def test_a_batch_text_may_hold_any_line_separator_but_newline(orch: OrchState) -> None:
    """JSON keeps U+2028, U+2029 and U+0085 unescaped: a line is a line only at ``\\n``."""
    text = "one\u2028two\u2029three\x85four"
    line = json.dumps({"agent": "p:1", "text": text}, ensure_ascii=False) + "\r\n"
    ok(orch, "send", "--batch", "-", stdin=line.encode())
    assert db(orch, "SELECT body FROM messages") == [(text,)]


@pytest.mark.parametrize(
    "options",
    [["--priority", "20"], ["--from", "lead"], ["--ttl", "5m"], ["--key", "k"], ["--exact"],
     ["--in", "1m"], ["--all"], ["--push"]],
    ids=lambda options: options[0],
)  # fmt: skip
def test_a_batch_with_options_of_one_message_is_refused(
    orch: OrchState, options: list[str]
) -> None:
    """The options would silently not apply to the file's messages."""
    line = b'{"agent": "p:1", "text": "hello"}\n'
    done = cli(orch, "send", "--batch", "-", *options, stdin=line)
    assert done.returncode == 1
    assert done.stderr == (f"Error: --batch takes its messages from the file alone, not "
                           f"{options[0]}: give them on each line\n")  # fmt: skip
    assert db(orch, "SELECT count(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("agent", ["p:1", "p:*"], ids=["a-name", "a-pattern"])
def test_all_with_an_agent_says_that_every_agent_gets_it(orch: OrchState, agent: str) -> None:
    """``orch send AGENT TEXT --all`` sends to every agent, as scripts rely on; the sender is
    told the name was not used. A name is a plain form (orch send's quick path), a pattern goes
    to click: both say so."""
    hook(orch, "p:1")
    hook(orch, "q:1")
    done = cli(orch, "send", "--all", agent, "for everyone")
    assert done.returncode == 0
    assert done.stderr == (f"note: --all sends to every known agent, not {agent} alone (a "
                           "pattern such as 'proj:*' fans out to some)\n")  # fmt: skip
    assert db(orch, "SELECT agent FROM messages ORDER BY agent") == [("p:1",), ("q:1",)]


SEND_FORMS = [
    ["p:1", "hello"],
    ["p:1", "hello", "--json"],
    ["-p", "20", "p:1", "hi"],
    ["p:1", "-p20", "hi", "--from", "lead"],
    ["--priority=5", "--from=lead", "--key", "k1", "--ttl", "30m", "p:1", "hi"],
    ["p:1", "hi", "--in", "10m", "--at", "14:30", "--after", "m1", "--exact", "--push"],
    ["p:1", "--", "-starts with a dash"],
    ["p:1", "-"],
    ["p:1", "hi", "--from", "--json"],  # an option's value may look like an option
    ["p:1", "hi", "-p", "1", "-p", "2"],  # the last one counts
    ["p:1", ""],
    # not plain: click reads them (help, usage errors, a pattern of --all, --batch)
    ["p:1", "hi", "--help"],
    ["p:1", "hi", "--nope"],
    ["p:1", "hi", "--json=yes"],
    ["p:1", "-x"],
    ["p:1"],
    ["p:1", "a", "b"],
    ["--all", "hi"],
    [":bad", "hi"],
    ["--batch", "-"],
    ["p:1", "hi", "--from"],
]


@pytest.mark.orch_backends("sqlite")
@pytest.mark.parametrize("argv", SEND_FORMS, ids=" ".join)
def test_the_quick_send_reads_a_plain_form_as_click_does_and_leaves_the_rest_to_it(
    argv: list[str],
) -> None:
    """``orch send``'s quick path and its click command read one table of options: a form the
    quick path takes gives what click gives; any other goes to click, to help or refuse."""
    import click

    from orch_core.cli import send
    from orch_core.cli.queue import send_command
    from orch_core.hook.agents import valid_id

    quick = send.parse(argv)
    try:
        clicked: dict[str, Any] | None = send_command.make_context("send", list(argv)).params
    except (click.exceptions.Exit, click.ClickException):
        clicked = None  # --help, or a usage error: only click says these
    if quick is None:
        assert (
            clicked is None
            or clicked["batch"] is not None
            or clicked["all_agents"]
            or (argv == ["p:1"])
            or not valid_id(clicked["agent"])  # the command refuses it, in one line
        )
    else:
        assert clicked is not None
        assert quick == {k: v for k, v in clicked.items() if k != "batch"}


@pytest.mark.orch_backends("sqlite")
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("form", [["p:1", "hi"], ["--batch", "-"]], ids=["quick", "click"])
def test_a_reader_gone_before_the_receipt_ends_orch_send_as_click_does(
    orch: OrchState, form: list[str], unbuffered: str
) -> None:
    """``orch send ... | head -0``: the message is stored, and a reader that left before the
    receipt ends the command as click ends one (exit 1, nothing said), on either path."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [ORCH, "send", *form], input=b'{"agent": "p:1", "text": "hi"}', stdout=write,
            stderr=subprocess.PIPE, env={**orch.env, "PYTHONUNBUFFERED": unbuffered},
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr.decode()) == (1, "")
    assert [m["body"] for m in Queue(orch.store).messages("p:1")] == ["hi"]


@pytest.mark.orch_backends("sqlite")
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [["send", "p:1", "hi"], ["agents"], ["export"]],
                         ids=["send", "agents", "export"])  # fmt: skip
def test_output_to_a_full_disk_is_one_line(
    orch: OrchState, args: list[str], unbuffered: str
) -> None:
    """``orch export > file`` on a full disk (Linux's /dev/full) says so in one line, exit 1,
    on either path and however stdout is buffered (not a traceback, nor exit 120)."""
    ok(orch, "send", "p:1", "first")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [ORCH, *args], stdout=full, stderr=subprocess.PIPE, text=True,
            env={**orch.env, "PYTHONUNBUFFERED": unbuffered}, timeout=60, check=False,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (1, "Error: No space left on device\n")


@pytest.mark.orch_backends("sqlite")
@pytest.mark.parametrize(
    ("args", "status", "said"),
    [(["send", "p:1", "-"], 1, "Error: message text is empty\n"),
     (["send", "--batch", "-"], 0, ""), (["import", "-"], 0, ""),
     (["brief", "p:1", "-"], 1, "Error: the briefing is empty\n")],
    ids=["send", "batch", "import", "brief"],
)  # fmt: skip
def test_a_closed_stdin_reads_as_empty(
    orch: OrchState, args: list[str], status: int, said: str
) -> None:
    """A command started with stdin closed (``<&-``) that reads ``-`` finds nothing there, as
    with an empty one: no traceback (Python gives such a process no ``sys.stdin``)."""
    done = subprocess.run(
        [ORCH, *args], preexec_fn=lambda: os.close(0), capture_output=True, text=True,
        env=orch.env, cwd=orch.project_dir, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (status, said)
    assert Queue(orch.store).messages() == []


@pytest.mark.orch_backends("sqlite")
def test_ctrl_c_while_orch_send_reads_stdin_stores_nothing(orch: OrchState) -> None:
    """``orch send AGENT -`` waits for its text: Ctrl-C ends it as click ends a command
    (``Aborted!``, exit 1), with nothing stored."""
    import signal

    proc = subprocess.Popen([ORCH, "send", "p:1", "-"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=orch.env)  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write("half a message")
    proc.stdin.flush()
    syscall = Path(f"/proc/{proc.pid}/syscall")  # Linux: "0 0x0 ..." is read(0, ...)
    deadline = time.monotonic() + 30
    while not syscall.read_text().startswith("0 0x0 "):  # at the read, not still starting
        assert time.monotonic() < deadline, "orch send never waited for stdin"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 1
    assert proc.stderr.read().strip() == "Aborted!"
    assert Queue(orch.store).messages("p:1") == []
