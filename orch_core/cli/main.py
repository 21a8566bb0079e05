"""The ``orch`` command line. Plugins add commands through ``orch_register_commands``."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import click

from orch_core import __version__, paths
from orch_core.cli import errors, install
from orch_core.cli.group import OrchGroup

if TYPE_CHECKING:
    from typing import Any

    from orch_core.plugins import loader


def _project(directory: str | None) -> str:
    return os.path.abspath(
        directory or os.environ.get("CLAUDE_PROJECT_DIR") or paths.working_folder()
    )


def _loaded() -> loader.Loaded:
    from orch_core.plugins import loader

    return loader.load(os.environ, _project(None))


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"orch, version {__version__}")
    for info in _loaded().plugins:
        click.echo(f"  {info.name} {info.version or ''} ({info.source})".rstrip())
    ctx.exit()


#: Commands that run whatever the configuration says: those that report it (doctor, the log),
#: and those that put a database back.
UNCHECKED = ("doctor", "logs", "backup", "restore")


@click.group(cls=OrchGroup)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the plugins, then exit.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Keep a fleet of Claude Code agents fed, rebriefed and running, through hooks."""
    if ctx.invoked_subcommand not in UNCHECKED:
        errors.check_config(os.environ)


@cli.command("install")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--local", is_flag=True, help="Write .claude/settings.local.json instead.")
@click.option("--template", is_flag=True, help="Print the hooks block with a placeholder path.")
def install_command(directory: str | None, local: bool, template: bool) -> None:
    """Register orch-hook for every hook event in DIRECTORY's Claude settings."""
    if template:
        click.echo(json.dumps(install.template(), indent=2))
        return
    project = _project(directory)
    changed = install.install(project, local=local)
    path = install.settings_path(project, local)
    if changed:
        click.echo(f"orch-hook registered for {len(changed)} events in {path}")
    else:
        click.echo(f"{path} already up to date")
    unready = install.prepare(project)
    if unready is not None:  # the hooks are registered all the same; their first runs try again
        click.echo(f"warning: not prepared, the first hooks will try again: {unready}",
                   err=True)  # fmt: skip


@cli.command("uninstall")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--local", is_flag=True, help="Edit .claude/settings.local.json instead.")
def uninstall_command(directory: str | None, local: bool) -> None:
    """Remove what `orch install` added to DIRECTORY's Claude settings."""
    project = _project(directory)
    changed = install.uninstall(project, local=local)
    path = install.settings_path(project, local)
    click.echo(
        f"orch-hook removed from {len(changed)} events in {path}"
        if changed
        else f"orch-hook was not registered in {path}"
    )


@cli.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(show_all: bool, as_json: bool) -> None:
    """List the plugins orch loads for this project."""
    loaded = _loaded()
    rows: list[dict[str, Any]] = [
        {"name": i.name, "version": i.version, "source": i.source, "hooks": list(i.hooks)}
        for i in loaded.plugins
        if show_all or i.source != "builtin"
    ]
    for error in loaded.errors:
        click.echo(f"warning: {error}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(
            f"{row['name']} {row['version'] or ''} ({row['source']}): {', '.join(row['hooks'])}"
        )


@cli.command("doctor")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def doctor_command(directory: str | None) -> None:
    """Check settings, database, plugins and recent hook runs; exit 1 when unhealthy."""
    from orch_core.cli import doctor
    from orch_core.text import inert

    checks = doctor.run(os.environ, _project(directory))
    for check in checks:
        click.echo(inert(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}"))
        if not check.ok and check.fix:
            click.echo(inert(f"     fix: {check.fix}"))
    if not all(check.ok for check in checks):
        sys.exit(1)


@cli.command("backup")
def backup_command() -> None:
    """Take a backup of the database now, beside the supervisor's scheduled ones."""
    import time

    from orch_core.storage import database, open_store

    store = open_store(os.environ)
    keep = int(_core_settings().get("backup_keep", 8))
    taken = store.back_up(keep, time.time())
    if taken is None:
        raise click.ClickException(
            f"the store is {store.dialect}, which orch does not back up: use the server's own "
            "tools (pg_dump)"
        )
    click.echo(f"backed up {database(os.environ)} to {taken}")


@cli.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
def restore_command(file: str) -> None:
    """Put backup FILE in place of the database; the current one is kept aside. Refused while
    `orch supervise` runs."""
    import shlex

    from orch_core.storage import backup, database

    held = backup.check(file)
    aside = backup.restore(os.environ, file)
    replaced = f"the one it replaced is {aside}" if aside else "there was none to set aside"
    click.echo(f"restored {file} ({held['messages']} messages); {replaced}")
    if aside is None:
        return
    lost, ended = backup.since_backup(aside, database(os.environ))
    if lost:
        click.echo(f"note: {lost} messages pending in {aside} are not in {file} (sent after it was "
                   f"taken), so no longer queued: `ORCH_DB={shlex.quote(aside)} orch export | "
                   "orch import -` queues them again", err=True)  # fmt: skip
    if ended:
        more = f" and {len(ended) - 20} more" if len(ended) > 20 else ""
        click.echo(f"note: {len(ended)} messages queued again had ended in {aside} after {file} "
                   "was taken (confirmed, expired, cancelled or dead): their agents get them "
                   f"again unless each is cancelled (`orch queue cancel ID`): "
                   f"{' '.join(ended[:20])}{more}", err=True)  # fmt: skip


def _core_settings() -> dict[str, Any]:
    from orch_core.plugins import plan

    return plan.load(os.environ, _project(None)).settings


cli.lazy = {
    **{name: f"orch_core.cli.queue:{attribute}" for name, attribute in (
        ("send", "send_command"), ("queue", "queue_group"), ("agents", "agents_command"),
        ("export", "export_command"), ("import", "import_command"))},
    **{name: f"orch_core.cli.lifecycle:{name}_command"
       for name in ("spawn", "restart", "stop", "adopt", "supervise")},
    "alerts": "orch_core.cli.alerts:alerts_group",
    "migrate": "orch_core.cli.migrate:migrate_command",
    "top": "orch_core.cli.top:top_command",
    "serve": "orch_core.cli.serve:serve_command",
    **{name: f"orch_core.cli.ops:{name}_command" for name in ("stats", "logs")},
}  # fmt: skip
#: orch's own commands, which no plugin's may replace.
OWN_COMMANDS = frozenset({*cli.commands, *cli.lazy})


def main() -> None:
    """Entry point of ``orch``: built-in commands plus those plugins register. Plugins'
    commands are looked up (in the cached plan, each import bounded) only when the command is
    not a built-in one, or for help, which keeps built-in commands quick. ``orch send`` in its
    plain forms does not come here at all (:func:`orch_core.cli.run`)."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command not in cli.commands and command not in cli.lazy:
        _plugin_commands()
    cli()


def _plugin_commands() -> None:
    """Each plugin's commands, on their own: a broken plugin must take neither the CLI nor
    the other plugins' commands down with it, and its warning names it."""
    try:
        from orch_core.plugins import plan

        impls = plan.load(os.environ, _project(None)).impls("orch_register_commands")
    except Exception as exc:
        click.echo(f"warning: plugin commands not loaded: {exc}", err=True)
        return
    owners = dict.fromkeys(OWN_COMMANDS, "orch")
    for impl in reversed(impls):  # in registration order: the first to add a name keeps it
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            click.echo(f"warning: plugin commands not loaded: {impl.plugin}: "
                       f"{type(exc).__name__}: {exc}", err=True)  # fmt: skip
        _keep_owned(before, owners, impl.plugin)


def _keep_owned(before: dict[str, click.Command], owners: dict[str, str], plugin: str) -> None:
    """Undo what ``plugin`` did to a command another owns (orch's own, or a plugin's called
    before), with a warning: orch's own ``stats`` runs whatever a plugin adds under that name
    (plugins are not loaded for it), so the plugin's would only take its place in ``--help``."""
    for name, command in list(cli.commands.items()):
        if before.get(name) is command:
            continue
        owner = owners.setdefault(name, plugin)
        if owner == plugin:
            continue
        if name in before:
            cli.commands[name] = before[name]
        else:
            del cli.commands[name]
        whose = "one of orch's own" if owner == "orch" else f"plugin {owner}'s"
        click.echo(f"warning: plugin {plugin}: command {name!r} left out: {whose}", err=True)
