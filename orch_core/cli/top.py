"""``orch top``: the live view. Textual is imported only once the command runs."""

from __future__ import annotations

import os

import click

from orch_core.storage import open_store


@click.command("top")
def top_command() -> None:
    """Watch the fleet live (agents, recent messages, hook health) and act on it: send,
    cancel, retry, restart, rebrief."""
    from orch_core.ops.top import TopApp

    TopApp(open_store(os.environ), os.environ).run()
