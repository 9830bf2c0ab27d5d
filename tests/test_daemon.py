"""The sandbox daemon (commandlab_async/daemon/server.py), run as a subprocess on 127.0.0.1.

The daemon runs on the host here, so /proc shows the processes its commands start.
Set COMMANDLAB_TEST_DAEMON_PYTHON (e.g. to a python3.9) to run the daemon under another
interpreter.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

DAEMON_SCRIPT = Path(__file__).resolve().parents[1] / "commandlab_async" / "daemon" / "server.py"
DAEMON_PYTHON = os.environ.get("COMMANDLAB_TEST_DAEMON_PYTHON", sys.executable)
TOKEN = secrets.token_urlsafe(32)
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
TOKEN_HEADER = "X-CommandLab-Token"
AUTH = f"Bearer {TOKEN}"
LISTENING = re.compile(r"commandlab daemon listening on 127\.0\.0\.1:(\d+)")
SLEEP_300 = b"sleep\x00300\x00"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json"
        return json.loads(self.body)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
        timeout: float = 30.0,
    ) -> Response:
        """Send one request on a fresh connection; ``token`` goes in X-CommandLab-Token."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault(TOKEN_HEADER, token)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            with conn.getresponse() as resp:
                data = resp.read()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def run(self, command: str, **fields: Any) -> dict[str, Any]:
        resp = self.post_run({"command": command, **fields})
        assert resp.status == 200, resp.body
        result: dict[str, Any] = resp.json()
        return result

    def post_run(self, payload: object, timeout: float = 30.0) -> Response:
        return self.request(
            "POST",
            "/run",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"},
            timeout=timeout,
        )

    def raw(self, data: bytes) -> bytes:
        """Send raw bytes on a fresh connection and return one raw response."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            return read_raw_response(sock)


def read_raw_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def raw_status(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1."), raw[:100]
    return int(raw.split(b" ", 2)[1])


def files_url(path: str | Path, **params: str) -> str:
    return "/files?" + urllib.parse.urlencode({"path": str(path), **params})


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
        time.sleep(0.05)
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
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [DAEMON_PYTHON, str(DAEMON_SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return Daemon(proc, int(match.group(1)), log_path)
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


class BackgroundRun:
    """POST /run in a thread; the outcome (response or exception) is kept."""

    def __init__(self, daemon: Daemon, payload: dict[str, Any]) -> None:
        self.response: Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._go, args=(daemon, payload), daemon=True)
        self._thread.start()

    def _go(self, daemon: Daemon, payload: dict[str, Any]) -> None:
        try:
            self.response = daemon.post_run(payload, timeout=20)
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
    assert health["version"] == "2"
    assert health["pid"] == daemon.proc.pid
    assert isinstance(health["uptime"], float)
    assert health["uptime"] >= 0
    assert health["expires_in"] is None


def test_connection_is_kept_alive_across_requests(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        statuses = []
        first_socket = None
        for method, path, body in [
            ("GET", "/health", None),
            ("GET", "/does-not-exist", None),
            ("POST", "/run", b"{not json"),
            ("PUT", "/health", b"x" * 100),
            ("GET", "/health", None),
        ]:
            conn.request(method, path, body=body, headers={"Authorization": AUTH})
            with conn.getresponse() as resp:
                resp.read()
                statuses.append(resp.status)
            first_socket = first_socket or conn.sock
            assert conn.sock is not None
            assert conn.sock is first_socket
        assert statuses == [200, 404, 400, 405, 200]
    finally:
        conn.close()


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
    payload = json.dumps({"command": f"touch {marker}"}).encode()
    attempts = [
        daemon.request("GET", "/health", headers=headers, token=None),
        daemon.request("GET", "/no/such/path", headers=headers, token=None),
        daemon.request("POST", "/run", payload, headers=headers, token=None),
        daemon.request("PUT", files_url(target), b"data", headers=headers, token=None),
        daemon.request("GET", files_url(secret), headers=headers, token=None),
        daemon.request("DELETE", "/files", headers=headers, token=None),
    ]
    for resp in attempts:
        assert resp.status == 401
        assert resp.json()["error"] == "unauthorized"
        assert TOKEN.encode() not in resp.body
        assert TOKEN_SHA256.encode() not in resp.body
        assert b"secret" not in resp.body
    assert not marker.exists()
    assert not target.exists()


def test_token_header_is_accepted(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health", headers={TOKEN_HEADER: TOKEN}, token=None)
    assert resp.status == 200
    assert daemon.run("echo ok")["exit_code"] == 0  # default: X-CommandLab-Token only


def test_bearer_token_is_accepted_without_token_header(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health", headers={"Authorization": AUTH}, token=None)
    assert resp.status == 200
    lower = daemon.request(
        "GET", "/health", headers={"Authorization": f"bearer {TOKEN}"}, token=None
    )
    assert lower.status == 200


def test_authorization_beside_token_header_is_ignored(daemon: Daemon) -> None:
    # Someone else's credential (e.g. for a proxy in front of the sandbox) rides along.
    for authorization in ["Bearer someone-elses-token", f"Basic {TOKEN}", "garbage"]:
        resp = daemon.request("GET", "/health", headers={"Authorization": authorization})
        assert resp.status == 200, authorization


def get_health_raw(daemon: Daemon, *header_lines: bytes) -> int:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        line + b"\r\n" for line in header_lines
    )
    return raw_status(daemon.raw(request + b"\r\n"))


def test_repeated_credential_headers_are_refused(daemon: Daemon) -> None:
    x_token = f"{TOKEN_HEADER}: {TOKEN}".encode()
    bearer = f"Authorization: {AUTH}".encode()
    assert get_health_raw(daemon, x_token) == 200
    assert get_health_raw(daemon, f"x-commandlab-token: {TOKEN}".encode()) == 200
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
    wrong = daemon.request("POST", "/health", b"{}")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET"
    assert wrong.json()["error"] == "method_not_allowed"


# ------------------------------------------------------------------------ run


def test_run_returns_exact_bytes_and_exit_code(daemon: Daemon) -> None:
    result = daemon.run(r"printf '\377\376\000abc\n'; printf 'err\200' >&2; exit 7")
    assert base64.b64decode(result["stdout"]) == b"\xff\xfe\x00abc\n"
    assert base64.b64decode(result["stderr"]) == b"err\x80"
    assert result["exit_code"] == 7
    assert result["timed_out"] is False
    assert isinstance(result["duration"], float)
    assert 0 <= result["duration"] < 10


def test_run_stdin_env_and_cwd(daemon: Daemon, tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    echoed = daemon.run("cat", stdin=base64.b64encode(data).decode())
    assert base64.b64decode(echoed["stdout"]) == data
    no_stdin = daemon.run("cat; echo end")
    assert base64.b64decode(no_stdin["stdout"]) == b"end\n"

    env = daemon.run(
        'printf "%s|%s|%s" "$CLTEST_VAR" "$CLTEST_PASSTHROUGH" "${COMMANDLAB_TOKEN_SHA256-unset}"',
        env={"CLTEST_VAR": "a value with spaces"},
    )
    assert base64.b64decode(env["stdout"]) == b"a value with spaces|from-daemon|unset"
    overridden = daemon.run('printf %s "$CLTEST_PASSTHROUGH"', env={"CLTEST_PASSTHROUGH": "mine"})
    assert base64.b64decode(overridden["stdout"]) == b"mine"

    (tmp_path / "here.txt").write_text("x")
    cwd = daemon.run("pwd; ls", cwd=str(tmp_path))
    assert base64.b64decode(cwd["stdout"]).decode().split() == [
        str(tmp_path.resolve()),
        "here.txt",
    ]


def test_token_digest_is_not_passed_to_commands(daemon: Daemon) -> None:
    result = daemon.run('echo "$PPID"; env; cat /proc/self/environ /proc/$PPID/cmdline')
    output = base64.b64decode(result["stdout"])
    assert output.split(b"\n", 1)[0] == str(daemon.proc.pid).encode()
    assert b"CLTEST_PASSTHROUGH=from-daemon" in output
    assert TOKEN.encode() not in output
    assert TOKEN_SHA256.encode() not in output
    assert b"COMMANDLAB_TOKEN" not in output


def test_run_killed_by_signal_reports_negative_exit_code(daemon: Daemon) -> None:
    result = daemon.run("kill -TERM $$")
    assert result["exit_code"] == -signal.SIGTERM
    assert result["timed_out"] is False


def test_run_bad_cwd(daemon: Daemon, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for cwd in [str(tmp_path / "missing"), str(a_file)]:
        resp = daemon.post_run({"command": "true", "cwd": cwd})
        assert resp.status == 400
        assert resp.json()["error"] == "bad_cwd"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"", "bad_json"),
        (b"[]", "bad_request"),
        (b"{}", "bad_request"),
        (b'{"command": 5}', "bad_request"),
        (b'{"command": "true", "cwd": 5}', "bad_request"),
        (b'{"command": "true", "env": ["A=B"]}', "bad_request"),
        (b'{"command": "true", "env": {"A": 1}}', "bad_request"),
        (b'{"command": "true", "env": {"A=B": "1"}}', "bad_request"),
        (b'{"command": "true", "stdin": "not base64!"}', "bad_request"),
        (b'{"command": "true", "stdin": 12}', "bad_request"),
        (b'{"command": "true", "timeout": "1"}', "bad_request"),
        (b'{"command": "true", "timeout": -1}', "bad_request"),
        (b'{"command": "true", "timeout": true}', "bad_request"),
        (b'{"command": "true", "timeout": NaN}', "bad_request"),
        (b'{"command": "a\\u0000b"}', "bad_request"),
    ],
)
def test_run_rejects_malformed_bodies(daemon: Daemon, body: bytes, error: str) -> None:
    resp = daemon.request("POST", "/run", body, {"Content-Type": "application/json"})
    assert resp.status == 400
    assert resp.json()["error"] == error
    assert daemon.request("GET", "/health").status == 200


def test_run_rejects_wrong_content_type(daemon: Daemon) -> None:
    resp = daemon.request("POST", "/run", b'{"command": "true"}', {"Content-Type": "text/plain"})
    assert resp.status == 415


def test_run_rejects_oversized_body_without_reading_it(daemon: Daemon) -> None:
    # No body is sent at all: the reply can only come if the daemon does not wait for it.
    raw = daemon.raw(
        b"POST /run HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {AUTH}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {64 * 1024 * 1024 + 1}\r\n\r\n".encode()
    )
    assert raw_status(raw) == 413
    assert b"Connection: close" in raw
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "payload_too_large"


def test_timeout_kills_the_whole_process_group(daemon: Daemon) -> None:
    marker = secrets.token_hex(8)
    started = time.monotonic()
    result = daemon.run(
        "echo started; sleep 300 & sleep 300",
        timeout=0.5,
        env={"CLTEST_MARKER": marker},
    )
    assert time.monotonic() - started < 5
    assert result["timed_out"] is True
    assert result["exit_code"] == -signal.SIGKILL
    assert base64.b64decode(result["stdout"]) == b"started\n"
    assert 0.5 <= result["duration"] < 5
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)


def test_long_command_does_not_block_other_requests(daemon: Daemon) -> None:
    run = BackgroundRun(daemon, {"command": "sleep 1.5; echo done"})
    time.sleep(0.3)
    started = time.monotonic()
    assert daemon.request("GET", "/health").status == 200
    assert daemon.run("echo quick")["exit_code"] == 0
    assert time.monotonic() - started < 0.7
    assert run.alive()
    run.join()
    assert run.error is None
    assert run.response is not None
    result = run.response.json()
    assert base64.b64decode(result["stdout"]) == b"done\n"
    assert result["duration"] >= 1.5


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


def test_file_errors(daemon: Daemon, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"x")
    cases = [
        ("GET", files_url(tmp_path / "missing"), None, 404, "not_found"),
        ("GET", files_url(tmp_path), None, 400, "is_a_directory"),
        ("GET", files_url("relative/path"), None, 400, "bad_path"),
        ("GET", "/files", None, 400, "bad_path"),
        ("PUT", files_url("relative/path"), b"x", 400, "bad_path"),
        ("PUT", files_url(tmp_path), b"x", 400, "is_a_directory"),
        ("PUT", files_url(a_file / "below"), b"x", 400, "bad_path"),
        ("PUT", files_url(tmp_path / "f", mode="999"), b"x", 400, "bad_mode"),
        ("PUT", files_url(tmp_path / "f", mode="u+x"), b"x", 400, "bad_mode"),
    ]
    for method, url, body, status, error in cases:
        resp = daemon.request(method, url, body)
        assert (url, resp.status, resp.json()["error"]) == (url, status, error)
    assert not (tmp_path / "f").exists()


def test_put_requires_content_length(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "f"
    request_line = f"PUT {files_url(target)} HTTP/1.1\r\n".encode()
    headers = f"Host: x\r\nAuthorization: {AUTH}\r\n".encode()
    no_length = daemon.raw(request_line + headers + b"\r\n")
    assert raw_status(no_length) == 411
    chunked = daemon.raw(
        request_line + headers + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert raw_status(chunked) == 411
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_file_permission_denied(daemon: Daemon, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    (locked / "f").chmod(0)
    locked.chmod(0o500)
    try:
        assert daemon.request("GET", files_url(locked / "f")).json()["error"] == "permission_denied"
        put = daemon.request("PUT", files_url(locked / "g"), b"x")
        assert (put.status, put.json()["error"]) == (403, "permission_denied")
    finally:
        locked.chmod(0o700)


def test_put_disconnect_mid_body_removes_temp_file(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "dir" / "partial"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(
            f"PUT {files_url(target)} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n".encode()
            + b"Content-Length: 10000000\r\n\r\n"
            + b"x" * 100_000
        )
        # The upload has started once the temporary file exists.
        assert wait_for(lambda: bool(listing(target.parent)), timeout=5)
    assert wait_for(lambda: listing(target.parent) == [], timeout=5), listing(target.parent)
    assert not target.exists()
    assert daemon.request("GET", "/health").status == 200


# ----------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe\r\n\r\n", 400),
        (b"\x00\xff\xfe junk here\r\n\r\n", 400),
        (b"GET /health HTTP/1.1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nContent-Length: 1.5\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nAUTH\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_malformed_requests_get_4xx_and_server_keeps_serving(
    daemon: Daemon, raw: bytes, status: int
) -> None:
    reply = daemon.raw(raw.replace(b"AUTH", f"Authorization: {AUTH}".encode()))
    assert raw_status(reply) == status
    head, _, body = reply.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^content-length: *%d\r?$" % len(body), head)
    assert "error" in json.loads(body)
    assert daemon.request("GET", "/health").status == 200


def test_log_has_one_terse_line_per_request_and_never_the_token(daemon: Daemon) -> None:
    assert daemon.request("GET", f"/health?token={TOKEN}").status == 200
    assert daemon.request("GET", "/health", token="x" * 20).status == 401
    bearer = {"Authorization": "Bearer " + "y" * 20}
    assert daemon.request("GET", "/health", headers=bearer, token=None).status == 401
    log = daemon.log()
    assert "commandlab daemon listening on 127.0.0.1:" in log
    assert '"GET /health" 200' not in log  # not the stdlib format
    assert re.search(r"127\.0\.0\.1 GET /health 200$", log, re.MULTILINE)
    assert re.search(r"127\.0\.0\.1 GET /health 401$", log, re.MULTILINE)
    assert TOKEN not in log
    assert TOKEN_SHA256 not in log
    assert "x" * 20 not in log
    assert "y" * 20 not in log
    assert "Authorization" not in log
    assert TOKEN_HEADER.lower() not in log.lower()


# ------------------------------------------------------------------ lifecycle


def test_ttl_expiry_kills_commands_and_exits(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon(COMMANDLAB_TTL="1")
    expires_in = daemon.request("GET", "/health").json()["expires_in"]
    assert 0 < expires_in <= 1
    marker = secrets.token_hex(8)
    run = BackgroundRun(daemon, {"command": "sleep 300", "env": {"CLTEST_MARKER": marker}})
    assert wait_for(lambda: bool(sleepers_with(marker)), timeout=2)
    assert daemon.proc.wait(timeout=5) == 0
    assert "ttl" in daemon.log()
    run.join()
    assert run.response is None
    assert isinstance(run.error, (ConnectionError, http.client.HTTPException))
    assert wait_for(lambda: not sleepers_with(marker), timeout=3), sleepers_with(marker)


def test_sigterm_kills_commands_and_exits_zero(spawn_daemon: Callable[..., Daemon]) -> None:
    daemon = spawn_daemon()
    marker = secrets.token_hex(8)
    run = BackgroundRun(daemon, {"command": "sleep 300", "env": {"CLTEST_MARKER": marker}})
    assert wait_for(lambda: bool(sleepers_with(marker)), timeout=2)
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
        [DAEMON_PYTHON, str(DAEMON_SCRIPT)],
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
        ({"COMMANDLAB_PORT": "http"}, "COMMANDLAB_PORT"),
    ],
)
def test_refuses_to_start_with_bad_configuration(env: dict[str, str | None], message: str) -> None:
    stderr = start_daemon_expecting_failure(env)
    assert message in stderr
    assert TOKEN not in stderr


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
