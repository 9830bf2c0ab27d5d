"""The ``commandlab`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from .. import __version__
from ..errors import CommandLabError
from ..events import EventCallback, EventKind, LifecycleEvent
from ..lifecycle import Fleet, provision, provision_many
from ..platforms import driver_class, options_class
from ..platforms.base import PLATFORMS, Target
from ..reaper import GC_TIMEOUT, gc
from ..specs import DEFAULT_IMAGE, DockerSpec

__all__ = ["main"]


async def _demo(image: str, count: int) -> None:
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

    def run_fleet(on_event: EventCallback | None) -> AbstractAsyncContextManager[Fleet]:
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


# gc's scope flags -> the target field each names.
_SCOPE_FLAGS = {
    "region": "region",
    "cluster": "cluster",
    "namespace": "namespace",
    "resource_group": "resource_group",
    "project": "project_id",
    "subscription": "subscription_id",
}


async def _gc(args: argparse.Namespace) -> None:
    scope = {
        field: getattr(args, flag)
        for flag, field in _SCOPE_FLAGS.items()
        if getattr(args, flag) is not None
    }
    targets: list[Target] = []
    for name in args.platform or ["docker"]:
        platform = PLATFORMS[name]
        driver_class(platform)  # a platform without a driver says so before its scope
        targets.append(options_class(platform).target_from(scope))
    reaped = await gc(targets, dry_run=args.dry_run, timeout=args.timeout)
    verb = "would delete" if args.dry_run else "deleted"
    for item in reaped:
        print(f"{verb} {item.target} {item.name}: {item.reason}")
    print(f"{verb} {len(reaped)} sandbox(es)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="commandlab", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="bring up a sandbox on local Docker, use it, delete it")
    demo.add_argument("--image", default=DEFAULT_IMAGE)
    demo.add_argument("--count", type=int, default=1, help="sandboxes to bring up at once")
    gc_parser = commands.add_parser(
        "gc", help="delete sandboxes whose TTL passed or whose owner process died"
    )
    gc_parser.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc_parser.add_argument(
        "--timeout",
        type=float,
        default=GC_TIMEOUT,
        help=f"give up after this many seconds (default: {GC_TIMEOUT:g})",
    )
    gc_parser.add_argument(
        "--platform",
        action="append",
        choices=list(PLATFORMS),
        help="platform to sweep (repeatable; default: docker)",
    )
    for flag in _SCOPE_FLAGS:
        gc_parser.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            help=f"the {flag.replace('_', ' ')} to sweep, where the platform has one",
        )
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            asyncio.run(_demo(args.image, args.count))
        elif args.command == "gc":
            asyncio.run(_gc(args))
    except CommandLabError as exc:
        print(f"commandlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
