"""A PostgreSQL connection that waits for the server a bounded time (imported with psycopg, so
never on SQLite's path)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg

#: Seconds past the server's own statement timeout that orch waits for an answer before it
#: gives up on the connection: the server ends a statement at its ``statement_timeout``, but
#: one that stopped answering altogether (stuck on its disk, or behind a network gone
#: mid-session) never does, and would hold a command for ever.
SLACK = 1.0


class BoundedConnection(psycopg.Connection[Any]):
    """A connection that waits for the server at most :attr:`bound` seconds at a time, then
    gives up on it. The connection is closed then: a statement it never finished leaves it
    unusable. A wait with a bound of its own (for notifications) keeps that one."""

    #: The ``statement_timeout`` orch gave the server, in seconds (``None``: waits unbounded).
    statement_timeout: float | None = None
    #: Whether it was closed for a wait past its bound.
    gave_up = False
    #: How many statements' answers one wait may cover (:meth:`answers`).
    _statements = 1

    @property
    def bound(self) -> float | None:
        """Each statement a wait covers may take the server's timeout, and then :data:`SLACK`."""
        if self.statement_timeout is None:
            return None
        return self.statement_timeout * self._statements + SLACK

    @contextlib.contextmanager
    def answers(self, statements: int) -> Iterator[None]:
        """Within: each wait may be for ``statements`` statements' answers (a pipeline,
        ``executemany``), each of which the server gives its own timeout."""
        before, self._statements = self._statements, max(1, statements)
        try:
            yield
        finally:
            self._statements = before

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
