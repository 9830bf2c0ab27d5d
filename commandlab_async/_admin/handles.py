"""Handles: what another process needs to reach a sandbox left running.

A kept or detached sandbox outlives the process that made it, but its token lived only
in that process (the daemon holds just its hash). So when such a sandbox's block ends,
its handle (name, platform, daemon URL, token, expiry) is saved as one JSON file that
only this user can read, in :func:`state_dir`. :func:`connect`, ``commandlab exec``
and ``commandlab cp`` read it; ``commandlab rm`` and ``gc`` remove it with the sandbox.

A handle says where to send the token, so nothing in the state directory is taken on
trust. The directory (and its ``sandboxes/``) must be this user's and writable by no one
else, checked on the open directory itself (no symbolic link followed) and used only
through that open descriptor; a handle is read only if it is a regular file of this
user's, opened without following a link or waiting on a FIFO, at most
:data:`MAX_HANDLE_SIZE` bytes, and every field checks out: its name is the file's, its
platform is known, its URL is ``http``/``https`` or a socket inside this user's runtime
directory, its token has a token's shape. A write goes to a new file of a random name
(``O_EXCL``, mode 0600) renamed over the old one. Anything else is a
:class:`SandboxNotFoundError` naming the file, and ``commandlab ls`` skips it and says so.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._client.computer import Computer, Lifetime
from .._client.transport import UNIX_SCHEME, new_session
from .._lifecycle.leases import lease
from ..errors import SandboxNotFoundError, UnsupportedOperationError
from ..platforms.base import PLATFORMS, DockerPlatform
from ..platforms.docker import socket_dirs

__all__ = [
    "MAX_HANDLE_SIZE",
    "Handle",
    "connect",
    "forget",
    "load",
    "load_all",
    "save",
    "scan",
    "state_dir",
]

STATE_DIR_ENV = "COMMANDLAB_STATE_DIR"
MAX_HANDLE_SIZE = 64 * 1024
"""A handle file larger than this is refused unread (a real one is well under 4 KiB)."""
_SUBDIR = "sandboxes"
_SUFFIX = ".json"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,256}")  # secrets.token_urlsafe(32): 43 characters
_MAX_LABELS = 256
_MAX_URL = 2048
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_HANDLE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_HANDLE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Where a handle's URL still leads to the daemon from another process: a published port
# on this machine. Elsewhere the URL may need the platform's credentials or a pinned
# certificate, which are not saved.
_REACHABLE = {str(DockerPlatform.LOCAL)}


@dataclass(frozen=True)
class Handle:
    """A saved handle of one sandbox. The token is kept out of ``repr``."""

    name: str
    platform: str
    url: str
    expires_at: float | None
    labels: dict[str, str]
    saved_at: float = field(default_factory=time.time)
    token: str = field(default="", repr=False)


_FIELDS = frozenset(f.name for f in fields(Handle))


class _Unsafe(PermissionError):
    """The state directory is not this user's private directory."""


class _Bad(ValueError):
    """A handle file is not one we wrote (what, in words that name no token)."""


def state_dir() -> Path:
    """``$COMMANDLAB_STATE_DIR``, else ``$XDG_STATE_HOME/commandlab``, else
    ``~/.local/state/commandlab``."""
    if explicit := os.environ.get(STATE_DIR_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "commandlab"


def _file_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SandboxNotFoundError("is not a sandbox name", sandbox=name)
    return name + _SUFFIX


# -- the directory -----------------------------------------------------------


@contextmanager
def _handles_dir(*, create: bool) -> Iterator[int]:
    """The open descriptor of ``<state_dir>/sandboxes``, each level checked to be this
    user's and writable by no other (created 0700 with ``create``).

    Raises FileNotFoundError when it does not exist (and ``create`` is false), and
    :class:`_Unsafe` when a level is a symbolic link, not a directory, another user's
    or writable by others.
    """
    state = state_dir()
    if create:
        with suppress(FileExistsError):  # a file or a link there: refused just below
            state.parent.mkdir(parents=True, exist_ok=True)
            state.mkdir(mode=0o700)
    top = _open_dir(str(state), None, state)
    try:
        if create:
            with suppress(FileExistsError):
                os.mkdir(_SUBDIR, 0o700, dir_fd=top)
        sub = _open_dir(_SUBDIR, top, state / _SUBDIR)
    finally:
        os.close(top)
    try:
        yield sub
    finally:
        os.close(sub)


def _open_dir(path: str, dir_fd: int | None, shown: Path) -> int:
    try:
        fd = os.open(path, _OPEN_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _Unsafe(_unsafe(shown, "is a symbolic link or not a directory")) from None
        raise
    info = os.fstat(fd)
    why = None
    if info.st_uid != os.getuid():
        why = f"belongs to uid {info.st_uid}"
    elif info.st_mode & 0o022:
        why = f"is writable by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    if why is not None:
        os.close(fd)
        raise _Unsafe(_unsafe(shown, why))
    return fd


def _unsafe(path: Path, why: str) -> str:
    return (
        f"the state directory {path} {why}: handles are kept only in a directory of this"
        f" user's that no other user can write (0700); see what is in it and chmod it 0700,"
        f" remove it, or set {STATE_DIR_ENV}"
    )


# -- one handle ----------------------------------------------------------------


def save(handle: Handle) -> Path:
    """Write ``handle`` (readable by this user only), replacing any of the same name.

    Raises PermissionError when the state directory is not this user's private one.
    """
    file_name = _file_name(handle.name)
    data = json.dumps(asdict(handle)).encode()
    try:
        with _handles_dir(create=True) as directory:
            _write(directory, file_name, data)
    except _Unsafe as exc:
        raise PermissionError(str(exc)) from None
    return state_dir() / _SUBDIR / file_name


def _write(directory: int, file_name: str, data: bytes) -> None:
    """A new file of a random name (never a .json: never read), renamed into place."""
    temp = f".{file_name.removesuffix(_SUFFIX)}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, _CREATE_HANDLE, 0o600, dir_fd=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, file_name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise


def load(name: str) -> Handle:
    """The saved handle of sandbox ``name``; :class:`SandboxNotFoundError` if none, or if
    what is saved is not a handle this user's processes wrote (the message names the
    file and why)."""
    file_name = _file_name(name)
    path = state_dir() / _SUBDIR / file_name
    try:
        with _handles_dir(create=False) as directory:
            return _read(directory, file_name, name)
    except FileNotFoundError:
        raise SandboxNotFoundError(
            "no handle of it is saved here: only sandboxes kept (Computer.keep()) or brought"
            f" up by `commandlab up` can be reached from another process ({state_dir()})",
            sandbox=name,
        ) from None
    except _Unsafe as exc:
        raise SandboxNotFoundError(str(exc), sandbox=name) from None
    except _Bad as exc:
        raise SandboxNotFoundError(f"its saved handle {path} {exc}", sandbox=name) from None
    except OSError as exc:
        raise SandboxNotFoundError(
            f"its saved handle {path} is unreadable: {exc.strerror or exc}", sandbox=name
        ) from exc


def _read(directory: int, file_name: str, name: str) -> Handle:
    try:
        fd = os.open(file_name, _OPEN_HANDLE, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Bad("is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Bad(f"is not a regular file ({_kind(info.st_mode)})")
        if info.st_uid != os.getuid():
            raise _Bad(f"belongs to uid {info.st_uid}, not this user")
        if info.st_mode & 0o022:
            raise _Bad(f"is writable by other users (mode {stat.S_IMODE(info.st_mode):04o})")
        if info.st_size > MAX_HANDLE_SIZE:
            raise _Bad(f"is {info.st_size} bytes, more than a handle's {MAX_HANDLE_SIZE}")
        chunks = []
        size = 0
        while chunk := os.read(fd, MAX_HANDLE_SIZE + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_HANDLE_SIZE:
                raise _Bad(f"is more than a handle's {MAX_HANDLE_SIZE} bytes")
    finally:
        os.close(fd)
    return _parse(b"".join(chunks), name)


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def _parse(data: bytes, name: str) -> Handle:
    """The handle ``data`` spells, every field checked; :class:`_Bad` says what is wrong
    (never quoting the token)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"is not JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise _Bad(f"is not a JSON object but a {type(obj).__name__}")
    if missing := _FIELDS - obj.keys():
        raise _Bad(f"lacks {', '.join(sorted(missing))}")
    if extra := obj.keys() - _FIELDS:
        raise _Bad(f"has fields a handle does not: {', '.join(sorted(extra))[:200]}")
    if obj["name"] != name:
        raise _Bad("is the handle of another sandbox")
    platform = obj["platform"]
    if not isinstance(platform, str) or platform not in PLATFORMS:
        raise _Bad("names no known platform")
    url = obj["url"]
    if not isinstance(url, str):
        raise _Bad("has a URL that is not a string")
    _check_url(url)
    expires_at, saved_at = obj["expires_at"], obj["saved_at"]
    if expires_at is not None and not _is_time(expires_at):
        raise _Bad("has an expires_at that is not a time")
    if not _is_time(saved_at):
        raise _Bad("has a saved_at that is not a time")
    labels = obj["labels"]
    if (
        not isinstance(labels, dict)
        or len(labels) > _MAX_LABELS
        or not all(isinstance(v, str) for v in labels.values())
    ):
        raise _Bad("has labels that are not a map of strings")
    token = obj["token"]
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise _Bad("has no token of a token's shape")
    return Handle(
        name=name,
        platform=platform,
        url=url,
        expires_at=None if expires_at is None else float(expires_at),
        labels=dict(labels),
        saved_at=float(saved_at),
        token=token,
    )


def _is_time(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _check_url(url: str) -> None:
    """``http(s)://host[:port][/path]``, or ``unix:`` and a socket path inside this user's
    runtime directory (where every local daemon's socket is: a handle must not send the
    token to another socket, the engine's included)."""
    if not url or len(url) > _MAX_URL or not url.isprintable() or " " in url:
        raise _Bad("has a URL that is empty, too long or not printable")
    if url.startswith(UNIX_SCHEME):
        path = url.removeprefix(UNIX_SCHEME)
        base = os.path.abspath(socket_dirs.base_dir())
        if (
            not os.path.isabs(path)
            or os.path.normpath(path) != path
            or path == base
            or os.path.commonpath([base, path]) != base
        ):
            raise _Bad(f"has a socket path outside this user's runtime directory ({base})")
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _Bad("has a URL that does not parse") from None
    if parts.scheme not in ("http", "https"):
        raise _Bad("has a URL whose scheme is not http, https or unix")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise _Bad("has a URL without a host, or with credentials")
    if parts.query or parts.fragment:
        raise _Bad("has a URL with a query or a fragment")


# -- every handle ----------------------------------------------------------------


def scan() -> tuple[list[Handle], list[str]]:
    """Every usable saved handle, by name, and why each other one was skipped (one line
    each, naming the file). Nothing blocks: a FIFO or a device is skipped unopened."""
    try:
        with _handles_dir(create=False) as directory:
            names = sorted(os.listdir(directory))
            handles, problems = [], []
            for file_name in names:
                if not file_name.endswith(_SUFFIX):
                    continue  # a save's temporary file, or nothing of ours
                name = file_name.removesuffix(_SUFFIX)
                path = state_dir() / _SUBDIR / file_name
                if not _NAME.fullmatch(name):
                    problems.append(f"{path}: skipped: not the handle of a sandbox name")
                    continue
                try:
                    handles.append(_read(directory, file_name, name))
                except _Bad as exc:
                    problems.append(f"{path}: skipped: {exc}")
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError as exc:
                    problems.append(f"{path}: skipped: {exc.strerror or exc}")
    except FileNotFoundError:
        return [], []
    except _Unsafe as exc:
        return [], [f"{exc}; every handle in it is ignored"]
    return handles, problems


def load_all() -> list[Handle]:
    """Every usable saved handle, by name (see :func:`scan` for those skipped)."""
    return scan()[0]


def forget(name: str) -> bool:
    """Remove the saved handle of ``name``; False if there was none (or the state
    directory is not one this user's handles are trusted in)."""
    try:
        file_name = _file_name(name)
        with _handles_dir(create=False) as directory:
            os.unlink(file_name, dir_fd=directory)
    except (OSError, SandboxNotFoundError):
        return False
    return True


@asynccontextmanager
async def connect(name: str) -> AsyncIterator[Computer]:
    """A :class:`Computer` for a sandbox left running (kept or detached), from its handle.

    Leaving the block leaves the sandbox running. Raises :class:`SandboxNotFoundError`
    when no usable handle of ``name`` is saved here (the message names the file when one
    is there but refused), and :class:`UnsupportedOperationError` on platforms whose
    daemon cannot be reached from another process yet (local Docker only, so far).
    """
    handle = await asyncio.to_thread(load, name)
    if handle.platform not in _REACHABLE:
        raise UnsupportedOperationError(
            f"reaching a {handle.platform} sandbox from another process is not supported yet"
            " (local Docker only)",
            sandbox=name,
        )
    lifetime = Lifetime(expires_at=handle.expires_at)
    async with lease("http", new_session) as http:
        try:
            yield Computer(
                name=handle.name,
                url=handle.url,
                token=handle.token,
                session=http,
                platform=handle.platform,
                lifetime=lifetime,
            )
        finally:
            lifetime.end("its connect block ended (the sandbox still runs)")
