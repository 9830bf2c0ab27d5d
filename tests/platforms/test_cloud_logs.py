"""``read_logs`` and ``commandlab logs`` off local Docker: a sandbox's daemon log on
Kubernetes (a stream, followed as it comes) and Azure ACI (read whole, followed by
reading it again), on their emulators; ECS and Cloud Run say where their logs are."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import pytest

from commandlab_async import (
    SandboxNotFoundError,
    UnsupportedOperationError,
    provision,
    read_logs,
    remove,
    target_for,
)
from commandlab_async.daemon.protocol import LISTENING
from commandlab_async.emulators.aci import AciEmulator
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.platforms import driver_class
from commandlab_async.platforms.azure_aci import driver as aci_driver
from commandlab_async.platforms.base import Target
from commandlab_async.platforms.driver import SandboxRecord
from tests.platforms.azure_support import aci_spec
from tests.platforms.k8s_support import kube_spec
from tests.platforms.test_saved_handles import elsewhere, kept

STARTED = LISTENING.rstrip().encode()  # what the daemon prints once it serves


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


async def read_all(name: str, where: Target | None = None) -> bytes:
    out = bytearray()
    async with aclosing(read_logs(name, where)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def follow_until_done(name: str, where: Target, started: asyncio.Event) -> bytes:
    """Follow the log; set ``started`` once the daemon's start-up line came."""
    out = bytearray()
    async with aclosing(read_logs(name, where, follow=True)) as chunks:
        async for chunk in chunks:
            out += chunk
            if STARTED in out:
                started.set()
    return bytes(out)


@pytest.mark.docker
@pytest.mark.parametrize("workload", ["pod", "deployment"])
async def test_kubernetes_logs_of_a_pod_and_of_a_deployment(
    kube: KubeEmulator, workload: str
) -> None:
    spec = kube_spec({"workload": workload})
    async with provision(spec) as computer:
        assert STARTED in await read_all(computer.name, spec.target())
    with pytest.raises(SandboxNotFoundError, match="no pod of it"):
        await read_all("cl-never-was", spec.target())
    assert any(r.what == "GET log" for r in kube.requests)


@pytest.mark.docker
async def test_kubernetes_follow_streams_and_ends(kube: KubeEmulator) -> None:
    spec = kube_spec()
    async with provision(spec) as computer:
        # Closed early: the stream is dropped at once, though the pod runs on.
        async with aclosing(read_logs(computer.name, spec.target(), follow=True)) as chunks:
            async for chunk in chunks:
                assert chunk
                break
        # Followed to its end: it ends when the sandbox's block deletes the pod.
        started = asyncio.Event()
        following = asyncio.create_task(follow_until_done(computer.name, spec.target(), started))
        await asyncio.wait_for(started.wait(), 30)
        assert not following.done()
    out = await asyncio.wait_for(following, 30)
    assert STARTED in out
    follows = [r for r in kube.requests if r.what == "GET log"]
    assert len(follows) == 2
    assert all(r.query.get("follow", "").lower() == "true" for r in follows)


@pytest.mark.docker
async def test_aci_logs_read_and_followed(
    aci: AciEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aci_driver, "_FOLLOW_POLL", 0.2)
    spec = aci_spec(aci)
    async with provision(spec) as computer:
        assert STARTED in await read_all(computer.name, spec.target())
        started = asyncio.Event()
        following = asyncio.create_task(follow_until_done(computer.name, spec.target(), started))
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.5)  # read again at least once: nothing new, nothing repeated
        assert not following.done()
    # Its group is gone: following ends, the start-up line passed on once.
    out = await asyncio.wait_for(following, 30)
    assert out.count(STARTED) == 1
    with pytest.raises(SandboxNotFoundError, match="no container group of it"):
        await read_all(computer.name, spec.target())


@pytest.mark.docker
async def test_cli_logs_of_a_kept_kubernetes_sandbox_needs_no_platform(
    kube: KubeEmulator,
) -> None:
    spec = kube_spec()
    computer = await kept(spec)
    try:
        status, out, err = await elsewhere("logs", computer.name)
        assert status == 0, err
        assert LISTENING.rstrip() in out
        # The API finds it the same way, from the saved handle.
        assert STARTED in await read_all(computer.name)
    finally:
        await remove(spec, names=[computer.name])


@pytest.mark.parametrize(
    ("platform", "scope", "where"),
    [
        ("aws-ecs", {"region": "us-east-1"}, "CloudWatch Logs"),
        ("gcp-cloud-run", {"project_id": "p", "region": "r"}, "gcloud logging read"),
    ],
)
def test_ecs_and_cloud_run_say_where_their_logs_are(
    platform: str, scope: dict[str, str], where: str
) -> None:
    target = target_for(platform, **scope)
    driver = driver_class(target.platform)(target)
    with pytest.raises(UnsupportedOperationError, match=where) as caught:
        driver.logs(SandboxRecord("cl-x", {}, ""))
    assert "\n" not in str(caught.value)


def test_aci_follow_passes_on_only_what_is_new() -> None:
    from commandlab_async.platforms.azure_aci.driver import _unseen

    assert _unseen("a\nb\n", 0, "") == "a\nb\n"
    assert _unseen("a\nb\nc\n", 4, "a\nb\n") == "c\n"  # grew in place
    assert _unseen("a\nb\n", 4, "a\nb\n") == ""
    # ACI serves only its last 4 MB: the start moved on; go on after the last line seen.
    assert _unseen("b\nc\nd\n", 4, "a\nb\n"[-2:]) == "c\nd\n"
    assert _unseen("x\ny\n", 4, "a\nb\n") == "x\ny\n"  # nothing seen is left: all of it
