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
import math
from collections.abc import AsyncIterator, Awaitable, Callable
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


# What waiting for a delete slot may take beyond the budgets of the waves ahead of it: the
# loop's own delays in handing the slot on.
_SLACK = 0.25

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
    _waiting: int = 0
    _sem: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.size)

    @property
    def full(self) -> bool:
        """Whether a new holder would have to wait."""
        return self._sem.locked()

    @property
    def holders(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def hold(self, on_held: Callable[[], object] | None = None) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        try:
            if on_held is not None:
                on_held()
            self._held += 1
            self.peak = max(self.peak, self._held)
            try:
                yield
            finally:
                self._held -= 1
        finally:
            self._sem.release()


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
        # When a delete was last answered; and, once one timed out with no answer since
        # it was sent, when it was sent and when it timed out: see delete().
        self._last_answer = -math.inf
        self._silent: tuple[float, float] | None = None

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

    async def delete(self, call: Callable[[], Awaitable[None]], *, budget: float) -> None:
        """Run a delete ``call`` within the limits: a delete slot, then the machine's token.

        ``budget`` (seconds) starts once the slot is held, not while the delete queues
        behind others: a large fleet's last deletes are sent like its first. Queueing is
        bounded too, by a budget for each wave of deletes ahead of it in the slots. Of the
        budget, waiting for the machine-wide token takes at most half (then the delete
        goes anyway); the rest is the call's, with its retries.

        A delete that waited for its slot while a delete timed out unanswered — no delete
        answered since that one was sent — is not sent: :class:`TimeoutError` at once. On
        a hung backend the deletes queued behind a wave that timed out give up with it,
        rather than time out wave after wave; deletes that come later are sent (one
        answer is enough to show the backend is back).
        """
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        ahead = self.destroys.holders + self.destroys.waiting
        sent: float | None = None
        try:
            async with asyncio.timeout(
                budget * math.ceil(ahead / self.destroys.size) + _SLACK
            ) as deadline:
                async with self.destroys.hold():
                    silent = self._silent
                    if silent and queued_at <= silent[1] and self._last_answer < silent[0]:
                        raise TimeoutError(
                            "not sent: the backend has answered no delete for"
                            f" {loop.time() - silent[0]:.0f}s"
                        )
                    sent = loop.time()
                    deadline.reschedule(sent + budget)
                    await self.machine.take_delete(patience=budget / 2)
                    await call()
        except TimeoutError:
            if sent is not None and deadline.expired() and self._last_answer < sent:
                self._silent = (sent, loop.time())  # before the next in line runs
            raise
        except Exception:
            if sent is not None:
                self._last_answer = loop.time()  # it answered, if only with an error
            raise
        self._last_answer = loop.time()
