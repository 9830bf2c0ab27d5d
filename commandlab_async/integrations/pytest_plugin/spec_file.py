"""The plugin's spec file (``--commandlab-spec``, ini ``commandlab_spec``): TOML or JSON.

Read once at pytest start; every problem is a :class:`pytest.UsageError` naming the file
and the field, before any sandbox is made.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ... import PLATFORMS, KubernetesSpec, PlatformOptions, SpecError, options_for

__all__ = ["SCOPE_FIELDS", "build_options", "read_spec_file"]

#: Spec fields that say where on a platform a sandbox goes: they, like ``options``,
#: belong to the file's platform and are dropped when another platform is chosen.
SCOPE_FIELDS = ("region", "resource_group", "project_id", "namespace", "cluster_name")
# Fields a text file cannot give: a callable, and what the plugin sets itself.
_NOT_FROM_A_FILE = {"endpoint_resolver": "is a Python callable: set it in code"}
_FIELDS = {f.name for f in dataclasses.fields(KubernetesSpec) if not f.name.startswith("_")} - set(
    _NOT_FROM_A_FILE
)


def read_spec_file(path: Path) -> dict[str, Any]:
    """The fields ``path`` gives, checked for shape (each value is checked when the spec
    is made). Raises :class:`pytest.UsageError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise usage_error(path, f"cannot read it: {reason}") from None
    data: object
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise usage_error(path, f"not valid TOML: {exc}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise usage_error(path, f"not valid JSON: {exc}") from None
    else:
        raise usage_error(path, "a spec file is a .toml or .json file")
    if not isinstance(data, dict):
        raise usage_error(path, f"must hold a table of spec fields, not {type(data).__name__}")
    for name, value in data.items():
        if name in _NOT_FROM_A_FILE:
            raise usage_error(path, f"{name}: {_NOT_FROM_A_FILE[name]}")
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise usage_error(path, f"{name}: is not a spec field (the fields: {known})")
        if name == "platform" and (not isinstance(value, str) or value not in PLATFORMS):
            raise usage_error(path, f"platform: must be one of {sorted(PLATFORMS)}, got {value!r}")
        if name == "options" and not isinstance(value, dict):
            raise usage_error(path, "options: must be a table of the platform's options")
    return data


def build_options(path: Path, platform: str, options: Mapping[str, Any]) -> PlatformOptions:
    """``platform``'s options from the file's ``options`` table (errors name the field as
    ``options.<name>``)."""
    try:
        return options_for(platform, options)
    except SpecError as exc:
        field = exc.field if exc.field.startswith("options.") else f"options.{exc.field}"
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise usage_error(path, f"{field}: {message}") from None


def usage_error(path: Path, message: str) -> pytest.UsageError:
    return pytest.UsageError(f"commandlab spec file {path}: {message}")
