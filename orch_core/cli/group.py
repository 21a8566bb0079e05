"""The ``orch`` group's class (expected errors in one line, commands imported when asked for),
and the groups that list unless told a verb (``orch queue``, ``orch alerts``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from orch_core.cli import errors

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class OrchGroup(click.Group):
    """A click group whose commands' expected errors become one line (:func:`errors.said`),
    while parsing (eager options such as ``--version``) and while running; and whose commands
    listed in ``lazy`` (name: ``"module:attribute"``) are imported only when asked for, so a
    command does not pay for every other command's imports."""

    lazy: dict[str, str] = {}  # noqa: RUF012 - set once, by the module that builds the group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            import importlib

            module, _, attribute = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line() -> Iterator[None]:
    """An expected error becomes a click error, which click prints as ``Error: ...``."""
    try:
        yield
    except Exception as exc:
        said = errors.said(exc)
        if said is None:
            raise
        raise click.ClickException(said) from None


class ListUnlessVerb(click.Group):
    """``orch queue [AGENT]`` lists; ``orch queue VERB ...`` acts. Whatever does not start with
    a verb is the listing's arguments, so ``orch queue proj:2 --json`` keeps working."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "list", self.commands["list"], args


def listing_group(name: str, summary: str) -> ListUnlessVerb:
    """A :class:`ListUnlessVerb` group; given nothing at all, it runs its ``list`` command."""

    @click.pass_context
    def list_unless_verb(ctx: click.Context) -> None:
        if ctx.invoked_subcommand is None:
            ctx.invoke(group.commands["list"])

    group = ListUnlessVerb(
        name,
        callback=list_unless_verb,
        help=summary,
        invoke_without_command=True,
        context_settings={"ignore_unknown_options": True},
    )
    return group
