"""Command round-trip latency: ``computer.run("true")`` against ``docker exec NAME true``.

One sandbox comes up via ``provision(DockerSpec())`` (its daemon on a Unix socket) and one
with ``DockerOptions(transport="tcp")`` (a port published on 127.0.0.1). After
``--warmup`` runs, ``--runs`` sequential ``await computer.run("true")`` round trips are
timed on each, in alternating halves (client wall clock, request sent to result
decoded). Then the same command runs ``--exec-runs`` times through the Docker CLI
(``docker exec <container name> true``, one process per run, as a user without the daemon
would do it). Prints median and p99 of each and the ratios of the medians. The sandboxes
are deleted when the script ends, even on error or Ctrl-C.

Run:  .venv/bin/python benchmarks/exec_latency.py [--runs 1000] [--exec-runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from _report import latency_row, table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import Computer, DockerOptions, DockerSpec, provision


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
    tcp_spec = DockerSpec(options=DockerOptions(transport="tcp"))
    async with provision(DockerSpec()) as computer, provision(tcp_spec) as over_tcp:
        print(f"sandbox {computer.name} at {computer.url}", flush=True)
        print(f"sandbox {over_tcp.name} at {over_tcp.url}", flush=True)
        for _ in range(args.warmup):
            await run_true(computer)
            await run_true(over_tcp)
        # Alternating halves, so drift of the machine falls on both alike.
        run_samples: list[float] = []
        tcp_samples: list[float] = []
        for _ in range(2):
            run_samples += await time_many(lambda: run_true(computer), args.runs // 2)
            tcp_samples += await time_many(lambda: run_true(over_tcp), args.runs // 2)
        print(f"computer.run: {args.runs} runs done on each", flush=True)
        for _ in range(args.exec_warmup):
            await docker_exec_true(computer.name)
        exec_samples = await time_many(lambda: docker_exec_true(computer.name), args.exec_runs)
        print(f"docker exec: {args.exec_runs} runs done", flush=True)

    run_median = statistics.median(run_samples) * 1000
    tcp_median = statistics.median(tcp_samples) * 1000
    exec_median = statistics.median(exec_samples) * 1000
    rows = [
        latency_row('computer.run("true"), Unix socket', run_samples, digits=3, extremes=True),
        latency_row('computer.run("true"), TCP port', tcp_samples, digits=3, extremes=True),
        latency_row("docker exec NAME true", exec_samples, digits=3, extremes=True),
    ]
    print()
    print("Round trip of `true` in one local Docker sandbox (milliseconds)")
    print()
    print(table(["method", "runs", "median", "p99", "min", "max"], rows))
    print()
    print(f"TCP median / Unix socket median: {tcp_median / run_median:.2f}x")
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
