"""The one runtime of a project, and the context each plugin implementation receives.

``orch-hook``, the Python API, the CLI and the supervisor all open a :class:`Runtime` for the
project in question: its store, its plan (which plugins, in which order, with which settings)
and ``fire``, which calls an observer hook on every plugin that implements it.
"""

from __future__ import annotations

import time

from orch_core import log
from orch_core.plugins.plan import Plan

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from orch_core.storage.store import Store


class Runtime:
    """What one ``orch-hook`` run, one command or one supervisor step shares with every
    plugin it calls, for one project."""

    def __init__(
        self,
        *,
        store: Store,
        env: Mapping[str, str],
        project_dir: str,
        plan: Plan | None = None,
        agent: str | None = None,
        session_id: str | None = None,
    ) -> None:
        self.store = store
        self.env = env
        self.project_dir = project_dir
        self.plan = plan if plan is not None else Plan({}, {}, {})
        self.agent = agent
        self.session_id = session_id
        #: The Claude Code event this run answers (``None`` outside ``orch-hook``).
        self.event_name: str | None = None
        #: When this run began: what plugins do during the run comes after it.
        self.started = time.time()
        #: When the dispatcher stops waiting for plugins (``time.time()``); ``None``: never.
        self.deadline: float | None = None
        #: Each plugin's notes for this run (:attr:`HookContext.notes`).
        self.notes: dict[str, dict[str, Any]] = {}
        #: Whether this process answers other hooks too (:attr:`HookContext.shared`).
        self.shared = False

    @classmethod
    def open(
        cls,
        env: Mapping[str, str],
        project_dir: str,
        *,
        store: Store | None = None,
        agent: str | None = None,
    ) -> Runtime:
        """The runtime of ``project_dir``, its plan loaded (cached, or built with each import
        bounded): what the API, the CLI and the supervisor use."""
        from orch_core.plugins import plan as plans

        if store is None:
            from orch_core.storage import open_store

            store = open_store(env)
        runtime = cls(
            store=store,
            env=env,
            project_dir=project_dir,
            plan=plans.load(env, project_dir),
            agent=agent,
        )
        runtime.ensure_schemas()
        return runtime

    def ensure_schemas(
        self, timeout: float | None = None, absent_timeout: float | None = None
    ) -> None:
        """The project's plugins' own tables, brought to their plan's versions (one read when
        they are), waiting at most ``timeout`` for another writer (``absent_timeout`` while a
        plugin has none yet: :meth:`~orch_core.storage.store.Store.ensure_schemas`). A failure
        is logged; the next run tries again, and the plugin concerned meanwhile fails in its
        own hooks."""
        if not self.plan.schemas:
            return
        try:
            self.plan.ensure_tables(self.store, timeout=timeout, absent_timeout=absent_timeout)
        except Exception as exc:
            log.write("error", "cannot create plugins' tables", self.env, error=repr(exc))
        finally:
            self.store.release()

    @property
    def config(self) -> Mapping[str, dict[str, Any]]:
        return self.plan.config

    def context(self, plugin: str) -> HookContext:
        return HookContext(self, plugin)

    def fire(self, hook: str, kwargs: dict[str, Any]) -> None:
        """Call observer ``hook`` on each plugin that implements it, in turn; an error is
        logged, never raised."""
        for impl in self.plan.impls(hook):
            args = {**kwargs, "ctx": self.context(impl.plugin)}
            try:
                impl.function(**{name: args[name] for name in impl.argnames if name in args})
            except Exception as exc:
                log.write("error", "observer failed", self.env, hook=hook, plugin=impl.plugin,
                          agent=self.agent, hook_event_name=self.event_name,
                          error=f"{type(exc).__name__}: {exc}")  # fmt: skip


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
        """The hook's environment: on PostgreSQL the host's supervisor may run the hook for
        the hook process (:mod:`orch_core.supervisor.warm`), and ``os.environ`` is then its."""
        return self._runtime.env

    @property
    def config(self) -> dict[str, Any]:
        """This plugin's settings: its defaults under ``[plugin.NAME]`` of user and project."""
        return self._runtime.config.get(self.plugin, {})

    def from_project(self, key: str) -> bool:
        """Whether this plugin's setting ``key`` came from the project's ``.claude/orch.toml``
        (which a cloned repository writes) rather than the user's own config or the default:
        a path from there must stay inside the project."""
        return key in self._runtime.plan.from_project.get(self.plugin, ())

    def added_by_project(self, key: str) -> list[Any]:
        """What the project's config added to this plugin's list ``key``, which a project may
        only extend (``Setting(extend_only=True)``): the items of :attr:`config`'s list that
        a cloned repository chose, after the user's own."""
        return list(self._runtime.plan.added_by_project.get(self.plugin, {}).get(key, ()))

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
    def shared(self) -> bool:
        """Whether this process answers other hooks too: the host's supervisor, on PostgreSQL
        (:mod:`orch_core.supervisor.warm`). There, code that holds the interpreter lock past the
        deadline (a regular expression that never finishes) holds up every agent's hooks; in
        ``orch-hook``'s own process the backstop ends this run alone."""
        return self._runtime.shared

    @property
    def store(self) -> Store:
        return self._runtime.store

    @property
    def notes(self) -> dict[str, Any]:
        """This plugin's notes for this run: what its event hook keeps for its own
        ``orch_hook_answered`` or ``orch_text_left_out`` (the queue: the messages it handed
        over)."""
        return self._runtime.notes.setdefault(self.plugin, {})

    def log(self, msg: str, level: str = "info", **fields: Any) -> None:
        """One line in orch's JSON-lines log, tagged with this plugin, agent and event."""
        from orch_core import log

        if self._runtime.event_name:
            fields.setdefault("hook_event_name", self._runtime.event_name)
        log.write(level, msg, self._runtime.env, plugin=self.plugin, agent=self.agent, **fields)

    def fire(self, hook: str, **kwargs: Any) -> None:
        """Tell observers (e.g. ``orch_agent_state_changed``); their errors are logged only."""
        self._runtime.fire(hook, kwargs)
