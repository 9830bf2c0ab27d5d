"""provision and provision_many: identity → create → ready → yield → shielded destroy.

With a :class:`WarmPool` of the spec open, the first steps are a hand-out instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import overload

from .._client.computer import Computer
from .._client.transport import new_session
from ..errors import FleetError, SpecError
from ..specs import DockerSpec, KubernetesSpec, Spec, checked_spec
from .events import EventCallback
from .identity import new_identity
from .leases import Backend, lease, open_backend
from .member import Member, bring_up, bring_up_all, tear_down, tear_down_all
from .signals import terminate_after_cleanup
from .warm_pools import find as find_pool

__all__ = ["Fleet", "provision", "provision_many"]


async def _open_backends(stack: AsyncExitStack, specs: Sequence[Spec]) -> list[Backend]:
    """The backend of each spec, in order: one lease per distinct target (no I/O)."""
    targets = [spec.target() for spec in specs]
    backends = {target: await open_backend(stack, target) for target in dict.fromkeys(targets)}
    return [backends[target] for target in targets]


@asynccontextmanager
async def provision(
    spec: Spec, *, on_event: EventCallback | None = None
) -> AsyncIterator[Computer]:
    """Bring up one sandbox and yield its :class:`Computer`; delete it when the block exits.

    Returns only once the daemon inside answered an authenticated health request.
    The sandbox is deleted on every exit path — normal exit, exception, cancellation,
    timeout — with cleanup shielded from cancellation and bounded by
    ``spec.destroy_timeout``.

    Raises :class:`SpecError` or :class:`BackendUnavailableError` before anything is
    created, and :class:`ProvisionError` (naming the sandbox) when it cannot come up.
    ``on_event`` receives a :class:`LifecycleEvent` at each step.

    While a :class:`WarmPool` of an equal spec is open on this event loop, a ready member
    of it is handed out instead (event ``pool-hit``), or the next one to come up.
    """
    spec = checked_spec(spec)
    async with AsyncExitStack() as stack:
        stack.enter_context(terminate_after_cleanup())
        (backend,) = await _open_backends(stack, [spec])
        http = await stack.enter_async_context(lease("http", new_session))
        pool = find_pool(spec)
        if pool is not None:  # on failure nothing is ours: the pool keeps or deletes it
            member = await pool.take(on_event)
        else:
            member = Member(spec, backend, new_identity(spec), on_event)
        try:
            await bring_up(member, http)
            assert member.computer is not None
            yield member.computer
        except BaseException as exc:
            await tear_down(member, pending=exc)
            raise
        else:
            await tear_down(member, pending=None)


class Fleet(Sequence[Computer]):
    """The computers of :func:`provision_many`, in spec order.

    With ``keep_going=True``, ``failed`` lists the members that did not come up (each
    already deleted) and the fleet holds only the others.
    """

    def __init__(self, computers: list[Computer], failed: list[Exception]) -> None:
        self._computers = computers
        self.failed = failed

    @overload
    def __getitem__(self, index: int) -> Computer: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Computer]: ...
    def __getitem__(self, index: int | slice) -> Computer | Sequence[Computer]:
        return self._computers[index]

    def __len__(self) -> int:
        return len(self._computers)

    def __iter__(self) -> Iterator[Computer]:
        return iter(self._computers)

    def __repr__(self) -> str:
        return f"Fleet({len(self._computers)} computers, {len(self.failed)} failed)"


@asynccontextmanager
async def provision_many(
    specs: Spec | Sequence[Spec],
    count: int | None = None,
    *,
    keep_going: bool = False,
    on_event: EventCallback | None = None,
) -> AsyncIterator[Fleet]:
    """Bring up many sandboxes concurrently and yield them as a :class:`Fleet`.

    ``provision_many(spec, count=50)`` makes 50 of one spec; ``provision_many([a, b])``
    one per spec (platforms may be mixed). Creates, readiness waits and deletes run
    concurrently within the per-target :class:`Limits` shared by the whole process.

    By default it is all or nothing: if any member fails, the others are stopped and
    every member is deleted, then :class:`FleetError` (an ExceptionGroup of one error
    per failed member, each naming its sandbox) is raised. With ``keep_going=True`` the
    fleet holds the members that came up and ``fleet.failed`` the errors of the others.
    Every member is deleted when the block exits, whatever happens.

    Members whose spec has an open :class:`WarmPool` on this loop are taken from it while
    it has ready ones; the rest are created.
    """
    if isinstance(specs, DockerSpec | KubernetesSpec):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError("count", f"must be a positive int with one spec, got {count!r}")
        spec_list = [specs] * count
    else:
        if count is not None:
            raise SpecError("count", "is only used with a single spec")
        spec_list = [checked_spec(spec) for spec in specs]
        if not spec_list:
            raise SpecError("specs", "must not be empty")
    async with AsyncExitStack() as stack:
        stack.enter_context(terminate_after_cleanup())
        backends = await _open_backends(stack, spec_list)
        http = await stack.enter_async_context(lease("http", new_session))
        members = [
            Member(spec, backend, new_identity(spec), on_event)
            for spec, backend in zip(spec_list, backends, strict=True)
        ]
        try:
            await _draw_from_pools(members, on_event)
            failed = await bring_up_all(members, http, keep_going=keep_going)
            if failed and not keep_going:
                raise FleetError(
                    f"{len(failed)} of {len(members)} sandboxes failed to come up", failed
                )
            yield Fleet([m.computer for m in members if m.computer is not None], failed)
        except BaseException as exc:
            await tear_down_all(members, pending=exc)
            raise
        else:
            await tear_down_all(members, pending=None)


async def _draw_from_pools(members: list[Member], on_event: EventCallback | None) -> None:
    """Replace members by ready ones of open warm pools of their specs, while any are."""
    empty: set[int] = set()
    for index, member in enumerate(members):
        pool = find_pool(member.spec)
        if pool is None or id(pool) in empty:
            continue
        taken = await pool.take_ready(on_event)
        if taken is None:
            empty.add(id(pool))
        else:
            members[index] = taken  # no await between: a cancellation cannot lose it
