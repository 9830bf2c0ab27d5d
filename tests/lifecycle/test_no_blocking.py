"""The library never blocks the event loop: blockbuster raises on any blocking call made
from a coroutine (file I/O, time.sleep, sync sockets, subprocess waits)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from commandlab_async import DockerSpec, WarmPool, provision, provision_many
from commandlab_async._admin.reaper import gc as reap
from commandlab_async.emulators.aci import AciEmulator
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.emulators.kubernetes import KubeEmulator
from tests.daemon.daemon_bundle import daemon_zipapp
from tests.platforms.aws_support import Aws
from tests.platforms.azure_support import aci_spec
from tests.platforms.gcp_support import cloud_run_spec
from tests.platforms.k8s_support import kube_spec

pytestmark = [pytest.mark.docker, pytest.mark.aws]

# A driver's module is imported on first use (a one-time, blocking import like any
# other); import it up front so that only steady-state behaviour is checked.
pytest.importorskip("commandlab_async.platforms.docker.driver")
pytest.importorskip("commandlab_async.platforms.aws_ecs.driver")
pytest.importorskip("commandlab_async.platforms.gcp_cloud_run.driver")
pytest.importorskip("commandlab_async.platforms.azure_aci.driver")
pytest.importorskip("commandlab_async.platforms.kubernetes.driver")


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    # Finalise what earlier tests left to the garbage collector first (a stopped gRPC
    # server joins a thread when it is freed): not this test's calls, so not its failure.
    gc.collect()
    # The ECS test's resolver runs the daemon's zipapp on the host: the harness builds it
    # once per session, and not under the guard whichever test comes first.
    daemon_zipapp()
    with blockbuster_ctx("commandlab_async") as bb:
        # aiodocker's constructor looks for the Docker socket and context once per
        # driver lease (one stat of a local file per fleet): allowed, and only there.
        for name in ("os.stat", "io.TextIOWrapper.read", "io.BufferedReader.read"):
            if name in bb.functions:
                bb.functions[name].can_block_in("aiodocker/docker.py", "__init__")
        yield bb


async def test_a_whole_lifecycle_never_blocks(blockbuster: BlockBuster) -> None:
    async with provision_many(DockerSpec(), count=2) as fleet:
        for computer in fleet:
            assert (await computer.run("echo ok")).stdout == "ok\n"
            await computer.write_file("/tmp/f", b"x" * 100_000)
            assert len(await computer.read_file("/tmp/f")) == 100_000
    async with provision(DockerSpec()) as computer:
        await computer.health()
    spec = DockerSpec(network="none")
    async with WarmPool(spec, size=2) as pool, provision(spec) as computer:
        await computer.run("true")
        await reap()  # tidies socket directories too
    assert pool.hits == 1


async def test_ecs_lifecycle_never_blocks(aws: Aws, blockbuster: BlockBuster) -> None:
    # botocore reads config files and service models synchronously when a client is
    # made: the driver loads them in a thread first.
    async with provision_many(aws.spec(), count=2) as fleet:
        for computer in fleet:
            assert (await computer.run("true")).exit_code == 0


async def test_cloud_run_lifecycle_never_blocks(
    cloud_run: CloudRunEmulator, blockbuster: BlockBuster
) -> None:
    # Private sandboxes: ID tokens come from google-auth's blocking fetch, in a thread.
    async with provision_many(cloud_run_spec(), count=2) as fleet:
        for computer in fleet:
            assert (await computer.run("true")).exit_code == 0
    assert cloud_run.id_tokens_issued == 2


async def test_aci_lifecycle_never_blocks(aci: AciEmulator, blockbuster: BlockBuster) -> None:
    # The trust store, DefaultAzureCredential and each sandbox's key are made in threads.
    async with provision_many(aci_spec(aci), count=2) as fleet:
        for computer in fleet:
            assert (await computer.run("true")).exit_code == 0
    assert len(aci.calls("POST token")) == 1


async def test_kubernetes_lifecycle_never_blocks(
    kube: KubeEmulator, blockbuster: BlockBuster
) -> None:
    # The kubeconfig is read and its files written in threads; the watch, the proxy and
    # a service reached over pinned TLS (its key made in a thread) run on the loop.
    async with provision_many(kube_spec(), count=2) as fleet:
        for computer in fleet:
            assert (await computer.run("true")).exit_code == 0
    spec = kube_spec({"service": "NodePort", "reach": "service"}, endpoint_resolver=kube.resolver)
    async with provision(spec) as computer:
        await computer.write_file("/tmp/f", b"x" * 100_000)
    assert len(kube.calls("WATCH pods")) == 2
