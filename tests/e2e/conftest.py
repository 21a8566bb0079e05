"""Fixtures that run the real Claude Code binary in a private tmux server against a stand-in API.

Nothing is skipped: a missing binary or tmux makes these fixtures error, so the tests fail.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from orch_core.testing.claude import DEFAULT_ARGS, ClaudeFactory, ClaudeSession
from orch_core.testing.fleet import Host
from orch_core.testing.postgres import Cluster
from orch_core.testing.standin import StandInAPI
from orch_core.testing.tmux import TmuxServer


@pytest.fixture
def standin() -> Iterator[StandInAPI]:
    """A fresh stand-in Messages API on 127.0.0.1; script its replies before prompting."""
    with StandInAPI() as api:
        yield api


@pytest.fixture
def tmux_server() -> Iterator[TmuxServer]:
    """A private tmux server, killed (with everything in it) after the test."""
    with TmuxServer() as server:
        yield server


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder for Claude to work in; hooks go in its .claude/settings.json."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def claude(
    standin: StandInAPI, tmux_server: TmuxServer, project: Path, tmp_path: Path
) -> Iterator[ClaudeFactory]:
    """Start Claude Code sessions (in ``project`` unless told otherwise), closed after the test.

    Write the hook settings first: Claude reads them at startup. Each session's final screen,
    and the end of orch's log where the session names its state folder, are printed at
    teardown, so a failing test shows what Claude displayed and what orch's hooks met.
    """
    sessions: list[ClaudeSession] = []

    def start(
        project_dir: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = DEFAULT_ARGS,
    ) -> ClaudeSession:
        number = len(sessions)
        session = ClaudeSession(
            project_dir or project,
            standin,
            tmux_server,
            home=tmp_path / f"home-{number}",
            env=env,
            args=args,
            name=f"claude-{number}",
        )
        sessions.append(session)
        return session.start()

    yield start
    for session in sessions:
        if session.pane is not None:
            print(f"--- final screen of {session.name} ---\n{session.screen()}")
        state = session.extra_env.get("ORCH_STATE_DIR")
        log = Path(state, "orch.log") if state else None
        if log is not None and log.is_file():
            print(f"--- the end of {session.name}'s orch.log ---\n{log.read_text()[-4000:]}")
        session.close()


#: Each host's user config: PostgreSQL's hooks get more time than the default budget, as a
#: loaded machine needs (docs/benchmarks.md); a silent host is unreachable after 10 s.
FLEET_SETTINGS = "budget_ms = 3000\nhost_timeout = 10\n"
#: Each host's project: agents restart without waiting long.
RESTART_FAST = (
    "[plugin.auto_restart]\nbackoff_base = 0.5\nbackoff_cap = 1\njitter = 0\nverify_seconds = 30\n"
)


@pytest.fixture
def hosts(
    tmp_path: Path, orch_postgres: Cluster, tmux_server: TmuxServer
) -> Iterator[dict[str, Host]]:
    """Two hosts of a fleet, ``alpha`` and ``beta``, sharing a fresh database of the session's
    PostgreSQL server; supervisors and agents are each test's to start."""
    database = orch_postgres.create_database()
    found = {
        name: Host(name, tmp_path, database, tmux_server, settings=FLEET_SETTINGS,
                   project_config=RESTART_FAST)
        for name in ("alpha", "beta")
    }  # fmt: skip
    try:
        yield found
    finally:
        for host in found.values():
            host.close()
        if not orch_postgres.running:  # a test that stopped it failed before starting it again
            orch_postgres.resume()
        orch_postgres.drop_database(database)
