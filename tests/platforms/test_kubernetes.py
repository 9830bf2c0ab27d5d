"""The Kubernetes driver end to end on the API server emulator, whose pods really run.

Every test checks the wire (what the API server was asked, how often) as well as the result,
and the ``kube`` fixture fails a test that leaves a pod, service, deployment or container.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import CoreV1Api

from commandlab_async import (
    BackendError,
    KubernetesPlatform,
    KubernetesSpec,
    ReadyTimeoutError,
    SandboxExitedError,
    SpecError,
    gc,
    provision,
    provision_many,
)
from commandlab_async._lifecycle.identity import new_identity
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.emulators.faults import Rule
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.labels import EXPIRES_AT, SESSION
from tests.conftest import HANGS_IMAGE, NEVER_HEALTHY_IMAGE, commandlab_cli
from tests.platforms.k8s_support import (
    NAMESPACE,
    kube_spec,
    our_pods,
    start_emulator,
    stop_emulator,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def slow_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEmulator]:
    """An emulator whose pods take a second to be scheduled."""
    emulator = await start_emulator(tmp_path, monkeypatch, schedule_latency=1.0)
    try:
        yield emulator
    finally:
        left = await stop_emulator(emulator)
    assert left == [], f"left behind: {left}"


async def test_sandbox_is_a_locked_down_pod_reached_through_the_proxy(kube: KubeEmulator) -> None:
    async with provision(kube_spec(labels={"team": "evals"})) as computer:
        assert (await computer.run("id -u")).stdout == "1000\n"
        await computer.write_file("/tmp/data.bin", b"\x00\xff" * 100_000)
        assert await computer.read_file("/tmp/data.bin") == b"\x00\xff" * 100_000
        assert computer.url.endswith(f"/namespaces/{NAMESPACE}/pods/{computer.name}:8000/proxy")
        assert our_pods(kube) == [computer.name]
    (post,) = kube.calls("POST pods")
    pod = post.json
    assert pod["metadata"]["labels"]["team"] == "evals"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert computer._headers["X-CommandLab-Token"] not in post.body.decode()
    # Readiness came from one list and one watch; nothing polled the pod.
    assert [r.what for r in kube.requests if r.what != "PROXY pod"] == [
        "POST pods",
        "LIST pods",
        "WATCH pods",
        "DELETE pod",
    ]
    assert our_pods(kube) == []


async def test_a_fleet_shares_one_watch(kube: KubeEmulator) -> None:
    # 20 show it as well as 100 (benchmarks/fleet_kubernetes.py brings up 100 and more).
    async with provision_many(kube_spec(ready_timeout=120), count=20) as fleet:
        results = await asyncio.gather(*(c.run("hostname") for c in fleet))
        assert all(r.exit_code == 0 for r in results)
        assert len(our_pods(kube)) == 20
    assert len(kube.calls("POST pods")) == 20
    assert len(kube.calls("WATCH pods")) == 1
    assert len(kube.calls("LIST pods")) == 1
    assert kube.calls("GET pod") == []
    (watch,) = kube.calls("WATCH pods")
    assert watch.query["allowWatchBookmarks"] in ("true", "True")
    assert watch.query["labelSelector"].startswith(SESSION)


async def test_watch_resumes_after_a_cut_and_lists_again_after_410(
    slow_kube: KubeEmulator,
) -> None:
    async def user() -> str:
        async with provision(kube_spec()) as computer:
            return (await computer.run("echo up")).stdout

    task = asyncio.create_task(user())
    while slow_kube.open_watches() == 0:
        await asyncio.sleep(0.01)
    await slow_kube.drop_watches()
    while slow_kube.open_watches() == 0:
        await asyncio.sleep(0.01)
    await slow_kube.expire_watches()
    assert await task == "up\n"
    watches = slow_kube.calls("WATCH pods")
    assert len(watches) >= 3
    # The cut watch resumed from where it was; only the 410 cost a second list.
    assert watches[1].query["resourceVersion"] >= watches[0].query["resourceVersion"]
    assert len(slow_kube.calls("LIST pods")) == 2


async def test_a_missing_image_fails_fast_with_the_kubelets_reason(kube: KubeEmulator) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxExitedError, match=r"ErrImagePull|ImagePullBackOff"):
        async with provision(kube_spec(image="commandlab/no-such-image:1")):
            pytest.fail("the body must not run")
    assert time.monotonic() - started < 10
    assert our_pods(kube) == []


async def test_an_unschedulable_pod_is_the_state_the_timeout_names(kube: KubeEmulator) -> None:
    kube.never_schedule(".*")
    with pytest.raises(ReadyTimeoutError, match="Unschedulable: 0/1 nodes are available"):
        async with provision(kube_spec(ready_timeout=2)):
            pytest.fail("the body must not run")
    assert our_pods(kube) == []


async def test_a_container_that_exits_fails_fast(kube: KubeEmulator) -> None:
    async def user() -> None:
        async with provision(kube_spec(image=NEVER_HEALTHY_IMAGE, run_as_root=True)):
            pytest.fail("the body must not run")

    task = asyncio.create_task(user())
    # Its process runs but never listens, so the pod is never Ready; then it exits.
    while not any(
        (kube.get("pods", NAMESPACE, n) or {}).get("status", {}).get("phase") == "Running"
        for n in our_pods(kube)
    ):
        await asyncio.sleep(0.01)
    (name,) = our_pods(kube)
    await kube.exit_container(NAMESPACE, name, code=7)
    with pytest.raises(SandboxExitedError, match="exited with code 7"):
        await task
    assert our_pods(kube) == []


async def test_a_daemon_that_never_answers_times_out(kube: KubeEmulator) -> None:
    # It takes connections (so the pod turns Ready) and never answers one.
    spec = kube_spec(image=HANGS_IMAGE, run_as_root=True, ready_timeout=6)
    with pytest.raises(ReadyTimeoutError, match="daemon not answering"):
        async with provision(spec):
            pytest.fail("the body must not run")
    assert len(kube.calls("PROXY pod")) >= 1
    assert our_pods(kube) == []


async def test_a_missing_kubeconfig_is_a_spec_error_and_nothing_else(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError) as info:
        async with provision(kube_spec()):
            pytest.fail("the body must not run")
    assert info.value.field == "kubeconfig"
    assert not getattr(info.value, "__notes__", None), "no cleanup was needed, none failed"
    assert kube.requests == []


async def test_an_api_server_that_refuses_connections_is_one_error_and_no_delete(
    kube: KubeEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The emulator's kubeconfig, its server a loopback port nothing listens on.
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    kubeconfig = kube.write_kubeconfig(tmp_path / "down", namespace=NAMESPACE)
    assert kube.url is not None
    kubeconfig.write_text(kubeconfig.read_text().replace(kube.url, f"https://127.0.0.1:{port}"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with (
        caplog.at_level(logging.WARNING, logger="commandlab_async"),
        pytest.raises(BackendError, match=r"could not reach the API server") as info,
    ):
        async with provision(kube_spec(ready_timeout=10)):
            pytest.fail("the body must not run")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.transient is True
    # Never created, so never deleted: no "could not delete it" after the create's error.
    assert not getattr(info.value, "__notes__", None), "no cleanup was needed, none failed"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "could not delete" not in caplog.text
    assert kube.requests == []


async def test_a_create_that_may_have_reached_the_api_server_stays_one_to_delete(
    kube: KubeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    posts = 0

    async def create_pod(*args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        nonlocal posts
        posts += 1
        if posts == 1:  # sent, and perhaps acted on, before the connection dropped
            raise aiohttp.ServerDisconnectedError()
        async with aiohttp.ClientSession() as session:  # the retries: refused
            return await session.post(f"http://127.0.0.1:{port}/")

    monkeypatch.setattr(CoreV1Api, "create_namespaced_pod", create_pod)
    spec = kube_spec()
    identity = new_identity(spec)
    async with AsyncExitStack() as stack:
        driver = (await open_backend(stack, spec.target())).driver
        with pytest.raises(BackendError, match="Cannot connect to host") as info:
            await driver.create(spec, identity)
        assert posts == driver.attempts
        assert "could not reach the API server" not in str(info.value)
        assert not driver.take_not_created(identity.name), "the first POST may have created it"


async def test_forbidden_is_raised_at_once_in_the_api_servers_words(kube: KubeEmulator) -> None:
    kube.add(Rule("POST pods", status=403))
    with pytest.raises(BackendError, match="pods is forbidden: User") as info:
        async with provision(kube_spec()):
            pytest.fail("the body must not run")
    assert info.value.code == "Forbidden"
    assert info.value.transient is False
    assert len(kube.calls("POST pods")) == 1


async def test_retry_after_is_honoured_and_5xx_retried(kube: KubeEmulator) -> None:
    kube.add(Rule("POST pods", status=429, times=1, body={"retryAfterSeconds": 1}))
    kube.add(Rule("LIST pods", status=500, times=1))
    async with provision(kube_spec()):
        pass
    first, second = kube.calls("POST pods")
    assert second.at - first.at >= 1.0
    assert len(kube.calls("LIST pods")) == 2


async def test_requests_keep_to_the_clusters_rate(kube: KubeEmulator) -> None:
    spec = kube_spec({"requests_per_second": 4, "request_burst": 2})
    async with provision_many(spec, count=4):
        pass
    api = [r for r in kube.requests if r.what != "PROXY pod"]
    span = api[-1].at - api[0].at
    # 4 creates, a list, a watch and 4 deletes: 2 at once, then 4 a second.
    assert len(api) == 10
    assert span >= (len(api) - 2) / 4 * 0.9


@pytest.mark.parametrize("service", ["NodePort", "LoadBalancer"])
async def test_service_reach_is_https_with_a_pinned_certificate(
    kube: KubeEmulator, service: str
) -> None:
    spec = kube_spec({"service": service, "reach": "service"}, endpoint_resolver=kube.resolver)
    async with provision(spec) as computer:
        assert computer.url.startswith("https://127.0.0.1:")
        assert (await computer.run("echo tls")).stdout == "tls\n"
        (post,) = kube.calls("POST services")
        owner = post.json["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Pod", computer.name)
        assert kube.get("services", NAMESPACE, computer.name) is not None
    # The service went with its pod: the cluster's garbage collector deleted it.
    assert kube.calls("DELETE service") == []


async def test_a_load_balancer_without_an_address_is_named_by_the_timeout(
    kube: KubeEmulator,
) -> None:
    kube.load_balancers = False
    options = {"service": "LoadBalancer", "reach": "service"}
    spec = kube_spec(options, endpoint_resolver=kube.resolver, ready_timeout=3)
    with pytest.raises(ReadyTimeoutError, match="LoadBalancer service has no address yet"):
        async with provision(spec):
            pytest.fail("the body must not run")
    assert our_pods(kube) == []


async def test_pod_ip_reach_for_clients_inside_the_cluster(kube: KubeEmulator) -> None:
    spec = kube_spec({"reach": "pod-ip"}, endpoint_resolver=kube.resolver)
    async with provision(spec) as computer:
        assert (await computer.run("echo in")).stdout == "in\n"


async def test_deployment_workload_with_a_service(kube: KubeEmulator) -> None:
    spec = kube_spec({"workload": "deployment", "service": "ClusterIP"})
    async with provision(spec) as computer:
        assert (await computer.run("echo dep")).stdout == "dep\n"
        assert f"deployment {NAMESPACE}/{computer.name}" in kube.live()
        (pod,) = our_pods(kube)
        assert pod.startswith(computer.name + "-")
    assert len(kube.calls("DELETE deployment")) == 1
    assert kube.calls("DELETE pod") == []


async def test_cancel_while_waiting_for_the_watch_leaves_nothing(slow_kube: KubeEmulator) -> None:
    task = asyncio.create_task(_provision_forever(kube_spec()))
    while slow_kube.open_watches() == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert our_pods(slow_kube) == []


async def _provision_forever(spec: KubernetesSpec) -> None:
    async with provision(spec):
        await asyncio.sleep(3600)


async def test_gc_sweeps_the_namespace_by_labels_and_spares_live_siblings(
    kube: KubeEmulator,
) -> None:
    spec = kube_spec()
    async with AsyncExitStack() as stack:
        driver = (await open_backend(stack, spec.target())).driver
        expired = new_identity(spec)
        expired.labels[EXPIRES_AT] = "1"
        await driver.create(spec, expired)
        async with provision(spec) as live:
            reaped = await gc(spec)
            assert [r.name for r in reaped] == [expired.name]
            assert our_pods(kube) == [live.name]


async def _holder(count: int) -> asyncio.subprocess.Process:
    """A process holding ``count`` pods on the emulator (tests/lifecycle/holder.py), once ready."""
    env = {**os.environ, "HOLDER_PLATFORM": KubernetesPlatform.LOCAL.value}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.lifecycle.holder",
        str(count),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_cleans_up_the_pods(kube: KubeEmulator, sig: signal.Signals) -> None:
    proc = await _holder(2)
    assert len(our_pods(kube)) == 0  # another process's session
    pods = [p for p in kube.live() if p.startswith("pod ")]
    assert len(pods) == 2
    proc.send_signal(sig)
    assert await asyncio.wait_for(proc.wait(), 60) == -sig
    assert len(kube.calls("DELETE pod")) == 2
    for entry in pods:
        name = entry.rpartition("/")[2]
        pod = kube.get("pods", NAMESPACE, name)
        assert pod is None or pod["metadata"].get("deletionTimestamp")


async def test_gc_cli_deletes_a_killed_owners_pods_and_spares_the_living(
    kube: KubeEmulator,
) -> None:
    victim = await _holder(2)
    async with provision(kube_spec()) as live:
        victim.kill()
        await victim.wait()
        args = ("gc", "--platform", "kubernetes", "--namespace", NAMESPACE)
        dry = await commandlab_cli(*args, "--dry-run")
        assert dry.count(f"owner process {victim.pid} is gone") == 2
        assert "deleted 2 sandbox(es)" in await commandlab_cli(*args)
        theirs = [p.rpartition("/")[2] for p in kube.live() if p.startswith("pod ")]
        theirs.remove(live.name)
        for name in theirs:  # gone, or on their way (their grace period)
            pod = kube.get("pods", NAMESPACE, name)
            assert pod is None or pod["metadata"].get("deletionTimestamp")
        assert our_pods(kube) == [live.name]
