"""``orch send``: what it does, and its quick path past click.

Scripts run ``orch send`` once a message, so a message costs them a whole process. Importing
click costs more than the insert and its commit (docs/benchmarks.md), so :func:`quick` reads
the plain forms itself (``orch send AGENT TEXT`` with any of :data:`OPTIONS`) and hands
everything else to the click command, which :mod:`orch_core.cli.queue` builds from the same
table: ``--help``, ``--batch``, an unknown option, a name that is not an agent's. Help, usage
errors and their wording stay click's; what a send does (:func:`send`) is one function for both.
Nothing here imports click or typing.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import time

from orch_core import api, hosts, paths
from orch_core.cli import errors
from orch_core.errors import OrchError
from orch_core.hook import agents
from orch_core.queue import (
    MAX_DURATION,
    MAX_SEND_PRIORITY,
    PUSHED,
    Queue,
    QueueError,
    check_agent,
    check_message,
    parse_duration,
    unmarked,
)

TYPE_CHECKING = False  # importing typing costs each send ~4 ms

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

Option = collections.namedtuple("Option", "flags dest is_flag help")

#: ``orch send``'s options but ``--batch`` (a file: click's to open), for both parsers.
OPTIONS = (
    Option(("--priority", "-p"), "priority", False,
           f"0-9 normal, 10-49 high, 50-99 critical, 100-{MAX_SEND_PRIORITY} emergency."),
    Option(("--from",), "sender", False, "Who sends it (shown to the agent)."),
    Option(("--key",), "key", False,
           "Idempotency key: a repeat while the first is queued (not yet delivered) stores "
           "nothing."),
    Option(("--ttl",), "ttl", False, "Expire if not delivered within this long (e.g. 30m)."),
    Option(("--after",), "after", False, "Deliver only after this message id was delivered."),
    Option(("--in",), "delay", False, "Do not deliver before this long from now (e.g. 10m)."),
    Option(("--at",), "at", False, "Do not deliver before this time (HH:MM or ISO 8601)."),
    Option(("--all",), "all_agents", True, "One copy for every known agent."),
    Option(("--exact",), "exact", True, "AGENT is a name, even with * ? or [ in it."),
    Option(("--push",), "push", True,
           "Also type the text into the agent's tmux pane (migrating agents without hooks)."),
    Option(("--json",), "as_json", True,
           "Print the receipt as JSON (a list of them for a pattern or --all)."),
)  # fmt: skip
#: What :func:`send` takes when an option is not given.
DEFAULTS: dict[str, object] = {o.dest: False if o.is_flag else None for o in OPTIONS}
DEFAULTS["priority"] = "0"
#: Seconds the host's supervisor may take to send (its store waits 5 s for a lock or a server).
SEND_WITHIN = 15.0
_BY_FLAG = {flag: option for option in OPTIONS for flag in option.flags}


def quick(argv: Sequence[str]) -> int | None:
    """Run ``orch send`` from ``argv`` (what follows ``send``) and return its exit status, or
    ``None`` when ``argv`` is not a plain form, for click to read."""
    given = parse(argv)
    if given is None:
        return None
    try:
        errors.check_config(os.environ)
        send(**given)
    except KeyboardInterrupt:  # as click says it
        sys.stderr.write("\nAborted!\n")
        return 1
    except BrokenPipeError:  # the reader left (`| head -0`): as click ends it, exit 1 quietly
        return 1
    except Exception as exc:
        said = errors.said(exc)
        if said is None:
            raise
        sys.stderr.write(f"Error: {said}\n")
        return 1
    return 0


def parse(argv: Sequence[str]) -> dict[str, Any] | None:
    """:func:`send`'s arguments as click would read ``argv``, or ``None`` for anything but a
    plain form (which click reads instead, to help or to say what is wrong)."""
    given: dict[str, Any] = dict(DEFAULTS)
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            positional += args
        elif arg.startswith("-") and arg != "-":
            flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg[:2], "", "")
            option = _BY_FLAG.get(flag)
            if option is None:
                return None
            if option.is_flag:
                if eq or len(arg) > len(flag):
                    return None
                given[option.dest] = True
                continue
            if not eq:
                following = (
                    arg[2:] if not arg.startswith("--") and len(arg) > 2 else next(args, None)
                )
                if following is None:
                    return None
                value = following
            given[option.dest] = value
        else:
            positional.append(arg)
    if len(positional) != 2 or not agents.valid_id(positional[0]):
        return None  # a pattern of --all, a missing or bad name: click says what is wrong
    given["agent"], given["text"] = positional
    return given


def send(
    agent: str | None,
    text: str | None,
    *,
    priority: str = "0",
    sender: str | None = None,
    key: str | None = None,
    ttl: str | None = None,
    after: str | None = None,
    delay: str | None = None,
    at: str | None = None,
    all_agents: bool = False,
    exact: bool = False,
    push: bool = False,
    as_json: bool = False,
) -> None:
    """Queue ``text`` for ``agent`` (a pattern fans out; ``-`` reads stdin) and print the
    receipts."""
    if (agent is None and not all_agents) or text is None:
        raise QueueError("give AGENT and TEXT (or --all and TEXT, or --batch FILE)")
    if all_agents and agent is not None:  # scripts write `orch send AGENT TEXT --all`: say so
        sys.stderr.write(f"note: --all sends to every known agent, not {agent} alone (a "
                         "pattern such as 'proj:*' fans out to some)\n")  # fmt: skip
    held = [flag for flag, value in (("--in", delay), ("--at", at), ("--after", after))
            if value is not None]  # fmt: skip
    if push and held:  # typed now, it would reach the agent before it is due
        raise QueueError(f"--push types the message now: give it without {', '.join(held)}")
    if text == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise QueueError("stdin is not UTF-8 text") from None
    item = message(agent="*" if all_agents else agent, text=text, priority=priority,
                   sender=sender, key=key, ttl=ttl, after=after, delay=delay, at=at,
                   exact=exact and not all_agents)  # fmt: skip
    receipts = None if push else warm_send([item])
    if receipts is None:
        receipts = api.send_many([item], fire=not push)
    failed: list[str] = []
    if push:  # observers hear of it after typing: the idle plugin must not wake it as well
        queue = project_queue()
        try:
            for receipt in receipts:
                try:  # a pane that takes nothing: the others' are typed into all the same
                    if not receipt.get("duplicate"):
                        _push(queue, receipt, text)
                except OrchError as exc:
                    failed.append(str(exc))
        finally:
            api.notify(receipts, os.environ, paths.project_dir(os.environ), queue)
    if as_json:  # a fan-out is a list however many agents it reached: one is no object
        fanned_out = all_agents or api.is_pattern(agent, exact)
        out: Any = receipts if fanned_out else receipts[0]
        print(json.dumps(out, ensure_ascii=False))
    else:
        for receipt in receipts:
            print(said(receipt))
    _flush()
    if failed:  # after the receipts, which say what each message became
        more = f" (and {len(failed) - 1} more stay queued: see orch queue)" if failed[1:] else ""
        raise OrchError(failed[0] + more)


def send_batch(lines: Iterable[str], as_json: bool) -> None:
    """Queue every message of a ``--batch`` file in one transaction; print their receipts."""
    numbered = list(batch_lines(lines))
    items = [item for _, item in numbered]
    where = [f"--batch line {number}" for number, _ in numbered]  # blank lines are skipped
    receipts = warm_send(items, where)
    if receipts is None:
        receipts = api.send_many(items, where=where)
    for receipt in receipts:
        print(json.dumps(receipt, ensure_ascii=False) if as_json else said(receipt))
    _flush()


def _flush() -> None:
    """The receipts out now: a reader that left is met while the command runs, which ends
    with exit 1 (click's way), not at the interpreter's exit (a traceback, exit 120)."""
    if sys.stdout is not None:  # None: stdout closed (>&-), print wrote nothing
        sys.stdout.flush()


def warm_send(
    items: list[dict[str, Any]], labels: list[str] | None = None
) -> list[dict[str, Any]] | None:
    """The receipts of the host's supervisor, which sent ``items`` (named in an error by
    ``labels``, as :func:`api.send_many`'s ``where`` names them) warm on a server store
    (:mod:`orch_core.hook.warm`); ``None`` to send them here."""
    from orch_core.storage import database

    where = database(os.environ)
    if not paths.is_url(where):
        return None
    from orch_core.hook import warm

    header = {"op": "send", "env": dict(os.environ), "items": items, "where": labels,
              "cwd": paths.cwd()}  # fmt: skip
    try:
        answer = warm.ask(os.environ, where, header, within=SEND_WITHIN)
    except warm.Unanswered as exc:
        raise OrchError(f"{exc}; the message may be queued all the same: see orch queue") from None
    if answer is None:
        return None
    if "error" in answer:
        raise OrchError(str(answer["error"]))
    receipts: list[dict[str, Any]] = answer["receipts"]
    return receipts


def project_queue() -> Queue:
    """The queue with this project's ``[plugin.queue]`` settings (confirmation bounds)."""
    from orch_core.plugins import plan
    from orch_core.storage import open_store

    store = open_store(os.environ)
    try:
        config = plan.load(os.environ, paths.project_dir(os.environ)).config.get("queue")
    except Exception:  # a broken config is reported by `orch doctor`, not here
        config = None
    return Queue.configured(store, config)


def said(receipt: dict[str, Any]) -> str:
    """One receipt, for a person. A message pushed into the pane (``delivered``) waits for no
    hook: no note that orch has not heard from the agent."""
    r = receipt
    if r.get("duplicate"):
        return (
            f"{r['id']} already queued for {r['agent']} with key {r['key']!r}: nothing new stored"
        )
    line = f"queued {r['id']} for {r['agent']} (#{r['seq']}, priority {r['priority']} {r['band']})"
    if not r.get("known_agent") and r["state"] == "queued":
        line += (f"\nnote: orch has not heard from {r['agent']} yet; the message waits for its "
                 "first hook (or use --push)")  # fmt: skip
    return line


def message(
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
        if value > MAX_DURATION:
            raise QueueError(f"{value!r} is too long a time (at most {MAX_DURATION // 86400}d)")
        return float(value)
    return parse_duration(str(value))


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


#: Batch-line keys, the option each stands for, and the JSON types it takes (``None``: null).
BATCH_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "agent": ("agent", (str,)), "text": ("text", (str,)), "priority": ("priority", (int, str)),
    "from": ("sender", (str, type(None))), "key": ("key", (str, type(None))),
    "ttl": ("ttl", (str, int, float, type(None))), "after": ("after", (str, type(None))),
    "in": ("delay", (str, int, float, type(None))), "at": ("at", (str, type(None))),
    "exact": ("exact", (bool,)),
}  # fmt: skip
_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               type(None): "null"}  # fmt: skip


def batch_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The messages of a ``--batch`` file with their line numbers, each as :func:`message`
    makes it and checked as a send checks it; a line that is not one names its number (and
    its key, when one value is wrong), which the queue's "message N" would not (patterns fan
    out, blank lines skip)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            unknown = data.keys() - BATCH_KEYS.keys()
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            if "agent" not in data or "text" not in data:
                raise ValueError("give agent and text")
            for name, value in data.items():
                _check_type(name, value)
            item = message(**{BATCH_KEYS[k][0]: v for k, v in data.items()})
            if not api.is_pattern(item["agent"], item["exact"]):
                check_agent(item["agent"])
            check_message(item)
        except ValueError as exc:  # json's errors, and QueueError
            raise QueueError(f"--batch line {number}: {exc}") from None
        yield number, item


def _check_type(name: str, value: object) -> None:
    """A batch line's ``name`` holds one of the JSON types it takes, and a number is finite
    (JSON's ``1e999`` reads as infinity): ``true`` is no priority, ``"no"`` is no ``exact``."""
    types = BATCH_KEYS[name][1]
    if type(value) not in types:  # not isinstance: a bool is an int to Python
        wanted = " or ".join(dict.fromkeys(_JSON_TYPES[t] for t in types))
        raise ValueError(f"{name} must be {wanted}, not {json.dumps(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")


def _push(queue: Queue, receipt: dict[str, Any], text: str) -> None:
    """Type the message into the agent's pane the old way, safely: argv, -l, a separate Enter.
    It is marked delivered first, so the prompt that Enter starts does not deliver it again."""
    from orch_core.supervisor.tmux import Draft, paste_text, reported_pane, window_pane

    agent, host = receipt["agent"], paths.host(os.environ)
    where = hosts.Names(queue.store).host_of(agent)
    if queue.store.shared and where not in (None, host):
        raise OrchError(f"{agent} runs on host {where}: --push types into this "
                        f"host's panes only; the message {receipt['id']} stays queued")  # fmt: skip
    known = queue.store.agent_pane(agent)  # none: an agent without hooks, named session:window
    if known is None:
        # on a shared store, this host's window named in full (host/session:window)
        pane = window_pane(hosts.name_of(agent, host) if queue.store.shared else agent, None)
        if pane is None:
            raise OrchError(f"no tmux window {agent} (SESSION:INDEX) to type into; the message "
                            f"{receipt['id']} stays queued")  # fmt: skip
        target: tuple[str, str | None] | None = (pane, None)
    else:
        target = reported_pane(queue.store, agent, host)
    if target is None:  # after tmux restarts, that id may be a shell's or an editor's
        raise OrchError(f"{agent}'s tmux pane {known[0] if known else agent} is gone (or, after "
                        f"tmux restarted, another program's); the message {receipt['id']} stays "
                        "queued")  # fmt: skip
    now = time.time()
    if not queue.mark_pushed(receipt["id"], now):
        return
    try:
        # a prompt in the transcript: a header it quotes would confirm that message
        pasted = paste_text(target[0], target[1], unmarked(text), paths.state_dir(os.environ))
    except Draft:  # pasted and entered, it would be sent joined to their text
        queue.unpush(receipt["id"], f"a person is typing in tmux pane {target[0]}")
        raise OrchError(f"a person is typing in {agent}'s tmux pane {target[0]}; the message "
                        f"{receipt['id']} stays queued") from None  # fmt: skip
    if not pasted:
        queue.unpush(receipt["id"], f"could not type into tmux pane {target[0]}")
        raise OrchError(f"could not type into tmux pane {target[0]}; the message "
                        f"{receipt['id']} stays queued")  # fmt: skip
    # the receipt (--json) says what is stored: delivered by typing, one attempt
    receipt.update(state="delivered", delivered=now, attempts=receipt["attempts"] + 1,
                   reason=PUSHED)  # fmt: skip
