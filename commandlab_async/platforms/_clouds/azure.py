"""Azure set-up shared by ACI and AKS: where ARM is, and a signed-in HTTP pipeline.

:class:`AzureSession` holds an aiohttp session trusting the system store, azure-core's
transport over it, and the token credential: the user's own (which they close), or a
``DefaultAzureCredential`` made and closed here.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import http_session

if TYPE_CHECKING:
    import aiohttp
    from azure.core.pipeline.transport import AioHttpTransport

__all__ = ["ARM_ENDPOINT", "SUBSCRIPTION_ENV", "AzureSession", "arm_scope"]

ARM_ENDPOINT = "https://management.azure.com"
SUBSCRIPTION_ENV = "AZURE_SUBSCRIPTION_ID"


def arm_scope(endpoint: str) -> str:
    """The token scope of the Azure Resource Manager at ``endpoint``."""
    return f"{endpoint.rstrip('/')}/.default"


class AzureSession:
    """What an Azure client needs: an aiohttp session (``http``), azure-core's
    ``transport`` over it and a ``credential``. Made by :meth:`open`."""

    def __init__(self, http: aiohttp.ClientSession, transport: AioHttpTransport) -> None:
        self.http = http
        self.transport = transport
        self.credential: Any = None
        """An ``azure.core.credentials_async.AsyncTokenCredential``."""
        self._own_credential: Any = None

    @classmethod
    async def open(cls, credential: Any = None, *, timeout: float | None = None) -> AzureSession:
        """Sign in with ``credential`` (None: ``DefaultAzureCredential``); ``timeout``:
        seconds per request (None: aiohttp's default)."""
        from azure.core.pipeline.transport import AioHttpTransport

        http = await http_session(timeout=timeout)
        # session_owner=False: the session is closed here, after the credential.
        opened = cls(http, AioHttpTransport(session=http, session_owner=False))
        opened.credential = credential
        if credential is None:
            try:
                # Reads the environment and token caches from disk: in a thread.
                opened.credential = opened._own_credential = await asyncio.to_thread(
                    _default_credential, opened.transport
                )
            except BaseException:
                await http.close()
                raise
        return opened

    async def close(self) -> None:
        """Close the credential made here (never the user's), then the session."""
        try:
            if self._own_credential is not None:
                await self._own_credential.close()
                self._own_credential = None
        finally:
            await self.http.close()


def _default_credential(transport: AioHttpTransport) -> Any:
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(transport=transport)
