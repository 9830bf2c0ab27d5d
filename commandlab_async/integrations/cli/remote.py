"""``commandlab exec / cp / logs``: into a running sandbox."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import posixpath
import stat
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing

from ... import Computer, Process, RemoteFileNotFoundError, SpecError, connect, read_logs
from .sandboxes import SCOPE_FLAGS, pairs, targets

__all__ = ["cp", "exec_command", "logs"]

_CHUNK = 64 * 1024
TIMED_OUT = 124  # exec's status when its --timeout killed the command, as timeout(1)'s


async def exec_command(args: argparse.Namespace) -> int:
    """Run the command, its output streamed as it comes; its exit status (128+N for a
    death by signal N, as shells say; 124 when ``--timeout`` killed it)."""
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
    if process.timed_out:
        print(
            f"commandlab: timed out after {args.timeout:g}s: the command was killed",
            file=sys.stderr,
        )
        return TIMED_OUT
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
    """Copy one file into or out of a sandbox, as ``cp``/``scp`` do: to a directory (an
    existing one, or a path ending in ``/``), the file goes in it under its own name;
    ``NAME:`` alone is the sandbox's working directory; ``-`` is stdin or stdout."""
    (source_name, source), (dest_name, dest) = _split(args.source), _split(args.dest)
    if (source_name is None) == (dest_name is None):
        raise SpecError("cp", "copies between this machine and a sandbox: one side is NAME:PATH")
    if dest_name is not None:
        _check_source(source, dest)
        async with connect(dest_name) as computer:
            dest = await _remote_dest(computer, dest, source)
            await _upload(computer, source, dest)
        return f"copied {source} to {dest_name}:{dest}"
    assert source_name is not None
    if not source or source.endswith("/"):
        raise SpecError("cp", f"copies one file: {args.source} names no file")
    dest = _local_dest(dest, source)
    async with connect(source_name) as computer:
        await _download(computer, source, dest)
    return f"copied {source_name}:{source} to {dest}"


def _check_source(local: str, remote: str) -> None:
    """A local source that cannot be sent fails here, before the sandbox is contacted."""
    if local == "-":
        if not remote or remote.endswith("/"):
            raise SpecError("cp", "stdin has no file name: give the sandbox's path in full")
        return
    # The OS's own words ("data.csv: No such file or directory"), said by main().
    if stat.S_ISDIR(os.stat(local).st_mode):  # cp copies one file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), local)


async def _remote_dest(computer: Computer, remote: str, local: str) -> str:
    """Where ``local`` goes for ``NAME:remote``: into it if it is a directory."""
    if local == "-":
        return remote
    base = os.path.basename(local)
    if not remote:  # scp's NAME: is the home directory: here the daemon's working directory
        return posixpath.join(await computer.working_dir(), base)
    if remote.endswith("/"):
        return remote + base
    try:
        is_dir = (await computer.stat(remote)).type == "directory"
    except RemoteFileNotFoundError:  # a new file (a missing parent is created)
        is_dir = False
    return posixpath.join(remote, base) if is_dir else remote


def _local_dest(local: str, remote: str) -> str:
    """Where ``NAME:remote`` goes for ``local``: into it if it is a directory."""
    if local != "-" and (local.endswith(os.sep) or os.path.isdir(local)):
        return os.path.join(local, posixpath.basename(remote))
    return local


async def _upload(computer: Computer, local: str, remote: str) -> None:
    if local == "-":
        await computer.write_file(remote, _stdin_chunks())
    else:
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
    """What the sandbox printed (its daemon's log); with ``-f``, as it comes. Without
    ``--platform``, where its saved handle says it is (else local Docker)."""
    named = args.platform or any(getattr(args, flag) is not None for flag in SCOPE_FLAGS)
    (target,) = targets(args) if named else (None,)
    async with aclosing(read_logs(args.name, target, follow=args.follow)) as chunks:
        async for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
