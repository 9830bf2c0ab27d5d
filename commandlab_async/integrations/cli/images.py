"""``commandlab image build``: the computer image from the Dockerfile this package carries."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ... import DEFAULT_IMAGE, build_image

__all__ = ["add_parser", "image_command"]


def add_parser(commands: Any) -> None:
    """Add the ``image`` verb to the CLI's subcommands."""
    image = commands.add_parser("image", help="build the computer image (no clone needed)")
    actions = image.add_subparsers(dest="image_action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build it on local Docker from the Dockerfile in the package",
        description="Build the computer image from the Dockerfile this package carries; "
        "an image already built from the same inputs is left as it is. Progress goes to "
        "stderr.",
    )
    build.add_argument(
        "--base",
        help="the image to build FROM: Debian-like, with python3 >= 3.9 (default: "
        "$COMMANDLAB_IMAGE_BASE, else python:3.12-slim)",
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"(default: {DEFAULT_IMAGE})")
    build.add_argument(
        "--desktop",
        action="store_true",
        help="a desktop image (computer.desktop): the base must have Xvfb, openbox and fonts",
    )


async def image_command(args: argparse.Namespace) -> None:
    """Run ``commandlab image ACTION``."""
    started = time.perf_counter()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    built = await build_image(base=args.base, tag=args.tag, desktop=args.desktop, progress=say)
    if built:
        say(f"built {args.tag} in {time.perf_counter() - started:.1f}s")
