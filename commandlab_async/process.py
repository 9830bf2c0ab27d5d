"""Commands in a sandbox: results, streaming processes, and the daemon's frame stream.

``POST /exec`` answers with a stream of frames (see ``daemon/server.py``): one ``S``
(started), output frames ``1``/``2``, a ``G`` (gap) before a truncated stream's kept
tail, and one ``X`` (exit). Everything here reads that stream in bounded pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal as signals
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp

__all__ = ["CommandResult", "OutputChunk", "Process", "ProcessInfo"]

Stream = Literal["stdout", "stderr"]
_STREAMS: dict[bytes, Stream] = {b"1": "stdout", b"2": "stderr"}
_FRAME_HEAD = struct.Struct(">cI")
# A frame larger than this is not something our daemon sends: the stream is corrupt.
_MAX_FRAME = 64 * 1024 * 1024

Watch = Callable[[], AbstractContextManager[None]]
"""Wraps each read of the daemon's reply (the Computer's liveness watch)."""


@dataclass(frozen=True)
class CommandResult:
    """What a command did. Output is kept as bytes; ``stdout``/``stderr`` decode it.

    When a stream printed more than the run's ``max_output``, its first and last
    halves are kept and ``stdout_omitted``/``stderr_omitted`` count the bytes dropped
    in between (``truncated`` is then true). ``stdout`` and ``stderr`` decode UTF-8 and
    replace invalid bytes with U+FFFD; ``stdout_bytes``/``stderr_bytes`` are exact.
    """

    exit_code: int
    """Exit status; negative ``-N`` when the command was killed by signal ``N``."""
    stdout_bytes: bytes = field(repr=False)
    stderr_bytes: bytes = field(repr=False)
    duration: float
    """Seconds the command ran, measured inside the sandbox."""
    stdout_omitted: int = 0
    stderr_omitted: int = 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    @property
    def truncated(self) -> bool:
        """True when output was dropped between the kept head and tail of a stream."""
        return bool(self.stdout_omitted or self.stderr_omitted)

    def __repr__(self) -> str:
        cut = ", truncated" if self.truncated else ""
        return (
            f"CommandResult(exit_code={self.exit_code}, stdout={_preview(self.stdout)}, "
            f"stderr={_preview(self.stderr)}, duration={self.duration:.3f}{cut})"
        )


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a process's output as it came."""

    stream: Stream
    data: bytes = field(repr=False)
    omitted: int = 0
    """Bytes of this stream lost just before ``data`` (a bounded buffer overflowed)."""


@dataclass(frozen=True)
class ProcessInfo:
    """A process the daemon knows about (``Computer.processes()``)."""

    id: str
    pid: int
    argv: tuple[str, ...]
    background: bool
    running: bool
    exit_code: int | None


@dataclass
class _Exit:
    exit_code: int
    duration: float
    timed_out: bool
    limit_exceeded: bool


class Frames:
    """Reads frames off a response body."""

    def __init__(self, response: aiohttp.ClientResponse, watch: Watch | None = None) -> None:
        self._content = response.content
        self._watch = watch if watch is not None else contextlib.nullcontext

    async def next(self) -> tuple[bytes, bytes] | None:
        """The next (kind, payload), or None at a clean end of stream."""
        with self._watch():
            try:
                head = await self._content.readexactly(_FRAME_HEAD.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ConnectionResetError("the daemon's reply ended inside a frame") from None
                return None
            kind, length = _FRAME_HEAD.unpack(head)
            if length > _MAX_FRAME:
                raise ConnectionResetError(f"malformed frame from the daemon ({length} bytes)")
            try:
                payload = await self._content.readexactly(length)
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("the daemon's reply ended inside a frame") from None
        return kind, payload


async def read_output(frames: Frames) -> AsyncIterator[OutputChunk | _Exit]:
    """A reply's output chunks (a gap's size rides on its stream's next chunk), then its exit."""
    gaps: dict[Stream, int] = {}
    while True:
        frame = await frames.next()
        if frame is None:
            raise ConnectionResetError("the daemon's reply ended before the exit status")
        kind, payload = frame
        stream = _STREAMS.get(kind)
        if stream is not None:
            omitted = gaps.pop(stream, 0)
            if payload or omitted:
                yield OutputChunk(stream, payload, omitted)
        elif kind == b"G":
            gap = json.loads(payload)
            name: Stream = "stdout" if gap["stream"] == 1 else "stderr"
            gaps[name] = gaps.get(name, 0) + int(gap["omitted"])
        elif kind == b"X":
            for name, omitted in gaps.items():  # a gap with no tail after it
                yield OutputChunk(name, b"", omitted)
            yield parse_exit(payload)
            return


def parse_exit(payload: bytes) -> _Exit:
    data = json.loads(payload)
    return _Exit(
        exit_code=int(data["exit_code"]),
        duration=float(data["duration"] or 0.0),
        timed_out=bool(data.get("timed_out")),
        limit_exceeded=bool(data.get("limit_exceeded")),
    )


class Process:
    """A command running in the sandbox, its output read as it comes.

    Get one with ``async with computer.start(...) as process`` (or ``await
    computer.start(...)`` and ``await process.close()`` yourself). Read output with
    ``async for chunk in process.output()``; feed stdin with :meth:`write` and
    :meth:`close_stdin`; :meth:`wait` for the exit status; :meth:`signal` or
    :meth:`kill` the process group. Leaving the block (or :meth:`close`) kills a
    foreground process that is still running; a ``background=True`` one keeps running
    and can be found with ``computer.processes()`` and re-attached with
    ``computer.attach(id)``.
    """

    def __init__(
        self,
        *,
        response: aiohttp.ClientResponse,
        stdin: asyncio.Queue[bytes | None] | None,
        control: Callable[[str, str, dict[str, str] | None], Awaitable[Any]],
        id: str,
        pid: int,
        background: bool,
        watch: Watch | None = None,
    ) -> None:
        self._response = response
        self._frames = Frames(response, watch)
        self._stdin = stdin
        self._control = control
        self.id = id
        """The daemon's id for the process (for ``attach`` and ``processes``)."""
        self.pid = pid
        """Its process id inside the sandbox (also its process group id)."""
        self.background = background
        self._exit: _Exit | None = None
        self._events = read_output(self._frames)

    @property
    def exit_code(self) -> int | None:
        """The exit status once the process ended and its output was read, else None."""
        return None if self._exit is None else self._exit.exit_code

    @property
    def timed_out(self) -> bool:
        return self._exit is not None and self._exit.timed_out

    def __repr__(self) -> str:
        return f"Process(id={self.id!r}, pid={self.pid}, exit_code={self.exit_code})"

    async def output(self) -> AsyncIterator[OutputChunk]:
        """Output chunks from stdout and stderr in the order the daemon read them.

        Ends when the process ended and all its output was delivered. Reading is what
        moves output along: a process nobody reads from blocks once its pipes fill
        (background processes excepted: they write into a ring buffer).
        """
        async for item in self._events:
            if isinstance(item, OutputChunk):
                yield item
                continue
            self._exit = item
            self._end_stdin()
            await self._response.content.read()  # the end of the reply

    async def wait(self) -> int:
        """Wait for the process to end (reading and dropping its remaining output)."""
        async for _ in self.output():
            pass
        assert self._exit is not None
        return self._exit.exit_code

    async def write(self, data: bytes | str) -> None:
        """Send ``data`` to the process's stdin (waits while the daemon's buffer is full)."""
        if self._stdin is None:
            raise RuntimeError("this process's stdin is not open (closed, or attached)")
        if isinstance(data, str):
            data = data.encode()
        if data:
            await self._stdin.put(data)

    async def close_stdin(self) -> None:
        """Close the process's stdin (it reads end of file)."""
        if self._stdin is not None:
            queue, self._stdin = self._stdin, None
            await queue.put(None)

    async def signal(self, signum: int = signals.SIGTERM) -> None:
        """Send ``signum`` to the process's whole process group."""
        await self._control("POST", f"/processes/{self.id}/signal", {"signal": str(int(signum))})

    async def kill(self) -> None:
        """SIGKILL the process's whole process group."""
        await self.signal(signals.SIGKILL)

    def _end_stdin(self) -> None:
        if self._stdin is not None:
            # A full queue is dropped with the request when the reply is closed.
            with contextlib.suppress(asyncio.QueueFull):
                self._stdin.put_nowait(None)
            self._stdin = None

    async def close(self) -> None:
        """Stop reading. A foreground process still running is killed by the daemon."""
        self._end_stdin()
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ProcessStart:
    """What ``computer.start()`` returns: await it, or use it as ``async with``."""

    def __init__(self, opener: Callable[[], Awaitable[Process]]) -> None:
        self._opener = opener
        self._process: Process | None = None

    def __await__(self) -> Generator[Any, None, Process]:
        return self._opener().__await__()

    async def __aenter__(self) -> Process:
        self._process = await self._opener()
        return self._process

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            await self._process.close()


async def stdin_body(
    header: bytes, source: bytes | AsyncIterable[bytes] | asyncio.Queue[bytes | None] | None
) -> AsyncIterator[bytes]:
    """The body of ``POST /exec``: the JSON line, then stdin in bounded pieces."""
    yield header
    if source is None:
        return
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), 1024 * 1024):
            yield bytes(view[start : start + 1024 * 1024])
    elif isinstance(source, asyncio.Queue):
        while (item := await source.get()) is not None:
            yield item
    else:
        async for item in source:
            if item:
                yield bytes(item)


class Collector:
    """Builds a :class:`CommandResult` from frames, keeping at most what the daemon sent."""

    def __init__(self) -> None:
        self.out: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.omitted: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self.exit: _Exit | None = None

    async def read(self, frames: Frames) -> _Exit:
        async for item in read_output(frames):
            if isinstance(item, OutputChunk):
                self.out[item.stream] += item.data
                self.omitted[item.stream] += item.omitted
            else:
                self.exit = item
        assert self.exit is not None
        return self.exit

    def result(self) -> CommandResult:
        assert self.exit is not None
        return CommandResult(
            exit_code=self.exit.exit_code,
            stdout_bytes=bytes(self.out["stdout"]),
            stderr_bytes=bytes(self.out["stderr"]),
            duration=self.exit.duration,
            stdout_omitted=self.omitted["stdout"],
            stderr_omitted=self.omitted["stderr"],
        )
