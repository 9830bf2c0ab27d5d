"""Checks shared by specs and platform options; each raises SpecError naming the field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .errors import SpecError

__all__ = ["check_bool", "check_ids", "check_int", "check_number", "check_str_map", "check_text"]


def to_number(text: str) -> float | None:
    """``text`` as a number (a label value, say), or None if it is not one."""
    try:
        return float(text)
    except ValueError:
        return None


def check_number(name: str, value: object, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise SpecError(name, f"must be between {low:g} and {high:g}, got {value!r}")


def check_int(
    name: str, value: object, *, low: int, high: int, unit: str = "", why_low: str = ""
) -> None:
    """``why_low``, if given, says why ``low`` is the least (shown when under it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be an int{unit and f' ({unit})'}")
    if value < low and why_low:
        raise SpecError(
            name, f"must be at least {low}{unit and ' ' + unit}, got {value}: {why_low}"
        )
    if not low <= value <= high:
        raise SpecError(name, f"must be between {low} and {high}{unit and ' ' + unit}, got {value}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError(name, "must be a bool")


def check_text(name: str, value: object, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise SpecError(name, "must be a non-empty string")


def check_ids(name: str, value: object) -> tuple[str, ...]:
    """A non-empty tuple (or list) of non-empty strings, returned as a tuple."""
    if isinstance(value, str) or not isinstance(value, tuple | list) or not value:
        raise SpecError(name, "must be a non-empty tuple of ids")
    for item in value:
        check_text(name, item, required=True)
    return tuple(value)


def check_str_map(name: str, value: object, key_pattern: re.Pattern[str], reserved: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(name, f"must be a mapping of str to str, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key_pattern.fullmatch(key):
            raise SpecError(name, f"invalid key {key!r}")
        if key.startswith(reserved):
            raise SpecError(name, f"key {key!r} uses the reserved prefix {reserved!r}")
        if not isinstance(item, str):
            raise SpecError(name, f"value of {key!r} must be a str, got {type(item).__name__}")
        if "\x00" in item:
            raise SpecError(name, f"value of {key!r} contains a NUL byte")
