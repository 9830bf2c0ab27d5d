"""Warm pools on the real engine: ready sandboxes handed out at once, never reused, always
deleted; refills within the limits; what crashes leave is gc's."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest

from commandlab_async import (
    DaemonError,
    DockerSpec,
    EventKind,
    FleetError,
    LifecycleEvent,
    Limits,
    ProvisionError,
    SpecError,
    WarmPool,
    gc,
    provision,
    provision_many,
    set_limits,
)
from commandlab_async._lifecycle import limits
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async._lifecycle.limits import Limiter
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.labels import PID, POOL
from tests.conftest import docker, our_containers
from tests.platforms.gcp_support import cloud_run_spec
from tests.platforms.k8s_support import NAMESPACE, kube_spec, our_pods

pytestmark = pytest.mark.docker

SPEC = DockerSpec(ttl=600)


def pool_members(pool: WarmPool) -> list[str]:
    filters = ["--filter", f"label={POOL}={pool.id}"]
    return docker("ps", "-a", *filters, "--format", "{{.Names}}").split()


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_pool_hands_out_fresh_sandboxes_and_refills() -> None:
    events: list[LifecycleEvent] = []
    async with WarmPool(SPEC, size=2) as pool:
        assert pool.ready == 2
        first = set(pool_members(pool))
        assert len(first) == 2
        names = []
        for _ in range(4):  # twice the pool: every one new, none reused
            async with provision(SPEC, on_event=events.append) as computer:
                names.append(computer.name)
                assert (await computer.run("hostname")).stdout.strip() == computer.name
                assert (await computer.run("ls")).stdout == ""  # nobody wrote here before
                await computer.write_file("used", b"by one caller only")
            assert computer.name not in our_containers()  # the used one is deleted
            await eventually(lambda: pool.ready == 2)  # and replaced
        assert len(set(names)) == 4
        assert set(names[:2]) == first  # the first two were the pool's first members
        assert pool.hits == 4
    assert our_containers() == []
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.POOL_HIT) == 4
    assert EventKind.CREATING not in kinds  # the callers saw no cold start
    assert kinds.count(EventKind.DESTROYED) == 4


async def test_a_dead_member_is_never_handed_out() -> None:
    async with WarmPool(SPEC, size=2) as pool:
        dead, _ = pool_members(pool)
        docker("kill", dead)
        for _ in range(2):
            async with provision(SPEC) as computer:
                assert computer.name != dead
                assert (await computer.run("echo ok")).stdout == "ok\n"
        await eventually(lambda: pool.ready == 2)
    assert our_containers() == []


def freeze(name: str) -> None:
    """SIGSTOP the daemon of sandbox ``name`` (the init's child), as code in it could."""
    docker("exec", name, "pkill", "-STOP", "-P", "1", "-f", "/opt/commandlab/daemon.pyz")
    assert "T" in docker("exec", name, "ps", "-o", "stat=", "--ppid", "1")


async def test_frozen_members_do_not_hold_up_a_caller() -> None:
    """Three frozen members made a caller wait 5 s for each, one after another (17.8 s);
    now they are checked at once, and the caller soon waits for a create of its own."""
    async with WarmPool(SPEC, size=3) as pool:
        frozen = pool_members(pool)
        assert len(frozen) == 3
        for name in frozen:
            freeze(name)
        started = time.monotonic()
        async with provision(SPEC) as computer:
            waited = time.monotonic() - started
            assert computer.name not in frozen
            assert (await computer.run("echo ok")).stdout == "ok\n"
        # One after another they cost 5 s each (17.8 s); room for a machine twice as slow.
        assert waited < 8.0, f"waited {waited:.1f}s behind frozen members"
        # They are deleted, never handed out, and replaced.
        await eventually(lambda: not set(frozen) & set(our_containers()))
        await eventually(lambda: pool.ready == 3)
        async with provision(SPEC) as computer:
            assert computer.name not in frozen
    assert our_containers() == []


async def test_a_member_whose_daemon_restarted_is_not_handed_out(kube: KubeEmulator) -> None:
    """A member's daemon restarted by its platform (a Deployment's container killed and
    started again by the kubelet) answers /health at the same address with the same
    token, but it is not the process that became ready: its TTL started over and the
    pool can no longer vouch for it. It is deleted; the caller gets another sandbox."""
    spec = kube_spec({"workload": "deployment", "service": "ClusterIP"}, ttl=600)
    async with WarmPool(spec, size=1) as pool:
        (entry,) = pool._ready
        restarted = entry.member.computer
        assert restarted is not None
        (pod,) = our_pods(kube)
        await restarted.health()
        await kube.exit_container(NAMESPACE, pod)
        killed = time.monotonic()
        while True:  # until the new daemon answers at the member's address
            assert time.monotonic() < killed + 30, "the container was not restarted"
            try:
                health = await restarted.health(timeout=2)
                break
            except DaemonError:
                await asyncio.sleep(0.05)
        assert health["uptime"] < time.monotonic() - killed  # a new process indeed
        async with provision(spec) as computer:
            assert computer.name != restarted.name
            assert (await computer.run("echo fresh")).stdout == "fresh\n"
        assert pool.hits == 1


async def test_an_empty_pool_makes_callers_wait_for_their_own_member() -> None:
    async with WarmPool(SPEC, size=1) as pool:
        async with AsyncExitStack() as stack:
            computers = await asyncio.gather(
                *(stack.enter_async_context(provision(SPEC)) for _ in range(3))
            )
            assert len({c.name for c in computers}) == 3
            assert (pool.waited, pool.hits) == (2, 3)
            results = await asyncio.gather(*(c.run("true") for c in computers))
            assert [r.exit_code for r in results] == [0, 0, 0]
        await eventually(lambda: pool.ready == 1 and pool.coming == 0)
        await eventually(lambda: len(pool_members(pool)) == 1)  # waiters' did not overfill it
    assert our_containers() == []


async def test_a_fleet_draws_from_the_pool_first() -> None:
    events: list[LifecycleEvent] = []
    async with WarmPool(SPEC, size=3) as pool:
        members = set(pool_members(pool))
        async with provision_many(SPEC, count=5, on_event=events.append) as fleet:
            assert len(fleet) == 5
            assert members <= {c.name for c in fleet}
            assert [r.exit_code for r in await asyncio.gather(*(c.run("true") for c in fleet))]
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.POOL_HIT) == 3
    assert kinds.count(EventKind.CREATING) == 2
    assert our_containers() == []


async def test_members_older_than_max_age_are_replaced() -> None:
    async with WarmPool(SPEC, size=1, max_age=1.0) as pool:
        (first,) = pool_members(pool)
        await eventually(lambda: first not in our_containers(), timeout=20)
        await eventually(lambda: pool.ready == 1)
        async with provision(SPEC) as computer:
            assert computer.name != first
    assert our_containers() == []


async def test_cancelling_a_waiting_caller_loses_nothing() -> None:
    async with WarmPool(SPEC, size=1) as pool:
        async with provision(SPEC):  # the only member: the next caller must wait
            waiting = asyncio.create_task(provision(SPEC).__aenter__())
            await eventually(lambda: len(pool._waiters) == 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        await eventually(lambda: pool.ready == 1 and pool.coming == 0)
        # The waiter's create and the refill both came up: one stays, the other goes.
        await eventually(lambda: len(pool_members(pool)) == 1)
    assert our_containers() == []


async def test_closing_the_pool_fails_its_waiters_and_deletes_its_members() -> None:
    pool = WarmPool(SPEC, size=1, wait=False)
    async with pool:
        waiters = [asyncio.create_task(pool.take()) for _ in range(3)]
        await asyncio.sleep(0)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ProvisionError) for r in results), results
    assert "closed" in str(results[0])
    assert our_containers() == []


async def test_a_pool_that_cannot_fill_raises_and_leaves_nothing() -> None:
    spec = DockerSpec(image="commandlab-test/not-an-image:none")
    with pytest.raises(FleetError, match="2 of 2 warm pool members") as info:
        async with WarmPool(spec, size=2):
            pytest.fail("the body must not run")
    assert "is not on the engine" in str(info.value.exceptions[0])
    assert our_containers() == []


async def test_bad_pool_arguments_are_spec_errors() -> None:
    for bad in ({"size": 0}, {"size": True}, {"max_age": 0.5}, {"max_age": 10_000}):
        with pytest.raises(SpecError):
            WarmPool(SPEC, **bad)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="spec"):
        WarmPool("docker")  # type: ignore[arg-type]
    async with WarmPool(SPEC, size=1, wait=False):
        with pytest.raises(SpecError, match="already open"):
            async with WarmPool(DockerSpec(ttl=600), size=1):
                pass
    assert our_containers() == []


async def test_a_burst_from_a_small_pool_holds_the_create_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "_overrides", {})
    set_limits("docker", Limits(creates_in_flight=4))
    async with AsyncExitStack() as stack:
        backend = await open_backend(stack, SPEC.target())
        async with WarmPool(SPEC, size=2) as pool, AsyncExitStack() as held:
            computers = await asyncio.gather(
                *(held.enter_async_context(provision(SPEC)) for _ in range(10))
            )
            assert len({c.name for c in computers}) == 10
            assert backend.limiter.creates.peak <= 4
            assert backend.limiter.background.peak <= 2  # refills: half the slots at most
            assert pool.hits == 10
            assert pool.waited >= 8
    assert our_containers() == []


async def test_refills_wait_while_a_users_create_is_queued() -> None:
    limiter = Limiter(Limits(creates_in_flight=2, creates_per_second=1000, create_burst=100))
    order: list[str] = []
    release = asyncio.Event()

    async def create(who: str, *, background: bool) -> None:
        async with limiter.create(background=background):
            order.append(who)
            await release.wait()

    holders = [asyncio.create_task(create(f"user{i}", background=False)) for i in range(2)]
    await asyncio.sleep(0.01)  # both slots held
    refill = asyncio.create_task(create("refill", background=True))
    queued_user = asyncio.create_task(create("user2", background=False))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*holders, refill, queued_user)
    assert order == ["user0", "user1", "user2", "refill"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_a_crashed_pool_is_gcs_and_a_terminated_one_cleans_up(
    sig: signal.Signals,
) -> None:
    """SIGKILL: gc removes the dead pool's members and leaves a live one's alone.
    SIGTERM: the pool deletes its members itself before the process exits."""

    async def hold_pool() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import asyncio, commandlab_async as c\n"
            "async def main():\n"
            "    async with c.WarmPool(c.DockerSpec(ttl=600), size=3):\n"
            "        print('ready', flush=True)\n"
            "        await asyncio.sleep(3600)\n"
            "asyncio.run(main())\n",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        return proc

    def members_of(proc: asyncio.subprocess.Process) -> list[str]:
        filters = ["--filter", f"label={PID}={proc.pid}", "--filter", f"label={POOL}"]
        return docker("ps", "-a", *filters, "--format", "{{.Names}}").split()

    doomed, live = await hold_pool(), await hold_pool()
    try:
        assert len(members_of(doomed)) == len(members_of(live)) == 3
        doomed.send_signal(sig)
        await asyncio.wait_for(doomed.wait(), 60)
        if sig == signal.SIGKILL:
            left = members_of(doomed)
            assert len(left) == 3  # nobody cleaned up: the TTL and gc remain
            reaped = {r.name: r.reason for r in await gc()}
            assert all("owner process" in reaped[name] for name in left)
        else:
            assert doomed.returncode == -signal.SIGTERM
        assert members_of(doomed) == []
        assert len(members_of(live)) == 3  # a live process's pool is not gc's
    finally:
        for proc in (doomed, live):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 60)
    assert members_of(live) == []


async def test_a_pool_on_an_emulated_cloud(cloud_run: CloudRunEmulator) -> None:
    spec = cloud_run_spec()
    events: list[LifecycleEvent] = []
    async with WarmPool(spec, size=2) as pool:
        assert len(cloud_run.live()) == 2
        async with provision(spec, on_event=events.append) as computer:
            assert computer.name in cloud_run.live()
            assert (await computer.run("echo warm")).stdout == "warm\n"
        await eventually(lambda: pool.ready == 2)
        assert computer.name not in cloud_run.live()
        assert len(cloud_run.live()) == 2
    assert cloud_run.live() == []
    assert events[0].kind == EventKind.POOL_HIT
