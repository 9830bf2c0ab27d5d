"""Warm pools: sandboxes brought up ahead of need and handed out ready, never reused.

While a :class:`WarmPool` of a spec is open on an event loop, :func:`provision` of an
equal spec on that loop takes one of its ready members (after a cheap health check)
instead of creating one, and the pool starts a replacement in the background. The caller
owns what it took: it is deleted when its block ends, like any other sandbox.

The hand-out check asks the member's daemon for ``/health`` and requires that the process
answering is the one that answered the readiness probe: the same pid, and a start time
(the client's clock minus the uptime it reports, bracketed by each request's round trip)
that fits both answers. Nothing runs in a member before it is handed out, so what can
have happened to it is the platform's or the engine's doing: a daemon restarted (a
container restarted in its pod, a Cloud Run instance replaced) has lost nothing we can
see on ``/health`` but its start — and with it the TTL it counts from and the promise of
a sandbox nobody used. Members are checked concurrently, a frozen one never holds up
the rest: a check unanswered after ``_HEDGE_DELAY`` starts the next member's, and a
caller with no member answering within ``_CHECK_BUDGET`` waits for a create of its own
(a check that passes later still hands its member to a waiting caller first).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import secrets
import time
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from .._client.transport import new_session
from .._validation import check_bool, check_int, check_number
from ..errors import CommandLabError, FleetError, ProvisionError, SpecError
from ..labels import POOL
from ..specs import Spec, checked_spec
from .events import EventCallback, EventKind
from .identity import labelled, new_identity
from .leases import Backend, lease, open_backend
from .member import Member, bring_up, tear_down, tear_down_all
from .readiness import daemon_start
from .shielding import shielded
from .signals import terminate_after_cleanup

__all__ = ["WarmPool"]

log = logging.getLogger("commandlab_async")

_CHECK_TIMEOUT = 2.0  # a member whose hand-out check takes longer is deleted, not handed out
_HEDGE_DELAY = 0.1  # a check unanswered this long: the next ready member is checked too
_MAX_CHECKS = 4  # members one caller checks at once
_CHECK_BUDGET = 1.0  # no member passed by then: the caller waits for a create of its own
_FIRST_BACKOFF = 1.0  # after a refill failed, the next waits this long, doubling...
_LAST_BACKOFF = 60.0  # ...up to this

_open: list[WarmPool] = []  # the pools open in this process, on their loops


@dataclass(eq=False)
class _Ready:
    member: Member
    since: float
    expiry: asyncio.TimerHandle | None = None


class WarmPool:
    """``size`` ready sandboxes of ``spec``, from which :func:`provision` takes one at once.

    ``async with WarmPool(spec, size=10):`` brings ``size`` members up (and raises like
    :func:`provision_many` if they cannot come up; with ``wait=False`` it returns at once
    and fills in the background). Inside it, ``provision(spec)`` with an equal spec on
    the same event loop hands out a ready member — health-checked, never used before —
    and starts a replacement. When none is ready, the caller waits for the next one to
    come up; each waiting caller adds a create of its own, so the wait is never longer
    than a cold start. ``provision_many`` takes the ready members it can and creates the
    rest itself. Refills are background creates: at most half the target's create slots,
    and only while no user's create is queued.

    Members carry the spec's TTL and the process's owner labels like any sandbox, plus
    ``commandlab.pool``, so ``gc`` removes them after a crash. A member older than
    ``max_age`` seconds (default: half the TTL, so a handed-out sandbox always has at
    least half its TTL left) is replaced instead of handed out. Leaving the block deletes
    every member not handed out, shielded from cancellation and bounded by the spec's
    ``destroy_timeout``; sandboxes handed out stay with their own blocks.

    Idle members cost what any running sandbox costs: on clouds they bill while they wait.
    """

    def __init__(
        self,
        spec: Spec,
        size: int = 4,
        *,
        wait: bool = True,
        max_age: float | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.spec = checked_spec(spec)
        check_int("size", size, low=1, high=1000)
        check_bool("wait", wait)
        ttl = self.spec.ttl
        if max_age is None:
            max_age = ttl / 2 if ttl is not None else math.inf
        else:
            check_number("max_age", max_age, low=1.0, high=ttl if ttl is not None else math.inf)
        self.size = size
        self.max_age = max_age
        self.id = secrets.token_hex(4)
        self._wait = wait
        self._on_event = on_event
        self._ready: deque[_Ready] = deque()
        self._checking: set[_Ready] = set()  # taken off ready for a hand-out check
        self._checks: set[asyncio.Task[_Ready | None]] = set()
        self._building: set[asyncio.Task[Member]] = set()
        self._deleting: set[asyncio.Task[None]] = set()
        self._waiters: deque[asyncio.Future[Member]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack = AsyncExitStack()
        # Members are built in the context the pool was made in (a test run's labels,
        # say), not in that of whichever caller's take happens to start a refill.
        self._context = contextvars.copy_context()
        self._opened = False  # the first fill is over: failures are refills' from now on
        self._backend: Backend | None = None
        self._http: aiohttp.ClientSession | None = None
        self._failures = 0  # refills failed in a row
        self._retry: asyncio.TimerHandle | None = None
        self._closing = False
        self.hits = 0
        """Members handed out so far."""
        self.waited = 0
        """Of those, how many callers found none ready and waited."""

    def __repr__(self) -> str:
        return (
            f"WarmPool({self.spec.platform}, size={self.size}, ready={len(self._ready)},"
            f" coming={len(self._building)}, waiting={len(self._waiters)})"
        )

    @property
    def ready(self) -> int:
        """Members ready to be handed out now."""
        return len(self._ready)

    @property
    def coming(self) -> int:
        """Members on their way up (refills, and creates for waiting callers)."""
        return len(self._building)

    # -- opening and closing ---------------------------------------------

    async def __aenter__(self) -> WarmPool:
        if self._loop is not None:
            raise RuntimeError("a WarmPool can be opened once")
        self._loop = asyncio.get_running_loop()
        if find(self.spec) is not None:
            raise SpecError("spec", "a warm pool of an equal spec is already open on this loop")
        async with AsyncExitStack() as stack:
            stack.enter_context(terminate_after_cleanup())
            self._backend = await open_backend(stack, self.spec.target())
            self._http = await stack.enter_async_context(lease("http", new_session))
            self._stack = stack.pop_all()
        _open.append(self)
        first = [self._build(background=False) for _ in range(self.size)]
        if not self._wait:
            self._opened = True
            return self
        try:
            await asyncio.wait(first)
        except BaseException as exc:
            await self._close(exc)
            raise
        errors = [
            error
            for task in first
            if not task.cancelled() and isinstance(error := task.exception(), Exception)
        ]
        if errors:
            error = FleetError(
                f"{len(errors)} of {self.size} warm pool members failed to come up", errors
            )
            await self._close(error)
            raise error
        self._opened = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close(exc)

    async def _close(self, pending: BaseException | None) -> None:
        """Delete every member not handed out, shielded and bounded; wake the waiters."""
        if self._closing:
            return
        self._closing = True
        if self in _open:
            _open.remove(self)
        if self._retry is not None:
            self._retry.cancel()
        why = "its warm pool was closed while it waited for a member"
        if isinstance(pending, Exception):
            why += f" (the pool's block raised {pending!r})"
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(
                    ProvisionError(why, sandbox=None, platform=str(self.spec.platform))
                )
        self._waiters.clear()
        for task in self._building:
            task.cancel()  # each lets its create settle, then deletes what it made
        for check in self._checks:
            check.cancel()  # each deletes the member it was checking
        try:
            grace = self.spec.destroy_timeout + 1.0
            for _ in range(2):  # the second: deletes of members that came up meanwhile
                if busy := self._building | self._deleting | self._checks:
                    await shielded(asyncio.wait(busy, timeout=grace), timeout=grace + 1.0)
        finally:
            members = [entry.member for entry in self._ready]
            for entry in self._ready:
                if entry.expiry is not None:
                    entry.expiry.cancel()
            self._ready.clear()
            try:
                await tear_down_all(members, pending=pending)
            finally:
                await self._stack.aclose()

    # -- handing out -------------------------------------------------------

    async def take(self, on_event: EventCallback | None = None) -> Member:
        """A ready member, now or as soon as one comes up; the caller then owns it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            member = await self._take_ready()
            if member is not None:
                return self._hand_out(member, on_event, 0.0)
            if self._closing:
                raise ProvisionError(
                    "its warm pool is closed", sandbox=None, platform=str(self.spec.platform)
                )
            waiter: asyncio.Future[Member] = loop.create_future()
            self._waiters.append(waiter)
            self._top_up()
            try:
                member = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._put_back(waiter.result())  # handed to us just as we were cancelled
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            self.waited += 1
            return self._hand_out(member, on_event, loop.time() - started)

    async def take_ready(self, on_event: EventCallback | None = None) -> Member | None:
        """A ready member without waiting (the caller then owns it); None if none is."""
        member = await self._take_ready()
        return None if member is None else self._hand_out(member, on_event, 0.0)

    async def _take_ready(self) -> Member | None:
        """A ready member that passed its hand-out check, the oldest first; None if none is
        ready or none passed within ``_CHECK_BUDGET``.

        Checks run concurrently: one unanswered for ``_HEDGE_DELAY`` does not hold up the
        next member's. Those still running when this returns (or is cancelled) go on in the
        background: a member that passes goes back to the pool (to a waiting caller first),
        one that fails is deleted.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CHECK_BUDGET
        mine: list[asyncio.Task[_Ready | None]] = []
        winner: asyncio.Task[_Ready | None] | None = None
        try:
            while not self._closing:
                pending = [task for task in mine if not task.done()]
                if self._ready and len(pending) < _MAX_CHECKS:
                    task = self._check(self._ready.popleft())
                    mine.append(task)
                    pending.append(task)
                left = deadline - loop.time()
                if not pending or left <= 0:
                    return None
                hedge = bool(self._ready) and len(pending) < _MAX_CHECKS
                await asyncio.wait(
                    pending,
                    timeout=min(left, _HEDGE_DELAY) if hedge else left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in mine:  # the oldest member that passed
                    if task.done() and not task.cancelled() and task.result() is not None:
                        winner = task
                        entry = task.result()
                        assert entry is not None
                        self._checking.discard(entry)
                        self._top_up()
                        return entry.member
            return None
        finally:
            for task in mine:
                if task is not winner:
                    if task.done():
                        self._checked(task)
                    else:
                        task.add_done_callback(self._checked)

    def _check(self, entry: _Ready) -> asyncio.Task[_Ready | None]:
        """Start the hand-out check of a member taken off the ready queue."""
        if entry.expiry is not None:
            entry.expiry.cancel()
        self._checking.add(entry)
        task = asyncio.create_task(self._verify(entry))
        self._checks.add(task)
        task.add_done_callback(functools.partial(self._check_ended, entry))
        return task

    def _check_ended(self, entry: _Ready, task: asyncio.Task[_Ready | None]) -> None:
        self._checks.discard(task)
        if task.cancelled() and entry in self._checking:  # only the pool's close cancels
            self._checking.discard(entry)
            self._delete(entry.member, "its warm pool closed while it was being checked")

    async def _verify(self, entry: _Ready) -> _Ready | None:
        """``entry`` if its daemon answers in time and is the process that became ready;
        else None, the member deleted."""
        member = entry.member
        computer = member.computer
        assert computer is not None
        try:
            sent = time.monotonic()
            health = await computer.health(timeout=_CHECK_TIMEOUT)
            answered = daemon_start(health, sent, time.monotonic())
        except Exception as exc:  # a typed error from the Computer, as a rule
            self._fail_check(entry, f"it stopped answering ({exc})")
            return None
        seen = member.progress.daemon
        if seen is not None and (answered is None or not seen.same_process(answered)):
            log.warning(
                "warm pool %s: member %s not handed out: the daemon answering it is not the"
                " process that became ready (pid %s then, %s now: restarted or replaced)",
                self.id,
                member.name,
                seen.pid,
                answered.pid if answered is not None else "unknown",
            )
            self._fail_check(entry, "its daemon is not the process that became ready")
            return None
        return entry

    def _fail_check(self, entry: _Ready, why: str) -> None:
        self._checking.discard(entry)
        self._delete(entry.member, f"not handed out: {why}")
        self._top_up()

    def _checked(self, task: asyncio.Task[_Ready | None]) -> None:
        """A check no caller took the member of: a member that passed goes back."""
        if task.cancelled() or (entry := task.result()) is None:
            return
        self._checking.discard(entry)
        self._put_back(entry.member, since=entry.since)

    def _hand_out(self, member: Member, on_event: EventCallback | None, waited: float) -> Member:
        self.hits += 1
        member.on_event = on_event
        member.emit(
            EventKind.POOL_HIT,
            f"from warm pool {self.id} after waiting {waited:.3f}s"
            if waited
            else f"from warm pool {self.id}",
        )
        return member

    # -- filling -------------------------------------------------------------

    def _top_up(self) -> None:
        """Start the creates that bring ready and coming members to ``size`` plus waiters."""
        if self._closing:
            return
        waiting = sum(not w.done() for w in self._waiters)
        missing = self.size + waiting - len(self._ready) - len(self._checking) - len(self._building)
        if missing <= 0:
            return
        if self._retry is not None and not waiting:
            return  # backing off after failed refills; a waiting caller is not kept waiting
        for _ in range(missing):
            self._build(background=not waiting)

    def _build(self, *, background: bool) -> asyncio.Task[Member]:
        task = asyncio.create_task(self._bring_up(background), context=self._context.copy())
        self._building.add(task)
        task.add_done_callback(self._built)
        return task

    async def _bring_up(self, background: bool) -> Member:
        assert self._backend is not None
        assert self._http is not None
        with labelled({POOL: self.id}):
            identity = new_identity(self.spec)
        member = Member(self.spec, self._backend, identity, self._on_event, background=background)
        try:
            await bring_up(member, self._http)
        except BaseException as exc:
            await tear_down(member, pending=exc)
            raise
        return member

    def _built(self, task: asyncio.Task[Member]) -> None:
        self._building.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._refill_failed(error)
            return
        self._failures = 0
        member = task.result()
        if self._closing:
            self._delete(member, "its warm pool closed as it came up")
            return
        self._put_back(member)

    def _put_back(self, member: Member, since: float | None = None) -> None:
        """A ready member: to the first waiting caller, else to the pool (if it has room).

        ``since``: when it became ready, if earlier than now."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(member)
                return
        if self._closing or len(self._ready) >= self.size:
            self._delete(member, "not needed: the pool is full")
            return
        assert self._loop is not None
        now = self._loop.time()
        entry = _Ready(member, now if since is None else since)
        if math.isfinite(self.max_age):
            delay = max(entry.since + self.max_age - now, 0.0)
            entry.expiry = self._loop.call_later(delay, self._expire, entry)
        self._ready.append(entry)

    def _expire(self, entry: _Ready) -> None:
        if entry in self._ready:
            self._ready.remove(entry)
            self._delete(entry.member, f"replaced: ready for {self.max_age:g}s (max_age)")
            self._top_up()

    def _refill_failed(self, error: BaseException) -> None:
        self._failures += 1
        for waiter in self._waiters:
            if not waiter.done():  # a caller waiting for this create hears why it failed
                waiter.set_exception(error)
                break
        if self._closing or not self._opened:
            return  # the first fill's failures are raised from __aenter__
        delay = min(_FIRST_BACKOFF * 2 ** (self._failures - 1), _LAST_BACKOFF)
        log.warning(
            "warm pool %s: a member failed to come up (%r); next refill in %.0fs",
            self.id,
            error,
            delay,
        )
        if self._retry is not None:
            self._retry.cancel()
        assert self._loop is not None
        self._retry = self._loop.call_later(delay, self._retry_refill)

    def _retry_refill(self) -> None:
        self._retry = None
        self._top_up()

    def _delete(self, member: Member, why: str) -> None:
        """Delete a member in the background (bounded like any delete)."""
        log.debug("warm pool %s: deleting %s: %s", self.id, member.name, why)
        task = asyncio.create_task(self._tear_down(member))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    @staticmethod
    async def _tear_down(member: Member) -> None:
        try:
            await tear_down(member, pending=None)
        except CommandLabError as exc:
            log.error("%s", exc)  # its TTL and gc remain


def find(spec: Spec) -> WarmPool | None:
    """The warm pool of an equal spec open on the running loop, if any."""
    loop = asyncio.get_running_loop()
    for pool in _open:
        if pool._loop is loop and not pool._closing and pool.spec == spec:
            return pool
    return None
