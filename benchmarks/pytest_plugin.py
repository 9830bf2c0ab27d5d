"""What the pytest plugin costs: per test, and per command from a test's own event loop.

1. A generated project of ``--tests`` tests, each running one command in a fresh
   sandbox, is run by pytest (in a subprocess, ``--rounds`` times, alternating) three
   ways: with the plugin's ``computer`` fixture, and with the fixture a user would write
   by hand (``async with provision(DockerSpec()) as c: yield c`` in pytest-asyncio's
   function loop, the plugin disabled), and with the plugin's fixture served by a warm
   pool (``--commandlab-pool``). Median wall seconds of each and their ratios.
2. One sandbox held by the plugin's background loop: ``--runs`` sequential
   ``computer.run("true")`` round trips from the loop that made it, then from this
   thread's own loop (its own connection pool). Medians and their ratio.

Run:  .venv/bin/python benchmarks/pytest_plugin.py [--tests 20] [--rounds 3] [--runs 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import Computer, DockerSpec, provision
from commandlab_async.integrations.pytest_plugin.background import BackgroundLoop

PLUGIN_TESTS = """
async def test_{n}(computer):
    assert (await computer.run("true")).exit_code == 0
"""
BY_HAND_CONFTEST = """
import pytest
from commandlab_async import Computer, DockerSpec, provision

@pytest.fixture
async def sandbox():
    async with provision(DockerSpec()) as computer:
        yield computer
"""
BY_HAND_TESTS = """
async def test_{n}(sandbox):
    assert (await sandbox.run("true")).exit_code == 0
"""
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def project(root: Path, tests: int, *, by_hand: bool) -> Path:
    root.mkdir()
    (root / "pytest.ini").write_text(INI)
    body = BY_HAND_TESTS if by_hand else PLUGIN_TESTS
    (root / "test_many.py").write_text("".join(body.format(n=n) for n in range(tests)))
    if by_hand:
        (root / "conftest.py").write_text(BY_HAND_CONFTEST)
    return root


def run_pytest(root: Path, *extra: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:])
    return time.perf_counter() - started


def per_test(tests: int, rounds: int, pool: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as temp:
        plugin = project(Path(temp) / "plugin", tests, by_hand=False)
        by_hand = project(Path(temp) / "by_hand", tests, by_hand=True)
        ours: list[float] = []
        theirs: list[float] = []
        pooled: list[float] = []
        for _ in range(rounds):
            ours.append(run_pytest(plugin))
            theirs.append(run_pytest(by_hand, "-p", "no:commandlab"))
            pooled.append(run_pytest(plugin, f"--commandlab-pool={pool}"))
    mine, baseline = statistics.median(ours), statistics.median(theirs)
    warm = statistics.median(pooled)
    return [
        ["plugin fixture", f"{mine:.2f}", f"{mine / tests * 1000:.0f}"],
        ["by hand", f"{baseline:.2f}", f"{baseline / tests * 1000:.0f}"],
        ["plugin/by hand", f"{mine / baseline:.2f}", ""],
        [f"plugin, --commandlab-pool={pool}", f"{warm:.2f}", f"{warm / tests * 1000:.0f}"],
        ["pool/by hand", f"{warm / baseline:.2f}", ""],
    ]


async def round_trips(computer: Computer, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await computer.run("true")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def per_command(runs: int) -> list[list[str]]:
    background = BackgroundLoop("benchmark")
    try:
        hold = background.enter(provision(DockerSpec()), grace=60)
        computer = hold.entered.result()
        home = background.run(round_trips(computer, runs))
        elsewhere = asyncio.run(round_trips(computer, runs))
        hold.release()
        hold.finished.result(60)
    finally:
        background.close(60)
    return [
        ["from the loop that made it", f"{home * 1000:.2f}"],
        ["from another loop", f"{elsewhere * 1000:.2f}"],
        ["another/home", f"{elsewhere / home:.2f}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--pool", type=int, default=4, help="warm pool of the third way")
    args = parser.parse_args()
    print(f"pytest runs of {args.tests} tests, each in a fresh sandbox ({args.rounds} rounds)")
    print(table(["", "median s", "ms per test"], per_test(args.tests, args.rounds, args.pool)))
    print()
    print(f"computer.run('true') round trip, median of {args.runs}")
    print(table(["", "ms"], per_command(args.runs)))


if __name__ == "__main__":
    main()
