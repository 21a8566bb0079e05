"""Where orch keeps its state: the store (connections, transactions, migrations) and backups."""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orch_core.storage.store import Store


def open_store(env: Mapping[str, str], *, timeout: float = 5.0, durable: bool = True) -> Store:
    """The machine's store (``ORCH_DB``): the one place that picks a backend.

    :param timeout: seconds to wait for another writer.
    :param durable: whether each commit must reach the disk before it returns.
    """
    from orch_core import paths
    from orch_core.storage.store import SQLiteStore

    return SQLiteStore(paths.db_path(env), timeout=timeout, durable=durable)
