"""pytest fixtures for orch and its plugins (registered through the ``pytest11`` entry point).

- ``orch``: an isolated :class:`~orch_core.testing.kit.OrchState` (state, config and project
  folders in ``tmp_path``) whose ``run()`` feeds a payload through the real dispatcher in
  process and ``run_hook()`` through the real ``orch-hook`` process.
- ``orch_plugin``: register a plugin object for this test only: ``orch_plugin(MyPlugin())``.
- ``hook_payload``: the payload builder, ``hook_payload("Stop", stop_hook_active=True)``.
"""

from __future__ import annotations

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
def hook_payload() -> Callable[..., dict[str, object]]:
    return payload
