"""An event loop on a thread of its own, where the plugin's sandboxes live.

pytest-asyncio gives each scope its own event loop, and a sandbox shared by a module or
a session must outlive many of them. So every sandbox the plugin makes is brought up,
held and deleted by a task of this loop, and tests reach it from their own loops (a
:class:`~commandlab_async.Computer` works from any loop of the process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Generic, TypeVar

__all__ = ["BackgroundLoop", "Hold"]

T = TypeVar("T")


class Hold(Generic[T]):
    """An async context manager kept open by a task of the background loop.

    ``entered`` resolves to what it yielded (or its error); ``finished`` when it exited.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.entered: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._release: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def keep(self, manager: AbstractAsyncContextManager[T]) -> None:
        self._task = asyncio.current_task()
        self._release = asyncio.Event()
        try:
            async with manager as value:
                self.entered.set_result(value)
                await self._release.wait()
        except BaseException as exc:  # recorded for the thread that waits on it
            if not self.entered.done():
                self.entered.set_exception(exc)
            self.finished.set_exception(exc)
        else:
            self.finished.set_result(None)

    def release(self) -> None:
        """Leave the context (from any thread); ``finished`` says when it has."""
        self._loop.call_soon_threadsafe(self._set_release)

    def cancel(self) -> None:
        """Cancel the task (from any thread): the context exits through its cleanup."""
        self._loop.call_soon_threadsafe(self._cancel)

    def _set_release(self) -> None:
        if self._release is not None:
            self._release.set()
        else:  # not started yet: it will find nothing to do
            self._cancel()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif not self.finished.done():
            # Cancelled before its task ran: its coroutine is closed unstarted.
            self.entered.set_exception(asyncio.CancelledError())
            self.finished.set_exception(asyncio.CancelledError())


class BackgroundLoop:
    """An event loop running on a daemon thread, started at construction."""

    def __init__(self, name: str = "commandlab") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._holds: set[Hold[Any]] = set()
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def hold(self, manager: AbstractAsyncContextManager[T]) -> Hold[T]:
        """Start entering ``manager`` in a task of the loop; see :class:`Hold`."""
        if self._closed:
            raise RuntimeError("the background loop is closed")
        hold: Hold[T] = Hold(self.loop)
        self._holds.add(hold)
        hold.finished.add_done_callback(lambda _: self._holds.discard(hold))
        # The task's own errors are recorded in the hold: this future says nothing more.
        asyncio.run_coroutine_threadsafe(hold.keep(manager), self.loop)
        return hold

    def enter(self, manager: AbstractAsyncContextManager[T], grace: float) -> Hold[T]:
        """Enter ``manager`` and wait until it is entered (from another thread).

        Interrupted while waiting (Ctrl-C), it cancels the entering and waits up to
        ``grace`` seconds for its cleanup before raising.
        """
        hold = self.hold(manager)
        try:
            hold.entered.result()
        except BaseException:
            hold.cancel()
            with suppress(BaseException):
                hold.finished.result(grace)
            raise
        return hold

    async def enter_async(self, manager: AbstractAsyncContextManager[T]) -> Hold[T]:
        """Enter ``manager`` from another event loop; cancelling the wait cancels it."""
        hold = self.hold(manager)
        try:
            await asyncio.wrap_future(hold.entered)
        except asyncio.CancelledError:
            hold.cancel()  # its cleanup runs on; close() waits for it
            raise
        return hold

    def close(self, timeout: float) -> list[BaseException]:
        """Cancel every context still held, wait up to ``timeout`` for their cleanup,
        then stop the loop. Returns the errors their exits raised."""
        if self._closed:
            return []
        self._closed = True
        holds = list(self._holds)
        for hold in holds:
            hold.cancel()
        done, _ = concurrent.futures.wait([h.finished for h in holds], timeout=timeout)
        errors = [
            error
            for future in done
            if (error := future.exception()) is not None
            and not isinstance(error, asyncio.CancelledError)
        ]
        if len(done) == len(holds):  # else a cleanup still runs: leave the loop to it
            # On the loop's own thread: this one may be running a loop of its own (a
            # signal handler called in a test).
            with suppress(Exception):
                self.run(self.loop.shutdown_asyncgens(), timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()
        return errors
