"""What a desktop costs: ``computer.desktop`` against the anchors' way, in the same sandbox
and run.

The anchors (Anthropic's demo, Inspect's tool, E2B) take a screenshot by running ``scrot``
(or ``xwd``) and reading the file back through a command, and send input by running
``xdotool``. Here both go through ``computer.run()`` in the same desktop sandbox, so the
only difference is the path: a process per action against the daemon's in-process X
connection. Rows, alternating the two ways per sample:

* screenshot round trip at 1280x800 (PNG in hand on the client): ``desktop.screenshot()``
  against ``scrot`` + base64 through ``run()``. Target: <= 30 ms p50 and >= 10x faster.
* click round trip: ``desktop.click()`` against ``xdotool mousemove click``. Target: <= 3 ms.
* typing 1,000 ASCII characters (target <= 1 s) and 100 non-ASCII ones (CJK), against
  ``xdotool type`` (its default 12 ms per key).
* a batch of 10 actions plus one screenshot, in one round trip, against the same 10
  actions as xdotool commands and a scrot screenshot.
* provision -> first screenshot of a desktop sandbox, against provision -> first
  command of the computer image; and the desktop sandbox's idle memory (cgroup).

Run:  .venv/bin/python benchmarks/desktop.py [--samples 30] [--provisions 5]
(builds the desktop image first if needed: scripts/build-images.sh desktop)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from _report import latency_row, table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import DESKTOP_IMAGE, Actions, Computer, DockerSpec, provision

ROOT = Path(__file__).resolve().parents[1]
Timed = Callable[[], Awaitable[object]]

SCROT = "scrot -o -z /tmp/bench.png && base64 -w0 /tmp/bench.png"
ASCII = "".join(chr(32 + (i * 7) % 95) for i in range(1000))
CJK = "".join(chr(0x4E00 + (i * 37) % 2000) for i in range(100))


async def sample(fn: Timed) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def alternate(ways: Sequence[tuple[str, Timed]], samples: int) -> list[list[str]]:
    """Each way ``samples`` times, interleaved; a latency row per way."""
    results: dict[str, list[float]] = {label: [] for label, _ in ways}
    for _label, fn in ways:  # one warm-up each, not counted
        await fn()
    for _ in range(samples):
        for label, fn in ways:
            results[label].append(await sample(fn))
    rows = [latency_row(label, results[label], extremes=True) for label, _ in ways]
    ours, theirs = (statistics.median(results[label]) for label, _ in ways[:2])
    rows.append(["  ratio (anchor / ours, p50)", "", f"{theirs / ours:.1f}x", "", "", ""])
    return rows


async def run_ok(computer: Computer, command: str) -> str:
    result = await computer.run(command)
    if not result.ok:
        raise RuntimeError(f"{command!r} failed: {result.stderr[-500:]}")
    return result.stdout


async def latency_rows(computer: Computer, samples: int) -> list[list[str]]:
    desktop = computer.desktop

    async def scrot() -> None:
        base64.b64decode(await run_ok(computer, SCROT))

    rows = await alternate(
        [
            ("screenshot: desktop.screenshot()", desktop.screenshot),
            ("screenshot: scrot via run()", scrot),
        ],
        samples,
    )
    # The daemon reuses the compressed rows of the last screenshot that did not change: the
    # row above is a still screen. Alternating two sizes, nothing is reused (every row is
    # converted and compressed again), as when the whole screen changed.
    heights = [800, 799]

    async def uncached() -> None:
        heights.reverse()
        await desktop.screenshot(region=(0, 0, 1280, heights[0]))

    rows += await alternate(
        [("screenshot, nothing reused", uncached), ("screenshot: scrot via run()", scrot)],
        samples,
    )
    rows += await alternate(
        [
            ("click: desktop.click()", lambda: desktop.click(640, 400)),
            (
                "click: xdotool via run()",
                lambda: run_ok(computer, "xdotool mousemove 640 400 click 1"),
            ),
        ],
        samples,
    )

    async def ours_batch() -> None:
        batch = Actions()
        for i in range(5):
            batch.click(100 + i, 100).press("ctrl+a")
        await desktop.batch(batch, settle=False)

    async def their_batch() -> None:
        for i in range(5):
            await run_ok(computer, f"xdotool mousemove {100 + i} 100 click 1")
            await run_ok(computer, "xdotool key ctrl+a")
        base64.b64decode(await run_ok(computer, SCROT))

    rows += await alternate(
        [
            ("10 actions + screenshot: batch", ours_batch),
            ("10 actions + screenshot: xdotool", their_batch),
        ],
        max(3, samples // 3),
    )
    return rows


async def typing_rows(computer: Computer) -> list[list[str]]:
    await computer.run("pkill xterm; true")
    await computer.desktop.launch(["xterm", "-fa", "Monospace", "-e", "cat > /dev/null"])
    await asyncio.sleep(1.5)
    await computer.desktop.click(100, 100)
    rows = []
    for label, text in (("1,000 ASCII", ASCII), ("100 CJK", CJK)):
        ours = await sample(lambda text=text: computer.desktop.type(text))  # type: ignore[misc]
        quoted = text.replace("'", "'\\''")
        theirs = await sample(lambda q=quoted: run_ok(computer, f"xdotool type -- '{q}'"))  # type: ignore[misc]
        rows.append(
            [f"type {label}", f"{ours * 1000:.0f}", f"{theirs * 1000:.0f}", f"{theirs / ours:.0f}x"]
        )
    return rows


async def provision_rows(count: int) -> list[list[str]]:
    rows = []
    for label, image, first in (
        ("desktop: provision -> first screenshot", DESKTOP_IMAGE, "screenshot"),
        ("computer: provision -> first command", "commandlab/computer:latest", "run"),
    ):
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            async with provision(DockerSpec(image=image)) as computer:
                if first == "screenshot":
                    await computer.desktop.screenshot()
                else:
                    await computer.run("true")
                samples.append(time.perf_counter() - start)
        rows.append(latency_row(label, samples, extremes=True))
    return rows


async def idle_memory() -> str:
    lines = []
    for image in (DESKTOP_IMAGE, "commandlab/computer:latest"):
        async with provision(DockerSpec(image=image)) as computer:
            await asyncio.sleep(3)
            stats = ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", computer.name]
            used = await asyncio.to_thread(subprocess.run, stats, capture_output=True, text=True)
            ps = await computer.run("ps -o rss=,comm= -u computer")
        lines.append(f"idle {image}: {used.stdout.strip()} (docker stats); RSS KiB:")
        lines += [f"  {line.strip()}" for line in ps.stdout.splitlines()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--provisions", type=int, default=5)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    build = [str(ROOT / "scripts/build-images.sh"), "desktop"]
    await asyncio.to_thread(subprocess.run, build, check=True)
    async with provision(DockerSpec(image=DESKTOP_IMAGE)) as computer:
        info = await computer.desktop.info()
        print(f"screen {info['width']}x{info['height']}, capture: {info['capture']}\n")
        headers = ["what", "n", "median ms", "p99 ms", "min ms", "max ms"]
        print(table(headers, await latency_rows(computer, args.samples)))
        print()
        print(table(["typing", "ours ms", "xdotool ms", "ratio"], await typing_rows(computer)))
    print()
    print(table(headers, await provision_rows(args.provisions)))
    print()
    print(await idle_memory())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
