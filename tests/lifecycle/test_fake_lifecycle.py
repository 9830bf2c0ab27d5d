"""Lifecycle, fleet, cancellation and gc logic against the fake driver: milliseconds each.

The same behaviours are tested on the real engine elsewhere; these pin the logic down
without one, including the paths an engine makes hard to reach on purpose.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from commandlab_async import (
    BackendError,
    BackendTimeoutError,
    CleanupError,
    DockerSpec,
    EventKind,
    FleetError,
    LifecycleEvent,
    Limits,
    ReadyTimeoutError,
    RunningSandbox,
    SandboxDeletedError,
    SandboxExitedError,
    gc,
    provision,
    provision_many,
    set_limits,
)
from commandlab_async._lifecycle import limits as limits_module
from commandlab_async.labels import EXPIRES_AT, MANAGED, SESSION
from commandlab_async.platforms.base import DockerPlatform
from commandlab_async.platforms.docker.options import DockerTarget
from tests.lifecycle.fake_driver import FakeCloud, FakeDriver, FakeSandbox

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

FAST = DockerSpec(ready_timeout=2, destroy_timeout=2)


async def test_happy_path_events_and_cleanup(fake_cloud: FakeCloud) -> None:
    events: list[LifecycleEvent] = []
    async with provision(FAST, on_event=events.append) as computer:
        assert fake_cloud.live() == [computer.name]
        assert (await computer.health())["version"] == "fake"
    assert fake_cloud.live() == []
    assert [e.kind for e in events] == [
        k for k in EventKind if k not in (EventKind.FAILED, EventKind.KEPT, EventKind.POOL_HIT)
    ]
    assert all(driver.closed for driver in fake_cloud.drivers)


async def test_exception_in_body_deletes_and_propagates(fake_cloud: FakeCloud) -> None:
    with pytest.raises(ZeroDivisionError):
        async with provision(FAST):
            1 / 0  # noqa: B018
    assert fake_cloud.live() == []


async def test_cancel_while_create_is_in_flight_lets_it_settle(fake_cloud: FakeCloud) -> None:
    fake_cloud.create_delay = 0.2

    async def user() -> None:
        async with provision(FAST):
            pytest.fail("the body must not run")

    task = asyncio.create_task(user())
    await fake_cloud.requested.wait()  # the backend will act; the answer will be late
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_cloud.settled()  # a delete sent before the create acted would leak
    assert fake_cloud.calls == ["create", "destroy"]
    assert fake_cloud.live() == []


async def test_lost_create_answer_is_retried_and_adopted(fake_cloud: FakeCloud) -> None:
    fake_cloud.lose_create_answers = 1
    async with provision(FAST) as computer:
        assert fake_cloud.live() == [computer.name]
    assert fake_cloud.count("create") == 2
    assert fake_cloud.live() == []


async def test_throttling_is_retried(fake_cloud: FakeCloud) -> None:
    fake_cloud.throttle = 2
    async with provision(FAST):
        pass
    assert fake_cloud.count("create") == 3
    assert fake_cloud.live() == []


async def test_permanent_error_is_translated_not_retried(fake_cloud: FakeCloud) -> None:
    fake_cloud.refuse_create = 400
    with pytest.raises(BackendError) as info:
        async with provision(FAST):
            pytest.fail("the body must not run")
    assert (info.value.code, info.value.transient) == (400, False)
    assert type(info.value.__cause__).__name__ == "FakeApiError"
    assert fake_cloud.count("create") == 1


async def test_sandbox_that_exits_fails_fast(fake_cloud: FakeCloud) -> None:
    fake_cloud.exits = True
    started = time.monotonic()
    with pytest.raises(SandboxExitedError, match=r"exited \(code 3\)"):
        async with provision(DockerSpec(ready_timeout=30)):
            pytest.fail("the body must not run")
    assert time.monotonic() - started < 5  # not the 30 s deadline
    assert fake_cloud.live() == []


async def test_never_healthy_times_out_naming_the_last_state(fake_cloud: FakeCloud) -> None:
    fake_cloud.never_healthy = True
    with pytest.raises(ReadyTimeoutError) as info:
        async with provision(DockerSpec(ready_timeout=0.3)):
            pytest.fail("the body must not run")
    assert "daemon not answering" in info.value.state
    assert fake_cloud.live() == []


async def test_endpoint_resolver_decides_the_url(fake_cloud: FakeCloud) -> None:
    seen: list[RunningSandbox] = []

    async def resolver(running: RunningSandbox) -> str:
        seen.append(running)
        return fake_cloud.url  # e.g. a tunnel; here the same server

    async with provision(DockerSpec(endpoint_resolver=resolver)) as computer:
        assert [r.name for r in seen] == [computer.name]
        assert seen[0].raw == {"name": computer.name}


async def test_cleanup_failure_is_a_note_when_another_error_is_raised(
    fake_cloud: FakeCloud,
) -> None:
    fake_cloud.refuse_destroy = 400
    with pytest.raises(ZeroDivisionError) as info:
        async with provision(FAST):
            1 / 0  # noqa: B018
    assert any("could not delete it" in note for note in info.value.__notes__)
    with pytest.raises(CleanupError):
        async with provision(FAST):
            pass


async def test_cleanup_is_bounded_by_destroy_timeout(fake_cloud: FakeCloud) -> None:
    fake_cloud.destroy_delay = 60
    started = time.monotonic()
    with pytest.raises(CleanupError):
        async with provision(DockerSpec(destroy_timeout=0.2)):
            pass
    assert time.monotonic() - started < 2


async def test_fleet_is_all_or_nothing(fake_cloud: FakeCloud) -> None:
    calls = 0
    original = fake_cloud._api

    async def fail_fourth_create(call: str) -> None:
        nonlocal calls
        await original(call)
        if call == "create":
            calls += 1
            if calls == 4:
                fake_cloud.refuse_create = 400  # every create from here on fails

    fake_cloud._api = fail_fourth_create  # type: ignore[method-assign]
    with pytest.raises(FleetError) as info:
        async with provision_many(FAST, count=6):
            pytest.fail("the body must not run")
    assert all(isinstance(e, BackendError) for e in info.value.exceptions)
    assert fake_cloud.live() == []


async def test_keep_going_yields_the_members_that_came_up(fake_cloud: FakeCloud) -> None:
    names = iter(range(10))

    async def some_exit(call: str) -> None:
        fake_cloud.calls.append(call)
        if call == "create":
            fake_cloud.exits = next(names) % 2 == 1

    fake_cloud._api = some_exit  # type: ignore[method-assign]
    async with provision_many(FAST, count=4, keep_going=True) as fleet:
        assert (len(fleet), len(fleet.failed)) == (2, 2)
        assert sorted(fake_cloud.live()) == sorted(c.name for c in fleet)
    assert fake_cloud.live() == []


async def test_cancel_during_fleet_creation_leaves_nothing(fake_cloud: FakeCloud) -> None:
    fake_cloud.create_delay = 0.1

    async def user() -> None:
        async with provision_many(FAST, count=12):
            pytest.fail("the body must not run")

    task = asyncio.create_task(user())
    await fake_cloud.requested.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_cloud.settled()
    assert fake_cloud.live() == []
    assert fake_cloud.count("destroy") == fake_cloud.count("create")


async def test_gc_deletes_expired_and_spares_live_owners(fake_cloud: FakeCloud) -> None:
    def box(name: str, **labels: str) -> None:
        base = {MANAGED: "true", SESSION: "someone-else", EXPIRES_AT: "never"}
        fake_cloud.sandboxes[name] = FakeSandbox(name, {**base, **labels}, "x")

    box("expired", **{EXPIRES_AT: str(int(time.time()) - 5)})
    box("other-host", **{"commandlab.host": "elsewhere", "commandlab.pid": "1"})
    box("unmanaged", **{MANAGED: "no", EXPIRES_AT: "1"})
    assert [r.name for r in await gc(dry_run=True)] == ["expired"]
    assert fake_cloud.count("destroy") == 0
    reaped = await gc()
    assert [(r.name, r.reason) for r in reaped] == [("expired", "expired")]
    assert fake_cloud.live() == ["other-host", "unmanaged"]


async def test_gc_reports_what_it_could_not_delete(fake_cloud: FakeCloud) -> None:
    labels = {MANAGED: "true", EXPIRES_AT: "1"}
    fake_cloud.sandboxes["stuck"] = FakeSandbox("stuck", labels, "x")
    fake_cloud.refuse_destroy = 400
    with pytest.raises(CleanupError, match="stuck"):
        await gc()


async def test_limits_and_drivers_are_per_target(
    fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = DockerTarget(platform=DockerPlatform.LOCAL, host="unix:///elsewhere.sock")
    monkeypatch.setattr(limits_module, "_overrides", {})
    set_limits("docker", Limits(creates_in_flight=1))
    set_limits(other, Limits(creates_in_flight=3))
    fake_cloud.create_delay = 0.05
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    async with provision_many(FAST, count=3):
        assert fake_cloud.peak_creating == 1  # the platform's limit
    monkeypatch.setenv("DOCKER_HOST", other.host or "")
    async with provision_many(FAST, count=3):
        assert fake_cloud.peak_creating == 3  # the target's own limit wins
    assert [d.target for d in fake_cloud.drivers] == [
        DockerTarget(platform=DockerPlatform.LOCAL, host=None),
        other,
    ]


@pytest.fixture
def one_create_at_a_time(fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> FakeCloud:
    """The fake backend, with creates limited to one in flight for this test only."""
    monkeypatch.setattr(limits_module, "_overrides", {})
    set_limits("docker", Limits(creates_in_flight=1))
    return fake_cloud


async def test_ready_timeout_starts_once_a_create_slot_is_had(
    one_create_at_a_time: FakeCloud,
) -> None:
    one_create_at_a_time.create_delay = 0.3
    # The fourth member queues ~0.9s for its slot, longer than its ready_timeout: the
    # queue is the fleet's, so it still comes up.
    async with provision_many(DockerSpec(ready_timeout=0.6), count=4) as fleet:
        assert len(fleet) == 4


async def test_a_timeout_names_the_time_queued_for_a_slot_apart(
    one_create_at_a_time: FakeCloud,
) -> None:
    fake_cloud = one_create_at_a_time
    fake_cloud.create_delay = 0.6
    spec = DockerSpec(ready_timeout=0.4, destroy_timeout=2)
    async with provision_many(spec, count=2, keep_going=True) as fleet:
        assert len(fleet) == 0
    first, second = sorted((str(e) for e in fleet.failed), key=lambda m: "slot" in m)
    assert "not ready after 0.4s (last state: creating)" in first
    assert "waited" in second
    assert "for a create slot before that" in second
    assert fake_cloud.live() == []


async def test_a_backend_that_never_answers_fails_within_ready_plus_destroy_timeout(
    fake_cloud: FakeCloud,
) -> None:
    fake_cloud.create_delay = 1000  # accepted, never answered
    fake_cloud.destroy_delay = 1000
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReadyTimeoutError) as info:
        async with provision(DockerSpec(ready_timeout=0.5, destroy_timeout=1)):
            pytest.fail("the body must not run")
    # The create settles within half of destroy_timeout, the delete in the other half.
    assert loop.time() - started < 0.5 + 1 + 0.4
    assert "could not delete it" in "".join(info.value.__notes__)
    for future in fake_cloud.pending:
        future.cancel()


async def test_one_silent_backend_call_is_bounded_and_not_retried(
    fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeDriver, "call_timeout", 0.2)
    fake_cloud.create_delay = 1000
    with pytest.raises(BackendTimeoutError, match=r"create: no answer from the backend in 0.2s"):
        async with provision(DockerSpec(ready_timeout=5, destroy_timeout=1)):
            pytest.fail("the body must not run")
    assert fake_cloud.count("create") == 1
    for future in fake_cloud.pending:
        future.cancel()


async def test_a_computer_used_after_its_block_says_so(fake_cloud: FakeCloud) -> None:
    async with provision(FAST) as computer:
        await computer.health()
    with pytest.raises(SandboxDeletedError, match="provision block ended"):
        await computer.health()


async def test_a_kept_sandbox_outlives_its_block_even_when_it_failed(
    fake_cloud: FakeCloud,
) -> None:
    events: list[LifecycleEvent] = []
    with pytest.raises(RuntimeError, match="the test failed"):
        async with provision(FAST, on_event=events.append) as computer:
            computer.keep()
            raise RuntimeError("the test failed")
    assert computer.kept
    assert fake_cloud.count("destroy") == 0
    assert list(fake_cloud.sandboxes) == [computer.name]
    assert events[-1].kind is EventKind.KEPT
    with pytest.raises(SandboxDeletedError, match=r"the sandbox was kept"):
        await computer.health()
    async with provision(FAST) as other:
        pass  # not kept: deleted as usual
    assert other.name not in fake_cloud.sandboxes
