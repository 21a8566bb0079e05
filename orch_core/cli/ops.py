"""``orch stats`` and ``orch logs``: what an operator looks at."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import click

from orch_core import hosts, paths
from orch_core.cli.params import duration, optional_agent_name
from orch_core.queue import age
from orch_core.text import inert

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any


@click.command("stats")
@click.option("--since", callback=duration, default="1h", show_default=True,
              help="The window: from this long ago until now (30m, 2h, 1d).")  # fmt: skip
@click.option("--agent", callback=optional_agent_name, help="Only this agent.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(since: float, agent: str | None, as_json: bool) -> None:
    """Delivery latency, hook health, queue depth, restarts, compactions, rebriefing, tokens
    and agents by state (see the README's "Metrics" for what each one counts)."""
    from orch_core.hook.context import Runtime
    from orch_core.ops import metrics

    now = time.time()
    runtime = Runtime.open(os.environ, paths.project_dir(os.environ))
    if agent is not None:
        agent = hosts.Names(runtime.store).resolve(agent)
    result = metrics.report(runtime, max(0.0, now - since), now, agent)
    if as_json:  # a plugin's section may hold what JSON cannot: it is shown as text
        click.echo(json.dumps(result, ensure_ascii=False, default=str))
        return
    for line in render(result):
        click.echo(inert(line))


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they come (Ctrl-C).")
@click.option("--agent", callback=optional_agent_name, help="Only records about this agent.")
@click.option("--event", help="Only records of this hook event (e.g. PostToolUse).")
@click.option("--json", "as_json", is_flag=True, help="Print each record as its JSON line.")
def logs_command(follow: bool, agent: str | None, event: str | None, as_json: bool) -> None:
    """orch's log (warnings and errors of hooks, plugins and the supervisor), oldest first."""
    from orch_core.ops import logs

    if agent is not None:
        agent = _log_name(agent)
    records = logs.follow(os.environ) if follow else logs.history(os.environ)
    try:
        for record in records:
            if logs.matches(record, agent, event):
                shown = json.dumps(record, ensure_ascii=False) if as_json else readable(record)
                click.echo(shown if as_json else inert(shown))
    except KeyboardInterrupt:
        pass


def _log_name(agent: str) -> str:
    """The agent id the log knows ``agent`` by: on a store several hosts share, a bare name
    is this host's agent of that name (``alpha/proj:1``), as everywhere. The log is this
    host's file and must read with the database down: then the name is taken as given."""
    from orch_core.storage import database, open_store
    from orch_core.storage.store import StoreError

    try:
        if not paths.is_url(database(os.environ)):
            return agent
        store = open_store(os.environ)
        try:
            return hosts.Names(store).resolve(agent)
        finally:
            store.close()
    except hosts.AmbiguousName:
        raise
    except StoreError:
        return agent


def readable(record: Mapping[str, Any]) -> str:
    """``TIME LEVEL MESSAGE key=value ...``, on one line."""
    rest = {k: v for k, v in record.items() if k not in ("ts", "level", "msg")}
    when, stamp = record.get("ts"), "-"
    if isinstance(when, int | float):
        try:  # a line written by hand may hold any number (1e999, -1e300)
            stamp = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
                + f".{int(when * 1000) % 1000:03d}"
            )
        except (ValueError, OverflowError, OSError):
            pass
    fields = " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
        for k, v in rest.items()
    )
    level = record.get("level", "-")  # a plugin may log with any level (None, a list)
    if not isinstance(level, str):
        level = json.dumps(level, ensure_ascii=False)
    line = f"{stamp} {level:<7} {record.get('msg', '')}"
    return (f"{line}  {fields}" if fields else line).replace("\n", " ")


# -- the stats, for people ----------------------------------------------------------------------


def render(result: Mapping[str, Any]) -> Iterator[str]:
    """``orch stats`` as aligned text: one block per section."""
    window = result["window"]
    who = window["agent"] or "every agent"
    span = age(window["until"] - window["since"])
    yield f"orch stats since {_when(window['since'])} ({span}), {who}"
    agents = result["agents"]
    states = ", ".join(f"{n} {state}" for state, n in agents["by_state"].items())
    yield ""
    yield f"agents: {agents['total']}" + (f" ({states})" if states else "")
    if result["hosts"]:
        yield "hosts: " + ", ".join(_host(name, row, window["until"])
                                    for name, row in result["hosts"].items())  # fmt: skip

    messages = result["messages"]
    yield ""
    yield "messages: " + ", ".join(
        f"{messages[k]} {k}"
        for k in ("sent", "delivered", "confirmed", "dead", "expired", "cancelled")
    )
    rows = [["", "n", "p50", "p90", "p99"]]
    for name, title in (("queued_to_delivered", "queued -> delivered"),
                        ("delivered_to_confirmed", "delivered -> confirmed")):  # fmt: skip
        latency = messages[name]
        rows.append([title, *_summary(latency["all"])])
        for group in ("by_band", "by_agent"):
            rows += [[f"  {key}", *_summary(s)] for key, s in latency[group].items()]
    yield from _table(rows)

    queue = result["queue"]
    yield ""
    yield (
        f"queue: {queue['pending']} pending ({queue['scheduled']} scheduled), oldest waiting "
        f"{_seconds(queue['oldest_seconds'])}"
        + "".join(f", {n} {b}" for b, n in queue["by_band"].items())
    )
    bands = list(queue["by_band"])
    rows = [["", "pending", "oldest", *bands]]
    for agent, row in queue["by_agent"].items():
        rows.append([agent, str(row["pending"]), _seconds(row["oldest_seconds"]),
                     *(str(row["by_band"].get(b, 0)) for b in bands)])  # fmt: skip
    yield from _table(rows) if len(rows) > 1 else ()

    hooks = result["hooks"]
    yield ""
    yield (
        f"hook runs since {_when(hooks['since'])}: {hooks['runs']}, {_percent(hooks['ok_rate'])}"
        f" ok, {hooks['failed']} failed, {hooks['timeouts']} with a timeout, {hooks['killed']}"
        f" killed by the backstop; p50 {_ms(hooks['p50_ms'])}, p99 {_ms(hooks['p99_ms'])}"
    )
    rows = [["", "runs", "failed", "timeouts", "killed", "ok", "p50", "p99"]]
    for event, row in hooks["by_event"].items():
        rows.append([event, *_health(row), _ms(row["p50_ms"]), _ms(row["p99_ms"])])
    for plugin, row in hooks["by_plugin"].items():
        rows.append([f"plugin {plugin}", *_health(row)])
    yield from _table(rows) if len(rows) > 1 else ()

    restarts = result["restarts"]
    steps = ("reprompt", "restart", "fresh", "give_up")
    yield ""
    yield (
        f"recoveries: {sum(restarts[s] for s in steps)} ({_per_hour(restarts['per_hour'])}): "
        + ", ".join(f"{restarts[s]} {s}" for s in steps)
        + f"; {restarts['failed']} failed"
    )
    rows = [["", *steps, "failed", "per hour"]]
    for agent, row in restarts["by_agent"].items():
        rows.append([agent, *(str(row[s]) for s in steps), str(row["failed"]),
                     _number(row["per_hour"])])  # fmt: skip
    yield from _table(rows) if len(rows) > 1 else ()

    compactions = result["compactions"]
    yield ""
    yield (
        f"compactions since {_when(compactions['since'])}: {compactions['total']}"
        f" ({_per_hour(compactions['per_hour'])})"
    )
    rows = [["", "count", "per hour"]]
    for agent, row in compactions["by_agent"].items():
        rows.append([agent, str(row["count"]), _number(row["per_hour"])])
    yield from _table(rows) if len(rows) > 1 else ()

    tokens = result["tokens"]
    yield ""
    yield "tokens" + ("" if tokens else ": none recorded in the transcripts orch knows")
    names = ("input", "output", "cache_creation", "cache_read", "requests")
    rows = [["", *names]]
    rows += [[agent, *(f"{row[n]:,}" for n in names)] for agent, row in tokens.items()]
    yield from _table(rows) if len(rows) > 1 else ()

    alerts = result["alerts"]
    yield ""
    yield "alerts: " + (", ".join(f"{n} {kind}" for kind, n in alerts.items()) or "none")

    for plugin, section in result["plugins"].items():
        yield ""
        yield f"{plugin}:"
        yield from _tree(section, 1)


def _tree(value: Any, depth: int) -> Iterator[str]:
    """A plugin's section: a dict of plain values on one line, nested ones below it."""
    pad = "  " * depth
    for key, item in value.items() if isinstance(value, dict) else ():
        if isinstance(item, dict) and all(not isinstance(v, dict | list) for v in item.values()):
            yield f"{pad}{key}: " + ", ".join(f"{k} {_plain(v)}" for k, v in item.items())
        elif isinstance(item, dict):
            yield f"{pad}{key}:"
            yield from _tree(item, depth + 1)
        else:
            yield f"{pad}{key}: {_plain(item)}"


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _table(rows: list[list[str]]) -> Iterator[str]:
    """Rows in columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    for row in rows:
        row = row + [""] * (len(widths) - len(row))
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        yield "  " + "  ".join(cells).rstrip()


def _health(row: Mapping[str, Any]) -> list[str]:
    counts = [str(row[k]) for k in ("runs", "failed", "timeouts", "killed")]
    return [*counts, _percent(row["ok_rate"])]


def _summary(s: Mapping[str, Any]) -> list[str]:
    return [str(s["n"]), _seconds(s["p50"]), _seconds(s["p90"]), _seconds(s["p99"])]


def _host(name: str, row: Mapping[str, Any], now: float) -> str:
    """``b (2 agents, unreachable, supervisor last heard 3m ago)``."""
    said = [f"{row['agents']} agent{'s' * (row['agents'] != 1)}"]
    if row["unreachable"]:
        said.append(hosts.UNREACHABLE)
    if row["last_seen"] is None:
        said.append("no supervisor")
    elif row["unreachable"]:
        said.append(f"supervisor last heard {age(now - row['last_seen'])} ago")
    return f"{name} ({', '.join(said)})"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"
    return age(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _per_hour(value: float | None) -> str:
    return "no time covered" if value is None else f"{value:g} per hour"
