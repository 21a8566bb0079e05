"""pytest fixtures for orch and its plugins (registered through the ``pytest11`` entry point).

- ``orch``: an isolated :class:`~orch_core.testing.kit.OrchState` (state, config and project
  folders in ``tmp_path``) whose ``run()`` feeds a payload through the real dispatcher in
  process and ``run_hook()`` through the real ``orch-hook`` process.
- ``orch_plugin``: register a plugin object for this test only: ``orch_plugin(MyPlugin())``.
- ``hook_payload``: the payload builder, ``hook_payload("Stop", stop_hook_active=True)``.
- ``orch_module``: write a plugin module that ``orch-hook`` processes and this test's own
  process can both import: ``orch_module("my_plugin", source)``.
- ``orch_backend``: the store ``orch`` uses, ``"sqlite"`` unless the test (or its module) is
  marked ``@pytest.mark.orch_backends("sqlite", "postgresql")``: then it runs once on each,
  PostgreSQL with a fresh database of ``orch_postgres``, the session's private server (started
  on first use; a machine without PostgreSQL fails such tests, it does not skip them).
- ``@pytest.mark.orch_roomy_hooks``: the test's ``orch`` gives hooks room on PostgreSQL
  (:meth:`~orch_core.testing.kit.OrchState.give_hooks_room`), for tests of what hooks do, not
  of their time.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from orch_core.testing.postgres import Cluster

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "orch_backends(*names): run the test's `orch` on each store named "
        f"({', '.join(BACKENDS)})",
    )  # fmt: skip
    config.addinivalue_line(
        "markers", "orch_roomy_hooks: the test's `orch` gives hooks room on PostgreSQL",
    )  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("orch_backends")
    if marker is not None and "orch_backend" in metafunc.fixturenames:
        unknown = set(marker.args) - set(BACKENDS)
        if unknown or not marker.args:
            raise pytest.UsageError(f"orch_backends: name some of {BACKENDS}, not {unknown}")
        metafunc.parametrize("orch_backend", marker.args, indirect=True)


@pytest.fixture(scope="session")
def orch_postgres() -> Iterator[Cluster]:
    """The session's private PostgreSQL server."""
    from orch_core.testing.postgres import Cluster, PostgresMissing

    try:
        cluster = Cluster.start()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def orch_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def orch(tmp_path: Path, orch_backend: str, request: pytest.FixtureRequest) -> Iterator[OrchState]:
    state = OrchState.create(tmp_path)
    if orch_backend == "postgresql":
        state.cluster = request.getfixturevalue("orch_postgres")
        state.env["ORCH_DB"] = state.new_database()
    if request.node.get_closest_marker("orch_roomy_hooks"):
        state.give_hooks_room()
    yield state
    state.close()


@pytest.fixture
def orch_plugin(orch: OrchState) -> Callable[..., None]:
    return orch.register


@pytest.fixture
def orch_module(orch: OrchState, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    def write(name: str, source: str) -> Path:
        path = orch.plugin_module(name, source)
        monkeypatch.syspath_prepend(str(path.parent))
        monkeypatch.delitem(sys.modules, name, raising=False)  # another test's module
        return path

    return write


@pytest.fixture
def hook_payload() -> Callable[..., dict[str, object]]:
    return payload
