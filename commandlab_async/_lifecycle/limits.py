"""Concurrency limits per target (a platform and its region, cluster...), shared by every
fleet of a process.

Creates are bounded in flight and in rate (a token bucket with jitter), readiness probes
in flight, and deletes have their own bound so teardown never waits behind creates.
Background creates (warm pools' refills) take at most half the create slots and wait
while any user's create is queued, so they never starve what a user waits for.

On a cloud, a create (and on some, a delete) also takes a token from the target's
machine-wide buckets (:mod:`.machine_quota`), which every process of this user on the
machine shares: many processes together stay within the backend's documented quotas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..platforms.base import Limits
from ..platforms.driver import TokenBucket
from .machine_quota import MachineBuckets

if TYPE_CHECKING:
    from ..platforms.base import Target

__all__ = ["Limiter", "Limits", "TokenBucket", "limits_for", "set_limits"]


# Set by the user: per platform (every target of it) or per target (one region, cluster...).
_overrides: dict[str, Limits] = {}


def set_limits(where: str | Target, limits: Limits) -> None:
    """Set the limits of a platform (``"aws-ecs"``) or of one target in this process.

    They apply to fleets started later; a target's own limits win over its platform's.
    Without either, each driver's defaults apply (fitted to the backend's quotas).
    """
    if not isinstance(limits, Limits):
        raise SpecError("limits", f"must be a Limits, got {type(limits).__name__}")
    _overrides[_key(where)] = limits


def limits_for(target: Target, default: Limits) -> Limits:
    """The limits in force for ``target``: its own, its platform's, else ``default``."""
    return _overrides.get(_key(target)) or _overrides.get(str(target.platform)) or default


def _key(where: str | Target) -> str:
    return str(where) if isinstance(where, str) else f"target:{where!r}"


@dataclass
class _Gauge:
    """A semaphore that also remembers the most holders it ever had (for tests/benchmarks)."""

    size: int
    peak: int = 0
    _held: int = 0
    _sem: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.size)

    @property
    def full(self) -> bool:
        """Whether a new holder would have to wait."""
        return self._sem.locked()

    @asynccontextmanager
    async def hold(self, on_held: Callable[[], object] | None = None) -> AsyncIterator[None]:
        async with self._sem:
            if on_held is not None:
                on_held()
            self._held += 1
            self.peak = max(self.peak, self._held)
            try:
                yield
            finally:
                self._held -= 1


class Limiter:
    """The live limits of one backend on one event loop (and its share of the machine's)."""

    def __init__(self, limits: Limits, machine: MachineBuckets | None = None) -> None:
        self.limits = limits
        self.machine = machine if machine is not None else MachineBuckets()
        self.creates = _Gauge(limits.creates_in_flight)
        self.probes = _Gauge(limits.probes_in_flight)
        self.destroys = _Gauge(limits.destroys_in_flight)
        self.background = _Gauge(max(1, limits.creates_in_flight // 2))
        self._create_rate = TokenBucket(limits.creates_per_second, limits.create_burst)
        self._queued = 0  # users' creates waiting for a slot
        self._changed = asyncio.Event()  # set when a slot frees or the queue empties

    async def close(self) -> None:
        """Nothing to release; present so a Limiter can be leased like a client."""

    @asynccontextmanager
    async def create(self, *, background: bool = False) -> AsyncIterator[None]:
        """Hold a create slot, after waiting for the rate limit, then the machine's token.

        A ``background`` create also holds one of its own (half the slots), and takes a
        create slot only when one is free and no user's create is queued for it. The
        machine-wide token is taken last, once the slot is held, so that the call follows
        it at once (a token taken early and spent late would let calls bunch up).
        """
        if background:
            async with self.background.hold():
                await self._create_rate.take()
                while self._queued or self.creates.full:
                    self._changed.clear()
                    await self._changed.wait()
                try:
                    async with self.creates.hold():  # free: taken without waiting
                        await self.machine.take_create(background=True)
                        yield
                finally:
                    self._changed.set()
            return
        self._queued += 1
        waiting = True

        def got_slot() -> None:
            nonlocal waiting
            waiting = False
            self._queued -= 1
            if not self._queued:
                self._changed.set()

        try:
            await self._create_rate.take()
            async with self.creates.hold(on_held=got_slot):
                await self.machine.take_create()
                yield
        finally:
            if waiting:  # cancelled or failed while queued
                got_slot()
            self._changed.set()

    @asynccontextmanager
    async def destroy(self, *, within: float) -> AsyncIterator[None]:
        """Hold a delete slot and the machine's token for a delete.

        ``within`` is the delete's whole budget in seconds, from now. A delete waits for
        its machine-wide token at most half of what remains of it once it has a slot, and
        then goes anyway: the other half is the call's (with its retries), so no delete is
        ever held back past its budget by the quota.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with self.destroys.hold():
            await self.machine.take_delete(patience=(deadline - loop.time()) / 2)
            yield
