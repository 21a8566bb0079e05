"""``orch migrate --to postgresql://...``: this machine's SQLite state into PostgreSQL."""

from __future__ import annotations

import os

import click

from orch_core import paths
from orch_core.storage import migrate
from orch_core.text import inert


@click.command("migrate")
@click.option("--to", "target", required=True, metavar="URL",
              help="The PostgreSQL database: postgresql://user@host/db.")  # fmt: skip
def migrate_command(target: str) -> None:
    """Move this machine's SQLite state (messages and their history, agents, launch specs,
    recoveries, alerts, hook runs, each plugin's tables) into PostgreSQL. Running it again
    adds only what is missing. Refused while `orch supervise` runs. orch keeps using SQLite
    until you set [orch] database in your own config."""
    project = os.path.abspath(os.environ.get("CLAUDE_PROJECT_DIR") or paths.working_folder())
    report = migrate.migrate(os.environ, project, target)
    width = max([len(t.name) for t in report.tables] + [5])
    if report.changed:
        click.echo(f"moved {report.source} into {report.target}:")
        click.echo(f"  {'table':<{width}}  {'rows':>7}  {'moved':>7}")
        for table in report.tables:
            replaced = f" ({table.replaced} changed here since)" if table.replaced else ""
            click.echo(f"  {table.name:<{width}}  {len(table.rows):>7}  {table.added:>7}{replaced}")
        click.echo(f"{report.added} rows moved, in {len(report.tables)} tables")
    else:
        rows = sum(len(t.rows) for t in report.tables)
        click.echo(
            f"nothing to move: {report.target} already holds this state ({rows} rows in "
            f"{len(report.tables)} tables)"
        )
    if report.nuls:
        click.echo(f"note: {report.nuls} rows held a NUL character, which PostgreSQL's text "
                   "cannot: it was replaced by U+FFFD")  # fmt: skip
    for name, why in report.left_behind.items():
        click.echo(inert(f"left behind: {name}: {why}; run orch migrate again from a project "
                         "that loads its plugin"))  # fmt: skip
    config = paths.user_config_path(os.environ)
    also = " (and unset ORCH_DB, which names the SQLite file)" if os.environ.get("ORCH_DB") else ""
    click.echo(
        f"orch still uses {report.source}: to switch, set in {config}{also}\n"
        f'  [orch]\n  database = "{report.url}"'
        + ("  # with its password, or in ~/.pgpass" if report.password else "")
        + "\nthen start `orch supervise` again"
    )
    if report.left_behind:
        raise click.ClickException(f"{len(report.left_behind)} tables were left behind")
