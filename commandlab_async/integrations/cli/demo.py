"""``commandlab demo``: a sandbox (or a fleet) brought up, used and deleted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ... import (
    DockerSpec,
    EventKind,
    Fleet,
    LifecycleEvent,
    provision,
    provision_many,
)

__all__ = ["demo"]


async def demo(image: str, count: int) -> None:
    started = time.perf_counter()
    if count > 1:
        await _demo_fleet(DockerSpec(image=image), count, started)
        return
    async with provision(DockerSpec(image=image)) as computer:
        print(f"up: {computer.name} in {time.perf_counter() - started:.2f}s")
        result = await computer.run(
            'echo "hello from $(hostname), $(python3 -V), user $(id -u)"; uname -sr'
        )
        print(result.stdout, end="")
        await computer.write_file("/tmp/greeting.txt", "written from the host\n")
        print((await computer.read_file("/tmp/greeting.txt")).decode(), end="")
        name = computer.name
    print(f"down: {name} deleted")


async def _demo_fleet(spec: DockerSpec, count: int, started: float) -> None:
    """A fleet with a live progress bar (rich, when installed) of sandboxes ready/deleted."""
    try:
        from rich.progress import Progress
    except ImportError:  # the `progress` extra is optional
        Progress = None  # type: ignore[assignment,misc]

    def run_fleet(
        on_event: Callable[[LifecycleEvent], None] | None,
    ) -> AbstractAsyncContextManager[Fleet]:
        return provision_many(spec, count=count, on_event=on_event)

    if Progress is None:
        async with run_fleet(None) as fleet:
            await _use_fleet(fleet, started)
        print(f"down: {count} sandboxes deleted after {time.perf_counter() - started:.2f}s")
        return
    with Progress() as bar:
        up = bar.add_task("ready", total=count)
        down = bar.add_task("deleted", total=count, visible=False)

        def on_event(event: LifecycleEvent) -> None:
            if event.kind is EventKind.READY:
                bar.advance(up)
            elif event.kind is EventKind.DESTROYED:
                bar.update(down, visible=True, advance=1)

        async with run_fleet(on_event) as fleet:
            await _use_fleet(fleet, started, bar.console.print)
    print(f"down: {count} sandboxes deleted after {time.perf_counter() - started:.2f}s")


async def _use_fleet(fleet: Fleet, started: float, say: Callable[[str], None] = print) -> None:
    say(f"up: {len(fleet)} sandboxes in {time.perf_counter() - started:.2f}s")
    results = await asyncio.gather(*(c.run("hostname") for c in fleet))
    say(f"ran hostname in each: {', '.join(r.stdout.strip() for r in results[:5])}, …")
