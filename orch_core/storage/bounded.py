"""A PostgreSQL connection that waits for the server a bounded time (imported with psycopg, so
never on SQLite's path)."""

from __future__ import annotations

import time
from typing import Any

import psycopg


class BoundedConnection(psycopg.Connection[Any]):
    """A connection that waits for the server at most :attr:`bound` seconds at a time, then
    gives up on it. The server ends a statement at its own ``statement_timeout``; one that
    stopped answering altogether (stuck on its disk, or behind a network gone mid-session)
    never does. The connection is closed then: a statement it never finished leaves it
    unusable. A wait with a bound of its own (for notifications) keeps that one."""

    bound: float | None = None
    #: Whether it was closed for a wait past its bound.
    gave_up = False

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
