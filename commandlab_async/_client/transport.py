"""Connection pools for Computers used on an event loop other than the one that made them.

An aiohttp session belongs to one event loop. A sandbox brought up on one loop (a pytest
plugin's background loop, say) may be used from another: a test's, another thread's.
Each such loop gets one session, shared by every Computer used there, and closed when
the loop shuts down: the session is held by an async generator, and the loop's
``shutdown_asyncgens()`` — the last step of ``asyncio.run`` and ``asyncio.Runner`` —
closes every async generator it saw start, which closes the session. A loop closed
without that step leaves the session unclosed, as it would any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler

from .replies import MAX_FIELD, MAX_HEADERS, MAX_LINE, BoundedResponseHandler
from .unix_sockets import RoutingConnector

__all__ = ["on_loop", "session_for"]

T = TypeVar("T")

_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


def new_session() -> aiohttp.ClientSession:
    """A connection pool with no cap, so a fleet's commands never queue; it reaches daemons
    on Unix sockets too (:mod:`.unix_sockets`). Its connections hold a daemon to the reply
    it was asked, in bounded time (:class:`~.replies.BoundedResponseHandler`)."""
    connector = RoutingConnector(limit=0)
    # The one place aiohttp makes a connection's protocol, plain, TLS or Unix socket.
    factory = functools.partial(BoundedResponseHandler, loop=connector._loop)
    connector._factory = cast("functools.partial[ResponseHandler]", factory)
    return aiohttp.ClientSession(
        connector=connector,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
        max_headers=MAX_HEADERS,
    )


async def _hold(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


def session_for(loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
    """The session of ``loop`` (the running loop), closed when that loop shuts down."""
    entry = _sessions.get(loop)
    if entry is not None and not entry[0].closed:
        return entry[0]
    session = new_session()
    holder = _hold(session)
    # Step it to its yield by hand: its first step registers it with the running loop
    # (the loop's asyncgen hooks), so shutdown_asyncgens() will close it.
    with contextlib.suppress(StopIteration):
        holder.asend(None).send(None)
    _sessions[loop] = (session, holder)
    return session


async def on_loop(loop: asyncio.AbstractEventLoop | None, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()`` on ``loop`` when it runs in another thread, else here.

    For hooks bound to the loop that made them (a platform's credentials, say).
    """
    here = asyncio.get_running_loop()
    if loop is None or loop is here or not loop.is_running():
        return await call()

    async def run() -> T:
        return await call()

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))
