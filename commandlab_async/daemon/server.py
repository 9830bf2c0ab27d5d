"""commandlab sandbox daemon: a tiny HTTP/1.1 server that runs commands and moves files.

This module is deliberately self-contained (standard library only, Python >= 3.9)
so that it can be copied alone into a container and started with
``python3 /opt/commandlab/daemon.py``.

Configuration (environment variables)
-------------------------------------
``COMMANDLAB_TOKEN_SHA256``  required: the SHA-256 digest of the client's token
                      (the token encoded as UTF-8), as 64 hexadecimal digits
                      (upper or lower case).  The daemon never receives the
                      token itself: it hashes the token each request presents
                      and compares digests.  The variable is removed from the
                      daemon's own environment and never passed to commands.
                      If it is missing or malformed the daemon prints a
                      message on stderr and exits with status 2.
``COMMANDLAB_TOKEN``  must NOT be set: a daemon that finds it (a client that
                      still hands the raw token to the sandbox) prints a
                      message on stderr and exits with status 2.
``COMMANDLAB_PORT``   TCP port, default 8000 (0 picks a free port; the startup
                      line reports the real one).
``COMMANDLAB_HOST``   bind address, default ``0.0.0.0`` (IPv6 literals work).
``COMMANDLAB_TTL``    optional lifetime in seconds (float > 0).  Absent or empty
                      means no expiry.  At expiry every command process group
                      still running is SIGKILLed and the process exits with
                      status 0, which stops the container.

The sandbox holds only the digest, which cannot be presented as a token.  Tokens
still pass through the daemon's memory while requests are read, so the daemon
marks itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``, best effort): commands
running as the same user cannot read its memory through ``/proc``.

On startup one line ``commandlab daemon listening on <host>:<port>`` is written
to stderr.  SIGTERM and SIGINT kill running command process groups and exit
with status 0.  Every request is logged as one terse line on stderr
(timestamp, client address, method, path without query string, status); no
header is ever logged.

Protocol
--------
HTTP/1.1 with keep-alive; every response carries ``Content-Length``.  Request
bodies must be framed with ``Content-Length`` (``Transfer-Encoding`` is not
supported).  When a request body is left unread (e.g. the request was rejected
before it was read) the response carries ``Connection: close``.
``Expect: 100-continue`` is honoured: ``100 Continue`` is only sent once the
request was authenticated and validated and the body is about to be read.

Authentication: every request, whatever its path or method, must carry the
token in ``X-CommandLab-Token: <token>`` or, only when that header is absent,
in ``Authorization: Bearer <token>``.  When ``X-CommandLab-Token`` is present
any ``Authorization`` header is ignored; a repeated ``X-CommandLab-Token`` (or,
when it is absent, a repeated ``Authorization``) is refused.  The SHA-256 of
the presented token is compared in constant time with the configured digest.
Otherwise the reply is ``401 {"error": "unauthorized", ...}``.  After
authentication an unknown path gets ``404 not_found`` and a known path with
the wrong method gets ``405 method_not_allowed`` (with an ``Allow`` header).
A malformed ``Content-Length`` (negative, non-numeric, conflicting duplicates)
gets ``400 bad_content_length``.

Errors are JSON: ``{"error": "<code>", "message": "<text>"}``.

``GET /health``
    200 ``{"version": "2", "uptime": <float s>, "pid": <int>,
    "expires_in": <float s or null>}``.

``POST /run``  (``Content-Type: application/json`` or none; body <= 64 MiB)
    Body: ``{"command": str, "cwd": str|null, "env": {str: str}|null,
    "stdin": <base64 str>|null, "timeout": <number > 0>|null}``; only
    ``command`` is required, unknown keys are ignored.  The command runs as
    ``/bin/sh -c <command>`` in a new session (its own process group) with the
    daemon environment (minus ``COMMANDLAB_TOKEN_SHA256``) overlaid by
    ``env``.  Without ``stdin`` the command's stdin is empty (EOF).  On
    timeout the whole process group is SIGKILLed and whatever output was
    produced is returned.
    200 ``{"exit_code": <int, -N when killed by signal N>, "stdout": <base64>,
    "stderr": <base64>, "duration": <float s>, "timed_out": <bool>}``.
    Errors: 400 ``bad_json`` (unparseable body), 400 ``bad_request`` (wrong
    shape or types), 400 ``bad_cwd`` (cwd missing / not a directory /
    unusable), 411 ``length_required``, 413 ``payload_too_large`` (decided from
    Content-Length, the body is not read), 415 ``unsupported_media_type``,
    503 ``shutting_down``.

``PUT /files?path=<absolute path>[&mode=<octal, e.g. 644>]``
    Raw body (Content-Length required, else 411 ``length_required``) is
    streamed in 1 MiB chunks into a temporary file next to the target, which
    is then atomically renamed onto ``path``; missing parent directories are
    created.  Without ``mode`` an existing file keeps its mode (and, when
    possible, its owner); a new file gets ``0666 & ~umask``.
    200 ``{"path": <path as given>, "size": <int bytes written>}``.
    Errors: 400 ``bad_path`` (missing / relative / names a directory entry
    whose parent is not a directory), 400 ``bad_mode``, 400 ``is_a_directory``,
    403 ``permission_denied``, 507 ``insufficient_storage``, 500 ``io_error``.
    If the client disconnects mid-body the temporary file is removed and no
    response is sent.

``GET /files?path=<absolute path>``
    200 ``application/octet-stream`` with Content-Length, streamed in 1 MiB
    chunks.  Regular files only.  Files that report size 0 (e.g. ``/proc``
    pseudo files) are read (up to 64 MiB) before replying.
    Errors: 400 ``bad_path``, 404 ``not_found``, 400 ``is_a_directory``,
    400 ``not_a_regular_file``, 403 ``permission_denied``, 413
    ``file_too_large`` (pseudo files only), 500 ``io_error``.

Malformed requests (bad request line, oversized header lines, too many headers,
invalid ``Content-Length``) get a 4xx JSON reply and the connection is closed;
the server keeps serving other connections.  Each connection is handled in its
own thread, so a long-running command does not block other requests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import io
import json
import math
import os
import re
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

DAEMON_VERSION = "2"

TOKEN_SHA256_ENV = "COMMANDLAB_TOKEN_SHA256"
# The raw token must never be configured: its presence is refused (see load_config).
LEGACY_TOKEN_ENV = "COMMANDLAB_TOKEN"
PORT_ENV = "COMMANDLAB_PORT"
HOST_ENV = "COMMANDLAB_HOST"
TTL_ENV = "COMMANDLAB_TTL"

TOKEN_HEADER = "X-CommandLab-Token"

DEFAULT_PORT = 8000
DEFAULT_HOST = "0.0.0.0"

MAX_RUN_BODY = 64 * 1024 * 1024
MAX_PSEUDO_FILE = 64 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024
# Unread request bodies up to this size are discarded to keep the connection alive.
MAX_DISCARD_BODY = 64 * 1024
# After rejecting a request whose body was not read, keep reading (and
# discarding) for at most this long before closing, so the client sees the
# response instead of a connection reset.
LINGER_SECONDS = 2.0
# After killing a timed-out process group, wait at most this long for the pipes.
KILL_GRACE_SECONDS = 5.0
# Idle / stalled connections are dropped after this many seconds.
SOCKET_TIMEOUT = 300.0
UPLOAD_PREFIX = ".commandlab-upload-"

_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}")
_MODE_RE = re.compile(r"[0-7]{1,4}")
_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
_UNPRINTABLE_RE = re.compile(r"[^\x20-\x7e]")
# socket.timeout is only an alias of TimeoutError from Python 3.10 on.
_NETWORK_ERRORS = (ConnectionError, TimeoutError, socket.timeout)


# --------------------------------------------------------------------------
# configuration


class ConfigError(ValueError):
    """The daemon configuration (environment) is invalid."""


@dataclass(frozen=True)
class Config:
    token_sha256: bytes  # SHA-256 digest (32 raw bytes) of the client's token
    host: str
    port: int
    ttl: float | None


def parse_token_sha256(text: str) -> bytes:
    """Decode the configured token digest (64 hex digits) to its 32 raw bytes.

    The value is never echoed in errors: it may be a raw token set by mistake.
    """
    if not text:
        raise ConfigError(f"{TOKEN_SHA256_ENV} is not set")
    if not _SHA256_HEX_RE.fullmatch(text):
        raise ConfigError(
            f"{TOKEN_SHA256_ENV} must be the SHA-256 of the client's token as exactly"
            f" 64 hexadecimal digits (got {len(text)} characters"
            f"{'' if len(text) != 64 else ', not all hexadecimal'})"
        )
    digest = bytes.fromhex(text)
    if hmac.compare_digest(digest, hashlib.sha256(b"").digest()):
        raise ConfigError(f"{TOKEN_SHA256_ENV} is the SHA-256 of an empty token")
    return digest


def load_config(environ: Mapping[str, str]) -> Config:
    """Parse and validate the daemon configuration from ``environ``."""
    if LEGACY_TOKEN_ENV in environ:
        raise ConfigError(
            f"{LEGACY_TOKEN_ENV} is set, but the daemon no longer accepts the token itself:"
            f" pass its SHA-256 (64 hex digits) in {TOKEN_SHA256_ENV} instead and keep"
            f" the token out of the sandbox"
        )
    token_sha256 = parse_token_sha256(environ.get(TOKEN_SHA256_ENV, ""))

    host = environ.get(HOST_ENV, "").strip() or DEFAULT_HOST

    port_text = environ.get(PORT_ENV, "").strip()
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{PORT_ENV} must be an integer, got {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"{PORT_ENV} must be between 0 and 65535, got {port}")
    else:
        port = DEFAULT_PORT

    ttl_text = environ.get(TTL_ENV, "").strip()
    ttl: float | None = None
    if ttl_text:
        try:
            ttl = float(ttl_text)
        except ValueError:
            raise ConfigError(f"{TTL_ENV} must be a number of seconds, got {ttl_text!r}") from None
        if not math.isfinite(ttl) or ttl <= 0:
            raise ConfigError(f"{TTL_ENV} must be a positive finite number, got {ttl_text!r}")

    return Config(token_sha256=token_sha256, host=host, port=port, ttl=ttl)


# --------------------------------------------------------------------------
# authentication


def presented_token(headers: Message) -> bytes | None:
    """The token a request presents, as raw bytes; None when absent or ambiguous.

    The client sends ``X-CommandLab-Token`` rather than ``Authorization``: the
    Kubernetes API server's pod proxy strips ``Authorization``, and Cloud Run's
    IAM reads ``Authorization`` itself (unless ``X-Serverless-Authorization`` is
    used).  So when ``X-CommandLab-Token`` is present it alone counts: an
    ``Authorization`` header beside it may carry someone else's credential (for
    a proxy or gateway in front of the sandbox) and is ignored.  Only when it is
    absent is ``Authorization: Bearer <token>`` accepted.  A repeated header that
    would be used is refused rather than guessed at.  Neither header is ever
    logged.
    """
    tokens = headers.get_all(TOKEN_HEADER)
    if tokens is not None:
        if len(tokens) != 1:
            return None
        value = str(tokens[0]).strip()
    else:
        authorizations = headers.get_all("Authorization") or []
        if len(authorizations) != 1:
            return None
        scheme, _, credential = str(authorizations[0]).strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        value = credential.strip()
    if not value:
        return None
    # Header values were decoded as latin-1: this recovers the raw bytes (the
    # UTF-8 encoding of the token, as the client sent it).
    return value.encode("latin-1", "replace")


def authenticate(headers: Message, token_sha256: bytes) -> bool:
    """Whether the request presents the token whose SHA-256 is ``token_sha256``."""
    token = presented_token(headers)
    if token is None:
        return False
    return hmac.compare_digest(hashlib.sha256(token).digest(), token_sha256)


# --------------------------------------------------------------------------
# errors


class RequestError(Exception):
    """An error answered with a JSON ``{"error", "message"}`` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: Mapping[str, str] = headers or {}


class ClientGone(Exception):
    """The client disconnected or stalled while we were reading its request."""


class ShuttingDown(Exception):
    """The daemon is exiting; no new commands may be started."""


def _os_error(exc: OSError, path: str, *, missing_is_404: bool = False) -> RequestError:
    """Map a filesystem error on ``path`` to a RequestError."""
    if isinstance(exc, PermissionError):
        return RequestError(403, "permission_denied", f"permission denied: {path}")
    if isinstance(exc, IsADirectoryError):
        return RequestError(400, "is_a_directory", f"is a directory: {path}")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if missing_is_404:
            return RequestError(404, "not_found", f"no such file: {path}")
        return RequestError(400, "bad_path", f"{exc.strerror}: {path}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RequestError(507, "insufficient_storage", f"{exc.strerror}: {path}")
    if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST):
        return RequestError(400, "bad_path", f"{exc.strerror}: {path}")
    if exc.errno == errno.EROFS:
        return RequestError(403, "permission_denied", f"read-only file system: {path}")
    return RequestError(500, "io_error", f"{exc.strerror or exc}: {path}")


# --------------------------------------------------------------------------
# process groups


def kill_process_group(pgid: int) -> None:
    """SIGKILL a whole process group, ignoring groups that are already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ProcessRegistry:
    """Tracks the process groups of running commands so they can be killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._closed = False

    def spawn(
        self, command: str, cwd: str | None, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        # The lock is held across the fork so that kill_all() can never miss a
        # freshly started group.
        with self._lock:
            if self._closed:
                raise ShuttingDown("daemon is shutting down")
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
            self._groups.add(proc.pid)
            return proc

    def release(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    def kill_all(self) -> int:
        """Kill every tracked group and refuse new ones; returns how many."""
        with self._lock:
            self._closed = True
            groups = sorted(self._groups)
            self._groups.clear()
        for pgid in groups:
            kill_process_group(pgid)
        return len(groups)


@dataclass(frozen=True)
class RunRequest:
    command: str
    cwd: str | None
    env: dict[str, str] | None
    stdin: bytes
    timeout: float | None


def parse_run_request(payload: object) -> RunRequest:
    """Validate a decoded ``POST /run`` body."""
    if not isinstance(payload, dict):
        raise RequestError(400, "bad_request", "body must be a JSON object")

    command = payload.get("command")
    if not isinstance(command, str):
        raise RequestError(400, "bad_request", "'command' must be a string")
    if "\x00" in command:
        raise RequestError(400, "bad_request", "'command' must not contain NUL")

    cwd = payload.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise RequestError(400, "bad_request", "'cwd' must be a string or null")

    env_value = payload.get("env")
    env: dict[str, str] | None = None
    if env_value is not None:
        if not isinstance(env_value, dict):
            raise RequestError(400, "bad_request", "'env' must be an object or null")
        env = {}
        for key, value in env_value.items():
            if not isinstance(value, str):
                raise RequestError(400, "bad_request", f"'env' value for {key!r} must be a string")
            if not key or "=" in key or "\x00" in key or "\x00" in value:
                raise RequestError(400, "bad_request", f"invalid environment variable {key!r}")
            env[key] = value

    stdin_value = payload.get("stdin")
    stdin = b""
    if stdin_value is not None:
        if not isinstance(stdin_value, str):
            raise RequestError(400, "bad_request", "'stdin' must be a base64 string or null")
        try:
            stdin = base64.b64decode(stdin_value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "bad_request", "'stdin' is not valid base64") from None

    timeout_value = payload.get("timeout")
    timeout: float | None = None
    if timeout_value is not None:
        if isinstance(timeout_value, bool) or not isinstance(timeout_value, (int, float)):
            raise RequestError(400, "bad_request", "'timeout' must be a number or null")
        try:
            timeout = float(timeout_value)
        except OverflowError:
            raise RequestError(400, "bad_request", "'timeout' is out of range") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise RequestError(400, "bad_request", "'timeout' must be a positive finite number")

    return RunRequest(command=command, cwd=cwd, env=env, stdin=stdin, timeout=timeout)


def run_command(
    registry: ProcessRegistry, base_env: Mapping[str, str], request: RunRequest
) -> dict[str, Any]:
    """Run one command to completion (or timeout) and build the reply."""
    cwd = request.cwd
    if cwd is not None and not os.path.isdir(cwd):
        raise RequestError(400, "bad_cwd", f"working directory does not exist: {cwd}")
    env = dict(base_env)
    if request.env:
        env.update(request.env)

    started = time.monotonic()
    try:
        proc = registry.spawn(request.command, cwd, env)
    except ShuttingDown:
        raise RequestError(503, "shutting_down", "the daemon is shutting down") from None
    except ValueError as exc:
        raise RequestError(400, "bad_request", f"cannot start command: {exc}") from None
    except OSError as exc:
        if cwd is not None:
            raise RequestError(
                400, "bad_cwd", f"cannot use working directory {cwd}: {exc.strerror}"
            ) from None
        raise RequestError(500, "spawn_failed", f"cannot start /bin/sh: {exc}") from None

    timed_out = False
    try:
        try:
            stdout, stderr = proc.communicate(request.stdin, request.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_process_group(proc.pid)
            try:
                stdout, stderr = proc.communicate(timeout=KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired as exc:
                # Something that left the process group still holds the pipes.
                stdout = exc.output or b""
                stderr = exc.stderr or b""
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                proc.wait()
    finally:
        if proc.returncode is None:
            kill_process_group(proc.pid)
            proc.wait()
        registry.release(proc.pid)
    duration = time.monotonic() - started

    return {
        "exit_code": proc.returncode,
        "stdout": base64.b64encode(stdout).decode("ascii"),
        "stderr": base64.b64encode(stderr).decode("ascii"),
        "duration": duration,
        "timed_out": timed_out,
    }


# --------------------------------------------------------------------------
# helpers for /files


def parse_query(query: str) -> dict[str, str]:
    """Parse a query string; non-UTF-8 escapes survive as surrogates (like os.fsdecode)."""
    result: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
        if key in result:
            raise RequestError(400, "bad_request", f"query parameter {key!r} given twice")
        result[key] = value
    return result


def require_path(params: Mapping[str, str]) -> str:
    path = params.get("path")
    if not path:
        raise RequestError(400, "bad_path", "missing 'path' query parameter")
    if "\x00" in path:
        raise RequestError(400, "bad_path", "path must not contain NUL")
    if not os.path.isabs(path):
        raise RequestError(400, "bad_path", f"path must be absolute: {path}")
    return path


def parse_mode(text: str) -> int:
    if not _MODE_RE.fullmatch(text):
        raise RequestError(400, "bad_mode", f"mode must be an octal number like 644, got {text!r}")
    return int(text, 8)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --------------------------------------------------------------------------
# HTTP


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        sys.stderr.write(f"{stamp} {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _printable(text: str, limit: int = 200) -> str:
    text = _UNPRINTABLE_RE.sub("?", text)
    return text if len(text) <= limit else text[:limit] + "..."


class DaemonServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        config: Config,
        registry: ProcessRegistry,
        base_env: Mapping[str, str],
        umask: int,
    ) -> None:
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        self.config = config
        self.registry = registry
        self.base_env: dict[str, str] = dict(base_env)
        self.umask = umask
        self.started = time.monotonic()
        self.deadline: float | None = None if config.ttl is None else self.started + config.ttl
        super().__init__((config.host, config.port), DaemonHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() does a reverse DNS lookup (getfqdn), which can
        # hang in a sandbox without DNS; we do not need it.
        socketserver.TCPServer.server_bind(self)
        address = self.server_address
        self.server_name = str(address[0])
        self.server_port = int(address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _NETWORK_ERRORS):
            _log(f"{_printable(str(client_address))} connection error: {exc!r}")
        else:
            _log(f"{_printable(str(client_address))} unhandled error:\n{traceback.format_exc()}")


class Exchange:
    """One request and its response: all per-request state, and the body/response I/O.

    DaemonHandler creates a fresh Exchange for every request on a connection and
    passes it to the endpoint (see ROUTES).  Endpoints read the body with
    ``require_length``/``read_chunk`` and answer with ``send_json`` or
    ``begin_response`` + ``write``.
    """

    def __init__(self, handler: DaemonHandler) -> None:
        self.handler = handler
        self.body_remaining = 0  # bytes still unread; -1 when unknown (unframed)
        self.has_length = False
        self.body_error: str | None = None
        self.expect_continue = False
        self.continue_sent = False
        self.authorized = False
        self.response_started = False
        # The connection closes after this response with body bytes still unread:
        # drain them for a while first (DaemonHandler.finish).
        self.linger = False

    @property
    def daemon(self) -> DaemonServer:
        return self.handler.daemon

    @property
    def method(self) -> str:
        return self.handler.command

    @property
    def headers(self) -> Message:
        return self.handler.headers

    def log(self, text: str) -> None:
        self.handler.log_message("%s", text)

    def close_after_response(self) -> None:
        self.handler.close_connection = True

    # -- request body ------------------------------------------------------

    def prepare_body(self) -> None:
        """Work out the body framing from the headers (nothing is read yet)."""
        transfer_encoding = self.headers.get_all("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length")
        if transfer_encoding:
            self.body_remaining = -1
            return
        if not lengths:
            return
        values = {str(value).strip() for value in lengths}
        value = values.pop()
        if values or not _CONTENT_LENGTH_RE.fullmatch(value):
            self.body_remaining = -1
            self.body_error = "invalid Content-Length header"
            return
        self.body_remaining = int(value)
        self.has_length = True

    def require_length(self) -> int:
        if not self.has_length:
            raise RequestError(
                411,
                "length_required",
                "a Content-Length header is required (chunked bodies are not supported)",
            )
        return self.body_remaining

    def _send_continue(self) -> None:
        if self.expect_continue and not self.continue_sent:
            self.continue_sent = True
            self.handler.send_response_only(HTTPStatus.CONTINUE)
            self.handler.end_headers()

    def read_chunk(self, limit: int) -> bytes:
        """Read up to ``limit`` bytes of the body (exactly, unless it ends first)."""
        want = min(limit, self.body_remaining)
        if want <= 0:
            return b""
        self._send_continue()
        try:
            data = self.handler.rfile.read(want)
        except OSError as exc:
            self.body_remaining = -1
            raise ClientGone(f"error while reading the body: {exc!r}") from None
        self.body_remaining -= len(data)
        if len(data) < want:
            self.body_remaining = -1
            raise ClientGone("connection closed in the middle of the body")
        return data

    def _settle_body(self) -> None:
        """Before responding: drain a small unread body, or plan to close."""
        if self.body_remaining == 0:
            return
        if (
            0 < self.body_remaining <= MAX_DISCARD_BODY
            and self.authorized
            and not (self.expect_continue and not self.continue_sent)
        ):
            try:
                while self.body_remaining > 0:
                    self.read_chunk(self.body_remaining)
                return
            except ClientGone:
                self.close_after_response()
                return
        self.close_after_response()
        self.linger = True

    # -- response ----------------------------------------------------------

    def begin_response(
        self,
        status: int,
        content_type: str,
        length: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send the status line and headers; exactly ``length`` bytes must follow."""
        self._settle_body()
        handler = self.handler
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(length))
        handler.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        self.response_started = True

    def write(self, data: bytes) -> None:
        """Send (part of) the response body; a reply to HEAD has none."""
        if self.method != "HEAD":
            self.handler.wfile.write(data)

    def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.begin_response(status, "application/json", len(body), headers)
        self.write(body)

    def send_error(self, exc: RequestError) -> None:
        self.send_json(exc.status, {"error": exc.code, "message": exc.message}, exc.headers)


# An endpoint answers one request: it gets the exchange and the raw query string.
Endpoint = Callable[[Exchange, str], None]


class DaemonHandler(BaseHTTPRequestHandler):
    """The stdlib's per-connection handler: parses requests, then dispatches via ROUTES."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm on, the body waits
    # for the client's delayed ACK (~40 ms) on every keep-alive round trip.
    disable_nagle_algorithm = True
    # Garbage request lines are answered with a real status line (the stdlib
    # default, HTTP/0.9, would send a bare body).
    default_request_version = "HTTP/1.0"
    server_version = "commandlab-daemon/" + DAEMON_VERSION
    sys_version = ""
    timeout = SOCKET_TIMEOUT

    exchange: Exchange  # the request being handled; a fresh one per request

    def version_string(self) -> str:
        return self.server_version

    # -- plumbing ----------------------------------------------------------

    @property
    def daemon(self) -> DaemonServer:
        server = self.server
        assert isinstance(server, DaemonServer)
        return server

    def setup(self) -> None:
        super().setup()
        self.exchange = Exchange(self)

    def handle_one_request(self) -> None:
        self.exchange = Exchange(self)
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        # Defer "100 Continue" until the request was authenticated and validated.
        self.exchange.expect_continue = True
        return True

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.exchange.linger:
                self._linger_close()

    def _linger_close(self) -> None:
        """Half-close and drain the unread body for a while before closing."""
        sock = self.connection
        unread = self.exchange.body_remaining
        remaining: int | None = unread if unread > 0 else None
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                    if remaining <= 0:
                        break
        except OSError:
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if isinstance(code, int) else code
        self.log_message("%s %s", self._target(), status)

    def _target(self) -> str:
        """Method and path (never the query string) of the current request, for logs."""
        if not self.command:
            return "<malformed request>"
        return _printable(f"{self.command} {urlsplit(self.path).path}")

    def log_message(self, format: str, *args: Any) -> None:
        host = self.client_address[0] if self.client_address else "-"
        _log(f"{host} {_printable(format % args, 2000)}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Used by the stdlib for malformed requests: answer JSON and close."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        error = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "error"
        body = json.dumps({"error": error, "message": message or phrase}).encode("utf-8")
        self.close_connection = True
        # Whatever the client sent after the bad part is still unread: drain it
        # briefly so the client gets this reply rather than a connection reset.
        self.exchange.linger = True
        self.send_response(code)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.exchange.response_started = True
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- dispatch ----------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        """Authenticate (before anything else), look the endpoint up in ROUTES, run it."""
        exchange = self.exchange
        try:
            exchange.prepare_body()
            if not authenticate(self.headers, self.daemon.config.token_sha256):
                raise RequestError(401, "unauthorized", "missing or invalid token")
            exchange.authorized = True
            if exchange.body_error is not None:
                raise RequestError(400, "bad_content_length", exchange.body_error)
            target = urlsplit(self.path)
            endpoint = find_endpoint(self.command, target.path)
            endpoint(exchange, target.query)
        except RequestError as exc:
            if exchange.response_started:
                self.close_connection = True
            else:
                exchange.send_error(exc)
        except ClientGone as exc:
            self.close_connection = True
            self.log_message("%s: client went away (%s)", self._target(), exc)
        except _NETWORK_ERRORS as exc:
            self.close_connection = True
            self.log_message("%s: connection error (%r)", self._target(), exc)
        except Exception as exc:
            # Answer 500 if still possible, then let socketserver log the
            # traceback (DaemonServer.handle_error) and drop the connection.
            self.close_connection = True
            if not exchange.response_started:
                with contextlib.suppress(OSError):
                    exchange.send_json(
                        500,
                        {"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
                    )
            raise


# --------------------------------------------------------------------------
# endpoints


def handle_health(exchange: Exchange, query: str) -> None:
    daemon = exchange.daemon
    now = time.monotonic()
    expires_in = None if daemon.deadline is None else max(0.0, daemon.deadline - now)
    exchange.send_json(
        200,
        {
            "version": DAEMON_VERSION,
            "uptime": now - daemon.started,
            "pid": os.getpid(),
            "expires_in": expires_in,
        },
    )


def handle_run(exchange: Exchange, query: str) -> None:
    length = exchange.require_length()
    content_type = exchange.headers.get("Content-Type")
    if content_type is not None:
        media_type = str(content_type).split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise RequestError(
                415, "unsupported_media_type", "Content-Type must be application/json"
            )
    if length > MAX_RUN_BODY:
        raise RequestError(413, "payload_too_large", f"request body exceeds {MAX_RUN_BODY} bytes")
    raw = exchange.read_chunk(length)
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "bad_json", f"malformed JSON body: {exc}") from None
    request = parse_run_request(payload)
    daemon = exchange.daemon
    result = run_command(daemon.registry, daemon.base_env, request)
    exchange.send_json(200, result)


def handle_put_file(exchange: Exchange, query: str) -> None:
    params = parse_query(query)
    path = require_path(params)
    mode_text = params.get("mode")
    mode = None if mode_text is None else parse_mode(mode_text)
    exchange.require_length()
    if path.endswith("/"):
        raise RequestError(400, "bad_path", f"path must name a file: {path}")

    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, parent) from None
    if os.path.isdir(path):
        raise RequestError(400, "is_a_directory", f"is a directory: {path}")
    existing: os.stat_result | None
    try:
        existing = os.stat(path)
    except OSError:
        existing = None
    if mode is None:
        mode = stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~exchange.daemon.umask

    try:
        fd, temp_path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=parent)
    except OSError as exc:
        raise _os_error(exc, parent) from None
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while exchange.body_remaining > 0:
                chunk = exchange.read_chunk(CHUNK_SIZE)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _os_error(exc, path) from None
                size += len(chunk)
            try:
                out.flush()
            except OSError as exc:
                raise _os_error(exc, path) from None
        try:
            if existing is not None and mode_text is None and hasattr(os, "chown"):
                with contextlib.suppress(OSError):
                    os.chown(temp_path, existing.st_uid, existing.st_gid)
            os.chmod(temp_path, mode)
            os.replace(temp_path, path)
        except OSError as exc:
            raise _os_error(exc, path) from None
    except BaseException:
        _remove_quietly(temp_path)
        raise
    exchange.send_json(200, {"path": path, "size": size})


def handle_get_file(exchange: Exchange, query: str) -> None:
    path = require_path(parse_query(query))
    # O_NONBLOCK: opening a FIFO must not hang the request.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(exc, path, missing_is_404=True) from None
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _os_error(exc, path) from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RequestError(400, "is_a_directory", f"is a directory: {path}")
        raise RequestError(400, "not_a_regular_file", f"not a regular file: {path}")
    with open(fd, "rb", buffering=0) as source:
        size = info.st_size
        if size == 0:
            # Possibly a pseudo file (/proc, /sys) whose size is unknown.
            data = _read_pseudo_file(source, path)
            exchange.begin_response(200, "application/octet-stream", len(data))
            exchange.write(data)
            return
        exchange.begin_response(200, "application/octet-stream", size)
        remaining = size
        while remaining > 0:
            chunk = source.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            exchange.write(chunk)
            remaining -= len(chunk)
        if remaining:
            # The file shrank while we were sending it: the announced length
            # cannot be honoured, so the connection must be dropped.
            exchange.close_after_response()
            exchange.log("GET /files: file shrank during transfer, closing connection")


def _read_pseudo_file(source: io.FileIO, path: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = source.read(CHUNK_SIZE)
        except OSError as exc:
            raise _os_error(exc, path) from None
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > MAX_PSEUDO_FILE:
            raise RequestError(
                413,
                "file_too_large",
                f"file of unknown size exceeds {MAX_PSEUDO_FILE} bytes: {path}",
            )
        parts.append(chunk)


# Every endpoint: path -> method -> function.  A new endpoint is one row here.
# Authentication happens before the lookup; an unknown path is answered 404 and
# a method missing from a row 405 (with the row's methods in ``Allow``).
ROUTES: dict[str, dict[str, Endpoint]] = {
    "/health": {"GET": handle_health},
    "/run": {"POST": handle_run},
    "/files": {"GET": handle_get_file, "PUT": handle_put_file},
}


def find_endpoint(method: str, path: str) -> Endpoint:
    """The endpoint for ``method`` on ``path``, or a 404 / 405 RequestError."""
    methods = ROUTES.get(path)
    if methods is None:
        raise RequestError(404, "not_found", f"no such endpoint: {_printable(path)}")
    endpoint = methods.get(method)
    if endpoint is None:
        raise RequestError(
            405,
            "method_not_allowed",
            f"{_printable(method)} is not allowed on {_printable(path)}",
            {"Allow": ", ".join(sorted(methods))},
        )
    return endpoint


# --------------------------------------------------------------------------
# entry point


def _exit_now(status: int) -> NoReturn:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


def _fail(message: str, status: int) -> NoReturn:
    print(f"commandlab daemon: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def make_undumpable() -> None:
    """Best effort: make /proc/<pid>/{environ,mem,...} unreadable to our commands.

    Tokens presented by clients pass through the daemon's memory.  Commands are
    exec'ed, which makes them dumpable again.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (ImportError, OSError, AttributeError):
        pass


def main() -> None:
    """Start the daemon from environment configuration and serve forever."""
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        _fail(str(exc), 2)
    make_undumpable()
    # Commands do not inherit the digest.  (The sandbox's init process still holds it
    # in its environment, which is harmless: a digest cannot be presented as a token.)
    os.environ.pop(TOKEN_SHA256_ENV, None)
    base_env = dict(os.environ)
    umask = os.umask(0)
    os.umask(umask)

    registry = ProcessRegistry()
    try:
        server = DaemonServer(config, registry, base_env, umask)
    except OSError as exc:
        _fail(f"cannot listen on {config.host}:{config.port}: {exc}", 1)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        killed = registry.kill_all()
        _log(f"received signal {signum}; killed {killed} process group(s); exiting")
        _exit_now(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if config.ttl is not None:

        def on_expiry() -> None:
            killed = registry.kill_all()
            _log(f"ttl of {config.ttl}s expired; killed {killed} process group(s); exiting")
            _exit_now(0)

        timer = threading.Timer(config.ttl, on_expiry)
        timer.daemon = True
        timer.start()

    print(
        f"commandlab daemon listening on {server.server_name}:{server.server_port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
