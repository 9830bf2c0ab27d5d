"""provision_many on the real engine: concurrency, limits, partial failure, cancellation."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from commandlab_async import (
    DockerSpec,
    EventKind,
    FleetError,
    LifecycleEvent,
    Limits,
    ReadyTimeoutError,
    SpecError,
    provision_many,
    set_limits,
)
from commandlab_async._lifecycle import limits as limits_module
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from tests.conftest import NEVER_HEALTHY_IMAGE, our_containers

pytestmark = pytest.mark.docker

NEVER = DockerSpec(image=NEVER_HEALTHY_IMAGE, ready_timeout=3)


@pytest.fixture(autouse=True)
def default_limits() -> Iterator[None]:
    yield
    limits_module._overrides.clear()


async def test_fleet_of_ten_runs_commands_in_spec_order() -> None:
    events: list[LifecycleEvent] = []
    specs = [DockerSpec(env={"INDEX": str(i)}) for i in range(10)]
    async with provision_many(specs, on_event=events.append) as fleet:
        assert len(fleet) == 10
        assert fleet.failed == []
        assert sorted(our_containers()) == sorted(c.name for c in fleet)
        results = await asyncio.gather(*(c.run("echo $INDEX") for c in fleet))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(10)]
    unhappy = (EventKind.FAILED, EventKind.KEPT, EventKind.POOL_HIT)
    happy_life = [k for k in EventKind if k not in unhappy]  # in order
    kinds = Counter(e.kind for e in events)
    for kind in happy_life:
        assert kinds[kind] == 10, kind
    for computer in fleet:
        assert [e.kind for e in events if e.sandbox == computer.name] == happy_life


async def test_count_of_one_spec() -> None:
    async with provision_many(DockerSpec(), count=3) as fleet:
        names = {c.name for c in fleet}
        assert len(names) == 3


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((DockerSpec(),), "count"),
        ((DockerSpec(), 0), "count"),
        (([DockerSpec()], 2), "count"),
        (([],), "specs"),
        (([DockerSpec(), "nope"],), "spec"),
    ],
)
async def test_bad_fleet_arguments(
    docker_proxy: FaultyDockerProxy, args: tuple[object, ...], field: str
) -> None:
    with pytest.raises(SpecError) as info:
        async with provision_many(*args):  # type: ignore[arg-type]
            pass
    assert info.value.field == field
    assert docker_proxy.requests == []


async def test_one_member_never_healthy_fails_the_whole_fleet() -> None:
    events: list[LifecycleEvent] = []
    with pytest.raises(FleetError) as info:
        async with provision_many([DockerSpec()] * 4 + [NEVER], on_event=events.append):
            pytest.fail("the body must not run")
    (error,) = info.value.exceptions
    assert isinstance(error, ReadyTimeoutError)
    failed = [e.sandbox for e in events if e.kind is EventKind.FAILED]
    assert failed == [error.sandbox]
    assert error.sandbox in str(error)
    # every member that was created was deleted (the no_leaks fixture checks the engine)
    created = {e.sandbox for e in events if e.kind is EventKind.CREATING}
    destroyed = {e.sandbox for e in events if e.kind is EventKind.DESTROYED}
    assert created == destroyed


async def test_keep_going_yields_the_members_that_came_up() -> None:
    async with provision_many([DockerSpec(), NEVER, DockerSpec()], keep_going=True) as fleet:
        assert len(fleet) == 2
        (error,) = fleet.failed
        assert isinstance(error, ReadyTimeoutError)
        # the failed member is already gone; the others are alive
        assert sorted(our_containers()) == sorted(c.name for c in fleet)
        assert [(await c.run("true")).exit_code for c in fleet] == [0, 0]


async def test_cancel_during_fleet_creation_leaves_nothing(docker_proxy: FaultyDockerProxy) -> None:
    # Creates reach the engine, then their answers are held: cancel in the middle of that.
    rule = docker_proxy.add(Rule(r"POST /containers/create", delay_after=0.5))
    task = asyncio.create_task(_enter_fleet([DockerSpec()] * 8))
    await rule.seen.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    created = len(docker_proxy.calls(r"POST /containers/create"))
    assert created == 8
    assert len(docker_proxy.calls(r"DELETE /containers/[^/]+")) == created


async def test_configured_limits_are_never_exceeded(docker_proxy: FaultyDockerProxy) -> None:
    set_limits(
        "docker",
        Limits(
            creates_in_flight=3,
            creates_per_second=10,
            create_burst=2,
            probes_in_flight=2,
            destroys_in_flight=2,
        ),
    )
    # Slow the engine down so that a limit that did not hold would show.
    docker_proxy.add(Rule(r"POST /containers/create", delay_before=0.1))
    docker_proxy.add(Rule(r"DELETE /containers/[^/]+", delay_before=0.1))
    async with provision_many(DockerSpec(), count=8) as fleet:
        assert len(fleet) == 8
    assert docker_proxy.peak(r"POST /containers/create") == 3
    assert docker_proxy.peak(r"DELETE /containers/[^/]+") == 2
    starts = docker_proxy.starts(r"POST /containers/create")
    # Token bucket: a burst of 2, then at most 10 per second. The proxy sees each create
    # a little after the limiter let it go, later on a busy machine: allow one token's
    # worth of such jitter (creates_in_flight alone would let all 8 start by 0.3 s).
    for k, start in enumerate(starts):
        assert start - starts[0] >= max(0, k - 2 + 1) / 10 - 0.1, (k, start - starts[0])


async def test_two_fleets_share_the_process_limits(docker_proxy: FaultyDockerProxy) -> None:
    set_limits("docker", Limits(creates_in_flight=2, creates_per_second=1000))
    docker_proxy.add(Rule(r"POST /containers/create", delay_before=0.1))

    async def fleet() -> None:
        async with provision_many(DockerSpec(), count=4):
            pass

    await asyncio.gather(fleet(), fleet())
    assert len(docker_proxy.calls(r"POST /containers/create")) == 8
    assert docker_proxy.peak(r"POST /containers/create") == 2


async def _enter_fleet(specs: list[DockerSpec]) -> None:
    async with provision_many(specs):
        pytest.fail("the body must not run")
