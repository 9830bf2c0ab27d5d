"""The ``commandlab`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from . import __version__
from .errors import CommandLabError
from .lifecycle import provision
from .reaper import gc
from .specs import DEFAULT_IMAGE, DockerPlatform, DockerSpec, KubernetesPlatform

__all__ = ["main"]


async def _demo(image: str) -> None:
    started = time.perf_counter()
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


async def _gc(platforms: list[str], *, dry_run: bool) -> None:
    parsed = [_platform(name) for name in platforms]
    reaped = await gc(parsed, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for item in reaped:
        print(f"{verb} {item.platform} {item.name}: {item.reason}")
    print(f"{verb} {len(reaped)} sandbox(es)")


def _platform(name: str) -> DockerPlatform | KubernetesPlatform:
    if name in DockerPlatform._value2member_map_:
        return DockerPlatform(name)
    return KubernetesPlatform(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="commandlab", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="bring up a sandbox on local Docker, use it, delete it")
    demo.add_argument("--image", default=DEFAULT_IMAGE)
    gc_parser = commands.add_parser(
        "gc", help="delete sandboxes whose TTL passed or whose owner process died"
    )
    gc_parser.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc_parser.add_argument(
        "--platform",
        action="append",
        choices=[p.value for p in (*DockerPlatform, *KubernetesPlatform)],
        help="platform to sweep (repeatable; default: docker)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            asyncio.run(_demo(args.image))
        elif args.command == "gc":
            asyncio.run(_gc(args.platform or ["docker"], dry_run=args.dry_run))
    except CommandLabError as exc:
        print(f"commandlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
