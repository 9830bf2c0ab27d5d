"""Waiting until a sandbox's daemon answers an authenticated health request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .computer import Computer
from .errors import AuthenticationError, DaemonError, ProvisionError
from .platforms.driver import Driver, SandboxRef

__all__ = ["Progress", "wait_ready"]

_FIRST_DELAY = 0.002
# How often the backend is asked whether the sandbox died while the daemon is silent.
_STATE_CHECK_INTERVAL = 1.0
_PROBE_TIMEOUT = 2.0


@dataclass
class Progress:
    """The last thing known about a sandbox on its way up (named in timeout errors)."""

    state: str = "not created"


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
                await computer.health(timeout=_PROBE_TIMEOUT)
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
