"""HTTP/1.1 as the daemon speaks it: request heads, authentication, replies, the log.

Nothing here blocks or touches a socket: the loop (``server.py``) and the workers
(``connections.py``) do the I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import sys
import time

from .errors import RequestError
from .protocol import (
    BAD_REQUEST,
    HEADERS_TOO_LARGE,
    HTTP_VERSION_NOT_SUPPORTED,
    MAX_HEADER_COUNT,
    METHOD_NOT_ALLOWED,
    TOKEN_HEADER,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
REASONS = {
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


def parse_head(data: bytes) -> Request:
    """Parse a request line and headers (without the final blank line)."""
    text = data.decode("latin-1")
    lines = text.split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3:
        raise RequestError(BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= TOKEN_CHARS:
        raise RequestError(BAD_REQUEST, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise RequestError(HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and 1.1")
        raise RequestError(BAD_REQUEST, "malformed request line")
    if not target.startswith("/") or any(c in target for c in "\x00\r\t"):
        raise RequestError(BAD_REQUEST, "malformed request target")
    headers: dict[str, list[str]] = {}
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise RequestError(HEADERS_TOO_LARGE, "too many headers")
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t":
            raise RequestError(BAD_REQUEST, "folded headers are not supported")
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= TOKEN_CHARS:
            raise RequestError(BAD_REQUEST, "malformed header line")
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    return Request(method, target, version, headers)


_TOKEN_KEY = TOKEN_HEADER.lower()  # parsed header names are lowercased


def presented_token(headers: Mapping[str, list[str]]) -> bytes | None:
    """The token a request presents, as raw bytes; None when absent or ambiguous.

    ``X-CommandLab-Token`` wins: the Kubernetes API server's proxy strips
    ``Authorization`` and Cloud Run's IAM reads it, so an ``Authorization`` beside our
    header may carry someone else's credential and is ignored.  A repeated header that
    would be used is refused rather than guessed at.
    """
    tokens = headers.get(_TOKEN_KEY)
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
        raise RequestError(BAD_REQUEST, f"malformed query: {exc}") from None
    for key, value in pairs:
        if key in result:
            raise RequestError(BAD_REQUEST, f"query parameter {key!r} given twice")
        result[key] = value
    return result


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
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


def require_method(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise RequestError(
            METHOD_NOT_ALLOWED, f"{request.method} is not allowed here", allow=list(methods)
        )


def printable(text: str, limit: int = 200) -> str:
    """``text`` fit for a log line or a message: ASCII, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp} {text}\n")
        sys.stderr.flush()
