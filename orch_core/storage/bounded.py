"""A PostgreSQL connection that waits for the server a bounded time (imported with psycopg, so
never on SQLite's path)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg


class BoundedConnection(psycopg.Connection[Any]):
    """A connection that waits for the server at most :attr:`bound` seconds at a time, then
    gives up on it. The server ends a statement at its own ``statement_timeout``; one that
    stopped answering altogether (stuck on its disk, or behind a network gone mid-session)
    never does. The connection is closed then: a statement it never finished leaves it
    unusable. A wait with a bound of its own (for notifications) keeps that one.

    One wait may cover the answers of several statements (a pipeline, ``executemany``): the
    server gives each of them its own ``statement_timeout``, so :meth:`answers` widens the
    bound for them."""

    bound: float | None = None
    #: The part of :attr:`bound` past the server's own timeout for one statement.
    slack = 0.0
    #: Whether it was closed for a wait past its bound.
    gave_up = False

    @contextlib.contextmanager
    def answers(self, statements: int) -> Iterator[None]:
        """Within: each wait may be for ``statements`` statements' answers, each of which
        the server may take up to its timeout on (the bound less :attr:`slack`)."""
        bound = self.bound
        if bound is None or statements <= 1:
            yield
            return
        self.bound = (bound - self.slack) * statements + self.slack
        try:
            yield
        finally:
            self.bound = bound

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        bound = self.bound
        if bound is None or kwargs.get("timeout") is not None:
            return super().wait(gen, *args, **kwargs)
        kwargs["timeout"] = bound
        start = time.monotonic()
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError:
            if self.closed or time.monotonic() - start < bound:
                raise  # the server's own error, or a connection already gone
            self.gave_up = True
            self.close()
            raise psycopg.OperationalError(f"no answer within {bound:.1f}s") from None
