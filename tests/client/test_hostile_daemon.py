"""The client against a daemon that lies (tests/client/hostile_daemon.py): every lie is a typed
error (a ``DaemonError``) or a correct, bounded result, in bounded memory and time.

Memory is the test process's tracemalloc peak above its level before the call. The liar
shares the process but writes only at the pace the client reads, so what it holds is a
few hundred KiB at most. A call that passes four times its memory bound, or one and a
half times its time bound, is cancelled at once: a regression fails the test rather than exhausting
the machine or the test's timeout.

The deadlines (see commandlab_async/replies.py) are shortened here: a reply head must
end 0.2 s after its first byte, a JSON reply be read in 0.5 s, a run's reply come within
the command's 0.3 s timeout plus 0.2 s, a file read move within 0.5 s. Calls without any
deadline (streaming a process's output, a file transfer that moves) are only fed lies
that end; a call with a timeout gets every lie, drips and silence included.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as with_example
from hypothesis import strategies as st

from commandlab_async._client import computer as computer_module
from commandlab_async._client import replies
from commandlab_async._client.computer import Computer
from commandlab_async._client.files import FileInfo
from commandlab_async._client.processes import CommandResult, ProcessInfo
from commandlab_async._client.transport import new_session
from commandlab_async.errors import (
    AuthenticationError,
    DaemonError,
    DaemonProtocolError,
    DaemonUnreachableError,
    FileTooLargeError,
    RemoteFileNotFoundError,
)
from tests.client.hostile_daemon import (
    END_CHUNKS,
    FRAMES_TYPE,
    HONEST_HEALTH,
    STARTED,
    Drip,
    Hangup,
    HostileDaemon,
    Pause,
    Repeat,
    Script,
    Send,
    chunk,
    describe,
    endless_output,
    exit_frame,
    frame,
    head,
    json_frame,
    json_reply,
    raw_json_reply,
)
from tests.daemon.test_daemon import TOKEN, Daemon, start_daemon, stop_daemons

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

KIB = 1024
MIB = 1024 * KIB

# The bounds the properties assert (with the shortened deadlines of `quick`).
SECONDS = 2.0  # the longest any call may take (the slowest deadline here is 0.5 s)
MEMORY = 48 * MIB  # a 1 MiB JSON reply parses into about 26 MiB at worst
MESSAGE = 1500  # characters of an error's message
RUN_MAX_OUTPUT = 2048
READ_MAX = 64 * KIB


@pytest.fixture(autouse=True, scope="module")
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def quick() -> Iterator[None]:
    """Deadlines short enough for a property's examples (the bounds, not the code)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replies, "HEAD_TIMEOUT", 0.2)
        patch.setattr(computer_module, "_JSON_TIMEOUT", 0.5)
        patch.setattr(computer_module, "_REPLY_MARGIN", 0.2)
        patch.setattr(computer_module, "_STALL_TIMEOUT", 0.5)
        patch.setattr(computer_module, "_ERROR_BODY_TIMEOUT", 0.3)
        yield


@asynccontextmanager
async def computer_at(daemon: HostileDaemon | str, token: str = "t") -> AsyncIterator[Computer]:
    """A Computer for a daemon's URL, on a pool made the way provisioning makes one."""
    url = daemon if isinstance(daemon, str) else daemon.url
    session = new_session()
    try:
        yield Computer(name="hostile", url=url, token=token, session=session, platform="docker")
    finally:
        await session.close()


@dataclass
class Outcome:
    value: Any
    error: BaseException | None
    peak: int  # bytes above the level before the call
    seconds: float
    cut: str | None  # why the watchdog cancelled the call, if it did


async def measured(
    call: Callable[[], Awaitable[Any]], *, memory: int = MEMORY, seconds: float = SECONDS
) -> Outcome:
    """Run ``call``; cancel it at four times ``memory`` or one and a half ``seconds``."""
    loop = asyncio.get_running_loop()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    started = loop.time()
    task = asyncio.ensure_future(call())
    cut = None
    while not task.done():
        await asyncio.wait({task}, timeout=0.005)
        if task.done():
            break
        if tracemalloc.get_traced_memory()[1] - base > 4 * memory:
            cut = f"passed {4 * memory / MIB:.0f} MiB"
        elif loop.time() - started > 1.5 * seconds:
            cut = f"still running after {1.5 * seconds:g}s"
        if cut is not None:
            task.cancel()
            await asyncio.wait({task})
    elapsed = loop.time() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    error = None if task.cancelled() else task.exception()
    value = None if task.cancelled() or error is not None else task.result()
    return Outcome(value, error, peak, elapsed, cut)


async def lied_to(
    route: str, script: Script, call: Callable[[Computer], Awaitable[Any]], *, unix: bool = False
) -> Outcome:
    """``call`` measured against a daemon that answers ``route`` with ``script``."""
    async with (
        HostileDaemon({route: script}, unix=unix) as daemon,
        computer_at(daemon) as computer,
    ):
        return await measured(lambda: call(computer))


def assert_bounded(
    outcome: Outcome,
    script: Script,
    *,
    memory: int = MEMORY,
    seconds: float = SECONDS,
) -> None:
    """A typed error with a short message, or a value; within the bounds."""
    where = describe(script)
    assert outcome.cut is None, f"{outcome.cut}: {where}"
    assert outcome.peak <= memory, f"{outcome.peak / MIB:.1f} MiB: {where}"
    assert outcome.seconds <= seconds, f"{outcome.seconds:.2f}s: {where}"
    if outcome.error is not None:
        assert isinstance(outcome.error, DaemonError), f"{outcome.error!r}: {where}"
        assert len(str(outcome.error)) <= MESSAGE, where


def example(coroutine: Callable[[], Awaitable[None]]) -> None:
    """One property example, on a loop of its own."""
    asyncio.run(coroutine())


# ------------------------------------------------------------------ the case


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
async def test_endless_output_for_max_output_1024_keeps_the_client_bounded(
    unix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27, item 2: ``run(max_output=1024)`` drove the client to 1.5 GiB in 2 s.

    The liar streams stdout frames for as long as the client reads (about 2 s here: the
    command's 1 s timeout plus a reply margin of 1 s). The client keeps at most 1 KiB of
    it and ends with a typed error when the reply is late; its memory stays under 4 MiB
    (measured: about 0.7 MiB). Before the fix it passed 16 MiB within 0.1 s.
    """
    monkeypatch.setattr(computer_module, "_REPLY_MARGIN", 1.0)
    async with (
        HostileDaemon({"/exec": endless_output()}, unix=unix) as daemon,
        computer_at(daemon) as computer,
    ):
        outcome = await measured(
            lambda: computer.run("yes", max_output=1024, timeout=1.0), memory=4 * MIB
        )
    assert outcome.cut is None, f"the client {outcome.cut}"
    assert outcome.peak < 4 * MIB, outcome.peak
    assert isinstance(outcome.error, DaemonUnreachableError), outcome.error
    assert isinstance(outcome.error, TimeoutError | DaemonError)
    assert 1.5 < outcome.seconds < 5.0, outcome.seconds


async def test_output_beyond_max_output_is_cut_by_the_client_itself() -> None:
    """A daemon that ignores ``max_output`` and then ends: the client keeps the first
    and last halves by its own count, and counts the rest as omitted."""
    sent = b"".join(b"%07d\n" % i for i in range(200_000))  # 1.6 MB, numbered lines
    pieces = [sent[i : i + 200_000] for i in range(0, len(sent), 200_000)]
    script: Script = [
        Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED)),
        *(Send(chunk(frame(b"1", piece))) for piece in pieces),
        Send(chunk(exit_frame(3)) + END_CHUNKS),
    ]
    async with HostileDaemon({"/exec": script}) as daemon, computer_at(daemon) as computer:
        outcome = await measured(lambda: computer.run("cat", max_output=1000), memory=4 * MIB)
    assert_bounded(outcome, script, memory=4 * MIB)
    result: CommandResult = outcome.value
    assert result.exit_code == 3
    assert result.stdout_bytes == sent[:500] + sent[-500:]
    assert result.stdout_omitted == len(sent) - 1000
    assert result.truncated


# ------------------------------------------------------------------ named lies


def _frames(*frames: bytes, end: bytes = END_CHUNKS) -> Script:
    return [Send(head(200, FRAMES_TYPE, chunked=True) + b"".join(map(chunk, frames)) + end)]


HEALTH = ("/health", lambda c: c.health(timeout=0.5))
STAT = ("/files/stat", lambda c: c.stat("f"))
RUN = ("/exec", lambda c: c.run("x", max_output=RUN_MAX_OUTPUT, timeout=0.3))
READ = ("/files", lambda c: c.read_file("f", max_size=READ_MAX))

NAMED: dict[str, tuple[tuple[str, Any], Script, type[BaseException]]] = {
    # heads
    "endless header fields": (
        HEALTH,
        [Send(b"HTTP/1.1 200 OK\r\n"), Repeat(b"X-A: b\r\n")],
        DaemonProtocolError,
    ),
    "an endless header line": (
        HEALTH,
        [Send(b"HTTP/1.1 200 OK\r\nX-A: "), Repeat(b"a")],
        DaemonProtocolError,
    ),
    "an endless status line": (HEALTH, [Send(b"HTTP/1.1 200 "), Repeat(b"O")], DaemonProtocolError),
    "a status line of garbage": (HEALTH, [Send(b"\x00\xff\r\n\r\n")], DaemonProtocolError),
    "a head dripped forever": (
        RUN,  # no deadline but the head's: the command's timeout is not yet running
        [Send(b"HTTP/1.1 200 OK\r\n"), Drip(b"X-A: b\r\n", 0.02, endless=True)],
        DaemonProtocolError,
    ),
    "endless informational replies": (
        HEALTH,
        [Repeat(b"HTTP/1.1 100 Continue\r\n\r\n")],
        DaemonProtocolError,
    ),
    "a negative content length": (
        HEALTH,
        [Send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n")],
        DaemonProtocolError,
    ),
    # JSON bodies
    "a content length of a petabyte": (
        HEALTH,
        [Send(head(length=10**15)), Repeat(b"[")],
        DaemonProtocolError,
    ),
    "an endless chunked JSON body": (
        HEALTH,
        [Send(head(chunked=True)), Repeat(chunk(b"[0," * 100))],
        DaemonProtocolError,
    ),
    "an endless JSON body ended by closing": (
        STAT,
        [Send(head()), Repeat(b" ")],
        DaemonProtocolError,
    ),
    "a body shorter than its length": (
        HEALTH,
        [Send(head(length=100) + b'{"a":'), Hangup()],
        DaemonUnreachableError,
    ),
    "a body dripped forever": (
        HEALTH,
        [Send(head(length=10**6)), Drip(b"[", 0.02, endless=True)],
        DaemonUnreachableError,
    ),
    "JSON nested a million deep": (
        HEALTH,
        raw_json_reply(b"[" * 500_000 + b"]" * 500_000),
        DaemonProtocolError,
    ),
    "invalid UTF-8": (STAT, raw_json_reply(b'{"path": "\xff\xfe"}'), DaemonProtocolError),
    "NaN": (HEALTH, raw_json_reply(b'{"uptime": NaN}'), DaemonProtocolError),
    "HTML, not JSON": (
        HEALTH,
        raw_json_reply(json.dumps(HONEST_HEALTH).encode(), content_type="text/html"),
        DaemonProtocolError,
    ),
    "a working directory that is a number": (HEALTH, json_reply({"cwd": 5}), DaemonProtocolError),
    "a stat of the wrong shape": (STAT, json_reply([1, 2, 3]), DaemonProtocolError),
    # error replies
    "an error reply without end": (
        STAT,
        [Send(head(500, chunked=True)), Repeat(chunk(b"x" * 1000))],
        DaemonError,
    ),
    "an error message of a megabyte": (
        STAT,
        json_reply({"error": "not_found", "path": "p" * 10**5, "message": "m" * 10**6}, 404),
        DaemonError,
    ),
    "an error reply nested deep": (
        STAT,
        raw_json_reply(b"[" * 30_000 + b"]" * 30_000, 404),
        DaemonError,
    ),
    "an error with a path that is a list": (
        STAT,
        json_reply({"error": "not_found", "path": [1] * 10_000, "message": "gone"}, 404),
        RemoteFileNotFoundError,
    ),
    "a 401": (STAT, json_reply({"error": "unauthorized"}, 401), AuthenticationError),
    # frames
    "a frame of 4 GiB": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED)),
            Send(chunk(frame(b"1", b"", length=2**32 - 1))),
            Repeat(chunk(b"x" * 4096)),
        ],
        DaemonProtocolError,
    ),
    "an exit frame of 2 GiB": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED)),
            Send(chunk(frame(b"X", b"", length=2**31))),
            Repeat(chunk(b"{" * 4096)),
        ],
        DaemonProtocolError,
    ),
    "an exit status that is a string": (
        RUN,
        _frames(STARTED, json_frame(b"X", {"exit_code": "0"})),
        DaemonProtocolError,
    ),
    "a negative gap": (
        RUN,
        _frames(STARTED, json_frame(b"G", {"stream": 1, "omitted": -5}), exit_frame()),
        DaemonProtocolError,
    ),
    "a frame of an unknown kind": (RUN, _frames(STARTED, frame(b"Z", b"")), DaemonProtocolError),
    "no start frame": (RUN, _frames(frame(b"1", b"x"), exit_frame()), DaemonProtocolError),
    "frames of the wrong type": (
        RUN,
        [Send(head(200, "application/json", chunked=True) + chunk(STARTED) + END_CHUNKS)],
        DaemonProtocolError,
    ),
    "a close inside a frame": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED + frame(b"1", b"abc")[:6])),
            Hangup(),
        ],
        DaemonUnreachableError,
    ),
    "a reset inside a frame": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED + frame(b"1", b"abc")[:6])),
            Hangup(reset=True),
        ],
        DaemonUnreachableError,
    ),
    "more after the exit": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED) + chunk(exit_frame())),
            Repeat(chunk(b"g" * 1000)),
        ],
        DaemonProtocolError,
    ),
    "endless gaps": (
        RUN,
        [
            Send(head(200, FRAMES_TYPE, chunked=True) + chunk(STARTED)),
            Repeat(chunk(json_frame(b"G", {"stream": 1, "omitted": 2**62}))),
        ],
        DaemonUnreachableError,
    ),
    "a bad chunk size": (
        RUN,
        [Send(head(200, FRAMES_TYPE, chunked=True) + b"zz\r\n")],
        DaemonProtocolError,
    ),
    "an endless chunk extension": (
        RUN,
        [Send(head(200, FRAMES_TYPE, chunked=True) + b"5;"), Repeat(b"a")],
        DaemonUnreachableError,
    ),
    # files
    "a file longer than max_size": (
        READ,
        [Send(head(200, "application/octet-stream", length=10**12)), Repeat(b"x", READ_MAX)],
        FileTooLargeError,
    ),
    "an endless file": (
        READ,
        [Send(head(200, "application/octet-stream")), Repeat(b"x")],
        FileTooLargeError,
    ),
    "a file that is JSON": (READ, json_reply({"a": 1}), DaemonProtocolError),
}


@pytest.mark.usefixtures("quick")
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("lie", list(NAMED))
async def test_each_lie_is_its_typed_error_in_bounded_memory_and_time(lie: str, unix: bool) -> None:
    (route, call), script, expected = NAMED[lie]
    outcome = await lied_to(route, script, call, unix=unix)
    assert_bounded(outcome, script)
    assert isinstance(outcome.error, expected), repr(outcome.error)


# ------------------------------------------------------------------ properties

# Examples that may wait out a deadline (0.2 to 0.5 s) are fewer than those that may not.
PROPERTY = settings(
    max_examples=50,
    deadline=5000,  # ms; the examples assert their own, tighter, bound (SECONDS)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_PROPERTY = settings(PROPERTY, max_examples=30)

KEYS = st.sampled_from(
    [
        "cwd",
        "path",
        "entries",
        "name",
        "type",
        "size",
        "mode",
        "mtime",
        "uid",
        "gid",
        "id",
        "pid",
        "argv",
        "background",
        "running",
        "exit_code",
        "error",
        "message",
        "truncated",
    ]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner),
    max_leaves=12,
)

STAT_REPLY = {"path": "/work/f", "type": "file", "size": 3, "mode": 0o644, "mtime": 1.5}
ENTRY = {"name": "a", "type": "file", "size": 1, "mode": 0o644, "mtime": 1.0}
PROCESS = {"id": "p1", "pid": 42, "argv": ["sleep", "9"], "background": True}
PROCESS |= {"running": True, "exit_code": None}


def _check_health(value: Any) -> None:
    assert isinstance(value, dict)
    assert isinstance(value.get("cwd"), str | None)


def _check_info(value: Any) -> None:
    assert isinstance(value, FileInfo)
    assert isinstance(value.path, str)
    assert isinstance(value.size, int)
    assert isinstance(value.mtime, float)


def _check_listing(value: Any) -> None:
    assert isinstance(value, list)
    for info in value:
        _check_info(info)
        assert "/" not in info.name


def _check_processes(value: Any) -> None:
    assert isinstance(value, list)
    for info in value:
        assert isinstance(info, ProcessInfo)
        assert all(isinstance(arg, str) for arg in info.argv)


def _check_none(value: Any) -> None:
    assert value is None


# route, the honest reply, the call, what a successful value must be
JSON_CALLS: dict[str, tuple[str, Any, Callable[[Computer], Awaitable[Any]], Any]] = {
    "health": ("/health", HONEST_HEALTH, lambda c: c.health(timeout=0.5), _check_health),
    "stat": ("/files/stat", STAT_REPLY, lambda c: c.stat("f"), _check_info),
    "list_dir": (
        "/files/list",
        {"path": "/work", "entries": [ENTRY], "truncated": False},
        lambda c: c.list_dir("."),
        _check_listing,
    ),
    "processes": ("/processes", [PROCESS], lambda c: c.processes(), _check_processes),
    "kill_process": ("/processes/p1", PROCESS, lambda c: c.kill_process("p1"), _check_none),
    "write_file": ("/files", {"path": "/work/f"}, lambda c: c.write_file("f", b"x"), _check_none),
}


@st.composite
def json_bodies(draw: st.DrawFn, honest: Any) -> bytes:
    """The honest reply with a field changed, any JSON, or bytes that are hardly JSON."""
    how = draw(st.sampled_from(["field", "entry", "any", "deep", "huge", "bytes"]))
    if how in ("field", "entry"):
        reply = json.loads(json.dumps(honest))
        target = reply
        if how == "entry" and isinstance(reply, dict) and reply.get("entries"):
            target = reply["entries"][0]
        elif how == "entry" and isinstance(reply, list):
            target = reply[0]
        if isinstance(target, dict):
            target[draw(KEYS)] = draw(JSON)
        return json.dumps(reply).encode()
    if how == "any":
        return json.dumps(draw(JSON)).encode()
    if how == "deep":
        depth = draw(st.integers(min_value=1, max_value=200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"0" + closer * depth
    if how == "huge":
        size = draw(st.integers(min_value=replies.MAX_JSON - 4, max_value=replies.MAX_JSON + 4))
        unit = draw(st.sampled_from([b"{},", b"[],", b'"ab",', b"1.5,"]))
        return b"[" + unit * (size // len(unit)) + b"0]"
    return draw(st.binary(max_size=200))


@st.composite
def deliveries(draw: st.DrawFn, body: bytes, *, drips: bool = True) -> Script:
    """``body`` as a reply: honest framing, or lies about its type, length, pace or end."""
    kind = draw(
        st.sampled_from(
            ["length", "chunked", "close", "type", "short", "long", "cut", "silent", "drip"]
            if drips
            else ["length", "chunked", "close", "type", "short", "long", "cut"]
        )
    )
    if kind == "length":
        return [Send(head(length=len(body)) + body)]
    if kind == "chunked":
        size = draw(st.integers(min_value=1, max_value=64 * KIB))
        pieces = [chunk(body[i : i + size]) for i in range(0, len(body), size)]
        return [Send(head(chunked=True) + b"".join(pieces) + END_CHUNKS)]
    if kind == "close":  # ended by closing the connection
        return [Send(head() + body)]
    if kind == "type":
        content_type = draw(st.sampled_from(["text/html", "application/octet-stream", "x/y"]))
        return [Send(head(200, content_type, length=len(body)) + body)]
    if kind == "short":  # the length says less than the body holds
        return [Send(head(length=len(body) // 2) + body)]
    if kind == "long":  # the length says more, and the connection closes
        return [Send(head(length=len(body) + 100) + body), Hangup()]
    if kind == "cut":
        return [Send(head(length=len(body)) + body[: len(body) // 2]), Hangup(reset=True)]
    if kind == "silent":
        return [Send(head(length=len(body))), Pause(30)]
    return [Send(head(length=len(body) + 10)), Drip(body, 0.02, endless=True)]


@pytest.mark.usefixtures("quick")
@SLOW_PROPERTY
@given(data=st.data(), name=st.sampled_from(list(JSON_CALLS)), unix=st.booleans())
def test_json_replies_of_any_shape_size_or_pace(data: st.DataObject, name: str, unix: bool) -> None:
    route, honest, call, check = JSON_CALLS[name]
    script = data.draw(deliveries(data.draw(json_bodies(honest))))

    async def run() -> None:
        outcome = await lied_to(route, script, call, unix=unix)
        assert_bounded(outcome, script)
        if outcome.error is None:
            check(outcome.value)

    example(run)


HEAD_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 204 No",
        b"HTTP/1.1 999 X",
        b"HTTP/2 200",
        b"ICE/1.0 200 OK",
        b"HTTP/1.1 200 OK\n",
        b"",
    ]
)
HEADER_LINES = st.sampled_from(
    [
        b"Content-Type: application/json",
        b"Content-Length: 2",
        b"Content-Length: 99",
        b"Content-Length: -1",
        b"Content-Length: 1e3",
        b"Content-Length: 2, 3",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Content-Encoding: gzip",
        b"Connection: close",
        b"Connection: keep-alive",
        b"X-A: " + b"a" * 9000,
        b"Bad Header",
        b" folded",
        b"X-\xff: \xfe",
    ]
)


@st.composite
def heads(draw: st.DrawFn) -> Script:
    """A reply head that is odd, endless, dripped, or followed by replies nobody asked."""
    lines = [draw(HEAD_LINES), *draw(st.lists(HEADER_LINES, max_size=6))]
    start = b"\r\n".join(lines) + b"\r\n"
    ending = draw(st.sampled_from(["end", "endless fields", "endless line", "drip", "garbage"]))
    if ending == "end":
        extra = draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]))
        return [Send(start + b"\r\n{}" + extra * draw(st.integers(0, 20)))]
    if ending == "endless fields":
        return [Send(start), Repeat(b"X-A: b\r\n")]
    if ending == "endless line":
        return [Send(start + b"X-A: "), Repeat(b"a")]
    if ending == "drip":
        return [Send(start), Drip(b"X-A: b\r\n", 0.02, endless=True)]
    return [Send(start + draw(st.binary(max_size=300)))]


ROUTE_CALLS: dict[str, tuple[str, Callable[[Computer], Awaitable[Any]]]] = {
    "health": ("/health", lambda c: c.health(timeout=0.5)),
    "list_dir": ("/files/list", lambda c: c.list_dir(".")),
    "run": ("/exec", lambda c: c.run("x", max_output=RUN_MAX_OUTPUT, timeout=0.3)),
    "start": ("/exec", lambda c: _consume(c.start("x"))),
    "attach": ("/processes/p1/output", lambda c: _consume(c.attach("p1"))),
    "read_file": ("/files", lambda c: c.read_file("f", max_size=READ_MAX)),
}


async def _consume(start: Any) -> int:
    """Read a process's output to its end (counted, not kept)."""
    seen = 0
    async with start as process:
        async for piece in process.output():
            seen += len(piece.data)
    return seen


@pytest.mark.usefixtures("quick")
@PROPERTY
@given(script=heads(), name=st.sampled_from(list(ROUTE_CALLS)), unix=st.booleans())
def test_any_reply_head_is_a_typed_error_or_an_answer(
    script: Script, name: str, unix: bool
) -> None:
    route, call = ROUTE_CALLS[name]

    async def run() -> None:
        outcome = await lied_to(route, script, call, unix=unix)
        assert_bounded(outcome, script)

    example(run)


FRAME_KINDS = st.sampled_from([b"S", b"1", b"2", b"G", b"X", b"Z", b"\x00"])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame: well formed, with odd contents, or lying about its length."""
    how = draw(st.sampled_from(["out", "gap", "exit", "start", "json", "length", "kind"]))
    if how == "out":
        return frame(draw(st.sampled_from([b"1", b"2"])), draw(st.binary(max_size=3000)))
    if how == "gap":
        stream = draw(st.integers(min_value=0, max_value=3))
        omitted = draw(st.integers(min_value=-2, max_value=2**64))
        return json_frame(b"G", {"stream": stream, "omitted": omitted})
    if how == "exit":
        return exit_frame(draw(st.integers(min_value=-300, max_value=300)))
    if how == "start":
        return STARTED
    if how == "json":
        return frame(draw(FRAME_KINDS), json.dumps(draw(JSON)).encode())
    if how == "length":
        lie = draw(st.integers(min_value=0, max_value=2**32 - 1))
        return frame(draw(FRAME_KINDS), draw(st.binary(max_size=50)), length=lie)
    return frame(draw(FRAME_KINDS), draw(st.binary(max_size=50)))


@st.composite
def frame_streams(draw: st.DrawFn) -> Script:
    """A frame stream that starts (mostly) honestly, then goes wrong anywhere."""
    body = [STARTED] if draw(st.booleans()) else []
    body += draw(st.lists(frames(), max_size=6))
    ending = draw(st.sampled_from(["exit", "end", "cut", "reset", "garbage"]))
    if ending in ("exit", "garbage"):
        body.append(exit_frame())
    stream = b"".join(body)
    if ending == "garbage":
        stream += draw(st.binary(min_size=1, max_size=100))
    framing = draw(st.sampled_from(["chunks", "one chunk", "close"]))
    if framing == "close":  # no length, no chunks: ended by closing
        reply = head(200, FRAMES_TYPE) + stream
    elif framing == "one chunk":
        reply = head(200, FRAMES_TYPE, chunked=True) + chunk(stream) + END_CHUNKS
    else:
        reply = head(200, FRAMES_TYPE, chunked=True) + b"".join(map(chunk, body)) + END_CHUNKS
    if ending in ("cut", "reset"):
        cut = draw(st.integers(min_value=0, max_value=len(reply)))
        return [Send(reply[:cut]), Hangup(reset=ending == "reset")]
    return [Send(reply)]


@pytest.mark.usefixtures("quick")
@PROPERTY
@given(script=frame_streams(), name=st.sampled_from(["run", "start"]), unix=st.booleans())
def test_frame_streams_of_any_kind(script: Script, name: str, unix: bool) -> None:
    route, call = ROUTE_CALLS[name]

    async def run() -> None:
        outcome = await lied_to(route, script, call, unix=unix)
        assert_bounded(outcome, script)
        if outcome.error is None and name == "run":
            result: CommandResult = outcome.value
            assert len(result.stdout_bytes) <= RUN_MAX_OUTPUT
            assert len(result.stderr_bytes) <= RUN_MAX_OUTPUT

    example(run)


def kept_by_the_rules(events: list[tuple[str, bytes | int]], max_output: int) -> tuple[bytes, int]:
    """What a run keeps of one stream, as the README says: its first ``max_output -
    max_output // 2`` bytes, its last ``max_output // 2`` after the last gap, and the
    count of every other byte."""
    head_room, tail_room = max_output - max_output // 2, max_output // 2
    first, rest, omitted, past_head = b"", b"", 0, False
    for what, item in events:
        if what == "gap":
            assert isinstance(item, int)
            past_head, omitted, rest = True, omitted + len(rest) + item, b""
            continue
        assert isinstance(item, bytes)
        if not past_head:
            take = item[: head_room - len(first)]
            first, item = first + take, item[len(take) :]
            past_head = bool(item)
        rest += item
    tail = rest[max(len(rest) - tail_room, 0) :] if tail_room else b""
    return first + tail, omitted + len(rest) - len(tail)


@PROPERTY
@with_example(max_output=8, events=[("gap", 0), ("out", b"\x00\x00\x00")])  # less than the tail
@given(
    max_output=st.integers(min_value=0, max_value=3000),
    events=st.lists(
        st.tuples(st.just("out"), st.binary(max_size=2500))
        | st.tuples(st.just("gap"), st.integers(min_value=0, max_value=10**6)),
        max_size=10,
    ),
)
def test_a_run_keeps_head_and_tail_by_its_own_count(
    max_output: int, events: list[tuple[str, Any]]
) -> None:
    """However much a daemon sends (honest or not), the result is what the rules keep,
    and never more than ``max_output`` bytes; memory stays under 2 x max_output + 4 MiB."""
    body = [STARTED]
    for what, item in events:
        body.append(
            frame(b"1", item) if what == "out" else json_frame(b"G", {"stream": 1, "omitted": item})
        )
    body.append(exit_frame())
    script = _frames(*body)

    async def run() -> None:
        async with HostileDaemon({"/exec": script}) as daemon, computer_at(daemon) as computer:
            outcome = await measured(
                lambda: computer.run("x", max_output=max_output), memory=2 * max_output + 4 * MIB
            )
        assert_bounded(outcome, script, memory=2 * max_output + 4 * MIB)
        result: CommandResult = outcome.value
        assert (result.stdout_bytes, result.stdout_omitted) == kept_by_the_rules(events, max_output)
        assert len(result.stdout_bytes) <= max_output

    example(run)


@pytest.mark.usefixtures("quick")
@SLOW_PROPERTY
@given(
    data=st.data(),
    status=st.sampled_from([400, 401, 403, 404, 409, 413, 500, 503, 599]),
    name=st.sampled_from(list(ROUTE_CALLS)),
)
def test_error_replies_are_read_within_bounds(data: st.DataObject, status: int, name: str) -> None:
    route, call = ROUTE_CALLS[name]
    how = data.draw(st.sampled_from(["json", "endless", "drip", "huge"]))
    if how == "json":
        payload = {
            "error": data.draw(JSON),
            "message": data.draw(JSON),
            data.draw(KEYS): data.draw(JSON),
        }
        script = raw_json_reply(json.dumps(payload).encode(), status=status)
    elif how == "endless":
        script = [Send(head(status, chunked=True)), Repeat(chunk(b'{"error":' * 100))]
    elif how == "drip":
        script = [Send(head(status, length=10**6)), Drip(b'{"error": "x"', 0.02, endless=True)]
    else:
        message = "m" * data.draw(st.integers(min_value=0, max_value=200_000))
        script = json_reply({"error": "not_found", "path": "/p", "message": message}, status)

    async def run() -> None:
        outcome = await lied_to(route, script, call)
        assert_bounded(outcome, script)
        assert isinstance(outcome.error, DaemonError), outcome.error

    example(run)


@pytest.mark.usefixtures("quick")
@SLOW_PROPERTY
@given(
    max_size=st.integers(min_value=0, max_value=64 * KIB),
    size=st.integers(min_value=0, max_value=128 * KIB),
    length=st.none() | st.integers(min_value=0, max_value=10**12),
    how=st.sampled_from(["sent", "endless", "cut", "silent"]),
)
def test_file_reads_never_hold_more_than_max_size(
    max_size: int, size: int, length: int | None, how: str
) -> None:
    body = b"f" * size
    start = head(200, "application/octet-stream", length=length)
    script: Script = {
        "sent": [Send(start + body)],
        "endless": [Send(start), Repeat(b"f")],
        "cut": [Send(start + body), Hangup(reset=True)],
        "silent": [Send(start), Pause(30)],
    }[how]

    async def run() -> None:
        async with HostileDaemon({"/files": script}) as daemon, computer_at(daemon) as computer:
            outcome = await measured(lambda: computer.read_file("f", max_size=max_size))
        assert_bounded(outcome, script, memory=4 * MIB)
        if outcome.error is None:
            assert len(outcome.value) <= max_size

    example(run)


# ------------------------------------------------------------------ stated bounds


@pytest.mark.usefixtures("quick")
async def test_the_largest_listing_reply_parses_in_bounded_memory() -> None:
    """The worst a listing can cost: 4 MiB of empty JSON objects, the most expensive
    JSON there is to parse (about 25 bytes of memory per byte). Under 128 MiB; nothing
    larger is parsed."""
    body = b"[" + b"{}," * (replies.MAX_LISTING // 3 - 1) + b"{}]"
    assert len(body) <= replies.MAX_LISTING
    script = raw_json_reply(body)
    async with HostileDaemon({"/files/list": script}) as daemon, computer_at(daemon) as computer:
        outcome = await measured(lambda: computer.list_dir("."), memory=128 * MIB)
    assert_bounded(outcome, script, memory=128 * MIB)
    assert isinstance(outcome.error, DaemonProtocolError)


# ------------------------------------------------------------------ the real daemon


@pytest.fixture(scope="module")
def real_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield start_daemon(tmp_path_factory.mktemp("daemon") / "daemon.log", procs)
    finally:
        stop_daemons(procs)


async def test_the_real_daemon_passes_every_check(real_daemon: Daemon) -> None:
    """The daemon this library runs meets every bound and shape the client now checks,
    at the edges: cut output, odd file names, a full listing, background processes."""
    async with computer_at(f"http://127.0.0.1:{real_daemon.port}", TOKEN) as computer:
        health = await computer.health()
        assert health["cwd"] == await computer.working_dir()
        lines = "i=0; while [ $i -lt 100000 ]; do echo line$i; i=$((i+1)); done"
        result = await computer.run(f"({lines}) | tee /dev/stderr", max_output=1001)
        assert result.stdout_bytes.startswith(b"line0\nline1\n")
        assert result.stdout_bytes.endswith(b"line99999\n")
        assert len(result.stdout_bytes) == len(result.stderr_bytes) == 1001
        printed = sum(len(f"line{i}\n") for i in range(100_000))
        assert result.stdout_omitted == result.stderr_omitted == printed - 1001
        big = await computer.run(["head", "-c", str(20 * MIB), "/dev/zero"], max_output=32 * MIB)
        assert big.stdout_bytes == bytes(20 * MIB)  # frames of 256 KiB, read in pieces
        names = ["a" * 255, "é" * 127, '{[}]"\\', "-", " x "]
        for name in names:
            await computer.write_file(f"dir/{name}", name.encode())
        await computer.run(["python3", "-c", "open(b'dir/\\xff\\xfe', 'w')"])
        listed = await computer.list_dir("dir")
        assert {info.name for info in listed} >= set(names)
        assert len(listed) == len(names) + 1
        assert (await computer.stat("dir/-")).size == 1
        assert await computer.read_file(f"dir/{names[0]}") == names[0].encode()
        await computer.run("mkdir many && cd many && seq 10000 | xargs touch")
        assert len(await computer.list_dir("many")) == 10_000
        server = await computer.start(["sh", "-c", "echo up; sleep 30"], background=True)
        async with computer.attach(server.id) as again:
            first = await anext(again.output())
            assert first.data == b"up\n"
        assert server.id in {p.id for p in await computer.processes()}
        await computer.kill_process(server.id)
        await server.close()
        with pytest.raises(RemoteFileNotFoundError):
            await computer.stat("nothing here")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_never_followed_and_the_token_goes_nowhere_else(status: int) -> None:
    """A daemon that answers with a redirect would otherwise make the client send the
    sandbox's token (a header of ours, which redirects keep) to any address it names —
    the host's own services or a cloud's metadata endpoint."""
    async with HostileDaemon() as elsewhere:
        moved = [Send(head(status, None, length=0, extra=[("Location", elsewhere.url + "/x")]))]
        scripts = {"/health": moved, "/exec": moved, "/files": moved}
        async with HostileDaemon(scripts) as liar, computer_at(liar, token="secret") as computer:
            with pytest.raises(DaemonError):
                await computer.health()
            with pytest.raises(DaemonError):
                await computer.run("true", timeout=5)
            with pytest.raises(DaemonError):
                await computer.read_file("/etc/hostname")
        assert elsewhere.requests == []


async def test_the_liveness_probe_follows_no_redirect_either() -> None:
    async with HostileDaemon() as elsewhere:
        moved = [Send(head(307, None, length=0, extra=[("Location", elsewhere.url + "/x")]))]
        scripts = {"/health": moved, "/exec": [Pause(30)]}
        async with HostileDaemon(scripts) as liar, computer_at(liar) as computer:
            # Silent for 5 s, the call asks /health on the side: a redirect is no answer.
            with pytest.raises(DaemonUnreachableError, match="HTTP 307"):
                await computer.run("true")
        assert elsewhere.requests == []
