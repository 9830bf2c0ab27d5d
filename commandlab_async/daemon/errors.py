"""What goes wrong in a request, as the typed errors the daemon answers with.

Imported by the file agent too (``file_agent.py``), so nothing here imports more than
``errno`` and ``protocol``.
"""

from __future__ import annotations

import errno

from .protocol import (
    BAD_PATH,
    ERROR_STATUS,
    EXEC_FORMAT_ERROR,
    INSUFFICIENT_STORAGE,
    IO_ERROR,
    IS_A_DIRECTORY,
    LIMIT_FILES,
    LIMIT_MEMORY,
    LIMIT_PIDS,
    NOT_A_DIRECTORY,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class RequestError(Exception):
    """Answered as ``{"error": code, "message": message, **extra}`` with the code's status."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = ERROR_STATUS[code]
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
        return RequestError(NOT_FOUND, f"no such file or directory: {path}", path=path)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RequestError(PERMISSION_DENIED, f"{text}: {path}", path=path)
    if code == errno.EISDIR:
        return RequestError(IS_A_DIRECTORY, f"is a directory: {path}", path=path)
    if code == errno.ENOTDIR:
        return RequestError(NOT_A_DIRECTORY, f"not a directory: {path}", path=path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return RequestError(INSUFFICIENT_STORAGE, f"{text}: {path}", path=path)
    if code in (errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST, errno.EINVAL):
        return RequestError(BAD_PATH, f"{text}: {path}", path=path)
    return RequestError(IO_ERROR, f"{text}: {path}", path=path)


def spawn_failure(exc: OSError, program: str, cwd: str) -> RequestError:
    """A typed reply for a command (or the file agent) that could not start."""
    if exc.errno == errno.EAGAIN:
        return RequestError(
            RESOURCE_EXHAUSTED,
            "cannot start a process: the sandbox's process limit (pids) is reached",
            limit=LIMIT_PIDS,
        )
    if exc.errno == errno.ENOMEM:
        return RequestError(
            RESOURCE_EXHAUSTED,
            "cannot start a process: the sandbox is out of memory",
            limit=LIMIT_MEMORY,
        )
    if exc.errno == errno.EMFILE or exc.errno == errno.ENFILE:
        return RequestError(
            RESOURCE_EXHAUSTED, "cannot start a process: too many open files", limit=LIMIT_FILES
        )
    if exc.errno == errno.ENOEXEC:
        return RequestError(EXEC_FORMAT_ERROR, f"not an executable format: {program}", path=program)
    where = cwd if getattr(exc, "filename", None) == cwd else program
    if exc.errno == errno.ENOENT and where == program:
        return RequestError(NOT_FOUND, f"no such program: {program}", path=program)
    return os_error(exc, where)
