"""Loading plugins and configuration: the cold path behind ``orch`` and the plan cache.

Ways in, in registration order: the built-ins (under their module names), the ``orch``
entry-point group, dotted module names from ``[plugins] load`` in the config. ``ORCH_LOAD_PLUGINS``
(a comma list; empty means none) replaces all three for one process, and ``[plugins] disable`` plus
``ORCH_DISABLE_PLUGINS`` switch any of them off by name. A plugin that fails to import, implements
a hook that does not exist, or takes arguments its hook does not offer is left out, with the error
kept for ``orch plugins`` and ``orch doctor``: it never stops the others. So is one whose import
does not finish in time (``import_timeout``): a module that hangs at import must not hang
``orch-hook``, ``orch send`` or ``orch doctor``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
import types
from typing import TYPE_CHECKING

import attrs
import pluggy

from orch_core import paths
from orch_core.errors import OrchError
from orch_core.plugins import hookspecs
from orch_core.plugins.markers import ATTRIBUTE
from orch_core.plugins.plan import (
    MAX_BUDGET_MS,
    RETRY_LATE,
    Impl,
    Plan,
    cache_key,
    imported_mtimes,
    note_import,
    watched_mtimes,
)
from orch_core.plugins.settings import Setting, resolve

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    T = TypeVar("T")

BUILTIN_PACKAGE = "orch_builtin"
ENTRY_POINT_GROUP = "orch"
#: Seconds a plugin's import may take before it is left out (the CLI's bound; the hook gives
#: the plan at most half its budget).
IMPORT_TIMEOUT = 5.0
#: What the plugins a config or ``ORCH_LOAD_PLUGINS`` names may take to import all together,
#: in ``import_timeout``s (a hook's: half the rebuild's backstop): a cloned project's
#: ``[plugins] load`` of thousands of names (a thread each) or of many slow modules would
#: otherwise keep every hook's rebuild of the plan past its backstop, the plan never cached.
IMPORTS_TOGETHER = 6
#: Installing or removing a distribution changes the mtime of these folders on ``sys.path``.
SITE_DIRS = ("site-packages", "dist-packages")


class ConfigError(OrchError):
    """A configuration file cannot be used: a one-line reason naming the file."""


@attrs.frozen
class Config:
    """The merged configuration: project over user over defaults. ``errors`` name the file and
    key of each value left out; ``origins`` tell which file set each key (for later checks)."""

    disable: tuple[str, ...] = ()
    load: tuple[str, ...] = ()
    plugin: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    orch: dict[str, Any] = attrs.field(factory=dict)
    files: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    origins: dict[tuple[str, ...], str] = attrs.field(factory=dict)
    #: What the user's own file says, table by table: a ``trusted`` setting a project's file
    #: tries to change keeps this value.
    own: dict[str, Any] = attrs.field(factory=dict)

    def where(self, *key: str) -> str:
        """The file that set ``key`` (e.g. ``"plugin", "queue", "budget"``)."""
        return self.origins.get(key, self.files[-1] if self.files else "config")


@attrs.frozen
class PluginInfo:
    """One plugin as ``orch plugins`` shows it."""

    name: str
    source: str  # "builtin", "entry point", "config", "env" or "test"
    version: str | None = None
    module: str | None = None
    attr: str | None = None
    hooks: tuple[str, ...] = ()
    file: str | None = None


@attrs.frozen
class Loaded:
    """A plugin manager with what went into it and what was left out (``late``: plugins whose
    import did not finish in time, worth another try later)."""

    pm: pluggy.PluginManager
    config: Config
    plugins: tuple[PluginInfo, ...]
    errors: tuple[str, ...]
    late: tuple[str, ...] = ()
    #: Files and folders whose change may let a plugin left out in (its own file, fixed;
    #: the folders a missing module would be put in): the plan watches them too.
    watch: tuple[str, ...] = ()


@attrs.frozen
class Settings:
    """Every setting of a plan, checked (:func:`settings_of`)."""

    core: dict[str, Any]
    per_plugin: dict[str, dict[str, Any]]
    errors: list[str]
    #: Per plugin, the keys the project's config set.
    from_project: dict[str, list[str]]
    #: Per plugin and key, what the project's config added to a list it may only extend.
    added_by_project: dict[str, dict[str, list[Any]]]
    #: Plugins whose ``orch_config_defaults`` did not answer in time (tried again later).
    late: tuple[str, ...] = ()
    #: Plugins whose ``orch_config_defaults`` raised or did not answer: the plugin's problem,
    #: not the config's, so no command refuses to run for it.
    plugin_errors: tuple[str, ...] = ()


class ImportTooSlow(Exception):
    """An import that did not finish within its time."""


def bounded(action: Callable[[], T], timeout: float) -> T:
    """``action()`` in a daemon thread; :class:`ImportTooSlow` if it is not done in
    ``timeout`` seconds (the thread is abandoned)."""
    import threading

    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, action()))
        except BaseException as exc:
            box.append((False, exc))

    worker = threading.Thread(target=run, name="orch-import", daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        raise ImportTooSlow(f"import did not finish within {timeout:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class OrchPluginManager(pluggy.PluginManager):
    """A pluggy manager that also understands orch's pluggy-free ``hookimpl`` marker."""

    def __init__(self) -> None:
        super().__init__("orch")
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        method = getattr(plugin, name, None)
        options = getattr(method, ATTRIBUTE, None) if callable(method) else None
        if isinstance(options, dict):
            probe = types.SimpleNamespace()  # pluggy's marker fills in its own full option set
            pluggy.HookimplMarker("orch")(**options)(probe)
            return getattr(probe, "orch_impl", None)
        return super().parse_hookimpl_opts(plugin, name)


def builtin_names() -> tuple[str, ...]:
    module = importlib.import_module(BUILTIN_PACKAGE)
    return tuple(module.BUILTINS)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _read_toml(path: str) -> dict[str, Any]:
    """A config file. A project's comes with a cloned repository: a link to ``/dev/zero`` or
    a FIFO in its place must neither exhaust memory nor block every hook and the supervisor,
    so only a regular file of at most :data:`~orch_core.paths.CONFIG_LIMIT` bytes is read,
    without blocking."""
    import tomllib

    try:
        data = paths.read_regular(path, paths.CONFIG_LIMIT + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if len(data) > paths.CONFIG_LIMIT:
        raise ConfigError(f"{path}: larger than {paths.CONFIG_LIMIT // 1024} KiB")
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer past Python's 4300 digits
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:  # a cloned project's file may nest arrays past the parser's depth
        raise ConfigError(f"{path}: nested too deeply to read") from None
    if _deeper_than(parsed, MAX_DEPTH):  # dotted keys nest tables without the parser's recursion
        raise ConfigError(f"{path}: nested too deeply to read")
    return parsed


#: The deepest a config file's tables and arrays may nest. The checks and the plan's JSON
#: recurse: ``a.b.c...`` thousands of keys deep made the plan's build fail, and every hook ran
#: without plugins (orch-guard's deny among them).
MAX_DEPTH = 64


def _deeper_than(data: dict[str, Any], limit: int) -> bool:
    """Whether ``data`` nests tables or arrays more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return False


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (lists included) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: The tables a config file may have, and the keys of ``[plugins]``.
SECTIONS = ("orch", "plugins", "plugin", "alerts")
PLUGIN_LISTS = ("disable", "load")
#: Plugins whose settings have a top-level table of their own name: ``[alerts]`` is
#: ``[plugin.alerts]``.
OWN_TABLES = ("alerts",)


def table_name(plugin: str) -> str:
    """The table a plugin's settings are written in, as errors name it."""
    return plugin if plugin in OWN_TABLES else f"plugin.{plugin}"


def _checked(data: dict[str, Any], path: str, errors: list[str]) -> dict[str, Any]:
    """``data`` without what cannot be read as configuration, each piece left out with an
    error naming ``path`` and the key; the values themselves are checked later, against what
    each plugin declares."""
    kept: dict[str, Any] = {}
    for section, value in data.items():
        if section not in SECTIONS:
            errors.append(f"{path}: [{section}]: no such table (one of {', '.join(SECTIONS)})")
        elif not isinstance(value, dict):
            errors.append(f"{path}: [{section}] must be a table")
        else:
            kept[section] = dict(value)
    for key, value in list(kept.get("plugins", {}).items()):
        if key not in PLUGIN_LISTS:
            errors.append(f"{path}: [plugins] {key}: no such setting (disable or load)")
            del kept["plugins"][key]
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errors.append(f"{path}: [plugins] {key} must be a list of names")
            del kept["plugins"][key]
    for name, value in list(kept.get("plugin", {}).items()):
        if not isinstance(value, dict):
            errors.append(f"{path}: [plugin] {name} must be a table ([plugin.{name}])")
            del kept["plugin"][name]
    for name in OWN_TABLES:
        if name in kept:
            plugins = kept.setdefault("plugin", {})
            plugins[name] = {**plugins.get(name, {}), **kept.pop(name)}
    tables = [("orch", kept.get("orch", {}))]
    tables += [(table_name(name), table) for name, table in kept.get("plugin", {}).items()]
    for name, table in tables:
        for key, value in list(table.items()):
            if _has_time(value):
                errors.append(f"{path}: [{name}] {key}: a date or time, which no setting takes")
                del table[key]
    return kept


def _has_time(value: Any) -> bool:
    """Whether ``value`` holds a TOML date or time: no setting takes one, and a plan holding
    one could not be saved as JSON (every hook would then run without plugins, orch-guard's
    deny included, and every command fail)."""
    import datetime

    if isinstance(value, datetime.date | datetime.time):
        return True
    if isinstance(value, dict):
        return any(_has_time(v) for v in value.values())
    return isinstance(value, list) and any(_has_time(v) for v in value)


def load_config(env: Mapping[str, str], project_dir: str) -> Config:
    """Read user then project config. A file that is not TOML is skipped, and a piece that
    is not configuration is left out, each with its error kept: the hook path degrades, it
    does not fail, and the CLI and ``orch doctor`` report the errors."""
    files = (paths.user_config_path(env), paths.project_config_path(project_dir))
    merged: dict[str, Any] = {}
    errors: list[str] = []
    origins: dict[tuple[str, ...], str] = {}
    own: dict[str, Any] = {}
    for path in files:
        try:
            data = _checked(_read_toml(path), path, errors)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if path == files[0]:
            own = data
        for section, table in data.items():
            for key, value in table.items():
                origins[(section, key)] = path
                if section == "plugin":
                    for setting in value:
                        origins[(section, key, setting)] = path
        merged = _merge(merged, data)
    section = merged.get("plugins", {})
    yours = own.get("plugins", {})
    disable = list(section.get("disable", ()))
    if origins.get(("plugins", "disable")) == files[1]:
        disable = _after(yours.get("disable", []), _kept_on(disable, own, files[1], errors))
    load = list(section.get("load", ()))
    if origins.get(("plugins", "load")) == files[1]:
        load = _after(yours.get("load", []), _loadable(load, files[1], errors))
    return Config(
        disable=tuple(disable),
        load=tuple(load),
        plugin=merged.get("plugin", {}),
        orch=merged.get("orch", {}),
        files=files,
        errors=tuple(errors),
        origins=origins,
        own=own,
    )


def _after(yours: list[str], theirs: list[str]) -> list[str]:
    """A project's ``[plugins]`` list after yours, not in its place: a cloned repository must
    neither switch a plugin you switched off back on nor leave out one your config loads."""
    return [*yours, *(name for name in theirs if name not in yours)]


def _kept_on(disable: list[str], own: dict[str, Any], path: str, errors: list[str]) -> list[str]:
    """A project's ``[plugins] disable`` without the plugins the user's own config configures
    or loads (and does not itself switch off): a cloned repository must not switch off, say,
    the user's own orch-guard rules."""
    yours = own.get("plugins", {})
    configured = (own.get("plugin", {}).keys() | set(yours.get("load", ()))) - set(
        yours.get("disable", ())
    )
    refused = [name for name in disable if name in configured]
    if refused:
        errors.append(f"{path}: [plugins] disable: {', '.join(refused)}: your own config "
                      "configures it, and only your own config may switch it off")  # fmt: skip
    return [name for name in disable if name not in refused]


def _loadable(load: list[str], path: str, errors: list[str]) -> list[str]:
    """A project's ``[plugins] load`` without the modules of Python's own library and any
    ``__main__``: a cloned repository must not have a hook import one that runs as it loads
    (``unittest.__main__`` imports the project's test files). Installed plugins it may load."""
    refused = [
        name for name in load
        if name.partition(".")[0] in sys.stdlib_module_names or "__main__" in name.split(".")
    ]  # fmt: skip
    if refused:
        errors.append(f"{path}: [plugins] load: {', '.join(refused)}: a project may load "
                      "installed plugins, not Python's own modules or a __main__")  # fmt: skip
    return [name for name in load if name not in refused]


def load(
    env: Mapping[str, str] = os.environ,
    project_dir: str | None = None,
    *,
    extra: Mapping[str, object] | None = None,
    import_timeout: float = IMPORT_TIMEOUT,
) -> Loaded:
    """Build the plugin manager for a project.

    :param extra: more plugins by name, registered last (the test kit's ``orch_plugin`` fixture).
    :param import_timeout: seconds each plugin's import may take before it is left out.
    """
    project_dir = project_dir or paths.project_dir(env)
    config = load_config(env, project_dir)
    pm = OrchPluginManager()
    infos: list[PluginInfo] = []
    errors: list[str] = []
    late: list[str] = []
    watch: list[str] = []
    disabled = set(config.disable) | set(_split(env.get("ORCH_DISABLE_PLUGINS")))
    only = _split(env.get("ORCH_LOAD_PLUGINS")) if "ORCH_LOAD_PLUGINS" in env else None

    def add(name: str, obj: object, info: PluginInfo) -> None:
        if name in disabled:
            return
        if pm.has_plugin(name):  # an entry point named `queue`: it would do nothing, unsaid
            first = next((i for i in infos if i.name == name), None)
            whose = (first.module or first.source) if first else "another plugin"
            errors.append(f"plugin {name}: {info.module or info.source} left out: {whose} "
                          "has that name already")  # fmt: skip
            return
        module = sys.modules.get(info.module or "")
        file = getattr(obj, "__file__", None) or getattr(module, "__file__", None)
        try:
            pm.register(obj, name=name)
        except Exception as exc:  # a plugin that does not fit its hooks is left out
            errors.append(f"plugin {name}: {' '.join(str(exc).split())}")  # pluggy's: 3 lines
            watch.extend([file] if file else [])  # until it is corrected
            return
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(obj) or ()))
        infos.append(attrs.evolve(info, hooks=hooks, file=file))

    imports_end = time.monotonic() + IMPORTS_TOGETHER * import_timeout
    not_tried: list[str] = []

    def add_module(name: str, dotted: str, source: str, version: str | None = None) -> None:
        if name in disabled:
            return
        fresh = dotted not in sys.modules
        try:  # orch's own plugins are small and trusted: only the others are bounded
            if source == "builtin":
                module = importlib.import_module(dotted)
            else:
                left = imports_end - time.monotonic()
                if left <= 0:
                    not_tried.append(name)
                    return
                module = bounded(lambda: importlib.import_module(dotted), min(left, import_timeout))
        except ImportTooSlow as exc:
            late.append(name)
            errors.append(f"plugin {name}: {dotted}: {exc}; left out")
            return
        except (Exception, SystemExit) as exc:  # a module that exits as it loads, too
            errors.append(f"plugin {name}: cannot import {dotted}: {_why(exc)}")
            watch.extend(_where_to_fix(dotted, exc))
            return
        if fresh:
            note_import(dotted)
        add(name, module, PluginInfo(name, source, version, module=dotted))

    builtins = builtin_names()
    entry_points = _entry_points()
    version = importlib.import_module("orch_core").__version__
    for name in builtins:
        if only is None or name in only:
            add_module(name, f"{BUILTIN_PACKAGE}.{name}", "builtin", version)
    for ep in entry_points:
        if only is None or ep.name in only:
            fresh = ep.module not in sys.modules
            try:
                obj = bounded(ep.load, import_timeout)
            except ImportTooSlow as exc:
                late.append(ep.name)
                errors.append(f"plugin {ep.name}: {ep.value}: {exc}; left out")
                continue
            except (Exception, SystemExit) as exc:
                errors.append(f"plugin {ep.name}: cannot load entry point {ep.value}: {_why(exc)}")
                watch.extend(_where_to_fix(ep.module, exc))
                continue
            if fresh:
                note_import(ep.module)
            dist = ep.dist.version if ep.dist else None
            add(ep.name, obj, PluginInfo(ep.name, "entry point", dist, ep.module, ep.attr))
    known = set(builtins) | {ep.name for ep in entry_points}
    if only is None:
        for dotted in config.load:
            add_module(dotted, dotted, "config")
    else:
        for dotted in only:
            if dotted not in known:
                add_module(dotted, dotted, "env")
    if not_tried:  # one error: thousands of lines would cost the rebuild as much again
        late += not_tried
        more = f" and {len(not_tried) - 3} more" if len(not_tried) > 3 else ""
        within = IMPORTS_TOGETHER * import_timeout
        errors.append(f"plugins {', '.join(not_tried[:3])}{more}: not imported, those before "
                      f"took the {within:g} s all may; left out")  # fmt: skip
    for name, obj in (extra or {}).items():
        module = obj.__name__ if isinstance(obj, types.ModuleType) else None
        add(name, obj, PluginInfo(name, "test", module=module))

    watch += [info.file for info in _drop_unknown_hooks(pm, infos, errors) if info.file]
    named = known | set(config.load) | {info.name for info in infos}
    for name in sorted((config.plugin.keys() | set(config.disable)) - named):
        where = config.where("plugin", name) if name in config.plugin else config.where(
            "plugins", "disable")  # fmt: skip
        errors.append(f"{where}: no plugin named {name!r} (`orch plugins --all` lists them)")
    return Loaded(pm, config, tuple(infos), tuple(errors), tuple(late), tuple(watch))


def _why(exc: BaseException) -> str:
    return f"it exits as it loads ({exc.code!r})" if isinstance(exc, SystemExit) else str(exc)


def _where_to_fix(dotted: str, exc: BaseException) -> list[str]:
    """What a plan that left out module ``dotted`` (which raised ``exc``) must watch to try it
    again once it is fixed: the files its import ran and the one it could not parse, and, for
    a module not found, the folders it would be put in (whose mtimes Python's own import
    cache goes by). Else the plan, cached, would leave it out until some other change."""
    import traceback

    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename:
        files.append(exc.filename)
    watch = [file for file in files if file != __file__ and os.path.isfile(file)]
    if isinstance(exc, ImportError):
        parent = sys.modules.get(dotted.rpartition(".")[0])
        watch += [folder for folder in sys.path if folder]
        watch += list(getattr(parent, "__path__", ()))
    return list(dict.fromkeys(watch))


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _drop_unknown_hooks(
    pm: pluggy.PluginManager, infos: list[PluginInfo], errors: list[str]
) -> list[PluginInfo]:
    """Unregister a plugin that implements a hook orch does not have (a typo, most often);
    the plugins dropped."""
    dropped: list[PluginInfo] = []
    for hook_name, caller in list(vars(pm.hook).items()):
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or not pm.has_plugin(impl.plugin_name):
                continue
            errors.append(f"plugin {impl.plugin_name}: unknown hook {hook_name}")
            pm.unregister(name=impl.plugin_name)
            dropped += [i for i in infos if i.name == impl.plugin_name]
            infos[:] = [i for i in infos if i.name != impl.plugin_name]
    return dropped


def _budgets(value: dict[str, Any]) -> None:
    from orch_core.hook.events import EVENTS

    for event, ms in value.items():
        if event not in EVENTS:
            raise ValueError(f"{event!r} is not a Claude Code event")
        Setting(1.0, min=1, max=MAX_BUDGET_MS).validate(ms)


def _database(value: str) -> None:
    if value and not paths.is_url(value):
        raise ValueError("must be a postgresql:// URL (or empty: the SQLite file)")


#: orch's own settings, ``[orch]``.
CORE_SETTINGS: dict[str, Any] = {
    # all plugins of one event together; your own config only: a cloned repository's 1 ms
    # would skip orch-guard's deny. Past MAX_BUDGET_MS, anyone's would outlast Claude's 5 s
    # hook timeout (the guard's answer never arrives, and Claude runs the command)
    "budget_ms": Setting(500.0, min=1, max=MAX_BUDGET_MS, trusted=True),
    "budget_ms_per_event": Setting({}, check=_budgets, trusted=True),  # { SessionEnd = 1000 }
    "backup_every": Setting(900.0, min=0, trusted=True),  # seconds between backups; 0: none
    "backup_keep": Setting(8, min=1, trusted=True),
    # seconds without a heartbeat from a host's supervisor before its agents are unreachable
    "host_timeout": Setting(30.0, min=10),  # past two heartbeats (every 5 s)
    # read by open_store itself, from the user's config only: a cloned repository must not
    # send an agent's messages to a server of its choosing
    "database": Setting("", check=_database, trusted=True),
}


#: Seconds the checks of a project's values may take, all of them in one build of the plan.
#: Compiling a regular expression has no time limit (``(?i)[\x00-\uffff]`` takes some 60 ms):
#: a cloned project's orch-guard rules by the hundred kept each hook's build past its backstop,
#: so no plan was cached and every hook was ended unanswered, the guard's deny with it. A check
#: past it is left running in its thread; the value is refused. A second: well within a
#: rebuild's :data:`~orch_core.plugins.plan.REBUILD_SECONDS`, and a hundred times what a
#: project's usual rules take, so that a loaded machine does not refuse them.
PROJECT_CHECKS = 1.0


def _within(until: float) -> Callable[[Callable[[], None]], None]:
    """Run a check of a project's value by ``until`` (``time.monotonic()``), or refuse it."""

    def check(action: Callable[[], None]) -> None:
        try:
            bounded(action, max(0.01, until - time.monotonic()))
        except ImportTooSlow:
            raise ValueError(f"took too long to check (a project's values get {PROJECT_CHECKS:g} "
                             "s, all together)") from None  # fmt: skip

    return check


def settings_of(loaded: Loaded, timeout: float = IMPORT_TIMEOUT) -> Settings:
    """orch's own settings, each plugin's settings (its declared defaults, then user and
    project ``[plugin.NAME]``), the errors of the values left out, and per plugin the keys
    whose value came from the project's config (less trusted than the user's own) and what it
    added to the lists it may only extend. Each ``orch_config_defaults`` gets ``timeout``
    seconds, as each import does: one that never returns would keep the plan from being built
    (every hook stopped by the rebuild's backstop, answering nothing; every command hung)."""
    config = loaded.config
    project_file = config.files[-1] if config.files else ""
    errors = list(config.errors)
    core = resolve(
        CORE_SETTINGS,
        config.orch,
        lambda k: config.where("orch", k),
        errors,
        table="orch",
        from_project=lambda k: config.where("orch", k) == project_file,
        own=config.own.get("orch", {}),
    )
    declared: dict[str, dict[str, Any]] = {}
    late: list[str] = []
    plugin_errors: list[str] = []
    for impl in loaded.pm.hook.orch_config_defaults.get_hookimpls():
        try:
            value = bounded(impl.function, timeout)
        except ImportTooSlow:
            value = None
            late.append(impl.plugin_name)
            plugin_errors.append(f"plugin {impl.plugin_name}: orch_config_defaults did not "
                                 f"finish within {timeout:g} s; tried again later")  # fmt: skip
        except Exception as exc:
            value = None
            plugin_errors.append(f"plugin {impl.plugin_name}: orch_config_defaults failed: "
                                 f"{type(exc).__name__}: {exc}")  # fmt: skip
        if isinstance(value, dict):
            declared[impl.plugin_name] = value
        elif value is not None:  # its settings would go unchecked, without a word
            plugin_errors.append(f"plugin {impl.plugin_name}: orch_config_defaults returned "
                                 f"{type(value).__name__}, expected a dict or None")  # fmt: skip
    per_plugin: dict[str, dict[str, Any]] = {}
    from_project: dict[str, list[str]] = {}
    added_by_project: dict[str, dict[str, list[Any]]] = {}
    bound = _within(time.monotonic() + PROJECT_CHECKS)
    for info in loaded.plugins:
        name = info.name

        def where(key: str, name: str = name) -> str:
            return config.where("plugin", name, key)

        added: dict[str, list[Any]] = {}
        per_plugin[name] = resolve(
            declared.get(name, {}),
            config.plugin.get(name, {}),
            where,
            errors,
            table=table_name(name),
            from_project=lambda k, where=where: where(k) == project_file,  # type: ignore[misc]
            own=config.own.get("plugin", {}).get(name, {}),
            added=added,
            bound=bound,
        )
        keys = [k for k in per_plugin[name] if k in config.plugin.get(name, {})
                and where(k) == project_file]  # fmt: skip
        if keys:
            from_project[name] = keys
        if added:
            added_by_project[name] = added
    return Settings(
        core, per_plugin, errors, from_project, added_by_project, tuple(late), tuple(plugin_errors)
    )


#: The most problems of each kind (plugins left out, config values not used) a plan keeps and
#: logs: a cloned project's config of thousands of unknown keys would otherwise fill orch's
#: log at each rebuild and make the cached plan, which every hook reads, megabytes long.
MAX_PROBLEMS = 20


def first_problems(problems: list[str]) -> list[str]:
    """``problems``, the first :data:`MAX_PROBLEMS` of them and a line saying how many more."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more like these"]


def build_plan(
    env: Mapping[str, str] = os.environ,
    project_dir: str | None = None,
    *,
    loaded: Loaded | None = None,
    import_timeout: float = IMPORT_TIMEOUT,
) -> Plan:
    """The dispatch plan for a project, with the fingerprint that tells when it goes stale (a
    plugin left out for a slow import is tried again after :data:`RETRY_LATE` seconds)."""
    project_dir = project_dir or paths.project_dir(env)
    loaded = loaded or load(env, project_dir, import_timeout=import_timeout)
    settings = settings_of(loaded, import_timeout)
    where = {info.name: info for info in loaded.plugins}
    hooks: dict[str, list[Impl]] = {}
    for name, caller in vars(loaded.pm.hook).items():
        if not caller.has_spec() or not name.startswith("orch_"):
            continue
        impls = []
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            info = where.get(impl.plugin_name)
            impls.append(
                Impl(
                    impl.plugin_name,
                    info.module if info else None,
                    info.attr if info else None,
                    impl.function.__name__,
                    tuple(impl.argnames),
                    impl.function,
                )
            )
        if impls:
            hooks[name] = impls
    watched = [*loaded.config.files, hookspecs.__file__]
    watched += [p for p in sys.path if os.path.basename(p) in SITE_DIRS and os.path.isdir(p)]
    watched += [info.file for info in loaded.plugins if info.file]
    watched += loaded.watch
    fingerprint: dict[str, Any] = {
        "key": cache_key(env, project_dir),
        "mtimes": watched_mtimes(watched),
    }
    changed = [file for file, mtime in imported_mtimes.items()
               if fingerprint["mtimes"].get(file, mtime) != mtime]  # fmt: skip
    if changed:  # this process's modules are not the files': the plan is its own
        fingerprint["changed_since_import"] = changed
    errors = [*loaded.errors, *settings.plugin_errors]
    late = [*loaded.late, *settings.late]
    schemas = schema_versions(hooks.get("orch_schema", []), errors, import_timeout, late)
    if late:
        fingerprint["retry_at"] = time.time() + RETRY_LATE
    errors, config_errors = first_problems(errors), first_problems(settings.errors)
    from orch_core import log

    for error in (*errors, *config_errors):
        log.write("warning", error, env)  # once: the plan is cached
    return Plan(
        hooks,
        settings.per_plugin,
        settings.core,
        fingerprint,
        errors,
        config_errors,
        settings.from_project,
        schemas,
        settings.added_by_project,
    )


def schema_versions(
    impls: list[Impl],
    errors: list[str],
    timeout: float = IMPORT_TIMEOUT,
    late: list[str] | None = None,
) -> dict[str, int]:
    """The version each plugin's ``orch_schema`` reaches: the highest of its steps, which
    must be numbered 1, 2, … with SQL for each. Each gets ``timeout`` seconds (one that does
    not answer goes to ``late``)."""
    versions = {}
    for impl in impls:
        try:
            steps = bounded(functools.partial(impl.function, dialect="sqlite"), timeout) or {}
            if sorted(steps) != list(range(1, len(steps) + 1)) or not all(
                isinstance(sql, str) for sql in steps.values()
            ):
                raise ValueError("give SQL for steps numbered 1, 2, …")
        except ImportTooSlow:
            if late is not None:
                late.append(impl.plugin)
            errors.append(f"plugin {impl.plugin}: orch_schema did not finish within "
                          f"{timeout:g} s; tried again later")  # fmt: skip
            continue
        except Exception as exc:
            errors.append(f"plugin {impl.plugin}: orch_schema: {exc}")
            continue
        if steps:
            versions[impl.plugin] = len(steps)
    return versions
