"""``orch spawn``, ``orch restart``, ``orch stop``, ``orch adopt`` and ``orch supervise``."""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

import click

from orch_core import hosts, paths
from orch_core.cli import install
from orch_core.cli.params import (
    agent_name,
    briefing_text,
    non_negative_seconds,
    session_name,
)
from orch_core.hook.context import Runtime
from orch_core.storage import open_store
from orch_core.supervisor import lifecycle

if TYPE_CHECKING:
    from typing import TextIO

    from orch_core.storage.store import Store

DEFAULT_COMMAND = "claude"


def _store() -> Store:
    return open_store(os.environ)


def _argv(command: str) -> list[str]:
    """``--command`` split as a shell would split it (no shell runs it), else a one-line error."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise click.ClickException(f"--command {command!r}: {exc}") from None
    if not argv:
        raise click.ClickException("--command is empty")
    return argv


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.ClickException(f"--env takes KEY=VALUE, not {pair!r}")
        extra[key] = value
    return extra


@click.command("spawn")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False),
    help="The project the agent works in (hooks are installed there).",
)
@click.option(
    "--session",
    default="orch",
    show_default=True,
    callback=session_name,
    help="tmux session to use (no '.' or ':').",
)
@click.option("--brief", type=click.File("r", encoding="utf-8"), help="Briefing for the agent.")
@click.option(
    "--command",
    "command",
    default=DEFAULT_COMMAND,
    show_default=True,
    help="How to start the agent, split like a shell would (no shell runs it).",
)
@click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE for the agent's pane.")
def spawn_command(
    name: str,
    directory: str,
    session: str,
    brief: TextIO | None,
    command: str,
    env_pairs: tuple[str, ...],
) -> None:
    """Start agent NAME in a new tmux window, with orch's hooks, its briefing, and a launch
    spec orch restarts it from. Everything is checked first; if tmux then cannot start it, the
    hooks it installed are taken out again."""
    argv = _argv(command)
    extra_env = _env_pairs(env_pairs)
    cwd = os.path.abspath(directory)
    store = _store()
    lifecycle.check_spawn(store, name, cwd=cwd, argv=argv, extra_env=extra_env, env=os.environ)
    briefing = brief and briefing_text(brief)  # before anything changes
    with install.installed(cwd):
        # opening the project's runtime builds its plan, so the agent's first hook finds it
        # ready (Claude names the project by its real path)
        runtime = Runtime.open({**os.environ, **extra_env}, os.path.realpath(cwd), store=store)
        runtime.fire("orch_agent_spawned", {"agent": name, "briefing": briefing})
        spec = lifecycle.spawn(
            store,
            name,
            cwd=cwd,
            argv=argv,
            session=session,
            extra_env=extra_env,
            env=os.environ,
        )
    lifecycle.ensure_supervisor(os.environ)
    click.echo(f"spawned {name} in tmux pane {spec['pane']} (session {session}), in {cwd}")


@click.command("restart")
@click.argument("agent", callback=agent_name)
@click.option("--fresh", is_flag=True, help="Start a new conversation instead of continuing.")
def restart_command(agent: str, fresh: bool) -> None:
    """Restart AGENT in its window now, keeping its conversation unless --fresh. On its own
    host only."""
    store = _store()
    agent = hosts.Names(store).resolve(agent)
    spec = lifecycle.restart(store, agent, env=os.environ, fresh=fresh)
    click.echo(f"restarted {agent} in pane {spec['pane']}" + (" (fresh)" if fresh else ""))


@click.command("stop")
@click.argument("agent", callback=agent_name)
def stop_command(agent: str) -> None:
    """Stop AGENT; orch will not restart it until you do. On its own host only."""
    store = _store()
    agent = hosts.Names(store).resolve(agent)
    lifecycle.stop(store, agent, os.environ)
    click.echo(f"stopped {agent}")


@click.command("adopt")
@click.argument("agent", callback=agent_name)
@click.option(
    "--command",
    "command",
    default=DEFAULT_COMMAND,
    show_default=True,
    help="How the agent is started, split like a shell would.",
)
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--pane", help="Its tmux pane (e.g. %3); default: the pane its hooks reported.")
@click.option("--session", default="orch", show_default=True, callback=session_name)
@click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE for the agent's pane.")
def adopt_command(
    agent: str,
    command: str,
    directory: str,
    pane: str | None,
    session: str,
    env_pairs: tuple[str, ...],
) -> None:
    """Give a hand-started AGENT of this host a launch spec, so orch can restart it. The name,
    directory and command are checked as `orch spawn` checks them."""
    store = _store()
    names = hosts.Names(store)
    agent = lifecycle.check_adoptable(names.resolve(agent))
    here = paths.host(os.environ)
    where = names.host_of(agent) or names.host_named(agent)  # heard from or not
    if store.shared and where not in (None, here):
        raise click.ClickException(f"{agent} runs on host {where}: run `orch adopt` there")
    argv = _argv(command)
    extra_env = _env_pairs(env_pairs)
    cwd = os.path.abspath(directory)
    lifecycle.check_launch(cwd, argv, extra_env, os.environ)
    known = store.agent_pane(agent, host=here)
    socket = known[1] if known else os.environ.get("ORCH_TMUX_SOCKET")
    spec = lifecycle.adopt(store, agent, argv=argv, cwd=cwd, extra_env=extra_env, socket=socket,
                           session=session, pane=pane, env=os.environ)  # fmt: skip
    pane = spec["pane"]
    click.echo(f"{agent} adopted" + (f" (pane {pane})" if pane else " (no pane known yet)"))


@click.command("supervise")
@click.option(
    "--for",
    "seconds",
    type=float,
    envvar="ORCH_SUPERVISE_FOR",
    callback=non_negative_seconds,
    help="Stop after this many seconds (default: run until stopped).",
)
def supervise_command(seconds: float | None) -> None:
    """Run the supervisor: restarts, pane watching, TTLs, wake-ups. One per machine, for
    this host's agents. SIGTERM ends it as Ctrl-C does: its socket and status go with it."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not lifecycle.Supervisor(os.environ).run(seconds):
        raise click.ClickException(
            f"a supervisor already runs (pid {lifecycle.supervisor_running(os.environ)})"
        )
