"""Handles: what another process needs to reach a sandbox left running.

A kept or detached sandbox outlives the process that made it, but its token lived only
in that process (the daemon holds just its hash). So when such a sandbox's block ends,
its handle (name, platform, daemon URL, token, expiry) is saved as one JSON file that
only this user can read, in :func:`state_dir`. :func:`connect`, ``commandlab exec``
and ``commandlab cp`` read it; ``commandlab rm`` and ``gc`` remove it with the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .computer import Computer
from .errors import SandboxNotFoundError, UnsupportedOperationError
from .loop_sessions import new_session
from .platforms.base import DockerPlatform
from .pools import lease

__all__ = ["Handle", "connect", "forget", "load", "load_all", "save", "state_dir"]

STATE_DIR_ENV = "COMMANDLAB_STATE_DIR"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
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


def state_dir() -> Path:
    """``$COMMANDLAB_STATE_DIR``, else ``$XDG_STATE_HOME/commandlab``, else
    ``~/.local/state/commandlab``."""
    if explicit := os.environ.get(STATE_DIR_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "commandlab"


def _path(name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise SandboxNotFoundError("is not a sandbox name", sandbox=name)
    return state_dir() / "sandboxes" / f"{name}.json"


def save(handle: Handle) -> Path:
    """Write ``handle`` (readable by this user only), replacing any of the same name."""
    path = _path(handle.name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(handle), out)
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            temp.unlink()
        raise
    return path


def load(name: str) -> Handle:
    """The saved handle of sandbox ``name``; :class:`SandboxNotFoundError` if none."""
    try:
        data = json.loads(_path(name).read_text())
        return Handle(**data)
    except FileNotFoundError:
        raise SandboxNotFoundError(
            "no handle of it is saved here: only sandboxes kept (Computer.keep()) or brought"
            f" up by `commandlab up` can be reached from another process ({state_dir()})",
            sandbox=name,
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise SandboxNotFoundError(f"its saved handle is unreadable: {exc}", sandbox=name) from exc


def load_all() -> list[Handle]:
    """Every readable saved handle, by name."""
    handles = []
    for path in sorted((state_dir() / "sandboxes").glob("*.json")):
        with suppress(SandboxNotFoundError):
            handles.append(load(path.stem))
    return handles


def forget(name: str) -> bool:
    """Remove the saved handle of ``name``; False if there was none."""
    try:
        _path(name).unlink()
    except (FileNotFoundError, SandboxNotFoundError):
        return False
    return True


@asynccontextmanager
async def connect(name: str) -> AsyncIterator[Computer]:
    """A :class:`Computer` for a sandbox left running (kept or detached), from its handle.

    Leaving the block leaves the sandbox running. Raises :class:`SandboxNotFoundError`
    when no handle of ``name`` is saved here, and :class:`UnsupportedOperationError` on
    platforms whose daemon cannot be reached from another process yet (local Docker
    only, so far).
    """
    handle = await asyncio.to_thread(load, name)
    if handle.platform not in _REACHABLE:
        raise UnsupportedOperationError(
            f"reaching a {handle.platform} sandbox from another process is not supported yet"
            " (local Docker only)",
            sandbox=name,
        )
    async with lease("http", new_session) as http:
        computer = Computer(
            name=handle.name,
            url=handle.url,
            token=handle.token,
            session=http,
            platform=handle.platform,
        )
        try:
            yield computer
        finally:
            computer._mark_deleted("its connect block ended (the sandbox still runs)")
