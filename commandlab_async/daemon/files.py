"""The ``/files`` endpoints: read (``GET``), write (``PUT``), ``/files/stat`` and
``/files/list``.  The file work is ``fileops``; with ``user=`` an agent running as
that user does it (``file_agent``)."""

from __future__ import annotations

import os

from .connections import CHUNK
from .errors import ClientGone, RequestError, os_error
from .file_agent import FileAgent, read_as
from .fileops import (
    abort_write,
    finish_write,
    list_directory,
    open_for_read,
    open_for_write,
    stat_payload,
)
from .http import parse_query
from .protocol import BAD_MODE, BAD_PATH, BAD_REQUEST, FILE_TOO_LARGE, MAX_PSEUDO_FILE, decimal
from .users import resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .connections import Exchange


def resolve_path(ex: Exchange, params: Mapping[str, str]) -> str:
    path = params.get("path")
    if not path:
        raise RequestError(BAD_PATH, "missing 'path' query parameter")
    if "\x00" in path:
        raise RequestError(BAD_PATH, "path must not contain NUL")
    return os.path.join(ex.server.workdir, path)


def parse_mode(text: str | None) -> int | None:
    if text is None:
        return None
    if not text or len(text) > 4 or not set(text) <= set("01234567"):
        raise RequestError(BAD_MODE, f"mode must be an octal number like 644, got {text!r}")
    return int(text, 8)


def handle_get_file(ex: Exchange) -> None:
    params = parse_query(ex.request.query)
    path = resolve_path(ex, params)
    max_size: int | None = None
    if "max_size" in params:
        max_size = decimal(params["max_size"])
        if max_size is None:
            raise RequestError(BAD_REQUEST, "'max_size' must be a non-negative integer")
    user = resolve_user(params.get("user"))
    if user is None:
        fd, size = open_for_read(path, max_size)
    else:
        fd, size = read_as(user, path, max_size)
    with open(fd, "rb", buffering=0) as source:
        if size == 0:  # maybe a pseudo file (/proc, /sys) whose size is unknown
            cap = MAX_PSEUDO_FILE if max_size is None else min(max_size, MAX_PSEUDO_FILE)
            try:
                data = source.read(cap + 1)
            except OSError as exc:
                raise os_error(exc, path) from None
            if len(data) > cap:
                raise RequestError(
                    FILE_TOO_LARGE,
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
        fields = ("write", path, "" if mode is None else str(mode), str(ex.server.umask))
        with FileAgent(user, *fields) as agent:
            _, fd = agent.receive()
            try:
                size = receive_body(ex, fd, path)
            finally:
                os.close(fd)
            agent.commit()
    ex.send_json(200, {"path": path, "size": size})


def handle_stat(ex: Exchange) -> None:
    path = resolve_path(ex, parse_query(ex.request.query))
    try:
        info = os.stat(path)
    except OSError as exc:
        raise os_error(exc, path) from None
    ex.send_json(200, stat_payload(path, info))


def handle_list(ex: Exchange) -> None:
    path = resolve_path(ex, parse_query(ex.request.query))
    entries, truncated = list_directory(path)
    ex.send_json(200, {"path": path, "entries": entries, "truncated": truncated})
