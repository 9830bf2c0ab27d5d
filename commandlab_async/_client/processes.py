"""Commands in a sandbox: results, streaming processes, and the daemon's frame stream.

``POST /exec`` answers with a stream of frames (see ``daemon/protocol.py``): one ``S``
(started), output frames ``1``/``2``, a ``G`` (gap) before a truncated stream's kept
tail, and one ``X`` (exit). Everything here reads that stream in bounded pieces and
checks each frame (:mod:`.replies`): a daemon's reply is never trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
import struct
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp

from ..daemon import protocol as wire
from .process_io import StdinQueue, process_route
from .replies import (
    MAX_CONTROL_FRAME,
    MAX_OUTPUT_FRAME,
    READ_PIECE,
    ReplyError,
    clip,
    expect_list,
    expect_object,
    get_bool,
    get_int,
    get_opt_int,
    get_opt_number,
    get_str,
    parse_json,
)

__all__ = ["CommandResult", "OutputChunk", "Process", "ProcessInfo"]

Stream = Literal["stdout", "stderr"]
_STREAMS: dict[bytes, Stream] = {wire.FRAME_STDOUT: "stdout", wire.FRAME_STDERR: "stderr"}
_STREAM_NUMBERS: dict[int, Stream] = {1: "stdout", 2: "stderr"}
_FRAME_HEAD = struct.Struct(">cI")
FRAMES_TYPE = wire.FRAMES_CONTENT_TYPE
_MAX_ID = 256  # characters of a process id (the daemon's are a few)
_MAX_PID = 2**31 - 1
_MAX_COUNT = 2**63 - 1  # of bytes omitted

Watch = Callable[[], AbstractContextManager[None]]
"""Wraps each read of the daemon's reply (the Computer's liveness watch and error mapping)."""


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


def parse_process_list(data: object) -> list[ProcessInfo]:
    """A daemon's ``/processes`` reply, each field checked."""
    what = "the process list"
    processes = []
    for item in expect_list(data, what):
        entry = expect_object(item, what)
        argv = expect_list(entry.get("argv"), what)
        if not all(isinstance(arg, str) for arg in argv):
            raise ReplyError(f"{what}: an argv that is not strings")
        processes.append(
            ProcessInfo(
                id=get_str(entry, "id", what, limit=_MAX_ID),
                pid=get_int(entry, "pid", what, low=1, high=_MAX_PID),
                argv=tuple(argv),
                background=get_bool(entry, "background", what),
                running=get_bool(entry, "running", what),
                exit_code=get_opt_int(entry, "exit_code", what, low=-(2**31), high=2**31 - 1),
            )
        )
    return processes


@dataclass
class _Exit:
    exit_code: int
    duration: float
    timed_out: bool
    limit_exceeded: bool


@dataclass(frozen=True)
class _Started:
    id: str
    pid: int


@dataclass(frozen=True)
class _Gap:
    stream: Stream
    omitted: int


class Frames:
    """Reads the frames of an exec or attach reply, each checked, none held whole.

    Output frames come out in pieces of at most :data:`~.replies.READ_PIECE` bytes;
    control frames (``S``, ``G``, ``X``) must be at most
    :data:`~.replies.MAX_CONTROL_FRAME` bytes and output frames at most
    ``max_output_frame`` (at least :data:`~.replies.MAX_OUTPUT_FRAME`). What breaks the
    protocol is a :class:`~.replies.ReplyError`; a reply cut short, a
    ``ConnectionResetError``. Each read runs inside ``watch``.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        watch: Watch | None = None,
        *,
        max_output_frame: int = MAX_OUTPUT_FRAME,
    ) -> None:
        self._response = response
        self._content = response.content
        self._watch = watch if watch is not None else contextlib.nullcontext
        self._max_output_frame = max(MAX_OUTPUT_FRAME, max_output_frame)
        self._stream: Stream = "stdout"  # of the output frame being read
        self._left = 0  # bytes of that frame still to read

    async def start(self) -> _Started:
        """The ``S`` frame, which must come first."""
        what = "the process's start frame"
        with self._watch():
            if self._response.content_type != FRAMES_TYPE:
                raise ReplyError(
                    f"a command's reply of type {clip(self._response.content_type)},"
                    f" not {FRAMES_TYPE}"
                )
            head = await self._head()
            if head is None:
                raise ConnectionResetError("the daemon's reply ended before the process started")
            kind, length = head
            if kind != wire.FRAME_START:
                raise ReplyError(f"a command's reply began with a frame {clip(kind)}, not S")
            data = expect_object(parse_json(await self._control(length), what), what)
            return _Started(
                id=get_str(data, "id", what, limit=_MAX_ID),
                pid=get_int(data, "pid", what, low=1, high=_MAX_PID),
            )

    async def next(self) -> OutputChunk | _Gap | _Exit:
        """The next piece of output, gap or (last) the exit."""
        with self._watch():
            if not self._left:
                head = await self._head()
                if head is None:
                    raise ConnectionResetError("the daemon's reply ended before the exit status")
                kind, length = head
                stream = _STREAMS.get(kind)
                if stream is None:
                    payload = await self._control(length)
                    if kind == wire.FRAME_GAP:
                        return _parse_gap(payload)
                    if kind == wire.FRAME_EXIT:
                        return parse_exit(payload)
                    raise ReplyError(f"an unexpected frame {clip(kind)} in a command's output")
                if length > self._max_output_frame:
                    raise ReplyError(
                        f"an output frame of {length} bytes (at most"
                        f" {self._max_output_frame} are accepted)"
                    )
                self._stream, self._left = stream, length
                if not length:
                    return OutputChunk(stream, b"")
            size = min(self._left, READ_PIECE)
            data = await self._exactly(size)
            self._left -= size
            return OutputChunk(self._stream, data)

    async def end(self) -> None:
        """After the exit frame: the reply must end there (its chunked terminator)."""
        with self._watch():
            if await self._content.read(1):
                raise ReplyError("a command's reply went on after its exit status")

    async def _head(self) -> tuple[bytes, int] | None:
        try:
            head = await self._content.readexactly(_FRAME_HEAD.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ConnectionResetError("the daemon's reply ended inside a frame") from None
            return None
        kind, length = _FRAME_HEAD.unpack(head)
        return kind, length

    async def _control(self, length: int) -> bytes:
        if length > MAX_CONTROL_FRAME:
            raise ReplyError(
                f"a control frame of {length} bytes (at most {MAX_CONTROL_FRAME} are accepted)"
            )
        return await self._exactly(length)

    async def _exactly(self, size: int) -> bytes:
        try:
            return await self._content.readexactly(size)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("the daemon's reply ended inside a frame") from None


async def read_output(frames: Frames) -> AsyncIterator[OutputChunk | _Exit]:
    """A reply's output chunks (a gap's size rides on its stream's next chunk), then its exit."""
    gaps: dict[Stream, int] = {}
    while True:
        item = await frames.next()
        if isinstance(item, OutputChunk):
            omitted = gaps.pop(item.stream, 0)
            if item.data or omitted:
                yield OutputChunk(item.stream, item.data, omitted)
        elif isinstance(item, _Gap):
            gaps[item.stream] = gaps.get(item.stream, 0) + item.omitted
        else:
            for name, omitted in gaps.items():  # a gap with no tail after it
                yield OutputChunk(name, b"", omitted)
            yield item
            return


def _parse_gap(payload: bytes) -> _Gap:
    what = "a gap frame"
    data = expect_object(parse_json(payload, what), what)
    number = get_int(data, "stream", what, low=1, high=2)
    return _Gap(_STREAM_NUMBERS[number], get_int(data, "omitted", what, low=0, high=_MAX_COUNT))


def parse_exit(payload: bytes) -> _Exit:
    what = "the exit frame"
    data = expect_object(parse_json(payload, what), what)
    return _Exit(
        exit_code=get_int(data, "exit_code", what, low=-(2**31), high=2**31 - 1),
        duration=get_opt_number(data, "duration", what) or 0.0,
        timed_out=get_bool(data, "timed_out", what, default=False),
        limit_exceeded=get_bool(data, "limit_exceeded", what, default=False),
    )


_CLOSE_WAIT = 5.0
"""Seconds closing a running foreground process waits for it to be killed and reaped."""


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
            await self._frames.end()  # the end of the reply

    async def wait(self) -> int:
        """Wait for the process to end (reading and dropping its remaining output)."""
        async for _ in self.output():
            pass
        assert self._exit is not None
        return self._exit.exit_code

    async def write(self, data: bytes | str) -> None:
        """Send ``data`` to the process's stdin (waits while the daemon's buffer is full).

        Once the process has exited (or this Process was closed, or its connection
        broke) it raises :class:`RemoteOSError` with ``errno.EPIPE`` at once, as a write
        to a pipe that nobody reads does. After :meth:`close_stdin`, or on an attached
        process (no stdin), it is a ``RuntimeError``.
        """
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
            if isinstance(queue, StdinQueue):
                await queue.close()  # nothing to do once the process is gone
            else:
                await queue.put(None)

    async def signal(self, signum: int = signals.SIGTERM) -> None:
        """Send ``signum`` to the process's whole process group."""
        route = process_route(self.id, "signal")
        await self._control("POST", route, {"signal": str(int(signum))})

    async def kill(self) -> None:
        """SIGKILL the process's whole process group."""
        await self.signal(signals.SIGKILL)

    def _end_stdin(self) -> None:
        if self._stdin is not None:
            # A full queue is dropped with the request when the reply is closed.
            with contextlib.suppress(asyncio.QueueFull):
                self._stdin.put_nowait(None)
            if isinstance(self._stdin, StdinQueue):
                self._stdin.end()  # a later write() fails at once, typed
            else:
                self._stdin = None

    async def close(self) -> None:
        """Stop reading. A foreground process still running is killed, and is no longer
        in ``computer.processes()`` once this returns (unless the daemon does not answer
        within a few seconds, or the caller is being cancelled: then its connection is
        just closed, which makes the daemon kill it soon after)."""
        self._end_stdin()
        try:
            if self._exit is None and not self.background and not _cancelling():
                await self._kill_and_drain()
        finally:
            if self._response.content.is_eof():
                self._response.release()
            else:
                self._response.close()

    async def _kill_and_drain(self) -> None:
        """Kill it and read its reply to the end: the daemon forgets a foreground process
        before it sends the exit frame, so once that is read, no listing shows it."""
        # Whatever fails here (the daemon gone, a reader in another task, a bad reply)
        # leaves it to closing the connection, as before.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_WAIT):
                await self._control("DELETE", process_route(self.id), None)
                await self.wait()

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


class _Kept:
    """One stream of a run as the client keeps it, by its own count whatever the daemon
    sends: the first ``max_output - max_output // 2`` bytes, the last ``max_output // 2``
    (after the last gap) and the number of bytes dropped between them."""

    def __init__(self, max_output: int) -> None:
        self.head = bytearray()
        self.head_room = max_output - max_output // 2
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.tail_room = max_output // 2
        self.in_tail = False
        self.omitted = 0

    def add(self, data: bytes) -> None:
        if not self.in_tail:
            take = data[: self.head_room - len(self.head)]
            self.head += take
            if len(take) == len(data):
                return
            data = data[len(take) :]
            self.in_tail = True
        if len(data) >= self.tail_room:  # this piece alone is the whole tail
            self.omitted += self.tail_size + len(data) - self.tail_room
            self.tail.clear()
            kept = data[len(data) - self.tail_room :] if self.tail_room else b""
            self.tail_size = len(kept)
            if kept:
                self.tail.append(kept)
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size > self.tail_room:
            excess = self.tail_size - self.tail_room
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                dropped = len(first)
            else:
                self.tail[0] = first[excess:]
                dropped = excess
            self.tail_size -= dropped
            self.omitted += dropped

    def gap(self, omitted: int) -> None:
        """The daemon dropped ``omitted`` bytes here: what the tail held is dropped too."""
        self.in_tail = True
        self.omitted += self.tail_size + omitted
        self.tail.clear()
        self.tail_size = 0

    def data(self) -> bytes:
        return bytes(self.head) + b"".join(self.tail)


class Collector:
    """Builds a :class:`CommandResult` from frames, keeping at most ``max_output`` bytes of
    each stream whatever the daemon sends."""

    def __init__(self, max_output: int) -> None:
        self.kept: dict[Stream, _Kept] = {"stdout": _Kept(max_output), "stderr": _Kept(max_output)}
        self.exit: _Exit | None = None

    async def read(self, frames: Frames) -> _Exit:
        await frames.start()
        while True:
            item = await frames.next()
            if isinstance(item, OutputChunk):
                self.kept[item.stream].add(item.data)
            elif isinstance(item, _Gap):
                self.kept[item.stream].gap(item.omitted)
            else:
                self.exit = item
                return item

    def result(self) -> CommandResult:
        assert self.exit is not None
        out, err = self.kept["stdout"], self.kept["stderr"]
        return CommandResult(
            exit_code=self.exit.exit_code,
            stdout_bytes=out.data(),
            stderr_bytes=err.data(),
            duration=self.exit.duration,
            stdout_omitted=out.omitted,
            stderr_omitted=err.omitted,
        )
