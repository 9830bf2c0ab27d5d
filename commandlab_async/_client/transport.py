"""How requests reach daemons: one connection pool per event loop, Unix sockets included.

Every Computer of a loop shares one aiohttp session with no connection cap, so a fleet's
commands never queue. Its connections bound what a daemon may send
(:class:`~.replies.BoundedResponseHandler`).

**Unix sockets.** A sandbox on the local engine may serve on a Unix socket in a host
directory instead of a published TCP port: no port proxy per sandbox, a faster delete,
and a sandbox that needs no network at all. Its URL is ``unix:<socket path>``. Rather
than a pool per socket, the pool's connector reaches such a daemon at a host name that
spells the socket's path (hex, in DNS labels): nothing to register or forget, and
connections are still kept alive per sandbox.

**Other loops.** An aiohttp session belongs to one event loop. A sandbox brought up on
one loop (a pytest plugin's background loop, say) may be used from another: a test's,
another thread's. Each such loop gets one session, shared by every Computer used there,
and closed when the loop shuts down: the session is held by an async generator, and the
loop's ``shutdown_asyncgens()`` — the last step of ``asyncio.run`` and ``asyncio.Runner``
— closes every async generator it saw start, which closes the session. A loop closed
without that step leaves the session unclosed, as it would any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_proto import ResponseHandler

from ..errors import CommandLabError
from .replies import MAX_FIELD, MAX_HEADERS, MAX_LINE, BoundedResponseHandler

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = [
    "UNIX_SCHEME",
    "RoutingConnector",
    "describe",
    "http_url",
    "new_session",
    "on_loop",
    "reason",
    "session_for",
    "socket_path",
]


UNIX_SCHEME = "unix:"
_DOMAIN = ".commandlab-unix"  # never resolved: the connector answers for it
_LABEL = 60  # hex digits per DNS label (at most 63)


def http_url(url: str) -> str:
    """The HTTP base URL to send requests to for ``url`` (``unix:<path>`` or http[s])."""
    if not url.startswith(UNIX_SCHEME):
        return url
    digits = url.removeprefix(UNIX_SCHEME).encode().hex()
    labels = [digits[i : i + _LABEL] for i in range(0, len(digits), _LABEL)]
    return f"http://{'.'.join(labels)}{_DOMAIN}"


def socket_path(host: str) -> str | None:
    """The socket path a host name of :func:`http_url` spells; None for any other host."""
    if not host.endswith(_DOMAIN):
        return None
    try:
        return bytes.fromhex(host.removesuffix(_DOMAIN).replace(".", "")).decode()
    except ValueError:
        return None


# A host name of http_url (and the scheme before it), wherever aiohttp quotes one.
_ENCODED_HOST = re.compile(r"(?:https?://)?([0-9a-f.]+)" + re.escape(_DOMAIN) + r"(?::[0-9]+)?")


def describe(exc: BaseException) -> str:
    """What went wrong on a connection, in words for a message: no exception reprs, and
    never a host name of :func:`http_url` (aiohttp quotes the URL or the connection key
    in its errors): the socket's path instead."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = exc.path if isinstance(exc, UnixClientConnectorError) else f"{exc.host}:{exc.port}"
        return _spell_paths(f"cannot connect to {where} ({exc.strerror or exc.os_error})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return _spell_paths(str(exc)) or type(exc).__name__


def reason(exc: BaseException) -> str:
    """:func:`describe`, with the kind of an error that is not ours and says little by
    itself ("RuntimeError: Session is closed"): for messages that wrap any exception."""
    text = describe(exc)
    if isinstance(exc, CommandLabError | aiohttp.ClientConnectorError | OSError):
        return text
    kind = type(exc).__name__
    return text if text == kind else f"{kind}: {text}"


def _spell_paths(text: str) -> str:
    """``text`` with each host name of :func:`http_url` written ``unix:<socket path>``."""

    def spelled(match: re.Match[str]) -> str:
        path = socket_path(match[1] + _DOMAIN)
        return UNIX_SCHEME + path if path is not None else "a sandbox's socket"

    return _ENCODED_HOST.sub(spelled, text)


class RoutingConnector(aiohttp.TCPConnector):
    """A TCP connector that connects to the Unix socket a host name spells, if it does."""

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        path = socket_path(req.host)
        if path is None:
            return await super()._create_connection(req, traces, timeout)
        try:
            async with asyncio.timeout(timeout.sock_connect):
                _, protocol = await self._loop.create_unix_connection(self._factory, path)
        except OSError as exc:  # what aiohttp's own UnixConnector raises
            if isinstance(exc, TimeoutError):
                raise  # aiohttp makes it its connection timeout
            raise UnixClientConnectorError(path, req.connection_key, exc) from exc
        return protocol


T = TypeVar("T")

_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


def new_session() -> aiohttp.ClientSession:
    """A connection pool with no cap, so a fleet's commands never queue; it reaches daemons
    on Unix sockets too (:class:`RoutingConnector`). Its connections hold a daemon to the reply
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
