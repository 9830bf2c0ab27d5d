"""Handles: what another process needs to reach a sandbox left running.

A kept or detached sandbox outlives the process that made it, but its token lived only
in that process (the daemon holds just its hash). So when such a sandbox's block ends,
its handle (name, platform, daemon URL, token, expiry) is saved as one JSON file that
only this user can read, in :func:`state_dir`. :func:`connect`, ``commandlab exec``
and ``commandlab cp`` read it; ``commandlab rm`` and ``gc`` remove it with the sandbox.

Reaching a daemon off this machine takes more than its URL, and a handle holds no
credential but the sandbox's own token. It saves the target's *scope* (platform plus
region, cluster, namespace, resource group, kubeconfig path... every field of the
:class:`Target` that is a string) and, for a daemon that serves TLS of its own (ECS and
ACI public IPs, Kubernetes services), the certificate it is pinned to (*pin*, no
secret). :func:`connect` rebuilds the target's driver from the scope and asks it how to
reach the daemon (:meth:`Driver.reach`): so it needs the same credentials as the
process that made the sandbox had — the AWS chain, Azure's ``DefaultAzureCredential``,
Google's default credentials (Cloud Run's ID tokens), the kubeconfig or cloud login of
the cluster — and the same endpoint variables. A sandbox made with an Azure credential
object of your own is reached with the default chain. A handle saved before scopes were
(no ``scope``) still reaches local Docker; elsewhere :func:`connect` says it cannot.

A handle can outlive its sandbox (its TTL, ``gc``, ``docker rm``). When its daemon
cannot be reached, :func:`connect` asks the backend; if the backend says the sandbox
is gone or stopped for good (or its local socket is gone), the handle is removed and
:class:`SandboxNotFoundError` says so in one line. On any other failure (a network
error, a backend that does not answer) the handle stays and the error is the daemon's.

A handle says where to send the token, so nothing in the state directory is taken on
trust. The directory (and its ``sandboxes/``) must be this user's and writable by no one
else, checked on the open directory itself (no symbolic link followed) and used only
through that open descriptor; a handle is read only if it is a regular file of this
user's, opened without following a link or waiting on a FIFO, at most
:data:`MAX_HANDLE_SIZE` bytes, and every field checks out: its name is the file's, its
platform is known, its URL is ``http``/``https`` or a socket inside this user's runtime
directory, its token has a token's shape, its scope names only string fields of its
platform's target (all it requires) and its pin is one PEM certificate. A write goes to
a new file of a random name (``O_EXCL``, mode 0600) renamed over the old one. Anything
else is a :class:`SandboxNotFoundError` naming the file, and ``commandlab ls`` skips it
and says so.
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
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._client.computer import Computer, Lifetime
from .._client.transport import UNIX_SCHEME, new_session
from .._lifecycle.leases import lease, open_backend
from ..errors import (
    DaemonUnreachableError,
    SandboxDeletedError,
    SandboxNotFoundError,
    UnsupportedOperationError,
)
from ..platforms import options_class
from ..platforms.base import PLATFORMS, DockerPlatform, Target
from ..platforms.docker import socket_dirs
from ..platforms.driver import Driver, SandboxRecord

if TYPE_CHECKING:
    from .._lifecycle.identity import SandboxIdentity

__all__ = [
    "MAX_HANDLE_SIZE",
    "Handle",
    "connect",
    "forget",
    "handle_of",
    "load",
    "load_all",
    "remember",
    "save",
    "scan",
    "scope_of",
    "share_handle",
    "state_dir",
    "target_of",
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
_MAX_SCOPE = 32
_STRING_FIELDS = ("str", "str | None")  # the Target fields a scope names (annotations)
_PIN = re.compile(
    r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]{64,8192}-----END CERTIFICATE-----\n?"
)
_GONE_CHECK_TIMEOUT = 20.0  # asking the backend whether an unreachable sandbox is gone


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
    scope: dict[str, str] | None = None
    """Its target's string fields (region, cluster, namespace...): the backend to ask.
    None in a handle saved before handles had it (local Docker only then)."""
    pin: str | None = None
    """The certificate its daemon's TLS is pinned to (PEM), if it serves TLS of its own."""
    kept: bool = False
    """Saved as it was left running on purpose (kept or detached): it belongs to no
    process any more, so gc judges it by its TTL alone. False for a handle saved while
    its owner still holds it (:func:`share_handle`). A handle saved before handles had it
    was a kept or detached one's."""


_FIELDS = frozenset(f.name for f in fields(Handle))
_OPTIONAL = frozenset({"scope", "pin", "kept"})  # absent from handles saved by older versions


def scope_of(target: Target) -> dict[str, str]:
    """The fields of ``target`` a handle saves: every one that is a string (no credential
    object, no platform)."""
    return {
        f.name: value
        for f in fields(target)
        if f.type in _STRING_FIELDS and isinstance(value := getattr(target, f.name), str)
    }


def handle_of(
    computer: Computer, identity: SandboxIdentity, target: Target, pin: str | None
) -> Handle:
    """The handle of a sandbox this process brought up (``pin``: :meth:`Driver.pin`)."""
    return Handle(
        name=identity.name,
        platform=computer.platform,
        url=computer.url,
        expires_at=identity.expires_at,
        labels=dict(identity.labels),
        token=identity.token,
        scope=scope_of(target),
        pin=pin,
    )


# The handles of sandboxes this process brought up, not saved unless asked (share_handle).
_live: weakref.WeakKeyDictionary[Computer, Handle] = weakref.WeakKeyDictionary()


def remember(computer: Computer, handle: Handle) -> None:
    """Note the handle of a sandbox this process brought up, for :func:`share_handle`."""
    _live[computer] = handle


@asynccontextmanager
async def share_handle(computer: Computer) -> AsyncIterator[Path]:
    """Save the handle of a sandbox this process brought up, so that this user's other
    processes (``commandlab exec``, ``cp``, :func:`connect`) reach it while the block
    runs; leaving the block removes the handle. The sandbox stays this process's: its
    ``provision`` block still deletes it (enter this block inside that one).

    Raises :class:`UnsupportedOperationError` for a Computer no provision of this process
    brought up (one from :func:`connect` has its handle saved already).
    """
    handle = _live.get(computer)
    if handle is None:
        raise UnsupportedOperationError(
            "only a sandbox this process brought up has a handle to share", sandbox=computer.name
        )
    path = await asyncio.to_thread(save, handle)
    try:
        yield path
    finally:
        await asyncio.to_thread(forget, computer.name)


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
    if missing := _FIELDS - _OPTIONAL - obj.keys():
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
    scope = obj.get("scope")
    if scope is not None:
        _check_scope(platform, scope)
    pin = obj.get("pin")
    if pin is not None:
        if not isinstance(pin, str) or not _PIN.fullmatch(pin):
            raise _Bad("has a pin that is not one PEM certificate")
        if not url.startswith("https://"):
            raise _Bad("pins a certificate for a URL that is not https")
    kept = obj.get("kept", True)
    if not isinstance(kept, bool):
        raise _Bad("has a kept that is not true or false")
    return Handle(
        name=name,
        platform=platform,
        url=url,
        expires_at=None if expires_at is None else float(expires_at),
        labels=dict(labels),
        saved_at=float(saved_at),
        token=token,
        scope=None if scope is None else dict(scope),
        pin=pin,
        kept=kept,
    )


def _check_scope(platform: str, scope: Any) -> None:
    """A scope names string fields of the platform's target, every required one."""
    if not isinstance(scope, dict) or len(scope) > _MAX_SCOPE:
        raise _Bad("has a scope that is not a map")
    taken = {
        f.name: f.default is MISSING and f.default_factory is MISSING and f.type == "str"
        for f in fields(options_class(PLATFORMS[platform]).target_class)
        if f.type in _STRING_FIELDS
    }
    for key, value in scope.items():
        if key not in taken:
            raise _Bad(f"has a scope field {platform} does not take: {str(key)[:64]!r}")
        if not isinstance(value, str) or not value or len(value) > _MAX_URL:
            raise _Bad(f"has a scope field {key} that is not a string")
        if not value.isprintable():
            raise _Bad(f"has a scope field {key} that is not printable")
    if missing := [name for name, required in taken.items() if required and name not in scope]:
        raise _Bad(f"has a scope without {', '.join(missing)}")


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

    Leaving the block leaves the sandbox running. Off local Docker, this process needs
    the credentials the sandbox was made with (see the module's docstring). Raises
    :class:`SandboxNotFoundError` when no usable handle of ``name`` is saved here (the
    message names the file when one is there but refused), and when its sandbox is gone
    (the handle is removed then: the backend said so, or its socket is gone);
    :class:`UnsupportedOperationError` for a handle saved by an older version on a
    platform other than local Docker.
    """
    handle = await asyncio.to_thread(load, name)
    target = target_of(handle)
    ref = SandboxRecord(name, handle.labels, "")
    lifetime = Lifetime(expires_at=handle.expires_at)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(lease("http", new_session))
        driver = (await open_backend(stack, target)).driver
        reach = await driver.reach(ref, handle.url, handle.pin)
        if reach is None:
            raise await _pruned(handle, f"{handle.platform} says it no longer exists")
        try:
            yield Computer(
                name=handle.name,
                url=reach.url,
                token=handle.token,
                session=http,
                platform=handle.platform,
                ssl_context=reach.ssl,
                extra_headers=reach.headers,
                lifetime=lifetime,
            )
        except DaemonUnreachableError as exc:
            if isinstance(exc, SandboxDeletedError) or exc.sandbox != name:
                raise
            why = await _gone(handle, driver, ref)
            if why is None:
                raise
            raise await _pruned(handle, why) from exc
        finally:
            lifetime.end("its connect block ended (the sandbox still runs)")


def target_of(handle: Handle) -> Target:
    """The target a handle's sandbox is on, rebuilt from its scope.
    :class:`UnsupportedOperationError` for a handle saved without one off local Docker."""
    platform = PLATFORMS[handle.platform]
    target_class = options_class(platform).target_class
    if handle.scope is None:
        if platform != DockerPlatform.LOCAL:
            raise UnsupportedOperationError(
                f"its handle was saved by an older commandlab, without what reaching a"
                f" {platform} sandbox from another process takes; `commandlab rm` it",
                sandbox=handle.name,
            )
        return options_class(platform).target_from({})
    scope = handle.scope
    values: dict[str, Any] = {
        f.name: scope.get(f.name)
        for f in fields(target_class)
        if f.type in _STRING_FIELDS
        and (f.name in scope or (f.default is MISSING and f.default_factory is MISSING))
    }
    return target_class(platform=platform, **values)


async def _gone(handle: Handle, driver: Driver[Any], ref: SandboxRecord) -> str | None:
    """Why the sandbox of ``handle`` is gone for good, if it is: its local socket is
    gone, or its backend says so. None when that is not certain (the backend did not
    answer, or says it is there): a handle is never removed on a guess."""
    if handle.url.startswith(UNIX_SCHEME):
        socket = handle.url.removeprefix(UNIX_SCHEME)
        if not await asyncio.to_thread(os.path.lexists, socket):
            return "its daemon's socket no longer exists"
    try:
        async with asyncio.timeout(_GONE_CHECK_TIMEOUT):
            state = await driver.state(ref)
    except Exception:  # no answer, no credentials...: not known to be gone
        return None
    if not state.terminal:
        return None
    return f"{handle.platform} state: {state.detail}"


async def _pruned(handle: Handle, why: str) -> SandboxNotFoundError:
    """Remove the handle of a sandbox that is gone; the error that says so."""
    await asyncio.to_thread(forget, handle.name)
    if handle.expires_at is not None and handle.expires_at <= time.time():
        why += "; its TTL has passed"
    return SandboxNotFoundError(
        f"is gone ({why}); its saved handle was removed", sandbox=handle.name
    )
