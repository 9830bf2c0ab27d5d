"""What every emulator's HTTP side shares: a test CA, a loopback listener, ``async with``.

:class:`LocalCA` is a fresh certificate authority (``trustme``) that signs the certificate
of ``127.0.0.1``/``localhost`` (and, for an API server, client certificates); clients trust
its PEM (:meth:`Emulator.write_ca`). :class:`Listener` serves one aiohttp handler for every
path on 127.0.0.1 at an ephemeral port, over TLS when given a context (or on a Unix socket).
:class:`Emulator` is the base of the emulators: it holds the CA and makes ``async with``
start and stop one.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import trustme
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK = "127.0.0.1"


class LocalCA:
    """A fresh test CA whose certificates name ``127.0.0.1`` and ``localhost``."""

    def __init__(self) -> None:
        self._ca = trustme.CA()
        self.pem: bytes = self._ca.cert_pem.bytes()
        """The CA's certificate (PEM): what a client trusts."""

    def server_context(self, *, client_certs: bool = False) -> ssl.SSLContext:
        """A server context with a certificate for 127.0.0.1 signed by this CA; with
        ``client_certs``, client certificates it issued are asked for (not required)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
        if client_certs:
            self._ca.configure_trust(context)
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_cert(self, common_name: str, organization: str) -> tuple[bytes, bytes]:
        """A client certificate for ``common_name``: (certificate PEM, private key PEM)."""
        cert = self._ca.issue_cert(
            common_name, common_name=common_name, organization_name=organization
        )
        return cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()

    def write(self, path: Path) -> Path:
        """Write the CA's PEM to ``path``."""
        path.write_bytes(self.pem)
        return path


class Listener:
    """``handler`` for every method and path, served on 127.0.0.1 at an ephemeral port.

    ``client_max_size`` caps request bodies read whole; ``shutdown_timeout`` is how long
    :meth:`close` lets requests in flight finish; with ``handler_cancellation`` a client
    that goes away cancels its handler (how a stream learns its client left).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        client_max_size: int = 1 << 30,
        shutdown_timeout: float = 1.0,
        handler_cancellation: bool = False,
    ) -> None:
        self._handler = handler
        self._client_max_size = client_max_size
        self._shutdown_timeout = shutdown_timeout
        self._handler_cancellation = handler_cancellation
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _setup(self) -> web.AppRunner:
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handler)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            handler_cancellation=self._handler_cancellation,
        )
        await self._runner.setup()
        return self._runner

    async def start(self, tls: ssl.SSLContext | None = None) -> int:
        """Listen on 127.0.0.1 (over TLS with ``tls``); return the port."""
        runner = await self._setup()
        await web.TCPSite(runner, LOOPBACK, 0, ssl_context=tls).start()
        address: Any = runner.addresses[0]
        self.port = int(address[1])
        return self.port

    async def start_unix(self, path: Path) -> None:
        """Listen on the Unix socket ``path``."""
        await web.UnixSite(await self._setup(), str(path)).start()

    async def close(self) -> None:
        """Stop listening and end the requests in flight."""
        if self._runner is not None:
            await self._runner.cleanup()


class Emulator:
    """The base of the emulators: a test CA, and ``async with`` to start and stop one."""

    ca: LocalCA
    """Signs the emulator's server certificates; set by the subclass's constructor."""

    @property
    def ca_pem(self) -> bytes:
        """The PEM of the CA that signed the emulator's server certificates."""
        return self.ca.pem

    def write_ca(self, path: Path) -> Path:
        """Write the PEM of the CA that signed the emulator's server certificates to ``path``."""
        return self.ca.write(path)

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _serve_https(
        self, handler: Handler, *, client_certs: bool = False, **options: Any
    ) -> tuple[Listener, str]:
        """Serve ``handler`` over HTTPS with a certificate of :attr:`ca`: (listener, base URL).

        ``options`` are :class:`Listener`'s."""
        listener = Listener(handler, **options)
        port = await listener.start(self.ca.server_context(client_certs=client_certs))
        return listener, f"https://{LOOPBACK}:{port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
