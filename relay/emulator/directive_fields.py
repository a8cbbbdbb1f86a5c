"""Validators for ``#emulator`` directive fields (``directive.py``).

Each takes the field's name and decoded value and returns the typed value, or
raises :class:`DirectiveError` naming the field: a typo in a test must fail loudly,
not be ignored. Kept apart so the directive module stays about what a directive
means, not how each value is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from relay.emulator.tool_calls import ToolCallSpec

__all__ = [
    "DirectiveError",
    "choice",
    "count",
    "dims",
    "flag",
    "millis",
    "phases",
    "pieces",
    "rewrite",
    "sources",
    "string",
    "tool_calls",
]

# A cap on extra_phases: enough for every phase in §7.4, few enough to read.
MAX_EXTRA_PHASES = 16
# A generated image's side (png.MAX_SIDE_PX): past any size Qwen answers (2688 px).
MAX_IMAGE_SIDE_PX = 4096


class DirectiveError(ValueError):
    """A directive line that cannot be honoured; answered 400 with its message."""


def string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DirectiveError(f"directive field {name} must be a string")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DirectiveError(f"directive field {name} must be true or false")
    return value


def count(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DirectiveError(f"directive field {name} must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise DirectiveError(f"directive field {name} must be at most {maximum}")
        return value

    return check


def millis(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DirectiveError(f"directive field {name} must be a number >= 0")
    return float(value)


def pieces(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise DirectiveError(f"directive field {name} must be a non-empty list of strings")
    return tuple(value)


def choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise DirectiveError(f"directive field {name} must be one of {allowed!r}")
        return str(value)

    return check


def rewrite(name: str, value: Any) -> str | None:
    """Accept true (= "change"), false, or the mode name."""
    if value is True:
        return "change"
    if value is False:
        return None
    return choice("change", "shrink")(name, value)


def sources(name: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    """Accept a list of ``{"title", "url"}`` objects; other keys pass through (snippet…)."""
    if not isinstance(value, list):
        raise DirectiveError(f"directive field {name} must be a list of objects")
    for item in value:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("title", "url")):
            raise DirectiveError(f"each item of directive field {name} needs string title and url")
    return tuple(MappingProxyType(dict(item)) for item in value)


def tool_calls(name: str, value: Any) -> tuple[ToolCallSpec, ...]:
    """Accept a non-empty list of ``{"name": str, "arguments": object | str}``.

    ``arguments`` may be left out (the block then has none) or be a string, which is
    written as a JSON string: how a model that stringifies its arguments answers.
    """
    if not isinstance(value, list) or not value:
        raise DirectiveError(f"directive field {name} must be a non-empty list of objects")
    calls = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise DirectiveError(f"each item of directive field {name} needs a string name")
        unknown = sorted(set(item) - {"name", "arguments"})
        if unknown:
            raise DirectiveError(f"unknown key(s) in directive field {name}: {', '.join(unknown)}")
        arguments = item.get("arguments")
        if "arguments" in item and not isinstance(arguments, (dict, str)):
            raise DirectiveError(f"arguments in directive field {name} must be an object or a string")
        calls.append(ToolCallSpec(item["name"], arguments, has_arguments="arguments" in item))
    return tuple(calls)


def dims(name: str, value: Any) -> tuple[int, int]:
    """Accept ``[height, width]``, each an integer within 1..``MAX_IMAGE_SIDE_PX`` (the PNG is real)."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE_PX for v in value)):
        raise DirectiveError(f"directive field {name} must be [height, width], each within 1..{MAX_IMAGE_SIDE_PX}")
    return value[0], value[1]


def phases(name: str, value: Any) -> tuple[str, ...]:
    """Accept a non-empty list of distinct phase names other than ``answer``.

    ``answer`` is refused: its text *is* the answer, so it cannot test a leak.
    """
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise DirectiveError(f"directive field {name} must be a non-empty list of phase names")
    if len(value) > MAX_EXTRA_PHASES or len(set(value)) != len(value):
        raise DirectiveError(f"directive field {name} must list at most {MAX_EXTRA_PHASES} distinct phases")
    if "answer" in value:
        raise DirectiveError(f"directive field {name} must not list answer")
    return tuple(value)
