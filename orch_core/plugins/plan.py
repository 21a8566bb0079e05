"""The dispatch plan: which implementations run, in which order, for each hook.

Building it needs pluggy, TOML and a scan of installed distributions
(:mod:`orch_core.plugins.loader`), tens of milliseconds that ``orch-hook`` cannot spend on every
tool call. So the plan is built once, saved as JSON in the state directory, and reused until
something it was built from changes: a config file, an installed distribution (the mtime of each
``sys.path`` folder), a plugin's source file, or the ``ORCH_*_PLUGINS`` variables. Plugin
modules are imported only when their hook fires.
"""

from __future__ import annotations

import json
import os
import sys
import time

from orch_core import __version__, log, paths

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from orch_core.storage.store import Store

DEFAULT_BUDGET_MS = 500
#: The largest budget a config may give: Claude Code ends a hook after the ``timeout`` that
#: ``orch install`` writes (5 s, :data:`orch_core.cli.install.TIMEOUT`) and discards its
#: reply, orch-guard's deny included, so the budget, :data:`ANSWER_MARGIN`,
#: :data:`OBSERVERS_FLOOR` and the process's start must all fit within it.
MAX_BUDGET_MS = 4000
#: Seconds past its plugins' budget by which ``orch-hook`` has answered, whatever they do.
ANSWER_MARGIN = 0.1
#: Seconds the ``orch_hook_answered`` observers get at least, the reply already given: a
#: plugin that spent the whole budget left them none, so presence never saw a Stop (the agent
#: never idle, never woken for its messages). The process's limit moves on as much.
OBSERVERS_FLOOR = 0.05
#: Seconds a plan's rebuild may take before the backstop ends ``orch-hook`` (under Claude's
#: own 5 s limit). Rebuilds are rare (an install, a config change), but one that could not
#: finish would leave no plan cached, so every later hook would start it again.
REBUILD_SECONDS = 3.0
ENV_KEYS = ("ORCH_LOAD_PLUGINS", "ORCH_DISABLE_PLUGINS")
#: Seconds before a plan that left a plugin out for a slow import is built again.
RETRY_LATE = 60.0
#: The mtime of each plugin module's file when this process imported it. One whose file
#: changed since runs the code of before: a plan a long-lived process (``orch supervise``)
#: builds from it names that code's hooks, not the file's, and must not be saved for others.
imported_mtimes: dict[str, int] = {}


def note_import(module: str) -> None:
    """Keep the mtime of the file of ``module``, which this process just imported."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if file:
        try:
            imported_mtimes[file] = os.stat(file).st_mtime_ns
        except OSError:
            pass


class Impl:
    """One hook implementation: the plugin it belongs to and how to find its function."""

    __slots__ = ("_function", "argnames", "attr", "function_name", "module", "plugin")

    def __init__(
        self,
        plugin: str,
        module: str | None,
        attr: str | None,
        function_name: str,
        argnames: tuple[str, ...],
        function: Callable[..., Any] | None = None,
    ) -> None:
        self.plugin = plugin
        self.module = module
        self.attr = attr
        self.function_name = function_name
        self.argnames = argnames
        self._function = function

    @property
    def function(self) -> Callable[..., Any]:
        """The callable, importing the plugin's module on first use."""
        if self._function is None:
            fresh = (self.module or "") not in sys.modules
            # importlib.import_module, without importing importlib (0.4-1 ms of orch-hook)
            __import__(self.module or "")
            if fresh:
                note_import(self.module or "")
            owner: Any = sys.modules[self.module or ""]
            if self.attr:
                for part in self.attr.split("."):
                    owner = getattr(owner, part)
            self._function = getattr(owner, self.function_name)
        return self._function

    def to_json(self) -> list[Any]:
        return [self.plugin, self.module, self.attr, self.function_name, list(self.argnames)]

    @classmethod
    def from_json(cls, item: list[Any]) -> Impl:
        plugin, module, attr, function_name, argnames = item
        return cls(plugin, module, attr, function_name, tuple(argnames))


class Plan:
    """Implementations per hook in call order, each plugin's settings, core settings (all of
    them checked), and what went wrong building it: plugins left out (``errors``) and
    configured values not used (``config_errors``); per plugin, the keys a project's own
    config set (``from_project``: what a cloned repository chose) and what it added to the
    lists it may only extend (``added_by_project``), and the version of its own tables
    (``schemas``, from ``orch_schema``)."""

    __slots__ = (
        "added_by_project",
        "config",
        "config_errors",
        "errors",
        "fingerprint",
        "from_project",
        "hooks",
        "schemas",
        "settings",
    )

    def __init__(
        self,
        hooks: dict[str, list[Impl]],
        config: dict[str, dict[str, Any]],
        settings: dict[str, Any],
        fingerprint: dict[str, Any] | None = None,
        errors: list[str] | None = None,
        config_errors: list[str] | None = None,
        from_project: dict[str, list[str]] | None = None,
        schemas: dict[str, int] | None = None,
        added_by_project: dict[str, dict[str, list[Any]]] | None = None,
    ) -> None:
        self.hooks = hooks
        self.config = config
        self.settings = settings
        self.fingerprint = fingerprint
        self.errors = errors or []
        self.config_errors = config_errors or []
        self.from_project = from_project or {}
        self.schemas = schemas or {}
        self.added_by_project = added_by_project or {}

    def impls(self, hook: str) -> list[Impl]:
        return self.hooks.get(hook, [])

    def migrations(self, plugin: str, dialect: str) -> dict[int, str]:
        """The steps of ``plugin``'s own tables in ``dialect`` (its ``orch_schema``)."""
        for impl in self.impls("orch_schema"):
            if impl.plugin == plugin:
                return dict(impl.function(dialect=dialect) or {})
        return {}

    def ensure_tables(
        self, store: Store, *, timeout: float | None = None, absent_timeout: float | None = None
    ) -> None:
        """Its plugins' own tables in ``store``, brought to their ``orch_schema`` versions
        (:meth:`~orch_core.storage.store.Store.ensure_schemas`; one read when they are)."""
        if self.schemas:
            store.ensure_schemas(
                self.schemas,
                lambda plugin: self.migrations(plugin, store.dialect),
                timeout=timeout,
                absent_timeout=absent_timeout,
            )

    def budget(self, event_name: str) -> float:
        """Seconds the dispatcher gives this event's plugins together (``[orch] budget_ms``,
        checked when the plan was built)."""
        per_event = self.settings.get("budget_ms_per_event", {})
        ms = per_event.get(event_name, self.settings.get("budget_ms", DEFAULT_BUDGET_MS))
        return float(ms) / 1000.0

    @property
    def cacheable(self) -> bool:
        """Whether others may use this plan: not one built from a module whose file changed
        since this process imported it (``changed_since_import``)."""
        return (
            self.fingerprint is not None
            and not self.fingerprint.get("changed_since_import")
            and all(impl.module for impls in self.hooks.values() for impl in impls)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "config": self.config,
            "hooks": {hook: [i.to_json() for i in impls] for hook, impls in self.hooks.items()},
            "errors": self.errors,
            "config_errors": self.config_errors,
            "from_project": self.from_project,
            "schemas": self.schemas,
            "added_by_project": self.added_by_project,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        hooks = {hook: [Impl.from_json(i) for i in items] for hook, items in data["hooks"].items()}
        return cls(
            hooks,
            data["config"],
            data["settings"],
            data["fingerprint"],
            data["errors"],
            data["config_errors"],
            data["from_project"],
            data["schemas"],
            data["added_by_project"],
        )


def cache_key(env: Mapping[str, str], project_dir: str) -> dict[str, Any]:
    """What a plan is built for, beside the files it watches. The Python environment is
    ``sys.prefix``, not the interpreter's path: ``orch`` (``python``) and ``orch-hook``
    (``python3``) of one venv share a plan. The user's config is named (``XDG_CONFIG_HOME``):
    a plan built from another one, watched for changes, would still look true. So is the
    import path (``PYTHONPATH``; the first entry is the script's folder): ``orch send`` from a
    shell without the folder of a plugin the agents load would cache a plan without it, which
    the agents' hooks would then use."""
    return {
        "project_dir": project_dir,
        "config": paths.user_config_path(env),
        "env": [env.get(k) for k in ENV_KEYS],
        "version": __version__,
        "python": sys.prefix,
        "path": sys.path[1:],
    }


def watched_mtimes(files: list[str]) -> dict[str, int]:
    """mtime of each file or folder, -1 when missing: a change means the plan is stale."""
    mtimes = {}
    for path in files:
        try:
            mtimes[path] = os.stat(path).st_mtime_ns
        except OSError:
            mtimes[path] = -1
    return mtimes


def cache_path(env: Mapping[str, str], project_dir: str) -> str:
    """One file per key: two environments never take turns overwriting each other's plan."""
    key = json.dumps(cache_key(env, project_dir), sort_keys=True)
    return os.path.join(paths.state_dir(env), "plans", f"{_fnv1a(key.encode()):08x}.json")


def _fnv1a(data: bytes) -> int:
    """A short name for ``data`` (32-bit FNV-1a): 10-30 us for a plan's key, where importing
    zlib for its crc32 costs orch-hook 0.3 ms."""
    digest = 0x811C9DC5
    for byte in data:
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest


def load(
    env: Mapping[str, str],
    project_dir: str,
    *,
    import_timeout: float | None = None,
    rebuilding: Callable[[], None] | None = None,
    uncached: bool = False,
) -> Plan:
    """The cached plan if it is still true, else a fresh one (saved for the next run), whose
    plugins each get ``import_timeout`` seconds to import (default: the CLI's bound). One
    process builds it at a time: a fleet's agents starting together wait for that one (up to
    ``import_timeout``, or a quarter of :data:`REBUILD_SECONDS` if more) instead of each
    importing every plugin at once. ``rebuilding`` is told before a rebuild starts
    (``orch-hook`` then gives its backstop :data:`REBUILD_SECONDS`).
    Where the cache cannot be written (a full disk, a read-only state folder), ``OSError``,
    or with ``uncached`` a plan all the same, logged: a hook's plugins (orch-guard's deny)
    matter more than its speed, where a command says what is wrong in one line."""
    path = cache_path(env, project_dir)
    cached = _cached(env, project_dir, path)
    if cached is not None:
        return cached
    if rebuilding is not None:
        rebuilding()
    import fcntl

    from orch_core.plugins import loader

    timeout = loader.IMPORT_TIMEOUT if import_timeout is None else import_timeout
    try:
        paths.ensure_own_dir(os.path.dirname(path))
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if not uncached:
            raise
        log.write("warning", "the plugin plan cannot be cached: each run builds its own", env,
                  error=repr(exc))  # fmt: skip
        return loader.build_plan(env, project_dir, import_timeout=timeout)
    try:  # a hook's own build may take IMPORTS_TOGETHER imports: a quarter of its time is
        # left to wait for another's, a loaded machine's builder often needing more than one
        waited = time.monotonic() + max(timeout, REBUILD_SECONDS / 4)
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > waited:
                    break  # the builder is slow: build this process's own
                time.sleep(0.01)
        cached = _cached(env, project_dir, path)  # another process may have built it
        if cached is not None:
            return cached
        plan = loader.build_plan(env, project_dir, import_timeout=timeout)
        if plan.cacheable:
            try:
                save(plan, path)
            except OSError as exc:  # the next run builds it again
                if not uncached:
                    raise
                log.write("warning", "the plugin plan cannot be cached", env, error=repr(exc))
        return plan
    finally:
        os.close(lock)


#: The largest plan read back (a plan is a few kilobytes; one cut short is built again).
PLAN_LIMIT = 16 * 1024 * 1024


def _cached(env: Mapping[str, str], project_dir: str, path: str) -> Plan | None:
    """The plan saved at ``path``, if it is still true (and a file of orch's: a FIFO or a link
    put there would block or lead elsewhere)."""
    try:
        data = json.loads(paths.read_regular(path, PLAN_LIMIT, follow=False))
        fingerprint = data["fingerprint"]
        now = time.time()
        if (
            fingerprint["key"] == cache_key(env, project_dir)
            and fingerprint["mtimes"] == watched_mtimes(list(fingerprint["mtimes"]))
            # a retry more than RETRY_LATE away was set by a clock since set back: due now
            and ("retry_at" not in fingerprint or now < fingerprint["retry_at"] <= now + RETRY_LATE)
        ):
            return Plan.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def save(plan: Plan, path: str) -> None:
    """Write atomically, so a concurrent hook reads the old plan or the new one, never half."""
    paths.ensure_own_dir(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # one a crashed process left: this process's own name, to be made anew
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(plan.to_json(), f)
    os.replace(tmp, path)
    _prune(os.path.dirname(path))


#: Plans kept, the newest: one a project (and environment), and a payload names the project.
MAX_PLANS = 200


def _prune(folder: str) -> None:
    """Remove the oldest plans (and their locks) beyond :data:`MAX_PLANS`: a plan left out is
    only built again."""
    try:
        plans = [entry for entry in os.scandir(folder) if entry.name.endswith(".json")]
        if len(plans) > MAX_PLANS:
            plans.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return
    for entry in plans[: max(0, len(plans) - MAX_PLANS)]:
        for name in (entry.path, f"{entry.path}.lock"):
            try:
                os.unlink(name)
            except OSError:  # pruned by another process first
                pass
