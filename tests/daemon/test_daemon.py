"""The sandbox daemon (commandlab_async/daemon/), run as its zipapp in a subprocess on 127.0.0.1.

The daemon runs on the host here, so /proc shows the processes its commands start.
Set COMMANDLAB_TEST_DAEMON_PYTHON (e.g. to a python3.9) to run the daemon under another
interpreter (see tests/daemon/daemon_bundle.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from commandlab_async.daemon import config as daemon_config
from commandlab_async.daemon import connections as daemon_connections
from commandlab_async.daemon import http as daemon_http
from commandlab_async.daemon import processes as daemon_processes
from commandlab_async.daemon import protocol
from commandlab_async.daemon import server as daemon_server
from tests.daemon.daemon_bundle import daemon_argv

pytestmark = pytest.mark.unit

TOKEN = secrets.token_urlsafe(32)
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
TOKEN_HEADER = "X-CommandLab-Token"
AUTH = f"Bearer {TOKEN}"
AUTH_LINE = f"{TOKEN_HEADER}: {TOKEN}\r\n".encode()
LISTENING = re.compile(r"commandlab daemon listening on 127\.0\.0\.1:(\d+)")
SLEEP_300 = b"sleep\x00300\x00"
FRAMES_TYPE = "application/x-commandlab-frames"
FRAME_KINDS = {b"S", b"1", b"2", b"G", b"X"}


# ------------------------------------------------------------------ clients


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", (self.status, self.body)
        return json.loads(self.body)


def parse_frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a frame stream (``<kind><length: 4 bytes BE><payload>``...) into frames."""
    frames = []
    offset = 0
    while offset < len(data):
        assert len(data) - offset >= 5, f"truncated frame head at {offset}: {data[offset:]!r}"
        kind = data[offset : offset + 1]
        (length,) = struct.unpack(">I", data[offset + 1 : offset + 5])
        payload = data[offset + 5 : offset + 5 + length]
        assert len(payload) == length, f"truncated frame at {offset}"
        assert kind in FRAME_KINDS, kind
        frames.append((kind, payload))
        offset += 5 + length
    return frames


@dataclass
class Frames:
    """The frames of an /exec or /processes/<id>/output reply, S first and X last."""

    frames: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        kinds = [kind for kind, _ in self.frames]
        assert kinds[:1] == [b"S"], kinds
        assert kinds[-1:] == [b"X"], kinds
        assert kinds.count(b"S") == 1
        assert kinds.count(b"X") == 1

    @property
    def start(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.frames[0][1])
        return result

    @property
    def exit(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.frames[-1][1])
        return result

    @property
    def exit_code(self) -> int | None:
        code: int | None = self.exit["exit_code"]
        return code

    @property
    def stdout(self) -> bytes:
        return b"".join(payload for kind, payload in self.frames if kind == b"1")

    @property
    def stderr(self) -> bytes:
        return b"".join(payload for kind, payload in self.frames if kind == b"2")

    @property
    def gaps(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for kind, payload in self.frames if kind == b"G"]


def exec_body(payload: object, stdin: bytes = b"") -> bytes:
    return json.dumps(payload).encode() + b"\n" + stdin


class FrameStream:
    """A streaming frame reply (/exec, /processes/<id>/output), read frame by frame."""

    def __init__(
        self,
        port: int,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request(method, path, body=body, headers={TOKEN_HEADER: TOKEN})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            body = self.resp.read()
            self.close()
            pytest.fail(f"{method} {path}: {self.resp.status} {body!r}")
        assert self.resp.getheader("content-type") == FRAMES_TYPE
        assert self.resp.getheader("transfer-encoding") == "chunked"
        self.frames: list[tuple[bytes, bytes]] = []

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = self.resp.read(n - len(data))
            if not piece:
                raise EOFError(f"reply ended inside a frame after {self.frames}")
            data += piece
        return data

    def frame(self) -> tuple[bytes, bytes]:
        head = self._exact(5)
        (length,) = struct.unpack(">I", head[1:])
        item = (head[:1], self._exact(length) if length else b"")
        assert item[0] in FRAME_KINDS, item
        self.frames.append(item)
        return item

    def until_stdout(self, expected: bytes) -> None:
        """Read frames until stdout so far ends with ``expected``."""
        while not b"".join(p for k, p in self.frames if k == b"1").endswith(expected):
            kind, _ = self.frame()
            assert kind != b"X", self.frames

    def finish(self) -> Frames:
        """Read to the X frame and the end of the reply."""
        while not self.frames or self.frames[-1][0] != b"X":
            self.frame()
        assert self.resp.read() == b""
        self.close()
        return Frames(self.frames)

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", (self.status, self.body)
        return json.loads(self.body)


class RawClient:
    """A bare socket speaking HTTP/1.1 by hand: pipelining, partial requests, 100-continue."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise AssertionError(f"the daemon closed the connection; unparsed: {self.buf[:300]!r}")
        self.buf += data

    def _until(self, separator: bytes) -> bytes:
        while separator not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(separator)
        return head

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, *, head_only: bool = False) -> RawResponse:
        """Read one response (interim 1xx ones too), decoding a chunked body."""
        head = self._until(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert re.fullmatch(r"HTTP/1\.1 \d{3} [A-Za-z -]+", status_line), status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, line
            headers[name.lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        body = b""
        if head_only or status < 200:
            pass
        elif headers.get("transfer-encoding") == "chunked":
            assert "content-length" not in headers
            while True:
                size = int(self._until(b"\r\n"), 16)
                if size == 0:
                    assert self._until(b"\r\n") == b""  # no trailers
                    break
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
        else:
            body = self._exact(int(headers["content-length"]))
        return RawResponse(status, headers, body, head)

    def closed_within(self, timeout: float) -> bool:
        """Whether the daemon closes the connection within ``timeout`` (input discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workdir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
        timeout: float = 30.0,
        chunked: bool = False,
    ) -> Response:
        """Send one request on a fresh connection; ``token`` goes in X-CommandLab-Token."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault(TOKEN_HEADER, token)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers, encode_chunked=chunked)
            with conn.getresponse() as resp:
                data = resp.read()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def exec(
        self,
        payload: object,
        stdin: bytes = b"",
        *,
        chunks: Iterable[bytes] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """POST /exec: the JSON line then ``stdin`` (or the whole body as ``chunks``)."""
        if chunks is not None:
            return self.request("POST", "/exec", chunks, timeout=timeout, chunked=True)
        return self.request("POST", "/exec", exec_body(payload, stdin), timeout=timeout)

    def run(self, command: str | list[str], stdin: bytes = b"", **fields: Any) -> Frames:
        """Run a command (a string for the shell, a list for argv) and parse its frames."""
        key = "command" if isinstance(command, str) else "argv"
        return frames_of(self.exec({key: command, **fields}, stdin))

    def stream(self, payload: dict[str, Any], stdin: bytes = b"") -> FrameStream:
        return FrameStream(self.port, "POST", "/exec", exec_body(payload, stdin))

    def raw(self, data: bytes) -> RawResponse:
        """Send raw bytes on a fresh connection and return one response."""
        with RawClient(self.port) as client:
            client.send(data)
            return client.response()

    def healthy(self) -> bool:
        return self.request("GET", "/health", timeout=5).status == 200


def frames_of(resp: Response) -> Frames:
    assert resp.status == 200, (resp.status, resp.body)
    assert resp.headers["content-type"] == FRAMES_TYPE
    assert resp.headers["transfer-encoding"] == "chunked"
    return Frames(parse_frames(resp.body))


def files_url(path: str | Path, endpoint: str = "/files", **params: str) -> str:
    return f"{endpoint}?" + urllib.parse.urlencode({"path": str(path), **params})


def sleepers_with(marker: str) -> list[int]:
    """Live processes running `sleep 300` whose environment carries marker."""
    found = []
    needle = f"CLTEST_MARKER={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if cmdline == SLEEP_300 and needle in environ.split(b"\x00"):
            found.append(int(entry))
    return found


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s*(\d+)$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def listing(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def start_daemon(
    log_path: Path, procs: list[subprocess.Popen[bytes]], **env_overrides: str | None
) -> Daemon:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDLAB_")}
    env.update(
        COMMANDLAB_TOKEN_SHA256=TOKEN_SHA256, COMMANDLAB_HOST="127.0.0.1", COMMANDLAB_PORT="0"
    )
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    workdir = log_path.parent / f"{log_path.stem}-work"
    workdir.mkdir()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            daemon_argv(),
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = LISTENING.search(text)
        if match or "listening on unix:" in text:  # on a Unix socket: no port
            return Daemon(proc, int(match.group(1)) if match else 0, log_path, workdir)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail(f"daemon did not start (exit {proc.poll()}):\n{log_path.read_text()}")


def stop_daemons(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the module's tests; always terminated."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = tmp_path_factory.mktemp("daemon") / "daemon.log"
        yield start_daemon(log, procs, CLTEST_PASSTHROUGH="from-daemon")
    finally:
        stop_daemons(procs)


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start private daemons (with extra environment); all are terminated afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(**env: str | None) -> Daemon:
        return start_daemon(tmp_path / f"daemon{len(procs)}.log", procs, **env)

    try:
        yield spawn
    finally:
        stop_daemons(procs)


class BackgroundExec:
    """POST /exec in a thread; the outcome (response or exception) is kept."""

    def __init__(self, daemon: Daemon, payload: dict[str, Any]) -> None:
        self.response: Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._go, args=(daemon, payload), daemon=True)
        self._thread.start()

    def _go(self, daemon: Daemon, payload: dict[str, Any]) -> None:
        try:
            self.response = daemon.exec(payload, timeout=20)
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(timeout=20)
        assert not self._thread.is_alive()


# ---------------------------------------------------------------- health, auth


def test_health(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health")
    assert resp.status == 200
    assert resp.headers["content-length"] == str(len(resp.body))
    health = resp.json()
    assert health["version"] == "3"
    assert health["pid"] == daemon.proc.pid
    assert isinstance(health["uptime"], float)
    assert health["uptime"] >= 0
    assert health["expires_in"] is None
    assert health["cwd"] == str(daemon.workdir)
    assert health["uid"] == os.geteuid()
    assert health["limits"]["max_timeout"] == protocol.MAX_TIMEOUT
    head = daemon.request("HEAD", "/health")
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) > 0


def test_connection_is_kept_alive_across_requests(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        statuses = []
        first_socket = None
        for method, path, body in [
            ("GET", "/health", None),
            ("GET", "/does-not-exist", None),
            ("POST", "/exec", b"{not json\n"),
            ("GET", "/exec", None),
            ("POST", "/exec", exec_body({"argv": ["cat"]}, b"x" * 100)),
            ("PUT", "/files/stat?path=.", b"x" * 100),
            ("GET", "/processes", None),
            ("GET", "/health", None),
        ]:
            conn.request(method, path, body=body, headers={"Authorization": AUTH})
            with conn.getresponse() as resp:
                resp.read()
                statuses.append(resp.status)
            first_socket = first_socket or conn.sock
            assert conn.sock is not None
            assert conn.sock is first_socket
        assert statuses == [200, 404, 400, 405, 200, 405, 200, 200]
    finally:
        conn.close()


def test_http_1_0_clients_get_no_chunked_reply(daemon: Daemon) -> None:
    # RFC 9112 6.1: no Transfer-Encoding in a response to an HTTP/1.0 request.
    body = exec_body({"argv": ["echo", "hi"]})
    with RawClient(daemon.port) as client:
        client.send(
            b"POST /exec HTTP/1.0\r\nHost: x\r\n"
            + AUTH_LINE
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        reply = client.response(head_only=True)
    assert reply.status in (200, 400, 505)
    assert "transfer-encoding" not in reply.headers, reply.head


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    def request(method: str, path: str, body: bytes = b"") -> bytes:
        length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
        return (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + AUTH_LINE
            + length
            + b"\r\n"
            + body
        )

    with RawClient(daemon.port) as client:
        client.send(
            request("GET", "/health")
            + request("POST", "/exec", exec_body({"argv": ["cat"]}, b"first"))
            + request("GET", "/nope")
            + request("POST", "/exec", exec_body({"command": "printf second; exit 3"}))
            + request("GET", "/health")
        )
        replies = [client.response() for _ in range(5)]
    assert [r.status for r in replies] == [200, 200, 404, 200, 200]
    first, second = (Frames(parse_frames(replies[i].body)) for i in (1, 3))
    assert (first.stdout, first.exit_code) == (b"first", 0)
    assert (second.stdout, second.exit_code) == (b"second", 3)


BAD_CREDENTIALS = [
    pytest.param({}, id="none"),
    pytest.param({"Authorization": "Bearer wrong-token-wrong-token-wrong"}, id="bearer-wrong"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic-scheme"),
    pytest.param({"Authorization": TOKEN}, id="bearer-no-scheme"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="bearer-prefix"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="bearer-extended"),
    pytest.param({"Authorization": "Bearer "}, id="bearer-empty"),
    pytest.param({"Authorization": f"Bearer {TOKEN_SHA256}"}, id="bearer-digest"),
    pytest.param({TOKEN_HEADER: "wrong-token-wrong-token-wrong"}, id="x-wrong"),
    pytest.param({TOKEN_HEADER: TOKEN[:-1]}, id="x-prefix"),
    pytest.param({TOKEN_HEADER: f"{TOKEN}x"}, id="x-extended"),
    pytest.param({TOKEN_HEADER: f"Bearer {TOKEN}"}, id="x-with-scheme"),
    pytest.param({TOKEN_HEADER: ""}, id="x-empty"),
    pytest.param({TOKEN_HEADER: TOKEN_SHA256}, id="x-digest"),
    pytest.param({TOKEN_HEADER: TOKEN_SHA256.upper()}, id="x-digest-upper"),
    # X-CommandLab-Token wins: a valid bearer token beside a wrong or empty one is ignored.
    pytest.param({TOKEN_HEADER: "wrong-token-wrong-token", "Authorization": AUTH}, id="x-wins"),
    pytest.param({TOKEN_HEADER: "", "Authorization": AUTH}, id="x-empty-wins"),
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS)
def test_unauthorized_requests_are_refused_and_do_nothing(
    daemon: Daemon, tmp_path: Path, headers: dict[str, str]
) -> None:
    marker = tmp_path / "ran"
    target = tmp_path / "uploaded"
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret contents")
    payload = exec_body({"command": f"touch {marker}"})
    attempts = [
        daemon.request("GET", "/health", headers=headers, token=None),
        daemon.request("GET", "/no/such/path", headers=headers, token=None),
        daemon.request("POST", "/exec", payload, headers=headers, token=None),
        daemon.request("PUT", files_url(target), b"data", headers=headers, token=None),
        daemon.request("GET", files_url(secret), headers=headers, token=None),
        daemon.request("GET", files_url(tmp_path, "/files/list"), headers=headers, token=None),
        daemon.request("GET", "/processes", headers=headers, token=None),
        daemon.request("DELETE", "/processes/p1", headers=headers, token=None),
    ]
    for resp in attempts:
        assert resp.status == 401
        assert resp.json()["error"] == "unauthorized"
        assert resp.headers["connection"] == "close"
        assert TOKEN.encode() not in resp.body
        assert TOKEN_SHA256.encode() not in resp.body
        assert b"secret" not in resp.body
        assert b"uploaded" not in resp.body
    assert not marker.exists()
    assert not target.exists()


def test_token_header_is_accepted(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health", headers={TOKEN_HEADER: TOKEN}, token=None)
    assert resp.status == 200
    assert daemon.run("echo ok").exit_code == 0  # default: X-CommandLab-Token only


def test_bearer_token_is_accepted_without_token_header(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health", headers={"Authorization": AUTH}, token=None)
    assert resp.status == 200
    lower = daemon.request(
        "GET", "/health", headers={"Authorization": f"bearer {TOKEN}"}, token=None
    )
    assert lower.status == 200
    ran = daemon.request(
        "POST", "/exec", exec_body({"argv": ["true"]}), headers={"Authorization": AUTH}, token=None
    )
    assert frames_of(ran).exit_code == 0


def test_authorization_beside_token_header_is_ignored(daemon: Daemon) -> None:
    # Someone else's credential (e.g. for a proxy in front of the sandbox) rides along.
    for authorization in ["Bearer someone-elses-token", f"Basic {TOKEN}", "garbage"]:
        resp = daemon.request("GET", "/health", headers={"Authorization": authorization})
        assert resp.status == 200, authorization


def get_health_raw(daemon: Daemon, *header_lines: bytes) -> int:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        line + b"\r\n" for line in header_lines
    )
    return daemon.raw(request + b"\r\n").status


def test_repeated_credential_headers_are_refused(daemon: Daemon) -> None:
    x_token = f"{TOKEN_HEADER}: {TOKEN}".encode()
    bearer = f"Authorization: {AUTH}".encode()
    assert get_health_raw(daemon, x_token) == 200
    assert get_health_raw(daemon, f"x-commandlab-token: {TOKEN}".encode()) == 200
    assert get_health_raw(daemon, f"X-COMMANDLAB-TOKEN:\t{TOKEN} ".encode()) == 200
    assert get_health_raw(daemon, bearer) == 200
    # The header that is used must be unique, even when every copy is right.
    assert get_health_raw(daemon, x_token, x_token) == 401
    assert get_health_raw(daemon, x_token, f"{TOKEN_HEADER}: wrong".encode()) == 401
    assert get_health_raw(daemon, x_token, bearer, x_token) == 401
    assert get_health_raw(daemon, bearer, bearer) == 401
    # A repeated Authorization header is ignored when X-CommandLab-Token is there.
    assert get_health_raw(daemon, bearer, x_token, b"Authorization: Basic abc") == 200


def test_token_is_hashed_as_utf8(spawn_daemon: Callable[..., Daemon]) -> None:
    token = "tökén-ünïcödé-" + secrets.token_hex(8)
    daemon = spawn_daemon(COMMANDLAB_TOKEN_SHA256=hashlib.sha256(token.encode()).hexdigest())
    assert get_health_raw(daemon, TOKEN_HEADER.encode() + b": " + token.encode()) == 200
    assert get_health_raw(daemon, b"Authorization: Bearer " + token.encode()) == 200
    assert get_health_raw(daemon, TOKEN_HEADER.encode() + b": " + token.encode("latin-1")) == 401
    assert daemon.request("GET", "/health").status == 401  # the module's TOKEN


def test_uppercase_digest_is_accepted(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon(COMMANDLAB_TOKEN_SHA256=TOKEN_SHA256.upper())
    assert daemon.request("GET", "/health").status == 200
    assert daemon.request("GET", "/health", token=TOKEN_SHA256.upper()).status == 401


def test_unknown_path_and_wrong_method(daemon: Daemon) -> None:
    missing = daemon.request("GET", "/nope")
    assert missing.status == 404
    assert missing.json()["error"] == "not_found"
    assert isinstance(missing.json()["message"], str)
    for method, path, allowed in [
        ("GET", "/exec", "POST"),
        ("DELETE", "/files?path=x", "GET, HEAD, PUT"),
        ("POST", "/files/stat?path=x", "GET"),
        ("PUT", "/files/list?path=x", "GET"),
        ("POST", "/processes", "GET"),
    ]:
        wrong = daemon.request(method, path, b"{}")
        assert wrong.status == 405, (method, path, wrong.body)
        assert wrong.headers["allow"] == allowed
        assert wrong.json()["error"] == "method_not_allowed"
    assert daemon.healthy()


def test_wrong_method_on_health_is_405(daemon: Daemon) -> None:
    # /health exists (GET and HEAD): another method on it is a 405, as on every endpoint.
    for method in ["POST", "PUT", "DELETE"]:
        wrong = daemon.request(method, "/health", b"{}")
        assert (wrong.status, wrong.json()["error"]) == (405, "method_not_allowed"), method
        assert "GET" in wrong.headers["allow"]


# ----------------------------------------------------------------------- exec


def test_exec_returns_exact_bytes_and_exit_code(daemon: Daemon) -> None:
    result = daemon.run(r"printf '\377\376\000abc\n'; printf 'err\200' >&2; echo $$; exit 7")
    pid = result.start["pid"]
    assert isinstance(pid, int)
    assert pid > 0
    assert re.fullmatch(r"\w+", result.start["id"])
    assert result.stdout == b"\xff\xfe\x00abc\n" + f"{pid}\n".encode()
    assert result.stderr == b"err\x80"
    assert result.gaps == []
    assert result.exit_code == 7
    exit_frame = result.exit
    assert exit_frame["timed_out"] is False
    assert exit_frame["limit_exceeded"] is False
    assert exit_frame["stdout_omitted"] == 0
    assert exit_frame["stderr_omitted"] == 0
    assert isinstance(exit_frame["duration"], float)
    assert 0 <= exit_frame["duration"] < 10


def test_exec_stdin_env_and_cwd(daemon: Daemon, tmp_path: Path) -> None:
    data = bytes(range(256)) * 3 + b"\n{not the json line}\n"
    assert daemon.run(["cat"], data).stdout == data
    assert daemon.run("cat; echo end").stdout == b"end\n"  # no stdin: EOF at once

    env = daemon.run(
        'printf "%s|%s|%s" "$CLTEST_VAR" "$CLTEST_PASSTHROUGH" "${COMMANDLAB_TOKEN_SHA256-unset}"',
        env={"CLTEST_VAR": "a value with spaces"},
    )
    assert env.stdout == b"a value with spaces|from-daemon|unset"
    overridden = daemon.run('printf %s "$CLTEST_PASSTHROUGH"', env={"CLTEST_PASSTHROUGH": "mine"})
    assert overridden.stdout == b"mine"

    (tmp_path / "here.txt").write_text("x")
    cwd = daemon.run("pwd; ls", cwd=str(tmp_path))
    assert cwd.stdout.decode().split() == [str(tmp_path.resolve()), "here.txt"]


def test_exec_cwd_is_relative_to_the_working_directory(daemon: Daemon) -> None:
    sub = daemon.workdir / "sub dir"
    sub.mkdir(exist_ok=True)
    result = daemon.run(["pwd"], cwd="sub dir")
    assert result.stdout == f"{os.path.realpath(sub)}\n".encode()
    assert daemon.run(["pwd"]).stdout == f"{os.path.realpath(daemon.workdir)}\n".encode()


def test_argv_runs_without_a_shell(daemon: Daemon) -> None:
    argv = ["printf", "%s|", "a b", "$HOME", ";", "*", "$(id)", "'\"", ""]
    assert daemon.run(argv).stdout == b"a b|$HOME|;|*|$(id)|'\"||"
    assert daemon.run(["sh", "-c", 'echo "$0:$1"', "zero", "one"]).stdout == b"zero:one\n"


def test_exec_stdin_may_be_chunked(daemon: Daemon) -> None:
    data = os.urandom(300_000)
    line = json.dumps({"argv": ["cat"]}).encode() + b"\n"
    # The JSON line itself is split across chunks, and stdin spans many.
    chunks = [
        line[:3],
        line[3:-1],
        line[-1:],
        *(data[i : i + 7000] for i in range(0, len(data), 7000)),
    ]
    assert frames_of(daemon.exec(None, chunks=chunks)).stdout == data

    big = 5 * 1024 * 1024 + 3  # more than the daemon buffers for stdin
    counted = daemon.exec(
        None, chunks=[json.dumps({"argv": ["wc", "-c"]}).encode() + b"\n", b"z" * big]
    )
    assert frames_of(counted).stdout.strip() == str(big).encode()


def test_exec_chunked_body_with_extensions_and_trailers(daemon: Daemon) -> None:
    line = exec_body({"argv": ["cat"]})
    body = (
        f"{len(line):X};name=value\r\n".encode()
        + line
        + b"\r\n5\r\nhello\r\nA ; ext\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    reply = daemon.raw(
        b"POST /exec HTTP/1.1\r\nHost: x\r\n"
        + AUTH_LINE
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + body
    )
    assert reply.status == 200
    assert Frames(parse_frames(reply.body)).stdout == b"hello0123456789"


def test_expect_100_continue(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "continued"
    with RawClient(daemon.port) as client:
        client.send(
            f"PUT {files_url(target)} HTTP/1.1\r\nHost: x\r\n".encode()
            + AUTH_LINE
            + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        assert client.response().status == 100  # before any byte of the body was sent
        client.send(b"hello")
        put = client.response()
        assert (put.status, put.json()["size"]) == (200, 5)
        assert target.read_bytes() == b"hello"

        # Same connection: /exec asks for its body too, and stdin follows.
        body = exec_body({"argv": ["cat"]}, b"stdin bytes")
        client.send(
            b"POST /exec HTTP/1.1\r\nHost: x\r\n"
            + AUTH_LINE
            + f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert client.response().status == 100
        client.send(body)
        ran = client.response()
        assert Frames(parse_frames(ran.body)).stdout == b"stdin bytes"


def test_expect_100_continue_refused_without_reading_the_body(
    daemon: Daemon, tmp_path: Path
) -> None:
    target = tmp_path / "never"
    with RawClient(daemon.port) as client:
        client.send(
            f"PUT {files_url(target, mode='999')} HTTP/1.1\r\nHost: x\r\n".encode()
            + AUTH_LINE
            + b"Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n"
        )
        reply = client.response()  # the final answer at once, no 100 Continue
        assert (reply.status, reply.json()["error"]) == (400, "bad_mode")
        assert reply.headers["connection"] == "close"
        assert client.closed_within(5)
    assert not target.exists()


def test_token_digest_is_not_passed_to_commands(daemon: Daemon) -> None:
    result = daemon.run('echo "$PPID"; env; cat /proc/self/environ /proc/$PPID/cmdline')
    output = result.stdout
    assert output.split(b"\n", 1)[0] == str(daemon.proc.pid).encode()
    assert b"CLTEST_PASSTHROUGH=from-daemon" in output
    assert TOKEN.encode() not in output
    assert TOKEN_SHA256.encode() not in output
    assert b"COMMANDLAB_TOKEN" not in output


def test_exec_killed_by_signal_reports_negative_exit_code(daemon: Daemon) -> None:
    result = daemon.run("kill -TERM $$")
    assert result.exit_code == -signal.SIGTERM
    assert result.exit["timed_out"] is False


def test_spawn_failures_are_typed(daemon: Daemon, tmp_path: Path) -> None:
    missing = tmp_path / "missing-program"
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    not_executable.chmod(0o644)
    bad_format = tmp_path / "bad-format"
    bad_format.write_bytes(b"\x00\x01\x02\x03 not a program " * 10)
    bad_format.chmod(0o755)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"argv": [str(missing)]}, 404, "not_found", str(missing)),
        ({"argv": ["cltest-no-such-program"]}, 404, "not_found", "cltest-no-such-program"),
        ({"argv": [str(not_executable)]}, 403, "permission_denied", str(not_executable)),
        ({"argv": [str(tmp_path)]}, 403, "permission_denied", str(tmp_path)),
        ({"argv": [str(bad_format)]}, 400, "exec_format_error", str(bad_format)),
        ({"argv": ["true"], "cwd": str(tmp_path / "no-dir")}, 404, "not_found", "no-dir"),
        ({"argv": ["true"], "cwd": str(a_file)}, 400, "not_a_directory", str(a_file)),
    ]
    for payload, status, error, path in cases:
        resp = daemon.exec(payload)
        body = resp.json()
        assert (resp.status, body["error"]) == (status, error), (payload, body)
        assert body["path"].endswith(path), (payload, body)
        assert isinstance(body["message"], str)
    assert daemon.healthy()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json\n", "bad_json"),
        (b"\xff\xfe\n", "bad_json"),
        (b"", "bad_request"),
        (b'{"argv": ["true"]}', "bad_request"),  # the JSON line never ends
        (b"[]\n", "bad_request"),
        (b"{}\n", "bad_request"),
        (b'{"argv": ["true"], "command": "true"}\n', "bad_request"),
        (b'{"argv": []}\n', "bad_request"),
        (b'{"argv": "true"}\n', "bad_request"),
        (b'{"argv": ["true", 1]}\n', "bad_request"),
        (b'{"argv": ["a\\u0000b"]}\n', "bad_request"),
        (b'{"command": 5}\n', "bad_request"),
        (b'{"command": "a\\u0000b"}\n', "bad_request"),
        (b'{"command": "true", "cwd": 5}\n', "bad_request"),
        (b'{"command": "true", "cwd": ""}\n', "bad_request"),
        (b'{"command": "true", "env": ["A=B"]}\n', "bad_request"),
        (b'{"command": "true", "env": {"A": 1}}\n', "bad_request"),
        (b'{"command": "true", "env": {"A=B": "1"}}\n', "bad_request"),
        (b'{"command": "true", "env": {"": "1"}}\n', "bad_request"),
        (b'{"command": "true", "timeout": "1"}\n', "bad_request"),
        (b'{"command": "true", "timeout": -1}\n', "bad_request"),
        (b'{"command": "true", "timeout": 0}\n', "bad_request"),
        (b'{"command": "true", "timeout": true}\n', "bad_request"),
        (b'{"command": "true", "timeout": NaN}\n', "bad_request"),
        (b'{"command": "true", "timeout": Infinity}\n', "bad_request"),
        (b'{"command": "true", "timeout": 1e400}\n', "bad_request"),
        (b'{"command": "true", "max_output": -1}\n', "bad_request"),
        (b'{"command": "true", "max_output": 1.5}\n', "bad_request"),
        (b'{"command": "true", "max_output": true}\n', "bad_request"),
        (b'{"command": "true", "max_output": "10"}\n', "bad_request"),
        (b'{"command": "true", "on_limit": "explode"}\n', "bad_request"),
        (b'{"command": "true", "background": "yes"}\n', "bad_request"),
        (b'{"command": "true", "background": 1}\n', "bad_request"),
        (b'{"command": "true", "user": []}\n', "bad_request"),
        (b'{"command": "true", "user": ""}\n', "bad_request"),
        (b'{"command": "true", "user": "cltest-no-such-user"}\n', "no_such_user"),
    ],
)
def test_exec_rejects_malformed_bodies(daemon: Daemon, body: bytes, error: str) -> None:
    resp = daemon.request("POST", "/exec", body)
    assert resp.status == 400, resp.body
    assert resp.json()["error"] == error
    assert daemon.healthy()


def test_timeout_above_the_maximum_is_refused_clearly(daemon: Daemon) -> None:
    resp = daemon.exec({"argv": ["true"], "timeout": protocol.MAX_TIMEOUT * 10})
    assert resp.status == 400
    body = resp.json()
    assert body["error"] == "bad_request"
    assert "'timeout'" in body["message"]
    assert f"at most {protocol.MAX_TIMEOUT:g}" in body["message"]
    assert daemon.run(["true"], timeout=protocol.MAX_TIMEOUT).exit_code == 0


def test_exec_json_line_too_large_is_refused(daemon: Daemon) -> None:
    limit = protocol.MAX_EXEC_HEADER
    with RawClient(daemon.port) as client:
        client.send(
            b"POST /exec HTTP/1.1\r\nHost: x\r\n"
            + AUTH_LINE
            + f"Content-Length: {limit * 4}\r\n\r\n".encode()
        )
        client.send(b'{"argv": ["' + b"a" * (limit + 100_000))
        reply = client.response()
    assert (reply.status, reply.json()["error"]) == (413, "payload_too_large")
    assert reply.headers["connection"] == "close"
    assert daemon.healthy()


def test_max_output_keeps_head_and_tail(daemon: Daemon) -> None:
    lines = b"".join(b"%04d\n" % i for i in range(2000))
    command = "seq -w 0 1999; seq -w 0 1999 >&2"
    result = daemon.run(command, max_output=101)
    head, tail = lines[:51], lines[-50:]
    assert result.stdout == head + tail
    assert result.stderr == head + tail
    assert result.gaps == [
        {"stream": 1, "omitted": len(lines) - 101},
        {"stream": 2, "omitted": len(lines) - 101},
    ]
    # Each gap frame comes after its stream's head and right before its kept tail.
    kinds = [kind for kind, _ in result.frames]
    for stream, gap in [(b"1", 1), (b"2", 2)]:
        at = next(
            i
            for i, (k, p) in enumerate(result.frames)
            if k == b"G" and json.loads(p)["stream"] == gap
        )
        before = b"".join(p for k, p in result.frames[:at] if k == stream)
        assert before == head
        assert result.frames[at + 1] == (stream, tail)
        assert stream not in kinds[at + 2 :]
    exit_frame = result.exit
    assert exit_frame["exit_code"] == 0
    assert exit_frame["limit_exceeded"] is False
    assert exit_frame["stdout_omitted"] == exit_frame["stderr_omitted"] == len(lines) - 101

    # Output that fits is all there; a gap frame, if any, says nothing was omitted.
    exact = daemon.run("seq -w 0 1999", max_output=len(lines))
    assert (exact.stdout, exact.exit["stdout_omitted"]) == (lines, 0)
    assert all(gap["omitted"] == 0 for gap in exact.gaps), exact.gaps
    nothing = daemon.run("seq -w 0 1999", max_output=0)
    assert nothing.stdout == b""
    assert nothing.gaps == [{"stream": 1, "omitted": len(lines)}]
    assert nothing.exit["stdout_omitted"] == len(lines)
    unlimited = daemon.run("seq -w 0 1999", max_output=None)
    assert (unlimited.stdout, unlimited.gaps) == (lines, [])


def test_on_limit_kill_stops_the_command(daemon: Daemon) -> None:
    started = time.monotonic()
    result = daemon.run(["yes"], max_output=1000, on_limit="kill", timeout=20)
    assert time.monotonic() - started < 10
    assert result.exit_code == -signal.SIGKILL
    assert result.exit["limit_exceeded"] is True
    assert result.exit["timed_out"] is False
    assert len(result.stdout) <= 1000
    assert result.stdout.startswith(b"y\ny\n")
    assert result.exit["stdout_omitted"] > 0
    within = daemon.run("echo fits", max_output=1000, on_limit="kill")
    assert (within.stdout, within.exit_code, within.exit["limit_exceeded"]) == (
        b"fits\n",
        0,
        False,
    )


def test_on_limit_kill_lets_output_up_to_the_limit_through(daemon: Daemon) -> None:
    # Issue 27: a stream was killed once past *half* of max_output (the streamed head),
    # so a 9 MB command under a 16 MiB limit died. The limit is the stream's whole output.
    limit = 100_000
    for size in (limit // 2 + 1, limit * 9 // 10, limit):
        result = daemon.run(
            ["head", "-c", str(size), "/dev/zero"], max_output=limit, on_limit="kill", timeout=20
        )
        assert (result.exit_code, result.exit["limit_exceeded"]) == (0, False), size
        assert result.stdout == bytes(size)
        assert result.exit["stdout_omitted"] == 0
        assert all(gap["omitted"] == 0 for gap in result.gaps), result.gaps
    # One byte more is over the limit: head and tail are kept, the byte between omitted.
    over = daemon.run(
        "head -c 50000 /dev/zero; printf x; head -c 50000 /dev/zero",
        max_output=limit,
        on_limit="kill",
        timeout=20,
    )
    assert over.exit["limit_exceeded"] is True
    assert over.exit["stdout_omitted"] == 1
    assert over.stdout == bytes(limit)


def test_timeout_kills_the_whole_process_group(daemon: Daemon) -> None:
    marker = secrets.token_hex(8)
    started = time.monotonic()
    result = daemon.run(
        "echo started; sleep 300 & sleep 300",
        timeout=0.5,
        env={"CLTEST_MARKER": marker},
    )
    assert time.monotonic() - started < 5
    assert result.exit["timed_out"] is True
    assert result.exit_code == -signal.SIGKILL
    assert result.stdout == b"started\n"
    assert 0.5 <= result.exit["duration"] < 5
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)


def test_long_command_does_not_block_other_requests(daemon: Daemon) -> None:
    run = BackgroundExec(daemon, {"command": "sleep 4; echo done"})
    time.sleep(0.2)
    started = time.monotonic()
    assert daemon.request("GET", "/health").status == 200
    assert daemon.run("echo quick").exit_code == 0
    assert time.monotonic() - started < 2.5  # not behind the 4 s command
    assert run.alive()
    run.join()
    assert run.error is None
    assert run.response is not None
    result = frames_of(run.response)
    assert result.stdout == b"done\n"
    assert result.exit["duration"] >= 4


def test_client_disconnect_kills_a_foreground_command(daemon: Daemon, tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    marker = secrets.token_hex(8)
    started = time.monotonic()
    stream = daemon.stream(
        {
            "command": f"sleep 300 & echo running; sleep 1; touch {sentinel}",
            "env": {"CLTEST_MARKER": marker},
        }
    )
    stream.until_stdout(b"running\n")
    assert wait_for(lambda: bool(sleepers_with(marker)), timeout=2)
    stream.close()
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)
    # Past the moment the command would have written its sentinel.
    time.sleep(max(0.0, started + 1.5 - time.monotonic()))
    assert not sentinel.exists()
    assert "POST /exec: client went away" in daemon.log()
    assert daemon.healthy()


def test_user_unsupported_when_the_daemon_is_not_root(daemon: Daemon) -> None:
    if os.geteuid() == 0:
        pytest.skip("the daemon runs as root here, and root may switch users")
    resp = daemon.exec({"argv": ["id", "-u"], "user": "root"})
    assert (resp.status, resp.json()["error"]) == (400, "user_unsupported")
    # Its own user is fine, by name or uid.
    me = pwd.getpwuid(os.geteuid())
    assert daemon.run(["id", "-u"], user=me.pw_name).stdout == f"{me.pw_uid}\n".encode()
    assert daemon.run(["id", "-u"], user=me.pw_uid).stdout == f"{me.pw_uid}\n".encode()


def test_root_daemon_runs_commands_as_another_user(daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root daemon can switch users")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    result = daemon.run('id -u; id -g; echo "$HOME $USER"', user="nobody")
    assert result.stdout.decode().split("\n")[:3] == [
        str(nobody.pw_uid),
        str(nobody.pw_gid),
        f"{nobody.pw_dir} nobody",
    ]
    assert daemon.run(["id", "-u"], user=str(nobody.pw_uid)).stdout == f"{nobody.pw_uid}\n".encode()
    assert daemon.run(["id", "-u"], user=0).stdout == b"0\n"
    # A bare uid without an account works too (its own group, no home).
    assert daemon.run(["id", "-u"], user=54_321).stdout == b"54321\n"


# ------------------------------------------------------- background processes


def process_info(daemon: Daemon, pid_id: str) -> dict[str, Any] | None:
    resp = daemon.request("GET", "/processes")
    assert resp.status == 200
    listed: list[dict[str, Any]] = resp.json()
    return next((p for p in listed if p["id"] == pid_id), None)


def start_background(daemon: Daemon, payload: dict[str, Any], first_output: bytes) -> str:
    """Start a background command, read its first output, then hang up; its id."""
    gone_before = daemon.log().count("POST /exec: client went away")
    stream = daemon.stream({**payload, "background": True})
    pid_id: str = json.loads(stream.frame()[1])["id"]
    stream.until_stdout(first_output)
    stream.close()
    # The daemon has noticed the client leaving (and must not have killed the process).
    assert wait_for(
        lambda: daemon.log().count("POST /exec: client went away") > gone_before, timeout=5
    )
    return pid_id


def test_background_process_outlives_its_request(daemon: Daemon) -> None:
    marker = secrets.token_hex(8)
    command = "echo started; echo err >&2; exec sleep 300"
    pid_id = start_background(
        daemon, {"command": command, "env": {"CLTEST_MARKER": marker}}, b"started\n"
    )
    assert wait_for(lambda: bool(sleepers_with(marker)), timeout=2)
    info = process_info(daemon, pid_id)
    assert info is not None
    assert info["argv"] == ["/bin/sh", "-c", command]
    assert (info["background"], info["running"], info["exit_code"]) == (True, True, None)
    single = daemon.request("GET", f"/processes/{pid_id}")
    assert (single.status, single.json()["id"]) == (200, pid_id)

    # Attach: what it printed so far, then (once killed) its exit.
    attached = FrameStream(daemon.port, "GET", f"/processes/{pid_id}/output")
    assert json.loads(attached.frame()[1])["id"] == pid_id
    while b"".join(p for k, p in attached.frames if k == b"2") != b"err\n":
        attached.frame()
    killed = daemon.request("DELETE", f"/processes/{pid_id}")
    assert (killed.status, killed.json()["id"]) == (200, pid_id)
    result = attached.finish()
    assert result.stdout == b"started\n"
    assert result.stderr == b"err\n"
    assert result.exit_code == -signal.SIGKILL
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)
    assert process_info(daemon, pid_id) is None
    gone = daemon.request("GET", f"/processes/{pid_id}/output")
    assert (gone.status, gone.json()["error"]) == (404, "no_such_process")


def test_background_process_signal(daemon: Daemon) -> None:
    marker = secrets.token_hex(8)
    pid_id = start_background(
        daemon, {"command": "echo up; exec sleep 300", "env": {"CLTEST_MARKER": marker}}, b"up\n"
    )
    for bad in ["0", "65", "TERM", "-1", ""]:
        resp = daemon.request("POST", f"/processes/{pid_id}/signal?signal={bad}")
        assert (resp.status, resp.json()["error"]) == (400, "bad_request"), bad
    sent = daemon.request("POST", f"/processes/{pid_id}/signal?signal={int(signal.SIGTERM)}")
    assert sent.status == 200
    result = FrameStream(daemon.port, "GET", f"/processes/{pid_id}/output").finish()
    assert result.stdout == b"up\n"
    assert result.exit_code == -signal.SIGTERM
    info = process_info(daemon, pid_id)
    assert info is not None
    assert (info["running"], info["exit_code"]) == (False, -signal.SIGTERM)
    assert daemon.request("DELETE", f"/processes/{pid_id}").status == 200
    assert process_info(daemon, pid_id) is None
    assert not sleepers_with(marker)


def test_background_process_stdin_and_timeout(daemon: Daemon) -> None:
    echoed = daemon.exec({"argv": ["cat"], "background": True}, b"to the background")
    assert frames_of(echoed).stdout == b"to the background"
    timed = frames_of(daemon.exec({"argv": ["sleep", "300"], "background": True, "timeout": 0.3}))
    assert timed.exit["timed_out"] is True
    assert timed.exit_code == -signal.SIGKILL


def test_background_output_keeps_the_last_bytes_and_says_what_was_lost(daemon: Daemon) -> None:
    total = 2 * protocol.RING_BYTES + 12_345
    stream = daemon.stream(
        {"command": f"head -c {total - 3} /dev/zero | tr '\\0' x; printf end", "background": True}
    )
    pid_id = json.loads(stream.frame()[1])["id"]
    stream.close()

    def finished() -> bool:
        info = process_info(daemon, pid_id)
        return info is not None and not info["running"]

    assert wait_for(finished, timeout=10)
    result = FrameStream(daemon.port, "GET", f"/processes/{pid_id}/output").finish()
    assert result.exit_code == 0
    assert len(result.gaps) == 1
    assert result.gaps[0]["stream"] == 1
    assert result.frames[1][0] == b"G"  # before any of the stream's bytes
    assert result.gaps[0]["omitted"] + len(result.stdout) == total
    assert len(result.stdout) >= protocol.RING_BYTES
    assert result.stdout.endswith(b"xxxend")
    assert set(result.stdout[:-3]) == {ord("x")}
    assert daemon.request("DELETE", f"/processes/{pid_id}").status == 200


def test_running_background_processes_are_limited(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon()
    marker = secrets.token_hex(8)
    sleeper = {"argv": ["sleep", "300"], "env": {"CLTEST_MARKER": marker}, "background": True}

    def start(payload: dict[str, Any]) -> str:
        stream = daemon.stream(payload)
        pid_id: str = json.loads(stream.frame()[1])["id"]
        stream.close()
        return pid_id

    def refused() -> bool:
        resp = daemon.exec(sleeper, timeout=5)  # accepted, it would stream for 300 s
        assert resp.status == 503, resp.status
        body = resp.json()
        return (body["error"], body["limit"]) == ("resource_exhausted", "processes")

    def finished(pid_id: str) -> bool:
        info = process_info(daemon, pid_id)
        return info is not None and not info["running"]

    ids = [start(sleeper) for _ in range(protocol.MAX_BACKGROUND)]
    assert refused()
    # Foreground commands are not counted.
    assert daemon.run(["echo", "foreground"]).stdout == b"foreground\n"
    # A finished one makes room: the oldest finished ones are forgotten.
    signal_url = f"/processes/{ids[0]}/signal?signal={int(signal.SIGKILL)}"
    assert daemon.request("POST", signal_url).status == 200
    assert wait_for(lambda: finished(ids[0]), timeout=5)
    quick = start({"argv": ["true"], "background": True})
    assert process_info(daemon, ids[0]) is None
    assert wait_for(lambda: finished(quick), timeout=5)
    ids.append(start(sleeper))  # in the place of the finished `true`
    assert process_info(daemon, quick) is None
    assert refused()
    # So does a deleted one.
    assert daemon.request("DELETE", f"/processes/{ids[1]}").status == 200
    ids.append(start(sleeper))
    assert refused()
    assert wait_for(lambda: len(sleepers_with(marker)) == protocol.MAX_BACKGROUND, timeout=3)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), len(sleepers_with(marker))


def test_process_endpoints_errors(daemon: Daemon) -> None:
    missing = daemon.request("GET", "/processes/p999999/output")
    assert (missing.status, missing.json()["error"]) == (404, "no_such_process")
    stream = daemon.stream({"command": "echo fg; exec sleep 300"})
    pid_id = json.loads(stream.frame()[1])["id"]
    stream.until_stdout(b"fg\n")
    info = process_info(daemon, pid_id)
    assert info is not None
    assert (info["background"], info["running"]) == (False, True)
    attach = daemon.request("GET", f"/processes/{pid_id}/output")
    assert (attach.status, attach.json()["error"]) == (409, "not_background")
    unknown = daemon.request("GET", f"/processes/{pid_id}/bogus")
    assert (unknown.status, unknown.json()["error"]) == (404, "not_found")
    # Deleting a foreground process kills it; its own request then reports the exit.
    assert daemon.request("DELETE", f"/processes/{pid_id}").status == 200
    assert stream.finish().exit_code == -signal.SIGKILL
    assert wait_for(lambda: process_info(daemon, pid_id) is None, timeout=3)


def test_malformed_process_ids_are_refused(daemon: Daemon) -> None:
    # Issue 27: an id like "p1?x=y" sent unquoted reached the daemon as process p1.
    marker = secrets.token_hex(8)
    pid_id = start_background(
        daemon, {"command": "echo up; exec sleep 300", "env": {"CLTEST_MARKER": marker}}, b"up\n"
    )
    for target in [
        f"/processes/{pid_id}?x=y",  # what an unquoted "p1?x=y" looks like
        f"/processes/{pid_id}%3Fx%3Dy",  # the same id quoted
        f"/processes/{pid_id}/signal?signal=9&x=y",
        f"/processes/{pid_id}x",
        f"/processes/{pid_id}%00",
        "/processes/p01",
        "/processes/p",
        "/processes/",
        "/processes/..",
    ]:
        resp = daemon.request("DELETE" if "signal" not in target else "POST", target)
        assert (target, resp.status, resp.json()["error"]) == (target, 400, "bad_request")
    info = process_info(daemon, pid_id)
    assert info is not None
    assert info["running"] is True
    assert daemon.request("DELETE", f"/processes/{pid_id}").status == 200
    assert wait_for(lambda: not sleepers_with(marker), timeout=3)


MIB = 1024 * 1024


def daemon_rss_mib(daemon: Daemon) -> float:
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s*(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def test_finished_background_output_has_a_memory_budget(
    spawn_daemon: Callable[..., Daemon],
) -> None:
    # Issue 27: the rings of finished background processes were kept until their slot
    # was needed: 64 jobs of 2 MiB per stream held 160 MiB (a 128 MiB sandbox's daemon
    # was OOM-killed at the 46th). The oldest finished ones' output now goes first.
    daemon = spawn_daemon()
    job = {"command": "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2"}

    def finished(pid_id: str) -> bool:
        info = process_info(daemon, pid_id)
        return info is not None and not info["running"]

    ids = []
    for _ in range(protocol.MAX_BACKGROUND):
        stream = daemon.stream({**job, "background": True})
        ids.append(json.loads(stream.frame()[1])["id"])
        stream.close()
        assert wait_for(lambda: finished(ids[-1]), timeout=10)
    assert daemon_rss_mib(daemon) < 80
    # Every one is still listed with its exit status.
    listed = {p["id"]: p for p in daemon.request("GET", "/processes").json()}
    assert all(listed[pid_id]["exit_code"] == 0 for pid_id in ids)
    # The newest kept its last mebibyte per stream...
    newest = FrameStream(daemon.port, "GET", f"/processes/{ids[-1]}/output").finish()
    assert newest.exit_code == 0
    assert MIB <= len(newest.stdout) <= 2 * MIB
    assert MIB <= len(newest.stderr) <= 2 * MIB
    # ...the oldest one's output is gone, and a reader is told so instead of nothing.
    oldest = daemon.request("GET", f"/processes/{ids[0]}/output")
    assert (oldest.status, oldest.json()["error"]) == (410, "output_evicted")
    assert "budget" in oldest.json()["message"]
    assert oldest.json()["exit_code"] == 0
    assert daemon.healthy()


def test_running_background_output_shares_the_budget(
    spawn_daemon: Callable[..., Daemon],
) -> None:
    # The same budget holds while they all still run: each ring gives up its oldest bytes.
    daemon = spawn_daemon()
    marker = secrets.token_hex(8)
    done = daemon.workdir / "done"
    done.mkdir()
    # Each says it started and waits for the word; then prints 2 MiB on each stream (the
    # daemon has read all but a pipe's worth when `head` returns) and says so with a
    # file. Nobody reads it live, so the test costs what the daemon does, not a reader.
    job = {
        "command": "echo start; until [ -e go ]; do sleep 0.05; done;"
        " head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2;"
        ' echo end; touch "done/$$"; exec sleep 300',
        "env": {"CLTEST_MARKER": marker},
        "background": True,
    }
    ids = []
    for _ in range(protocol.MAX_BACKGROUND):  # as start_background, the hang-ups awaited once
        stream = daemon.stream(job)
        ids.append(json.loads(stream.frame()[1])["id"])
        stream.until_stdout(b"start\n")
        stream.close()
    gone = "POST /exec: client went away"
    assert wait_for(lambda: daemon.log().count(gone) >= len(ids), timeout=30)
    (daemon.workdir / "go").touch()
    assert wait_for(lambda: len(os.listdir(done)) == len(ids), timeout=60)
    assert daemon_rss_mib(daemon) < 80
    attached = FrameStream(daemon.port, "GET", f"/processes/{ids[0]}/output")
    attached.until_stdout(b"end\n")  # the latest bytes are always kept
    attached.close()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    assert wait_for(lambda: not sleepers_with(marker), timeout=3)


# ---------------------------------------------------------------------- files


def test_file_round_trip_with_mode(daemon: Daemon, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    target = tmp_path / "new dir" / "sub" / "file name é.bin"
    put = daemon.request("PUT", files_url(target, mode="640"), data)
    assert put.status == 200
    assert put.json() == {"path": str(target), "size": len(data)}
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(target.parent) == [target.name]  # no temporary file left behind

    get = daemon.request("GET", files_url(target))
    assert get.status == 200
    assert get.headers["content-type"] == "application/octet-stream"
    assert get.headers["content-length"] == str(len(data))
    assert get.body == data
    head = daemon.request("HEAD", files_url(target))
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", str(len(data)))


def test_put_replaces_a_file_and_keeps_its_mode(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_bytes(b"old contents that are longer")
    target.chmod(0o751)
    put = daemon.request("PUT", files_url(target), b"new")
    assert put.status == 200
    assert put.json()["size"] == 3
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    empty = daemon.request("PUT", files_url(tmp_path / "empty"), b"")
    assert empty.status == 200
    assert daemon.request("GET", files_url(tmp_path / "empty")).body == b""


def test_put_with_a_chunked_body(daemon: Daemon, tmp_path: Path) -> None:
    data = os.urandom(1_000_003)
    target = tmp_path / "chunked.bin"
    pieces = [data[i : i + 65_537] for i in range(0, len(data), 65_537)]
    put = daemon.request("PUT", files_url(target), pieces, chunked=True)
    assert (put.status, put.json()["size"]) == (200, len(data))
    assert target.read_bytes() == data
    assert daemon.request("GET", files_url(target)).body == data


def test_put_with_a_malformed_chunked_body(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "dir" / "bad-chunks"
    for body in [b"5\r\nhello\r\nzz\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n"]:
        reply = daemon.raw(
            f"PUT {files_url(target)} HTTP/1.1\r\nHost: x\r\n".encode()
            + AUTH_LINE
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + body
        )
        assert (reply.status, reply.json()["error"]) == (400, "bad_request"), body
    assert listing(target.parent) == []  # neither the file nor a temporary one


def test_relative_file_paths_resolve_against_the_working_directory(daemon: Daemon) -> None:
    name = f"rel-{secrets.token_hex(4)}/file.txt"
    put = daemon.request("PUT", files_url(name), b"relative")
    assert put.status == 200
    assert put.json()["path"] == str(daemon.workdir / name)
    assert (daemon.workdir / name).read_bytes() == b"relative"
    assert daemon.request("GET", files_url(name)).body == b"relative"
    assert daemon.run(["cat", name]).stdout == b"relative"


def test_get_file_refuses_a_file_above_max_size(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"b" * 1000)
    refused = daemon.request("GET", files_url(target, max_size="999"))
    assert refused.status == 413
    body = refused.json()  # JSON only: not one byte of the file
    assert (body["error"], body["size"], body["path"]) == ("file_too_large", 1000, str(target))
    assert b"bbb" not in refused.body
    allowed = daemon.request("GET", files_url(target, max_size="1000"))
    assert (allowed.status, allowed.body) == (200, b"b" * 1000)
    # A pseudo file has no size: it is read up to the limit.
    pseudo = daemon.request("GET", files_url("/proc/version", max_size="5"))
    assert (pseudo.status, pseudo.json()["error"], pseudo.json()["size"]) == (
        413,
        "file_too_large",
        None,
    )
    version = daemon.request("GET", files_url("/proc/version"))
    assert version.status == 200
    assert version.body == Path("/proc/version").read_bytes()


def test_stat_and_list(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"abc")
    (tmp_path / "b.txt").chmod(0o640)
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "link").symlink_to("b.txt")
    info = daemon.request("GET", files_url(tmp_path / "b.txt", "/files/stat")).json()
    assert info["path"] == str(tmp_path / "b.txt")
    assert (info["type"], info["size"], info["mode"]) == ("file", 3, 0o640)
    assert (info["uid"], info["gid"]) == (os.getuid(), os.getgid())
    assert info["mtime"] == pytest.approx((tmp_path / "b.txt").stat().st_mtime)
    directory = daemon.request("GET", files_url(tmp_path / "a_dir", "/files/stat")).json()
    assert directory["type"] == "directory"

    listed = daemon.request("GET", files_url(tmp_path, "/files/list")).json()
    assert listed["path"] == str(tmp_path)
    assert listed["truncated"] is False
    entries = {e["name"]: e for e in listed["entries"]}
    assert [e["name"] for e in listed["entries"]] == ["a_dir", "b.txt", "link"]
    assert (entries["a_dir"]["type"], entries["b.txt"]["type"]) == ("directory", "file")
    assert entries["link"]["type"] == "symlink"  # not followed
    assert (entries["b.txt"]["size"], entries["b.txt"]["mode"]) == (3, 0o640)


def test_file_errors(daemon: Daemon, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        ("GET", files_url(tmp_path / "missing"), None, 404, "not_found"),
        ("GET", files_url(tmp_path), None, 400, "is_a_directory"),
        ("GET", files_url(fifo), None, 400, "not_a_regular_file"),
        ("GET", files_url(a_file / "below"), None, 400, "not_a_directory"),
        ("GET", files_url("relative/missing"), None, 404, "not_found"),
        ("GET", "/files", None, 400, "bad_path"),
        ("GET", "/files?path=", None, 400, "bad_path"),
        ("GET", files_url("a\x00b"), None, 400, "bad_path"),
        ("GET", files_url(a_file, max_size="-1"), None, 400, "bad_request"),
        ("GET", files_url(a_file, max_size="x"), None, 400, "bad_request"),
        ("GET", f"/files?path={a_file}&path={a_file}", None, 400, "bad_request"),
        ("PUT", files_url(tmp_path), b"x", 400, "is_a_directory"),
        ("PUT", files_url(f"{tmp_path}/new/"), b"x", 400, "is_a_directory"),
        ("PUT", files_url(tmp_path / "f", mode="999"), b"x", 400, "bad_mode"),
        ("PUT", files_url(tmp_path / "f", mode="u+x"), b"x", 400, "bad_mode"),
        ("PUT", files_url(tmp_path / "f", mode="77777"), b"x", 400, "bad_mode"),
        ("GET", files_url(tmp_path / "missing", "/files/stat"), None, 404, "not_found"),
        ("GET", files_url(tmp_path / "missing", "/files/list"), None, 404, "not_found"),
        ("GET", files_url(a_file, "/files/list"), None, 400, "not_a_directory"),
    ]
    for method, url, body, status, error in cases:
        resp = daemon.request(method, url, body)
        assert (url, resp.status, resp.json()["error"]) == (url, status, error)
    below = daemon.request("PUT", files_url(a_file / "below"), b"x")
    assert below.status == 400
    assert below.json()["error"] in ("not_a_directory", "bad_path")
    assert not (tmp_path / "f").exists()
    assert sorted(os.listdir(tmp_path)) == ["a_file", "fifo"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_file_permission_denied(daemon: Daemon, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    (locked / "f").chmod(0)
    locked.chmod(0o500)
    try:
        get = daemon.request("GET", files_url(locked / "f"))
        assert (get.status, get.json()["error"]) == (403, "permission_denied")
        put = daemon.request("PUT", files_url(locked / "g"), b"x")
        assert (put.status, put.json()["error"]) == (403, "permission_denied")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_put_over_a_read_only_file_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "read-only"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    put = daemon.request("PUT", files_url(target), b"overwritten")
    assert (put.status, put.json()["error"]) == (403, "permission_denied")
    assert target.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["read-only"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root daemon and another user")
def test_a_root_write_keeps_the_owner_and_follows_no_other_users_symlink(
    daemon: Daemon, tmp_path: Path
) -> None:
    # Issue 27: a root write over a user's file made it root's, and followed the
    # user's symlinks (one on the way sent the write wherever they pointed).
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    theirs = home / "notes.txt"
    theirs.write_bytes(b"v1")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    for version, params in [(b"v2", {"mode": "600"}), (b"v3", {})]:
        assert daemon.request("PUT", files_url(theirs, **params), version).status == 200
        info = theirs.stat()
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid), params
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert theirs.read_bytes() == version

    # Out of their reach: a directory of root's, with a file only root may read.
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    secret = vault / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)

    def plant(name: str, target: Path) -> Path:
        link = home / name
        link.symlink_to(target)
        os.lchown(link, nobody.pw_uid, nobody.pw_gid)
        return link

    # A symlink of theirs on the way is not followed: nothing lands in the vault.
    through = plant("vault-link", vault)
    for path in [through / "secret", through / "new", through / "deeper" / "new"]:
        resp = daemon.request("PUT", files_url(path), b"pwned")
        assert (path, resp.status, resp.json()["error"]) == (path, 403, "permission_denied")
        assert "symlink" in resp.json()["message"]
    assert sorted(os.listdir(vault)) == ["secret"]
    assert secret.read_bytes() == b"root only"
    # A symlink of theirs at the target is replaced, never written through: the new
    # file is root's, with the default mode, and lends nothing from where it pointed.
    planted = plant("planted", secret)
    assert daemon.request("PUT", files_url(planted), b"for root").status == 200
    assert secret.read_bytes() == b"root only"
    umask = os.umask(0o022)
    os.umask(umask)  # the daemon's own: it inherited ours
    info = planted.lstat()
    assert stat.S_ISREG(info.st_mode)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o666 & ~umask)
    assert planted.read_bytes() == b"for root"
    # Root's own symlinks are followed as before.
    (tmp_path / "real").mkdir()
    (tmp_path / "roots-link").symlink_to(tmp_path / "real")
    assert daemon.request("PUT", files_url(tmp_path / "roots-link" / "f"), b"ok").status == 200
    assert (tmp_path / "real" / "f").read_bytes() == b"ok"
    assert not [n for n in os.listdir(home) if n.startswith(protocol.UPLOAD_PREFIX)]


def test_put_disconnect_mid_body_removes_temp_file(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "dir" / "partial"
    for framing, first in [
        (b"Content-Length: 10000000\r\n", b"x" * 100_000),
        (b"Transfer-Encoding: chunked\r\n", b"186a0\r\n" + b"x" * 100_000 + b"\r\n"),
    ]:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.sendall(
                f"PUT {files_url(target)} HTTP/1.1\r\nHost: x\r\n".encode()
                + AUTH_LINE
                + framing
                + b"\r\n"
                + first
            )
            # The upload has started once the temporary file exists.
            assert wait_for(lambda: bool(listing(target.parent)), timeout=5)
        assert wait_for(lambda: listing(target.parent) == [], timeout=5), listing(target.parent)
        assert not target.exists()
    assert daemon.healthy()


# ----------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe\r\n\r\n", 400),
        (b"\x00\xff\xfe junk here\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP1.1\r\n\r\n", 400),
        (b"GET  /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\n\r\n", 505),
        (b"GET /health HTTP/1.1\r\nAUTH\r\n folded: header\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nBad Name: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nno colon\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000, 431),
        (b"GET /health HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000, 431),
    ],
)
def test_malformed_requests_get_4xx_and_server_keeps_serving(
    daemon: Daemon, raw: bytes, status: int
) -> None:
    reply = daemon.raw(raw.replace(b"AUTH", AUTH_LINE[:-2]))
    assert reply.status == status
    assert reply.headers["content-length"] == str(len(reply.body))
    assert reply.headers["connection"] == "close"
    assert "error" in reply.json()
    assert daemon.healthy()


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: -5\r\n", id="negative"),
        pytest.param(b"Content-Length: abc\r\n", id="letters"),
        pytest.param(b"Content-Length: 1.5\r\n", id="fraction"),
        pytest.param(b"Content-Length: 1\r\nContent-Length: 2\r\n", id="conflicting"),
        pytest.param(b"Content-Length: 99999999999999999999\r\n", id="huge"),
        pytest.param(b"Content-Length: \xb2\r\n", id="superscript-two"),
        pytest.param(b"Transfer-Encoding: gzip\r\n", id="gzip"),
        pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", id="gzip-chunked"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="both"),
    ],
)
def test_malformed_body_framing_gets_400(daemon: Daemon, framing: bytes) -> None:
    reply = daemon.raw(b"POST /exec HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + framing + b"\r\nhello")
    assert reply.status == 400
    assert reply.json()["error"] in ("bad_request", "bad_content_length")
    assert daemon.healthy()


@pytest.mark.parametrize(
    "request_line",
    [
        pytest.param(b"GET /files?path=x&max_size=%C2%B2", id="max_size"),
        pytest.param(b"POST /processes/PID/signal?signal=%C2%B2", id="signal"),
    ],
)
def test_unicode_digits_in_numeric_parameters_are_refused(
    daemon: Daemon, request_line: bytes
) -> None:
    (daemon.workdir / "x").write_text("x")
    stream = daemon.stream({"argv": ["sleep", "300"], "background": True})
    pid_id = json.loads(stream.frame()[1])["id"]
    try:
        line = request_line.replace(b"PID", pid_id.encode())
        reply = daemon.raw(line + b" HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n")
        assert (reply.status, reply.json()["error"]) == (400, "bad_request")
    finally:
        stream.close()
        daemon.request("DELETE", f"/processes/{pid_id}")


def test_unicode_digit_user_is_refused(daemon: Daemon) -> None:
    for user in ["\u00b2", "a\x00b"]:
        resp = daemon.exec({"argv": ["true"], "user": user})
        assert resp.status == 400, (user, resp.body)
        assert resp.json()["error"] in ("bad_request", "no_such_user")


def test_request_ends_at_its_first_blank_line(daemon: Daemon) -> None:
    # Bare LF line ends are accepted; a later CRLF CRLF must not extend the first request.
    lf_auth = AUTH_LINE.replace(b"\r\n", b"\n")
    with RawClient(daemon.port) as client:
        client.send(
            b"GET /nope HTTP/1.1\n" + lf_auth + b"\nGET /health HTTP/1.1\r\n" + AUTH_LINE + b"\r\n"
        )
        assert client.response().status == 404
        assert client.response().status == 200


def test_pipelining_faster_than_reading_over_a_unix_socket(tmp_path: Path) -> None:
    """The probe's 10,000 pipelined requests over a sandbox's socket ended in a dropped
    connection after 6,947: the daemon gave up when a reply did not fit at once."""
    path = str(tmp_path / "daemon.sock")
    procs: list[subprocess.Popen[bytes]] = []
    count = 10_000
    received = bytearray()
    try:
        start_daemon(tmp_path / "unix.log", procs, COMMANDLAB_SOCKET=path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(path)

            def read() -> None:
                time.sleep(0.5)  # the replies fill the socket's buffer first
                with contextlib.suppress(OSError):
                    while received.count(b"HTTP/1.1 200 OK") < count:
                        data = sock.recv(1 << 20)
                        if not data:
                            return
                        received.extend(data)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n"
            with contextlib.suppress(OSError):
                sock.sendall(request * count)
            reader.join(30)
        assert received.count(b"HTTP/1.1 200 OK") == count
    finally:
        stop_daemons(procs)


def test_many_pipelined_health_requests(spawn_daemon: Callable[..., Daemon]) -> None:
    """A client that pipelines faster than it reads is answered in full (the probe's
    10,000 requests once ended in a dropped connection after 6,947)."""
    daemon = spawn_daemon()
    count = 10_000
    received = bytearray()
    with RawClient(daemon.port, timeout=30) as client:

        def read() -> None:
            with_timeout = client.sock
            time.sleep(0.5)  # the replies fill the daemon's send buffer first
            try:
                while received.count(b"HTTP/1.1 200 OK") < count:
                    data = with_timeout.recv(1 << 20)
                    if not data:
                        return
                    received.extend(data)
            except OSError:
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with_auth = b"GET /health HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n"
        with contextlib.suppress(OSError):  # the daemon may be gone
            client.send(with_auth * count)
        reader.join(30)
    answered = received.count(b"HTTP/1.1 200 OK")
    try:
        alive = daemon.healthy()
    except OSError:
        alive = False
    assert (answered, alive) == (count, True), (
        f"exit status {daemon.proc.poll()}; log tail:\n{daemon.log()[-600:]}"
    )


def test_idle_unauthenticated_connections_get_no_thread(daemon: Daemon) -> None:
    daemon.healthy()
    threads = thread_count(daemon.proc.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=5))
        partial = RawClient(daemon.port)
        idle.append(partial.sock)
        partial.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        sent = time.monotonic()
        # Every socket has been accepted by now: the daemon answers in order.
        started = time.monotonic()
        assert daemon.request("GET", "/health", timeout=4).status == 200
        assert daemon.run("echo still serving").stdout == b"still serving\n"
        assert time.monotonic() - started < 4  # not the 10 s header deadline
        assert thread_count(daemon.proc.pid) <= threads + 1  # at most one more worker
        # The incomplete request is dropped once its header deadline passes.
        deadline = protocol.HEADER_DEADLINE
        assert not partial.closed_within(max(0.0, sent + deadline - 1 - time.monotonic()))
        assert partial.closed_within(sent + deadline + 2 - time.monotonic())
        assert time.monotonic() - sent >= deadline - 1
        # And so are the connections that never sent a byte.
        for sock in idle[:-1]:
            sock.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert daemon.healthy()


def test_log_has_one_terse_line_per_request_and_never_the_token(daemon: Daemon) -> None:
    unique = secrets.token_hex(6)
    assert daemon.request("GET", f"/health?token={TOKEN}").status == 200
    assert daemon.request("GET", f"/nope-{unique}?token={TOKEN}").status == 404
    assert daemon.request("GET", f"/denied-{unique}", token="x" * 20).status == 401
    bearer = {"Authorization": "Bearer " + "y" * 20}
    assert daemon.request("GET", "/health", headers=bearer, token=None).status == 401
    assert daemon.run(f"echo {unique}-exec").exit_code == 0
    log = daemon.log()
    assert "commandlab daemon listening on 127.0.0.1:" in log
    assert '"GET /health" 200' not in log  # not the stdlib format
    assert re.search(r"127\.0\.0\.1 GET /health 200$", log, re.MULTILINE)
    assert re.search(r"127\.0\.0\.1 GET /health 401$", log, re.MULTILINE)
    assert re.search(r"127\.0\.0\.1 POST /exec 200$", log, re.MULTILINE)
    assert len(re.findall(rf"^\S+ 127\.0\.0\.1 GET /nope-{unique} 404$", log, re.MULTILINE)) == 1
    assert len(re.findall(rf"^\S+ 127\.0\.0\.1 GET /denied-{unique} 401$", log, re.MULTILINE)) == 1
    assert f"{unique}-exec" not in log  # commands are not logged
    assert TOKEN not in log
    assert TOKEN_SHA256 not in log
    assert "x" * 20 not in log
    assert "y" * 20 not in log
    assert "Authorization" not in log
    assert TOKEN_HEADER.lower() not in log.lower()


def test_commands_are_the_oom_killers_first_choice_and_the_daemon_is_not(daemon: Daemon) -> None:
    own = Path(f"/proc/{daemon.proc.pid}/oom_score_adj").read_text()
    # A shell command raises its score before anything else; what it starts inherits it.
    result = daemon.run("cat /proc/self/oom_score_adj; sh -c 'cat /proc/$$/oom_score_adj'")
    assert result.stdout == b"1000\n1000\n"
    assert result.exit_code == 0
    assert daemon.run("echo $?").stdout == b"0\n"  # the raise leaves no trace in $?
    # An argv command's is raised by the daemon before it answers the start frame.
    starts = []
    for payload in ({"argv": ["sleep", "300"]}, {"command": "sleep 300"}):
        stream = daemon.stream({**payload, "background": True})
        starts.append(json.loads(stream.frame()[1]))
        stream.close()
    try:
        assert Path(f"/proc/{starts[0]['pid']}/oom_score_adj").read_text() == "1000\n"
        # The listing shows the shell command as it was given.
        listed = process_info(daemon, starts[1]["id"])
        assert listed is not None
        assert listed["argv"] == ["/bin/sh", "-c", "sleep 300"]
    finally:
        for start in starts:
            assert daemon.request("DELETE", f"/processes/{start['id']}").status == 200
    assert Path(f"/proc/{daemon.proc.pid}/oom_score_adj").read_text() == own


def close_server(server: Any) -> None:
    """Close what an in-process ``Server`` opened (it never serves here)."""
    for sock in (server.listener, server.wake_r, server.wake_w):
        sock.close()
    server.selector.close()


def reply_of(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_requests_no_thread_can_be_started_for_get_a_typed_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: threads refused as in a sandbox out of pids; no connection is dropped."""
    config = daemon_config.Config(b"\x01" * 32, "127.0.0.1", 0, None)
    server = daemon_server.Server(config, daemon_processes.Registry(), {}, 0o022, "/")
    request = daemon_http.Request("POST", "/exec", "HTTP/1.1", {})

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        # No worker at all: nobody could ever take the request, refused at once.
        server.submit(daemon_connections.Conn(pairs[0][0], "test"), request)
        assert not server.jobs
        reply = reply_of(pairs[0][1])
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert b'"error":"resource_exhausted"' in reply
        assert b'"limit":"pids"' in reply
        # Every worker busy: the request waits for one, with retries, then is refused.
        server.workers = 1
        server.submit(daemon_connections.Conn(pairs[1][0], "test"), request)
        assert len(server.jobs) == 1
        assert server.starved_since is not None
        server.unstarve(server.starved_since + daemon_server.STARVED_GRACE / 2)
        assert len(server.jobs) == 1  # still waiting for a worker
        server.unstarve(server.starved_since + daemon_server.STARVED_GRACE)
        assert not server.jobs
        assert server.starved_since is None
        assert reply_of(pairs[1][1]).startswith(b"HTTP/1.1 503 ")
        assert server.busy_conns == 0
    finally:
        monkeypatch.undo()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        close_server(server)


def test_idle_worker_threads_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker thread is one of a sandbox's pids: idle ones give theirs back."""
    monkeypatch.setattr(daemon_server, "WORKER_IDLE", 0.1)
    config = daemon_config.Config(b"\x01" * 32, "127.0.0.1", 0, None)
    server = daemon_server.Server(config, daemon_processes.Registry(), {}, 0o022, "/")
    try:
        assert all(server.start_worker() for _ in range(3))
        assert server.workers == 3
        assert wait_for(lambda: server.workers == 0, timeout=5)
        assert server.idle == 0
    finally:
        close_server(server)


# ------------------------------------------------------------------ lifecycle


def test_ttl_expiry_kills_commands_and_exits(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon(COMMANDLAB_TTL="1.5")
    expires_in = daemon.request("GET", "/health").json()["expires_in"]
    assert 0 < expires_in <= 1.5
    marker = secrets.token_hex(8)
    run = BackgroundExec(daemon, {"command": "sleep 300", "env": {"CLTEST_MARKER": marker}})
    background = daemon.stream(
        {"command": "exec sleep 300", "env": {"CLTEST_MARKER": marker}, "background": True}
    )
    background.frame()
    background.close()
    assert wait_for(lambda: len(sleepers_with(marker)) == 2, timeout=2)
    assert daemon.proc.wait(timeout=5) == 0
    assert "ttl" in daemon.log()
    run.join()
    assert run.response is None
    assert isinstance(run.error, (ConnectionError, http.client.HTTPException))
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)


def test_sigterm_kills_commands_and_exits_zero(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon()
    marker = secrets.token_hex(8)
    run = BackgroundExec(daemon, {"command": "sleep 300", "env": {"CLTEST_MARKER": marker}})
    background = daemon.stream(
        {"command": "exec sleep 300", "env": {"CLTEST_MARKER": marker}, "background": True}
    )
    background.frame()
    background.close()
    assert wait_for(lambda: len(sleepers_with(marker)) == 2, timeout=2)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=3) == 0
    run.join()
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)


def start_daemon_expecting_failure(env: dict[str, str | None]) -> str:
    """Run the daemon with env overrides; it must exit 2 at once. Returns its stderr."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDLAB_")}
    full_env.update(
        COMMANDLAB_TOKEN_SHA256=TOKEN_SHA256, COMMANDLAB_HOST="127.0.0.1", COMMANDLAB_PORT="0"
    )
    for key, value in env.items():
        if value is None:
            full_env.pop(key)
        else:
            full_env[key] = value
    done = subprocess.run(
        daemon_argv(),
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    stderr = done.stderr.decode()
    assert "listening" not in stderr
    return stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COMMANDLAB_TOKEN_SHA256": None}, "COMMANDLAB_TOKEN_SHA256 is not set"),
        ({"COMMANDLAB_TOKEN_SHA256": ""}, "COMMANDLAB_TOKEN_SHA256 is not set"),
        ({"COMMANDLAB_TOKEN_SHA256": TOKEN_SHA256[:-1]}, "64 hexadecimal digits"),
        ({"COMMANDLAB_TOKEN_SHA256": TOKEN_SHA256 + "0"}, "64 hexadecimal digits"),
        ({"COMMANDLAB_TOKEN_SHA256": f" {TOKEN_SHA256}"}, "64 hexadecimal digits"),
        ({"COMMANDLAB_TOKEN_SHA256": "g" + TOKEN_SHA256[1:]}, "not all hexadecimal"),
        # The token itself put in the digest's place: refused, and never echoed.
        ({"COMMANDLAB_TOKEN_SHA256": TOKEN}, "64 hexadecimal digits"),
        (
            {"COMMANDLAB_TOKEN_SHA256": hashlib.sha256(b"").hexdigest()},
            "SHA-256 of an empty token",
        ),
        ({"COMMANDLAB_TTL": "soon"}, "COMMANDLAB_TTL"),
        ({"COMMANDLAB_TTL": "0"}, "COMMANDLAB_TTL"),
        ({"COMMANDLAB_TTL": "-1"}, "COMMANDLAB_TTL"),
        ({"COMMANDLAB_TTL": "inf"}, "COMMANDLAB_TTL"),
        ({"COMMANDLAB_TTL": "nan"}, "COMMANDLAB_TTL"),
        ({"COMMANDLAB_PORT": "http"}, "COMMANDLAB_PORT"),
        ({"COMMANDLAB_PORT": "65536"}, "COMMANDLAB_PORT"),
        ({"COMMANDLAB_SOCKET": "relative/daemon.sock"}, "COMMANDLAB_SOCKET"),
    ],
)
def test_refuses_to_start_with_bad_configuration(env: dict[str, str | None], message: str) -> None:
    stderr = start_daemon_expecting_failure(env)
    assert message in stderr
    assert TOKEN not in stderr


def test_serves_on_a_unix_socket_that_replaces_a_stale_one() -> None:
    directory = Path(tempfile.mkdtemp(prefix="cl-"))  # short: a socket path holds 107 bytes
    path = directory / "daemon.sock"
    path.write_text("a previous daemon's")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = directory / "daemon.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDLAB_")}
        env.update(COMMANDLAB_TOKEN_SHA256=TOKEN_SHA256, COMMANDLAB_SOCKET=str(path))
        with log.open("wb") as out:
            procs.append(subprocess.Popen(daemon_argv(), env=env, stdout=out, stderr=out))
        assert wait_for(lambda: f"listening on unix:{path}" in log.read_text(), 10)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666  # its directory decides who connects
        client = http.client.HTTPConnection("localhost")
        client.sock = socket.socket(socket.AF_UNIX)
        client.sock.connect(str(path))
        client.request("GET", "/health", headers={"X-CommandLab-Token": TOKEN})
        response = client.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["version"]
        client.close()
    finally:
        stop_daemons(procs)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"COMMANDLAB_TOKEN": TOKEN}, id="beside-digest"),
        pytest.param({"COMMANDLAB_TOKEN": TOKEN, "COMMANDLAB_TOKEN_SHA256": None}, id="alone"),
        pytest.param({"COMMANDLAB_TOKEN": ""}, id="empty"),
    ],
)
def test_refuses_to_start_when_given_the_raw_token(env: dict[str, str | None]) -> None:
    stderr = start_daemon_expecting_failure(env)
    assert "COMMANDLAB_TOKEN is set" in stderr
    assert "pass its SHA-256" in stderr
    assert "COMMANDLAB_TOKEN_SHA256" in stderr
    assert TOKEN not in stderr
