"""Clients shared by every sandbox of a process (per event loop), closed when the last user leaves.

One Docker client or cloud SDK client serves a whole fleet, and one HTTP connection pool
serves every Computer, instead of one per sandbox.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..platforms import driver_class
from ..platforms.base import Target
from .limits import Limiter, limits_for
from .machine_quota import MachineBuckets, machine_quotas_for
from .shielding import shielded

if TYPE_CHECKING:
    from ..platforms.driver import Driver

__all__ = ["Backend", "Closable", "lease", "open_backend"]


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)

_CLOSE_TIMEOUT = 10.0
# loop -> key -> [client, number of users]
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def lease(key: Hashable, factory: Callable[[], C]) -> AsyncIterator[C]:
    """Use the client stored under ``key`` on this loop, making it with ``factory`` if needed.

    ``factory`` must not do I/O (it runs synchronously); the client is closed, shielded
    from cancellation, when its last lease ends.
    """
    pool = _pools.setdefault(asyncio.get_running_loop(), {})
    entry = pool.get(key)
    if entry is None:
        entry = pool[key] = [factory(), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del pool[key]
            await shielded(entry[0].close(), timeout=_CLOSE_TIMEOUT)


@dataclass
class Backend:
    """What one target needs on this loop: its driver and its limits."""

    target: Target
    driver: Driver[Any]
    limiter: Limiter


def _limiter(target: Target, cls: type[Driver[Any]]) -> Limiter:
    machine = MachineBuckets(machine_quotas_for(target, cls.machine_quotas(target)))
    return Limiter(limits_for(target, cls.default_limits), machine)


async def open_backend(stack: AsyncExitStack, target: Target) -> Backend:
    """Lease the driver and limiter of ``target`` until ``stack`` closes (no I/O).

    Every fleet, provision and gc of the process on the same target shares them.
    """
    cls = driver_class(target.platform)
    driver = await stack.enter_async_context(lease(("driver", target), partial(cls, target)))
    limiter = await stack.enter_async_context(
        lease(("limits", target), partial(_limiter, target, cls))
    )
    return Backend(target, driver, limiter)
