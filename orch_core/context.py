"""The context each plugin implementation receives beside the event."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from orch_core.store import Store


class Runtime:
    """What one ``orch-hook`` run (or one CLI command) shares with every plugin it calls."""

    def __init__(
        self,
        *,
        store: Store,
        env: Mapping[str, str],
        project_dir: str,
        agent: str | None = None,
        session_id: str | None = None,
        config: Mapping[str, dict[str, Any]] | None = None,
        fire: Any = None,
        from_project: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.store = store
        self.env = env
        self.project_dir = project_dir
        self.agent = agent
        self.session_id = session_id
        self.config = config or {}
        self.from_project = from_project or {}
        self.fire = fire
        #: When this run began: what plugins do during the run comes after it.
        self.started = time.time()
        #: When the dispatcher stops waiting for plugins (``time.time()``); ``None``: never.
        self.deadline: float | None = None

    def context(self, plugin: str) -> HookContext:
        return HookContext(self, plugin)


class HookContext:
    """Per plugin and call: who the agent is, this plugin's settings, the store, a log."""

    __slots__ = ("_runtime", "plugin")

    def __init__(self, runtime: Runtime, plugin: str) -> None:
        self._runtime = runtime
        self.plugin = plugin

    @property
    def agent(self) -> str | None:
        """The agent this hook runs for; ``None`` when orch cannot tell."""
        return self._runtime.agent

    @property
    def session_id(self) -> str | None:
        return self._runtime.session_id

    @property
    def project_dir(self) -> str:
        return self._runtime.project_dir

    @property
    def env(self) -> Mapping[str, str]:
        return self._runtime.env

    @property
    def config(self) -> dict[str, Any]:
        """This plugin's settings: its defaults under ``[plugin.NAME]`` of user and project."""
        return self._runtime.config.get(self.plugin, {})

    def from_project(self, key: str) -> bool:
        """Whether this plugin's setting ``key`` came from the project's ``.claude/orch.toml``
        (which a cloned repository writes) rather than the user's own config or the default:
        a path from there must stay inside the project."""
        return key in self._runtime.from_project.get(self.plugin, ())

    @property
    def started(self) -> float:
        """When this hook run began (``time.time()``): the line between what happened before
        the event and what other plugins are doing in answer to it."""
        return self._runtime.started

    @property
    def deadline(self) -> float | None:
        """When the dispatcher stops waiting for this plugin (``time.time()``): work that
        hands something to the model must not commit after it, or nobody would see it."""
        return self._runtime.deadline

    @property
    def store(self) -> Store:
        return self._runtime.store

    def log(self, msg: str, level: str = "info", **fields: Any) -> None:
        """One line in orch's JSON-lines log, tagged with this plugin and agent."""
        from orch_core import log

        log.write(level, msg, self._runtime.env, plugin=self.plugin, agent=self.agent, **fields)

    def fire(self, hook: str, **kwargs: Any) -> None:
        """Tell observers (e.g. ``orch_agent_state_changed``); their errors are logged only."""
        if self._runtime.fire is not None:
            self._runtime.fire(hook, kwargs)
