"""provision_many on the real engine: concurrency, limits, partial failure, cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from commandlab_async import (
    CleanupError,
    DockerSpec,
    EventKind,
    FleetError,
    LifecycleEvent,
    Limits,
    ReadyTimeoutError,
    SpecError,
    gc,
    provision_many,
    remove,
    set_limits,
)
from commandlab_async._lifecycle import limits as limits_module
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from commandlab_async.labels import SESSION
from tests.conftest import NEVER_HEALTHY_IMAGE, docker, our_containers

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


async def test_a_fleet_on_an_engine_that_hangs_stops_at_once_and_gc_removes_what_it_left(
    docker_proxy: FaultyDockerProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fleet runs in a process of its own (tests/lifecycle/fleet_worker.py): once it
    # has exited, gc judges what it left orphaned. Its creates are paced: when the engine
    # hangs, two members are up, one create reached the engine, one is held before it,
    # and four wait for a create slot.
    ready, destroy = 3.0, 3.0
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.lifecycle.fleet_worker", "8", str(ready), str(destroy)],
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "DOCKER_HOST": docker_proxy.url},
    )
    try:
        async with asyncio.timeout(30):
            while len([s for s in docker_proxy.spans if re.fullmatch(_START, s[0])]) < 2:
                await asyncio.sleep(0.01)
        docker_proxy.freeze(after=r"POST /containers/create")
        out, _ = await asyncio.wait_for(worker.communicate(), timeout=60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    result = json.loads(out.decode().splitlines()[-1])
    assert result["error"] is not None
    assert result["error"]["type"] == "FleetError"
    events = result["events"]
    up = {name for kind, name, _ in events if kind == "ready"}
    assert 1 <= len(up) <= 2  # the second needs the engine's answers until it is ready
    # A member fails at its ready deadline: ready_timeout after it got its create slot.
    failed_at = min(t + ready for kind, name, t in events if kind == "creating" and name not in up)
    creates = [t for what, t in docker_proxy.arrived if what == "POST /containers/create"]
    assert len(creates) == 4
    assert max(creates) < failed_at  # none once a member had failed
    # Every delete hung (the engine did); each was sent at once, and all ended together
    # within one destroy_timeout of the first failure (not after the creates settled).
    assert result["ended"] - failed_at <= destroy + 1.0, result["ended"] - failed_at
    deletes = [t for what, t in docker_proxy.arrived if re.fullmatch(_DELETE, what)]
    assert len(deletes) == 4
    assert max(deletes) < failed_at + destroy / 2 + 0.5

    # What the engine made before it hung is all still there, started or not: gc removes it.
    monkeypatch.delenv("DOCKER_HOST")  # the real engine from here on
    left = docker(
        "ps",
        "-a",
        "--filter",
        f"label={SESSION}={result['session']}",
        "--format",
        "{{.Names}} {{.State}}",
    ).split("\n")
    states = dict(line.split() for line in left if line)
    assert sorted(states.values()) == ["created", "running", "running"], states
    reaped = await gc()
    assert set(states) <= {r.name for r in reaped}
    assert not docker("ps", "-a", "-q", "--filter", f"label={SESSION}={result['session']}")


async def test_a_delete_budget_starts_when_it_is_sent_not_while_it_queues(
    docker_proxy: FaultyDockerProxy,
) -> None:
    # Two deletes at a time, each taking 0.6 s, of a fleet of 6, with 1 s each: the last
    # two wait 1.2 s for a slot. Every one is sent and done.
    set_limits("docker", Limits(creates_in_flight=6, creates_per_second=100, destroys_in_flight=2))
    docker_proxy.add(Rule(_DELETE, delay_before=0.6))
    async with provision_many(DockerSpec(destroy_timeout=1.0), count=6):
        pass
    assert len(docker_proxy.calls(_DELETE)) == 6
    assert docker_proxy.peak(_DELETE) == 2
    assert our_containers() == []


async def test_deletes_queued_behind_a_wave_that_hung_give_up_with_it(
    docker_proxy: FaultyDockerProxy,
) -> None:
    # Deletes hang; two at a time. The first two time out after their second; the four
    # queued behind them are not sent: the engine answered none, they would hang too.
    set_limits("docker", Limits(creates_in_flight=6, creates_per_second=100, destroys_in_flight=2))
    hang = docker_proxy.add(Rule(_DELETE, delay_before=60, times=2))
    loop = asyncio.get_running_loop()
    started = 0.0
    with pytest.raises(FleetError) as caught:
        async with provision_many(DockerSpec(destroy_timeout=1.0), count=6) as fleet:
            names = [c.name for c in fleet]
            started = loop.time()
    took = loop.time() - started
    assert 0.9 <= took < 2.0, took  # one budget, not three waves of it
    assert len(caught.value.exceptions) == 6
    assert all(isinstance(e, CleanupError) for e in caught.value.exceptions)
    assert len(docker_proxy.calls(_DELETE)) == 2
    assert sum("not sent" in str(e) for e in caught.value.exceptions) == 4
    # Deletes that come later are sent: the engine answers again (the hang was two).
    assert hang.times == 0
    assert sorted(r.name for r in await remove(names=names)) == sorted(names)


_START = r"POST /containers/[^/]+/start"
_DELETE = r"DELETE /containers/[^/]+"
