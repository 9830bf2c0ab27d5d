"""A daemon that lies: it speaks the sandbox daemon's protocol on loopback TCP or a Unix
socket and answers each route with a script of its own.

Code in a sandbox can serve this on the daemon's socket, so the client must answer every
script here with a typed error or a correct, bounded result, in bounded memory and time.
A script is a list of parts (:class:`Send`, :class:`Repeat`, :class:`Drip`,
:class:`Pause`, :class:`Hangup`) written in order, always at the pace the client reads
(``drain`` after each write): the liar itself holds a few hundred KiB at most, so a
memory measurement of the test process is the client's. Routes without a script get the
honest answer, so the client's liveness probe (``/health``) works while another route
lies. One request per connection; every reply the liar builds says ``Connection: close``
unless the lie is in its headers.

The wire format (see ``commandlab_async/daemon/server.py``): JSON replies are
``application/json``; ``POST /exec`` and ``GET /processes/{id}/output`` answer
``application/x-commandlab-frames``, chunked, a stream of frames ``kind (1 byte) + length
(4 bytes, big-endian) + payload``: ``S`` (started, JSON), ``1``/``2`` (stdout/stderr),
``G`` (gap before a stream's kept tail, JSON) and ``X`` (exit, JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FRAMES_TYPE = "application/x-commandlab-frames"
HONEST_HEALTH = {"version": "3", "uptime": 1.0, "pid": 1, "cwd": "/work", "uid": 1000}
_BLOCK = 64 * 1024  # what one write of a repeated unit carries


@dataclass(frozen=True)
class Send:
    """Bytes, as they are."""

    data: bytes


@dataclass(frozen=True)
class Repeat:
    """``unit`` ``times`` times (None: until the client hangs up)."""

    unit: bytes
    times: int | None = None


@dataclass(frozen=True)
class Drip:
    """``data`` one byte every ``interval`` seconds (``endless``: then ``data`` again, forever)."""

    data: bytes
    interval: float
    endless: bool = False


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Hangup:
    """Close the connection at once (``reset``: with a TCP RST)."""

    reset: bool = False


Part = Send | Repeat | Drip | Pause | Hangup
Script = list[Part]


# ---------------------------------------------------------------- building replies


def head(
    status: int = 200,
    content_type: str | None = "application/json",
    *,
    length: int | None = None,
    chunked: bool = False,
    extra: Iterable[tuple[str, str]] = (),
    close: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if close:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_reply(payload: object, status: int = 200) -> Script:
    body = json.dumps(payload).encode()
    return [Send(head(status, length=len(body)) + body)]


def raw_json_reply(
    body: bytes, status: int = 200, content_type: str = "application/json"
) -> Script:
    return [Send(head(status, content_type, length=len(body)) + body)]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


END_CHUNKS = b"0\r\n\r\n"


def frame(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    """A frame; ``length`` lies about its size when given."""
    return kind + struct.pack(">I", len(payload) if length is None else length) + payload


def json_frame(kind: bytes, payload: object) -> bytes:
    return frame(kind, json.dumps(payload).encode())


STARTED = json_frame(b"S", {"id": "p1", "pid": 42})


def exit_frame(exit_code: int = 0, **fields: object) -> bytes:
    payload: dict[str, object] = {
        "exit_code": exit_code,
        "duration": 0.01,
        "timed_out": False,
        "limit_exceeded": False,
        "stdout_omitted": 0,
        "stderr_omitted": 0,
    }
    payload.update(fields)
    return json_frame(b"X", payload)


def frames_reply(*frames: bytes) -> Script:
    """An honest frame stream: the head, one chunk per frame, the last chunk."""
    return [
        Send(head(200, FRAMES_TYPE, chunked=True)),
        *(Send(chunk(f)) for f in frames),
        Send(END_CHUNKS),
    ]


def endless_output(stream: bytes = b"1", piece: int = 32 * 1024) -> Script:
    """``S``, then output frames of ``piece`` bytes until the client hangs up."""
    out = chunk(frame(stream, b"x" * piece))
    return [Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED)), Repeat(out)]


# ---------------------------------------------------------------- the server


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]


Responder = Callable[[Request], Script | None]


@dataclass
class HostileDaemon:
    """Serves ``scripts`` (route -> script, or a callable choosing one) on 127.0.0.1 or a
    Unix socket. ``requests`` records the routes asked for."""

    scripts: Mapping[str, Script] | Responder = field(default_factory=dict)
    unix: bool = False
    requests: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _dir: str | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    url: str = ""

    async def __aenter__(self) -> HostileDaemon:
        if self.unix:
            self._dir = tempfile.mkdtemp(prefix="hostile-", dir="/tmp")
            path = os.path.join(self._dir, "daemon.sock")
            self._server = await asyncio.start_unix_server(self._serve, path)
            self.url = f"unix:{path}"
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Not cancelled: asyncio logs a cancelled connection task as an error. Cut off,
        # each ends by its ConnectionError.
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        await self._server.wait_closed()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, "daemon.sock"))
            os.rmdir(self._dir)

    def script_for(self, request: Request) -> Script:
        scripts = self.scripts
        chosen = scripts(request) if callable(scripts) else scripts.get(request.path)
        if chosen is not None:
            return chosen
        if request.path == "/health":
            return json_reply(HONEST_HEALTH)
        return json_reply({"error": "not_found", "message": "no such endpoint"}, 404)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request.path)
            await _play(self.script_for(request), writer)
            # Half-close, then read what the client still sends: closing with unread
            # input would reset the connection and could lose the reply on its way.
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(2.0):
                while await reader.read(_BLOCK):
                    pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = data.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    path, _, query = target.partition("?")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(method, path, query, headers)


async def _play(script: Script, writer: asyncio.StreamWriter) -> None:
    for part in script:
        if isinstance(part, Send):
            writer.write(part.data)
            await writer.drain()
        elif isinstance(part, Repeat):
            block = part.unit * max(1, _BLOCK // max(1, len(part.unit)))
            per_block = len(block) // len(part.unit)
            left = part.times
            while left is None or left > 0:
                if left is not None and left < per_block:
                    block = part.unit * left
                writer.write(block)
                await writer.drain()
                if left is not None:
                    left -= min(left, per_block)
        elif isinstance(part, Drip):
            while True:
                for i in range(len(part.data)):
                    writer.write(part.data[i : i + 1])
                    await writer.drain()
                    await _pause(writer, part.interval)
                if not part.endless:
                    break
        elif isinstance(part, Pause):
            await _pause(writer, part.seconds)
        elif isinstance(part, Hangup):
            transport = writer.transport
            if part.reset and transport.get_extra_info("socket") is not None:
                transport.abort()
            else:
                transport.close()
            raise ConnectionResetError("the liar hung up")


async def _pause(writer: asyncio.StreamWriter, seconds: float) -> None:
    """Sleep, but end (ConnectionResetError) as soon as the connection is closed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        if writer.transport.is_closing():
            raise ConnectionResetError("the client hung up")
        await asyncio.sleep(min(left, 0.02))


def describe(script: Script, limit: int = 200) -> str:
    """A short account of a script, for failure messages."""
    text = ", ".join(
        f"{type(p).__name__}({_short(p)})" for p in script
    )  # the parts' reprs can be huge
    return text if len(text) <= limit else text[:limit] + "…"


def _short(part: Any) -> str:
    if isinstance(part, Send | Drip):
        return f"{len(part.data)} bytes: {part.data[:40]!r}"
    if isinstance(part, Repeat):
        return f"{part.unit[:20]!r} x {part.times}"
    return repr(part)
