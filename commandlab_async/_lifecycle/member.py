"""One sandbox's life, from identity to deletion: what provision, fleets and warm pools share.

:func:`bring_up` creates a sandbox and waits until its daemon answers, within its
``ready_timeout``; :func:`tear_down` deletes it, shielded from cancellation and bounded by
its ``destroy_timeout``; the ``_all`` forms do many at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import aiohttp

from .._admin.handles import handle_of, remember
from .._admin.handles import save as save_handle
from .._client.computer import Computer, Lifetime
from .._client.transport import reason
from ..errors import BackendError, CleanupError, FleetError, ProvisionError, ReadyTimeoutError
from ..specs import RunningSandbox, Spec
from .events import EventCallback, EventKind, emit
from .identity import SandboxIdentity, is_detached
from .leases import Backend
from .readiness import Progress, wait_ready
from .shielding import settle, shielded

__all__ = ["Member", "bring_up", "bring_up_all", "tear_down", "tear_down_all"]

log = logging.getLogger("commandlab_async")
_SAVE_TIMEOUT = 10.0


@dataclass
class Member:
    """One sandbox of a provision or a fleet, from identity to deletion."""

    spec: Spec
    backend: Backend
    identity: SandboxIdentity
    on_event: EventCallback | None
    computer: Computer | None = None
    lifetime: Lifetime = field(default_factory=Lifetime)
    """Ended when the block ends: the Computer stops working then."""
    needs_destroy: bool = False
    """True from the moment its create may have reached the backend until it is deleted."""
    create_interrupted: bool = False
    """Its create was cut short and given half of ``destroy_timeout`` to settle."""
    progress: Progress = field(default_factory=Progress)
    background: bool = False
    """Made ahead of need (a warm pool's refill): it yields create slots to users' creates."""
    on_failure: Callable[[], None] | None = None
    """Called the moment it is known to fail: at its ready deadline (before its create
    settles), so a fleet can stop its other members at once."""
    torn_down: bool = False
    """tear_down ran (or runs): a second call does nothing."""

    def __post_init__(self) -> None:
        self.lifetime.expires_at = self.identity.expires_at

    @property
    def name(self) -> str:
        return self.identity.name

    def emit(self, kind: EventKind, detail: str = "") -> None:
        emit(self.on_event, self.name, str(self.backend.driver.platform), kind, detail)


async def bring_up_all(
    members: list[Member], http: aiohttp.ClientSession, *, keep_going: bool
) -> list[Exception]:
    """Bring every member up concurrently; return the errors of those that failed, each
    failed member already deleted.

    All or nothing (``keep_going=False``): the moment one member fails (its ready deadline
    passes, or an error), the others are stopped — a member still waiting for a create
    slot never sends its create — and each member is deleted as soon as its own create
    has settled, those already up at once. So the whole fleet is gone within one
    ``destroy_timeout`` of the first failure (a wave of deletes at a time when it has
    more members than the target's delete slots and the backend is slow to answer).
    """
    tasks: list[asyncio.Task[None]] = []
    deletes: list[asyncio.Task[None]] = []
    stopped = False

    def stop(cause: Member) -> None:
        """Stop every other member now (synchronously: before any of them runs again)."""
        nonlocal stopped
        if stopped:
            return
        stopped = True
        for member, task in zip(members, tasks, strict=True):
            if member is cause:
                continue  # its own deadline or error ends it: a cancel would mask that
            if not task.done():
                task.cancel()  # it deletes what it made once its create settled
            elif member.computer is not None:  # up already: delete it now
                deletes.append(asyncio.create_task(tear_down(member, pending=None)))

    async def up(member: Member) -> None:
        if not keep_going:
            member.on_failure = lambda: stop(member)
        try:
            await bring_up(member, http)
        except BaseException as exc:
            if not keep_going and not isinstance(exc, asyncio.CancelledError):
                stop(member)
            await tear_down(member, pending=exc)
            raise
        finally:
            member.on_failure = None

    tasks += [asyncio.create_task(up(m)) for m in members]
    try:
        await asyncio.wait(tasks)
        if deletes:
            await asyncio.wait(deletes)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        # Each member lets its in-flight create settle, then deletes what it made.
        await shielded(asyncio.wait(tasks + deletes), timeout=_settle_bound(members))
        raise
    failed: list[Exception] = []
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            if not isinstance(error, Exception):
                raise error
            failed.append(error)
    for task in deletes:  # the members that were up: their cleanup failures, noted
        if not task.cancelled() and (error := task.exception()) is not None:
            if not isinstance(error, Exception):
                raise error
            log.error("%s", error)
            if failed:
                failed[0].add_note(str(error))
    return failed


def _settle_bound(members: Sequence[Member]) -> float:
    """How long members cancelled together may take to settle their creates and be
    deleted: half a cleanup budget to settle, then a budget for each wave of deletes."""
    return (
        max(
            m.spec.destroy_timeout
            * (1.5 + math.ceil(len(members) / m.backend.limiter.destroys.size))
            for m in members
        )
        + 1.0
    )


async def bring_up(member: Member, http: aiohttp.ClientSession) -> None:
    """Create the sandbox and wait until its daemon answers, within ``ready_timeout``.

    The deadline starts once a create slot is had: time queued behind the target's
    create limit is the fleet's, not the sandbox's, and is named apart in the error.
    What the driver checks first (local Docker: that the image is there) has a
    ``ready_timeout`` of its own; a long step that check starts (building the missing
    default image, once for a whole fleet) has none: it may take minutes, once.
    """
    if member.computer is not None:
        return  # already up (taken from a warm pool)
    spec, identity, progress = member.spec, member.identity, member.progress
    driver, limiter = member.backend.driver, member.backend.limiter
    loop = asyncio.get_running_loop()
    queued = 0.0
    alarm: asyncio.TimerHandle | None = None
    try:
        async with asyncio.timeout(None) as deadline:
            progress.state = "checking its image"
            deadline.reschedule(loop.time() + spec.ready_timeout)
            long_step = await driver.prepare(spec)
            deadline.reschedule(None)
            if long_step is not None:
                progress.state = "building its image"
                await long_step
            queued_at = loop.time()
            progress.state = "waiting for a create slot"
            async with limiter.create(background=member.background):
                queued = loop.time() - queued_at
                deadline.reschedule(loop.time() + spec.ready_timeout)
                if member.on_failure is not None:
                    alarm = loop.call_at(deadline.when() or 0.0, member.on_failure)
                progress.state = "creating"
                member.emit(EventKind.CREATING)
                member.needs_destroy = True
                await _create(member)
            member.emit(EventKind.CREATED)
            progress.state = "created; waiting for the backend to run it"
            running = await driver.running(spec, identity)
            url = await _resolve(spec, running)
            member.emit(EventKind.RUNNING, url)
            progress.state = "running"
            computer = Computer(
                name=identity.name,
                url=url,
                token=identity.token,
                session=http,
                platform=str(driver.platform),
                ssl_context=running.ssl,
                extra_headers=running.headers,
                lifetime=member.lifetime,
            )
            await wait_ready(computer, driver, identity, progress, limiter.probes.hold)
    except TimeoutError as exc:
        if deadline.expired():
            said = driver.waiting_on(identity) if progress.state.startswith("created") else None
            state = f"{progress.state}: {said}" if said else progress.state
            if queued >= 0.1:
                state += f"; it had waited {queued:.1f}s for a create slot before that"
            error: BaseException = ReadyTimeoutError(
                sandbox=identity.name,
                platform=str(driver.platform),
                timeout=spec.ready_timeout,
                state=state,
            )
            member.emit(EventKind.FAILED, str(error))
            raise error from None
        member.emit(EventKind.FAILED, repr(exc))
        raise
    except (ProvisionError, BackendError) as exc:
        member.emit(EventKind.FAILED, str(exc))
        raise
    finally:
        if alarm is not None:
            alarm.cancel()
    member.computer = computer
    remember(computer, handle_of(computer, identity, member.backend.target, driver.pin(identity)))
    member.emit(EventKind.READY)


async def _create(member: Member) -> None:
    """The driver's create; cut short, it may settle within half the cleanup budget."""
    driver, name = member.backend.driver, member.name
    grace = member.spec.destroy_timeout / 2
    try:
        await settle(driver.create(member.spec, member.identity), grace=grace)
    except BaseException as exc:
        if driver.take_not_created(name):
            member.needs_destroy = False  # the backend was never asked
        elif isinstance(exc, asyncio.CancelledError):
            member.create_interrupted = True  # _tear_down gets the other half
        raise


async def _resolve(spec: Spec, running: RunningSandbox) -> str:
    """The daemon's base URL: the spec's resolver decides, else the driver's choice."""
    if spec.endpoint_resolver is not None:
        return await spec.endpoint_resolver(running)
    if running.url is None:
        raise ProvisionError(
            "the backend gave it no address to reach; set spec.endpoint_resolver",
            sandbox=running.name,
            platform=str(running.platform),
        )
    return running.url


async def tear_down_all(members: Sequence[Member], *, pending: BaseException | None) -> None:
    """Delete members concurrently (each within its own limits), reporting every failure."""
    results = await asyncio.gather(
        *(tear_down(m, pending=pending) for m in members), return_exceptions=True
    )
    errors: list[Exception] = []
    for result in results:
        if isinstance(result, Exception):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result  # cancellation, once every delete has finished
    if errors:
        raise FleetError(f"{len(errors)} sandboxes could not be deleted", errors)


async def _keep(member: Member, computer: Computer, detached: bool) -> None:
    """Leave the sandbox running, its handle saved so another process can reach it."""
    identity = member.identity
    backend = member.backend
    handle = handle_of(computer, identity, backend.target, backend.driver.pin(identity))
    handle = replace(handle, kept=True)  # what tells gc it belongs to no process now
    ttl = member.spec.ttl
    remove = f"`commandlab rm {identity.name}`"
    detail = f"until its TTL ({ttl:g}s) or {remove}" if ttl is not None else f"until {remove}"
    try:
        await shielded(asyncio.to_thread(save_handle, handle), timeout=_SAVE_TIMEOUT)
    except Exception as exc:
        # The saved handle is what tells gc the sandbox is kept (its owner labels are
        # fixed at create): without it, other processes cannot reach it and gc deletes
        # it once this process has exited.
        log.warning("could not save the handle of kept sandbox %s: %r", identity.name, exc)
        detail += f"; its handle could not be saved ({reason(exc)})"
        if not detached:
            detail += ", so `commandlab gc` deletes it once this process has exited"
    member.emit(EventKind.KEPT, detail)


async def tear_down(member: Member, *, pending: BaseException | None) -> None:
    """Delete the sandbox, shielded from cancellation and bounded in time.

    If cleanup fails while another error is on its way out, that error stays the one
    raised and carries a note about the cleanup failure; otherwise CleanupError is raised.
    """
    if member.torn_down:
        return
    member.torn_down = True
    computer = member.computer
    detached = is_detached(member.identity.labels) and pending is None
    kept = computer is not None and (computer.kept or detached)
    member.lifetime.end(
        f"its provision block ended{' (the sandbox was kept)' if kept else ''};"
        " a Computer works only inside that block"
    )
    if not member.needs_destroy:
        return
    if kept:
        assert computer is not None
        await _keep(member, computer, detached)
        return
    driver, limiter = member.backend.driver, member.backend.limiter
    budget = member.spec.destroy_timeout
    if member.create_interrupted:
        budget /= 2  # the create's settling had the first half

    async def destroy() -> None:
        member.emit(EventKind.DESTROYING)
        await driver.destroy(member.identity)

    try:
        # The budget is the call's, from when it is sent; the limiter bounds the queueing.
        await shielded(limiter.delete(destroy, budget=budget), timeout=None)
    except Exception as exc:
        error = CleanupError(
            f"could not delete it ({reason(exc)}); its TTL or `commandlab gc` will",
            sandbox=member.name,
            platform=str(driver.platform),
        )
        member.emit(EventKind.FAILED, str(error))
        if pending is None:
            raise error from exc
        log.error("%s", error)
        pending.add_note(str(error))
    else:
        member.needs_destroy = False
        member.emit(EventKind.DESTROYED)
