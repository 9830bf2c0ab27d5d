"""Sandboxes at the smallest limits a spec allows, tried by a hostile user; and disk.

At the minimum the daemon must keep serving: a command that blows the memory limit is
the one the kernel's OOM killer takes (the daemon raised every command's oom_score_adj),
and a sandbox out of processes or threads answers ``ResourceExhaustedError``, never a
dropped connection.  Commands make no network connections.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from commandlab_async import (
    BackendError,
    CommandResult,
    Computer,
    DaemonUnreachableError,
    DockerSpec,
    ResourceExhaustedError,
    SpecError,
    provision,
)
from commandlab_async.emulators.faults import FaultyDockerProxy
from commandlab_async.specs import MIN_MEMORY, MIN_PIDS
from tests.conftest import docker, our_containers

pytestmark = pytest.mark.docker

KILLED = -9  # a command killed by SIGKILL, as CommandResult reports it
KILLED_UNDER_SH = 128 + 9  # a shell reporting that its child was


def test_the_minimums_are_what_specs_allow() -> None:
    DockerSpec(memory=MIN_MEMORY, pids_limit=MIN_PIDS)
    with pytest.raises(SpecError):
        DockerSpec(memory=MIN_MEMORY - 1)
    with pytest.raises(SpecError):
        DockerSpec(pids_limit=MIN_PIDS - 1)


async def assert_serving(computer: Computer, daemon_pid: int) -> None:
    """The same daemon (not a restarted one) still runs commands."""
    assert (await computer.run("echo ok")).stdout == "ok\n"
    assert (await computer.health())["pid"] == daemon_pid


def outcomes(results: list[CommandResult | BaseException]) -> list[str]:
    """Each result as a word; a dropped connection or anything unexpected fails the test."""
    words = []
    for result in results:
        if isinstance(result, CommandResult):
            words.append("ran")
        elif isinstance(result, ResourceExhaustedError):
            assert result.limit == "pids", result
            words.append("refused")
        else:
            assert not isinstance(result, DaemonUnreachableError), result
            raise AssertionError(f"unexpected {result!r}")
    return words


# ---------------------------------------------------------------- memory


async def test_commands_are_the_oom_killers_choice_and_the_daemon_is_not() -> None:
    async with provision(DockerSpec(memory=MIN_MEMORY)) as computer:
        daemon_pid = (await computer.health())["pid"]
        own = await computer.run(["cat", f"/proc/{daemon_pid}/oom_score_adj"])
        assert own.stdout == "0\n"
        # A shell command raises its own score first; what it starts inherits it.
        shell = await computer.run(
            "cat /proc/self/oom_score_adj; sh -c 'cat /proc/$$/oom_score_adj'"
        )
        assert shell.stdout == "1000\n1000\n"
        # An argv command's is raised by the daemon as soon as it has exec'd.
        argv = await computer.run(["sh", "-c", "sleep 0.2; cat /proc/self/oom_score_adj"])
        assert argv.stdout == "1000\n"


@pytest.mark.parametrize("form", ["argv", "shell"])
async def test_a_command_allocating_twice_the_minimum_memory_is_killed_not_the_daemon(
    form: str,
) -> None:
    hog = f"b = bytearray({2 * MIN_MEMORY} * 1024 * 1024)"
    async with provision(DockerSpec(memory=MIN_MEMORY)) as computer:
        daemon_pid = (await computer.health())["pid"]
        if form == "argv":
            result = await computer.run(["python3", "-c", hog], timeout=60)
            assert result.exit_code == KILLED, result
        else:
            result = await computer.run(f"python3 -c '{hog}'", timeout=60)
            assert result.exit_code in (KILLED, KILLED_UNDER_SH), result
        await assert_serving(computer, daemon_pid)


async def test_a_swarm_of_processes_each_smaller_than_the_daemon_is_killed_not_it() -> None:
    # Each python3 holds ~18 MiB, less than the daemon's ~21 MiB: at equal oom_score_adj
    # the OOM killer would take the daemon first (it did, before commands raised theirs).
    one = "import time; b = bytearray(10 * 1024 * 1024); time.sleep(3); print('done')"
    swarm = f'for i in $(seq 8); do python3 -c "{one}" & done; wait'
    async with provision(DockerSpec(memory=MIN_MEMORY)) as computer:
        daemon_pid = (await computer.health())["pid"]
        result = await computer.run(swarm, timeout=60)
        assert result.stdout.count("done") < 8  # some were killed: the limit was blown
        await assert_serving(computer, daemon_pid)


async def test_at_the_minimum_memory_small_commands_survive_a_hog_beside_them() -> None:
    hog = f"python3 -c 'b = bytearray({2 * MIN_MEMORY} * 1024 * 1024)'"
    async with provision(DockerSpec(memory=MIN_MEMORY)) as computer:
        daemon_pid = (await computer.health())["pid"]
        # A few small commands at once fit next to the daemon...
        small = await asyncio.gather(
            *(computer.run("python3 -c 'import json, time; time.sleep(1)'") for _ in range(4)),
            *(computer.run("sleep 1; echo ok") for _ in range(4)),
        )
        assert [r.exit_code for r in small] == [0] * 8
        # ...and the one that blows the limit is the one killed.
        results = await asyncio.gather(
            computer.run(hog, timeout=60), *(computer.run("sleep 2; echo ok") for _ in range(4))
        )
        assert results[0].exit_code in (KILLED, KILLED_UNDER_SH), results[0]
        assert [r.stdout for r in results[1:]] == ["ok\n"] * 4
        await assert_serving(computer, daemon_pid)


# ---------------------------------------------------------------- pids


async def test_eight_concurrent_runs_at_the_minimum_pids_are_answered() -> None:
    async with provision(DockerSpec(pids_limit=MIN_PIDS)) as computer:
        daemon_pid = (await computer.health())["pid"]
        for command in ("sleep 0.5; echo hi", "sleep 1 | cat", "true"):
            results = await asyncio.gather(
                *(computer.run(command, timeout=60) for _ in range(8)), return_exceptions=True
            )
            assert "ran" in outcomes(results), results
        await assert_serving(computer, daemon_pid)


GREEDY = """
import os, time
while True:  # take every pid there is, and each one that is freed
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(0.001)
"""


async def test_requests_no_thread_can_serve_are_refused_soon_not_queued_or_dropped() -> None:
    async with provision(DockerSpec(pids_limit=MIN_PIDS)) as computer:
        daemon_pid = (await computer.health())["pid"]
        # A command busy for a minute that leaves no pid for a thread nor a process.
        greedy = asyncio.ensure_future(computer.run(["python3", "-c", GREEDY], timeout=120))
        await asyncio.sleep(1.5)
        # Every worker is busy and no new one can start: typed refusals within seconds
        # (the daemon waits a little for a worker), not a wait for the command's end,
        # nor a dropped connection.
        late = await asyncio.wait_for(
            asyncio.gather(*(computer.run("echo hi") for _ in range(4)), return_exceptions=True),
            timeout=15,
        )
        assert outcomes(late) == ["refused"] * 4, late
        assert (await computer.health())["pid"] == daemon_pid  # the loop answers health
        greedy.cancel()  # which kills its process group
        await asyncio.gather(greedy, return_exceptions=True)
        for _ in range(50):  # until the killed processes' pids are back
            try:
                await assert_serving(computer, daemon_pid)
                break
            except ResourceExhaustedError:
                await asyncio.sleep(0.2)
        else:
            await assert_serving(computer, daemon_pid)


async def test_a_disk_limit_is_kept_or_refused_before_anything_is_created(
    docker_proxy: FaultyDockerProxy,
) -> None:
    info = json.loads(docker("info", "--format", "{{json .}}"))
    backing = dict(pair for pair in info.get("DriverStatus") or [] if len(pair) == 2)
    able = info["Driver"] in {"btrfs", "zfs"} or (
        info["Driver"] == "overlay2" and backing.get("Backing Filesystem") == "xfs"
    )
    spec = DockerSpec(disk=128)
    if not able:  # overlay2 on ext4, as on the development machine
        with pytest.raises(BackendError, match="cannot limit a container's filesystem") as err:
            async with provision(spec):
                pytest.fail("the body must not run")
        assert err.value.code == "disk_unsupported"
        assert not err.value.transient
        assert docker_proxy.calls(r"POST /containers/create") == []
        assert getattr(err.value, "__notes__", []) == []  # nothing to clean up
        return
    async with provision(spec) as computer:
        result = await computer.run("head -c 200m /dev/zero > /tmp/big")
        assert result.exit_code != 0
        assert "space" in result.stderr
    assert our_containers() == []
