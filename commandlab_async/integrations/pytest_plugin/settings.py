"""The plugin's options: command line over spec file over ini file over default."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ... import DEFAULT_IMAGE, Spec, SpecError, spec_for
from .spec_file import SCOPE_FIELDS, build_options, read_spec_file, usage_error

__all__ = ["OPTIONS", "Keep", "Settings", "add_options"]


class Keep(enum.StrEnum):
    """Which sandboxes outlive their test."""

    NEVER = "never"
    FAILED = "failed"
    """Those of a test that failed (in setup, call or teardown)."""
    ALWAYS = "always"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, got {text}")
    return value


@dataclass(frozen=True)
class _Option:
    name: str
    help: str
    default: str
    parse: Callable[[str], Any]
    choices: tuple[str, ...] | None = None


OPTIONS = (
    _Option(
        "platform", "platform of the sandboxes (docker, aws-ecs, kubernetes...)", "docker", str
    ),
    _Option("image", "image of the sandboxes", DEFAULT_IMAGE, str),
    _Option("count", "sandboxes in the commandlab_fleet fixture", "2", _positive_int),
    _Option(
        "pool",
        "sandboxes kept ready (a warm pool per worker) for fixtures of the run's own spec;"
        " on clouds they bill while idle",
        "0",
        _count,
    ),
    _Option("ttl", "seconds until a sandbox deletes itself, whatever happens", "3600", _seconds),
    _Option(
        "keep",
        "leave sandboxes running after their test: never, failed (a failed test's), always",
        "never",
        Keep,
        tuple(Keep),
    ),
    _Option(
        "keep-ttl",
        "TTL of every sandbox when --commandlab-keep is not never (a TTL is fixed when a"
        " sandbox is made, so it cannot grow once one is kept)",
        "14400",
        _seconds,
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("commandlab", "sandboxes (commandlab-async)")
    group.addoption(
        "--commandlab-spec",
        dest="commandlab_spec",
        default=None,
        metavar="PATH",
        help="TOML or JSON file of the sandboxes' spec: platform, scope, image, options..."
        " (the other --commandlab-* options override it; ini: commandlab_spec, relative to"
        " the ini file; an empty value: none)",
    )
    parser.addini(
        "commandlab_spec", "TOML or JSON file of the sandboxes' spec, relative to this file"
    )
    for option in OPTIONS:
        dest = "commandlab_" + option.name.replace("-", "_")
        group.addoption(
            f"--commandlab-{option.name}",
            dest=dest,
            default=None,
            choices=option.choices,
            help=f"{option.help} (ini: {dest}; default: {option.default})",
        )
        parser.addini(dest, f"{option.help} (default: {option.default})", default=None)


@dataclass(frozen=True)
class Settings:
    """The options as this run resolved them: command line over spec file over ini file
    over default."""

    platform: str
    image: str
    count: int
    pool: int
    ttl: float | None
    keep: Keep
    keep_ttl: float
    spec_file: Path | None = None
    file_fields: Mapping[str, Any] = field(default_factory=dict)
    """The spec file's other fields (its options already made)."""
    file_platform: str | None = None
    """The platform the file's options and scope belong to."""
    file_keys: frozenset[str] = frozenset()
    """The fields whose values come from the file (for error messages)."""

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        values: dict[str, Any] = {}
        on_command_line: set[str] = set()
        for option in OPTIONS:
            key = option.name.replace("-", "_")
            dest = "commandlab_" + key
            given = config.getoption(dest)
            where = f"--commandlab-{option.name}"
            if given is None:
                given = config.getini(dest) or None
                where = f"ini option {dest}"
            else:
                on_command_line.add(key)
            text = option.default if given is None else str(given).strip()
            try:
                values[key] = option.parse(text)
            except ValueError as exc:
                raise pytest.UsageError(f"{where}: {exc}") from None
        path = _spec_path(config)
        if path is None:
            return cls(**values)
        fields = read_spec_file(path)
        file_keys = frozenset(fields) - on_command_line
        file_platform = fields.pop("platform", None) or values["platform"]
        if "platform" not in on_command_line:
            values["platform"] = file_platform
        for key in ("image", "ttl"):  # a JSON null ttl is "never"
            if key in fields:
                value = fields.pop(key)
                if key not in on_command_line:
                    values[key] = value
        if values["platform"] != file_platform:
            fields = _without_placement(fields)
        else:  # the file's platform: its options are the file's to give (or to miss)
            fields["options"] = build_options(path, file_platform, fields.get("options", {}))
        return cls(
            **values,
            spec_file=path,
            file_fields=fields,
            file_platform=file_platform,
            file_keys=file_keys,
        )

    def spec(self, overrides: Mapping[str, Any]) -> Spec:
        """The spec of a sandbox: these settings, then ``overrides`` (a marker's...)."""
        platform = overrides.get("platform", self.platform)
        base = dict(self.file_fields)
        if platform != self.file_platform:  # the file's options and scope are not its
            base = _without_placement(base)
        fields = {**base, **overrides}
        fields.pop("platform", None)
        fields.setdefault("image", self.image)
        ttl = fields.get("ttl", self.ttl)
        if self.keep is not Keep.NEVER:
            ttl = None if ttl is None else max(ttl, self.keep_ttl)
        fields["ttl"] = ttl
        fields.setdefault("name_prefix", "pytest")
        return spec_for(platform, **fields)

    def check(self) -> None:
        """Raise a usage error now for settings no spec can be made of."""
        try:
            self.spec({})
        except SpecError as exc:
            if self.spec_file is not None and exc.field in self.file_keys:
                raise usage_error(self.spec_file, str(exc)) from None
            hint = ""
            if self.spec_file is not None:
                hint = f" (with spec file {self.spec_file})"
            elif self.platform != "docker":
                hint = " (a spec file gives a platform's options and scope: --commandlab-spec)"
            raise pytest.UsageError(f"commandlab: {exc}{hint}") from None


def _spec_path(config: pytest.Config) -> Path | None:
    """The spec file: the command line's (relative to the working directory), else the
    ini file's (relative to that file); None when neither names one (or one is empty)."""
    given: str | None = config.getoption("commandlab_spec")
    if given is not None:
        return Path(given).absolute() if given.strip() else None
    named = str(config.getini("commandlab_spec") or "").strip()
    if not named:
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return base / named


def _without_placement(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k != "options" and k not in SCOPE_FIELDS}
