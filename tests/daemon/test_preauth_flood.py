"""Anyone who can reach a daemon, token or not, floods it before authenticating.

The probe (issue 27): ~4,000 connections each sending a 60 KB request head that never
ends OOM-killed the daemon of a 128 MiB sandbox. Here 5,000 such connections go at a
real daemon in a real 128 MiB container, over its Unix socket (a local user) and over
pinned TLS on a TCP port (a network peer, as on a cloud), while an authenticated
command runs: the command completes, the daemon lives, and its peak memory stays under
the bound the README states.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from commandlab_async import Computer, DaemonError, DockerSpec, provision
from commandlab_async._client.tls import make_sandbox_tls
from commandlab_async._client.transport import new_session
from commandlab_async._lifecycle.identity import SESSION_ID
from commandlab_async.labels import SESSION
from commandlab_async.platforms.driver import token_digest
from tests.conftest import docker, our_containers

pytestmark = pytest.mark.docker

FLOOD = 5000
HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000  # never ends
DAEMON_PEAK_BOUND = 48 * 1024 * 1024  # README: "The daemon's own limits"
MEMORY = 128  # MiB


@dataclass
class Flood:
    connected: int = 0
    refused: int = 0


def flood(connect: Callable[[], socket.socket], stop: threading.Event, flood: Flood) -> None:
    """Open FLOOD connections that each send HEAD and then nothing; hold them until stop."""
    held: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            if stop.is_set():
                break
            try:
                sock = connect()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError, ssl.SSLWantWriteError):
                    sock.send(HEAD)
            except OSError:
                flood.refused += 1
                continue
            flood.connected += 1
            held.append(sock)
        stop.wait(60)
    finally:
        for sock in held:
            sock.close()


async def under_flood(computer: Computer, connect: Callable[[], socket.socket]) -> Flood:
    """Run an authenticated command through a flood; return what the flood managed."""
    stop = threading.Event()
    counts = Flood()
    command = asyncio.create_task(computer.run("sleep 4; echo survived", timeout=120))
    flooding = asyncio.create_task(asyncio.to_thread(flood, connect, stop, counts))
    try:
        await asyncio.sleep(0.5)
        # The daemon answers a new authenticated request in the middle of the flood, too.
        deadline = time.monotonic() + 60
        while counts.connected + counts.refused < FLOOD and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await computer.health(timeout=30))["version"]
        result = await command
        assert (result.exit_code, result.stdout) == (0, "survived\n")
    finally:
        stop.set()
        await flooding
        command.cancel()
    return counts


async def survives_a_flood(computer: Computer, connect: Callable[[], socket.socket]) -> None:
    """The flood happened, a command ran through it, the daemon lives within its bound."""
    counts = await under_flood(computer, connect)
    assert counts.connected >= FLOOD // 5  # a flood, however busy the machine
    assert (await computer.run("echo alive")).stdout == "alive\n"
    assert await daemon_peak(computer) < DAEMON_PEAK_BOUND


async def daemon_peak(computer: Computer) -> int:
    """The daemon's peak resident memory (VmHWM), read inside its sandbox."""
    pid = (await computer.health())["pid"]
    status = (await computer.run(["cat", f"/proc/{pid}/status"])).stdout
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) * 1024


async def test_a_preauth_flood_on_the_socket_cannot_kill_the_daemon() -> None:
    async with provision(DockerSpec(memory=MEMORY)) as computer:
        path = computer.url.removeprefix("unix:")

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.settimeout(2)
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return sock

        await survives_a_flood(computer, connect)
    assert our_containers() == []


@contextlib.asynccontextmanager
async def tls_daemon() -> AsyncIterator[tuple[Computer, int, ssl.SSLContext]]:
    """A daemon serving pinned TLS on 127.0.0.1 from a 128 MiB container, as on a cloud.

    On the host's network, so the flood meets the daemon itself, not a port proxy.
    Yields its client, its port and a context that trusts its certificate."""
    name = f"commandlab-flood{secrets.token_hex(4)}"
    tls = await make_sandbox_tls(name)
    token = secrets.token_urlsafe(32)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "COMMANDLAB_TOKEN_SHA256": token_digest(token),
        "COMMANDLAB_HOST": "127.0.0.1",
        "COMMANDLAB_PORT": str(port),
        "COMMANDLAB_TTL": "300",
        **tls.daemon_env(),
    }
    args = ["run", "-d", "--rm", "--name", name, "--network", "host"]
    args += ["--label", f"{SESSION}={SESSION_ID}", "--init"]
    args += ["-m", f"{MEMORY}m", "--memory-swap", f"{MEMORY}m", "--cap-drop", "ALL"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    await asyncio.to_thread(docker, *args, "commandlab/computer:latest")
    session = new_session()
    try:
        computer = Computer(
            name=name,
            url=f"https://127.0.0.1:{port}",
            token=token,
            session=session,
            platform="docker",
            ssl_context=tls.client_context(),
        )
        for _ in range(200):
            with contextlib.suppress(DaemonError):
                await computer.health(timeout=1)
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the TLS daemon never answered")
        yield computer, port, tls.client_context()
    finally:
        await session.close()
        await asyncio.to_thread(docker, "rm", "-f", name)


async def test_a_preauth_flood_over_pinned_tls_cannot_kill_the_daemon() -> None:
    async with tls_daemon() as (computer, port, context):

        def connect() -> socket.socket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=2)
            try:
                return context.wrap_socket(raw)
            except OSError:
                raw.close()
                raise

        await survives_a_flood(computer, connect)
    assert our_containers() == []
