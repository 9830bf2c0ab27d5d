"""Waiting until a sandbox's daemon answers an authenticated health request."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .._client.computer import Computer
from ..errors import AuthenticationError, DaemonError, ProvisionError
from ..platforms.driver import Driver, SandboxRef

__all__ = ["DaemonStart", "Progress", "daemon_start", "wait_ready"]

_FIRST_DELAY = 0.002
# How often the backend is asked whether the sandbox died while the daemon is silent.
_STATE_CHECK_INTERVAL = 1.0
_PROBE_TIMEOUT = 2.0
# What two monotonic clocks may disagree by when comparing a daemon's start: a fixed part
# (float rounding, the daemon's own clock reading) plus a rate part (a cloud sandbox's
# clock is another host's; NTP slews a clock by at most 500 ppm).
_START_SLACK = 0.05
_CLOCK_RATE = 0.001


@dataclass(frozen=True)
class DaemonStart:
    """Which daemon process answered a health request: its pid, and when it started on
    this process's monotonic clock — between ``earliest`` and ``latest``, since the
    daemon measured its uptime somewhere within the request's round trip (``at`` is when
    the answer came)."""

    pid: int
    earliest: float
    latest: float
    at: float

    def same_process(self, later: DaemonStart) -> bool:
        """Whether ``later`` (from a later health answer) is this very daemon process: the
        same pid and a start time that fits both answers. A daemon restarted or replaced
        since (by the platform, the engine...) started later, whatever pid it got."""
        slack = _START_SLACK + _CLOCK_RATE * max(later.at - self.at, 0.0)
        return (
            later.pid == self.pid
            and later.earliest <= self.latest + slack
            and self.earliest <= later.latest + slack
        )


def daemon_start(health: Mapping[str, Any], sent: float, received: float) -> DaemonStart | None:
    """The :class:`DaemonStart` a health answer tells (``sent`` and ``received`` on
    ``time.monotonic()``); None if it reports no pid or uptime."""
    pid, uptime = health.get("pid"), health.get("uptime")
    if not isinstance(pid, int) or isinstance(pid, bool) or isinstance(uptime, bool):
        return None
    if not isinstance(uptime, (int, float)) or not math.isfinite(uptime) or uptime < 0:
        return None
    return DaemonStart(pid, sent - uptime, received - uptime, received)


@dataclass
class Progress:
    """The last thing known about a sandbox on its way up (named in timeout errors)."""

    state: str = "not created"
    daemon: DaemonStart | None = None
    """The daemon process that answered the readiness probe, once one did (if it says)."""


async def wait_ready(
    computer: Computer,
    driver: Driver[Any],
    sandbox: SandboxRef,
    progress: Progress,
    probe_slot: Callable[[], AbstractAsyncContextManager[None]],
) -> None:
    """Probe the daemon with exponential backoff until it answers; fail fast if it died.

    Probes start a few milliseconds apart and back off to ``driver.probe_interval``.
    Each probe holds a ``probe_slot`` (the backend's probe limit). The caller bounds the
    wait with its deadline.
    """
    loop = asyncio.get_running_loop()
    delay = _FIRST_DELAY
    next_state_check = loop.time() + _STATE_CHECK_INTERVAL
    backend_state = progress.state
    while True:
        try:
            async with probe_slot():
                sent = time.monotonic()
                health = await computer.health(timeout=_PROBE_TIMEOUT)
                progress.daemon = daemon_start(health, sent, time.monotonic())
            progress.state = "ready"
            return
        except AuthenticationError as exc:
            why = "the daemon refused the sandbox's token" if exc.status == 401 else str(exc)
            raise ProvisionError(
                why,
                sandbox=computer.name,
                platform=str(driver.platform),
            ) from exc
        except DaemonError as exc:
            progress.state = f"{backend_state}; daemon not answering ({_reason(exc)})"
        if loop.time() >= next_state_check:
            state = await driver.state(sandbox)
            backend_state = state.detail
            progress.state = f"{backend_state}; daemon not answering"
            if state.terminal:
                raise state.exited_error(computer.name, str(driver.platform))
            next_state_check = loop.time() + _STATE_CHECK_INTERVAL
        await asyncio.sleep(delay)
        delay = min(delay * 2, driver.probe_interval)


def _reason(exc: DaemonError) -> str:
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else str(exc)
