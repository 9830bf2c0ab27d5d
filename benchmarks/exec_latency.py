"""Command round-trip latency: ``computer.run("true")`` against ``docker exec NAME true``.

One sandbox comes up via ``provision(DockerSpec())``. After ``--warmup`` runs, ``--runs``
sequential ``await computer.run("true")`` round trips are timed (client wall clock,
request sent to result decoded). Then the same command runs ``--exec-runs`` times through
the Docker CLI (``docker exec <container name> true``, one process per run, as a user
without the daemon would do it). Prints median and p99 of both and the ratio of the
medians. The sandbox is deleted when the script ends, even on error or Ctrl-C.

Run:  .venv/bin/python benchmarks/exec_latency.py [--runs 1000] [--exec-runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from _report import table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import Computer, DockerSpec, provision


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def time_many(fn: Callable[[], Awaitable[None]], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` sequential calls of ``fn``."""
    samples: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return samples


async def run_true(computer: Computer) -> None:
    result = await computer.run("true")
    if result.exit_code != 0:
        raise RuntimeError(f"`true` exited with {result.exit_code}")


async def docker_exec_true(name: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        name,
        "true",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"docker exec failed ({process.returncode}): {stderr.decode()}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure the round trip of a trivial command in one local Docker sandbox: "
            'commandlab_async computer.run("true") over the sandbox daemon, against '
            "`docker exec <name> true` through the Docker CLI. Prints median and p99 (ms) "
            "and the ratio of the medians."
        )
    )
    parser.add_argument(
        "--runs", type=int, default=1000, help="timed computer.run round trips (default 1000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed computer.run calls first (default 50)"
    )
    parser.add_argument(
        "--exec-runs",
        type=int,
        default=100,
        help="timed `docker exec` runs (default 100; each takes ~100 ms)",
    )
    parser.add_argument(
        "--exec-warmup", type=int, default=3, help="untimed `docker exec` runs first (default 3)"
    )
    args = parser.parse_args(argv)
    for name in ("runs", "exec_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "exec_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


async def amain(args: argparse.Namespace) -> int:
    # provision deletes the sandbox on every way out of the block, Ctrl-C included.
    async with provision(DockerSpec()) as computer:
        print(f"sandbox {computer.name} at {computer.url}", flush=True)
        for _ in range(args.warmup):
            await run_true(computer)
        run_samples = await time_many(lambda: run_true(computer), args.runs)
        print(f"computer.run: {args.runs} runs done", flush=True)
        for _ in range(args.exec_warmup):
            await docker_exec_true(computer.name)
        exec_samples = await time_many(lambda: docker_exec_true(computer.name), args.exec_runs)
        print(f"docker exec: {args.exec_runs} runs done", flush=True)

    run_median = statistics.median(run_samples) * 1000
    exec_median = statistics.median(exec_samples) * 1000
    rows = [
        [
            'computer.run("true")',
            str(len(run_samples)),
            f"{run_median:.3f}",
            f"{percentile(run_samples, 99) * 1000:.3f}",
            f"{min(run_samples) * 1000:.3f}",
            f"{max(run_samples) * 1000:.3f}",
        ],
        [
            "docker exec NAME true",
            str(len(exec_samples)),
            f"{exec_median:.3f}",
            f"{percentile(exec_samples, 99) * 1000:.3f}",
            f"{min(exec_samples) * 1000:.3f}",
            f"{max(exec_samples) * 1000:.3f}",
        ],
    ]
    print()
    print("Round trip of `true` in one local Docker sandbox (milliseconds)")
    print()
    print(table(["method", "runs", "median", "p99", "min", "max"], rows))
    print()
    print(f"docker exec median / run median: {exec_median / run_median:.1f}x (target ≥ 10x)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted; the sandbox was deleted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
