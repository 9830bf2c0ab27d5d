"""commandlab sandbox daemon: a small HTTP/1.1 server that runs commands and moves files.

Standard library only, Python >= 3.9, one file: copy it into any image with python3
and start it with ``python3 -I -S /opt/commandlab/daemon.py``.

Configuration (environment variables)
-------------------------------------
``COMMANDLAB_TOKEN_SHA256``  required: SHA-256 of the client's token (UTF-8) as 64
    hex digits.  The daemon never sees the token itself; it hashes what each request
    presents and compares in constant time.  Removed from the environment commands get.
    Missing or malformed: a message on stderr and exit status 2.
``COMMANDLAB_TOKEN``  must NOT be set (a client handing the raw token to the sandbox):
    refused with exit status 2.
``COMMANDLAB_PORT``   TCP port, default 8000 (0 picks one; the startup line says which).
``COMMANDLAB_HOST``   bind address, default ``0.0.0.0`` (IPv6 literals work).
``COMMANDLAB_SOCKET``  optional absolute path: listen on a Unix socket there instead of
    TCP (host and port are then ignored).  A stale socket file is replaced; the new one
    is made connectable by any user (mode 0666), so whoever may reach its directory
    decides who may connect: the client's host directory is private to it.
``COMMANDLAB_TTL``    optional lifetime in seconds: at expiry every process group we
    started is SIGKILLed and the daemon exits 0, which stops the container.
``COMMANDLAB_TLS_CERT`` and ``COMMANDLAB_TLS_KEY``  optional, both or neither: the PEM
    text (not a path: some platforms can only hand a sandbox environment variables) of
    the server certificate (or chain, leaf first) and of its unencrypted private key.
    Given, the daemon serves HTTPS only (TLS >= 1.2, no client certificates).  Both are
    removed from the environment commands get; the key passes through a private
    temporary file (0600, in /dev/shm when there is one) that is deleted once loaded.
    Only one set, a malformed PEM, a key that does not match the certificate or a
    Python without ``ssl``: a message on stderr (never the key) and exit status 2.

Startup prints ``commandlab daemon listening on <host>:<port>`` (or ``unix:<path>``)
on stderr (nothing follows the port on that line), then ``commandlab daemon: serving
TLS (https)`` when TLS is on.  SIGTERM and SIGINT kill every process group and exit
0.  One terse log line per request (client, method, path without query, status);
headers are never logged.  The daemon marks
itself non-dumpable so commands running as the same user cannot read its memory.

Why it is shaped like this
--------------------------
A sandbox is worth more than any one request, so nothing a client sends or a command
prints may grow the daemon's memory without bound or exhaust its processes:

* One thread (the *loop*) accepts connections and reads request headers without
  blocking.  Headers must arrive within ``HEADER_DEADLINE`` seconds and fit in
  ``MAX_HEADER_BYTES``; idle keep-alive connections close after ``IDLE_TIMEOUT``.
  Authentication happens there, so an unauthenticated client costs one socket and
  never a thread.  What unauthenticated clients can make it hold is bounded by the
  sandbox's memory limit, however many connect: at most a sixteenth of it (1 to 16
  MiB) in request heads not yet authenticated (past that the largest are dropped), and
  at most ``MAX_CONNECTIONS`` connections, fewer in a small sandbox (past that the
  oldest unauthenticated one is dropped).  A client that pipelines requests faster
  than it reads the replies is not read from until it does.
* Authenticated requests (except ``/health``, answered by the loop) go to a bounded
  pool of ``MAX_WORKERS`` threads; more wait in a queue.
* Output, stdin and files are streamed with back-pressure in bounded chunks.  What
  background processes print is kept in rings that together hold at most
  ``OUTPUT_BUDGET``, however many processes ran (finished ones' output goes first).
* Commands are the kernel OOM killer's first choice, the daemon its last: every command's
  ``oom_score_adj`` is raised to 1000 (a shell command does it with a builtin as its
  first act, the daemon does it for an argv command as soon as it has exec'd), so a
  command that blows the sandbox's memory limit is the one killed (exit code -9) and
  the daemon keeps serving.  Where /proc is not writable, nothing changes.
* A thread or process the kernel refuses (the sandbox's pids or memory limit) is a
  ``resource_exhausted`` reply, never a dropped connection: a request no worker thread
  can be started for waits ``STARVED_GRACE`` seconds for a busy one, then gets a 503.
  Idle workers exit after ``WORKER_IDLE`` seconds, giving their pids back; the TTL is
  kept by the loop (no timer thread).

Protocol
--------
Every request carries the token in ``X-CommandLab-Token`` (or, only when that header
is absent, ``Authorization: Bearer``); otherwise ``401`` and the connection closes.
Request bodies are framed by ``Content-Length`` or ``Transfer-Encoding: chunked``.
Relative paths resolve against the daemon's working directory (``/health`` reports
it).  Errors are JSON ``{"error": <code>, "message": <text>, ...}`` with stable codes:
``not_found`` 404, ``permission_denied`` 403, ``is_a_directory`` 400,
``not_a_directory`` 400, ``file_too_large`` 413 (with ``size``), ``exec_format_error``
400, ``resource_exhausted`` 503 (with ``limit``: ``pids``, ``memory``, ``processes``),
``user_unsupported`` 400, ``no_such_user`` 400, ``no_such_process`` 404,
``output_evicted`` 410 (with ``exit_code``), ``bad_request`` 400, ``unauthorized`` 401,
``shutting_down`` 503.

``GET /health``
    ``{"version", "uptime", "pid", "expires_in", "cwd", "uid", "limits", "tls"}``.

``POST /exec``
    Body: one JSON object on the first line, then stdin as raw bytes until the body
    ends (end of body closes the command's stdin).  JSON keys: ``argv`` (list of
    strings, run directly) or ``command`` (string, run by ``/bin/sh -c``); ``cwd``,
    ``env`` (overlaid on the daemon's), ``user`` (name or uid; needs a root daemon),
    ``timeout`` (seconds, <= ``MAX_TIMEOUT``), ``max_output`` (bytes kept per stream:
    the first half is streamed, then the last half is kept and sent at the end after a
    gap frame; null: stream everything), ``on_limit`` (``truncate``, or ``kill``: the
    command is killed once a stream printed more than ``max_output`` bytes),
    ``background`` (the process outlives this request).
    Reply: 200, chunked, a sequence of frames ``<kind: 1 byte><length: 4 bytes BE>
    <payload>``: ``S`` JSON ``{"id", "pid"}`` first; ``1``/``2`` stdout/stderr bytes;
    ``G`` JSON ``{"stream": 1|2, "omitted": n}`` where ``n`` bytes were dropped (then
    comes the stream's kept tail); ``X`` JSON ``{"exit_code", "duration", "timed_out",
    "limit_exceeded", "stdout_omitted", "stderr_omitted"}`` last (HTTP/1.0 clients get
    the frames unchunked, ended by closing).  A foreground command's whole process
    group is killed when the client goes away before it ends: a client that closes
    (or half-closes) its connection is taken as gone.  A background command keeps
    running, its output going to a ring of the last ``RING_BYTES`` per stream; all
    rings together hold at most ``OUTPUT_BUDGET`` (see ``Registry.shed``).

``GET /processes``  ``[{"id", "pid", "argv", "background", "running", "exit_code"}]``.
    A process ``<id>`` is ``p`` and a number; any other id, or a query parameter the
    endpoint does not take, is ``bad_request``.
``GET /processes/<id>/output``  a background process's frames from its ring (a ``G``
    frame says what was lost), then live ones, then ``X``; ``output_evicted`` when it
    finished and its output was dropped for ``OUTPUT_BUDGET``.
``POST /processes/<id>/signal?signal=<n>``  signals the process group.
``DELETE /processes/<id>``  kills the process group and forgets the process.

``GET /files?path=<p>[&max_size=<n>][&user=<u>]``  the file, streamed;
    ``file_too_large`` before any byte is sent when it is bigger than ``max_size``.
``PUT /files?path=<p>[&mode=<octal>][&user=<u>]``  the body becomes the file (written
    aside and renamed, parents created).  An existing file keeps its mode and owner and
    must be writable; a symlink at the path is replaced, not written through, and one
    on the way is followed only when it is root's or the writer's (``open_parent``).
    ``{"path", "size"}``.
    With ``user`` (name or uid; needs a root daemon) the file is opened, created and
    renamed by a short-lived process running as that user, so its permissions apply.
``GET /files/stat?path=<p>``  ``{"path", "type", "size", "mode", "mtime", "uid", "gid"}``.
``GET /files/list?path=<p>``  ``{"path", "entries": [{"name", "type", "size", "mode",
    "mtime"}], "truncated"}`` (at most ``MAX_LIST_ENTRIES``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections import deque

# typing is not imported at run time: every import counts in a sandbox's start cost.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import io
    import ssl
    import subprocess
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn

    Buffer = bytes | bytearray | memoryview

DAEMON_VERSION = "3"

TOKEN_SHA256_ENV = "COMMANDLAB_TOKEN_SHA256"
LEGACY_TOKEN_ENV = "COMMANDLAB_TOKEN"
PORT_ENV = "COMMANDLAB_PORT"
HOST_ENV = "COMMANDLAB_HOST"
SOCKET_ENV = "COMMANDLAB_SOCKET"
TTL_ENV = "COMMANDLAB_TTL"
TLS_CERT_ENV = "COMMANDLAB_TLS_CERT"
TLS_KEY_ENV = "COMMANDLAB_TLS_KEY"
TOKEN_HEADER = "x-commandlab-token"

DEFAULT_PORT = 8000
DEFAULT_HOST = "0.0.0.0"

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 100
HEADER_DEADLINE = 10.0  # seconds to send a request's headers
IDLE_TIMEOUT = 30.0  # an idle keep-alive connection is closed after this
IO_TIMEOUT = 300.0  # a client that stalls a transfer this long is dropped
LINGER_SECONDS = 2.0  # drain unread input this long before closing, so replies arrive
MAX_CONNECTIONS = 4096
# What one open connection may cost the daemon beyond what it buffers (objects, kernel
# socket, TLS state): the sandbox's memory limit divided by this caps the connections.
CONNECTION_COST = 16 * 1024
TLS_CONNECTION_COST = 64 * 1024
MIN_CONNECTIONS = 64
# Request heads not yet authenticated may buffer this share of the sandbox's memory in
# all (between the two bounds); past it the largest are dropped.
PREAUTH_SHARE = 16
PREAUTH_MIN = 1024 * 1024
PREAUTH_MAX = 16 * 1024 * 1024
MAX_WORKERS = 128
MAX_BACKGROUND = 64
MAX_EXEC_HEADER = 8 * 1024 * 1024  # the JSON line of /exec (argv can be large)
MAX_TIMEOUT = 1_000_000.0  # seconds; larger values are refused rather than overflowed
MAX_LIST_ENTRIES = 10_000
MAX_PSEUDO_FILE = 64 * 1024 * 1024
RING_BYTES = 1024 * 1024
# What all background processes' rings may hold together, whatever their number: past
# it the output of the processes that finished longest ago goes first, then the oldest
# bytes of the fullest rings of running ones.
OUTPUT_BUDGET = 16 * 1024 * 1024
MERGE_BELOW = 4096  # a ring joins small chunks up to this (one object, not one per write)
# A background process's pipes are read this much at a time: a read allocates this much
# before it shrinks to what came, and smaller pieces leave the allocator fewer holes.
PUMP_READ = 64 * 1024
CHUNK = 256 * 1024
STDIN_HIGH_WATER = 1024 * 1024
KILL_GRACE = 5.0  # after killing a group, wait this long for its pipes to close
UPLOAD_PREFIX = ".commandlab-upload-"
MAX_SYMLINKS = 40  # followed on one path, as the kernel's limit
# Walking a path to write: each component opened as itself (a symlink is not followed).
WALK_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC
F_SETPIPE_SZ = 1031
WORKER_IDLE = 10.0  # an idle worker thread exits after this (it holds one of the pids)
STARVED_GRACE = 2.0  # a request no thread can serve waits this long, then gets a 503
# The kernel's OOM killer must pick a command, never the daemon: every command's
# oom_score_adj is raised to the maximum (anyone may raise a score, only the privileged
# lower one), so the commands and what they start are always its first choice.  The
# daemon cannot set it for the child before exec (preexec_fn): the child of a
# non-dumpable process has root-owned /proc files until it execs.
OOM_SCORE_FILE = "/proc/self/oom_score_adj"
OOM_VICTIM_SCORE = b"1000"
# A shell command raises its own, with a builtin, as the shell's first act: free, before
# anything it starts, and after a switch to another user too.  `|| :` keeps $? at 0
# where /proc is not writable.  argv commands: see make_oom_victim.
OOM_SHELL_PREFIX = "{ echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null || :; "

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX = frozenset("0123456789abcdefABCDEF")
_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}


# --------------------------------------------------------------------------
# configuration


class ConfigError(ValueError):
    """The daemon configuration (environment) is invalid."""


class Config:
    def __init__(
        self,
        token_sha256: bytes,
        host: str,
        port: int,
        ttl: float | None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        socket_path: str | None = None,
    ) -> None:
        self.token_sha256 = token_sha256
        self.host = host
        self.port = port
        self.socket_path = socket_path  # a Unix socket instead of host and port
        self.ttl = ttl
        self.tls_cert = tls_cert  # PEM text, or None for plain HTTP
        self.tls_key = tls_key

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"


def parse_token_sha256(text: str) -> bytes:
    """Decode the configured digest; never echo it (it may be a raw token set by mistake)."""
    if not text:
        raise ConfigError(f"{TOKEN_SHA256_ENV} is not set")
    if len(text) != 64 or not set(text) <= _HEX:
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
    port = DEFAULT_PORT
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{PORT_ENV} must be an integer, got {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"{PORT_ENV} must be between 0 and 65535, got {port}")
    ttl_text = environ.get(TTL_ENV, "").strip()
    ttl: float | None = None
    if ttl_text:
        try:
            ttl = float(ttl_text)
        except ValueError:
            raise ConfigError(f"{TTL_ENV} must be a number of seconds, got {ttl_text!r}") from None
        if not (0 < ttl < float("inf")):
            raise ConfigError(f"{TTL_ENV} must be a positive finite number, got {ttl_text!r}")
    tls_cert = environ.get(TLS_CERT_ENV, "").strip() or None
    tls_key = environ.get(TLS_KEY_ENV, "").strip() or None
    if (tls_cert is None) != (tls_key is None):
        given, missing = (
            (TLS_CERT_ENV, TLS_KEY_ENV) if tls_cert is not None else (TLS_KEY_ENV, TLS_CERT_ENV)
        )
        raise ConfigError(
            f"{given} is set but {missing} is not: TLS needs both the certificate and its key"
        )
    socket_path = environ.get(SOCKET_ENV, "").strip() or None
    if socket_path is not None and not socket_path.startswith("/"):
        raise ConfigError(f"{SOCKET_ENV} must be an absolute path, got {socket_path!r}")
    return Config(token_sha256, host, port, ttl, tls_cert, tls_key, socket_path)


def _encrypted_key() -> bytes:
    """The password callback of ``load_cert_chain``: only called for an encrypted key."""
    raise ConfigError(f"{TLS_KEY_ENV} is an encrypted private key: give it unencrypted")


def _private_dir() -> str:
    """A new directory only we can read, in memory (/dev/shm) when possible."""
    import tempfile  # lazy

    if os.path.isdir("/dev/shm"):
        with contextlib.suppress(OSError):
            return tempfile.mkdtemp(prefix="commandlab-tls-", dir="/dev/shm")
    return tempfile.mkdtemp(prefix="commandlab-tls-")


def tls_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server context for the PEM certificate (chain) and unencrypted private key.

    ``load_cert_chain`` only reads files: both go to a private temporary file that is
    deleted as soon as they are loaded, whatever happens.  Errors never quote the key.
    """
    try:
        import ssl
    except ImportError:
        raise ConfigError(
            f"{TLS_CERT_ENV} and {TLS_KEY_ENV} are set, but this Python has no ssl module"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError(
            f"{TLS_CERT_ENV} must be a PEM certificate (-----BEGIN CERTIFICATE-----...)"
        )
    if "PRIVATE KEY-----" not in key_pem or "-----BEGIN" not in key_pem:
        raise ConfigError(
            f"{TLS_KEY_ENV} must be a PEM private key (-----BEGIN PRIVATE KEY-----...)"
        )
    if "ENCRYPTED" in key_pem:
        _encrypted_key()
    try:  # the certificate alone, from memory: a clearer message than load_cert_chain's
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_pem)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{TLS_CERT_ENV} does not hold a readable PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # no client certificates: the token authenticates
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    paths: list[str] = []
    try:
        directory = _private_dir()
    except OSError as exc:
        raise ConfigError(
            f"cannot create a private temporary directory for the TLS key: {exc}"
        ) from None
    try:
        for name, text in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(directory, name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
            paths.append(path)
            with open(fd, "wb") as out:
                out.write(text.encode("utf-8", "surrogateescape"))
        context.load_cert_chain(paths[0], paths[1], password=_encrypted_key)
    except ConfigError:
        raise
    except ssl.SSLError as exc:
        reason = str(exc.reason or "").upper()
        if "KEY_VALUES_MISMATCH" in reason:
            explanation = f"the private key in {TLS_KEY_ENV} does not match the certificate"
        else:
            explanation = f"{TLS_KEY_ENV} does not hold a readable unencrypted PEM private key" + (
                f" ({exc.reason})" if exc.reason else ""
            )
        raise ConfigError(f"cannot load the TLS certificate and key: {explanation}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate and key: {type(exc).__name__}"
            f"{': ' + exc.strerror if isinstance(exc, OSError) and exc.strerror else ''}"
        ) from None
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return context


# --------------------------------------------------------------------------
# errors


class RequestError(Exception):
    """Answered as ``{"error": code, "message": message, **extra}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class ClientGone(Exception):
    """The client disconnected or stalled."""


def os_error(exc: OSError, path: str) -> RequestError:
    """The typed reply for a filesystem error on ``path``."""
    code = exc.errno
    text = exc.strerror or str(exc)
    if code == errno.ENOENT:
        return RequestError(404, "not_found", f"no such file or directory: {path}", path=path)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RequestError(403, "permission_denied", f"{text}: {path}", path=path)
    if code == errno.EISDIR:
        return RequestError(400, "is_a_directory", f"is a directory: {path}", path=path)
    if code == errno.ENOTDIR:
        return RequestError(400, "not_a_directory", f"not a directory: {path}", path=path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return RequestError(507, "insufficient_storage", f"{text}: {path}", path=path)
    if code in (errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST, errno.EINVAL):
        return RequestError(400, "bad_path", f"{text}: {path}", path=path)
    return RequestError(500, "io_error", f"{text}: {path}", path=path)


# --------------------------------------------------------------------------
# HTTP: parsing requests


class Request:
    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, list[str]]
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path, _, query = target.partition("?")
        self.path = path
        self.query = query

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {
            t.strip().lower() for v in self.headers.get("connection", []) for t in v.split(",")
        }
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def head_end(buf: bytearray) -> tuple[int, int] | None:
    """(where the head ends, length of the blank line) at its first blank line, if any."""
    found = [(buf.find(mark), len(mark)) for mark in (b"\r\n\r\n", b"\n\n", b"\n\r\n")]
    return min(((i, n) for i, n in found if i >= 0), default=None)


def decimal(text: str) -> int | None:
    """The value of a plain ASCII decimal number, else None (``str.isdigit`` accepts '²')."""
    if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_head(data: bytes) -> Request:
    """Parse a request line and headers (without the final blank line)."""
    text = data.decode("latin-1")
    lines = text.split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3:
        raise RequestError(400, "bad_request", "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise RequestError(400, "bad_request", "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise RequestError(505, "http_version_not_supported", "only HTTP/1.0 and 1.1")
        raise RequestError(400, "bad_request", "malformed request line")
    if not target.startswith("/") or any(c in target for c in "\x00\r\t"):
        raise RequestError(400, "bad_request", "malformed request target")
    headers: dict[str, list[str]] = {}
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise RequestError(431, "headers_too_large", "too many headers")
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t":
            raise RequestError(400, "bad_request", "folded headers are not supported")
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise RequestError(400, "bad_request", "malformed header line")
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    return Request(method, target, version, headers)


def presented_token(headers: Mapping[str, list[str]]) -> bytes | None:
    """The token a request presents, as raw bytes; None when absent or ambiguous.

    ``X-CommandLab-Token`` wins: the Kubernetes API server's proxy strips
    ``Authorization`` and Cloud Run's IAM reads it, so an ``Authorization`` beside our
    header may carry someone else's credential and is ignored.  A repeated header that
    would be used is refused rather than guessed at.
    """
    tokens = headers.get(TOKEN_HEADER)
    if tokens is not None:
        if len(tokens) != 1:
            return None
        value = tokens[0].strip()
    else:
        authorizations = headers.get("authorization") or []
        if len(authorizations) != 1:
            return None
        scheme, _, credential = authorizations[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        value = credential.strip()
    # Header bytes were decoded as latin-1: this recovers the client's UTF-8 bytes.
    return value.encode("latin-1", "replace") if value else None


def authenticate(headers: Mapping[str, list[str]], token_sha256: bytes) -> bool:
    token = presented_token(headers)
    if token is None:
        return False
    return hmac.compare_digest(hashlib.sha256(token).digest(), token_sha256)


def parse_query(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl  # lazy: not needed to answer /health

    result: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    except ValueError as exc:
        raise RequestError(400, "bad_request", f"malformed query: {exc}") from None
    for key, value in pairs:
        if key in result:
            raise RequestError(400, "bad_request", f"query parameter {key!r} given twice")
        result[key] = value
    return result


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Cache-Control: no-store")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(
    status: int, payload: object, *, close: bool, extra: list[tuple[str, str]] | None = None
) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(extra or [])
    if close:
        headers.append(("Connection", "close"))
    return response_head(status, headers) + body


def error_payload(exc: RequestError) -> dict[str, Any]:
    payload: dict[str, Any] = {"error": exc.code, "message": exc.message}
    payload.update(exc.extra)
    return payload


# --------------------------------------------------------------------------
# connections and request bodies


class TLSSocket:
    """A server-side TLS connection that behaves like the plain socket ``Conn`` holds.

    OpenSSL forbids using one connection from two threads at once, and a background
    command's stdin writer reads while the worker sends.  So the ``ssl.SSLSocket``
    underneath never blocks: every OpenSSL call runs under a lock, and waiting for the
    network happens outside it.  Timeouts behave like a socket's: 0 raises
    ``ssl.SSLWantReadError``/``SSLWantWriteError``, a number raises ``TimeoutError``
    after that long without progress.  ``shutdown`` only shuts the TCP side, so what the
    peer still sends can be read (and discarded) as before.
    """

    __slots__ = ("closed", "lock", "shut", "ssl", "timeout")

    def __init__(self, ssl_sock: ssl.SSLSocket) -> None:
        ssl_sock.settimeout(0.0)
        self.ssl = ssl_sock
        self.lock = threading.Lock()
        self.timeout: float | None = 0.0
        self.closed = False
        self.shut = False  # TCP write side shut: no close_notify any more

    def fileno(self) -> int:
        return self.ssl.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def pending(self) -> int:
        """Decrypted bytes held inside OpenSSL (the descriptor does not show them)."""
        with self.lock:
            return 0 if self.closed else self.ssl.pending()

    def attempt(self, op: Callable[..., Any], *args: Any) -> Any:
        """One non-blocking OpenSSL call under the lock."""
        with self.lock:
            if self.closed:
                raise OSError(errno.EBADF, "connection closed")
            return op(*args)

    def call(self, op: Callable[..., Any], *args: Any) -> Any:
        """``op`` retried until it completes, waiting (outside the lock) per the timeout."""
        import ssl

        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.attempt(op, *args)
            except ssl.SSLWantReadError:
                if timeout == 0:
                    raise
                flag = select.POLLIN
            except ssl.SSLWantWriteError:
                if timeout == 0:
                    raise
                flag = select.POLLOUT
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            poller = select.poll()
            poller.register(self.fileno(), flag)
            poller.poll(min(left, 1.0) * 1000)  # slices: notice a close by another thread

    def do_handshake(self) -> None:
        self.call(self.ssl.do_handshake)

    def recv(self, size: int) -> bytes:
        data: bytes = self.call(self.ssl.recv, size)
        return data

    def recv_nowait(self, size: int) -> bytes:
        """``recv`` that never waits, whatever the timeout (raises ``SSLWantReadError``)."""
        data: bytes = self.attempt(self.ssl.recv, size)
        return data

    def send(self, data: Buffer) -> int:
        sent: int = self.call(self.ssl.send, data)
        return sent

    def sendall(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view)  # a retry after SSLWantWrite passes the same bytes
            view = view[sent:]

    def sendfile(self, file: io.FileIO, offset: int = 0, count: int | None = None) -> int:
        """Like ``socket.sendfile``, by reading and sending (the kernel cannot encrypt)."""
        total = 0
        while count is None or total < count:
            size = CHUNK if count is None else min(CHUNK, count - total)
            data = os.pread(file.fileno(), size, offset + total)
            if not data:
                break
            self.sendall(data)
            total += len(data)
        return total

    def shutdown(self, how: int) -> None:
        with self.lock:
            # SSLSocket.shutdown would also drop its TLS state, and later reads would
            # then return raw records: shut the TCP side only.
            socket.socket.shutdown(self.ssl, how)
            self.shut = True

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if not self.shut:  # best effort close_notify, without waiting for the peer's
                with contextlib.suppress(OSError, ValueError):
                    self.ssl.unwrap()
            self.ssl.close()


class Conn:
    """One client connection: owned by the loop between requests, by one worker during one."""

    __slots__ = (
        "authenticated",
        "buf",
        "charged",
        "close_after",
        "deadline",
        "draining",
        "handshaking",
        "out",
        "peer",
        "sock",
        "tls",
    )

    def __init__(self, sock: socket.socket | TLSSocket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()  # received, not yet consumed
        self.deadline = time.monotonic() + HEADER_DEADLINE
        self.draining = False  # replied and half-closed: discard input until EOF
        self.authenticated = False
        self.charged = 0  # bytes of ``buf`` counted against the pre-auth budget
        self.out = b""  # a reply the loop could not send at once (the peer is not reading)
        self.close_after = False  # close once ``out`` is sent
        self.tls = isinstance(sock, TLSSocket)
        self.handshaking = self.tls  # TLS: the handshake is not done yet

    def pending(self) -> int:
        """TLS: bytes decrypted but not read yet (selectors cannot see them); else 0."""
        return self.sock.pending() if isinstance(self.sock, TLSSocket) else 0

    def receive_nowait(self) -> str:
        """TLS: receive what is there into ``buf`` without waiting: data, idle or gone."""
        import ssl

        assert isinstance(self.sock, TLSSocket)
        try:
            data = self.sock.recv_nowait(CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return "idle"
        except (OSError, ValueError):
            return "gone"
        if not data:
            return "gone"
        self.buf += data
        return "data"

    def fill(self) -> None:
        """Receive more bytes into ``buf`` (blocking, with the socket's timeout)."""
        try:
            data = self.sock.recv(CHUNK)
        except (OSError, ValueError) as exc:
            raise ClientGone(f"receive failed: {exc!r}") from None
        if not data:
            raise ClientGone("connection closed by the client")
        self.buf += data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as exc:
            raise ClientGone(f"send failed: {exc!r}") from None

    def send_parts(self, parts: list[Buffer]) -> None:
        """Send several buffers in order with scatter-gather writes (no joining copy)."""
        sock = self.sock
        if isinstance(sock, TLSSocket):  # no sendmsg: one write makes full TLS records
            self.send(b"".join(parts))
            return
        views = [memoryview(part) for part in parts if len(part)]
        try:
            while views:
                sent = sock.sendmsg(views[:512])
                while sent:
                    if sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    else:
                        views[0] = views[0][sent:]
                        sent = 0
        except (OSError, ValueError) as exc:
            raise ClientGone(f"send failed: {exc!r}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def linger_close(self) -> None:
        """Half-close, discard input for a while (so the peer reads our reply), close."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                if not self.sock.recv(CHUNK):
                    break
        except OSError:
            pass
        self.close()


class Body:
    """A request body, decoded from ``Content-Length`` or chunked framing, in pieces."""

    def __init__(self, conn: Conn, request: Request) -> None:
        self.conn = conn
        self.chunked = False
        self.remaining = 0  # Content-Length bytes left, or bytes left in the current chunk
        self.state = "data"  # chunked: size, data, crlf, trailer, done
        encodings = request.headers.get("transfer-encoding")
        lengths = request.headers.get("content-length")
        if encodings:
            if [e.strip().lower() for e in ",".join(encodings).split(",")] != [
                "chunked"
            ] or lengths:
                raise RequestError(
                    400, "bad_request", "only 'Transfer-Encoding: chunked' is supported"
                )
            self.chunked = True
            self.state = "size"
        elif lengths:
            values = {v.strip() for v in lengths}
            value = values.pop()
            length = decimal(value)
            if values or length is None:
                raise RequestError(400, "bad_content_length", "invalid Content-Length header")
            self.remaining = length
        self.done = not self.chunked and self.remaining == 0
        self.expect_continue = (request.header("expect") or "").lower() == "100-continue"

    def _continue(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def take(self, limit: int) -> bytes:
        """Decode up to ``limit`` body bytes from what was already received (may be b"")."""
        buf = self.conn.buf
        while not self.done:
            if self.state == "data":
                n = min(limit, self.remaining, len(buf))
                if n == 0:
                    return b""
                data = bytes(buf[:n])
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    if self.chunked:
                        self.state = "crlf"
                    else:
                        self.done = True
                return data
            if self.state == "crlf":
                if len(buf) < 2:
                    return b""
                if buf[:2] != b"\r\n":
                    raise RequestError(400, "bad_request", "malformed chunked body")
                del buf[:2]
                self.state = "size"
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > 4096:
                    raise RequestError(400, "bad_request", "malformed chunked body")
                return b""
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if self.state == "trailer":
                if not line:
                    self.done = True
                continue
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 15 or not set(size_text.decode("latin-1")) <= _HEX:
                raise RequestError(400, "bad_request", "malformed chunk size")
            self.remaining = int(size_text, 16)
            self.state = "data" if self.remaining else "trailer"
        return b""

    def read(self, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` bytes of the body, blocking; b"" at its end."""
        self._continue()
        while True:
            data = self.take(limit)
            if data or self.done:
                return data
            self.conn.fill()

    def discard(self, budget: float) -> bool:
        """Read and drop the rest of the body for up to ``budget`` s; whether it ended."""
        deadline = time.monotonic() + budget
        try:
            while not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.conn.sock.settimeout(left)
                if not self.take(CHUNK):
                    if self.done:
                        break
                    self.conn.fill()
        except (ClientGone, RequestError):
            return False
        finally:
            with contextlib.suppress(OSError):
                self.conn.sock.settimeout(IO_TIMEOUT)
        return True


class Exchange:
    """One authenticated request handled by a worker, and its reply."""

    def __init__(self, server: Server, conn: Conn, request: Request) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.body = Body(conn, request)
        self.started = False  # response headers sent
        self.close = not request.keep_alive
        self.status = 0

    def send_json(
        self, status: int, payload: object, extra: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.started = True
        self.settle()
        data = json_response(status, payload, close=self.close, extra=extra)
        if self.request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        self.conn.send(data)

    def settle(self) -> None:
        """Before replying: finish reading a small unread body, or plan to close."""
        if not self.body.done and not self.body.expect_continue and self.body.discard(0.5):
            return
        if not self.body.done:
            self.close = True

    def begin(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.started = True
        if self.close:
            headers = [*headers, ("Connection", "close")]
        self.conn.send(response_head(status, headers))

    def begin_chunked(self, content_type: str) -> None:
        """Start a streamed reply: chunked, or for HTTP/1.0 ended by closing."""
        if self.request.version == "HTTP/1.0":
            self.close = True
            self.begin(200, [("Content-Type", content_type)])
        else:
            self.begin(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])

    def send_chunk(self, parts: list[Buffer]) -> None:
        """Send ``parts`` as one HTTP chunk, without copying them together."""
        size = sum(len(part) for part in parts)
        if not size:
            return
        if self.request.version == "HTTP/1.0":
            self.conn.send_parts(parts)
        else:
            self.conn.send_parts([b"%x\r\n" % size, *parts, b"\r\n"])

    def end_chunked(self) -> None:
        if self.request.version != "HTTP/1.0":
            self.conn.send(b"0\r\n\r\n")


STREAM_KINDS = (b"1", b"2")  # frame kinds of stdout and stderr


def frame(kind: bytes, payload: Buffer) -> list[Buffer]:
    """A frame as parts to send: its 5-byte head, then the payload itself (not copied)."""
    return [kind + struct.pack(">I", len(payload)), payload]


def json_frame(kind: bytes, payload: object) -> list[Buffer]:
    return frame(kind, json.dumps(payload, separators=(",", ":")).encode())


# --------------------------------------------------------------------------
# processes


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def oom_score_adjustable() -> bool:
    """Whether we can write our oom_score_adj (rewriting its value is always allowed).

    Ask before ``make_undumpable``: after it our /proc files belong to root.
    """
    try:
        fd = os.open(OOM_SCORE_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, os.read(fd, 16).strip() or b"0")
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def make_oom_victim(pid: int) -> None:
    """Raise a just-started argv command's oom_score_adj to the maximum (best effort).

    Done by the daemon once the command has exec'd: before that, the child of a
    non-dumpable daemon has root-owned /proc files and could not do it itself (so no
    ``preexec_fn``, which would also cost the vfork fast path: about 2 ms a spawn).
    What the program forks in the microseconds before this keeps the daemon's score.
    """
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:  # no /proc, or the command already exited
        return
    try:
        os.write(fd, OOM_VICTIM_SCORE)
    except OSError:
        pass
    finally:
        os.close(fd)


class Ring:
    """The last ``size`` bytes (or a little more) of a stream, as the chunks that came.

    Whole chunks are kept and dropped (no growing buffer; small ones are joined up to
    ``MERGE_BELOW``), so it holds at most ``size`` plus one chunk. Offsets are absolute
    positions in the stream.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.start = 0  # absolute offset of the first byte held
        self.eof = False

    @property
    def end(self) -> int:
        return self.start + self.held

    def append(self, chunk: bytes) -> int:
        """Keep ``chunk`` (dropping the oldest past ``size``); how much ``held`` grew."""
        before = self.held
        last = self.chunks[-1] if self.chunks else b""
        if last and len(last) + len(chunk) <= min(MERGE_BELOW, self.size):
            # Small writes share one object: what a chunk costs beyond its bytes stays
            # small next to them, so ``held`` is what the ring really holds.
            self.chunks[-1] = last + chunk
        else:
            self.chunks.append(chunk)
        self.held += len(chunk)
        while self.held - len(self.chunks[0]) >= self.size:
            dropped = len(self.chunks.popleft())
            self.held -= dropped
            self.start += dropped
        return self.held - before

    def drop(self, size: int) -> int:
        """Let go of the oldest whole chunks, ``size`` bytes or a little more; how many."""
        dropped = 0
        while self.chunks and dropped < size:
            dropped += len(self.chunks.popleft())
        self.held -= dropped
        self.start += dropped
        return dropped

    def tail(self, size: int) -> list[Buffer]:
        """The last ``size`` bytes held, as views of the chunks."""
        skip = max(0, self.held - size)
        views: list[Buffer] = []
        for chunk in self.chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            views.append(memoryview(chunk)[skip:])
            skip = 0
        return views

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """(bytes lost before ``offset`` could be read, up to ``limit`` bytes from there)."""
        lost = max(0, self.start - offset)
        position = self.start
        wanted = max(offset, self.start)
        parts: list[bytes] = []
        got = 0
        for chunk in self.chunks:
            if got >= limit:
                break
            if position + len(chunk) > wanted:
                piece = chunk[max(0, wanted - position) :][: limit - got]
                parts.append(piece)
                got += len(piece)
                wanted += len(piece)
            position += len(chunk)
        return lost, b"".join(parts)


class Process:
    """A command the daemon started."""

    def __init__(
        self, pid_id: str, popen: subprocess.Popen[bytes], argv: list[str], background: bool
    ) -> None:
        self.id = pid_id
        self.popen = popen
        self.argv = argv
        self.background = background
        self.started = time.monotonic()
        self.timed_out = False
        self.exit_code: int | None = None
        self.duration: float | None = None
        # Background processes only: output rings fed by a pump thread.
        self.cond = threading.Condition()
        self.rings = (Ring(RING_BYTES), Ring(RING_BYTES))
        self.evicted = False  # finished, and its output dropped for OUTPUT_BUDGET

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.popen.pid,
            "argv": self.argv[:64],
            "background": self.background,
            "running": self.exit_code is None,
            "exit_code": self.exit_code,
        }

    def finish(self, returncode: int) -> None:
        with self.cond:
            if self.exit_code is None:
                self.exit_code = returncode
                self.duration = time.monotonic() - self.started
            self.cond.notify_all()

    def exit_payload(
        self, stdout_omitted: int = 0, stderr_omitted: int = 0, limit_exceeded: bool = False
    ) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "duration": self.duration,
            "timed_out": self.timed_out,
            "limit_exceeded": limit_exceeded,
            "stdout_omitted": stdout_omitted,
            "stderr_omitted": stderr_omitted,
        }


class Registry:
    """Every process we started, so that expiry, shutdown and clients can kill them."""

    def __init__(self, oom_adjust: bool = False) -> None:
        self.lock = threading.Lock()
        self.budget_lock = threading.Lock()  # one shed() at a time; taken before any cond
        self.kept = 0  # at least what background processes' rings hold (see shed)
        self.processes: dict[str, Process] = {}
        self.closed = False
        self.counter = 0
        self.oom_adjust = oom_adjust  # raise each command's oom_score_adj (see OOM_*)

    def spawn(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        user: RunAs | None,
        background: bool,
        shell: bool = False,
    ) -> Process:
        """Start ``argv`` (``shell``: it is ``/bin/sh -c <command>``) as a new session."""
        import subprocess  # lazy: not needed to answer /health

        extra: dict[str, Any] = {}
        run_argv = argv
        if self.oom_adjust and shell:
            run_argv = [*argv[:2], OOM_SHELL_PREFIX + argv[2], *argv[3:]]
        if user is not None:
            extra = {"user": user.uid, "group": user.gid, "extra_groups": user.groups}
        # The lock spans the fork so that kill_all() never misses a new group.
        with self.lock:
            if self.closed:
                raise RequestError(503, "shutting_down", "the daemon is shutting down")
            if background and not self._room_for_background():
                raise RequestError(
                    503,
                    "resource_exhausted",
                    f"at most {MAX_BACKGROUND} background processes may run at once",
                    limit="processes",
                )
            popen = subprocess.Popen(
                run_argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
            if self.oom_adjust and not shell:
                make_oom_victim(popen.pid)
            self.counter += 1
            process = Process(f"p{self.counter}", popen, argv, background)
            self.processes[process.id] = process
            return process

    def _room_for_background(self) -> bool:
        """Whether another background process fits; forgets the oldest finished ones."""
        background = [p for p in self.processes.values() if p.background]
        finished = [p for p in background if p.exit_code is not None]
        while len(background) >= MAX_BACKGROUND and finished:
            oldest = finished.pop(0)
            background.remove(oldest)
            del self.processes[oldest.id]
        return len(background) < MAX_BACKGROUND

    def shed(self, grown: int) -> None:
        """Keep what background processes' rings hold within ``OUTPUT_BUDGET``.

        Called by the pump threads after a ring grew by ``grown`` bytes, holding no
        ``cond`` themselves.  Past the budget, the output of the processes that finished
        longest ago goes first, whole (their readers are told, see
        ``handle_processes``); then the oldest bytes of the fullest rings of running
        ones (their readers get a gap, as when a ring wraps).
        """
        with self.budget_lock:
            # An upper bound (what forgotten processes held is never taken off), kept
            # cheaply; only past the budget are the rings counted.
            self.kept += grown
            if self.kept <= OUTPUT_BUDGET:
                return
            with self.lock:
                processes = [p for p in self.processes.values() if p.background]
            held = sum(ring.held for p in processes for ring in p.rings)
            self.kept = held
            if held <= OUTPUT_BUDGET:
                return
            finished = [p for p in processes if p.duration is not None and not p.evicted]
            finished.sort(key=lambda p: p.started + (p.duration or 0.0))
            for process in finished:
                if held <= OUTPUT_BUDGET:
                    self.kept = held
                    return
                with process.cond:
                    freed = sum(ring.drop(ring.held) for ring in process.rings)
                    process.evicted = freed > 0
                    process.cond.notify_all()
                held -= freed
            rings = [(ring, p) for p in processes if not p.evicted for ring in p.rings]
            while held > OUTPUT_BUDGET and rings:
                ring, process = max(rings, key=lambda pair: pair[0].held)
                if not ring.held:
                    break
                with process.cond:
                    held -= ring.drop(1)
                    process.cond.notify_all()
            self.kept = held

    def get(self, pid_id: str) -> Process:
        with self.lock:
            process = self.processes.get(pid_id)
        if process is None:
            raise RequestError(404, "no_such_process", f"no such process: {pid_id}")
        return process

    def forget(self, process: Process) -> None:
        with self.lock:
            self.processes.pop(process.id, None)

    def list(self) -> list[Process]:
        with self.lock:
            return list(self.processes.values())

    def kill_all(self) -> int:
        with self.lock:
            self.closed = True
            groups = [p.popen.pid for p in self.processes.values() if p.exit_code is None]
        for pgid in groups:
            kill_group(pgid)
        return len(groups)


def spawn_failure(exc: OSError, program: str, cwd: str) -> RequestError:
    """A typed reply for a command that could not start."""
    if exc.errno == errno.EAGAIN:
        return RequestError(
            503,
            "resource_exhausted",
            "cannot start a process: the sandbox's process limit (pids) is reached",
            limit="pids",
        )
    if exc.errno == errno.ENOMEM:
        return RequestError(
            503,
            "resource_exhausted",
            "cannot start a process: the sandbox is out of memory",
            limit="memory",
        )
    if exc.errno == errno.EMFILE or exc.errno == errno.ENFILE:
        return RequestError(
            503, "resource_exhausted", "cannot start a process: too many open files", limit="files"
        )
    if exc.errno == errno.ENOEXEC:
        return RequestError(
            400, "exec_format_error", f"not an executable format: {program}", path=program
        )
    where = cwd if getattr(exc, "filename", None) == cwd else program
    if exc.errno == errno.ENOENT and where == program:
        return RequestError(404, "not_found", f"no such program: {program}", path=program)
    return os_error(exc, where)


class RunAs:
    """Another user to run a command as (only a root daemon can switch)."""

    def __init__(self, name: str, uid: int, gid: int, groups: list[int], home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home


def resolve_user(value: object) -> RunAs | None:
    """The user ``value`` names; None when it is the daemon's own user (or not given)."""
    if value is None:
        return None
    import pwd  # lazy

    uid: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        uid = value
    elif isinstance(value, str) and decimal(value) is not None:
        uid = decimal(value)
    elif not isinstance(value, str) or not value:
        raise RequestError(400, "bad_request", "'user' must be a user name or uid")
    if uid == os.geteuid():
        return None
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(str(value))
    except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
        if uid is None or not 0 <= uid < 2**32:
            raise RequestError(
                400, "no_such_user", f"no such user in the sandbox: {value}"
            ) from None
        entry = None
    if entry is not None and entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise RequestError(
            400,
            "user_unsupported",
            f"cannot run as {value}: the daemon runs as uid {os.geteuid()}, not root"
            " (create the sandbox with run_as_root=True to switch users)",
        )
    if entry is None:  # a bare uid with no account: its own group, no home
        assert uid is not None
        return RunAs(str(uid), uid, uid, [], "/")
    import grp  # lazy

    groups = [g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


class ExecRequest:
    def __init__(self, payload: object, workdir: str) -> None:
        if not isinstance(payload, dict):
            raise RequestError(400, "bad_request", "the first line must be a JSON object")
        argv = payload.get("argv")
        command = payload.get("command")
        if (argv is None) == (command is None):
            raise RequestError(400, "bad_request", "give exactly one of 'argv' and 'command'")
        if command is not None:
            if not isinstance(command, str) or "\x00" in command:
                raise RequestError(400, "bad_request", "'command' must be a string without NUL")
            argv = ["/bin/sh", "-c", command]
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\x00" not in a for a in argv)
        ):
            raise RequestError(
                400, "bad_request", "'argv' must be a non-empty list of strings without NUL"
            )
        self.argv: list[str] = argv
        self.shell = command is not None  # argv is ["/bin/sh", "-c", command]
        cwd = payload.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\x00" in cwd):
            raise RequestError(400, "bad_request", "'cwd' must be a non-empty string or null")
        self.cwd = os.path.join(workdir, cwd) if cwd else workdir
        env = payload.get("env")
        if env is not None and not isinstance(env, dict):
            raise RequestError(400, "bad_request", "'env' must be an object or null")
        self.env: dict[str, str] = {}
        for key, value in (env or {}).items():
            if (
                not isinstance(value, str)
                or not key
                or "=" in key
                or "\x00" in key
                or "\x00" in value
            ):
                raise RequestError(400, "bad_request", f"invalid environment variable {key!r}")
            self.env[key] = value
        self.timeout = number(payload.get("timeout"), "timeout", MAX_TIMEOUT)
        max_output = payload.get("max_output")
        if max_output is not None and (
            isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0
        ):
            raise RequestError(
                400, "bad_request", "'max_output' must be a non-negative integer or null"
            )
        self.max_output: int | None = max_output
        self.on_limit = payload.get("on_limit", "truncate")
        if self.on_limit not in ("truncate", "kill"):
            raise RequestError(400, "bad_request", "'on_limit' must be 'truncate' or 'kill'")
        self.background = payload.get("background", False)
        if not isinstance(self.background, bool):
            raise RequestError(400, "bad_request", "'background' must be a boolean")
        self.user = payload.get("user")


def number(value: object, name: str, maximum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, "bad_request", f"'{name}' must be a number or null")
    try:
        result = float(value)
    except OverflowError:
        result = float("inf")
    if not (0 < result <= maximum):
        raise RequestError(
            400,
            "bad_request",
            f"'{name}' must be > 0 and at most {maximum:g} seconds, got {value!r}",
        )
    return result


# --------------------------------------------------------------------------
# endpoints


def handle_exec(ex: Exchange) -> None:
    server = ex.server
    body = ex.body
    if body.done:
        raise RequestError(400, "bad_request", "the body must start with a JSON line")
    # The JSON line, then stdin.
    line = bytearray()
    while True:
        data = body.read()
        if not data:
            raise RequestError(400, "bad_request", "the body must start with one JSON line")
        end = data.find(b"\n")
        if end >= 0:
            line += data[:end]
            pending = data[end + 1 :]
            break
        line += data
        if len(line) > MAX_EXEC_HEADER:
            raise RequestError(
                413, "payload_too_large", f"the JSON line exceeds {MAX_EXEC_HEADER} bytes"
            )
    try:
        payload = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "bad_json", f"malformed JSON line: {exc}") from None
    req = ExecRequest(payload, server.workdir)
    user = resolve_user(req.user)
    env = dict(server.base_env)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(req.env)
    try:
        process = server.registry.spawn(
            req.argv, req.cwd, env, user, req.background, shell=req.shell
        )
    except OSError as exc:
        raise spawn_failure(exc, req.argv[0], req.cwd) from None
    except (ValueError, TypeError) as exc:
        raise RequestError(400, "bad_request", f"cannot start the command: {exc}") from None
    if req.background:
        try:
            feed_background(process, req.timeout, server.registry.shed)
        except RuntimeError:  # no thread for its output: the sandbox is out of pids
            process.background = False  # so that the cleanup below kills it
    try:
        if req.background and not process.background:
            raise RequestError(
                503,
                "resource_exhausted",
                "cannot start a thread: the sandbox's process limit (pids) is reached",
                limit="pids",
            )
        ex.begin_chunked("application/x-commandlab-frames")
        ex.send_chunk(json_frame(b"S", {"id": process.id, "pid": process.popen.pid}))
        if req.background:
            stream_background(ex, process, bytes(pending), stdin=True)
        else:
            run_foreground(ex, process, req, bytes(pending))
    finally:
        if not process.background:
            if process.exit_code is None:
                kill_group(process.popen.pid)
                process.finish(process.popen.wait())
            close_pipes(process.popen)
            server.registry.forget(process)


def close_pipes(popen: subprocess.Popen[bytes]) -> None:
    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def widen_pipe(fd: int) -> None:
    """Bigger pipes mean fewer, larger reads for chatty commands (best effort)."""
    with contextlib.suppress(OSError, ImportError):
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, 1024 * 1024)


class Limiter:
    """Keeps the first half of ``max_output`` bytes streaming and the last half aside."""

    def __init__(self, max_output: int | None) -> None:
        self.max_output = max_output
        self.head = None if max_output is None else max_output - max_output // 2
        self.tail_size = 0 if max_output is None else max_output // 2
        self.sent = 0
        self.tail = Ring(max(self.tail_size, 1))
        self.overflow = 0  # bytes past the head

    @property
    def exceeded(self) -> bool:
        """Whether the stream printed more than ``max_output`` (not merely past the head)."""
        return self.max_output is not None and self.sent + self.overflow > self.max_output

    def feed(self, data: bytes) -> bytes:
        """What to stream now; the rest is kept in the tail ring."""
        if self.head is None:
            return data
        room = max(0, self.head - self.sent)
        now, rest = data[:room], data[room:]
        self.sent += len(now)
        if rest:
            self.overflow += len(rest)
            if self.tail_size:
                self.tail.append(rest)
        return now

    def kept_tail(self) -> tuple[int, list[Buffer]]:
        """(bytes omitted, the tail kept: views, not copies)."""
        kept = self.tail.tail(self.tail_size) if self.overflow and self.tail_size else []
        return self.overflow - sum(len(view) for view in kept), kept


class StdinFeed:
    """Copies the request body into a command's stdin without blocking, then closes it."""

    def __init__(self, sel: selectors.BaseSelector, popen: subprocess.Popen[bytes], first: bytes):
        assert popen.stdin is not None
        self.sel = sel
        self.pipe = popen.stdin
        self.fd: int | None = self.pipe.fileno()
        os.set_blocking(self.fd, False)
        self.buf = bytearray(first)
        self.registered = False

    @property
    def full(self) -> bool:
        return len(self.buf) >= STDIN_HIGH_WATER

    def pull(self, body: Body) -> None:
        """Take decoded body bytes already received; close stdin at the body's end."""
        if self.fd is None:
            body.take(1 << 62)  # the command closed its stdin: decode and drop
            return
        if not self.full and not body.done:
            self.buf += body.take(STDIN_HIGH_WATER)
        if not self.buf and body.done:
            self.close()
            return
        if bool(self.buf) != self.registered:
            if self.buf:
                self.sel.register(self.fd, selectors.EVENT_WRITE, "stdin")
            else:
                self.sel.unregister(self.fd)
            self.registered = bool(self.buf)

    def push(self) -> None:
        """The pipe has room: write what we can."""
        if self.fd is None:
            return
        try:
            written = os.write(self.fd, self.buf[:CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command closed its stdin; drop what is left
            self.close()
            return
        del self.buf[:written]

    def close(self) -> None:
        if self.fd is not None and self.registered:
            self.sel.unregister(self.fd)
        self.registered = False
        self.fd = None
        self.buf.clear()
        with contextlib.suppress(OSError):
            self.pipe.close()


def run_foreground(ex: Exchange, process: Process, req: ExecRequest, stdin_data: bytes) -> None:
    """Stream a command's output to the client, feed it stdin, kill it if the client goes."""
    popen = process.popen
    conn = ex.conn
    body = ex.body
    assert popen.stdout is not None
    assert popen.stderr is not None
    deadline = None if req.timeout is None else process.started + req.timeout
    limiters = (Limiter(req.max_output), Limiter(req.max_output))
    limit_exceeded = False
    sel = selectors.DefaultSelector()
    pidfd = open_pidfd(popen.pid)
    try:
        for index, pipe in enumerate((popen.stdout, popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            widen_pipe(pipe.fileno())
            sel.register(pipe.fileno(), selectors.EVENT_READ, index)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        stdin = StdinFeed(sel, popen, stdin_data)
        watch_client = True  # False once the client pipelined its next request
        client_registered = False
        open_streams = 2
        killed_at: float | None = None
        while True:
            stdin.pull(body)
            # Read from the client while it sends stdin we have room for, and after
            # that to notice it going away (the sign to kill the command).
            want_client = watch_client and (body.done or not stdin.full)
            if want_client != client_registered:
                if want_client:
                    sel.register(conn.sock, selectors.EVENT_READ, "client")
                else:
                    sel.unregister(conn.sock)
                client_registered = want_client
            exited = popen.poll() is not None
            if exited and open_streams == 0:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline and killed_at is None:
                process.timed_out = True
                kill_group(popen.pid)
                killed_at = now
            if killed_at is not None and now - killed_at > KILL_GRACE:
                break  # something that left the group holds the pipes: stop waiting
            # Without a pidfd, poll for the exit of a command whose pipes are closed.
            wait = 1.0 if pidfd is not None and not exited else 0.05
            if deadline is not None and killed_at is None:
                wait = min(wait, max(0.0, deadline - now))
            if killed_at is not None:
                wait = min(wait, 0.1)
            output: list[Buffer] = []
            # TLS: bytes already decrypted inside OpenSSL never make the socket readable.
            buffered = client_registered and conn.tls and conn.pending() > 0
            events = sel.select(0.0 if buffered else wait)
            if buffered and not any(key.data == "client" for key, _ in events):
                events.append((sel.get_key(conn.sock), selectors.EVENT_READ))
            for key, _ in events:
                tag = key.data
                if tag == "exit":
                    sel.unregister(key.fd)
                elif tag == "client":
                    if not body.done:
                        if not conn.tls:
                            conn.fill()  # ClientGone when the client went away mid-body
                        elif conn.receive_nowait() == "gone":  # a partial record: wait more
                            raise ClientGone("connection closed by the client")
                        continue
                    seen = peek_client(conn)
                    if seen == "gone":
                        raise ClientGone("client went away")
                    if seen == "data":
                        watch_client = False  # the next request is pipelined behind
                elif tag == "stdin":
                    stdin.push()
                else:
                    try:
                        data = os.read(key.fd, CHUNK)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(key.fd)
                        open_streams -= 1
                        continue
                    streamed = limiters[tag].feed(data)
                    if streamed:
                        output += frame(STREAM_KINDS[tag], streamed)
                    if limiters[tag].exceeded and req.on_limit == "kill" and not limit_exceeded:
                        limit_exceeded = True
                        kill_group(popen.pid)
                        killed_at = time.monotonic()
            if output:
                ex.send_chunk(output)
        stdin.close()
        if popen.poll() is None:
            kill_group(popen.pid)
        process.finish(popen.wait())
        omitted = [0, 0]
        last: list[Buffer] = []
        for index, limiter in enumerate(limiters):
            omitted[index], kept = limiter.kept_tail()
            if omitted[index]:
                last += json_frame(b"G", {"stream": index + 1, "omitted": omitted[index]})
            size = sum(len(view) for view in kept)
            if size:
                last += [STREAM_KINDS[index] + struct.pack(">I", size), *kept]
        last += json_frame(b"X", process.exit_payload(omitted[0], omitted[1], limit_exceeded))
        ex.send_chunk(last)
        ex.end_chunked()
        if not body.done and not body.discard(LINGER_SECONDS):
            ex.close = True
    finally:
        if pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        sel.close()


def open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux >= 5.3), if any."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
        return fd
    except OSError:
        return None


def feed_background(process: Process, timeout: float | None, shed: Callable[[int], None]) -> None:
    """Start the thread that drains a background process's output into its rings.

    ``shed`` (the registry's) keeps all rings together within ``OUTPUT_BUDGET``.
    """

    def pump() -> None:
        popen = process.popen
        assert popen.stdout is not None
        assert popen.stderr is not None
        sel = selectors.DefaultSelector()
        for index, pipe in enumerate((popen.stdout, popen.stderr)):
            widen_pipe(pipe.fileno())
            sel.register(pipe.fileno(), selectors.EVENT_READ, index)
        deadline = None if timeout is None else process.started + timeout
        try:
            while sel.get_map():
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(wait)
                if deadline is not None and time.monotonic() >= deadline and not process.timed_out:
                    process.timed_out = True
                    kill_group(popen.pid)
                    deadline = time.monotonic() + KILL_GRACE
                elif deadline is not None and process.timed_out and time.monotonic() >= deadline:
                    break
                for key, _ in events:
                    data = os.read(key.fd, PUMP_READ)
                    grown = 0
                    with process.cond:
                        ring = process.rings[key.data]
                        if data:
                            grown = ring.append(data)
                        else:
                            ring.eof = True
                            sel.unregister(key.fd)
                        process.cond.notify_all()
                    if grown > 0:
                        shed(grown)
        finally:
            sel.close()
            process.finish(popen.wait())
            with process.cond:
                for ring in process.rings:
                    ring.eof = True
                process.cond.notify_all()
            with contextlib.suppress(OSError):
                popen.stdout.close()
                popen.stderr.close()

    threading.Thread(target=pump, name=f"pump-{process.id}", daemon=True).start()


def stream_background(ex: Exchange, process: Process, stdin_data: bytes, *, stdin: bool) -> None:
    """Stream a background process's rings to this client (and this body to its stdin)."""
    popen = process.popen
    body = ex.body
    offsets = [0, 0]
    writer: threading.Thread | None = None
    if stdin and popen.stdin is not None:
        writer = threading.Thread(target=feed_stdin, args=(popen, body, stdin_data), daemon=True)
        try:
            writer.start()
        except RuntimeError:  # out of pids: the process gets no stdin
            writer = None
            with contextlib.suppress(OSError):
                popen.stdin.close()
    while True:
        with process.cond:
            ready = [process.rings[i].end > offsets[i] for i in (0, 1)]
            finished = process.exit_code is not None and all(r.eof for r in process.rings)
            if not any(ready) and not finished:
                process.cond.wait(1.0)
                ready = [process.rings[i].end > offsets[i] for i in (0, 1)]
            pieces: list[Buffer] = []
            for i in (0, 1):
                if ready[i]:
                    lost, data = process.rings[i].read(offsets[i], CHUNK)
                    if lost:
                        pieces += json_frame(b"G", {"stream": i + 1, "omitted": lost})
                    offsets[i] += lost + len(data)
                    pieces += frame(STREAM_KINDS[i], data)
            done = finished and not any(ready)
        if pieces:
            ex.send_chunk(pieces)
        elif (writer is None or not writer.is_alive()) and peek_client(ex.conn) == "gone":
            raise ClientGone("client went away")
        if done:
            ex.send_chunk(json_frame(b"X", process.exit_payload()))
            ex.end_chunked()
            break
    if writer is not None:
        writer.join(LINGER_SECONDS)
        if writer.is_alive():
            ex.close = True


def feed_stdin(popen: subprocess.Popen[bytes], body: Body, first: bytes) -> None:
    """Copy the request body into a background process's stdin, then close it."""
    assert popen.stdin is not None
    try:
        data = first
        while True:
            if data:
                popen.stdin.write(data)
                popen.stdin.flush()
            data = body.read()
            if not data:
                break
    except (OSError, ClientGone, RequestError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            popen.stdin.close()


def peek_client(conn: Conn) -> str:
    """``gone`` when the peer closed its end, ``data`` when it sent more, else ``idle``."""
    if conn.tls:  # no MSG_PEEK through TLS: receive into buf, which readers consume first
        return "data" if len(conn.buf) >= MAX_HEADER_BYTES else conn.receive_nowait()
    assert isinstance(conn.sock, socket.socket)
    try:
        conn.sock.setblocking(False)
        return "data" if conn.sock.recv(1, socket.MSG_PEEK) else "gone"
    except (BlockingIOError, InterruptedError):
        return "idle"
    except OSError:
        return "gone"
    finally:
        with contextlib.suppress(OSError):
            conn.sock.settimeout(IO_TIMEOUT)


def handle_processes(ex: Exchange) -> None:
    parts = ex.request.path.split("/")  # "", "processes", [id], [action]
    registry = ex.server.registry
    method = ex.request.method
    if len(parts) == 2:
        require_method(ex, "GET")
        ex.send_json(200, [p.info() for p in registry.list()])
        return
    pid_id = parts[2]
    if not valid_process_id(pid_id):
        raise RequestError(
            400, "bad_request", f"malformed process id {_printable(pid_id, 40)!r} (p<number>)"
        )
    action = parts[3] if len(parts) == 4 else None
    if len(parts) > 4 or action not in (None, "output", "signal"):
        raise RequestError(404, "not_found", "no such endpoint")
    # Nothing else rides in the query: a client that failed to quote an id ("p1?x=y")
    # must not reach process p1.
    allowed = {"signal"} if action == "signal" else set()
    unexpected = sorted(set(parse_query(ex.request.query)) - allowed)
    if unexpected:
        raise RequestError(
            400, "bad_request", f"unexpected query parameter {_printable(unexpected[0], 40)!r}"
        )
    process = registry.get(pid_id)
    if action is None:
        require_method(ex, "GET", "DELETE")
        if method == "DELETE":
            if process.exit_code is None:
                kill_group(process.popen.pid)
            if not process.background:
                ex.send_json(200, process.info())
                return
            registry.forget(process)
        ex.send_json(200, process.info())
    elif action == "signal":
        require_method(ex, "POST")
        text = parse_query(ex.request.query).get("signal", "15")
        signum = decimal(text)
        if signum is None or not 0 < signum < 65:
            raise RequestError(400, "bad_request", "'signal' must be a signal number")
        if process.exit_code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signum)
        ex.send_json(200, process.info())
    else:
        require_method(ex, "GET")
        if not process.background:
            raise RequestError(
                409, "not_background", "only background processes can be attached to"
            )
        if process.evicted:
            raise RequestError(
                410,
                "output_evicted",
                f"{process.id} finished (exit code {process.exit_code}) and its output was"
                " dropped to keep background processes' output within the daemon's budget"
                f" ({OUTPUT_BUDGET >> 20} MiB in all; the output of those that finished"
                " longest ago goes first)",
                exit_code=process.exit_code,
            )
        ex.begin_chunked("application/x-commandlab-frames")
        ex.send_chunk(json_frame(b"S", {"id": process.id, "pid": process.popen.pid}))
        stream_background(ex, process, b"", stdin=False)


def valid_process_id(text: str) -> bool:
    """Whether ``text`` is an id as the registry makes them: ``p`` and a number."""
    digits = text[1:]
    return (
        text[:1] == "p"
        and 0 < len(digits) <= 18
        and digits.isascii()
        and digits.isdigit()
        and digits[0] != "0"
    )


def require_method(ex: Exchange, *methods: str) -> None:
    if ex.request.method not in methods:
        raise RequestError(
            405,
            "method_not_allowed",
            f"{ex.request.method} is not allowed here",
            allow=list(methods),
        )


def resolve_path(ex: Exchange, params: Mapping[str, str]) -> str:
    path = params.get("path")
    if not path:
        raise RequestError(400, "bad_path", "missing 'path' query parameter")
    if "\x00" in path:
        raise RequestError(400, "bad_path", "path must not contain NUL")
    return os.path.join(ex.server.workdir, path)


def file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def open_for_read(path: str, max_size: int | None) -> tuple[int, int]:
    """A descriptor of the regular file ``path`` and its size, within ``max_size``."""
    try:  # O_NONBLOCK: opening a FIFO must not hang the request
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise os_error(exc, path) from None
    info = os.fstat(fd)
    problem: RequestError | None = None
    if stat.S_ISDIR(info.st_mode):
        problem = RequestError(400, "is_a_directory", f"is a directory: {path}", path=path)
    elif not stat.S_ISREG(info.st_mode):
        problem = RequestError(400, "not_a_regular_file", f"not a regular file: {path}", path=path)
    elif max_size is not None and info.st_size > max_size:
        problem = RequestError(
            413,
            "file_too_large",
            f"{path} is {info.st_size} bytes, more than the limit of {max_size}",
            path=path,
            size=info.st_size,
        )
    if problem is not None:
        os.close(fd)
        raise problem
    return fd, info.st_size


def handle_get_file(ex: Exchange) -> None:
    params = parse_query(ex.request.query)
    path = resolve_path(ex, params)
    max_size: int | None = None
    if "max_size" in params:
        max_size = decimal(params["max_size"])
        if max_size is None:
            raise RequestError(400, "bad_request", "'max_size' must be a non-negative integer")
    user = resolve_user(params.get("user"))
    if user is None:
        fd, size = open_for_read(path, max_size)
    else:
        with FileAgent(user, {"op": "read", "path": path, "max_size": max_size}) as agent:
            reply, fd = agent.receive()
            size = int(reply["size"])
    with open(fd, "rb", buffering=0) as source:
        if size == 0:  # maybe a pseudo file (/proc, /sys) whose size is unknown
            cap = MAX_PSEUDO_FILE if max_size is None else min(max_size, MAX_PSEUDO_FILE)
            try:
                data = source.read(cap + 1)
            except OSError as exc:
                raise os_error(exc, path) from None
            if len(data) > cap:
                raise RequestError(
                    413,
                    "file_too_large",
                    f"{path} has no size and is longer than {cap} bytes",
                    path=path,
                    size=None,
                )
            ex.begin(
                200,
                [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))],
            )
            if ex.request.method != "HEAD":
                ex.conn.send(data)
            return
        ex.begin(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        if ex.request.method == "HEAD":
            return
        try:
            sent = ex.conn.sock.sendfile(source, 0, size)
        except (OSError, ValueError) as exc:
            raise ClientGone(f"send failed: {exc!r}") from None
        if sent < size:  # the file shrank: the announced length cannot be honoured
            ex.close = True


class Upload:
    """A file being written: aside under a temporary name, or (``in_place``) over itself.

    ``dir_fd`` is its directory and ``name`` its name there (see ``open_parent``).
    """

    def __init__(
        self,
        path: str,
        dir_fd: int,
        name: str,
        fd: int,
        temp_name: str,
        in_place: bool,
        existing: os.stat_result | None,
    ) -> None:
        self.path = path
        self.dir_fd = dir_fd
        self.name = name
        self.fd = fd
        self.temp_name = temp_name
        self.in_place = in_place
        self.existing = existing


def parse_mode(text: str | None) -> int | None:
    if text is None:
        return None
    if not text or len(text) > 4 or not set(text) <= set("01234567"):
        raise RequestError(400, "bad_mode", f"mode must be an octal number like 644, got {text!r}")
    return int(text, 8)


def open_parent(path: str) -> tuple[int, str]:
    """A descriptor of ``path``'s directory (created as needed) and its last component.

    The path is walked a component at a time, each opened without following it from
    the descriptor of the one before, so nothing swapped in meanwhile can send the write
    elsewhere.  A symlink on the way is followed only when it is root's or ours: one
    that another user planted could point anywhere (a root daemon writing into their
    home would write into /etc), and is refused.
    """
    names = [name for name in path.split("/") if name]
    if not names:
        raise RequestError(400, "is_a_directory", f"path names a directory: {path}", path=path)
    name = names.pop()
    pending = names[::-1]
    trusted = (0, os.geteuid())
    follows = 0
    fd = os.open("/" if path.startswith("/") else ".", WALK_FLAGS | os.O_DIRECTORY)
    try:
        while pending:
            part = pending.pop()
            try:
                child = os.open(part, WALK_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, WALK_FLAGS, dir_fd=fd)
            target = None
            try:
                info = os.fstat(child)
                if stat.S_ISLNK(info.st_mode):
                    if info.st_uid not in trusted:
                        raise RequestError(
                            403,
                            "permission_denied",
                            f"{path}: {part!r} on the way is a symlink of uid {info.st_uid},"
                            " not followed (a symlink of another user could point anywhere;"
                            " write as that user instead)",
                            path=path,
                        )
                    target = os.readlink("", dir_fd=child)  # the link opened, not a name
                elif not stat.S_ISDIR(info.st_mode):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            except BaseException:
                os.close(child)
                raise
            if target is None:  # a directory: go in
                fd, child = child, fd
                os.close(child)
                continue
            os.close(child)
            follows += 1
            if follows > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            pending.extend(piece for piece in target.split("/")[::-1] if piece)
            if target.startswith("/"):
                root = os.open("/", WALK_FLAGS | os.O_DIRECTORY)
                fd, root = root, fd
                os.close(root)
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def open_for_write(path: str) -> Upload:
    """Create ``path``'s parents and open where its new content goes."""
    if path.endswith("/"):
        raise RequestError(400, "is_a_directory", f"path names a directory: {path}", path=path)
    try:
        dir_fd, name = open_parent(path)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        return open_in(dir_fd, name, path)
    except BaseException:
        os.close(dir_fd)
        raise


def open_in(dir_fd: int, name: str, path: str) -> Upload:
    """Open the new content of ``name`` in the directory ``dir_fd`` (see open_for_write)."""
    existing: os.stat_result | None = None
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error(exc, path) from None
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        existing = None  # a symlink there is replaced, never written through
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise RequestError(400, "is_a_directory", f"is a directory: {path}", path=path)
        # The file is replaced by a rename, which its own permissions would not stop:
        # honour them the way an in-place write would.
        if not os.access(name, os.W_OK, dir_fd=dir_fd):
            raise RequestError(403, "permission_denied", f"permission denied: {path}", path=path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        temp_name = UPLOAD_PREFIX + os.urandom(6).hex()
        try:
            fd = os.open(temp_name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except PermissionError:
            break
        except OSError as exc:
            raise os_error(exc, path) from None
        return Upload(path, dir_fd, name, fd, temp_name, False, existing)
    else:
        raise os_error(FileExistsError(errno.EEXIST, "no free temporary name"), path)
    if existing is None or not stat.S_ISREG(existing.st_mode):
        raise os_error(PermissionError(errno.EACCES, "permission denied"), path)
    # A writable file in a directory we cannot write: overwrite it in place.
    try:
        fd = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise os_error(exc, path) from None
    return Upload(path, dir_fd, name, fd, name, True, existing)


def finish_write(upload: Upload, mode: int | None, umask: int) -> None:
    """Give the new content its mode and the old file's owner, and put it in place."""
    try:
        if not upload.in_place:
            existing = upload.existing
            if existing is not None:
                with contextlib.suppress(OSError):  # only root may give a file away
                    os.fchown(upload.fd, existing.st_uid, existing.st_gid)
            if mode is None:
                mode = stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~umask
            os.fchmod(upload.fd, mode)
            # A rename replaces a name, never follows it: whatever was swapped in there.
            os.replace(
                upload.temp_name, upload.name, src_dir_fd=upload.dir_fd, dst_dir_fd=upload.dir_fd
            )
    except OSError as exc:
        raise os_error(exc, upload.path) from None
    finally:
        os.close(upload.fd)
        os.close(upload.dir_fd)


def abort_write(upload: Upload) -> None:
    os.close(upload.fd)
    if not upload.in_place:
        with contextlib.suppress(OSError):
            os.unlink(upload.temp_name, dir_fd=upload.dir_fd)
    os.close(upload.dir_fd)


def receive_body(ex: Exchange, fd: int, path: str) -> int:
    """Copy the request body into ``fd``; returns its size."""
    size = 0
    while True:
        chunk = ex.body.read(CHUNK)
        if not chunk:
            return size
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except OSError as exc:
                raise os_error(exc, path) from None
        size += len(chunk)


def handle_put_file(ex: Exchange) -> None:
    params = parse_query(ex.request.query)
    path = resolve_path(ex, params)
    mode = parse_mode(params.get("mode"))
    user = resolve_user(params.get("user"))
    if user is None:
        upload = open_for_write(path)
        try:
            size = receive_body(ex, upload.fd, path)
        except BaseException:
            abort_write(upload)
            raise
        finish_write(upload, mode, ex.server.umask)
    else:
        request = {"op": "write", "path": path, "mode": mode, "umask": ex.server.umask}
        with FileAgent(user, request) as agent:
            _, fd = agent.receive()
            try:
                size = receive_body(ex, fd, path)
            finally:
                os.close(fd)
            agent.commit()
    ex.send_json(200, {"path": path, "size": size})


# --------------------------------------------------------------------------
# Files as another user.  A root daemon must not open paths on a user's behalf (the
# kernel would check root's permissions, and a path can be swapped under a check), so a
# short-lived agent process with the user's credentials does the path work: it opens
# the file and passes the descriptor back over a socket pair; for a write it also puts
# the new content in place once the daemon has copied the body in.

# The agent imports this file as a module rather than running it as a script: a module's
# compiled bytecode is cached (the image compiles it), which halves the agent's start.
AGENT_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "__import__(sys.argv[2]).file_agent(int(sys.argv[3]))"
)
AGENT_MODULE = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.splitext(os.path.basename(__file__))[0],
)
AGENT_TIMEOUT = 30.0  # seconds the agent may take to start and answer
MAX_AGENT_MESSAGE = 64 * 1024


class FileAgent:
    """The daemon's side of one file operation done by an agent running as ``user``."""

    def __init__(self, user: RunAs, request: dict[str, Any]) -> None:
        import subprocess  # lazy

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", AGENT_BOOT, *AGENT_MODULE, str(theirs.fileno())],
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                user=user.uid,
                group=user.gid,
                extra_groups=user.groups,
            )
        except OSError as exc:
            ours.close()
            raise spawn_failure(exc, sys.executable, "/") from None
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(AGENT_TIMEOUT)
        try:
            self.sock.send(json.dumps(request).encode())
        except OSError as exc:  # it died at once: reap it, then say so
            self.__exit__()
            raise RequestError(500, "io_error", f"the file agent did not start: {exc}") from None

    def receive(self) -> tuple[dict[str, Any], int]:
        """The agent's reply and the descriptor it opened; its RequestError re-raised."""
        reply, fds = self._reply()
        if not fds:
            raise RequestError(500, "io_error", "the file agent sent no descriptor")
        return reply, fds[0]

    def commit(self) -> None:
        """Tell the agent the content is written, and wait until it is in place."""
        self.sock.send(b"commit")
        self._reply()

    def _reply(self) -> tuple[dict[str, Any], list[int]]:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_AGENT_MESSAGE, 1)
        except OSError as exc:
            raise RequestError(500, "io_error", f"the file agent did not answer: {exc}") from None
        if not data:
            raise RequestError(500, "io_error", "the file agent exited without answering")
        reply = json.loads(data)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise RequestError(reply["status"], reply["error"], reply["message"], **reply["extra"])
        return reply, fds

    def __enter__(self) -> FileAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()  # an agent still waiting takes this as "abort"
        try:
            self.popen.wait(AGENT_TIMEOUT)
        except Exception:
            self.popen.kill()
            self.popen.wait()


def file_agent(fd: int) -> None:
    """The agent's side (``AGENT_BOOT``), running as the user."""
    sock = socket.socket(fileno=fd)
    request = json.loads(sock.recv(MAX_AGENT_MESSAGE))
    try:
        if request["op"] == "read":
            opened, size = open_for_read(request["path"], request["max_size"])
            socket.send_fds(sock, [json.dumps({"size": size}).encode()], [opened])
            return
        upload = open_for_write(request["path"])
        socket.send_fds(sock, [b"{}"], [upload.fd])
        if sock.recv(16) != b"commit":  # the daemon gave up: the body never came whole
            abort_write(upload)
            return
        finish_write(upload, request["mode"], request["umask"])
        sock.send(b"{}")
    except RequestError as exc:
        error = {"status": exc.status, "error": exc.code, "message": exc.message}
        sock.send(json.dumps({**error, "extra": exc.extra}).encode())


def stat_payload(path: str, info: os.stat_result) -> dict[str, Any]:
    return {
        "path": path,
        "type": file_type(info.st_mode),
        "size": info.st_size,
        "mode": stat.S_IMODE(info.st_mode),
        "mtime": info.st_mtime,
        "uid": info.st_uid,
        "gid": info.st_gid,
    }


def handle_stat(ex: Exchange) -> None:
    path = resolve_path(ex, parse_query(ex.request.query))
    try:
        info = os.stat(path)
    except OSError as exc:
        raise os_error(exc, path) from None
    ex.send_json(200, stat_payload(path, info))


def handle_list(ex: Exchange) -> None:
    path = resolve_path(ex, parse_query(ex.request.query))
    entries: list[dict[str, Any]] = []
    truncated = False
    try:
        with os.scandir(path) as listing:
            for entry in listing:
                if len(entries) >= MAX_LIST_ENTRIES:
                    truncated = True
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append(
                    {
                        "name": os.fsdecode(entry.name)
                        if isinstance(entry.name, bytes)
                        else entry.name,
                        "type": file_type(info.st_mode),
                        "size": info.st_size,
                        "mode": stat.S_IMODE(info.st_mode),
                        "mtime": info.st_mtime,
                    }
                )
    except OSError as exc:
        raise os_error(exc, path) from None
    entries.sort(key=lambda e: str(e["name"]))
    ex.send_json(200, {"path": path, "entries": entries, "truncated": truncated})


def handle_health(ex: Exchange) -> None:
    # The loop answers GET and HEAD itself; this row exists so others get 405.
    ex.send_json(200, ex.server.health_payload())


ROUTES: dict[str, dict[str, Callable[[Exchange], None]]] = {
    "/health": {"GET": handle_health, "HEAD": handle_health},
    "/exec": {"POST": handle_exec},
    "/files": {"GET": handle_get_file, "HEAD": handle_get_file, "PUT": handle_put_file},
    "/files/stat": {"GET": handle_stat},
    "/files/list": {"GET": handle_list},
}


def find_endpoint(request: Request) -> Callable[[Exchange], None]:
    if request.path == "/processes" or request.path.startswith("/processes/"):
        return handle_processes
    methods = ROUTES.get(request.path)
    if methods is None:
        raise RequestError(404, "not_found", "no such endpoint")
    endpoint = methods.get(request.method)
    if endpoint is None:
        raise RequestError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}",
            allow=sorted(methods),
        )
    return endpoint


# --------------------------------------------------------------------------
# the server: one loop thread for connections and headers, a bounded worker pool


def tls_failure(exc: BaseException) -> str | None:
    """A terse reason for a failed handshake; None for a peer that merely went away."""
    import ssl

    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return None
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return _printable(str(exc.reason), 80)
    if isinstance(exc, OSError) and exc.strerror:
        return _printable(exc.strerror, 80)
    return type(exc).__name__


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp} {text}\n")
        sys.stderr.flush()


def _printable(text: str, limit: int = 200) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def memory_limit() -> int:
    """The sandbox's memory limit in bytes (its cgroup's, v2 or v1), else the machine's."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        physical = 1 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                text = file.read(64).strip()
        except OSError:
            continue
        if text.isdigit():
            return max(1, min(int(text), physical))
        break  # "max": no limit
    return max(1, physical)


def would_block(exc: OSError) -> bool:
    """Whether a non-blocking send or receive only has to wait (plain or TLS)."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return True
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


def listen(config: Config) -> socket.socket:
    """The listening socket: TCP on host and port, or the Unix socket at ``socket_path``."""
    path = config.socket_path
    if path is None:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.host, config.port))
        listener.listen(1024)
    else:
        # Bound under another name and renamed into place once it listens: the client
        # moves the socket out of the sandbox's reach the moment it appears, so it must
        # appear ready (see the client's socket_dirs.py).
        staging = f"{path}.{os.getpid()}.tmp"
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)  # a previous daemon's: nothing listens on it any more
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(staging)
        # The client's host user is rarely the sandbox's: the host directory guards access.
        os.chmod(staging, 0o666)
        listener.listen(1024)
        os.rename(staging, path)
    listener.setblocking(False)
    return listener


class Server:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        base_env: Mapping[str, str],
        umask: int,
        workdir: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.tls = tls  # None: plain HTTP
        self.registry = registry
        self.base_env = dict(base_env)
        self.umask = umask
        self.workdir = workdir
        self.started = time.monotonic()
        self.deadline = None if config.ttl is None else self.started + config.ttl
        self.listener = listen(config)
        self.port = 0 if config.socket_path else self.listener.getsockname()[1]
        # Bounds on what clients that have not authenticated can make the daemon hold,
        # from the sandbox's memory: however many connect, they cannot exhaust it.
        memory = memory_limit()
        cost = CONNECTION_COST if tls is None else TLS_CONNECTION_COST
        self.max_connections = max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, memory // 4 // cost))
        self.preauth_budget = max(PREAUTH_MIN, min(PREAUTH_MAX, memory // PREAUTH_SHARE))
        self.preauth = 0  # bytes buffered by unauthenticated connections
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}  # owned by the loop, registered in the selector
        self.returned: deque[Conn] = deque()  # handed back by workers
        self.lock = threading.Lock()
        self.jobs: deque[tuple[Conn, Request]] = deque()
        self.jobs_ready = threading.Condition(self.lock)
        self.workers = 0
        self.idle = 0
        self.busy_conns = 0  # connections held by workers or queued
        # When a worker thread could not be started for queued jobs (out of pids or
        # memory) and no worker was idle: retried, then refused after STARVED_GRACE.
        self.starved_since: float | None = None

    # -- loop side ---------------------------------------------------------

    def serve_forever(self, on_expiry: Callable[[], object] | None = None) -> None:
        """Serve until the process ends; ``on_expiry`` is called at the TTL (it exits).

        The TTL is checked here rather than by a timer thread: one thread (one of the
        sandbox's pids) fewer, and nothing to fail to start.
        """
        next_sweep = time.monotonic() + 0.5
        while True:
            for key, _ in self.selector.select(0.5):
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fileobj is self.wake_r:
                    self.take_returned()
                else:
                    self.readable(key.data)
            now = time.monotonic()
            if on_expiry is not None and self.deadline is not None and now >= self.deadline:
                on_expiry()
            if now >= next_sweep:
                next_sweep = now + 0.5
                for conn in [c for c in self.conns.values() if c.deadline <= now]:
                    self.drop(conn)
                if self.starved_since is not None:
                    self.unstarve(now)

    def accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: retry on the next event
                _log(f"accept failed: {exc!r}")
                return
            if len(self.conns) + self.busy_conns >= self.max_connections:
                victims = [c for c in self.conns.values() if not c.authenticated] or list(
                    self.conns.values()
                )
                if victims:
                    self.drop(min(victims, key=lambda c: c.deadline))
                else:
                    sock.close()
                    continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = str(address[0]) if isinstance(address, tuple) else "-"
            if self.tls is None:
                conn = Conn(sock, peer)
            else:  # the handshake is driven by the loop, within HEADER_DEADLINE
                try:
                    wrapped = self.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError):
                    sock.close()
                    continue
                conn = Conn(TLSSocket(wrapped), peer)
            self.watch(conn)

    def watch(self, conn: Conn) -> None:
        self.conns[conn.sock.fileno()] = conn
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def unwatch(self, conn: Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)

    def want(self, conn: Conn, events: int) -> None:
        """Wait for ``events`` on a watched connection (TLS may need to write to read)."""
        if self.selector.get_key(conn.sock).events != events:
            self.selector.modify(conn.sock, events, conn)

    def drop(self, conn: Conn) -> None:
        self.preauth -= conn.charged
        conn.charged = 0
        self.unwatch(conn)
        conn.close()

    def watched(self, conn: Conn) -> bool:
        """Whether the loop still owns ``conn`` (not dropped, not handed to a worker)."""
        return self.conns.get(conn.sock.fileno()) is conn

    def recharge(self, conn: Conn) -> bool:
        """Count what ``conn`` buffers before authenticating; shed the largest such
        buffers past the budget. Whether ``conn`` is still open."""
        owed = 0 if conn.authenticated or conn.draining else len(conn.buf)
        self.preauth += owed - conn.charged
        conn.charged = owed
        if self.preauth > self.preauth_budget:
            # Heads that grow without ending: a real client's fits in one read and
            # authenticates at once, so it is never among the largest.
            victims = sorted(
                (c for c in self.conns.values() if c.charged), key=lambda c: -c.charged
            )
            for victim in victims:
                if self.preauth <= self.preauth_budget * 3 // 4:
                    break
                self.drop(victim)
        return self.watched(conn)

    def flush(self, conn: Conn) -> None:
        """Send what is left of a reply; go on with the connection's pipeline once sent."""
        try:
            sent = conn.sock.send(conn.out)
        except OSError as exc:
            if not would_block(exc):
                self.drop(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        if conn.close_after:
            self.drop(conn)
            return
        self.want(conn, selectors.EVENT_READ)
        conn.deadline = time.monotonic() + IDLE_TIMEOUT
        self.serve_buffered(conn)
        if conn.tls and self.watched(conn) and not conn.out and conn.pending():
            self.readable_tls(conn)

    def take_returned(self) -> None:
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass
        while True:
            with self.lock:
                if not self.returned:
                    return
                conn = self.returned.popleft()
                self.busy_conns -= 1
            conn.sock.setblocking(False)
            conn.deadline = time.monotonic() + IDLE_TIMEOUT
            self.watch(conn)
            if conn.tls and conn.pending():
                self.readable(conn)
            elif conn.buf:
                self.serve_buffered(conn)

    def readable(self, conn: Conn) -> None:
        if conn.out:
            self.flush(conn)
            return
        if conn.tls:
            self.readable_tls(conn)
            return
        try:
            data = conn.sock.recv(self.read_size(conn))
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"":
            self.drop(conn)
            return
        if conn.draining:
            return
        if data:
            if not conn.buf:  # the first byte of a request starts its header deadline
                conn.deadline = time.monotonic() + HEADER_DEADLINE
            conn.buf += data
            if not self.recharge(conn):
                return
        self.serve_buffered(conn)

    @staticmethod
    def read_size(conn: Conn) -> int:
        """How much to read: before authenticating, no more than a head may hold."""
        if conn.authenticated:
            return CHUNK
        return max(1, min(CHUNK, MAX_HEADER_BYTES + 4 - len(conn.buf)))

    def readable_tls(self, conn: Conn) -> None:
        """``readable`` for TLS: advance the handshake, then read what can be decrypted.

        Nothing here waits.  The SSL would-block errors are OSErrors: caught first.
        """
        import ssl

        sock = conn.sock
        assert isinstance(sock, TLSSocket)
        if conn.handshaking:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self.want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.want(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError) as exc:
                reason = tls_failure(exc)
                if reason:
                    _log(f"{conn.peer} tls handshake failed: {reason}")
                self.drop(conn)
                return
            conn.handshaking = False
        while True:
            try:
                data = sock.recv(self.read_size(conn))
            except ssl.SSLWantReadError:
                self.want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.want(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError):
                data = b""
            if not data:
                self.drop(conn)
                return
            self.want(conn, selectors.EVENT_READ)
            # One record per recv: keep reading what OpenSSL already holds, but never
            # past the socket's own data (an EOF behind a request must not cost it).
            if not conn.draining:
                if not conn.buf:  # the first byte of a request starts its header deadline
                    conn.deadline = time.monotonic() + HEADER_DEADLINE
                conn.buf += data
                if not self.recharge(conn):
                    return
                if sock.pending() and len(conn.buf) <= MAX_HEADER_BYTES:
                    continue
                self.serve_buffered(conn)
            if not self.watched(conn) or conn.out or not sock.pending():
                return  # handed to a worker, dropped, or nothing more buffered

    def serve_buffered(self, conn: Conn) -> None:
        """Serve the complete requests in ``conn.buf`` (a loop: pipelining cannot recurse)."""
        self.serve_requests(conn)
        if self.watched(conn):
            self.recharge(conn)
        else:  # handed to a worker (authenticated) or dropped: it owes nothing
            self.preauth -= conn.charged
            conn.charged = 0

    def serve_requests(self, conn: Conn) -> None:
        while True:
            while conn.buf[:2] == b"\r\n" or conn.buf[:1] == b"\n":  # allowed before a request
                del conn.buf[: 2 if conn.buf[:1] == b"\r" else 1]
            found = head_end(conn.buf)
            if found is None:
                if len(conn.buf) > MAX_HEADER_BYTES:
                    self.reject(conn, RequestError(431, "headers_too_large", "headers too large"))
                return
            end, cut = found
            if end > MAX_HEADER_BYTES:
                self.reject(conn, RequestError(431, "headers_too_large", "headers too large"))
                return
            head = bytes(conn.buf[:end])
            del conn.buf[: end + cut]
            try:
                request = parse_head(head)
            except RequestError as exc:
                self.reject(conn, exc)
                return
            if not authenticate(request.headers, self.config.token_sha256):
                self.reject(
                    conn, RequestError(401, "unauthorized", "missing or invalid token"), request
                )
                return
            conn.authenticated = True
            if request.path == "/health" and request.method in ("GET", "HEAD"):
                if not self.health(conn, request):
                    return
                continue
            self.unwatch(conn)
            self.submit(conn, request)
            return

    def reject(self, conn: Conn, exc: RequestError, request: Request | None = None) -> None:
        """Answer an error from the loop and close (the body, if any, is never read)."""
        _log(f"{conn.peer} {self.target(request)} {exc.status}")
        with contextlib.suppress(OSError):
            conn.sock.send(json_response(exc.status, error_payload(exc), close=True))
            conn.sock.shutdown(socket.SHUT_WR)
        # Keep reading (and dropping) for a moment so the client sees the reply.
        conn.draining = True
        conn.buf.clear()
        conn.deadline = time.monotonic() + LINGER_SECONDS

    def health_payload(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "version": DAEMON_VERSION,
            "uptime": now - self.started,
            "pid": os.getpid(),
            "expires_in": None if self.deadline is None else max(0.0, self.deadline - now),
            "cwd": self.workdir,
            "uid": os.geteuid(),
            "limits": {
                "max_timeout": MAX_TIMEOUT,
                "max_workers": MAX_WORKERS,
                "max_background": MAX_BACKGROUND,
                "max_connections": self.max_connections,
                "preauth_bytes": self.preauth_budget,
            },
            "tls": self.tls is not None,
        }

    def health(self, conn: Conn, request: Request) -> bool:
        """Answer ``/health`` from the loop; whether the connection stays open."""
        close = not request.keep_alive or bool(
            request.headers.get("content-length") or request.headers.get("transfer-encoding")
        )
        data = json_response(200, self.health_payload(), close=close)
        if request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            sent = 0 if would_block(exc) else -1
        _log(f"{conn.peer} {self.target(request)} 200")
        if sent < 0 or (sent == len(data) and close):
            self.drop(conn)
            return False
        conn.deadline = time.monotonic() + IDLE_TIMEOUT
        if sent < len(data):
            # The peer pipelines faster than it reads: hold this reply (and read no
            # more) until it can be sent, rather than drop the connection or buffer.
            conn.out = data[sent:]
            conn.close_after = close
            self.want(conn, selectors.EVENT_WRITE)
            return False
        return True

    @staticmethod
    def target(request: Request | None) -> str:
        return (
            "<malformed request>"
            if request is None
            else _printable(f"{request.method} {request.path}")
        )

    # -- worker side -------------------------------------------------------

    def submit(self, conn: Conn, request: Request) -> None:
        with self.lock:
            self.busy_conns += 1
            self.jobs.append((conn, request))
            if self.idle > 0 or self.workers >= MAX_WORKERS:
                self.jobs_ready.notify()
                return
        if self.start_worker():
            return
        # No thread to be had: the sandbox is out of pids (or memory).  A busy worker
        # takes the job when it is done; unstarve() refuses it if none comes in time.
        with self.lock:
            stranded = self.workers == 0 and bool(self.jobs) and self.jobs[-1][0] is conn
            if stranded:
                self.jobs.pop()
                self.busy_conns -= 1
            elif self.starved_since is None:
                self.starved_since = time.monotonic()
        if stranded:  # nobody will ever take it: answer from here
            self.refuse_starved(conn, request)

    def start_worker(self) -> bool:
        """Start one more worker thread; False when the system will not give us one."""
        with self.lock:
            self.workers += 1
        try:
            threading.Thread(target=self.work, name="worker", daemon=True).start()
        except RuntimeError:  # "can't start new thread": out of pids or memory
            with self.lock:
                self.workers -= 1
            return False
        return True

    def unstarve(self, now: float) -> None:
        """Jobs queued while no thread could be started: retry, then answer 503."""
        with self.lock:
            if not self.jobs or self.idle > 0 or self.workers >= MAX_WORKERS:
                self.starved_since = None  # a worker will take them
                return
            starved_since = self.starved_since
        if self.start_worker():
            with self.lock:
                self.starved_since = None
            return
        if starved_since is None or now - starved_since < STARVED_GRACE:
            return
        with self.lock:
            refused = list(self.jobs)
            self.jobs.clear()
            self.busy_conns -= len(refused)
            self.starved_since = None
        for conn, request in refused:
            self.refuse_starved(conn, request)

    def refuse_starved(self, conn: Conn, request: Request) -> None:
        """Answer a request no worker thread can serve (from the loop) and close."""
        self.watch(conn)
        self.reject(
            conn,
            RequestError(
                503,
                "resource_exhausted",
                "cannot start a thread: the sandbox's process limit (pids) is reached",
                limit="pids",
            ),
            request,
        )

    def work(self) -> None:
        while True:
            with self.lock:
                while not self.jobs:
                    self.idle += 1
                    woken = self.jobs_ready.wait(WORKER_IDLE)
                    self.idle -= 1
                    if not woken and not self.jobs:
                        # Idle for long: give the thread (a pid) back to the sandbox.
                        self.workers -= 1
                        return
                conn, request = self.jobs.popleft()
            keep = False
            try:
                keep = self.handle(conn, request)
            except Exception:
                _log(f"{conn.peer} unhandled error:\n{traceback.format_exc()}")
            if keep:
                with self.lock:
                    self.returned.append(conn)
                with contextlib.suppress(OSError):
                    self.wake_w.send(b"x")
            else:
                with self.lock:
                    self.busy_conns -= 1

    def handle(self, conn: Conn, request: Request) -> bool:
        """Serve one request; whether the connection can take another."""
        conn.sock.settimeout(IO_TIMEOUT)
        try:
            ex = Exchange(self, conn, request)
        except RequestError as exc:  # the body's framing is unusable: answer and close
            _log(f"{conn.peer} {self.target(request)} {exc.status}")
            with contextlib.suppress(ClientGone):
                conn.send(json_response(exc.status, error_payload(exc), close=True))
            conn.linger_close()
            return False
        try:
            find_endpoint(request)(ex)
        except RequestError as exc:
            if ex.started:
                conn.close()
                _log(f"{conn.peer} {self.target(request)} {exc.status} (after the reply began)")
                return False
            extra = [("Allow", ", ".join(exc.extra["allow"]))] if "allow" in exc.extra else None
            try:
                ex.send_json(exc.status, error_payload(exc), extra)
            except ClientGone:
                conn.close()
                return False
        except ClientGone as exc:
            _log(f"{conn.peer} {self.target(request)}: client went away ({exc})")
            conn.close()
            return False
        except MemoryError:  # the sandbox is out of memory: say so if we still can
            if not ex.started:
                with contextlib.suppress(ClientGone, MemoryError):
                    ex.close = True
                    ex.send_json(
                        503,
                        {
                            "error": "resource_exhausted",
                            "message": "the sandbox is out of memory",
                            "limit": "memory",
                        },
                    )
            _log(f"{conn.peer} {self.target(request)}: out of memory")
            conn.close()
            return False
        except Exception as exc:
            if not ex.started:
                with contextlib.suppress(ClientGone):
                    ex.close = True
                    ex.send_json(
                        500, {"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
                    )
            conn.close()
            raise
        _log(f"{conn.peer} {self.target(request)} {ex.status}")
        if ex.close or not ex.body.done:
            if ex.body.done:
                conn.close()
            else:
                conn.linger_close()
            return False
        return True


# --------------------------------------------------------------------------
# entry point


def make_undumpable() -> None:
    """Best effort: keep commands of the same user out of our memory (tokens pass through it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (ImportError, OSError, AttributeError):
        pass


def _fail(message: str, status: int) -> NoReturn:
    print(f"commandlab daemon: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _exit_now(status: int) -> NoReturn:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


def main() -> None:
    """Start the daemon from its environment and serve until a signal or the TTL."""
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        _fail(str(exc), 2)
    oom_adjust = oom_score_adjustable()  # before make_undumpable: see there
    make_undumpable()
    # Commands do not inherit the digest (a digest cannot be presented as a token anyway),
    # nor the TLS key (nor its certificate).
    os.environ.pop(TOKEN_SHA256_ENV, None)
    os.environ.pop(TLS_CERT_ENV, None)
    os.environ.pop(TLS_KEY_ENV, None)
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            tls = tls_context(config.tls_cert, config.tls_key)
        except ConfigError as exc:
            _fail(str(exc), 2)
        config.tls_cert = config.tls_key = None  # loaded: keep no copy around
    umask = os.umask(0)
    os.umask(umask)
    # Small thread stacks: a full worker pool must not cost the sandbox much memory.
    with contextlib.suppress(ValueError, RuntimeError):
        threading.stack_size(512 * 1024)
    registry = Registry(oom_adjust=oom_adjust)
    try:
        server = Server(config, registry, os.environ, umask, os.getcwd(), tls)
    except OSError as exc:
        _fail(f"cannot listen on {config.address}: {exc}", 1)

    def stop(reason: str) -> NoReturn:
        killed = registry.kill_all()
        _log(f"{reason}; killed {killed} process group(s); exiting")
        _exit_now(0)

    signal.signal(signal.SIGTERM, lambda signum, frame: stop(f"received signal {signum}"))
    signal.signal(signal.SIGINT, lambda signum, frame: stop(f"received signal {signum}"))
    # Tools parse the port at the end of this line: nothing may follow it.
    where = config.address if config.socket_path else f"{config.host}:{server.port}"
    print(f"commandlab daemon listening on {where}", file=sys.stderr, flush=True)
    if tls is not None:
        print("commandlab daemon: serving TLS (https)", file=sys.stderr, flush=True)
    server.serve_forever(on_expiry=lambda: stop(f"ttl of {config.ttl}s expired"))


if __name__ == "__main__":
    main()
