"""The client's side of a started process's stdin, and the routes that name a process.

A started process's stdin goes to the daemon as the body of its ``POST /exec``, fed from a
:class:`StdinQueue`. The queue is bounded (``Process.write`` waits while the daemon's
buffer is full) but never a trap: once nothing will take from it any more, a write fails
at once with ``RemoteOSError`` (``errno.EPIPE``), as a write to a pipe nobody reads does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
from typing import Any
from urllib.parse import quote

from ..errors import RemoteOSError

__all__ = ["StdinQueue", "process_route"]

# The ids the daemon gives processes ("p1", "p2"...): anything else is refused before it
# is sent, so that no id can carry a query, a path or a ".." into the request.
_PROCESS_ID = re.compile(r"p[1-9][0-9]{0,17}")


def process_route(process_id: object, action: str | None = None) -> str:
    """The route of a process (``/processes/<id>[/<action>]``); ValueError for a bad id."""
    if not isinstance(process_id, str) or not _PROCESS_ID.fullmatch(process_id):
        raise ValueError(
            f"malformed process id {process_id!r}: process ids are 'p' and a number, as"
            " start() and processes() give them"
        )
    route = f"/processes/{quote(process_id, safe='')}"
    return route if action is None else f"{route}/{action}"


class StdinQueue(asyncio.Queue[bytes | None]):
    """What :meth:`Process.write` sends, on its way into the request body (None: end).

    Its reader is the task that sends the request body: when that task ends (the
    reply ended because the process exited, the connection broke, the request was
    closed) or :meth:`end` is called (the exit was read), nothing takes from the queue
    any more and :meth:`put` raises :class:`RemoteOSError` with ``errno.EPIPE`` at once,
    also when it was already waiting for room.
    """

    def __init__(self, maxsize: int, *, sandbox: str) -> None:
        super().__init__(maxsize)
        self._sandbox = sandbox
        self._ended = asyncio.Event()
        self._reader: asyncio.Task[Any] | None = None

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def end(self) -> None:
        """Nothing will be read from here any more: writes fail from now on."""
        self._ended.set()

    async def get(self) -> bytes | None:
        task = asyncio.current_task()
        if task is not None and task is not self._reader:
            self._reader = task
            task.add_done_callback(self._reader_done)
        return await super().get()

    def _reader_done(self, task: asyncio.Task[Any]) -> None:
        if task is self._reader:
            self.end()

    async def put(self, item: bytes | None) -> None:
        if self.ended:
            raise self._broken()
        if not self.full():
            self.put_nowait(item)
            return
        putting = asyncio.ensure_future(super().put(item))
        ending = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait((putting, ending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            if not putting.done():
                putting.cancel()
        if not putting.done() or putting.cancelled():
            raise self._broken()

    async def close(self) -> None:
        """End the stream (the process reads end of file); nothing to do once it ended."""
        if not self.ended:
            with contextlib.suppress(RemoteOSError):
                await self.put(None)

    def _broken(self) -> RemoteOSError:
        return RemoteOSError(
            "the process's stdin takes no more input: the process exited, or its request"
            " to the daemon ended (closed, or the connection broke)",
            sandbox=self._sandbox,
            errno=errno.EPIPE,
            path=None,
            code="broken_pipe",
        )
