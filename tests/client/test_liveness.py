"""The liveness watch on its own: probes only after silence, shared, and never in the way
of a cancellation that is not its own. The real daemon's case is in test_deadlines.py."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from commandlab_async._client import computer as computer_module
from commandlab_async._client.computer import Computer
from commandlab_async._client.liveness import Liveness
from commandlab_async.errors import DaemonUnreachableError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


class Dead(Exception):
    pass


class Prober:
    """A daemon that answers health checks (or not) as the test says."""

    def __init__(self, *, alive: bool = True, delay: float = 0.0) -> None:
        self.alive = alive
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if not self.alive:
            raise Dead("no answer")


async def watched(liveness: Liveness, seconds: float) -> str:
    with liveness.watch():
        await asyncio.sleep(seconds)
    return "done"


async def test_a_quick_call_is_never_probed() -> None:
    prober = Prober()
    liveness = Liveness(prober, check_after=0.05)
    for _ in range(20):
        assert await watched(liveness, 0.001) == "done"
    await asyncio.sleep(0.1)  # no timer is left behind either
    assert prober.calls == 0


async def test_a_slow_call_to_a_live_daemon_is_probed_and_goes_on() -> None:
    prober = Prober()
    assert await watched(Liveness(prober, check_after=0.05), 0.4) == "done"
    assert 3 <= prober.calls <= 9


async def test_a_dead_daemon_abandons_the_call_with_the_verdict() -> None:
    prober = Prober(alive=False, delay=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Dead):
        await watched(Liveness(prober, check_after=0.1), 30)
    assert loop.time() - started < 1.0
    assert prober.calls == 1


async def test_concurrent_calls_share_one_probe() -> None:
    prober = Prober(alive=False, delay=0.1)
    liveness = Liveness(prober, check_after=0.05)
    results = await asyncio.gather(
        *(watched(liveness, 30) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, Dead) for r in results)
    assert prober.calls == 1


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    prober = Prober(alive=False, delay=0.2)
    task = asyncio.create_task(watched(Liveness(prober, check_after=0.05), 30))
    await asyncio.sleep(0.1)  # the probe is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_verdict_does_not_swallow_a_cancellation_that_came_with_it() -> None:
    prober = Prober(alive=False, delay=0.1)
    liveness = Liveness(prober, check_after=0.05)
    task = asyncio.create_task(watched(liveness, 30))

    def cancel_too(_: object) -> None:
        task.cancel()  # the caller's own cancel, in the same loop turn as the verdict

    await asyncio.sleep(0.07)  # the watch's probe is under way: share it
    liveness.shared_probe().add_done_callback(cancel_too)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert prober.calls == 1


async def test_credentials_that_never_come_are_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(computer_module, "_HEADERS_TIMEOUT", 0.2)

    async def never() -> dict[str, str]:
        await asyncio.sleep(3600)  # a token endpoint that accepts and never answers
        return {}

    async with aiohttp.ClientSession() as session:
        computer = Computer(
            name="sandbox",
            url="http://127.0.0.1:9",
            token="t",
            session=session,
            platform="kubernetes",
            extra_headers=never,
        )
        with pytest.raises(DaemonUnreachableError, match="credentials"):
            await computer.run("true")
