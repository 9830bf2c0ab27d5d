"""Client set-up the cloud platforms share, one module per vendor (internal).

:mod:`.aws` serves ECS and EKS, :mod:`.azure` ACI and AKS, :mod:`.gcp` Cloud Run and
GKE. Importing any of them needs no SDK: each function imports its vendor's SDK when
called, so a missing extra still shows where it did, in a platform's driver (imported by
the registry) or login, as :class:`~commandlab_async.errors.MissingExtraError`.

Here is what no single vendor owns: the system trust store and an aiohttp session over
it, both made off the event loop, and the expiry of a JWT.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

__all__ = ["http_session", "jwt_expiry", "system_ssl_context"]


async def system_ssl_context() -> ssl.SSLContext:
    """A context trusting the system store as it is now: it loads the store from disk
    (``SSL_CERT_FILE`` honoured when the driver starts, not only when aiohttp is
    imported), so in a thread."""
    return await asyncio.to_thread(ssl.create_default_context)


async def http_session(*, timeout: float | None = None) -> aiohttp.ClientSession:
    """An aiohttp session over :func:`system_ssl_context`; the caller closes it.
    ``timeout``: seconds per request (None: aiohttp's default)."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=await system_ssl_context(), limit=100)
    if timeout is None:
        return aiohttp.ClientSession(connector=connector)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (read, not verified: whoever accepts the token verifies
    it); None when the token is no readable JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
