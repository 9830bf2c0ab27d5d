"""Host directories that hold the Unix sockets of local sandboxes' daemons.

Each sandbox gets ``<base>/<engine>/<its name>/``, bind-mounted into it, where its
daemon puts its socket (``<engine>`` tells apart the engines ``DOCKER_HOST`` may name, so
that tidying after one never touches another's). The base is this user's alone (0700,
checked on every use, so another user cannot plant it in a shared ``/tmp``); the
per-sandbox directory is open to all (0777) because the sandbox's user is rarely this
one, and only the base's owner can reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

__all__ = [
    "IN_SANDBOX",
    "SOCKET_NAME",
    "base_dir",
    "engine_dir",
    "make",
    "path_of",
    "prune",
    "remove",
]

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


def engine_dir(engine: str | None) -> Path:
    """Where the directories of the sandboxes of ``engine`` (a ``DOCKER_HOST``) go."""
    return base_dir() / hashlib.sha256((engine or "default").encode()).hexdigest()[:8]


def path_of(engine: str | None, name: str) -> Path:
    """The host directory of sandbox ``name`` (which may not exist)."""
    return engine_dir(engine) / name


def make(engine: str | None, name: str) -> Path:
    """Create the directory of sandbox ``name``; return its socket's host path.

    Raises OSError: PermissionError when the base is not this user's private directory,
    a plain OSError when the path is too long for a socket.
    """
    base = base_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{base} must be a directory of this user's with mode 0700 (every local"
            " sandbox's daemon listens in it); remove it or set COMMANDLAB_RUNTIME_DIR"
        )
    directory = path_of(engine, name)
    directory.parent.mkdir(mode=0o700, exist_ok=True)
    socket = directory / SOCKET_NAME
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
        raise OSError(f"{socket} is too long for a socket: set a shorter COMMANDLAB_RUNTIME_DIR")
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)  # after mkdir: the umask would take bits away
    return socket


def remove(engine: str | None, name: str) -> None:
    """Remove the directory of sandbox ``name`` and its socket, if they exist."""
    shutil.rmtree(path_of(engine, name), ignore_errors=True)


def prune(engine: str | None, existing: set[str], *, older_than: float = 600.0) -> list[str]:
    """Remove the directories of sandboxes not in ``existing``; return their names.

    Only directories older than ``older_than`` seconds: a younger one may belong to a
    sandbox whose create is still on its way to the engine.
    """
    pruned = []
    cutoff = time.time() - older_than
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(engine_dir(engine)):
            if entry.name in existing or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                remove(engine, entry.name)
                pruned.append(entry.name)
    return pruned
