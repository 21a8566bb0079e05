"""What every command checks of what it is given: one rule for an agent's name, one reading
of a length of time, one way to read a text file."""

from __future__ import annotations

from typing import IO

import click

from orch_core.hook import agents


def check_agent(value: str) -> str:
    """An agent's name (or a pattern of names where the command takes one) is 1-128 printable
    characters, not starting or ending with ':'; else a one-line error."""
    if not agents.valid_id(value):
        raise click.ClickException(
            f"{value!r} is not an agent name: 1-128 printable characters, not starting or "
            "ending with ':'"
        )
    return value


def agent_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """:func:`check_agent` as a click callback: ``@click.argument("agent", callback=...)``."""
    return check_agent(value)


def optional_agent_name(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> str | None:
    """:func:`agent_name` for an argument that may be left out."""
    return None if value is None else check_agent(value)


def session_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A tmux session's name without ``.`` or ``:``: tmux turns them into ``_`` when it makes
    the session, so orch, asking for the name it was given, would not find it again (the next
    spawn or restart would try to make it a second time). Not empty: tmux takes none."""
    if not value:
        raise click.BadParameter("a tmux session needs a name")
    if "." in value or ":" in value:
        raise click.BadParameter(f"{value!r}: tmux session names cannot contain '.' or ':'")
    return value


def non_negative_seconds(
    _ctx: click.Context, _param: click.Parameter, value: float | None
) -> float | None:
    """A number of seconds that is finite and not negative (``nan`` or ``-1`` would end at
    once, saying nothing), or ``None`` where it may be left out."""
    if value is not None and not 0 <= value < float("inf"):
        raise click.BadParameter(f"{value}: give a number of seconds, 0 or more")
    return value


def duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """A length of time, ``30m``, ``2h``, ``1d``, ``1h30m`` or seconds, in seconds (at most a
    thousand years); else a one-line error."""
    from orch_core.queue import QueueError, parse_duration

    try:
        return parse_duration(value)
    except QueueError as exc:
        raise click.BadParameter(str(exc)) from None


def briefing_text(file: IO[str]) -> str:
    """A briefing from ``file``: not blank (``orch spawn --brief`` would store it over the
    briefing ``orch brief`` gave), without NUL characters, which PostgreSQL's text refuses: a
    briefing that works on one store works on the other."""
    text = read_text(file)
    if not text.strip():
        raise click.ClickException("the briefing is empty")
    if "\0" in text:
        raise click.ClickException("the briefing contains a NUL character (\\x00)")
    return text


def read_text(file: IO[str]) -> str:
    """All of a ``click.File("r", encoding="utf-8")``, which decodes as it reads: bytes that
    are not UTF-8 are a one-line error naming the file (or stdin), not a traceback."""
    try:
        return file.read()
    except UnicodeDecodeError:
        name = getattr(file, "name", "-")
        raise click.ClickException(
            f"{'stdin' if name in ('-', '<stdin>') else name} is not UTF-8 text"
        ) from None
