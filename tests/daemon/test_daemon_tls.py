"""The sandbox daemon serving HTTPS (COMMANDLAB_TLS_CERT / COMMANDLAB_TLS_KEY), on 127.0.0.1.

Clients pin the daemon's self-signed certificate exactly, as the library does.  What
differs from test_daemon.py's plain-HTTP helpers (starting a TLS daemon, a TLS client)
is here; the rest is imported from there.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from commandlab_async.daemon import config as daemon_config
from tests.daemon.daemon_bundle import daemon_argv
from tests.daemon.test_daemon import (
    Frames,
    Response,
    exec_body,
    parse_frames,
    sleepers_with,
    stop_daemons,
    wait_for,
)

pytestmark = pytest.mark.unit

TOKEN = secrets.token_urlsafe(32)
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
TOKEN_HEADER = "X-CommandLab-Token"
LISTENING = re.compile(r"commandlab daemon listening on 127\.0\.0\.1:(\d+)$", re.MULTILINE)
SERVING_TLS = "commandlab daemon: serving TLS (https)"
HEADER_DEADLINE = 10.0  # the daemon's HEADER_DEADLINE
SLEEP_300 = b"sleep\x00300\x00"


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Identity:
    cert_pem: str
    key_pem: str
    key: ec.EllipticCurvePrivateKey


def make_identity(common_name: str = "commandlab-test") -> Identity:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return Identity(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, key)


IDENTITY = make_identity()
OTHER_IDENTITY = make_identity()


def key_material(identity: Identity) -> list[str]:
    """Strings that would betray the private key if they appeared somewhere."""
    body = "".join(line for line in identity.key_pem.splitlines() if "-----" not in line)
    return [body[i : i + 24] for i in range(0, len(body) - 24, 24)]


def client_context(cert_pem: str = IDENTITY.cert_pem) -> ssl.SSLContext:
    """A client context that trusts exactly ``cert_pem`` (the library pins it the same way)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=cert_pem)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# ------------------------------------------------------------------ clients


class RawClient:
    """HTTP/1.1 by hand over one pinned TLS connection: pipelining, partial requests."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = client_context().wrap_socket(raw)
        self.buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

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

    def response(self) -> Response:
        head = self._until(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        body = b""
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int(self._until(b"\r\n"), 16)
                if size == 0:
                    assert self._until(b"\r\n") == b""
                    break
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
        else:
            body = self._exact(int(headers["content-length"]))
        return Response(status, headers, body)

    def closed_within(self, timeout: float) -> bool:
        """Whether the daemon closes the connection within ``timeout``."""
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
            except (ConnectionResetError, ssl.SSLEOFError):
                return True


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workdir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connection(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=client_context()
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
        timeout: float = 60.0,
    ) -> Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault(TOKEN_HEADER, token)
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            with conn.getresponse() as resp:
                data = resp.read()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def run(self, command: str, stdin: bytes = b"", **fields: Any) -> Frames:
        resp = self.request("POST", "/exec", exec_body({"command": command, **fields}, stdin))
        assert resp.status == 200, (resp.status, resp.body[:300])
        assert resp.headers["transfer-encoding"] == "chunked"
        return Frames(parse_frames(resp.body))

    def healthy(self, timeout: float = 5.0) -> bool:
        return self.request("GET", "/health", timeout=timeout).status == 200


def base_env(identity: Identity | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDLAB_")}
    env.update(
        COMMANDLAB_TOKEN_SHA256=TOKEN_SHA256, COMMANDLAB_HOST="127.0.0.1", COMMANDLAB_PORT="0"
    )
    if identity is not None:
        env.update(COMMANDLAB_TLS_CERT=identity.cert_pem, COMMANDLAB_TLS_KEY=identity.key_pem)
    return env


def start_daemon(
    log_path: Path,
    procs: list[subprocess.Popen[bytes]],
    identity: Identity | None = IDENTITY,
    **env_overrides: str,
) -> Daemon:
    env = {**base_env(identity), **env_overrides}
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
        if match and (identity is None or SERVING_TLS in text):
            return Daemon(proc, int(match.group(1)), log_path, workdir)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail(f"daemon did not start (exit {proc.poll()}):\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One TLS daemon shared by the module's tests; always terminated."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield start_daemon(tmp_path_factory.mktemp("tls") / "daemon.log", procs)
    finally:
        stop_daemons(procs)


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(identity: Identity | None = IDENTITY, **env: str) -> Daemon:
        return start_daemon(tmp_path / f"daemon{len(procs)}.log", procs, identity, **env)

    try:
        yield spawn
    finally:
        stop_daemons(procs)


def request_bytes(method: str, path: str, body: bytes = b"", token: str | None = TOKEN) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: sandbox\r\n"
    if token is not None:
        head += f"{TOKEN_HEADER}: {token}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def client_hello() -> bytes:
    """The first flight of a real TLS client, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    data = outgoing.read()
    assert len(data) > 100
    return data


# ------------------------------------------------------------------ serving


def test_health_over_https_reports_tls(daemon: Daemon) -> None:
    resp = daemon.request("GET", "/health")
    assert resp.status == 200
    assert resp.json()["tls"] is True
    head = daemon.request("HEAD", "/health")
    assert head.status == 200
    assert head.body == b""
    log = daemon.log()
    port_line = next(line for line in log.splitlines() if "listening on" in line)
    port = re.search(r":(\d+)\s*$", port_line)  # as tooling parses it
    assert port is not None
    assert port.group(1) == str(daemon.port)
    assert SERVING_TLS in log


def test_plain_daemon_reports_no_tls(spawn_daemon: Callable[..., Daemon]) -> None:
    plain = spawn_daemon(None)
    conn = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=10)
    try:
        conn.request("GET", "/health", headers={TOKEN_HEADER: TOKEN})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["tls"] is False
    finally:
        conn.close()
    assert "TLS" not in plain.log()


def test_exec_with_large_stdout(daemon: Daemon) -> None:
    size = 20 * 1024 * 1024
    frames = daemon.run(
        f"head -c {size} /dev/urandom > big.out && sha256sum big.out >&2 && cat big.out"
        " && rm big.out"
    )
    assert frames.exit["exit_code"] == 0
    assert len(frames.stdout) == size
    assert frames.stderr.decode().split()[0] == hashlib.sha256(frames.stdout).hexdigest()


def test_exec_with_large_stdin(daemon: Daemon) -> None:
    stdin = os.urandom(5 * 1024 * 1024 + 17)
    frames = daemon.run("cat > in.bin && sha256sum < in.bin && wc -c < in.bin && rm in.bin", stdin)
    assert frames.exit["exit_code"] == 0
    digest, _, count = frames.stdout.decode().partition("-")
    assert digest.strip() == hashlib.sha256(stdin).hexdigest()
    assert int(count) == len(stdin)


def test_exec_echoing_stdin_both_ways_at_once(daemon: Daemon) -> None:
    stdin = os.urandom(3 * 1024 * 1024)
    assert daemon.run("cat", stdin).stdout == stdin


def test_background_exec_reads_stdin_while_streaming(daemon: Daemon) -> None:
    # A thread feeds the body to the command while the worker streams its output: both
    # use the one TLS connection at once.  (The output stays small: a background
    # command's ring drops what a slow reader misses, by design.)
    stdin = os.urandom(4 * 1024 * 1024)
    frames = daemon.run(
        "(while :; do echo tick; sleep 0.002; done) & ticker=$!;"
        " sha256sum >&2; kill $ticker; wait $ticker 2>/dev/null; echo done >&2",
        stdin,
        background=True,
    )
    assert frames.exit["exit_code"] == 0
    assert frames.stderr.decode().split() == [hashlib.sha256(stdin).hexdigest(), "-", "done"]
    ticks = frames.stdout.decode()
    assert ticks
    assert set(ticks.splitlines()) == {"tick"}
    assert not [kind for kind, _ in frames.frames if kind == b"G"]


def test_http10_exec_ends_by_closing(daemon: Daemon) -> None:
    with RawClient(daemon.port) as client:
        body = exec_body({"command": "echo hello"})
        client.send(
            f"POST /exec HTTP/1.0\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while True:
            piece = client.sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert Frames(parse_frames(rest)).stdout == b"hello\n"


def test_foreground_command_is_killed_when_the_client_goes(daemon: Daemon) -> None:
    marker = secrets.token_hex(8)
    payload = {"command": "exec sleep 300", "env": {"CLTEST_MARKER": marker}}
    client = RawClient(daemon.port)
    client.send(request_bytes("POST", "/exec", exec_body(payload)))
    head = client._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: len(sleepers_with(marker)) == 1, timeout=5)
    client.sock.close()
    assert wait_for(lambda: not sleepers_with(marker), timeout=5), sleepers_with(marker)
    assert daemon.healthy()


def test_pipelined_requests_on_one_connection(daemon: Daemon) -> None:
    with RawClient(daemon.port) as client:
        client.send(
            request_bytes("GET", "/health")
            + request_bytes("POST", "/exec", exec_body({"command": "echo one"}))
            + request_bytes("GET", "/health")
            + request_bytes("POST", "/exec", exec_body({"command": "cat"}, b"two"))
        )
        assert client.response().json()["tls"] is True
        assert Frames(parse_frames(client.response().body)).stdout == b"one\n"
        assert client.response().status == 200
        assert Frames(parse_frames(client.response().body)).stdout == b"two"
        # Keep-alive: the connection serves more after a pause.
        time.sleep(0.3)
        client.send(request_bytes("GET", "/processes"))
        assert client.response().status == 200
        for i in range(5):  # one request sent in small records
            data = request_bytes("POST", "/exec", exec_body({"command": f"echo {i}"}))
            for offset in range(0, len(data), 7):
                client.send(data[offset : offset + 7])
            assert Frames(parse_frames(client.response().body)).stdout == f"{i}\n".encode()


def test_put_and_get_a_multi_megabyte_file(daemon: Daemon) -> None:
    data = os.urandom(9 * 1024 * 1024 + 3)
    url = "/files?" + urllib.parse.urlencode({"path": "big/blob.bin"})
    put = daemon.request("PUT", url, data)
    assert put.status == 200, put.body
    assert put.json()["size"] == len(data)
    got = daemon.request("GET", url)
    assert got.status == 200
    assert got.headers["content-length"] == str(len(data))
    assert got.body == data
    assert (daemon.workdir / "big" / "blob.bin").read_bytes() == data


def test_unauthorized_reply_arrives_whole_before_the_close(daemon: Daemon) -> None:
    with RawClient(daemon.port) as client:
        # A body the daemon never reads: the reply must still arrive, then the close.
        client.send(
            b"PUT /files?path=x HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n" + b"a" * 300_000
        )
        resp = client.response()
        assert resp.status == 401
        assert resp.json()["error"] == "unauthorized"
        assert resp.headers["connection"] == "close"
        assert client.closed_within(5)
    assert daemon.healthy()


def test_body_framing_error_reply_arrives_before_the_close(daemon: Daemon) -> None:
    with RawClient(daemon.port) as client:
        client.send(
            f"POST /exec HTTP/1.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            "Transfer-Encoding: gzip\r\n\r\n".encode()
            + b"z" * 200_000
        )
        resp = client.response()
        assert resp.status == 400
        assert resp.json()["error"] == "bad_request"
        assert client.closed_within(5)
    assert daemon.healthy()


def test_plain_http_to_the_tls_port_is_dropped(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(65536):
                data += piece
    assert b"HTTP/1.1" not in data  # no plain-text reply, let alone the health payload
    assert daemon.healthy()
    assert wait_for(lambda: "tls handshake failed: HTTP_REQUEST" in daemon.log(), 2)


def test_stalled_handshakes_do_not_block_other_clients(daemon: Daemon) -> None:
    hello = client_hello()
    silent = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    half = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    try:
        half.sendall(hello[: len(hello) // 2])
        started = time.monotonic()
        time.sleep(0.2)
        for _ in range(3):
            assert daemon.healthy(timeout=3)
        assert time.monotonic() - started < 5  # not the 10 s header deadline
        # Both are dropped once the header deadline (which covers the handshake) passes.
        for sock in (silent, half):
            sock.settimeout(max(0.1, started + HEADER_DEADLINE + 3 - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        assert time.monotonic() - started >= HEADER_DEADLINE - 1
    finally:
        silent.close()
        half.close()
    assert daemon.healthy()


def test_a_client_pinning_another_certificate_refuses_the_daemon(daemon: Daemon) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", daemon.port, timeout=10, context=client_context(OTHER_IDENTITY.cert_pem)
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/health", headers={TOKEN_HEADER: TOKEN})
    conn.close()
    assert daemon.healthy()


def test_commands_do_not_see_the_key_or_certificate(daemon: Daemon) -> None:
    env = daemon.run("env").stdout.decode()
    assert "COMMANDLAB_TLS" not in env
    assert "PRIVATE KEY" not in env
    assert "BEGIN CERTIFICATE" not in env
    assert "COMMANDLAB_TOKEN_SHA256" not in env
    environ = Path(f"/proc/{daemon.proc.pid}/environ").read_bytes()  # as it was at exec
    assert b"COMMANDLAB_TLS_KEY" in environ  # so the check above is meaningful
    log = daemon.log()
    assert all(piece not in log for piece in key_material(IDENTITY))


def test_the_key_file_is_deleted_after_loading(spawn_daemon: Callable[..., Daemon]) -> None:
    def tls_dirs() -> set[str]:
        found = set()
        for base in ("/dev/shm", os.environ.get("TMPDIR", "/tmp")):
            with contextlib.suppress(OSError):
                found |= {f"{base}/{n}" for n in os.listdir(base) if "commandlab-tls-" in n}
        return found

    before = tls_dirs()
    tls = spawn_daemon()
    assert tls.healthy()
    assert tls_dirs() <= before


# ------------------------------------------------------------------ configuration


def start_expecting_failure(env: dict[str, str | None]) -> str:
    """Run the daemon with env overrides; it must exit 2 at once. Returns its stderr."""
    full_env: dict[str, str] = base_env(None)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
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
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert done.stdout == b""
    assert "listening" not in stderr
    return stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"COMMANDLAB_TLS_CERT": IDENTITY.cert_pem},
            "COMMANDLAB_TLS_CERT is set but COMMANDLAB_TLS_KEY is not",
        ),
        (
            {"COMMANDLAB_TLS_KEY": IDENTITY.key_pem},
            "COMMANDLAB_TLS_KEY is set but COMMANDLAB_TLS_CERT is not",
        ),
        (
            {"COMMANDLAB_TLS_KEY": IDENTITY.key_pem, "COMMANDLAB_TLS_CERT": " "},
            "COMMANDLAB_TLS_KEY is set but COMMANDLAB_TLS_CERT is not",
        ),
    ],
    ids=["cert-only", "key-only", "blank-cert"],
)
def test_refuses_half_a_tls_configuration(env: dict[str, str | None], message: str) -> None:
    stderr = start_expecting_failure(env)
    assert message in stderr
    assert all(piece not in stderr for piece in key_material(IDENTITY))


def _corrupt(pem: str) -> str:
    lines = pem.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][::-1]
    return "\n".join(lines) + "\n"


def _encrypted_key_pem() -> str:
    return IDENTITY.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("not a certificate", IDENTITY.key_pem, "must be a PEM certificate"),
        (IDENTITY.cert_pem, "not a key", "must be a PEM private key"),
        (_corrupt(IDENTITY.cert_pem), IDENTITY.key_pem, "does not hold a readable PEM certificate"),
        (IDENTITY.cert_pem, _corrupt(IDENTITY.key_pem), "readable unencrypted PEM private key"),
        (IDENTITY.cert_pem, OTHER_IDENTITY.key_pem, "does not match the certificate"),
        (IDENTITY.cert_pem, IDENTITY.cert_pem, "must be a PEM private key"),
        (IDENTITY.cert_pem, _encrypted_key_pem(), "encrypted private key"),
    ],
    ids=[
        "cert-garbage",
        "key-garbage",
        "cert-corrupt",
        "key-corrupt",
        "mismatch",
        "cert-as-key",
        "encrypted",
    ],
)
def test_refuses_unusable_pem(cert: str, key: str, message: str) -> None:
    stderr = start_expecting_failure({"COMMANDLAB_TLS_CERT": cert, "COMMANDLAB_TLS_KEY": key})
    assert message in stderr, stderr
    assert "Traceback" not in stderr
    for identity in (IDENTITY, OTHER_IDENTITY):
        assert all(piece not in stderr for piece in key_material(identity))
    assert "PRIVATE KEY-----" not in stderr.replace("-----BEGIN PRIVATE KEY-----...", "")


@pytest.mark.parametrize("good", [True, False], ids=["loaded", "mismatch"])
def test_the_pem_passes_through_a_private_temporary_file(
    monkeypatch: pytest.MonkeyPatch, good: bool
) -> None:
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, mode, *args, **kwargs)
        if "commandlab-tls-" in str(path):
            directory_mode = os.stat(os.path.dirname(path)).st_mode
            created.append((str(path), os.fstat(fd).st_mode, directory_mode))
        return fd

    monkeypatch.setattr(os, "open", spy)
    key = IDENTITY.key_pem if good else OTHER_IDENTITY.key_pem
    if good:
        context = daemon_config.tls_context(IDENTITY.cert_pem, key)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_NONE
    else:
        with pytest.raises(daemon_config.ConfigError, match="does not match"):
            daemon_config.tls_context(IDENTITY.cert_pem, key)
    assert len(created) == 2  # the certificate and the key
    for path, mode, directory_mode in created:
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(directory_mode) == 0o700
        if os.path.isdir("/dev/shm"):
            assert path.startswith("/dev/shm/")
        assert not os.path.exists(path)
        assert not os.path.exists(os.path.dirname(path))
