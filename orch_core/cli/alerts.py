"""``orch alerts``: what needed a person, whether it was sent, and acknowledging it."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import click

from orch_core.cli.group import listing_group
from orch_core.ops import alerts
from orch_core.storage import open_store
from orch_core.text import inert

if TYPE_CHECKING:
    from typing import Any


alerts_group = listing_group(
    "alerts", "List alerts (orch alerts [--json]), or acknowledge one (orch alerts ack ID)."
)


@alerts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool) -> None:
    """Every alert, oldest first: time, agent, kind, acknowledged, sent, message."""
    found = alerts.listing(open_store(os.environ))
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False))
        return
    for alert in found:
        click.echo(inert(_line(alert)))


def one_line(text: str) -> str:
    """An alert's message on one line: it may quote a hook payload (a notification's text, a
    StopFailure's error), whose newlines and tabs would print what reads as another alert."""
    return inert(text).replace("\n", " ").replace("\t", " ")


def _line(alert: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert["time"]))
    sent = "sent" if alert["sent"] else "sending" if alert["next_try"] else "unsent"
    acked = "acked" if alert["acked"] else "-"
    return (f"{alert['id']}\t{when}\t{alert['agent'] or '-'}\t{alert['kind']}\t{acked}\t{sent}"
            f"\t{one_line(alert['message'])}")  # fmt: skip


@alerts_group.command("ack")
@click.argument("alert_id", metavar="ID")
def ack_command(alert_id: str) -> None:
    """Acknowledge alert ID: it is not sent (again), and what it is about raises no new alert
    while it lasts."""
    alert = alerts.ack(open_store(os.environ), alert_id)
    click.echo(f"acknowledged alert {alert['id']}: {one_line(alert['message'])}")
