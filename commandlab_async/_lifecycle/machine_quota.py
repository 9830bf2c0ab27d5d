"""Rate quotas shared by every process of this user on this machine.

A cloud counts its rate quotas per account (project, subscription) and region, never
per process: eight pytest-xdist workers or eval workers, each within its own
:class:`~commandlab_async._lifecycle.limits.Limits`, would send eight times what the backend takes.
Each documented quota a driver names (:class:`MachineQuota`) is therefore a token bucket
kept in a file of this user's private runtime directory, and every process of the user
on the machine draws from the same one.

- **Nothing per process.** A file holds a bucket's tokens and when they were counted,
  nothing else, guarded by ``flock``: a process that dies, even by SIGKILL mid-take,
  leaves nothing taken, and its lock dies with it. Records are written with one
  ``pwrite`` of 24 bytes; an unreadable one counts as an empty bucket (never spend what
  may not be there).
- **Never on the event loop.** Every file operation runs in a thread; waiting for a
  token is an ``asyncio.sleep``.
- **Creates wait, deletes go first.** A create takes a token only when every bucket it
  draws from holds one, else sleeps until one is due (one waiter per process and
  target polls the file; a warm pool's refill gives way to a user's create). A delete
  never waits behind creates: it takes its token on credit (the bucket goes below zero,
  which makes later creates wait longer) and sleeps until that token is due — but never
  longer than its patience (half of what remains of its ``destroy_timeout``), after
  which it goes anyway. A sandbox left running costs more than a quota refusal, which
  the driver retries.
- **A courtesy, never a new way to fail.** If the directory is not this user's 0700, a
  file is not this user's regular file, or a lock stays taken for seconds (a stopped
  process holding it), the call goes on within the process's own limits, with a warning.

``COMMANDLAB_MACHINE_QUOTA=off`` turns it off for a process and its children;
:func:`set_machine_quotas` replaces or turns off a platform's or a target's quotas.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import math
import os
import random
import stat
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import SpecError
from ..platforms.base import MachineQuota

if TYPE_CHECKING:
    from ..platforms.base import Target

__all__ = [
    "ENV",
    "MachineBuckets",
    "MachineQuota",
    "bucket_path",
    "machine_quotas_for",
    "quota_directory",
    "set_machine_quotas",
]

ENV = "COMMANDLAB_MACHINE_QUOTA"
"""``off`` (or ``0``, ``false``, ``no``) turns machine-wide quotas off."""
_OFF = {"off", "0", "false", "no"}
LOCK_TIMEOUT = 5.0
"""Seconds to wait for a bucket's lock before going on without the machine's quota."""
_MAGIC = b"CLQUOTA1"
_RECORD = struct.Struct("<8sdd")  # magic, tokens, CLOCK_MONOTONIC of the count
_MIN_SLEEP = 0.001

log = logging.getLogger("commandlab_async")
T = TypeVar("T")


# Set by the user: per platform (every target of it) or per target.
_overrides: dict[str, tuple[MachineQuota, ...]] = {}


def set_machine_quotas(where: str | Target, quotas: Sequence[MachineQuota]) -> None:
    """Replace the machine-wide quotas of a platform (``"gcp-cloud-run"``) or one target
    in this process; ``()`` turns them off there.

    They apply to fleets started later; a target's own win over its platform's.
    """
    quotas = tuple(quotas)
    for quota in quotas:
        if not isinstance(quota, MachineQuota):
            raise SpecError("quotas", f"must be MachineQuota, got {type(quota).__name__}")
    _overrides[_key(where)] = quotas


def machine_quotas_for(target: Target, default: Sequence[MachineQuota]) -> tuple[MachineQuota, ...]:
    """The machine-wide quotas in force for ``target``: none when ``COMMANDLAB_MACHINE_QUOTA``
    is off, else its own, its platform's, or ``default`` (its driver's)."""
    if os.environ.get(ENV, "").strip().lower() in _OFF:
        return ()
    for key in (_key(target), str(target.platform)):
        if key in _overrides:
            return _overrides[key]
    return tuple(default)


def _key(where: str | Target) -> str:
    return str(where) if isinstance(where, str) else f"target:{where!r}"


# -- the files (run in a thread) ----------------------------------------------------------


def quota_directory() -> Path:
    """Where the buckets are: ``quotas/`` in this user's runtime directory (the one that
    holds local sandboxes' sockets), made if needed.

    Raises PermissionError when it, or the runtime directory, is not this user's 0700:
    another user could otherwise hold a bucket's lock forever or fake its tokens.
    """
    from ..platforms.docker.socket_dirs import base_dir  # here: limits imports this module

    base = base_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(base)
    directory = base / "quotas"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    _check_private(directory)
    return directory


def _check_private(directory: Path) -> None:
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{directory} must be a directory of this user's with mode 0700 (it holds the"
            " machine-wide quota buckets); remove it or set COMMANDLAB_RUNTIME_DIR"
        )


def bucket_path(scope: str) -> Path:
    """The file of the bucket of ``scope`` (the scope hashed: it names clouds and regions)."""
    return quota_directory() / f"{hashlib.sha256(scope.encode()).hexdigest()[:32]}.bucket"


@dataclass
class _Bucket:
    quota: MachineQuota
    fd: int
    tokens: float


@contextlib.contextmanager
def _locked(quotas: Sequence[MachineQuota], now: float) -> Iterator[list[_Bucket]]:
    """Open and lock the buckets of ``quotas`` (in the order of their files, so two
    processes never wait for each other's), counted as of ``now``; unlocked on exit."""
    paths = sorted((bucket_path(q.scope), q) for q in quotas)
    buckets: list[_Bucket] = []
    deadline = time.monotonic() + LOCK_TIMEOUT
    try:
        for path, quota in paths:
            bucket = _Bucket(quota, _open(path), 0.0)
            buckets.append(bucket)
            _lock(bucket.fd, path, deadline)
            tokens = _read(bucket.fd, quota, now)
            if tokens is None:  # torn or tampered with: empty, from now on
                _write(bucket, now)
            else:
                bucket.tokens = tokens
        yield buckets
    finally:
        for bucket in buckets:
            os.close(bucket.fd)  # releases its flock


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} must be a regular file of this user's with mode 0600")
    return fd


def _lock(fd: int, path: Path, deadline: float) -> None:
    # Not a blocking flock: a thread stuck in one can be neither cancelled nor timed out.
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{path} stayed locked for {LOCK_TIMEOUT:g}s (a stopped process holds it?)"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.01)


def _read(fd: int, quota: MachineQuota, now: float) -> float | None:
    """The bucket's tokens at ``now``; None when its record is unreadable."""
    data = os.pread(fd, _RECORD.size, 0)
    if not data:
        return float(quota.burst)  # a new bucket starts full
    try:
        magic, tokens, at = _RECORD.unpack(data)
    except struct.error:
        return None
    if magic != _MAGIC or not math.isfinite(tokens) or not math.isfinite(at):
        return None
    # Counted under another burst (another version, an override): within this one.
    tokens = min(max(tokens, -quota.burst), quota.burst)
    # CLOCK_MONOTONIC is one clock for every process of the machine; it restarts at boot,
    # so a count from "the future" was made before a reboot: refill nothing for it.
    counted: float = tokens + max(0.0, now - at) * quota.per_second
    return min(float(quota.burst), counted)


def _write(bucket: _Bucket, now: float) -> None:
    os.pwrite(bucket.fd, _RECORD.pack(_MAGIC, bucket.tokens, now), 0)


def _take_create(quotas: Sequence[MachineQuota]) -> float:
    """Take a token from each bucket if all have one: 0.0; else the seconds until they may."""
    now = time.monotonic()
    with _locked(quotas, now) as buckets:
        wait = max((1.0 - b.tokens) / b.quota.per_second for b in buckets)
        if wait > 0:
            return wait
        for bucket in buckets:
            bucket.tokens -= 1
            _write(bucket, now)
        return 0.0


def _take_delete(quotas: Sequence[MachineQuota]) -> tuple[float, list[MachineQuota]]:
    """Take a token from each bucket on credit; return when the last is due (seconds from
    now, ``inf`` if a bucket is a whole burst in debt) and the quotas it was taken from."""
    now = time.monotonic()
    due = 0.0
    taken: list[MachineQuota] = []
    with _locked(quotas, now) as buckets:
        for bucket in buckets:
            if bucket.tokens - 1 < -bucket.quota.burst:
                due = math.inf  # no deeper: the backend is refusing by now anyway
                continue
            bucket.tokens -= 1
            _write(bucket, now)
            taken.append(bucket.quota)
            due = max(due, -bucket.tokens / bucket.quota.per_second)
    return due, taken


def _give_back(quotas: Sequence[MachineQuota]) -> None:
    """Return a token to each bucket (a delete cancelled before its token was due)."""
    now = time.monotonic()
    with _locked(quotas, now) as buckets:
        for bucket in buckets:
            bucket.tokens = min(float(bucket.quota.burst), bucket.tokens + 1)
            _write(bucket, now)


# -- what a Limiter uses ------------------------------------------------------------------

_warned: set[str] = set()


class MachineBuckets:
    """The machine-wide buckets of one target, as one process's Limiter draws from them.

    With no quotas (local Docker, Kubernetes, or turned off) every take returns at once.
    """

    def __init__(self, quotas: Sequence[MachineQuota] = ()) -> None:
        self.quotas = tuple(quotas)
        self._creates = tuple(q for q in self.quotas if q.creates)
        self._deletes = tuple(q for q in self.quotas if q.deletes)
        self._poller = asyncio.Lock()  # one create polls the files per process and target
        self._users = 0  # users' creates waiting for a token
        self._no_users = asyncio.Event()
        self._no_users.set()
        self._user_came = asyncio.Event()
        self.fallbacks = 0
        """Takes that went on without the machine's quota (its files unusable)."""

    async def take_create(self, *, background: bool = False) -> None:
        """Wait until every bucket creates draw from has a token, and take them.

        A ``background`` create (a warm pool's refill) waits while a user's create is
        waiting, and gives way to one that comes while it waits.
        """
        if not self._creates:
            return
        if background:
            while True:
                await self._no_users.wait()
                async with self._poller:
                    if self._users == 0 and await self._poll(interrupt=self._user_came):
                        return
        self._users += 1
        self._no_users.clear()
        self._user_came.set()
        try:
            async with self._poller:
                await self._poll(interrupt=None)
        finally:
            self._users -= 1
            if self._users == 0:
                self._no_users.set()
                self._user_came.clear()

    async def _poll(self, *, interrupt: asyncio.Event | None) -> bool:
        """Take the tokens, sleeping until they are due; False if ``interrupt`` came first."""
        while True:
            # Cancelled meanwhile, the thread may still take the tokens: one is wasted,
            # never one too many spent.
            wait = await self._in_thread(_take_create, self._creates, fallback=0.0)
            if wait <= 0:
                return True
            # Jitter, so the waiters of several processes do not all wake together.
            delay = max(wait * random.uniform(1.0, 1.1), _MIN_SLEEP)
            if interrupt is None:
                await asyncio.sleep(delay)
                continue
            try:
                async with asyncio.timeout(delay):
                    await interrupt.wait()
                return False
            except TimeoutError:
                pass

    async def take_delete(self, *, patience: float) -> None:
        """Take a token for a delete, on credit, waiting until it is due but at most
        ``patience`` seconds (then the delete goes anyway)."""
        if not self._deletes:
            return
        nothing: tuple[float, list[MachineQuota]] = (0.0, [])
        due, taken = await self._in_thread(_take_delete, self._deletes, fallback=nothing)
        if due <= 0:
            return
        try:
            await asyncio.sleep(max(0.0, min(due, patience)))
        except asyncio.CancelledError:
            if taken:  # the delete will not be sent: its token goes back
                # The thread finishes even if this await is cancelled again.
                await self._in_thread(_give_back, taken, fallback=None)
            raise

    async def _in_thread(
        self,
        fn: Callable[[Sequence[MachineQuota]], T],
        quotas: Sequence[MachineQuota],
        *,
        fallback: T,
    ) -> T:
        try:
            return await asyncio.to_thread(fn, quotas)
        except OSError as exc:  # PermissionError, TimeoutError of a lock...
            self.fallbacks += 1
            message = f"{exc}"
            if message not in _warned:
                _warned.add(message)
                log.warning(
                    "machine-wide quota %s unusable, going on within this process's limits: %s",
                    ", ".join(q.scope for q in quotas),
                    message,
                )
            return fallback
