"""Registering ``orch-hook`` in a project's Claude Code settings, and taking it out again.

Install merges with the hooks already there and never drops one; a second run leaves the file
byte-identical; uninstall removes exactly what install added. Install keeps, in orch's state
folder, the bytes it found (none: it created the file) and a digest of the bytes it wrote; while
the file is still as install left it, uninstall puts back what install found, byte for byte (or
removes the file install created, and the ``.claude`` folder it made, if left empty). A file
changed since keeps all but orch's handlers and the event lists that held nothing else, and is
never removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import TYPE_CHECKING

from orch_core import paths
from orch_core.errors import OrchError
from orch_core.hook.events import EVENTS

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

HOOK_SCRIPT = "orch-hook"
#: Seconds (Claude reads timeouts in seconds). The dispatcher answers within its own budget,
#: well under a second; this is only Claude's backstop.
TIMEOUT = 5
#: How long ``orch install`` waits for the store (another writer, a database server).
PREPARE_SECONDS = 5.0
#: Events whose mere registration changes Claude's behaviour (reference §5): a WorktreeCreate
#: hook replaces git's worktree creation, and MessageDisplay holds the screen until hooks exit.
SKIPPED_EVENTS = ("WorktreeCreate", "MessageDisplay")
INSTALLED_EVENTS = tuple(name for name in EVENTS if name not in SKIPPED_EVENTS)


class InstallError(OrchError):
    """One-line reason why settings cannot be changed."""


def hook_command() -> str:
    """Absolute path of this orch's ``orch-hook``: no PATH lookup, no shim. Beside the
    interpreter in a virtual environment; else where the installer recorded putting it, since
    ``pip install --user`` puts scripts in ~/.local/bin and a system pip in /usr/local/bin,
    neither beside /usr/bin/python3."""
    path = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), HOOK_SCRIPT)
    if not os.access(path, os.X_OK):
        path = _installed_script() or path
    if not os.access(path, os.X_OK):
        raise InstallError(f"{path} is missing or not executable; reinstall orch")
    return path


def _installed_script() -> str | None:
    """The ``orch-hook`` the installed ``orch`` distribution lists among its files."""
    from importlib import metadata

    try:
        files = metadata.distribution("orch").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == HOOK_SCRIPT:
            return os.path.normpath(os.path.abspath(str(file.locate())))
    return None


def settings_path(project_dir: str, local: bool = False) -> str:
    name = "settings.local.json" if local else "settings.json"
    return os.path.join(project_dir, ".claude", name)


def _own(project_dir: str, path: str) -> str:
    """``path``, refusing a project that does not exist (a mistyped one must not be created),
    and a ``.claude`` folder or settings file that is a symbolic link: orch writes through no
    link it did not make, and a cloned repository must not be able to make ``orch install``
    write the user's own settings, or anything else."""
    if not os.path.isdir(project_dir):
        raise InstallError(f"no such directory: {project_dir}")
    for link in (os.path.dirname(path), path):
        if os.path.islink(link):
            kind = "file" if link == path else "folder"
            raise InstallError(
                f"{link} is a symbolic link, which orch does not write through: replace it "
                f"with a {kind} of its own"
            )
    return path


def is_ours(handler: object) -> bool:
    return (
        isinstance(handler, dict)
        and handler.get("type") == "command"
        and isinstance(handler.get("command"), str)
        and os.path.basename(handler["command"]) == HOOK_SCRIPT
    )


def handler(command: str) -> dict[str, Any]:
    """Exec form (``args``): Claude spawns the path itself, no ``sh -c``, so a path with spaces
    or quotes is never parsed by a shell."""
    return {"type": "command", "command": command, "args": [], "timeout": TIMEOUT}


def template(command: str = "${ORCH_HOOK}") -> dict[str, Any]:
    """The hooks block ``orch install`` writes (``hooks/settings.template.json``)."""
    return {"hooks": {name: [{"hooks": [handler(command)]}] for name in INSTALLED_EVENTS}}


#: The largest settings file read (one cut short is no JSON, and refused as such).
SETTINGS_LIMIT = 16 * 1024 * 1024


def _raw(path: str) -> bytes | None:
    """The settings file's bytes, ``None`` without one; only a regular file is read (a FIFO a
    project put there would block)."""
    try:
        return paths.read_regular(path, SETTINGS_LIMIT)
    except FileNotFoundError:
        return None
    except paths.NotRegularFile:
        raise InstallError(f"{path} is not a regular file") from None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from None


def _read(path: str) -> tuple[dict[str, Any], str | None]:
    """The settings at ``path`` (:func:`_raw`), their JSON of the shape Claude Code reads."""
    raw = _raw(path)
    if raw is None:
        return {}, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(f"{path} is not UTF-8 text") from None
    try:
        data = (
            json.loads(text, parse_constant=_no_number, parse_float=_finite) if text.strip() else {}
        )
    except ValueError as exc:
        raise InstallError(f"{path} is not valid JSON: {exc}") from None
    wrong = _misshapen(data)
    if wrong:
        raise InstallError(f"{path}: {wrong}")
    return data, text


def _no_number(word: str) -> None:
    """``NaN`` and ``Infinity``, which Python reads but install could not write back as JSON."""
    raise ValueError(f"{word} is not a JSON number")


def _finite(text: str) -> float:
    """A number of the file, unless it is too large to be one (``1e999``: infinity)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        _no_number(text)
    return value


def _misshapen(data: object) -> str | None:
    """What in ``data`` is not the shape Claude Code's settings give hooks, else ``None``: an
    object, whose ``hooks`` maps each event to a list of groups, a group being an object with
    an optional string ``matcher`` and a list ``hooks`` of handlers, each an object with a
    string ``type`` (a ``command`` one with a string ``command``). Install and uninstall only
    change a file they can read whole, so nothing they write is half a change."""
    if not isinstance(data, dict):
        return "the settings must be an object"
    hooks = data.get("hooks", {})
    if not isinstance(hooks, dict):
        return "hooks must be an object"
    for name, groups in hooks.items():
        if not isinstance(groups, list):
            return f"hooks.{name} must be a list"
        for i, group in enumerate(groups):
            where = f"hooks.{name}[{i}]"
            if not isinstance(group, dict):
                return f"{where} must be an object"
            if not isinstance(group.get("matcher", ""), str):
                return f"{where}.matcher must be a string"
            if not isinstance(group.get("hooks"), list):
                return f"{where}.hooks must be a list"
            for j, handler in enumerate(group["hooks"]):
                if not isinstance(handler, dict) or not isinstance(handler.get("type"), str):
                    return f"{where}.hooks[{j}] must be an object with a string 'type'"
                if handler["type"] == "command" and not isinstance(handler.get("command"), str):
                    return f"{where}.hooks[{j}].command must be a string"
    return None


def _style(data: dict[str, Any], text: str | None) -> tuple[int | str, str]:
    """The indent and final newline the file was written with, so rewriting keeps them."""
    if text is not None:
        for indent in (2, 4, "\t"):
            dumped = json.dumps(data, indent=indent, ensure_ascii=False)
            for end in ("\n", ""):
                if text == dumped + end:
                    return indent, end
    return 2, "\n"


def _dumps(data: dict[str, Any], style: tuple[int | str, str]) -> bytes:
    indent, end = style
    return (json.dumps(data, indent=indent, ensure_ascii=False) + end).encode()


def _write(path: str, content: bytes, *, private: bool = False) -> None:
    """Write a new file beside ``path`` (a name of its own, created exclusively, so never
    through a link) and move it into place in one step: with the mode the file had (a new one
    as the umask says), or owner-only when ``private`` (orch's own state)."""
    import tempfile

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    try:
        mode = 0o600 if private else os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".settings.", suffix=".orch-tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _record_path(env: Mapping[str, str], path: str) -> str:
    """Where install keeps what it found at ``path``: in orch's state folder, never in the
    project (a file there would show in its ``git status``)."""
    name = _digest(os.path.realpath(path).encode()) + ".json"
    return os.path.join(paths.state_dir(env), "installs", name)


def _recorded(env: Mapping[str, str], path: str, raw: bytes | None) -> dict[str, Any] | None:
    """What install found at ``path`` (``{"before": text or None, "folder": whether it made
    the .claude folder}``) if the file is still as install left it (``raw``), else ``None``."""
    try:
        record = json.loads(
            paths.read_regular(_record_path(env, path), 4 * SETTINGS_LIMIT, follow=False)
        )
    except (OSError, ValueError):
        return None
    if raw is None or not isinstance(record, dict) or record.get("after") != _digest(raw):
        return None
    before = record.get("before")
    if before is not None and not isinstance(before, str):
        return None
    return {"before": before, "folder": before is None and record.get("folder") is True}


def _record(env: Mapping[str, str], path: str, found: dict[str, Any], after: bytes) -> None:
    """Keep what install found at ``path`` (:func:`_recorded`) beside a digest of what it
    wrote."""
    record = _record_path(env, path)
    paths.ensure_private_dir(paths.state_dir(env))
    paths.ensure_own_dir(os.path.dirname(record))
    kept = {"settings": path, **found, "after": _digest(after)}
    _write(record, json.dumps(kept).encode(), private=True)


def _forget(env: Mapping[str, str], path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(_record_path(env, path))


def _has_ours(data: dict[str, Any]) -> bool:
    return any(
        is_ours(h) for groups in data.get("hooks", {}).values() for g in groups for h in g["hooks"]
    )


def install(
    project_dir: str,
    *,
    local: bool = False,
    command: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> list[str]:
    """Register ``orch-hook`` for every event; return the events changed (empty: nothing to do)."""
    command = command or hook_command()
    path = _own(project_dir, settings_path(project_dir, local))
    data, text = _read(path)
    raw = None if text is None else text.encode()
    earlier = _recorded(env, path, raw)  # a second install: the first one's find stays
    made = not os.path.isdir(os.path.dirname(path))
    found = earlier or (None if _has_ours(data) else {"before": text, "folder": made})
    style = _style(data, text)
    hooks = data.setdefault("hooks", {})
    changed = []
    for name in INSTALLED_EVENTS:
        groups = hooks.setdefault(name, [])
        ours = [h for g in groups for h in g["hooks"] if is_ours(h)]
        if not ours:
            groups.append({"hooks": [handler(command)]})
            changed.append(name)
        wanted = handler(command)
        for h in ours:
            if any(h.get(key) != value for key, value in wanted.items()):
                h.update(wanted)
                changed.append(name)
    if changed:
        content = _dumps(data, style)
        if found is None:  # an older orch's handlers: what was there before them is unknown
            _forget(env, path)
        else:
            _record(env, path, found, content)
        _write(path, content)
    return changed


def prepare(project_dir: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Build the project's plugin plan and bring the store's tables, orch's and its plugins',
    to their versions: the first hooks of agents started next would otherwise each do it
    within their own budget (half a second), the store one writer at a time, and a hook left
    without time goes on without the store (an agent's start unrecorded). Why they could not
    be prepared (the first hooks then try again), or ``None``."""
    from orch_core.plugins import plan as plans
    from orch_core.storage import open_store

    try:
        plan = plans.load(env, project_dir)
        store = open_store(env, timeout=PREPARE_SECONDS)
        try:
            plan.ensure_tables(store, timeout=PREPARE_SECONDS)
        finally:
            store.close()
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


@contextlib.contextmanager
def installed(project_dir: str, env: Mapping[str, str] = os.environ) -> Iterator[list[str]]:
    """:func:`install` for a step that may yet fail (``orch spawn`` starting its agent): when
    it does, the settings go back as they were, byte for byte (the file and the ``.claude``
    folder removed when install created them), so a failed spawn leaves the project as it
    found it. Yields the events changed. The hooks go where ``orch install`` put them: in
    settings.local.json after ``orch install --local``, never then also in the shared file."""
    local = _has_ours(_read(settings_path(project_dir, local=True))[0])
    path = _own(project_dir, settings_path(project_dir, local))
    folder = os.path.dirname(path)
    had_folder = os.path.isdir(folder)
    before = _raw(path)
    record = _record_path(env, path)
    try:
        kept = paths.read_regular(record, 4 * SETTINGS_LIMIT, follow=False)
    except OSError:
        kept = None
    changed = install(project_dir, local=local, env=env)
    try:
        yield changed
    except BaseException:
        if changed and kept is not None:
            _write(record, kept, private=True)
        elif changed:
            _forget(env, path)
        if changed and before is not None:
            _write(path, before)
        elif changed:
            os.remove(path)
            if not had_folder:
                with contextlib.suppress(OSError):  # something else was put there meanwhile
                    os.rmdir(folder)
        raise


def uninstall(
    project_dir: str, *, local: bool = False, env: Mapping[str, str] = os.environ
) -> list[str]:
    """Remove every ``orch-hook`` handler install added; return the events changed. The file
    install found comes back as it was while it is as install left it; otherwise an event
    list (or ``hooks``) goes only when orch's handlers were all it held."""
    path = _own(project_dir, settings_path(project_dir, local))
    data, text = _read(path)
    if text is None:
        return []
    found = _recorded(env, path, text.encode())
    style = _style(data, text)
    hooks = data.get("hooks", {})
    changed = []
    for name, groups in list(hooks.items()):
        kept_groups = []
        for group in groups:
            inner = group["hooks"]
            if any(is_ours(h) for h in inner):
                changed.append(name)
                kept = [h for h in inner if not is_ours(h)]
                if kept:
                    kept_groups.append({**group, "hooks": kept})
            else:
                kept_groups.append(group)
        if name in changed:
            if kept_groups:
                hooks[name] = kept_groups
            else:
                del hooks[name]
    if not changed:
        return []
    if not hooks:
        del data["hooks"]
    if found is None:
        _write(path, _dumps(data, style))  # "{}" at least: whose file it was is not known
    elif found["before"] is None:
        os.remove(path)  # install created it
        if found["folder"]:  # and its folder, unless something else was put there since
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))
    else:
        _write(path, found["before"].encode())
    _forget(env, path)
    return changed


def installed_events(project_dir: str) -> dict[str, list[str]]:
    """For ``orch doctor``: the orch-hook commands registered per event, in both files."""
    found: dict[str, list[str]] = {}
    for local in (False, True):
        data, _ = _read(settings_path(project_dir, local))
        for name, groups in data.get("hooks", {}).items():
            for group in groups:
                for h in group["hooks"]:
                    if is_ours(h):
                        found.setdefault(name, []).append(h["command"])
    return found


def holders(project_dir: str) -> list[bool]:
    """For ``orch doctor``: the settings files that hold orch's handlers, ``True`` for
    settings.local.json."""
    return [
        local for local in (False, True) if _has_ours(_read(settings_path(project_dir, local))[0])
    ]


def hooks_disabled(project_dir: str, env: Mapping[str, str] = os.environ) -> str | None:
    """For ``orch doctor``: the settings file whose ``"disableAllHooks": true`` stops every
    hook, orch-hook's however well registered, else ``None``. The project's local file, its
    shared one, then the user's (``$CLAUDE_CONFIG_DIR``, else ``~/.claude``): the first that
    sets it decides, so a project's ``false`` overrides the user's ``true``."""
    user = env.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    for path in (
        settings_path(project_dir, local=True),
        settings_path(project_dir),
        os.path.join(user, "settings.json"),
    ):
        try:  # the hooks of the user's own file are not orch's to check
            raw = _raw(path)
            data = json.loads(raw) if raw and raw.strip() else {}
        except (InstallError, ValueError, RecursionError):
            continue
        disabled = data.get("disableAllHooks") if isinstance(data, dict) else None
        if isinstance(disabled, bool):
            return path if disabled else None
    return None
