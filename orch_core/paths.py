"""Where orch keeps its state: one database per machine, logs and caches beside it."""

from __future__ import annotations

import os
import stat

from orch_core.errors import OrchError

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping


#: How a PostgreSQL database is named, in ``ORCH_DB`` or ``[orch] database``.
URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(database: str) -> bool:
    """Whether ``database`` names a PostgreSQL server rather than a SQLite file."""
    return database.startswith(URL_SCHEMES)


def is_file_path(database: str) -> bool:
    """Whether ``database`` is a SQLite file's path, not a URL of any kind (one orch does not
    know is refused, never made into a file named after it)."""
    return "://" not in database


#: What a host's name may hold: it starts the names of its agents on a shared store
#: (``host/session:window``), so no ``/``, and nothing tmux or a shell would read.
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_HOST = 64
_hostname: list[str] = []  # the machine's name, asked once per process


class HostError(OrchError):
    """This machine has no name orch can use in the fleet."""


def valid_host(name: str) -> bool:
    """A usable host name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter
    or digit."""
    return 0 < len(name) <= MAX_HOST and name[0].isalnum() and HOST_CHARS.issuperset(name)


def host(env: Mapping[str, str] = os.environ) -> str:
    """This machine's name in the fleet: ``ORCH_HOST``, else its hostname (what
    ``socket.gethostname()`` gives, read once, without importing socket)."""
    name = env.get("ORCH_HOST")
    if not name:
        if not _hostname:
            _hostname.append(os.uname().nodename)
        name = _hostname[0]
    if not valid_host(name):
        raise HostError(
            f"{name!r} cannot name this host: set ORCH_HOST to 1-{MAX_HOST} letters, digits, "
            "'.', '_' or '-'"
        )
    return name


def state_dir(env: Mapping[str, str] = os.environ) -> str:
    """``ORCH_STATE_DIR``, else the folder of an ``ORCH_DB`` file, else ``$XDG_STATE_HOME/orch``
    (also beside a PostgreSQL database: logs, plans and large messages stay on this machine)."""
    if env.get("ORCH_STATE_DIR"):
        return env["ORCH_STATE_DIR"]
    if env.get("ORCH_DB") and is_file_path(env["ORCH_DB"]):
        return os.path.dirname(db_path(env))
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "orch")


def db_path(env: Mapping[str, str] = os.environ) -> str:
    """The SQLite file: ``ORCH_DB`` as a path from here (``~`` is the home folder; never read
    by SQLite as a ``file:`` URI, which could open it through a link, or in memory), else
    ``orch.db`` in the state folder."""
    if env.get("ORCH_DB"):
        return os.path.abspath(os.path.expanduser(env["ORCH_DB"]))
    return os.path.join(state_dir(env), "orch.db")


def backups_dir(db: str) -> str:
    """Where the backups of database ``db`` live: beside it (in the state directory)."""
    return os.path.join(os.path.dirname(os.path.abspath(db)), "backups")


def log_path(env: Mapping[str, str] = os.environ) -> str:
    return os.path.join(state_dir(env), "orch.log")


def user_config_path(env: Mapping[str, str] = os.environ) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "orch", "config.toml")


def project_config_path(project_dir: str) -> str:
    return os.path.join(project_dir, ".claude", "orch.toml")


#: The longest path a folder can have (Linux's ``PATH_MAX``): a payload's ``cwd`` longer
#: than that is no folder, and each would cost a plan of its own in the state folder.
PATH_MAX = 4096


def project_dir(env: Mapping[str, str], cwd: str | None = None) -> str:
    """The project a hook runs for: ``CLAUDE_PROJECT_DIR``, else the event's cwd (when it can
    be a folder's path), else this process's."""
    if env.get("CLAUDE_PROJECT_DIR"):
        return env["CLAUDE_PROJECT_DIR"]
    if cwd and len(cwd) < PATH_MAX and os.path.isabs(cwd):
        return cwd
    return working_folder()


def working_folder() -> str:
    """This process's working folder, or a one-line error if it was removed meanwhile."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise FolderGone(
            "the current folder no longer exists: run orch from one that does"
        ) from None


def cwd() -> str:
    """This process's working folder, ``""`` if it was removed."""
    try:
        return os.getcwd()
    except OSError:
        return ""


class NotRegularFile(OSError):
    """A FIFO, a device or a folder where a file was to be read."""


#: The largest config file orch reads (a real one is a few hundred bytes).
CONFIG_LIMIT = 256 * 1024


def read_regular(path: str, limit: int, *, follow: bool = True) -> bytes:
    """At most ``limit`` bytes of the file at ``path``, opened without blocking and read only
    if it is a regular file: a FIFO in its place would block, ``/dev/zero`` would never end
    (:class:`NotRegularFile`). With ``follow`` false, a link there is refused (``ELOOP``)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(0, "not a regular file", path)
        return os.read(fd, limit)
    finally:
        os.close(fd)


class FolderGone(OrchError):
    """The folder a command runs in was removed."""


class UnsafeState(OrchError, OSError):
    """State that someone else could have prepared or could change: refused, in one line."""


def check_private(path: str, info: os.stat_result) -> None:
    """Refuse a state file or folder that is not the user's own, or that others may write:
    another local user could otherwise queue messages into an agent's context or change the
    command ``orch restart`` runs. Given ``os.lstat``'s answer, refuse a symbolic link too:
    orch writes only through links it made itself, and it makes none."""
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeState(f"{path} is a symbolic link: orch keeps its state in files of its "
                          "own (to keep it elsewhere, set ORCH_STATE_DIR)")  # fmt: skip
    if info.st_uid != os.geteuid():
        raise UnsafeState(f"{path} belongs to another user (uid {info.st_uid}): orch keeps "
                          "its state only in files and folders of your own")  # fmt: skip
    if info.st_mode & 0o022:
        raise UnsafeState(f"{path} is writable by others (mode {info.st_mode & 0o777:o}): "
                          "give orch a folder of its own (ORCH_STATE_DIR)")  # fmt: skip


def ensure_private_dir(path: str) -> None:
    """Create ``path``, and any missing parent, readable by its owner only (state holds
    message text); an existing one must be the user's own and writable by nobody else."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent and parent != path:
            ensure_private_dir(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        return
    check_private(path, info)


def ensure_own_dir(path: str) -> None:
    """:func:`ensure_private_dir` for a folder orch makes inside its state folder (plans,
    locks, backups, large messages): a symbolic link there is refused, not followed, since orch
    made none. The state folder itself may be a link of the user's."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        ensure_private_dir(path)
        return
    check_private(path, info)
