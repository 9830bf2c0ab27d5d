"""From a warm pool vs cold: the time from the ``provision`` call to the first command's result.

Each sample is ``async with provision(spec) as c: await c.run("true")``, timed from the
call until ``run`` returned (the block's exit, the delete, is not in it). Cold: no pool.
On local Docker, from a pool of ``--size``, two ways:

- steady: a sandbox every ``--every`` seconds (0.4: how a test suite takes them), each
  taken whatever the pool's refills are doing;
- idle: the pool refilled, then ``--idle`` seconds of nothing before each sample.

Then the first command on a fresh sandbox against its second: half a second after
``provision`` returned, ``run("true")`` twice in a row, on cold sandboxes and on sandboxes
handed out by a pool. Whatever a daemon pays once (a worker thread, lazy imports, ...)
shows as the first costing more than the second.

On the Cloud Run emulator (``--latency`` seconds per deploy), cold vs a pool of 2 that has
refilled before each sample.

Then a burst on local Docker: ``--burst`` concurrent samples without a pool, then from a
pool of ``--size``. Reported: the latencies of both (and of the callers the pool had
nothing ready for), how many waited, and the peaks of concurrent creates (against the
limit) and of background refills (against half of it).

Run:  .venv/bin/python benchmarks/warm_pool.py [--runs 50] [--burst 50] [--size 10]
(needs the dev extras and the local images, like the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from _cloud_run import CloudRunEmulator, point_google_at
from _report import latency_row, table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import (
    CloudRunOptions,
    DockerPlatform,
    DockerSpec,
    WarmPool,
    provision,
)
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.specs import Spec


async def first_command(spec: Spec) -> float:
    """Seconds from the provision call to the first command's result."""
    started = time.perf_counter()
    async with provision(spec) as computer:
        result = await computer.run("true")
        took = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"`true` exited with {result.exit_code}")
    return took


async def settled(pool: WarmPool) -> None:
    """Until the pool is full again and nothing is on its way up (at most a minute)."""
    for _ in range(6000):
        if pool.ready == pool.size and not pool.coming:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the pool did not refill: {pool!r}")


async def cold(spec: Spec, runs: int, pause: float) -> list[float]:
    samples = []
    for _ in range(runs):
        samples.append(await first_command(spec))
        await asyncio.sleep(pause)
    return samples


async def first_and_second(spec: Spec, runs: int, size: int | None) -> list[list[str]]:
    """Rows: on fresh sandboxes (from a pool of ``size``, else cold), half a second after
    ``provision`` returned, the first ``run("true")`` and the second right after it; then,
    after another half second of nothing, a third: a first command's cost beside what any
    command costs after the machine sat idle that long."""
    firsts: list[float] = []
    seconds: list[float] = []
    thirds: list[float] = []
    async with AsyncExitStack() as stack:
        if size is not None:
            pool = await stack.enter_async_context(WarmPool(spec, size=size))
        for _ in range(runs):
            if size is not None:
                await settled(pool)
            async with provision(spec) as computer:
                for samples, pause in ((firsts, 0.5), (seconds, 0.0), (thirds, 0.5)):
                    await asyncio.sleep(pause)
                    started = time.perf_counter()
                    await computer.run("true")
                    samples.append(time.perf_counter() - started)
    how = "from a pool" if size is not None else "cold"
    first = statistics.median(firsts)
    return [
        [*latency_row(f"{how}: first command", firsts, digits=2), "-"],
        [
            *latency_row(f"{how}: second, at once", seconds, digits=2),
            f"{first / statistics.median(seconds):.2f}",
        ],
        [
            *latency_row(f"{how}: third, after 0.5s idle", thirds, digits=2),
            f"{first / statistics.median(thirds):.2f}",
        ],
    ]


async def steady(spec: Spec, runs: int, size: int, every: float) -> list[float]:
    """A sample every ``every`` seconds, whether or not the pool has refilled."""
    samples = []
    async with WarmPool(spec, size=size):
        for _ in range(runs):
            started = time.perf_counter()
            samples.append(await first_command(spec))
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - started)))
    return samples


async def idle(spec: Spec, runs: int, size: int, idle_for: float) -> list[float]:
    """A sample from a refilled pool after ``idle_for`` seconds of nothing."""
    samples = []
    async with WarmPool(spec, size=size) as pool:
        for _ in range(runs):
            await settled(pool)
            await asyncio.sleep(idle_for)
            samples.append(await first_command(spec))
    return samples


async def warm(spec: Spec, runs: int, size: int, pause: float) -> list[float]:
    samples = []
    async with WarmPool(spec, size=size) as pool:
        for _ in range(runs):
            await settled(pool)
            await asyncio.sleep(pause)  # the last sample's delete, off the engine
            samples.append(await first_command(spec))
    return samples


async def concurrently(spec: Spec, count: int) -> tuple[list[float], float]:
    """``count`` callers at once: each one's latency, and the time until all were done."""
    started = time.perf_counter()
    samples = await asyncio.gather(*(first_command(spec) for _ in range(count)))
    return list(samples), time.perf_counter() - started


async def burst(spec: Spec, count: int, size: int, pause: float) -> None:
    cold_samples, cold_total = await concurrently(spec, count)
    await asyncio.sleep(pause * 5)  # the burst's deletes, off the engine
    async with AsyncExitStack() as stack:
        backend = await open_backend(stack, spec.target())  # the limiter the pool uses
        limits = backend.limiter.limits
        async with WarmPool(spec, size=size) as pool:
            samples, total = await concurrently(spec, count)
            hits, waited = pool.hits, pool.waited
        creates, refills = backend.limiter.creates.peak, backend.limiter.background.peak
    waits = sorted(samples)[size:]  # the callers the pool had nothing ready for
    print()
    print(f"Burst: {count} concurrent callers, cold vs from a pool of {size} (local Docker)")
    print()
    rows = [
        [*latency_row("cold (no pool)", cold_samples), f"{cold_total:.2f}"],
        [*latency_row("from the pool, all", samples), f"{total:.2f}"],
    ]
    if waits:  # none when the pool had one for every caller
        rows.append([*latency_row(f"from the pool, the {len(waits)} that waited", waits), "-"])
    print(table(["", "n", "p50 ms", "p99 ms", "all done s"], rows))
    print(f"pool/cold, all done: {total / cold_total:.2f}")
    print(f"handed out {hits}; {waited} callers found the pool empty and waited")
    print(
        f"peak creates in flight {creates} (limit {limits.creates_in_flight});"
        f" peak refills {refills} (limit {max(1, limits.creates_in_flight // 2)})"
    )
    assert creates <= limits.creates_in_flight, "the create limit did not hold"


async def cloud_run(runs: int, cold_runs: int, size: int, latency: float) -> list[list[str]]:
    spec = DockerSpec(
        platform=DockerPlatform.GCP_CLOUD_RUN,
        project_id="bench",
        region="us-central1",
        options=CloudRunOptions(public=True),
        ready_timeout=600,
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with CloudRunEmulator(create_latency=latency) as emulator:
            point_google_at(emulator, Path(tmp))
            cold_samples = await cold(spec, cold_runs, 0.2)
            warm_samples = await warm(spec, runs, size, 0.2)
            left = emulator.live()
    assert left == [], f"services left: {left}"
    return [
        latency_row(f"Cloud Run emulator, cold ({latency:g} s deploy)", cold_samples),
        latency_row("Cloud Run emulator, warm pool", warm_samples),
    ]


async def run(args: argparse.Namespace) -> None:
    spec = DockerSpec()
    await first_command(spec)  # warm-up: imports, first connections, page cache
    rows = [
        latency_row("local Docker, cold", await cold(spec, args.cold_runs, args.pause)),
        latency_row(
            f"local Docker, warm pool, one every {args.every:g}s",
            await steady(spec, args.runs, args.size, args.every),
        ),
        latency_row(
            f"local Docker, warm pool, after {args.idle:g}s idle",
            await idle(spec, args.idle_runs, args.size, args.idle),
        ),
    ]
    if not args.no_cloud:
        rows += await cloud_run(args.cloud_runs, args.cloud_cold_runs, 2, args.latency)
    print("Time from the provision call to the first command's result")
    print()
    print(table(["", "n", "p50 ms", "p99 ms"], rows))
    print()
    print("A fresh sandbox's first command vs its second (local Docker)")
    print()
    rows = await first_and_second(spec, args.cold_runs, None)
    rows += await first_and_second(spec, args.cold_runs, args.size)
    print(table(["", "n", "p50 ms", "p99 ms", "first / this"], rows))
    await burst(spec, args.burst, args.size, args.pause)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="warm samples on local Docker")
    parser.add_argument("--cold-runs", type=int, default=20, help="cold samples, local")
    parser.add_argument("--size", type=int, default=10, help="pool size (local, burst)")
    parser.add_argument("--burst", type=int, default=50, help="concurrent callers")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between samples")
    parser.add_argument("--every", type=float, default=0.4, help="steady: seconds per sample")
    parser.add_argument("--idle", type=float, default=2.0, help="idle: seconds before each")
    parser.add_argument("--idle-runs", type=int, default=15, help="idle samples")
    parser.add_argument("--cloud-runs", type=int, default=20, help="warm samples, emulator")
    parser.add_argument("--cloud-cold-runs", type=int, default=5, help="cold, emulator")
    parser.add_argument("--latency", type=float, default=2.0, help="emulated deploy seconds")
    parser.add_argument("--no-cloud", action="store_true", help="skip the emulator")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
