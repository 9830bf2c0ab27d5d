"""The plugin's options: command line over ini file over default."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from ... import DEFAULT_IMAGE, Spec, SpecError, spec_for

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
    """The options as this run resolved them."""

    platform: str
    image: str
    count: int
    pool: int
    ttl: float
    keep: Keep
    keep_ttl: float

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        values: dict[str, Any] = {}
        for option in OPTIONS:
            dest = "commandlab_" + option.name.replace("-", "_")
            given = config.getoption(dest)
            where = f"--commandlab-{option.name}"
            if given is None:
                given = config.getini(dest) or None
                where = f"ini option {dest}"
            text = option.default if given is None else str(given).strip()
            try:
                values[option.name.replace("-", "_")] = option.parse(text)
            except ValueError as exc:
                raise pytest.UsageError(f"{where}: {exc}") from None
        return cls(**values)

    def spec(self, overrides: Mapping[str, Any]) -> Spec:
        """The spec of a sandbox: these settings, then ``overrides`` (a marker's...)."""
        fields = dict(overrides)
        platform = fields.pop("platform", self.platform)
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
            raise pytest.UsageError(f"commandlab: {exc}") from None
