"""A Computer works from every event loop of the process, not only the one that made it;
and the lifecycle events, history and handles that tools build on."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from commandlab_async import (
    CommandTimeoutError,
    Computer,
    DockerSpec,
    EventKind,
    EventStream,
    LifecycleEvent,
    SandboxNotFoundError,
    connect,
    lifecycle_events,
    provision,
    provision_many,
)
from commandlab_async._client import transport
from commandlab_async.integrations.pytest_plugin.background import BackgroundLoop
from tests.conftest import docker


@pytest.fixture
def background() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop("test-background")
    try:
        yield loop
    finally:
        assert loop.close(60) == []


@pytest.fixture
def elsewhere(background: BackgroundLoop) -> Iterator[Computer]:
    """A sandbox brought up and held on another thread's event loop."""
    hold = background.enter(provision(DockerSpec()), grace=60)
    try:
        yield hold.entered.result()
    finally:
        hold.release()
        hold.finished.result(60)


@pytest.mark.docker
async def test_a_computer_made_on_another_loop_works_from_this_one(elsewhere: Computer) -> None:
    assert (await elsewhere.run("echo here")).stdout == "here\n"
    await elsewhere.write_file("/tmp/x", b"x" * 1_000_000)
    assert len(await elsewhere.read_file("/tmp/x")) == 1_000_000
    async with elsewhere.start(["sh", "-c", "read line; echo got $line"]) as process:
        await process.write(b"it\n")
        await process.close_stdin()
        chunks = [chunk.data async for chunk in process.output()]
    assert b"".join(chunks) == b"got it\n"
    with pytest.raises(CommandTimeoutError):
        await elsewhere.run("sleep 5", timeout=0.2)


@pytest.mark.docker
def test_a_loop_that_ends_closes_its_connection_pool(elsewhere: Computer) -> None:
    """asyncio.run in a third thread: its session is made, used and closed with the loop."""
    seen: list[asyncio.AbstractEventLoop] = []

    async def use() -> str:
        seen.append(asyncio.get_running_loop())
        results = await asyncio.gather(*(elsewhere.run(f"echo {n}") for n in range(5)))
        return "".join(r.stdout for r in results)

    outputs: list[str] = []
    worker = threading.Thread(target=lambda: outputs.append(asyncio.run(use())))
    worker.start()
    worker.join(60)
    assert outputs == ["0\n1\n2\n3\n4\n"]
    session, _ = transport._sessions[seen[0]]
    assert session.closed  # by the loop's shutdown_asyncgens, not by garbage collection
    seen.clear()
    gc.collect()  # and no "Unclosed client session" warning (warnings are errors here)


@pytest.mark.docker
async def test_the_session_stream_sees_every_sandbox_and_a_fleet_stream_its_own() -> None:
    fleet_events = EventStream()
    async with lifecycle_events() as everything:
        async with provision_many(DockerSpec(), count=2, on_event=fleet_events):
            pass
        async with provision(DockerSpec()):
            pass
    fleet_events.close()
    kinds = [e.kind async for e in fleet_events]
    assert kinds.count(EventKind.READY) == 2
    assert kinds.count(EventKind.DESTROYED) == 2
    seen = [e async for e in everything]  # closed by its block: what was buffered, then end
    assert [e.kind for e in seen].count(EventKind.DESTROYED) == 3
    assert everything.dropped == 0


async def test_a_full_stream_drops_the_oldest_and_counts_them() -> None:
    stream = EventStream(maxsize=3)
    for n in range(5):
        stream(LifecycleEvent(f"s{n}", "docker", EventKind.CREATING))
    stream.close()
    stream(LifecycleEvent("late", "docker", EventKind.CREATING))  # closed: ignored
    assert [e.sandbox async for e in stream] == ["s2", "s3", "s4"]
    assert stream.dropped == 2
    with pytest.raises(ValueError, match="maxsize"):
        EventStream(maxsize=0)


async def test_a_stream_wakes_its_reader_from_another_thread() -> None:
    stream = EventStream()

    def produce() -> None:
        for n in range(100):
            stream(LifecycleEvent(f"s{n}", "docker", EventKind.READY))
            time.sleep(0.0005)
        stream.close()

    threading.Thread(target=produce).start()
    async with asyncio.timeout(10):
        received = [e.sandbox async for e in stream]
    assert received == [f"s{n}" for n in range(100)]


@pytest.mark.docker
async def test_history_keeps_the_last_commands_with_tails() -> None:
    async with provision(DockerSpec()) as computer:
        before = time.time()
        await computer.run("echo one")
        await computer.run("head -c 5000 /dev/zero | tr '\\0' x; echo err >&2; exit 4")
        with pytest.raises(CommandTimeoutError):
            await computer.run(["sleep", "5"], timeout=0.2)
        records = computer.history(since=before)
    assert records[0].command == "echo one"
    second = records[1]
    assert (second.exit_code, second.stderr_tail) == (4, "err\n")
    assert second.stdout_tail == "x" * 2048  # the tail only
    third = records[2]
    assert third.command == "sleep 5"
    assert third.exit_code is None
    assert third.error is not None
    assert third.error.startswith("CommandTimeoutError")
    assert computer.history(since=time.time() + 1) == []


@pytest.mark.docker
async def test_a_kept_sandbox_is_reached_from_its_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path))
    async with provision(DockerSpec()) as computer:
        await computer.write_file("/tmp/note", "still here")
        computer.keep()
    try:
        handle = tmp_path / "sandboxes" / f"{computer.name}.json"
        assert handle.stat().st_mode & 0o777 == 0o600
        async with connect(computer.name) as again:
            assert await again.read_file("/tmp/note") == b"still here"
        with pytest.raises(SandboxNotFoundError, match="no handle"):
            async with connect("commandlab-000000000000"):
                pass
    finally:
        docker("rm", "-f", computer.name)
