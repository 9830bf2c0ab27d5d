"""Run cleanup to completion even when the caller is being cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["settle", "shielded"]

T = TypeVar("T")
log = logging.getLogger("commandlab_async")


async def shielded(aw: Awaitable[T], *, timeout: float | None) -> T:
    """Await ``aw`` to completion (at most ``timeout`` seconds), whatever cancels the caller.

    ``timeout=None`` is for work that bounds itself.

    ``asyncio.shield`` alone returns at the first cancellation and leaves the work running
    unobserved; this keeps waiting through any number of cancellations and re-raises
    :class:`asyncio.CancelledError` once the work is done, so cancellation is delayed by
    at most ``timeout`` and never lost. On timeout it raises :class:`TimeoutError`.
    """
    task = asyncio.ensure_future(asyncio.wait_for(aw, timeout))
    cancelled = False
    while not task.done():
        try:
            # asyncio.wait never cancels the task it waits for.
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("shielded work failed while the caller was cancelled: %r", error)
        raise asyncio.CancelledError
    return task.result()


async def settle(aw: Awaitable[T], *, grace: float) -> T:
    """Await ``aw``; if the caller is cancelled meanwhile, let ``aw`` finish first.

    Used for create calls: cancelling the HTTP request of a create the backend has
    already accepted would leave a sandbox we never heard of. Instead the create runs
    to its end (at most ``grace`` more seconds, then it is cancelled) so that cleanup
    sees everything it made, and then the cancellation is re-raised.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await shielded(_finish(task, grace), timeout=grace + 1.0)
        raise


async def _finish(task: asyncio.Future[T], grace: float) -> None:
    await asyncio.wait((task,), timeout=grace)
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # mark it retrieved: the caller is cancelled and will not look
