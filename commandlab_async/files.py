"""Files in a sandbox: what ``stat`` and ``list_dir`` return, and local sources and sinks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio

__all__ = ["FileInfo"]

FileType = Literal["file", "directory", "symlink", "other"]
CHUNK = 1024 * 1024


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
    def from_json(cls, data: dict[str, Any], *, directory: str | None = None) -> FileInfo:
        path = data["path"] if directory is None else os.path.join(directory, data["name"])
        return cls(
            path=path,
            type=data["type"],
            size=int(data["size"]),
            mode=int(data["mode"]),
            mtime=float(data["mtime"]),
            uid=data.get("uid"),
            gid=data.get("gid"),
        )


async def read_local(path: str | os.PathLike[str]) -> AsyncIterator[bytes]:
    """A local file in bounded chunks, read off the event loop."""
    async with await anyio.open_file(path, "rb") as source:
        while chunk := await source.read(CHUNK):
            yield chunk
