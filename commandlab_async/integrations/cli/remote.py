"""``commandlab exec / cp / logs``: into a running sandbox."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing

from ... import Computer, Process, SpecError, connect, read_logs
from .sandboxes import pairs, targets

__all__ = ["cp", "exec_command", "logs"]

_CHUNK = 64 * 1024


async def exec_command(args: argparse.Namespace) -> int:
    """Run the command, its output streamed as it comes; its exit status (128+N for a
    death by signal N, as shells say)."""
    if not args.command:
        raise SpecError("exec", "needs a command: commandlab exec NAME -- CMD...")
    async with (
        connect(args.name) as computer,
        computer.start(
            args.command,
            cwd=args.cwd,
            env=pairs(args.env, "--env"),
            user=args.user,
            timeout=args.timeout,
        ) as process,
    ):
        feeding = asyncio.create_task(_feed(process, interactive=args.interactive))
        try:
            async for chunk in process.output():
                out = sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer
                out.write(chunk.data)
                out.flush()
            status = await process.wait()
        finally:
            feeding.cancel()
    return 128 - status if status < 0 else status


async def _feed(process: Process, *, interactive: bool) -> None:
    """Our stdin to the process's with ``-i`` (as ``docker exec -i``); else end of file."""
    if interactive:
        async for data in _stdin_chunks():
            await process.write(data)
    await process.close_stdin()


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """This process's stdin, read by a daemon thread (a blocking read of a terminal cannot
    be cancelled; the thread dies with the process)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def read() -> None:
        while True:
            try:
                data = os.read(sys.stdin.fileno(), _CHUNK)
            except OSError:
                data = b""
            future = asyncio.run_coroutine_threadsafe(queue.put(data), loop)
            try:
                future.result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop has gone
            if not data:
                return

    threading.Thread(target=read, name="commandlab-stdin", daemon=True).start()
    while data := await queue.get():
        yield data


def _split(location: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (NAME, PATH); a local path -> (None, path)."""
    name, sep, path = location.partition(":")
    if sep and name and "/" not in name and name not in (".", ".."):
        return name, path
    return None, location


async def cp(args: argparse.Namespace) -> str:
    """Copy one file into or out of a sandbox (``-`` is stdin or stdout)."""
    (source_name, source), (dest_name, dest) = _split(args.source), _split(args.dest)
    if (source_name is None) == (dest_name is None):
        raise SpecError("cp", "copies between this machine and a sandbox: one side is NAME:PATH")
    name = source_name or dest_name
    assert name is not None
    async with connect(name) as computer:
        if dest_name is not None:
            await _upload(computer, source, dest)
            return f"copied {source} to {name}:{dest}"
        await _download(computer, source, dest)
        return f"copied {name}:{source} to {dest}"


async def _upload(computer: Computer, local: str, remote: str) -> None:
    if local == "-":
        await computer.write_file(remote, _stdin_chunks())
    else:  # a directory is the OS's IsADirectoryError: cp copies one file
        await computer.upload(local, remote)


async def _download(computer: Computer, remote: str, local: str) -> None:
    if local != "-":
        await computer.download(remote, local)
        return
    async with computer.stream_file(remote) as chunks:
        async for chunk in chunks:
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


async def logs(args: argparse.Namespace) -> None:
    """What the sandbox printed (its daemon's log); with ``-f``, as it comes."""
    (target,) = targets(args)
    async with aclosing(read_logs(args.name, target, follow=args.follow)) as chunks:
        async for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
