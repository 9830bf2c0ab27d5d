"""The ``commandlab`` command line: sandboxes for people.

Exit status: 0 done; 1 failed (the one-line error on stderr says why); 2 bad usage;
130 interrupted (Ctrl-C, at any moment: no traceback). "exec" exits with the command's
own status (128+N when a signal N killed it), 124 when its --timeout killed it (as
timeout(1)), 126 when it cannot be executed, 127 when it is not found, and 125 when
commandlab itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Coroutine, Sequence
from typing import Any

from ... import DEFAULT_IMAGE, GC_TIMEOUT, PLATFORMS, __version__
from ...errors import (
    CommandLabError,
    RemoteFileNotFoundError,
    RemotePermissionError,
    SpecError,
)
from . import images, remote, sandboxes
from .demo import demo

__all__ = ["main"]

FAILED, USAGE, EXEC_FAILED, CANNOT_EXECUTE, NOT_FOUND, INTERRUPTED = 1, 2, 125, 126, 127, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="commandlab",
        description="Sandboxes for AI agents and evals: bring them up, use them, delete them.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    demo_parser = commands.add_parser(
        "demo", help="bring up a sandbox on local Docker, use it, delete it"
    )
    demo_parser.add_argument("--image", default=DEFAULT_IMAGE)
    demo_parser.add_argument("--count", type=int, default=1, help="sandboxes to bring up at once")

    up = commands.add_parser(
        "up", help="bring sandboxes up and leave them running (until their TTL or rm)"
    )
    _platform(up, repeat=False)
    up.add_argument("--image", default=DEFAULT_IMAGE)
    up.add_argument("-n", "--count", type=int, default=1, help="how many (default: 1)")
    up.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until each deletes itself (3600)"
    )
    up.add_argument("-l", "--label", action="append", metavar="KEY=VALUE", help="repeatable")
    up.add_argument("-e", "--env", action="append", metavar="NAME=VALUE", help="repeatable")
    up.add_argument("--option", action="append", metavar="FIELD=VALUE", help="platform option")
    up.add_argument("--root", action="store_true", help="run the daemon as root (run_as_root)")
    _json(up)

    ls = commands.add_parser("ls", help="list our sandboxes")
    _platform(ls, repeat=True)
    ls.add_argument("-l", "--label", action="append", metavar="KEY=VALUE", help="repeatable")
    ls.add_argument("--older-than", type=float, metavar="SECONDS")
    ls.add_argument("--newer-than", type=float, metavar="SECONDS")
    _json(ls)

    exec_parser = commands.add_parser(
        "exec", help="run a command in a sandbox left running: commandlab exec NAME -- CMD..."
    )
    exec_parser.add_argument("name")
    exec_parser.add_argument("command", nargs=argparse.REMAINDER)
    exec_parser.add_argument("-i", "--interactive", action="store_true", help="send our stdin")
    exec_parser.add_argument("-u", "--user")
    exec_parser.add_argument("-w", "--cwd")
    exec_parser.add_argument("-e", "--env", action="append", metavar="NAME=VALUE")
    exec_parser.add_argument(
        "--timeout", type=float, help="seconds; then it is killed and exec exits 124"
    )

    cp = commands.add_parser(
        "cp",
        help="copy a file: cp LOCAL NAME:PATH or cp NAME:PATH LOCAL; to a directory, into it"
        " ('NAME:' alone: the sandbox's working directory; '-': stdin/stdout)",
    )
    cp.add_argument("source")
    cp.add_argument("dest")

    logs = commands.add_parser("logs", help="what a sandbox's daemon printed")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing as it comes")
    _platform(logs, repeat=False, default=None)  # None: where its saved handle says

    rm = commands.add_parser("rm", help="delete sandboxes by name or label, whoever owns them")
    rm.add_argument("names", nargs="*", metavar="NAME")
    rm.add_argument("-l", "--label", action="append", metavar="KEY=VALUE", help="repeatable")
    _platform(rm, repeat=True)
    _json(rm)

    images.add_parser(commands)

    gc = commands.add_parser(
        "gc", help="delete sandboxes whose TTL passed or whose owner process died"
    )
    gc.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc.add_argument(
        "--timeout",
        type=float,
        default=GC_TIMEOUT,
        help=f"give up after this many seconds (default: {GC_TIMEOUT:g})",
    )
    _platform(gc, repeat=True)
    _json(gc)
    return parser


def _platform(
    parser: argparse.ArgumentParser, *, repeat: bool, default: str | None = "docker"
) -> None:
    where = "docker" if default else "its saved handle's platform, else docker"
    parser.add_argument(
        "--platform",
        action="append" if repeat else "store",
        choices=list(PLATFORMS),
        default=None if repeat else default,
        help="where" + (" (repeatable)" if repeat else "") + f" (default: {where})",
    )
    for flag in sandboxes.SCOPE_FLAGS:
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            help=f"the {flag.replace('_', ' ')}, where the platform has one",
        )


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


async def _run(args: argparse.Namespace) -> int:
    command = args.verb
    if command == "demo":
        await demo(args.image, args.count)
    elif command == "up":
        started = await sandboxes.up(args)
        _print(args, started, sandboxes.print_up)
    elif command == "ls":
        found = await sandboxes.ls(args)
        _print(args, found, sandboxes.print_ls)
    elif command == "exec":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        return await _exec(args)
    elif command == "cp":
        print(await remote.cp(args), file=sys.stderr)
    elif command == "logs":
        await remote.logs(args)
    elif command == "image":
        await images.image_command(args)
    elif command in ("rm", "gc"):
        if command == "rm":
            reaped = await sandboxes.rm(args)
        else:
            reaped = await sandboxes.gc_command(args)
        if args.json:
            print(sandboxes.reaped_json(reaped))
        else:
            verb = "would delete" if getattr(args, "dry_run", False) else "deleted"
            sandboxes.print_reaped(reaped, verb)
    return 0


async def _exec(args: argparse.Namespace) -> int:
    try:
        return await remote.exec_command(args)
    except RemoteFileNotFoundError as exc:
        return _fail(exc, NOT_FOUND)
    except RemotePermissionError as exc:
        return _fail(exc, CANNOT_EXECUTE)
    except SpecError as exc:
        return _fail(exc, USAGE)
    except (CommandLabError, OSError) as exc:
        return _fail(exc, EXEC_FAILED)


def _print(args: argparse.Namespace, data: Any, human: Any) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        human(data)


def _error(exc: BaseException | str) -> None:
    """One line on stderr, never a traceback; a group (a fleet) says its first error."""
    if isinstance(exc, BaseExceptionGroup):
        first, more = exc.exceptions[0], len(exc.exceptions) - 1
        exc = f"{exc.message}: {first}" + (f" (and {more} more)" if more else "")
    if isinstance(exc, OSError) and not isinstance(exc, CommandLabError) and exc.strerror:
        # A local file's error as the shell says it: "data.csv: No such file or directory".
        exc = f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"commandlab: {text}", file=sys.stderr)


def _fail(exc: BaseException | str, status: int) -> int:
    _error(exc)
    return status


def script() -> int:
    """The ``commandlab`` script: :func:`main`, quiet on Ctrl-C outside the command's loop.

    Until the command's event loop runs, and again once it has stopped (the interpreter
    shutting down), a Ctrl-C ends the process at once with status 130: there is nothing to
    clean up then, and a KeyboardInterrupt raised there prints a traceback (or an
    "Exception ignored" one). While the loop runs, a Ctrl-C cancels the command, which
    cleans up what it made. Not in :func:`main`, which programs and tests call in their
    own process: this handler is the script's alone.
    """
    signal.signal(signal.SIGINT, _quit)
    return main()


def _quit(signum: int, frame: object) -> None:
    os._exit(128 + signum)  # as the shells say a death by SIGINT: 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (130 on Ctrl-C, whenever it comes)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while parsing, reporting or cleaning up
        return INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    # The library's warnings (a saved handle it skipped...) and news (the progress of an
    # image it builds), said as the CLI says things.
    said = logging.StreamHandler()
    said.setFormatter(_Said())
    said.setLevel(logging.INFO)
    library = logging.getLogger("commandlab_async")
    level = library.level
    library.setLevel(logging.INFO)
    library.addHandler(said)
    try:
        return _run_loop(_run(args))
    except KeyboardInterrupt:
        return INTERRUPTED
    except SpecError as exc:
        return _fail(exc, USAGE)
    except (CommandLabError, OSError) as exc:
        return _fail(exc, FAILED)
    except Exception as exc:
        if not os.environ.get("COMMANDLAB_DEBUG"):
            return _fail(f"internal error: {exc!r} (COMMANDLAB_DEBUG=1 shows where)", FAILED)
        traceback.print_exception(exc)
        return FAILED
    finally:
        library.removeHandler(said)
        library.setLevel(level)


def _run_loop(command: Coroutine[Any, Any, int]) -> int:
    """Run ``command`` on an event loop of its own, as ``asyncio.run``: a Ctrl-C cancels
    it, so that it cleans up what it made (an interrupted ``up`` deletes its sandboxes),
    then raises KeyboardInterrupt.

    asyncio does that only while Python's own Ctrl-C handler is set: the script's
    (:func:`script`: end the process at once) is set aside while the loop runs.
    """
    with asyncio.Runner() as runner:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main_thread else None
        try:
            return runner.run(command)
        finally:
            if previous is not None:  # before the runner closes the loop
                signal.signal(signal.SIGINT, previous)


class _Said(logging.Formatter):
    """``commandlab: warning: <message>``, as the CLI's own messages read."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"commandlab: {level}{record.getMessage()}"
