"""Host directories that hold the Unix sockets of local sandboxes' daemons.

Each sandbox gets ``<base>/<its name>/``, bind-mounted into it, where its daemon puts
its socket. The base is this user's alone (0700, checked on every use, so another user
cannot plant it in a shared ``/tmp``); the per-sandbox directory is open to all (0777)
because the sandbox's user is rarely this one, and only the base's owner can reach it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["IN_SANDBOX", "SOCKET_NAME", "base_dir", "make", "path_of", "remove"]

IN_SANDBOX = "/run/commandlab"
"""Where the directory is mounted inside the sandbox."""
SOCKET_NAME = "daemon.sock"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL


def base_dir() -> Path:
    """``$COMMANDLAB_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/commandlab``, else a per-user
    directory in the temporary directory."""
    if explicit := os.environ.get("COMMANDLAB_RUNTIME_DIR"):
        return Path(explicit)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "commandlab"
    return Path(tempfile.gettempdir()) / f"commandlab-{os.getuid()}"


def path_of(name: str) -> Path:
    """The host directory of sandbox ``name`` (which may not exist)."""
    return base_dir() / name


def make(name: str) -> Path:
    """Create the directory of sandbox ``name``; return its socket's host path.

    Raises OSError (PermissionError when the base is not this user's private directory,
    ValueError-like OSError when the path is too long for a socket).
    """
    base = base_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{base} must be a directory of this user's with mode 0700 (it holds the keys"
            " to every local sandbox's daemon); remove it or set COMMANDLAB_RUNTIME_DIR"
        )
    directory = base / name
    socket = directory / SOCKET_NAME
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
        raise OSError(f"{socket} is too long for a socket: set a shorter COMMANDLAB_RUNTIME_DIR")
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)  # after mkdir: the umask would take bits away
    return socket


def remove(name: str) -> None:
    """Remove the directory of sandbox ``name`` and its socket, if they exist."""
    shutil.rmtree(path_of(name), ignore_errors=True)
