"""``orch send``, ``orch queue``, ``orch agents``, ``orch export`` and ``orch import``."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from typing import TYPE_CHECKING

import click

from orch_core import api, hosts, paths
from orch_core.cli.errors import damaged, database_error
from orch_core.cli.params import agent_name, optional_agent_name
from orch_core.queue import MAX_SEND_PRIORITY, STATES, Queue, QueueError, age, parse_duration
from orch_core.storage import open_store
from orch_core.text import inert

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def _queue() -> Queue:
    """The queue with this project's ``[plugin.queue]`` settings (confirmation bounds)."""
    from orch_core.plugins import plan

    store = open_store(os.environ)
    try:
        config = plan.load(os.environ, paths.project_dir(os.environ)).config.get("queue")
    except Exception:  # a broken config is reported by `orch doctor`, not here
        config = None
    return Queue.configured(store, config)


def _at(text: str) -> float:
    """``--at``: an ISO 8601 time, or ``HH:MM`` (today, or tomorrow if already past)."""
    import datetime

    try:
        if len(text) <= 5 and ":" in text:
            hour, minute = (int(part) for part in text.split(":"))
            now = datetime.datetime.now()
            when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if when <= now:
                when += datetime.timedelta(days=1)
            return when.timestamp()
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise QueueError(f"--at: cannot read {text!r}; use HH:MM or an ISO 8601 time") from None


def _line(m: dict[str, Any], now: float, agent: str) -> str:
    preview = inert(m["body"]).replace("\n", " ")
    preview = preview[:48] + "…" if len(preview) > 49 else preview
    return (f"{m['id']}  {agent}  #{m['seq']}  {m['priority']:>3} {m['band']:<9}  "
            f"{m['state']:<9}  {age(now - m['created']):>4}  {preview}")  # fmt: skip


@click.command("send")
@click.argument("agent", required=False, callback=optional_agent_name)
@click.argument("text", required=False)
@click.option("--priority", "-p", default="0", help="0-9 normal, 10-49 high, 50-99 critical, "
              f"100-{MAX_SEND_PRIORITY} emergency.")  # fmt: skip
@click.option("--from", "sender", help="Who sends it (shown to the agent).")
@click.option("--key", help="Idempotency key: a repeat while the first is pending stores nothing.")
@click.option("--ttl", help="Expire if not delivered within this long (e.g. 30m).")
@click.option("--after", "after", help="Deliver only after this message id was delivered.")
@click.option("--in", "delay", help="Do not deliver before this long from now (e.g. 10m).")
@click.option("--at", "at", help="Do not deliver before this time (HH:MM or ISO 8601).")
@click.option("--all", "all_agents", is_flag=True, help="One copy for every known agent.")
@click.option("--exact", is_flag=True, help="AGENT is a name, even with * ? or [ in it.")
@click.option("--push", is_flag=True, help="Also type the text into the agent's tmux pane "
              "(migrating agents without hooks).")  # fmt: skip
@click.option("--batch", type=click.File("r", encoding="utf-8"), help="Queue every message of "
              "FILE ('-': stdin) in one transaction: a JSON object a line with agent, text and "
              "any of priority, from, key, ttl, after, in, at, exact. One bad line stores "
              "nothing.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
def send_command(agent: str | None, text: str | None, priority: str, sender: str | None,
                 key: str | None, ttl: str | None, after: str | None, delay: str | None,
                 at: str | None, all_agents: bool, exact: bool, push: bool, batch: Any,
                 as_json: bool) -> None:  # fmt: skip
    """Queue TEXT for AGENT (a pattern such as 'proj:*' fans out; TEXT '-' reads stdin), or
    every message of a --batch file."""
    if batch is not None:
        if agent is not None or text is not None or push or all_agents:
            raise click.ClickException("--batch takes its messages from the file alone")
        items = [_item(**line) for line in _lines(batch)]
        receipts = api.send_many(items)
        for receipt in receipts:
            click.echo(json.dumps(receipt, ensure_ascii=False) if as_json else _said(receipt))
        return
    if (agent is None and not all_agents) or text is None:
        raise click.ClickException("give AGENT and TEXT (or --all and TEXT, or --batch FILE)")
    if text == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise click.ClickException("stdin is not UTF-8 text") from None
    item = _item(agent="*" if all_agents else agent, text=text, priority=priority, sender=sender,
                 key=key, ttl=ttl, after=after, delay=delay, at=at,
                 exact=exact and not all_agents)  # fmt: skip
    receipts = api.send_many([item], fire=not push)
    if push:  # observers hear of it after typing: the idle plugin must not wake it as well
        queue = _queue()
        try:
            for receipt in receipts:
                if not receipt.get("duplicate"):
                    _push(queue, receipt, text)
        finally:
            api.notify(receipts, os.environ, paths.project_dir(os.environ), queue)
    if as_json:
        out: Any = receipts[0] if len(receipts) == 1 and not all_agents else receipts
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    for r in receipts:
        click.echo(_said(r))


def _said(r: dict[str, Any]) -> str:
    """One receipt, for a person."""
    if r.get("duplicate"):
        return (
            f"{r['id']} already queued for {r['agent']} with key {r['key']!r}: nothing new stored"
        )
    said = f"queued {r['id']} for {r['agent']} (#{r['seq']}, priority {r['priority']} {r['band']})"
    if not r.get("known_agent"):
        said += (f"\nnote: orch has not heard from {r['agent']} yet; the message waits for its "
                 "first hook (or use --push)")  # fmt: skip
    return said


def _item(
    *,
    agent: str | None,
    text: str,
    priority: str | int = 0,
    sender: str | None = None,
    key: str | None = None,
    ttl: str | float | None = None,
    after: str | None = None,
    delay: str | float | None = None,
    at: str | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """A message for :func:`api.send_many`, from what a person writes (``30m``, ``14:30``)."""
    try:
        level = int(priority)
    except (TypeError, ValueError):
        raise QueueError(f"priority must be an integer, not {priority!r}") from None
    if not 0 <= level <= MAX_SEND_PRIORITY:
        raise QueueError(f"priority {level} is out of range 0-{MAX_SEND_PRIORITY}")
    if delay is not None and at is not None:
        raise QueueError("give --in or --at, not both")
    not_before = (
        time.time() + _seconds(delay) if delay is not None
        else _at(at) if at is not None else None
    )  # fmt: skip
    return {"agent": agent, "text": text, "priority": level, "sender": sender, "key": key,
            "ttl": _seconds(ttl) if ttl is not None else None, "after": after,
            "not_before": not_before, "exact": exact}  # fmt: skip


def _seconds(value: str | float) -> float:
    """``30m`` or ``90`` on the command line; in a batch line, a number of seconds as well."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return parse_duration(str(value))


#: Batch-line keys, and the option each stands for.
BATCH_KEYS = {"agent": "agent", "text": "text", "priority": "priority", "from": "sender",
              "key": "key", "ttl": "ttl", "after": "after", "in": "delay", "at": "at",
              "exact": "exact"}  # fmt: skip


def _lines(file: Any) -> Iterator[dict[str, Any]]:
    """The messages of a ``--batch`` file; a line that is not one names its number."""
    for number, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            unknown = data.keys() - BATCH_KEYS.keys()
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            if not isinstance(data.get("agent"), str) or not isinstance(data.get("text"), str):
                raise ValueError("agent and text must be strings")
        except ValueError as exc:
            raise QueueError(f"--batch line {number}: {exc}") from None
        yield {BATCH_KEYS[k]: v for k, v in data.items()}


def _push(queue: Queue, receipt: dict[str, Any], text: str) -> None:
    """Type the message into the agent's pane the old way, safely: argv, -l, a separate Enter.
    It is marked delivered first, so the prompt that Enter starts does not deliver it again."""
    from orch_core.supervisor.tmux import paste_text

    where = hosts.Names(queue.store).host_of(receipt["agent"])
    if queue.store.shared and where not in (None, paths.host(os.environ)):
        raise click.ClickException(f"{receipt['agent']} runs on host {where}: --push types into "
                                   f"this host's panes only; the message {receipt['id']} stays "
                                   "queued")  # fmt: skip
    target = queue.store.agent_pane(receipt["agent"]) or (receipt["agent"], None)
    if not queue.mark_pushed(receipt["id"]):
        return
    if not paste_text(target[0], target[1], text, paths.state_dir(os.environ)):
        queue.unpush(receipt["id"], f"could not type into tmux pane {target[0]}")
        raise click.ClickException(f"could not type into tmux pane {target[0]}; the message "
                                   f"{receipt['id']} stays queued")  # fmt: skip
    receipt["state"] = "delivered"


class ListUnlessVerb(click.Group):
    """``orch queue [AGENT]`` lists; ``orch queue VERB ...`` acts. Whatever does not start with
    a verb is the listing's arguments, so ``orch queue proj:2 --json`` keeps working."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "list", self.commands["list"], args


@click.group(
    "queue",
    cls=ListUnlessVerb,
    invoke_without_command=True,
    context_settings={"ignore_unknown_options": True},
)
@click.pass_context
def queue_group(ctx: click.Context) -> None:
    """List messages (orch queue [AGENT] [--state S] [--json]), or act on one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@queue_group.command("list")
@click.argument("agent", required=False, callback=optional_agent_name)
@click.option("--state", help=f"Only this state: pending, {', '.join(STATES)}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(agent: str | None, state: str | None, as_json: bool) -> None:
    """Messages in delivery order, of AGENT or of every agent."""
    queue = _queue()
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
    record = _queue().get(message_id)
    if record is None:
        raise QueueError(f"no message with id {message_id!r}")
    shown = json.dumps(record, ensure_ascii=False, indent=None if as_json else 2)
    click.echo(shown if as_json else inert(shown))


@queue_group.command("cancel")
@click.argument("message_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
def cancel_command(message_id: str, as_json: bool) -> None:
    """Cancel a pending message."""
    _acted(_queue().cancel(message_id), as_json)


@queue_group.command("retry")
@click.argument("message_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
def retry_command(message_id: str, as_json: bool) -> None:
    """Queue a dead, expired or cancelled message again, with fresh attempts."""
    _acted(_queue().retry(message_id), as_json)


@queue_group.command("purge")
@click.argument("agent", callback=agent_name)
def purge_command(agent: str) -> None:
    """Cancel every pending message of AGENT."""
    queue = _queue()
    agent = hosts.Names(queue.store).resolve(agent)
    click.echo(f"cancelled {queue.purge(agent)} pending messages of {agent}")


@click.command("agents")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_command(as_json: bool) -> None:
    """Each agent orch knows, with its state, its host, when it was last seen, and what waits
    for it."""
    from orch_core.supervisor import lifecycle

    queue = _queue()
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
    queue = _queue()
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
    """Read messages exported as JSON lines (FILE '-' is stdin); ids already here are skipped."""

    def records() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not {"id", "agent", "body"} <= record.keys():
                    raise ValueError("not an exported message")
            except ValueError as exc:
                raise QueueError(f"line {number}: {exc}") from None
            yield record

    every = list(records())
    added = _queue().import_(every)
    click.echo(f"imported {added} messages ({len(every) - added} already present)")
