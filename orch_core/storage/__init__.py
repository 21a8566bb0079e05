"""Where orch keeps its state: the store (connections, transactions, migrations) and backups."""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orch_core.storage.store import Store


def open_store(
    env: Mapping[str, str],
    *,
    timeout: float = 5.0,
    durable: bool = True,
    one_connection: bool = False,
) -> Store:
    """The machine's store (:func:`database`): the one place that picks a backend.

    :param timeout: seconds to wait for another writer.
    :param durable: whether each commit must reach the disk before it returns.
    :param one_connection: a server's store gives the process's threads one connection, on
        which they take turns (SQLite's connections cost no more than opening the file: one
        a thread).
    """
    from orch_core import paths

    where = database(env)
    if paths.is_url(where):
        from orch_core.storage.postgres import PostgresStore

        return PostgresStore(
            where,
            paths.state_dir(env),
            timeout=timeout,
            durable=durable,
            one_connection=one_connection,
        )
    if not paths.is_file_path(where):
        from orch_core.errors import OrchError

        raise OrchError(f"{where.partition('://')[0]}:// is no store orch knows: give ORCH_DB a "
                        "postgresql:// URL or a SQLite file's path")  # fmt: skip
    from orch_core.storage.store import SQLiteStore

    return SQLiteStore(where, timeout=timeout, durable=durable)


def server_error(exc: BaseException, env: Mapping[str, str]) -> str | None:
    """``exc`` as one line naming the database (without its password) if it is an error of a
    server store's driver (a timeout, a refused statement), else ``None``. The driver is looked
    up among the loaded modules, never imported: SQLite's commands do not pay for it, and none
    of its errors exists unless it was loaded."""
    import sys

    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    from orch_core.storage.postgres import one_line, public

    where = database(env)
    return f"{public(where)}: {one_line(exc, where)}"


def database(env: Mapping[str, str]) -> str:
    """``ORCH_DB`` (a SQLite file or a ``postgresql://`` URL), else ``[orch] database`` of the
    user's own config, else the SQLite file in the state folder. A project's ``orch.toml`` is
    never read here: a cloned repository must not send an agent's messages elsewhere (the plan
    reports a ``database`` there as an error)."""
    from orch_core import paths

    if env.get("ORCH_DB"):  # a server's URL as it is, a file's path from here
        return paths.db_path(env) if paths.is_file_path(env["ORCH_DB"]) else env["ORCH_DB"]
    return configured_database(paths.user_config_path(env)) or paths.db_path(env)


def configured_database(config_file: str) -> str:
    """``[orch] database`` of ``config_file``, or ``""``. On every hook: a config that does
    not mention the word costs one read and no TOML parser. Only a regular file is read (a
    FIFO there would block every command; the plan names it as a config error)."""
    from orch_core import paths

    try:
        raw = paths.read_regular(config_file, paths.CONFIG_LIMIT + 1)
    except OSError:
        return ""
    if b"database" not in raw:
        return ""
    import tomllib

    from orch_core.storage.store import StoreError

    if len(raw) > paths.CONFIG_LIMIT:  # what the plan refuses to read must not pick a server
        raise StoreError(f"{config_file}: larger than {paths.CONFIG_LIMIT // 1024} KiB")
    try:
        value = tomllib.loads(raw.decode("utf-8")).get("orch", {}).get("database", "")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError, RecursionError) as exc:
        raise StoreError(f"{config_file}: cannot tell which database to use: {exc}") from None
    if value and not (isinstance(value, str) and paths.is_url(value)):
        raise StoreError(f"{config_file}: [orch] database must be a postgresql:// URL")
    return str(value)
