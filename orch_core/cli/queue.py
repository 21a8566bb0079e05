"""``orch send``, ``orch queue``, ``orch agents``, ``orch export`` and ``orch import``."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import TYPE_CHECKING

import click

from orch_core import hosts, paths
from orch_core.cli import send
from orch_core.cli.errors import damaged, database_error
from orch_core.cli.group import listing_group
from orch_core.cli.params import agent_name, check_agent, optional_agent_name, read_text
from orch_core.cli.send import project_queue
from orch_core.queue import STATES, QueueError, age
from orch_core.text import inert, shortened

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _send_options(command: Callable[..., None]) -> Callable[..., None]:
    """``orch send``'s options, from the table its quick path reads too."""
    for option in reversed(send.OPTIONS):
        default = send.DEFAULTS[option.dest]
        command = click.option(*option.flags, option.dest, is_flag=option.is_flag,
                               default=default, help=option.help)(command)  # fmt: skip
    return command


@click.command("send")
@click.argument("agent", required=False)
@click.argument("text", required=False)
@_send_options
@click.option("--batch", type=click.File("r", encoding="utf-8"), help="Queue every message of "
              "FILE ('-': stdin) in one transaction: a JSON object a line with agent, text and "
              "any of priority, from, key, ttl, after, in, at, exact. One bad line stores "
              "nothing.")  # fmt: skip
def send_command(batch: Any, **given: Any) -> None:
    """Queue TEXT for AGENT (a pattern such as 'proj:*' fans out; TEXT '-' reads stdin), or
    every message of a --batch file; with --all, the one argument is TEXT."""
    if given["all_agents"] and given["text"] is None:
        given["agent"], given["text"] = None, given["agent"]
    elif given["agent"] is not None:
        check_agent(given["agent"])
    if batch is None:
        send.send(**given)
        return
    if given["agent"] is not None or given["text"] is not None:
        raise click.ClickException("--batch takes its messages from the file alone")
    options = [o.flags[0] for o in send.OPTIONS if o.dest != "as_json"
               and given[o.dest] != send.DEFAULTS[o.dest]]  # fmt: skip
    if options:  # each line says its own (a line's "priority", "from", "ttl", ...)
        raise click.ClickException(f"--batch takes its messages from the file alone, not "
                                   f"{', '.join(options)}: give them on each line")  # fmt: skip
    send.send_batch(read_text(batch).split("\n"), given["as_json"])  # not at U+2028


def _line(m: dict[str, Any], now: float, agent: str) -> str:
    preview = shortened(inert(m["body"]).replace("\n", " "), 49)
    return (f"{m['id']}  {agent}  #{m['seq']}  {m['priority']:>3} {m['band']:<9}  "
            f"{m['state']:<9}  {age(now - m['created']):>4}  {preview}")  # fmt: skip


queue_group = listing_group(
    "queue", "List messages (orch queue [AGENT] [--state S] [--json]), or act on one."
)


@queue_group.command("list")
@click.argument("agent", required=False, callback=optional_agent_name)
@click.option("--state", help=f"Only this state: pending, {', '.join(STATES)}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(agent: str | None, state: str | None, as_json: bool) -> None:
    """Messages in delivery order, of AGENT or of every agent."""
    queue = project_queue()
    queue.sweep()
    names = hosts.Names(queue.store)
    if agent is not None:
        agent = names.resolve(agent)
    messages = queue.messages(agent, state)
    if as_json:
        shown = [{**m, "host": names.host_of(m["agent"])} for m in messages]
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    now = time.time()
    for m in messages:  # on a shared store, each agent as it is named from any host
        shown_as = (
            hosts.full_name(m["agent"], names.host_of(m["agent"])) if names.shared else m["agent"]
        )
        click.echo(_line(m, now, shown_as))


def _acted(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(f"{result['id']} is now {result['state']}")


@queue_group.command("show")
@click.argument("message_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print exact JSON (no escapes).")
def show_command(message_id: str, as_json: bool) -> None:
    """One message with its history of states."""
    record = project_queue().get(message_id)
    if record is None:
        raise QueueError(f"no message with id {message_id!r}")
    shown = json.dumps(record, ensure_ascii=False, indent=None if as_json else 2)
    click.echo(shown if as_json else inert(shown))


@queue_group.command("cancel")
@click.argument("message_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
def cancel_command(message_id: str, as_json: bool) -> None:
    """Cancel a pending message."""
    _acted(project_queue().cancel(message_id), as_json)


@queue_group.command("retry")
@click.argument("message_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
def retry_command(message_id: str, as_json: bool) -> None:
    """Queue a dead, expired or cancelled message again, with fresh attempts."""
    _acted(project_queue().retry(message_id), as_json)


@queue_group.command("purge")
@click.argument("agent", callback=agent_name)
def purge_command(agent: str) -> None:
    """Cancel every pending message of AGENT."""
    queue = project_queue()
    agent = hosts.Names(queue.store).resolve(agent)
    click.echo(f"cancelled {queue.purge(agent)} pending messages of {agent}")


@click.command("agents")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_command(as_json: bool) -> None:
    """Each agent orch knows, with its state, its host, when it was last seen, and what waits
    for it."""
    from orch_core.supervisor import lifecycle

    queue = project_queue()
    rows = {row["id"]: row for row in queue.store.agents()}
    pending = queue.pending_counts()
    for agent in pending.keys() - rows.keys():
        rows[agent] = {"id": agent, "state": "unknown", "last_seen": None, "host": None}
    now = time.time()
    recovery = lifecycle.overview(queue.store, now)
    gone = hosts.unreachable(queue.store, now, lifecycle.host_timeout(os.environ))
    listing = [
        {**rows[a], "pending": pending.get(a, 0), **recovery.get(a, lifecycle.NO_RECOVERY),
         "unreachable": rows[a]["host"] in gone}
        for a in sorted(rows)
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(listing))
        return
    for row in listing:
        seen = f"seen {age(now - row['last_seen'])} ago" if row["last_seen"] else "never seen"
        state = hosts.UNREACHABLE if row["unreachable"] else row["state"]
        line = f"{row['id']}\t{state}\t{seen}"
        if row["host"]:
            line += f"\ton {row['host']}"
        line += f"\t{row['pending']} pending"
        if row["restarts_last_hour"]:
            line += f"\t{row['restarts_last_hour']} restarts this hour"
        if row["next_action"]:
            step, due = row["next_action"]["step"], row["next_action"]["due"]
            line += f"\tnext: {step} in {age(due - now)}"
        click.echo(inert(line))


@click.command("export")
@click.option("--state", default="pending", show_default=True,
              help=f"pending, all, or one of {', '.join(STATES)}.")  # fmt: skip
def export_command(state: str) -> None:
    """Write messages as JSON lines on stdout (the rollback path: export, revert, import). From
    a damaged database, what can still be read is written, and the command fails saying so."""
    queue = project_queue()
    try:
        records = list(queue.export(None if state == "all" else state))
    except sqlite3.DatabaseError as exc:
        if not damaged(exc):
            raise click.ClickException(database_error(exc)) from None
        from orch_core.storage import backup

        records, lost = backup.salvage(paths.db_path(os.environ), pending_only=state == "pending")
        if state not in ("pending", "all"):
            records = [r for r in records if r["state"] == state]
        _print_records(records)
        if lost is None:
            raise click.ClickException(
                f"{database_error(exc)}; no message could be read: the messages table itself "
                "cannot be, so how many it held is unknown"
            ) from None
        raise click.ClickException(
            f"{database_error(exc)}; the {len(records)} messages that could still be read were "
            f"exported, at least {lost} rows could not be"
        ) from None
    _print_records(records)


def _print_records(records: list[dict[str, Any]]) -> None:
    for record in records:
        click.echo(json.dumps(record, ensure_ascii=False, sort_keys=True))


@click.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
def import_command(file: Any) -> None:
    """Read messages exported as JSON lines (FILE '-' is stdin); ids already here are skipped.
    Every line is checked before any is stored: one bad line stores nothing."""
    numbers: list[int] = []
    every: list[dict[str, Any]] = []
    for number, line in enumerate(read_text(file).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not {"id", "agent", "body"} <= record.keys():
                raise ValueError("not an exported message")
        except ValueError as exc:
            raise QueueError(f"line {number}: {exc}") from None
        numbers.append(number)
        every.append(record)
    added = project_queue().import_(every, lines=numbers, host=paths.host(os.environ))
    click.echo(f"imported {added} messages ({len(every) - added} already present)")
