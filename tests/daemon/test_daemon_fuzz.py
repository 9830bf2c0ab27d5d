"""Fuzzing the sandbox daemon's HTTP parsing: nothing a client sends may crash it.

Two halves:

* a live daemon (a host subprocess on 127.0.0.1, as in test_daemon.py) gets arbitrary
  bytes and structured-but-mutated requests on fresh connections; after each example it
  must still be running and answer an authenticated ``GET /health`` within a second;
* the parsing functions, imported from the daemon's modules, get arbitrary input directly:
  they may raise the daemon's ``RequestError`` (a typed 4xx/5xx reply) or ``ClientGone``
  and nothing else, since anything else becomes a 500 or a dropped connection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from commandlab_async.daemon import connections as daemon_connections
from commandlab_async.daemon import errors as daemon_errors
from commandlab_async.daemon import exec as daemon_exec
from commandlab_async.daemon import http as daemon_http
from commandlab_async.daemon import processes as daemon_processes
from commandlab_async.daemon import protocol
from commandlab_async.daemon import users as daemon_users
from tests.daemon.test_daemon import (
    AUTH,
    AUTH_LINE,
    TOKEN,
    TOKEN_HEADER,
    Daemon,
    start_daemon,
    stop_daemons,
)

pytestmark = pytest.mark.unit

LIVE = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PURE = settings(max_examples=300, deadline=None)

# Only RequestError and ClientGone may leave the daemon's parsing functions.
EXPECTED = (daemon_errors.RequestError, daemon_errors.ClientGone)

LATIN1 = st.characters(min_codepoint=0, max_codepoint=255)
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = tmp_path_factory.mktemp("fuzz-daemon") / "daemon.log"
        daemon = start_daemon(log, procs)
        (daemon.workdir / "fuzz").mkdir()
        (daemon.workdir / "fuzz" / "f").write_bytes(b"fuzz file")
        yield daemon
    finally:
        stop_daemons(procs)


CLOSING_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"Connection: close\r\n\r\n"


def exchange(port: int, data: bytes, hangup: str) -> bytes:
    """Send ``data`` on a fresh connection, then hang up in one of three ways.

    ``close``: at once.  ``half-close``: shut our side, read until the daemon closes.
    ``then-close``: pipeline a ``Connection: close`` request and read until the daemon
    closes (a half-closed client looks gone to a running command, which gets killed).
    """
    reply = b""
    # The daemon may refuse and close first: sending or reading then fails.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        contextlib.suppress(OSError),
    ):
        sock.sendall(data + (CLOSING_HEALTH if hangup == "then-close" else b""))
        if hangup == "close":
            return reply
        if hangup == "half-close":
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            piece = sock.recv(65536)
            if not piece:
                break
            reply += piece
    return reply


def assert_alive(daemon: Daemon, reply: bytes) -> None:
    assert not reply or reply.startswith(b"HTTP/1.1 "), reply[:200]
    assert daemon.proc.poll() is None, daemon.log()[-3000:]
    started = time.monotonic()
    resp = daemon.request("GET", "/health", timeout=3.0)
    assert resp.status == 200
    assert time.monotonic() - started < 3.0  # not held up by what was sent


# ------------------------------------------------------------- live: raw bytes


def auth_prefix(request_line: bytes, *more: bytes) -> bytes:
    return request_line + b"\r\n" + AUTH_LINE + b"".join(more)


PREFIXES = [
    b"",
    b"GET /health HTTP/1.1\r\n",
    auth_prefix(b"GET /health HTTP/1.1"),
    auth_prefix(b"POST /exec HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n"),
    auth_prefix(b"POST /exec HTTP/1.1", b"Content-Length: 64\r\n\r\n"),
    auth_prefix(b"PUT /files?path=fuzz/raw HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n"),
    auth_prefix(b"PUT /files?path=fuzz/raw HTTP/1.1", b"Content-Length: 32\r\n\r\n"),
]


@LIVE
@given(
    prefix=st.sampled_from(PREFIXES),
    data=st.binary(max_size=2048),
    hangup=st.sampled_from(["half-close", "close"]),
)
@example(prefix=b"", data=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", hangup="half-close")
@example(prefix=b"", data=b"\r\n" * 1000, hangup="half-close")
@example(prefix=PREFIXES[2], data=b"\r\n", hangup="half-close")
def test_arbitrary_bytes_never_crash_the_daemon(
    fuzz_daemon: Daemon, prefix: bytes, data: bytes, hangup: str
) -> None:
    assert_alive(fuzz_daemon, exchange(fuzz_daemon.port, prefix + data, hangup))


# -------------------------------------------------- live: mutated requests


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# Each request is well formed but for at most two flaws, so that most get past the
# request line and the token to the framing and the endpoints, where the work is.
FLAWS = [
    "method",
    "target",
    "version",
    "line-ends",
    "separator",
    "header-name",
    "header-value",
    "token",
    "framing",
    "cut",
]
BAD_METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "get", ""]),
    st.text(TOKEN_CHARS, max_size=8),
    st.text(LATIN1, max_size=8),
)
# Every target is harmless: writes go below the daemon's (temporary) working directory.
ENDPOINTS = st.sampled_from(
    [
        ("POST", "/exec"),
        ("POST", "/exec"),
        ("POST", "/exec"),
        ("POST", "/exec"),
        ("PUT", "/files?path=fuzz/f"),
        ("PUT", "/files?path=fuzz/g&mode=600"),
        ("GET", "/files?path=fuzz/f"),
        ("GET", "/files?path=fuzz/f&max_size=3"),
        ("HEAD", "/files?path=fuzz/f"),
        ("GET", "/files/stat?path=fuzz/f"),
        ("GET", "/files/list?path=fuzz"),
        ("GET", "/processes"),
        ("GET", "/processes/p1"),
        ("GET", "/processes/p1/output"),
        ("POST", "/processes/p1/signal?signal=15"),
        ("DELETE", "/processes/p1"),
        ("GET", "/health"),
        ("HEAD", "/health"),
    ]
)
BAD_TARGETS = st.one_of(
    st.sampled_from(
        [
            "*",
            "",
            "health",
            "http://localhost/health",
            "/%00",
            "/health\x00",
            "/exec?x",
            "/files?path=fuzz/",
            "/files?path=",
            "/files",
            "/files/list?path=.&path=.",
            "/processes/",
            "/processes//x/y",
        ]
    ),
    st.text(LATIN1, max_size=40).map(lambda t: "/fuzz-" + t),
    st.text(max_size=20).map(lambda t: "/files?path=fuzz/f&max_size=" + quoted(t)),
    st.text(max_size=20).map(lambda t: "/files?path=fuzz/g&mode=" + quoted(t)),
    st.text(max_size=20).map(lambda t: "/files/stat?path=" + quoted("fuzz/" + t)),
    st.text(max_size=20).map(lambda t: "/processes/" + quoted(t) + "/signal?signal=1"),
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"])
BAD_VERSIONS = st.sampled_from(["HTTP/2.0", "http/1.1", "HTTP/", "HTTP/1.1 ", "", "HTTP/1.1.1"])
EXEC_LINES = st.sampled_from(
    [
        b'{"argv": ["true"]}\n',
        b'{"argv": ["cat"]}\n',
        b'{"argv": ["cat"], "max_output": 3}\n',
        b'{"argv": ["cat"], "max_output": 3, "on_limit": "kill"}\n',
        b'{"command": "exit 3"}\n',
        b'{"argv": ["true"], "timeout": 0.2}\n',
        b'{"argv": ["cltest-no-such-program"]}\n',
        b'{"argv": ["true"], "cwd": "fuzz/nowhere"}\n',
        b'{"argv": ["true"], "user": "cltest-nobody"}\n',
        b'{"argv": []}\n',
        b"{not json\n",
        b"[]\n",
        b"\n",
        b"",
    ]
)
HEADER_VALUES = st.text(LATIN1.filter(lambda c: c not in "\r\n"), max_size=30)
BAD_HEADER_VALUES = st.text(LATIN1, max_size=10)
HEADER_NAMES = st.text(TOKEN_CHARS, min_size=1, max_size=12)
BAD_HEADER_NAMES = st.text(LATIN1, max_size=8)
FRAMINGS = ["length", "chunked", "none"]
BAD_FRAMINGS = [
    "length-short",
    "length-long",
    "length-garbage",
    "length-twice",
    "chunked-bad-size",
    "chunked-no-crlf",
    "chunked-truncated",
    "chunked-trailers",
    "te-other",
    "te-and-length",
]


@st.composite
def chunked(draw: st.DrawFn, payload: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    ext = draw(st.sampled_from([b"", b";a=b", b" ; x"]))
    hex_case = draw(st.sampled_from(["x", "X"]))
    return (
        b"".join(f"{len(p):{hex_case}}".encode() + ext + b"\r\n" + p + b"\r\n" for p in parts if p)
        + b"0\r\n\r\n"
    )


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request, and whether it is complete (the daemon will not wait for more)."""
    flaws = draw(st.sets(st.sampled_from(FLAWS), max_size=2))
    eol = b"\r\n" if "line-ends" not in flaws else draw(st.sampled_from([b"\n", b"\r", b"\n\r"]))
    method, target = draw(ENDPOINTS)
    if "method" in flaws:
        method = draw(BAD_METHODS)
    if "target" in flaws:
        target = draw(BAD_TARGETS)
    version = draw(BAD_VERSIONS if "version" in flaws else VERSIONS)
    lines = [f"{method} {target} {version}".encode("latin-1", "replace")]
    headers: list[tuple[str, str]] = [("Host", "x")]
    auth = "token"
    if "token" in flaws:
        auth = draw(st.sampled_from(["bearer", "wrong", "none", "twice", "bearer-and-wrong"]))
    if auth in ("token", "twice"):
        headers.append((TOKEN_HEADER, TOKEN))
    if auth == "twice":
        headers.append((TOKEN_HEADER, TOKEN))
    if auth.startswith("bearer"):
        headers.append(("Authorization", AUTH))
    if auth.endswith("wrong"):
        headers.append((TOKEN_HEADER, draw(HEADER_VALUES)))

    if target.startswith("/exec"):
        payload = draw(EXEC_LINES) + draw(st.binary(max_size=200))
    else:
        payload = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(BAD_FRAMINGS if "framing" in flaws else FRAMINGS))
    body = payload
    if framing == "none":
        body = b""
    elif framing == "length":
        headers.append(("Content-Length", str(len(payload))))
    elif framing == "length-short":  # the body runs past its length: a next "request"
        headers.append(("Content-Length", str(max(0, len(payload) - draw(st.integers(1, 50))))))
    elif framing == "length-long":  # the client stops before the announced end
        headers.append(("Content-Length", str(len(payload) + draw(st.integers(1, 10**6)))))
    elif framing == "length-garbage":
        headers.append(("Content-Length", draw(st.one_of(HEADER_VALUES, BAD_HEADER_VALUES))))
    elif framing == "length-twice":
        headers.append(("Content-Length", str(len(payload))))
        headers.append(("Content-Length", draw(st.sampled_from([str(len(payload)), "0", "1"]))))
    elif framing.startswith("chunked"):
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked"]))))
        body = draw(chunked(payload))
        if framing == "chunked-bad-size":
            bad = draw(st.binary(max_size=20)) + b"\r\n"
            at = draw(st.integers(0, len(body)))
            body = body[:at] + bad + body[at:]
        elif framing == "chunked-no-crlf":
            body = body.replace(b"\r\n", b"\n", draw(st.integers(1, 3)))
        elif framing == "chunked-truncated":
            body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
        elif framing == "chunked-trailers":
            trailers = draw(st.lists(st.tuples(HEADER_NAMES, BAD_HEADER_VALUES), max_size=3))
            extra = b"".join(f"{n}: {v}\r\n".encode("latin-1", "replace") for n, v in trailers)
            body = body[:-2] + extra + b"\r\n"
    elif framing == "te-other":
        headers.append(("Transfer-Encoding", draw(st.one_of(HEADER_VALUES, BAD_HEADER_VALUES))))
    elif framing == "te-and-length":
        headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Content-Length", str(len(payload))))
        body = draw(chunked(payload))
    if draw(st.booleans()):
        headers.append(("Expect", draw(st.sampled_from(["100-continue", "100-Continue", "x"]))))
    if draw(st.booleans()):
        connection = draw(st.sampled_from(["close", "keep-alive", "Keep-Alive, x", "upgrade"]))
        headers.append(("Connection", connection))
    headers += draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3))
    if "header-name" in flaws or "header-value" in flaws:
        names = BAD_HEADER_NAMES if "header-name" in flaws else HEADER_NAMES
        values = BAD_HEADER_VALUES if "header-value" in flaws else HEADER_VALUES
        headers += draw(st.lists(st.tuples(names, values), min_size=1, max_size=2))
    headers = draw(st.permutations(headers))
    for name, value in headers:
        separator = draw(st.sampled_from([": ", ":", ":\t"]))
        lines.append(f"{name}{separator}{value}".encode("latin-1", "replace"))
    if "separator" in flaws:
        at = draw(st.integers(1, len(lines) - 1))
        lines[at] = lines[at].replace(b":", draw(st.sampled_from([b" :", b"", b" "])), 1)
    data = eol.join(lines) + eol + eol + body
    if "cut" in flaws:  # anywhere, even inside the head
        data = data[: draw(st.integers(0, len(data)))]
    complete = "cut" not in flaws and framing in FRAMINGS and "line-ends" not in flaws
    return data, complete


@LIVE
@given(
    requests=st.lists(mutated_requests(), min_size=1, max_size=3),
    hangup=st.sampled_from(["then-close", "then-close", "half-close", "close"]),
)
@example(
    requests=[
        (
            b"POST /exec HTTP/1.1\r\n"
            + AUTH_LINE
            + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            True,
        )
    ],
    hangup="then-close",
)
@example(
    requests=[
        (
            b"PUT /files?path=fuzz/h HTTP/1.1\r\n"
            + AUTH_LINE
            + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nabc",
            False,
        )
    ],
    hangup="half-close",
)
def test_mutated_requests_never_crash_the_daemon(
    fuzz_daemon: Daemon, requests: list[tuple[bytes, bool]], hangup: str
) -> None:
    if hangup == "then-close" and not all(complete for _, complete in requests):
        hangup = "half-close"  # the daemon would wait for the rest of a body
    data = b"".join(request for request, _ in requests)
    assert_alive(fuzz_daemon, exchange(fuzz_daemon.port, data, hangup))


# ------------------------------------------------------ pure: request heads


def assert_typed(error: Any) -> None:
    """A RequestError the daemon can answer with: a known status, an encodable payload."""
    assert 400 <= error.status < 600
    assert error.status in daemon_http.REASONS
    assert error.code
    json.dumps(daemon_http.error_payload(error))


@PURE
@given(st.binary(max_size=600))
def test_parse_head_of_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(daemon_errors.RequestError):
        daemon_http.parse_head(data)


@PURE
@given(
    request_line=st.tuples(
        BAD_METHODS,
        st.one_of(ENDPOINTS.map(lambda endpoint: endpoint[1]), BAD_TARGETS),
        st.one_of(VERSIONS, BAD_VERSIONS),
    ).map(" ".join),
    header_lines=st.lists(
        st.one_of(
            st.tuples(HEADER_NAMES, st.sampled_from([":", ": ", " :"]), HEADER_VALUES).map("".join),
            st.text(LATIN1, max_size=30),
        ),
        max_size=8,
    ),
    eol=st.sampled_from(["\r\n", "\n"]),
)
def test_parse_head_of_structured_heads(
    request_line: str, header_lines: list[str], eol: str
) -> None:
    data = eol.join([request_line, *header_lines]).encode("latin-1", "replace")
    try:
        request = daemon_http.parse_head(data)
    except daemon_errors.RequestError as exc:
        assert_typed(exc)
        return
    assert f"{request.method} {request.target} {request.version}" == request_line
    assert all(name == name.lower() for name in request.headers)
    assert request.path + ("?" + request.query if "?" in request.target else "") == request.target
    # What the loop does with a parsed head must not raise either.
    assert isinstance(request.keep_alive, bool)
    assert isinstance(daemon_http.authenticate(request.headers, b"\x01" * 32), bool)


@PURE
@given(
    st.dictionaries(
        st.sampled_from(["x-commandlab-token", "authorization", "host"]),
        st.lists(st.text(LATIN1, max_size=40), max_size=3),
    )
)
def test_presented_token_never_raises(headers: dict[str, list[str]]) -> None:
    token = daemon_http.presented_token(headers)
    assert token is None or (isinstance(token, bytes) and token)


@PURE
@given(st.text(max_size=80))
@example("a=1&a=2")
@example("%ff%fe=%80")
@example("&&==&")
def test_parse_query(query: str) -> None:
    with contextlib.suppress(daemon_errors.RequestError):
        params = daemon_http.parse_query(query)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


# ------------------------------------------------------------ pure: bodies


class FakeSock:
    def settimeout(self, value: float | None) -> None:
        pass


class FakeConn:
    """Stands in for the daemon's Conn: ``fill`` appends the next piece received."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.buf = bytearray()
        self.pieces = list(pieces)
        self.sent: list[bytes] = []
        self.sock = FakeSock()

    def fill(self) -> None:
        if not self.pieces:
            raise daemon_errors.ClientGone("connection closed by the client")
        self.buf += self.pieces.pop(0)

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def make_body(conn: FakeConn, request: daemon_http.Request) -> daemon_connections.Body:
    """The daemon's Body reading from ``conn`` (a Conn as far as Body can tell)."""
    return daemon_connections.Body(cast("daemon_connections.Conn", conn), request)


def make_request(headers: dict[str, list[str]]) -> Any:
    return daemon_http.Request("POST", "/exec", "HTTP/1.1", headers)


def read_all(body: Any, limit: int) -> bytes:
    out = b""
    for _ in range(100_000):
        data = body.read(limit)
        if not data:
            return out
        assert len(data) <= limit
        out += data
    raise AssertionError("the body never ended")


LENGTH_VALUES = st.one_of(
    st.integers(0, 10**20).map(str),
    st.text("0123456789 +-.,xX\t\u00b2\u00b3\u00b9", max_size=20),
    HEADER_VALUES,
)
ENCODING_VALUES = st.one_of(
    st.sampled_from(["chunked", "Chunked", " chunked ", "gzip", "chunked, chunked", "identity"]),
    HEADER_VALUES,
)


@PURE
@given(
    lengths=st.none() | st.lists(LENGTH_VALUES, min_size=1, max_size=3),
    encodings=st.none() | st.lists(ENCODING_VALUES, min_size=1, max_size=2),
    expect=st.booleans(),
    pieces=st.lists(st.binary(min_size=1, max_size=64), max_size=8),
    limit=st.integers(1, 100),
)
def test_body_with_arbitrary_framing_headers(
    lengths: list[str] | None,
    encodings: list[str] | None,
    expect: bool,
    pieces: list[bytes],
    limit: int,
) -> None:
    headers: dict[str, list[str]] = {}
    if lengths is not None:
        headers["content-length"] = lengths
    if encodings is not None:
        headers["transfer-encoding"] = encodings
    if expect:
        headers["expect"] = ["100-continue"]
    conn = FakeConn(pieces)
    try:
        body = make_body(conn, make_request(headers))
        read_all(body, limit)
    except EXPECTED:
        return
    assert conn.sent == ([b"HTTP/1.1 100 Continue\r\n\r\n"] if expect else [])


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9\u00b2", "\u00b3"])
def test_body_refuses_a_content_length_of_unicode_digits(length: str) -> None:
    # str.isdigit() accepts superscripts, which int() does not parse.
    with pytest.raises(daemon_errors.RequestError):
        make_body(FakeConn([b"x"]), make_request({"content-length": [length]}))


CHUNK_LINES = st.one_of(
    st.integers(0, 2**64).map(lambda n: f"{n:x}".encode()),
    st.binary(max_size=20),
    st.sampled_from([b"", b"-1", b"0x5", b"5;", b"5 ; a=b", b" 5", b"5\r", b"1_0", b"\xb2"]),
)


@PURE
@given(
    parts=st.lists(
        st.one_of(
            CHUNK_LINES.map(lambda line: line + b"\r\n"),
            st.binary(max_size=40),
            st.sampled_from([b"\r\n", b"\n", b"0\r\n\r\n", b"x" * 5000]),
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(1, 200), max_size=6),
    limit=st.integers(1, 1 << 20),
)
@example(parts=[b"fffffffffffffff\r\n", b"abc"], cuts=[], limit=1 << 20)
@example(parts=[b"5\r\nhelloXX"], cuts=[], limit=10)
def test_chunked_body_decoding_of_arbitrary_bytes(
    parts: list[bytes], cuts: list[int], limit: int
) -> None:
    data = b"".join(parts)
    pieces, at = [], 0
    for size in cuts:
        pieces.append(data[at : at + size])
        at += size
    pieces.append(data[at:])
    conn = FakeConn([p for p in pieces if p])
    body = make_body(conn, make_request({"transfer-encoding": ["chunked"]}))
    with contextlib.suppress(*EXPECTED):
        read_all(body, limit)
    # Discarding what is left must not raise either (it reports whether the body ended).
    assert isinstance(body.discard(0.1), bool)


@st.composite
def framed_bodies(draw: st.DrawFn) -> tuple[dict[str, list[str]], bytes, bytes]:
    """(headers, the body as sent, the payload it carries) for a well-formed body."""
    payload = draw(st.binary(max_size=3000))
    if not draw(st.booleans()):
        if not payload and draw(st.booleans()):
            return {}, b"", b""
        return {"content-length": [str(len(payload))]}, payload, payload
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    sent = b""
    for part in parts:
        if part:
            size = draw(st.sampled_from(["{:x}", "{:X}", "{:04x}"])).format(len(part))
            ext = draw(st.sampled_from([b"", b";name=value", b" ;x"]))
            sent += size.encode() + ext + b"\r\n" + part + b"\r\n"
    sent += draw(st.sampled_from([b"0\r\n", b"000\r\n", b"0;end\r\n"]))
    trailers = draw(st.lists(st.sampled_from([b"X-T: 1\r\n", b"Digest: abc\r\n"]), max_size=2))
    sent += b"".join(trailers) + b"\r\n"
    encoding = draw(st.sampled_from(["chunked", "Chunked", " chunked"]))
    return {"transfer-encoding": [encoding]}, sent, payload


@PURE
@given(
    framed=framed_bodies(),
    following=st.binary(max_size=40),
    cuts=st.lists(st.integers(1, 500), max_size=8),
    limit=st.integers(1, 5000),
)
def test_well_formed_bodies_decode_exactly(
    framed: tuple[dict[str, list[str]], bytes, bytes],
    following: bytes,
    cuts: list[int],
    limit: int,
) -> None:
    headers, sent, payload = framed
    stream = sent + following  # a pipelined next request follows the body
    pieces, at = [], 0
    for size in cuts:
        pieces.append(stream[at : at + size])
        at += size
    pieces.append(stream[at:])
    conn = FakeConn([p for p in pieces if p])
    body = make_body(conn, make_request(headers))
    assert read_all(body, limit) == payload
    assert body.done
    # Not one byte past the body's end is consumed.
    assert bytes(conn.buf) + b"".join(conn.pieces) == following


# -------------------------------------------------------- pure: exec requests

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
EXEC_KEYS = [
    "argv",
    "command",
    "cwd",
    "env",
    "user",
    "timeout",
    "max_output",
    "on_limit",
    "background",
]


@st.composite
def exec_payloads(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    payload: dict[str, object] = {}
    if draw(st.booleans()):
        payload["argv"] = draw(st.lists(st.text(max_size=5), max_size=3) | JSON)
    else:
        payload["command"] = draw(st.text(max_size=10) | JSON)
    for key in draw(st.lists(st.sampled_from(EXEC_KEYS[2:]), unique=True)):
        payload[key] = draw(
            st.one_of(
                JSON,
                st.integers(-5, 2**40),
                st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                st.sampled_from(["truncate", "kill", "root", "nobody", "0", "\u00b2", "\u0661"]),
            )
        )
    return payload


@PURE
@given(exec_payloads())
@example({"argv": ["true"], "user": "\udc80"})
@example({"argv": ["true"], "timeout": 10**400})
def test_exec_request_validation(payload: object) -> None:
    try:
        request = daemon_exec.ExecRequest(payload, "/work")
        daemon_users.resolve_user(request.user)
    except daemon_errors.RequestError as exc:
        assert_typed(exc)
        return
    assert request.argv
    assert request.timeout is None or 0 < request.timeout <= protocol.MAX_TIMEOUT


@pytest.mark.parametrize("user", ["\u00b2", "1\u00b2", "a\x00b", "\x00"])
def test_resolve_user_refuses_odd_names_with_a_typed_error(user: str) -> None:
    with pytest.raises(daemon_errors.RequestError) as caught:
        daemon_users.resolve_user(user)
    assert caught.value.code in ("bad_request", "no_such_user")


@PURE
@given(
    code=st.sampled_from(sorted(errno.errorcode)),
    program=st.text(max_size=10),
    cwd=st.text(max_size=10),
    on_cwd=st.booleans(),
)
def test_os_errors_map_to_typed_replies(code: int, program: str, cwd: str, on_cwd: bool) -> None:
    exc = OSError(code, "message", cwd if on_cwd else program)
    for error in (
        daemon_errors.spawn_failure(exc, program, cwd),
        daemon_errors.os_error(exc, program),
    ):
        assert isinstance(error, daemon_errors.RequestError)
        assert_typed(error)


# ------------------------------------------------------ pure: output limits


def as_bytes(data: Any) -> bytes:
    """A buffer, or a list of buffers (views the daemon sends without joining), as bytes."""
    if isinstance(data, (list, tuple)):
        return b"".join(bytes(part) for part in data)
    return bytes(data)


@PURE
@given(
    max_output=st.none() | st.integers(0, 300),
    chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=20),
)
def test_limiter_streams_the_head_and_keeps_the_tail(
    max_output: int | None, chunks: list[bytes]
) -> None:
    limiter = daemon_exec.Limiter(max_output)
    data = b"".join(chunks)
    streamed = b"".join(as_bytes(limiter.feed(chunk)) for chunk in chunks)
    omitted, kept_parts = limiter.kept_tail()
    kept = as_bytes(kept_parts)
    if max_output is None:
        assert (streamed, omitted, kept) == (data, 0, b"")
        return
    head, tail = max_output - max_output // 2, max_output // 2
    assert limiter.exceeded is (len(data) > max_output)  # "raise" kills past it, not the head
    assert streamed == data[:head]
    assert len(kept) == min(tail, max(0, len(data) - head))
    assert data.endswith(kept)
    assert len(streamed) + omitted + len(kept) == len(data)


@PURE
@given(
    size=st.integers(1, 64),
    chunks=st.lists(st.binary(min_size=1, max_size=100), max_size=10),
    offset=st.integers(0, 1200),
    limit=st.integers(0, 100),
)
def test_ring_reads(size: int, chunks: list[bytes], offset: int, limit: int) -> None:
    ring = daemon_processes.Ring(size)
    for chunk in chunks:
        ring.append(chunk)
    data = b"".join(chunks)
    assert ring.end == len(data)
    offset = min(offset, len(data))
    lost, got_parts = ring.read(offset, limit)
    got = as_bytes(got_parts)
    assert len(got) <= limit
    assert got == data[offset + lost : offset + lost + len(got)]
    assert len(data) - ring.start >= min(size, len(data))  # at least the last `size` kept
    assert ring.held < size + 100  # and at most one chunk more: bounded memory
