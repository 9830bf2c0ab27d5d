"""Every wait has a deadline, on the real engine: a frozen daemon, a silent engine, an
engine that is not there, and a Computer kept past its block."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from commandlab_async import (
    BackendError,
    BackendTimeoutError,
    DaemonUnresponsiveError,
    DockerSpec,
    ReadyTimeoutError,
    SandboxDeletedError,
    gc,
    provision,
)
from commandlab_async._client import computer as computer_module
from commandlab_async._client.computer import Computer
from commandlab_async._client.liveness import LIVENESS_TIMEOUT
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from tests.conftest import our_containers

pytestmark = pytest.mark.docker

# What a loaded CI machine may add to a bound before the test calls it broken.
SLACK = 3.0


@pytest.fixture
def silent_engine(docker_proxy: FaultyDockerProxy) -> FaultyDockerProxy:
    """An engine that accepts every request and never answers."""
    docker_proxy.add(Rule(r".*", delay_before=3600))
    return docker_proxy


async def test_a_frozen_daemon_is_a_typed_error_within_the_liveness_bound() -> None:
    loop = asyncio.get_running_loop()
    async with provision(DockerSpec()) as computer:
        started = loop.time()
        with pytest.raises(DaemonUnresponsiveError, match="stopped answering"):
            # Code in the sandbox runs as the daemon's user: it can stop the daemon.
            await computer.run("kill -STOP $PPID")
        assert loop.time() - started < LIVENESS_TIMEOUT + SLACK
        started = loop.time()
        with pytest.raises(DaemonUnresponsiveError):
            await computer.read_file("/etc/hostname")  # no timeout given, still bounded
        assert loop.time() - started < LIVENESS_TIMEOUT + SLACK
    assert our_containers() == []


async def test_a_long_silent_command_is_not_a_frozen_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(computer_module, "CHECK_AFTER", 0.2)
    probes = 0
    real_probe = Computer._probe

    async def counted(self: Computer) -> None:
        nonlocal probes
        probes += 1
        await real_probe(self)

    monkeypatch.setattr(Computer, "_probe", counted)
    async with (
        provision(DockerSpec()) as computer,
        computer.start("sleep 1.5; echo done") as process,
    ):
        result = await computer.run("sleep 1.5; echo done")
        assert await process.wait() == 0
    assert result.stdout == "done\n"
    assert probes >= 3, "the daemon was asked while the commands were silent"


async def test_an_engine_that_never_answers_fails_by_the_deadlines(
    silent_engine: FaultyDockerProxy,
) -> None:
    """The first question (is the image there?) gets no answer: the ready deadline ends
    it, and nothing was created. (An engine that hangs once creates are sent:
    tests/lifecycle/test_fleet.py.)"""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReadyTimeoutError, match="last state: checking its image") as info:
        async with provision(DockerSpec(ready_timeout=2, destroy_timeout=2)):
            pytest.fail("the body must not run")
    assert loop.time() - started < 2 + SLACK
    assert getattr(info.value, "__notes__", []) == []  # nothing was created to delete
    assert silent_engine.calls(r"POST .*/containers/create.*") == []


async def test_an_engine_that_is_not_there_adds_no_cleanup_noise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with (
        caplog.at_level(logging.WARNING, logger="commandlab_async"),
        pytest.raises(BackendError, match="Cannot connect") as info,
    ):
        async with provision(DockerSpec()):
            pytest.fail("the body must not run")
    assert getattr(info.value, "__notes__", []) == []  # nothing was created to delete
    assert caplog.records == []


async def test_a_computer_kept_past_its_block_says_why() -> None:
    async with provision(DockerSpec()) as computer:
        in_flight = asyncio.create_task(computer.run("sleep 30"))
        await asyncio.sleep(0.3)
    with pytest.raises(SandboxDeletedError, match="provision block ended"):
        await in_flight
    with pytest.raises(SandboxDeletedError, match="provision block ended"):
        await computer.run("true")
    assert our_containers() == []


async def test_gc_against_an_engine_that_never_answers_stops_at_its_deadline(
    silent_engine: FaultyDockerProxy,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendTimeoutError, match=r"gc did not finish within 1\.5s"):
        await gc(timeout=1.5)
    assert loop.time() - started < 1.5 + SLACK


async def test_the_gc_command_stops_at_its_deadline_with_one_line(
    silent_engine: FaultyDockerProxy,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commandlab_async.integrations.cli",
        "gc",
        "--dry-run",
        "--timeout",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    (line,) = err.decode().splitlines()
    assert "gc did not finish within 1s" in line
