"""Engine and daemon faults on the real engine: each ends with zero containers left."""

from __future__ import annotations

import json

import pytest

from commandlab_async import (
    BackendError,
    DaemonUnreachableError,
    DockerSpec,
    ProvisionError,
    ReadyTimeoutError,
    provision,
)
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from tests.conftest import HANGS_IMAGE, WRONG_ANSWERS_IMAGE, docker, our_containers

pytestmark = pytest.mark.docker

CREATE = r"POST /containers/create"
START = r"POST /containers/[^/]+/start"
DELETE = r"DELETE /containers/[^/]+"


@pytest.mark.parametrize(
    "rule",
    [
        Rule(CREATE, status=500, times=2),
        Rule(CREATE, status=503, forward=True, times=1),  # the engine created it, then 503
        Rule(CREATE, drop=True, forward=True, times=1),  # connection reset after the create
        Rule(START, status=500, times=1),
        Rule(START, drop=True, times=1),
    ],
    ids=["create-500", "create-503-after-acting", "create-reset", "start-500", "start-reset"],
)
async def test_transient_engine_errors_are_retried(
    docker_proxy: FaultyDockerProxy, rule: Rule
) -> None:
    docker_proxy.add(rule)
    async with provision(DockerSpec()) as computer:
        assert (await computer.run("echo ok")).stdout == "ok\n"
    assert rule.times == 0, "the fault was injected"


async def test_transient_delete_error_is_retried(docker_proxy: FaultyDockerProxy) -> None:
    rule = docker_proxy.add(Rule(DELETE, status=500, times=2))
    async with provision(DockerSpec()):
        pass
    assert rule.times == 0
    assert len(docker_proxy.calls(DELETE)) == 3


async def test_permanent_engine_error_is_not_retried(docker_proxy: FaultyDockerProxy) -> None:
    docker_proxy.add(Rule(CREATE, status=400))
    with pytest.raises(BackendError) as info:
        async with provision(DockerSpec()):
            pytest.fail("the body must not run")
    assert "injected fault 400" in str(info.value)
    assert info.value.transient is False
    assert info.value.__cause__ is not None
    assert len(docker_proxy.calls(CREATE)) == 1


async def test_engine_down_for_good_gives_up_with_a_transient_error(
    docker_proxy: FaultyDockerProxy,
) -> None:
    docker_proxy.add(Rule(CREATE, status=500))
    with pytest.raises(BackendError) as info:
        async with provision(DockerSpec()):
            pytest.fail("the body must not run")
    assert info.value.transient is True
    assert 2 <= len(docker_proxy.calls(CREATE)) <= 5


async def test_daemon_that_hangs_times_out() -> None:
    with pytest.raises(ReadyTimeoutError) as info:
        async with provision(DockerSpec(image=HANGS_IMAGE, ready_timeout=6)):
            pytest.fail("the body must not run")
    assert "daemon not answering" in info.value.state


async def test_daemon_that_answers_wrongly_is_never_ready() -> None:
    with pytest.raises(ProvisionError):
        async with provision(DockerSpec(image=WRONG_ANSWERS_IMAGE, ready_timeout=6)):
            pytest.fail("the body must not run")


async def test_daemon_dies_mid_command() -> None:
    async with provision(DockerSpec()) as computer:
        with pytest.raises(DaemonUnreachableError):
            await computer.run("sleep 0.2; kill -9 $PPID; sleep 5")
    assert our_containers() == []


async def test_secure_defaults_on_the_engine() -> None:
    async with provision(DockerSpec(cpu=0.5, memory=256, pids_limit=64)) as computer:
        info = json.loads(docker("inspect", computer.name))[0]
        host = info["HostConfig"]
        assert not host["PortBindings"]  # its daemon is on a Unix socket: nothing published
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["CapDrop"] == ["ALL"]
        assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (
            500_000_000,
            256 * 1024 * 1024,
            64,
        )
        assert host["Memory"] == host["MemorySwap"]
        assert (await computer.run("id -u")).stdout.strip() == "1000"
        token = computer._headers["X-CommandLab-Token"]
        # Not a secret from the sandbox itself (the container's init holds it in its
        # environment), but commands do not get it handed to them.
        assert token not in (await computer.run("env")).stdout


async def test_run_as_root_when_asked() -> None:
    async with provision(DockerSpec(run_as_root=True)) as computer:
        assert (await computer.run("id -u")).stdout.strip() == "0"
        assert (await computer.run("chown 1000 /tmp")).exit_code == 0
