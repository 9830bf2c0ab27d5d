"""The client's process API against the real daemon, run as a subprocess on 127.0.0.1.

What test_daemon.py checks on the wire, seen from ``Computer.start``/``attach``/
``kill_process``: ids are checked before anything is sent, and a write to a process
that is gone fails at once with a typed error.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from commandlab_async import Computer, RemoteOSError
from tests.daemon.test_daemon import TOKEN, Daemon, start_daemon, stop_daemons

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def local_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield start_daemon(tmp_path_factory.mktemp("daemon") / "daemon.log", procs)
    finally:
        stop_daemons(procs)


@pytest.fixture
async def computer(local_daemon: Daemon) -> AsyncIterator[Computer]:
    async with aiohttp.ClientSession() as session:
        yield Computer(
            name="local",
            url=f"http://127.0.0.1:{local_daemon.port}",
            token=TOKEN,
            session=session,
            platform="docker",
        )


async def running(computer: Computer, process_id: str) -> bool:
    return any(p.id == process_id and p.running for p in await computer.processes())


async def until_gone(computer: Computer, process_id: str) -> None:
    """Until the daemon no longer runs ``process_id`` (a foreground one is then forgotten)."""
    while await running(computer, process_id):
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("background", [False, True])
async def test_writing_to_a_process_that_exited_is_a_typed_error_not_a_hang(
    computer: Computer, background: bool
) -> None:
    # Issue 27: once 16 chunks were queued for a process that had exited, write() hung.
    async with computer.start(["true"], background=background) as process:
        await until_gone(computer, process.id)
        # Writes may still be taken while the daemon ends the reply; then they fail.
        with pytest.raises(RemoteOSError) as caught:
            async with asyncio.timeout(10):
                while True:
                    await process.write(b"x" * 65536)
        assert caught.value.errno == errno.EPIPE
        assert "exited" in str(caught.value)
        # Once its exit was read, too: the same error, at once.
        assert await process.wait() == 0
        with pytest.raises(RemoteOSError) as again:
            await process.write(b"more")
        assert again.value.errno == errno.EPIPE


async def test_a_running_process_still_takes_stdin_past_the_queue(computer: Computer) -> None:
    async with computer.start(["wc", "-c"]) as process:
        for _ in range(200):  # far more than the queue holds: it drains as it goes
            await process.write(b"x" * 4096)
        await process.close_stdin()
        chunks = [chunk.data async for chunk in process.output()]
        assert b"".join(chunks).strip() == str(200 * 4096).encode()
        with pytest.raises(RuntimeError, match="closed"):
            await process.write(b"after close_stdin")


@pytest.mark.parametrize(
    "template", ["{}?x=y", "{}/signal", "{}#x", "{} ", "{}\n", "{}%3F", "..", "", "p01", "p", "x1"]
)
async def test_malformed_process_ids_are_refused_before_anything_is_sent(
    computer: Computer, template: str
) -> None:
    # Issue 27: ids were not quoted, so kill_process("p1?x=y") killed p1.
    victim = await computer.start(["sleep", "300"], background=True)
    await victim.close()
    process_id = template.format(victim.id)
    try:
        with pytest.raises(ValueError, match="process id"):
            await computer.kill_process(process_id)
        with pytest.raises(ValueError, match="process id"):
            await computer.attach(process_id)
        assert await running(computer, victim.id)
    finally:
        await computer.kill_process(victim.id)
