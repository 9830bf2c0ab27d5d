"""Daemons listening on Unix sockets, reached through the same pool as every other Computer.

A sandbox on the local engine may serve on a Unix socket in a host directory instead of
a published TCP port: no port proxy per sandbox, a faster delete, and a sandbox that
needs no network at all. Its URL is ``unix:<socket path>``. Every Computer of a loop
shares one connection pool, so rather than a pool per socket, the pool's connector
reaches such a daemon at a host name that spells the socket's path (hex, in DNS labels):
nothing to register or forget, and connections are still kept alive per sandbox.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = ["UNIX_SCHEME", "RoutingConnector", "http_url", "socket_path"]

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
