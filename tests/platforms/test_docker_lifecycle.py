"""provision() on the real Docker Engine: the happy path and every way out of the block."""

from __future__ import annotations

import asyncio
import os

import pytest

from commandlab_async import (
    AuthenticationError,
    BackendError,
    CommandTimeoutError,
    Computer,
    DockerSpec,
    ReadyTimeoutError,
    RemoteFileNotFoundError,
    SandboxExitedError,
    provision,
)
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from tests.conftest import EXITS_IMAGE, NEVER_HEALTHY_IMAGE, NO_PYTHON_IMAGE, our_containers

pytestmark = pytest.mark.docker


async def test_happy_path_runs_commands_and_moves_files() -> None:
    async with provision(DockerSpec()) as computer:
        assert our_containers() == [computer.name]
        r = await computer.run("echo hello && echo oops >&2 && exit 3")
        assert (r.exit_code, r.stdout, r.stderr) == (3, "hello\n", "oops\n")
        payload = os.urandom(10_000_000)
        await computer.write_file("/tmp/x.bin", payload)
        assert await computer.read_file("/tmp/x.bin") == payload
    assert our_containers() == []


async def test_run_options_and_exact_bytes() -> None:
    async with provision(DockerSpec(env={"GREETING": "hi"})) as computer:
        r = await computer.run(["printf", "\\377\\376%s", "$GREETING"])
        assert r.stdout_bytes == b"\xff\xfe$GREETING"  # a list is an argv: no shell
        assert r.stdout == "\ufffd\ufffd$GREETING"  # invalid UTF-8 is replaced, never raised
        r = await computer.run(
            'echo "$GREETING $EXTRA"; pwd; cat', cwd="/tmp", env={"EXTRA": "there"}, stdin="piped"
        )
        assert r.stdout == "hi there\n/tmp\npiped"
        r = await computer.run("id -u")
        assert r.stdout.strip() != "0", "the default image runs commands as a non-root user"
        with pytest.raises(RemoteFileNotFoundError):
            await computer.read_file("/no/such/file")


async def test_exception_in_body_deletes_the_container() -> None:
    with pytest.raises(ZeroDivisionError):
        async with provision(DockerSpec()) as computer:
            assert our_containers() == [computer.name]
            1 / 0  # noqa: B018


async def test_cancel_inside_body_deletes_the_container() -> None:
    entered = asyncio.Event()

    async def user() -> None:
        async with provision(DockerSpec()):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(user())
    await entered.wait()
    assert len(our_containers()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("when", ["before the engine acted", "after the engine acted"])
async def test_cancel_while_create_is_in_flight(docker_proxy: FaultyDockerProxy, when: str) -> None:
    before = when.startswith("before")
    rule = docker_proxy.add(
        Rule(
            r"POST /containers/create",
            delay_before=0.5 if before else 0,
            delay_after=0 if before else 0.5,
        )
    )

    async def user() -> None:
        async with provision(DockerSpec()):
            pytest.fail("the body must not run")

    task = asyncio.create_task(user())
    await rule.seen.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The create was let finish, then the container deleted by the name chosen up front.
    assert docker_proxy.calls(r"DELETE /containers/[^/]+")


async def test_cancel_while_waiting_for_readiness() -> None:
    task = asyncio.create_task(_enter(DockerSpec(image=NEVER_HEALTHY_IMAGE, ready_timeout=600)))
    while not our_containers():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_around_provision_is_a_plain_timeout() -> None:
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(1.0):
            await _enter(DockerSpec(image=NEVER_HEALTHY_IMAGE, ready_timeout=600))
    assert not isinstance(info.value, ReadyTimeoutError)


async def test_daemon_never_healthy_times_out_naming_sandbox_and_state() -> None:
    spec = DockerSpec(image=NEVER_HEALTHY_IMAGE, ready_timeout=1.5)
    with pytest.raises(ReadyTimeoutError) as info:
        await _enter(spec)
    error = info.value
    assert error.sandbox.startswith("commandlab-")
    assert error.sandbox in str(error)
    assert "running" in error.state
    assert "daemon not answering" in error.state
    assert error.platform == "docker"


@pytest.mark.parametrize(
    ("image", "exit_code", "words"),
    [(EXITS_IMAGE, 3, "boom"), (NO_PYTHON_IMAGE, 127, "python3.99: not found")],
    ids=["exits", "no-python"],
)
async def test_sandbox_that_exits_before_ready_fails_fast_and_says_why(
    image: str, exit_code: int, words: str
) -> None:
    spec = DockerSpec(image=image, ready_timeout=60)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SandboxExitedError) as info:
        await _enter(spec)
    assert loop.time() - started < 30, "an exited sandbox must not wait for the deadline"
    error = info.value
    assert error.sandbox in str(error)
    # What it printed and how it ended, though the engine removed it (AutoRemove).
    assert words in error.logs
    assert words in str(error)
    assert error.exit_code in (exit_code, None)
    if error.exit_code is None:  # removed before it could be read: the state says gone
        assert "gone" in error.state
    else:
        assert f"exit code {exit_code}" in str(error)


async def test_missing_image_is_a_permanent_backend_error() -> None:
    with pytest.raises(BackendError, match="not on the engine"):
        await _enter(DockerSpec(image="commandlab-test/does-not-exist:nope"))


async def test_wrong_token_is_refused() -> None:
    async with provision(DockerSpec()) as computer:
        impostor = Computer(
            name=computer.name,
            url=computer.url,
            token="x" * 43,
            session=computer._session,
            platform="docker",
        )
        with pytest.raises(AuthenticationError):
            await impostor.run("touch /tmp/pwned")
        with pytest.raises(AuthenticationError):
            await impostor.health()
        assert (await computer.run("test -e /tmp/pwned")).exit_code == 1


async def test_command_timeout_kills_the_whole_process_tree() -> None:
    async with provision(DockerSpec()) as computer:
        with pytest.raises(CommandTimeoutError) as info:
            await computer.run("echo started; sleep 300 & sleep 301; echo never", timeout=0.5)
        assert info.value.result.stdout == "started\n"
        survivors = await computer.run(
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c 'sleep 30[01]' || true"
        )
        assert survivors.stdout.strip() == "0"


async def test_token_never_shows_in_repr_or_errors() -> None:
    async with provision(DockerSpec()) as computer:
        token = computer._headers["X-CommandLab-Token"]
        assert token not in repr(computer)
        with pytest.raises(CommandTimeoutError) as info:
            await computer.run("sleep 5", timeout=0.2)
        assert token not in str(info.value)
        assert token not in repr(info.value)


async def _enter(spec: DockerSpec) -> None:
    async with provision(spec):
        pytest.fail("the body must not run")
