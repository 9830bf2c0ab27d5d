"""Per-sandbox certificates: the client trusts exactly the one it made, nothing else."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from commandlab_async._client.tls import SandboxTls, make_sandbox_tls

pytestmark = pytest.mark.unit


def _server_context(tls: SandboxTls) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory() as private:
        cert, key = Path(private, "cert.pem"), Path(private, "key.pem")
        cert.write_text(tls.cert_pem)
        key.write_text(tls.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


@asynccontextmanager
async def tls_server(tls: SandboxTls) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TLS server with ``tls``'s key, recording what clients send after the handshake."""
    context = _server_context(tls)
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.append(await reader.read(100))
            writer.write(b"pong")
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1], received


async def _talk(port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"token")
        await writer.drain()
        return await reader.read(100)
    finally:
        writer.close()


async def test_the_client_talks_only_to_the_certificate_it_made() -> None:
    mine, other = await asyncio.gather(make_sandbox_tls("sbx-a"), make_sandbox_tls("sbx-b"))
    assert mine.cert_pem != other.cert_pem
    async with tls_server(mine) as (port, received):
        assert await _talk(port, mine.client_context()) == b"pong"
        assert received == [b"token"]
    async with tls_server(other) as (port, received):
        with pytest.raises(ssl.SSLCertVerificationError):
            await _talk(port, mine.client_context())
        await asyncio.sleep(0.05)
        assert b"token" not in b"".join(received), "the token never left the client"


async def test_the_key_stays_out_of_reprs_and_the_cert_is_not_a_ca() -> None:
    tls = await make_sandbox_tls("sbx-a")
    assert "PRIVATE KEY" in tls.key_pem
    assert tls.key_pem not in repr(tls)
    assert "PRIVATE" not in repr(tls)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(tls.cert_pem.encode())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    assert set(tls.daemon_env()) == {"COMMANDLAB_TLS_CERT", "COMMANDLAB_TLS_KEY"}
