"""The small async protocol every backend driver implements."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ..identity import SandboxIdentity
from ..specs import Spec

__all__ = ["Driver", "SandboxRecord", "SandboxState", "daemon_env", "retry_transient"]


@dataclass(frozen=True)
class SandboxState:
    """What the backend says about one sandbox."""

    detail: str
    """Human-readable state, e.g. ``running`` or ``exited (code 2)``."""
    terminal: bool = False
    """True when the sandbox has stopped or is gone and will not become ready."""


@dataclass(frozen=True)
class SandboxRecord:
    """A sandbox found on a backend by its labels."""

    name: str
    labels: Mapping[str, str]
    state: str


class Driver(Protocol):
    """One instance serves every sandbox of a process on one backend.

    The constructor does no I/O. Every method is a coroutine; none blocks the loop.
    """

    platform: str
    probe_interval: float
    """Longest pause between two readiness probes of the daemon (seconds)."""

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        """Ask the backend to create and start the sandbox named ``identity.name``."""

    async def endpoint(self, spec: Spec, identity: SandboxIdentity) -> str:
        """Wait until the backend says the sandbox runs; return the daemon's base URL."""

    async def state(self, name: str) -> SandboxState:
        """The sandbox's current state (``terminal`` when gone or stopped)."""

    async def destroy(self, name: str) -> None:
        """Delete the sandbox. Idempotent: a sandbox that does not exist is success."""

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        """Every sandbox carrying all of ``labels``."""

    async def close(self) -> None:
        """Release the SDK client and its connections."""


def daemon_env(spec: Spec, identity: SandboxIdentity) -> dict[str, str]:
    """Environment that tells the daemon its token, port and time to live."""
    env = dict(spec.env)
    env["COMMANDLAB_TOKEN"] = identity.token
    env["COMMANDLAB_PORT"] = str(spec.daemon_port)
    if identity.expires_at is not None:
        env["COMMANDLAB_TTL"] = f"{max(identity.expires_at - time.time(), 1.0):.0f}"
    return env


T = TypeVar("T")


async def retry_transient(
    fn: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    attempts: int,
    first_wait: float,
    max_wait: float,
) -> T:
    """Await ``fn()``, retrying errors ``transient`` accepts with full-jitter backoff.

    The last error is re-raised as it is, for the driver to translate.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
