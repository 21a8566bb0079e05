"""``orch serve``: the fleet in a browser, live, and Prometheus metrics."""

from __future__ import annotations

import os

import click

from orch_core.storage import open_store


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but a loopback one needs a token.",
)
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--token",
    envvar="ORCH_SERVE_TOKEN",
    help="Every request must carry it (Authorization: Bearer, or ?token= for the page); "
    "default: $ORCH_SERVE_TOKEN.",
)
def serve_command(host: str, port: int, token: str | None) -> None:
    """Show the fleet in a browser, updated live: agents, queues, recent messages, hook
    health, charts; JSON under /api, server-sent events at /events, Prometheus at /metrics.
    The store is read once a second, however many pages are open."""
    import functools

    from orch_core.ops import fleet, serve
    from orch_core.supervisor import lifecycle

    serve.check_access(host, token)  # before anything is opened
    store = open_store(os.environ)
    try:
        take = functools.partial(fleet.snapshot, host_timeout=lifecycle.host_timeout(os.environ))
        dashboard = serve.Dashboard(store, host=host, port=port, token=token, take=take)
        try:
            click.echo(f"orch serve: {dashboard.url}" + (" (token required)" if token else ""))
            dashboard.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            dashboard.close()
    finally:
        store.close()
