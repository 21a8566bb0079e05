"""A throwaway PostgreSQL server for tests: a private cluster, one per test session, and a
fresh database for each test that asks for one.

The binaries come from Debian's ``postgresql`` package (``make setup``). The server refuses to
run as root, so under root the cluster belongs to the ``postgres`` user (through ``runuser``),
otherwise to the user running the tests. It listens on 127.0.0.1 and on a socket in its own
folder only, trusts connections from this machine (it holds test data for the length of a
session, nothing else) and runs without fsync: nothing in it has to survive a crash.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from typing import TYPE_CHECKING

from orch_core.errors import OrchError

if TYPE_CHECKING:
    import psycopg

#: The server's settings: fast, local, and nothing to keep.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    " -c unix_socket_permissions=0700"
)
SUPERUSER = "orch"
TEMPLATE = "orch_template"


class PostgresMissing(OrchError):
    """No PostgreSQL server binaries on this machine."""


def binaries() -> str:
    """The folder of the newest installed PostgreSQL's ``initdb`` and ``pg_ctl``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[-3]) if path.split("/")[-3].isdigit() else 0,
    )
    if not found:
        raise PostgresMissing(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `make setup`"
        )
    return os.path.dirname(found[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """A private PostgreSQL cluster in a folder of its own; :meth:`start` it, :meth:`stop` it."""

    def __init__(self, folder: str, bin_dir: str, owner: str | None, settings: str = "") -> None:
        self.folder = folder
        self.bin_dir = bin_dir
        self.owner = owner
        self.settings = settings
        self.port = 0
        self._names = itertools.count(1)
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None

    @classmethod
    def start(cls, settings: str = "") -> Cluster:
        """``settings``: server options after :data:`SERVER_OPTIONS`, which they override
        (a benchmark's ``-c fsync=on``)."""
        bin_dir = binaries()
        folder = tempfile.mkdtemp(prefix="orch-pg-")
        owner = "postgres" if os.geteuid() == 0 else None
        if owner:
            shutil.chown(folder, owner, owner)
        cluster = cls(folder, bin_dir, owner, settings)
        cluster._run("initdb", "-D", cluster.data, "-U", SUPERUSER, "--auth=trust",
                     "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        for _ in range(3):  # another process may take the free port first
            cluster.port = free_port()
            try:
                cluster.resume()
            except subprocess.CalledProcessError:
                continue
            cluster._make_template()
            return cluster
        with open(os.path.join(folder, "server.log"), encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        cluster.stop()
        raise OrchError(f"the test PostgreSQL server did not start:\n{tail}")

    def pause(self) -> None:
        """Stop the server as an operator would (``pg_ctl stop``, fast mode: open transactions
        are rolled back, connections dropped); :meth:`resume` starts it again on its port."""
        if self._admin is not None:
            self._admin.close()
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")

    def resume(self) -> None:
        """Start the server (again) on :attr:`port`, and wait until it takes connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} {SERVER_OPTIONS} {self.settings}"
        log = os.path.join(self.folder, "server.log")
        self._run("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "-o", options, "start")

    @property
    def running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    @property
    def data(self) -> str:
        return os.path.join(self.folder, "data")

    def _run(self, program: str, *args: str) -> None:
        argv = [os.path.join(self.bin_dir, program), *args]
        if self.owner:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd=self.folder)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to the ``postgres`` database, for creating and dropping others."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        return self._admin

    def _make_template(self) -> None:
        """The core schema, made once (by the store, as on first use anywhere) in the database
        every test's own is copied from: a test's first hook need not create it in its
        budget. Plugins' tables are left to each test's first hook."""
        from orch_core.storage.postgres import PostgresStore

        self.admin().execute(f"CREATE DATABASE {TEMPLATE}")
        store = PostgresStore(self.url(TEMPLATE), self.folder)
        store.execute("SELECT 1")
        store.close()

    def create_database(self, *, empty: bool = False, encoding: str = "UTF8") -> str:
        """A new database with orch's core tables and nothing in them (``empty``: not even
        the tables, in ``encoding``); its URL."""
        name = f"orch_test_{next(self._names)}"
        admin = self.admin()
        faster = " STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else ""
        template = f"template0 ENCODING '{encoding}'" if empty else TEMPLATE
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}{faster}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url``, ending whatever connections are left to it."""
        name = url.rsplit("/", 1)[1]
        self.admin().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.running:
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)
