"""Settings a plugin declares, and the checks every value from a config file goes through.

A plugin's ``orch_config_defaults`` returns its settings by name, each a :class:`Setting` (or a
plain default, checked by its type alone). A value from ``~/.config/orch/config.toml`` or the
project's ``.claude/orch.toml`` that does not fit is not used: the plugin gets the default for
that key, and the error, naming file and key, goes to ``orch doctor``, to every CLI command and
(once, when the plan is built) to the log. Checked on the cold path only, when the plan is built.
"""

from __future__ import annotations

TYPE_CHECKING = False  # orch_core exports Setting, and the hook imports orch_core: no typing

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


class Setting:
    """One setting: its default, and what a value must be.

    :param default: the value when none is configured; its type is the type a value must have
        (a whole number for ``int``, any finite number for ``float``, a list of ``item`` for
        ``list``, a table for ``dict``).
    :param min: the smallest number allowed.
    :param max: the largest number allowed.
    :param item: the type of a list's items (``str`` unless said).
    :param check: anything more: raises ``ValueError`` with the reason.
    :param trusted: only the user's own config may set it, never a project's ``orch.toml``
        (a cloned repository must not choose, say, the flags orch restarts Claude with).
    :param extend_only: a list a project's config adds to, after the user's own value (or the
        default), never replaces: a cloned repository may forbid more, not less.
    :param secret: an error never quotes its value, which holds tokens (the alert URLs): the
        errors go to ``orch doctor``, every command's output and the log.
    """

    __slots__ = ("check", "default", "extend_only", "item", "max", "min", "secret", "trusted")

    def __init__(
        self,
        default: Any,
        *,
        min: float | None = None,
        max: float | None = None,
        item: type = str,
        check: Callable[[Any], None] | None = None,
        trusted: bool = False,
        extend_only: bool = False,
        secret: bool = False,
    ) -> None:
        self.default = default
        self.secret = secret
        self.extend_only = extend_only
        self.min = min
        self.max = max
        self.item = item
        self.check = check
        self.trusted = trusted

    def validate(self, value: Any) -> None:
        """Raise ``ValueError`` saying what is wrong with ``value``."""
        import math

        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
        elif kind is int or kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("must be a number")
            if kind is int and not isinstance(value, int):
                raise ValueError("must be a whole number")
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
            if self.min is not None and value < self.min:
                raise ValueError(f"must be at least {self.min:g}")
            if self.max is not None and value > self.max:
                raise ValueError(f"must be at most {self.max:g}")
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError("must be a string")
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, self.item) for v in value):
                raise ValueError(f"must be a list of {_NAMES.get(self.item, self.item.__name__)}")
        elif kind is dict and not isinstance(value, dict):
            raise ValueError("must be a table")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError:
                raise
            except Exception as exc:  # a check's own bug: this key's error, not the plan's
                raise ValueError(f"cannot be checked ({exc!r})") from None


_NAMES = {str: "strings", int: "whole numbers", bool: "true/false values"}


def defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The default of each setting: what a plugin's code reads when nothing is configured."""
    return {k: v.default if isinstance(v, Setting) else v for k, v in settings.items()}


def regexes(value: list[str]) -> None:
    """A ``check``: each string must be a valid regular expression, and hold no backspace:
    TOML reads ``"\\bcurl\\b"`` in double quotes as ``curl`` between two backspaces, a rule that
    never matches (in place of orch-guard's defaults, when it is your own list)."""
    import re

    for pattern in value:
        if "\b" in pattern:
            raise ValueError(
                f"{pattern[:60]!r} holds a backspace, which is what TOML makes of \\b in double "
                "quotes: write the rule in single quotes ('\\bcurl\\b')"
            )
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:  # nested or repeated too far
            raise ValueError(f"{pattern[:60]!r} is not a regular expression: {exc}") from None


def resolve(
    declared: Mapping[str, Any],
    given: Mapping[str, Any],
    where: Callable[[str], str],
    errors: list[str],
    *,
    table: str,
    from_project: Callable[[str], bool] = lambda key: False,
    own: Mapping[str, Any] | None = None,
    added: dict[str, list[Any]] | None = None,
    bound: Callable[[Callable[[], None]], None] | None = None,
) -> dict[str, Any]:
    """The declared defaults with each valid value of ``given`` over them; every invalid or
    unknown key is left out, with an error naming ``where(key)`` (the file) and the key. A
    ``trusted`` one set by the project (``from_project``) is refused the same way, and keeps
    the value of the user's ``own`` file, if it has one; an ``extend_only`` one set by the
    project comes after the user's own value (or the default), and what the project added
    goes to ``added``, by key. ``bound`` runs the check of a project's value (raising
    ``ValueError`` if it takes too long): compiling a cloned repository's regular expressions
    has no time limit of its own."""
    import functools
    import json

    own = own or {}
    result = defaults(declared)
    for key, value in given.items():
        setting = declared.get(key)
        if setting is None:
            if declared:  # a plugin that declares nothing takes anything
                errors.append(f"{where(key)}: [{table}] {key}: no such setting")
                continue
            result[key] = value
            continue
        if not isinstance(setting, Setting):
            setting = Setting(setting)
        if setting.trusted and from_project(key):
            kept = "your own value" if key in own else f"the default {json.dumps(setting.default)}"
            errors.append(
                f"{where(key)}: [{table}] {key}: only your own config may set this, not a "
                f"project's; {kept} is used"
            )
            if key not in own:
                continue
            value = own[key]
        try:
            if bound is not None and from_project(key):
                bound(functools.partial(setting.validate, value))
            else:
                setting.validate(value)
        except ValueError as exc:
            shown = "" if setting.secret else " = " + json.dumps(value, default=str)
            if len(shown) > 63:
                shown = shown[:60] + "..."
            # a project's bad value falls back to the user's own, never past it to the default
            # (a cloned repository must not drop the user's guard rules by breaking its own)
            ours = from_project(key) and key in own and _valid(setting, own[key])
            kept = "your own value" if ours else f"the default {json.dumps(setting.default)}"
            errors.append(f"{where(key)}: [{table}] {key}{shown}: {exc}; {kept} is used")
            if not ours:
                continue
            value = own[key]
        if isinstance(setting.default, dict):
            value = {**setting.default, **value}
        if setting.extend_only and from_project(key):
            base = own[key] if key in own and _valid(setting, own[key]) else setting.default
            extra = [item for item in value if item not in base]
            value = [*base, *extra]
            if added is not None and extra:
                added[key] = extra
        result[key] = value
    return result


def _valid(setting: Setting, value: Any) -> bool:
    try:
        setting.validate(value)
    except ValueError:
        return False
    return True
