"""What the client accepts from a daemon: every bound on what it reads, in one place.

Code in a sandbox can serve a daemon of its own on the daemon's socket, so the client
trusts nothing a daemon sends. It reads every reply through the bounds below, and
anything outside them is a :class:`ReplyError`, which the :class:`Computer` raises as
:class:`~commandlab_async.errors.DaemonProtocolError`:

* **Heads** (aiohttp's parser, per request): lines of at most :data:`MAX_LINE` bytes, at
  most :data:`MAX_HEADERS` fields; once a head's first byte has come, the rest within
  :data:`HEAD_TIMEOUT` seconds; one reply per request, nothing unasked
  (:class:`BoundedResponseHandler`, the protocol of every pool :func:`new_session
  <commandlab_async._client.transport.new_session>` makes).
* **JSON replies**: of type ``application/json``, at most :data:`MAX_JSON` bytes
  (:data:`MAX_LISTING` for a directory or process listing) before parsing, no ``NaN``,
  nesting as deep as the parser allows; then each field the client uses is checked for
  its type (:func:`get_str` and friends). Parsing takes at most about 25 times the
  reply's size, briefly.
* **Error replies**: the first :data:`MAX_ERROR_BODY` bytes are read, the rest dropped
  with the connection.
* **Frames** (:class:`~commandlab_async._client.processes.Frames`): ``S``, ``G`` and ``X`` at most
  :data:`MAX_CONTROL_FRAME` bytes; output frames at most :data:`MAX_OUTPUT_FRAME` bytes
  (or a run's ``max_output``, if larger), read in pieces of at most :data:`READ_PIECE`;
  ``run(max_output=N)`` keeps at most ``N`` bytes of each stream by its own count.
* **Files**: read in pieces of at most 1 MiB, and never more than the read's
  ``max_size``.

Messages quote at most :data:`QUOTE` characters of what came.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader

__all__ = [
    "HEAD_TIMEOUT",
    "MAX_CONTROL_FRAME",
    "MAX_ERROR_BODY",
    "MAX_FIELD",
    "MAX_HEADERS",
    "MAX_JSON",
    "MAX_LINE",
    "MAX_LISTING",
    "MAX_OUTPUT_FRAME",
    "QUOTE",
    "READ_PIECE",
    "BoundedResponseHandler",
    "ReplyError",
    "clip",
    "read_body",
    "read_json",
]

KIB = 1024
MIB = 1024 * KIB

MAX_LINE = 8190
"""Bytes of a reply's status line (aiohttp's default)."""
MAX_FIELD = 8190
"""Bytes of one header field (aiohttp's default)."""
MAX_HEADERS = 64
"""Header fields of one reply: the daemon sends five; proxies on the way add a few."""
HEAD_TIMEOUT = 10.0
"""Seconds a reply's head may take from its first byte to its last."""
MAX_INTERIM = 8
"""Informational (1xx) replies before the real one."""
MAX_JSON = 1 * MIB
"""Bytes of a JSON reply (health, stat, process control, write)."""
MAX_LISTING = 4 * MIB
"""Bytes of a directory or process listing (10,000 entries of 255-byte names fit)."""
MAX_ERROR_BODY = 64 * KIB
"""Bytes of an error reply read for its message."""
MAX_CONTROL_FRAME = 64 * KIB
"""Bytes of an ``S``, ``G`` or ``X`` frame (the daemon's are under 200)."""
MAX_OUTPUT_FRAME = 16 * MIB
"""Bytes of an output frame (the daemon's are at most 256 KiB, but for a run's kept tail,
which may be as long as half its ``max_output``)."""
READ_PIECE = 256 * KIB
"""The most the client reads of an output frame at once."""
MAX_TEXT = 64 * KIB
"""Characters of a string field of a reply (a process id, a path...)."""
QUOTE = 80
"""Characters of bad data an error message quotes."""


class ReplyError(Exception):
    """A daemon's reply broke the protocol. The message is short and quotes at most
    :data:`QUOTE` characters of the reply."""


def clip(data: bytes | bytearray | str, limit: int = QUOTE) -> str:
    """A short, printable quote of ``data``."""
    if isinstance(data, bytes | bytearray):
        text = bytes(data[: limit * 4]).decode("utf-8", "replace")
        longer = len(data) > limit * 4 or len(text) > limit
    else:
        text, longer = data, len(data) > limit
    return repr(text[:limit]) + ("…" if longer else "")


# -------------------------------------------------------------------- bodies


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``response``, if it is at most ``limit`` bytes."""
    length = response.content_length
    if length is not None and length > limit:
        raise ReplyError(f"a reply of {length} bytes (at most {limit} are accepted)")
    body = bytearray()
    while piece := await response.content.read(limit + 1 - len(body)):
        body += piece
        if len(body) > limit:
            raise ReplyError(f"a reply of more than {limit} bytes")
    return bytes(body)


async def read_json(response: aiohttp.ClientResponse, limit: int) -> Any:
    """The JSON body of ``response``: of type ``application/json`` and ``limit`` bytes."""
    if response.content_type != "application/json":
        raise ReplyError(f"a reply of type {clip(response.content_type)}, not JSON")
    return parse_json(await read_body(response, limit), "the reply")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number the daemon sends")


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ReplyError(f"{what}: JSON nested too deep") from None
    except ValueError as exc:  # malformed, not UTF-8, an integer of 4,300 digits...
        raise ReplyError(f"{what}: malformed JSON ({clip(str(exc))})") from None


# -------------------------------------------------------------------- shapes


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def expect_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReplyError(f"{what}: expected a JSON object, got {_kind(value)}")
    return value


def expect_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ReplyError(f"{what}: expected a JSON array, got {_kind(value)}")
    return value


def _wrong(what: str, key: str, value: object, expected: str) -> ReplyError:
    return ReplyError(f"{what}: {key!r} is {_kind(value)}, not {expected}")


def get_str(obj: dict[str, Any], key: str, what: str, *, limit: int = MAX_TEXT) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _wrong(what, key, value, "a string")
    if len(value) > limit:
        raise ReplyError(f"{what}: {key!r} is longer than {limit} characters")
    return value


def get_opt_str(obj: dict[str, Any], key: str, what: str, *, limit: int = MAX_TEXT) -> str | None:
    return None if obj.get(key) is None else get_str(obj, key, what, limit=limit)


def get_int(obj: dict[str, Any], key: str, what: str, *, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(what, key, value, "an integer")
    if not low <= value <= high:
        raise ReplyError(f"{what}: {key!r} is out of range [{low}, {high}]")
    return value


def get_opt_int(obj: dict[str, Any], key: str, what: str, *, low: int, high: int) -> int | None:
    return None if obj.get(key) is None else get_int(obj, key, what, low=low, high=high)


def get_number(obj: dict[str, Any], key: str, what: str) -> float:
    value = obj.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _wrong(what, key, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise ReplyError(f"{what}: {key!r} is out of range") from None
    if not math.isfinite(number):
        raise ReplyError(f"{what}: {key!r} is not finite")
    return number


def get_opt_number(obj: dict[str, Any], key: str, what: str) -> float | None:
    return None if obj.get(key) is None else get_number(obj, key, what)


def get_bool(obj: dict[str, Any], key: str, what: str, *, default: bool | None = None) -> bool:
    value = obj.get(key, default)
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise _wrong(what, key, value, "a boolean")
    return value


# -------------------------------------------------------------------- heads


class BoundedResponseHandler(ResponseHandler):
    """aiohttp's protocol of one connection, holding the daemon to the reply it was asked.

    A head must end within :data:`HEAD_TIMEOUT` seconds of its first byte (a daemon that
    drips it would hold the call forever: the time to the first byte is not bounded, for
    a command waits its turn for a worker before its head is sent, and the liveness probe
    is answered by a daemon that drips on purpose); at most :data:`MAX_INTERIM`
    informational replies may come first; and a reply that no request asked for (after
    the one that was) ends the connection instead of queueing in memory.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._refused = False
        self._expecting = False
        self._interim = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def set_response_params(self, **kwargs: Any) -> None:
        self._stop_head_timer()
        self._expecting = True
        self._interim = 0
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if data and self._expecting and self._head_timer is None:
            self._head_timer = self._loop.call_later(HEAD_TIMEOUT, self._head_late)
        super().data_received(data)

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        code = data[0].code
        if self._refused:  # the rest of what came with the reply refused: dropped
            return
        if not self._expecting:
            self._refuse("the daemon sent a reply no request asked for")
            return
        if 100 <= code < 200 and code != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self._refuse(f"more than {MAX_INTERIM} informational replies")
                return
        else:
            self._expecting = False
            self._stop_head_timer()
        super().feed_data(data, size)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._expecting:
            self._refuse(f"the reply's head did not end within {HEAD_TIMEOUT:g}s of its start")

    def _refuse(self, why: str) -> None:
        self._refused = True
        self._expecting = False
        self._stop_head_timer()
        self.set_exception(ReplyError(why))
        if self.transport is not None:
            self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
