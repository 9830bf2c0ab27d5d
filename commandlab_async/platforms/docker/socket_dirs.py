"""Host directories that hold the Unix sockets of local sandboxes' daemons.

A sandbox's daemon cannot be handed a listening socket, so it makes its own: in
``<base>/<engine>/<its name>/``, bind-mounted into it (``<engine>`` tells apart the
engines ``DOCKER_HOST`` may name, so that tidying after one never touches another's). The
daemon binds its socket under a temporary name and renames it into place once it
listens. The moment it appears, the client *seals* it (:func:`seal`): it moves the socket
out to ``<base>/<engine>/<its name>.sock`` and deletes the mounted directory.

From then on the sandbox shares nothing with the host's file system:

- a deleted directory takes no new entries, whoever asks (root and ``CAP_DAC_OVERRIDE``
  included): the sandbox cannot write a byte into the host's disk through it;
- the socket's path lies outside every mount of the sandbox: no code in it, whatever its
  user, can rename, replace or symlink it, so the client's token only ever reaches the
  daemon that was listening when the sandbox came up;
- the socket still reaches the daemon: a listening Unix socket belongs to its inode, not
  to the name it was bound under.

Before the seal only the image's own start-up runs. The base is this user's alone (0700,
checked on every use, so another user cannot plant it in a shared ``/tmp``); the mounted
directory is writable by all (the sandbox's user is rarely this one) and sticky, so even
in that window one user of the sandbox cannot replace another's socket.
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
    "SocketTampered",
    "base_dir",
    "engine_dir",
    "make",
    "path_of",
    "prune",
    "remove",
    "seal",
    "sealed_path",
]

IN_SANDBOX = "/run/commandlab"
"""Where the directory is mounted inside the sandbox."""
SOCKET_NAME = "daemon.sock"
_SEALED_SUFFIX = ".sock"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL


class SocketTampered(OSError):
    """What appeared at the socket's path is not a socket (a symlink, a file...)."""


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
    """The host directory of sandbox ``name`` until it is sealed (which may not exist)."""
    return engine_dir(engine) / name


def sealed_path(engine: str | None, name: str) -> Path:
    """Where sandbox ``name``'s socket lives once sealed (which may not exist)."""
    return engine_dir(engine) / f"{name}{_SEALED_SUFFIX}"


def make(engine: str | None, name: str) -> Path:
    """Create the directory of sandbox ``name``; return the socket's sealed host path.

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
    socket = sealed_path(engine, name)
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
        raise OSError(f"{socket} is too long for a socket: set a shorter COMMANDLAB_RUNTIME_DIR")
    directory.mkdir(mode=0o700)
    directory.chmod(0o1777)  # after mkdir: the umask would take bits away
    return socket


def seal(engine: str | None, name: str) -> Path | None:
    """Move sandbox ``name``'s socket out of its mounted directory and delete that.

    Returns the socket's sealed path, or None while the daemon has not put it in place.
    Idempotent. Raises :class:`SocketTampered` when something else than a socket sits
    at its path.
    """
    directory = path_of(engine, name)
    sealed = sealed_path(engine, name)
    try:
        info = os.lstat(directory / SOCKET_NAME)
    except FileNotFoundError:
        if not directory.exists() and stat.S_ISSOCK(_lmode(sealed)):
            return sealed  # sealed already
        return None
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketTampered(f"{directory / SOCKET_NAME} is not a socket")
    os.rename(directory / SOCKET_NAME, sealed)
    shutil.rmtree(directory)
    return sealed


def _lmode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def remove(engine: str | None, name: str) -> None:
    """Remove the directory of sandbox ``name`` and its socket, if they exist."""
    shutil.rmtree(path_of(engine, name), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sealed_path(engine, name))


def prune(engine: str | None, existing: set[str], *, older_than: float = 600.0) -> list[str]:
    """Remove the directories and sockets of sandboxes not in ``existing``; return their
    names.

    Only those older than ``older_than`` seconds: a younger one may belong to a sandbox
    whose create is still on its way to the engine.
    """
    pruned = []
    cutoff = time.time() - older_than
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(engine_dir(engine)):
            name = entry.name.removesuffix(_SEALED_SUFFIX)
            if name in existing or entry.is_symlink():
                continue
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                remove(engine, name)
                pruned.append(name)
    return pruned
