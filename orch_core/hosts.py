"""The machines of a fleet: which host each agent is on, names across hosts, heartbeats.

Each machine is a host, named by ``ORCH_HOST`` (else its hostname: :func:`paths.host`), and
every agent, session and launch spec records the host it runs on. On a store that only one
machine uses (SQLite) every agent is this host's, and names are what they always were. On a
store several machines share (PostgreSQL, :attr:`Store.shared`):

- **Names**: a tmux window's agent is ``host/session:window`` (two hosts may both have a
  ``proj:1``); a name someone chose (``ORCH_AGENT``, ``orch spawn NAME``) is the agent's id as
  given, one agent fleet-wide. :class:`Names` reads what a person or a program writes:
  ``host/name`` is the agent ``name`` of that host, when ``host`` is one of the fleet's (this
  one, one an agent runs on, one that ran a supervisor), even when another host has a tmux
  session called ``host/...``; any other name is bare (a tmux session may be called
  ``my/proj``): this host's, else the one agent of that name in the fleet, and names on
  several hosts are an error that lists them, each as ``host/name``. A bare name is read so
  even when it is the id of another host's agent (a window whose agent ``orch migrate``
  brought over keeps the id SQLite gave it, ``proj:1``, in its later sessions too).
- **Owners**: each host's supervisor looks after its own agents: its panes, wake-ups,
  restarts (:func:`owned`). What the store keeps for all (restart limits, history, queues) is
  shared.
- **Heartbeats**: each supervisor records its host's (:func:`beat`); the agents of a host not
  heard from for ``[orch] host_timeout`` seconds are ``unreachable`` (:func:`unreachable`),
  their messages kept for them.
"""

from __future__ import annotations

import fnmatch
import os
import time

from orch_core import paths
from orch_core.errors import OrchError

TYPE_CHECKING = False  # importing typing costs each orch send ~4 ms

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from orch_core.storage.store import Store

#: Seconds between a supervisor's heartbeats.
BEAT_EVERY = 5.0
#: Seconds without a heartbeat before a host's agents are unreachable (``[orch]
#: host_timeout``).
HOST_TIMEOUT = 30.0
#: What a host's agents show as when it is not heard from.
UNREACHABLE = "unreachable"


class AmbiguousName(OrchError, ValueError):
    """A bare name that agents of several hosts have."""


def name_of(agent: str, host: str | None) -> str:
    """``agent`` without its host: ``proj:1`` for ``a/proj:1`` of host ``a``."""
    if host and agent.startswith(host + "/"):
        return agent[len(host) + 1 :]
    return agent


def full_name(agent: str, host: str | None) -> str:
    """``host/name``, as a person may address ``agent`` of ``host`` from anywhere."""
    return f"{host}/{name_of(agent, host)}" if host else agent


class Names:
    """The agents orch knows and their hosts, read once, to turn what someone wrote into ids."""

    def __init__(self, store: Store, env: Mapping[str, str] = os.environ) -> None:
        self.shared = store.shared
        self._store = store
        self.here = paths.host(env)
        rows = store.execute(
            "SELECT a.id, coalesce(s.host, a.host) FROM agents a"
            " LEFT JOIN launch_specs s ON s.agent = a.id ORDER BY a.id"
        ).fetchall()
        self.hosts: dict[str, str | None] = dict(rows)

    def resolve(self, target: str) -> str:
        """The agent id ``target`` names (rules: the module's docstring). A name orch has not
        heard of yet is taken as it is: its messages wait for that agent's first hook."""
        if target in self.hosts and not self.shared:
            return target
        host, slash, name = target.partition("/")
        if slash and self._known_host(host):
            for agent, where in self.hosts.items():
                if where == host and name_of(agent, where) == name:
                    return agent
            return target
        # by name, not by id: an agent's id may be a bare name (the module's docstring)
        found = [a for a, where in self.hosts.items() if where and name_of(a, where) == target]
        mine = [a for a in found if self.hosts[a] == self.here]
        if target in mine:
            return target
        if mine or len(found) == 1:
            return (mine or found)[0]
        if found:
            full = ", ".join(sorted(full_name(a, self.hosts[a]) for a in found))
            raise AmbiguousName(
                f"{target!r} is on {len(found)} hosts: {full}; name one as host/name"
            )
        return target

    def host_named(self, target: str) -> str | None:
        """The host ``target`` names as ``host/name``, a host of the fleet, else ``None``."""
        host, slash, _ = target.partition("/")
        return host if slash and self._known_host(host) else None

    def _known_host(self, host: str) -> bool:
        """Whether ``host`` is a host of the fleet: this one, one an agent runs on, or one that
        ran a supervisor. Text before a ``/`` that names none is part of a bare name (tmux
        takes ``my/proj`` as a session's name)."""
        if host == self.here or host in self.hosts.values():
            return True
        if not paths.valid_host(host):
            return False
        row = self._store.execute("SELECT 1 FROM hosts WHERE host = ?", (host,)).fetchone()
        return row is not None

    def matching(self, pattern: str) -> list[str]:
        """Agents matching ``pattern`` on every host: a pattern with ``/`` is matched against
        ``host/name``, one without against the names (``proj:*``: every host's ``proj``
        windows). A pattern with ``/``, or any on a store one machine uses, may also match the
        id itself; not one without on a shared store, where the id begins with its host
        (``b*`` would take every window of host ``beta``)."""
        whole = "/" in pattern
        by_id = whole or not self.shared
        return [
            agent
            for agent, host in self.hosts.items()
            if (by_id and fnmatch.fnmatchcase(agent, pattern))
            or fnmatch.fnmatchcase(
                full_name(agent, host) if whole else name_of(agent, host), pattern
            )
        ]

    def host_of(self, agent: str) -> str | None:
        return self.hosts.get(agent)


def this_hosts(store: Store, host: str, agent: str) -> bool:
    """Whether ``agent`` is ``host``'s to look after: always on a store one machine uses;
    on a shared one when it runs there (its launch spec's host, else its hooks'), or when no
    host knows it yet."""
    if not store.shared:
        return True
    row = store.execute(
        "SELECT coalesce(s.host, a.host) FROM agents a LEFT JOIN launch_specs s"
        " ON s.agent = a.id WHERE a.id = ?",
        (agent,),
    ).fetchone()
    return row is None or row[0] == host


def owned(store: Store, host: str, agents: Iterable[tuple[str, str | None]]) -> list[str]:
    """Of ``(agent, its host)`` pairs, those ``host`` looks after: all on a store one machine
    uses; on a shared one, those that run there (one whose host is not recorded, from before
    hosts were, waits for its next hook to say)."""
    if not store.shared:
        return [agent for agent, _ in agents]
    return [agent for agent, where in agents if where == host]


def beat(store: Store, host: str, now: float | None = None) -> None:
    """This host's supervisor is alive."""
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO hosts (host, last_seen, pid) VALUES (?, ?, ?) ON CONFLICT (host)"
            " DO UPDATE SET last_seen = excluded.last_seen, pid = excluded.pid",
            (host, time.time() if now is None else now, os.getpid()),
        )


def listing(store: Store) -> list[dict[str, Any]]:
    """Every host that ran a supervisor: name, last heartbeat, pid."""
    rows = store.execute("SELECT host, last_seen, pid FROM hosts ORDER BY host").fetchall()
    return [{"host": host, "last_seen": seen, "pid": pid} for host, seen, pid in rows]


def unreachable(store: Store, now: float, timeout: float = HOST_TIMEOUT) -> set[str]:
    """Hosts whose supervisor has not been heard from for ``timeout`` seconds. A store one
    machine uses has none (its agents are this machine's, supervised or not), and a host that
    never ran a supervisor is not judged."""
    if not store.shared:
        return set()
    rows = store.execute("SELECT host FROM hosts WHERE last_seen < ?", (now - timeout,))
    return {host for (host,) in rows.fetchall()}


#: How far back :func:`on_two_hosts` looks, in seconds, and in hook runs at most.
TWICE_WITHIN = 600.0
TWICE_RUNS = 20000


def on_two_hosts(store: Store, now: float) -> dict[str, list[str]]:
    """Names that answer on several hosts at once: the hooks of two sessions of one chosen name
    (started by hand with one ``ORCH_AGENT``), on two hosts, went on during the same stretch of
    the last :data:`TWICE_WITHIN` seconds, each session taking messages meant for the other. An
    agent moved from one host to another (and back) runs one session after the other, and
    does not count. Per name, the hosts of those sessions in order of their first hook."""
    if not store.shared:
        return {}
    rows = store.execute(
        "SELECT r.agent, s.host, min(r.ts), max(r.ts) FROM hook_runs r"
        " JOIN sessions s ON s.session_id = r.session_id"
        " WHERE r.id > (SELECT coalesce(max(id), 0) FROM hook_runs) - ? AND r.ts > ?"
        " AND r.agent IS NOT NULL AND s.host IS NOT NULL"
        " GROUP BY r.agent, s.session_id, s.host",
        (TWICE_RUNS, now - TWICE_WITHIN),
    ).fetchall()
    sessions: dict[str, list[tuple[float, float, str]]] = {}
    for agent, host, first, last in rows:
        sessions.setdefault(agent, []).append((first, last, host))
    found = {}
    for agent, spans in sessions.items():
        spans.sort()  # by first hook: a later session overlaps one that had not ended
        overlapping: set[int] = set()
        for i, (_, last, host) in enumerate(spans):
            for j in range(i + 1, len(spans)):
                if spans[j][2] != host and spans[j][0] < last:
                    overlapping |= {i, j}
        if overlapping:
            found[agent] = list(dict.fromkeys(spans[i][2] for i in sorted(overlapping)))
    return found
