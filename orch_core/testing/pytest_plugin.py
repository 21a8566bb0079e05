"""pytest fixtures for orch and its plugins (registered through the ``pytest11`` entry point).

- ``orch``: an isolated :class:`~orch_core.testing.kit.OrchState` (state, config and project
  folders in ``tmp_path``) whose ``run()`` feeds a payload through the real dispatcher in
  process and ``run_hook()`` through the real ``orch-hook`` process.
- ``orch_plugin``: register a plugin object for this test only: ``orch_plugin(MyPlugin())``.
- ``hook_payload``: the payload builder, ``hook_payload("Stop", stop_hook_active=True)``.
- ``orch_module``: write a plugin module that ``orch-hook`` processes and this test's own
  process can both import: ``orch_module("my_plugin", source)``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture
def orch(tmp_path: Path) -> OrchState:
    return OrchState.create(tmp_path)


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
