"""Files in a sandbox: what ``stat`` and ``list_dir`` return, and local sources and sinks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, cast

import anyio

from .replies import (
    ReplyError,
    expect_list,
    expect_object,
    get_bool,
    get_int,
    get_number,
    get_opt_int,
    get_str,
)

__all__ = ["FileInfo"]

FileType = Literal["file", "directory", "symlink", "other"]
_FILE_TYPES = frozenset({"file", "directory", "symlink", "other"})
CHUNK = 1024 * 1024
_MAX_PATH = 4096  # PATH_MAX, in characters of the daemon's JSON
_MAX_NAME = 1024  # NAME_MAX is 255 bytes; an undecodable one is longer as text
_MAX_ID = 2**32 - 1


@dataclass(frozen=True)
class FileInfo:
    """A path in the sandbox. ``path`` is absolute; ``mode`` holds the permission bits."""

    path: str
    type: FileType
    size: int
    mode: int
    mtime: float
    uid: int | None = None
    gid: int | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @classmethod
    def from_json(cls, data: object, *, directory: str | None = None) -> FileInfo:
        """A daemon's stat (or, with ``directory``, listing entry), each field checked:
        :class:`~.replies.ReplyError` if it is not what the daemon sends."""
        what = "a file's details" if directory is None else "a directory entry"
        info = expect_object(data, what)
        if directory is None:
            path = get_str(info, "path", what, limit=_MAX_PATH)
        else:
            name = get_str(info, "name", what, limit=_MAX_NAME)
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                raise ReplyError(f"{what}: a name that is not a file name")
            path = os.path.join(directory, name)
        kind = get_str(info, "type", what, limit=16)
        if kind not in _FILE_TYPES:
            raise ReplyError(f"{what}: an unknown file type")
        return cls(
            path=path,
            type=cast(FileType, kind),
            size=get_int(info, "size", what, low=0, high=2**63 - 1),
            mode=get_int(info, "mode", what, low=0, high=0o7777),
            mtime=get_number(info, "mtime", what),
            uid=get_opt_int(info, "uid", what, low=0, high=_MAX_ID),
            gid=get_opt_int(info, "gid", what, low=0, high=_MAX_ID),
        )


def parse_listing(data: object) -> list[FileInfo]:
    """A daemon's ``/files/list`` reply, checked."""
    what = "a directory listing"
    reply = expect_object(data, what)
    directory = get_str(reply, "path", what, limit=_MAX_PATH)
    get_bool(reply, "truncated", what, default=False)
    entries = expect_list(reply.get("entries"), what)
    return [FileInfo.from_json(entry, directory=directory) for entry in entries]


async def read_local(source: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    """An open local file in bounded chunks, read off the event loop."""
    while chunk := await source.read(CHUNK):
        yield chunk
