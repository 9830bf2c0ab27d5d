"""The file work itself: open a file to read, walk a path to write, put new content in
place, describe a file or a directory.  No HTTP here: the ``/files`` endpoints
(``files.py``) and the file agent running as another user (``file_agent.py``) both use
it, and the agent must start fast, so this imports only ``os``, ``stat`` and ``errno``
(no ``contextlib``).
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import RequestError, os_error
from .protocol import (
    FILE_TOO_LARGE,
    IS_A_DIRECTORY,
    MAX_LIST_ENTRIES,
    NOT_A_REGULAR_FILE,
    PERMISSION_DENIED,
    UPLOAD_PREFIX,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_SYMLINKS = 40  # followed on one path, as the kernel's limit
# Walking a path to write: each component opened as itself (a symlink is not followed).
WALK_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC


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
        problem = RequestError(IS_A_DIRECTORY, f"is a directory: {path}", path=path)
    elif not stat.S_ISREG(info.st_mode):
        problem = RequestError(NOT_A_REGULAR_FILE, f"not a regular file: {path}", path=path)
    elif max_size is not None and info.st_size > max_size:
        problem = RequestError(
            FILE_TOO_LARGE,
            f"{path} is {info.st_size} bytes, more than the limit of {max_size}",
            path=path,
            size=info.st_size,
        )
    if problem is not None:
        os.close(fd)
        raise problem
    return fd, info.st_size


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
        raise RequestError(IS_A_DIRECTORY, f"path names a directory: {path}", path=path)
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
                try:  # noqa: SIM105 (contextlib: see the module's docstring)
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, WALK_FLAGS, dir_fd=fd)
            target = None
            try:
                info = os.fstat(child)
                if stat.S_ISLNK(info.st_mode):
                    if info.st_uid not in trusted:
                        raise RequestError(
                            PERMISSION_DENIED,
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
        raise RequestError(IS_A_DIRECTORY, f"path names a directory: {path}", path=path)
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
            raise RequestError(IS_A_DIRECTORY, f"is a directory: {path}", path=path)
        # The file is replaced by a rename, which its own permissions would not stop:
        # honour them the way an in-place write would.
        if not os.access(name, os.W_OK, dir_fd=dir_fd):
            raise RequestError(PERMISSION_DENIED, f"permission denied: {path}", path=path)
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
                try:  # noqa: SIM105
                    os.fchown(upload.fd, existing.st_uid, existing.st_gid)
                except OSError:  # only root may give a file away
                    pass
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
        try:  # noqa: SIM105
            os.unlink(upload.temp_name, dir_fd=upload.dir_fd)
        except OSError:
            pass
    os.close(upload.dir_fd)


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


def list_directory(path: str) -> tuple[list[dict[str, Any]], bool]:
    """The entries of the directory ``path``, sorted by name, and whether some were left
    out (more than ``MAX_LIST_ENTRIES``)."""
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
                        "uid": info.st_uid,
                        "gid": info.st_gid,
                    }
                )
    except OSError as exc:
        raise os_error(exc, path) from None
    entries.sort(key=lambda e: str(e["name"]))
    return entries, truncated
