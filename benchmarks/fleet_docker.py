"""Fleet bring-up and teardown on local Docker: the library against raw aiodocker.

For each fleet size N this measures, with the median of ``--repeat`` rounds per cell:

(a) library, concurrent: ``async with provision_many(DockerSpec(), count=N)`` — seconds
    from the call until the block body is entered (all N daemons answered an
    authenticated health request), then seconds for the exit of the block (all deleted).
(b) baseline, concurrent: hand-written aiodocker + aiohttp doing the same work: create,
    start, inspect for the host port, poll ``GET /health`` every 10 ms until 200, then
    delete everything concurrently.
(c) library, one after another: N sequential ``async with provision(DockerSpec())``;
    ready and destroyed are the sums of the per-sandbox times (only N <= --sequential-max).
(t) library over TCP: (a) with ``DockerOptions(transport="tcp")``, its daemons on published
    ports as the baseline's are; (a) serves them on Unix sockets (the default).

It also reports client CPU seconds per sandbox lifecycle for (a) and (b), and the client
memory held per open sandbox (tracemalloc, in a separate untimed round).

Run:  .venv/bin/python benchmarks/fleet_docker.py [--sizes 1,10,50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import secrets
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
from _report import table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import DockerOptions, DockerSpec, provision, provision_many
from commandlab_async._lifecycle.identity import SESSION_ID
from commandlab_async.labels import SESSION

IMAGE = "commandlab/computer:latest"
DAEMON_PORT = 8000
BASELINE_LABEL = "commandlab.benchmark"
BASELINE_LABEL_VALUE = "baseline"
BASELINE_TTL = 600
POLL_INTERVAL = 0.010
READY_TIMEOUT = 120.0
PROBE_TIMEOUT = 5.0
MIB = 1024 * 1024
DEFAULTS = DockerSpec()
"""The library's default spec: the baseline copies its resource limits."""
OVER_TCP = DockerSpec(options=DockerOptions(transport="tcp"))
"""(t): the library with its daemons on published TCP ports, as the baseline's are."""


# --------------------------------------------------------------------------- results


@dataclass
class Lifecycle:
    """One fleet's timings: ready (all healthy) and destroyed (all deleted), seconds."""

    ready: float
    destroyed: float
    cpu: float = 0.0
    """Client CPU seconds (process_time) for the whole lifecycle of the fleet."""


@dataclass
class Cell:
    """The samples of one (method, N) pair."""

    samples: list[Lifecycle] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(self.values(attr))

    def values(self, attr: str) -> list[float]:
        return [float(getattr(s, attr)) for s in self.samples]


# --------------------------------------------------------------------------- (a) and (c)


async def library_fleet(n: int, spec: DockerSpec = DEFAULTS) -> Lifecycle:
    """(a) ``provision_many(DockerSpec(), count=n)``: time to enter, time to exit."""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    async with provision_many(spec, count=n) as fleet:
        t1 = time.perf_counter()
        assert len(fleet) == n
    t2 = time.perf_counter()
    cpu = time.process_time() - cpu0
    return Lifecycle(ready=t1 - t0, destroyed=t2 - t1, cpu=cpu)


async def library_sequential(n: int) -> Lifecycle:
    """(c) n sequential ``provision(DockerSpec())``: sums of per-sandbox ready/exit times."""
    spec = DockerSpec()
    ready = destroyed = 0.0
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        async with provision(spec):
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        ready += t1 - t0
        destroyed += t2 - t1
    return Lifecycle(ready=ready, destroyed=destroyed, cpu=time.process_time() - cpu0)


# --------------------------------------------------------------------------- (b) baseline


def baseline_config(token: str) -> dict[str, Any]:
    """The container config of the library's Docker driver, written out by hand.

    Same image, daemon env, exposed port, loopback ephemeral port binding, AutoRemove,
    Init and resource limits/security options (the DockerSpec defaults), so the engine
    does the same work for both.
    """
    spec = DEFAULTS
    port = f"{DAEMON_PORT}/tcp"
    return {
        "Image": IMAGE,
        "Env": [
            f"COMMANDLAB_TOKEN_SHA256={hashlib.sha256(token.encode()).hexdigest()}",
            f"COMMANDLAB_PORT={DAEMON_PORT}",
            f"COMMANDLAB_TTL={BASELINE_TTL}",
        ],
        "Labels": {BASELINE_LABEL: BASELINE_LABEL_VALUE},
        "ExposedPorts": {port: {}},
        "HostConfig": {
            "PortBindings": {port: [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "AutoRemove": True,
            "Init": True,
            "NanoCpus": int(spec.cpu * 1e9),
            "Memory": spec.memory * MIB,
            "MemorySwap": spec.memory * MIB,
            "PidsLimit": spec.pids_limit,
            "SecurityOpt": ["no-new-privileges"],
            "CapDrop": ["ALL"],
            "CapAdd": [],
        },
    }


class BaselineFleet:
    """Raw aiodocker + aiohttp: N containers up concurrently, then down concurrently.

    One Docker client and one HTTP session (no connection cap) serve the whole fleet,
    as the library does. Names are chosen before the create call so that cleanup can
    always find what was made.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.names = [f"clbench-{secrets.token_hex(6)}" for _ in range(n)]
        self.docker: aiodocker.Docker | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BaselineFleet:
        self.docker = aiodocker.Docker()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            await asyncio.gather(*(self._up(name) for name in self.names))
        except BaseException:
            await self.destroy_all()
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.destroy_all()
        finally:
            await self.close()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.docker is not None:
            await self.docker.close()

    async def _up(self, name: str) -> None:
        assert self.docker is not None
        assert self.http is not None
        token = secrets.token_urlsafe(32)
        container = await self.docker.containers.create(baseline_config(token), name=name)
        await container.start()
        info = await container.show()
        host_port = info["NetworkSettings"]["Ports"][f"{DAEMON_PORT}/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{host_port}/health"
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            try:
                async with self.http.get(url, headers=headers, timeout=timeout) as response:
                    await response.read()
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{name}: daemon not healthy after {READY_TIMEOUT}s")
            await asyncio.sleep(POLL_INTERVAL)

    async def destroy_all(self) -> None:
        assert self.docker is not None
        docker = self.docker

        async def delete(name: str) -> None:
            try:
                await docker.containers.container(name).delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status not in (404, 409):
                    raise

        await asyncio.gather(*(delete(name) for name in self.names))


async def baseline_fleet(n: int) -> Lifecycle:
    """(b) the hand-written baseline, timed like (a)."""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    async with BaselineFleet(n):
        t1 = time.perf_counter()
    t2 = time.perf_counter()
    cpu = time.process_time() - cpu0
    return Lifecycle(ready=t1 - t0, destroyed=t2 - t1, cpu=cpu)


# --------------------------------------------------------------------------- memory


async def memory_per_sandbox(n: int, *, library: bool) -> float:
    """Bytes traced by tracemalloc per open sandbox, inside a fleet of n (untimed round)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if library:
            async with provision_many(DockerSpec(), count=n):
                gc.collect()
                inside = tracemalloc.get_traced_memory()[0]
        else:
            async with BaselineFleet(n):
                gc.collect()
                inside = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (inside - before) / n


# --------------------------------------------------------------------------- cleanup


async def sweep() -> list[str]:
    """Backstop: delete every baseline container and every library container of this process."""
    removed: list[str] = []
    async with aiodocker.Docker() as docker:
        for label in (f"{BASELINE_LABEL}={BASELINE_LABEL_VALUE}", f"{SESSION}={SESSION_ID}"):
            filters = json.dumps({"label": [label]})
            for container in await docker.containers.list(all=True, filters=filters):
                try:
                    await container.delete(force=True, v=True)
                    removed.append(container.id[:12])
                except aiodocker.DockerError as exc:
                    if exc.status not in (404, 409):
                        raise
    return removed


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def report(
    sizes: Sequence[int],
    cells: dict[tuple[str, int], Cell],
    memory: dict[str, float],
    memory_n: int,
    repeat: int,
    show_samples: bool,
) -> None:
    def med(method: str, n: int, attr: str) -> float | None:
        cell = cells.get((method, n))
        return cell.median(attr) if cell and cell.samples else None

    print()
    print(f"Fleet lifecycle on local Docker, median of {repeat} rounds (seconds)")
    print("a = library provision_many, b = raw aiodocker baseline, c = library sequential")
    print()
    rows = []
    for n in sizes:
        a_r, b_r, c_r = med("a", n, "ready"), med("b", n, "ready"), med("c", n, "ready")
        a_d, b_d = med("a", n, "destroyed"), med("b", n, "destroyed")
        c_d = med("c", n, "destroyed")
        rows.append(
            [
                str(n),
                fmt(a_r),
                fmt(b_r),
                fmt(ratio(a_r, b_r), ".2f"),
                fmt(c_r),
                fmt(ratio(c_r, a_r), ".2f"),
                fmt(a_d),
                fmt(b_d),
                fmt(ratio(a_d, b_d), ".2f"),
                fmt(c_d),
            ]
        )
    headers = [
        "N",
        "a ready",
        "b ready",
        "a/b",
        "c ready",
        "c/a",
        "a destroyed",
        "b destroyed",
        "a/b",
        "c destroyed",
    ]
    print(table(headers, rows))

    print()
    print("Client CPU per sandbox lifecycle (process_time, ms), median of rounds")
    print()
    rows = []
    for n in sizes:
        a_c, b_c = med("a", n, "cpu"), med("b", n, "cpu")
        a_c = None if a_c is None else a_c / n * 1000
        b_c = None if b_c is None else b_c / n * 1000
        rows.append([str(n), fmt(a_c, ".2f"), fmt(b_c, ".2f"), fmt(ratio(a_c, b_c), ".2f")])
    print(table(["N", "a cpu/sandbox", "b cpu/sandbox", "a/b"], rows))

    if memory:
        print()
        print(f"Client memory per open sandbox (tracemalloc, fleet of {memory_n}, separate round)")
        print()
        rows = [
            [label, f"{value / 1024:.1f} KiB"]
            for label, value in (
                ("a library (per open Computer)", memory.get("a")),
                ("b baseline (per open sandbox)", memory.get("b")),
            )
            if value is not None
        ]
        print(table(["method", "memory"], rows))

    if show_samples:
        print()
        print("Samples (seconds, in round order)")
        for (method, n), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            ready = " ".join(f"{v:.3f}" for v in cell.values("ready"))
            gone = " ".join(f"{v:.3f}" for v in cell.values("destroyed"))
            print(f"  {method} N={n:<3} ready: {ready}   destroyed: {gone}")

    print()
    print("The library's transport: a = Unix socket (default), t = TCP port (as b)")
    print()
    rows = []
    for n in sizes:
        a_r, t_r = med("a", n, "ready"), med("t", n, "ready")
        a_d, t_d = med("a", n, "destroyed"), med("t", n, "destroyed")
        rows.append(
            [
                str(n),
                fmt(t_r),
                fmt(ratio(a_r, t_r), ".2f"),
                fmt(ratio(t_r, med("b", n, "ready")), ".2f"),
                fmt(t_d),
                fmt(ratio(a_d, t_d), ".2f"),
            ]
        )
    print(table(["N", "t ready", "a/t", "t/b", "t destroyed", "a/t"], rows))

    print()
    target_n = 50 if 50 in sizes else max(sizes)
    for attr, label in (("ready", "ready"), ("destroyed", "destroyed")):
        r = ratio(med("a", target_n, attr), med("b", target_n, attr))
        print(f"a/b {label} at N={target_n}: {fmt(r, '.2f')} (target ≤ 1.10)")


# --------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive ints")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time bringing up and tearing down fleets of sandboxes on local Docker: "
            "(a) commandlab_async provision_many, (b) a hand-written raw aiodocker "
            "baseline doing the same work, (c) the library one sandbox after another. "
            "Prints medians, a/b and c/a ratios, client CPU per sandbox and client "
            "memory per open sandbox. Every container made is deleted, even on Ctrl-C."
        )
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[1, 10, 50],
        help="comma-separated fleet sizes N (default: 1,10,50)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds per cell; the median is reported (default 3)"
    )
    parser.add_argument(
        "--sequential-max",
        type=int,
        default=10,
        help="run (c) sequential provision only for N up to this (default 10; 0 disables)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds to let the engine settle between measurements (default 1.0)",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the separate tracemalloc round for client memory per sandbox",
    )
    parser.add_argument(
        "--samples", action="store_true", help="also print every sample, not only medians"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


async def run(args: argparse.Namespace) -> None:
    sizes: list[int] = args.sizes
    cells: dict[tuple[str, int], Cell] = {}
    methods: dict[str, Callable[[int], Awaitable[Lifecycle]]] = {
        "a": library_fleet,
        "b": baseline_fleet,
        "c": library_sequential,
        "t": lambda n: library_fleet(n, OVER_TCP),
    }

    async def measure(method: str, n: int, *, record: bool = True) -> None:
        result = await methods[method](n)
        if record:
            cells.setdefault((method, n), Cell()).samples.append(result)
        print(
            f"  {method} N={n:<3} ready {result.ready:7.3f}s  destroyed {result.destroyed:7.3f}s"
            f"  cpu {result.cpu:6.3f}s" + ("" if record else "  (warm-up)"),
            flush=True,
        )
        await asyncio.sleep(args.pause)

    print("warm-up (N=1, not reported)", flush=True)
    await measure("a", 1, record=False)
    await measure("b", 1, record=False)

    for n in sizes:
        print(f"N={n}", flush=True)
        for r in range(args.repeat):
            order = ("a", "b", "t") if r % 2 == 0 else ("t", "b", "a")
            for method in order:
                await measure(method, n)
            if n <= args.sequential_max:
                await measure("c", n)

    memory: dict[str, float] = {}
    memory_n = max(sizes)
    if not args.no_memory:
        print(f"memory round (tracemalloc, N={memory_n}, not timed)", flush=True)
        memory["a"] = await memory_per_sandbox(memory_n, library=True)
        await asyncio.sleep(args.pause)
        memory["b"] = await memory_per_sandbox(memory_n, library=False)

    report(sizes, cells, memory, memory_n, args.repeat, args.samples)


async def amain(args: argparse.Namespace) -> int:
    completed = False
    try:
        await run(args)
        completed = True
    finally:
        # Runs on normal exit, on error and on Ctrl-C (asyncio.run cancels this task).
        removed = await sweep()
        if removed or not completed:
            # A create interrupted mid-flight may still land: look once more.
            await asyncio.sleep(1.0)
            removed += await sweep()
        if removed:
            print(f"backstop cleanup removed {len(removed)} containers", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted; containers cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
