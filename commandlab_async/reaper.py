"""The reaper: delete sandboxes whose TTL passed or whose owner process is gone.

It never touches a sandbox whose owner is alive — a sibling process on this host
included — and leaves other hosts' sandboxes to their TTL.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from .errors import CleanupError, SpecError
from .identity import CREATED_AT, EXPIRES_AT, HOST, MANAGED, NEVER, PID, SESSION, SESSION_ID
from .platforms.base import Target
from .platforms.driver import SandboxRecord
from .pools import Backend, open_backend
from .shielding import shielded
from .specs import DockerSpec, KubernetesSpec, Spec

__all__ = ["Reaped", "gc"]

_DELETE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Reaped:
    """A sandbox the reaper deleted (or would delete, in a dry run), and why."""

    name: str
    platform: str
    reason: str
    target: str = ""
    """The target it was found on, e.g. ``aws-ecs[region=us-east-1, cluster=default]``."""


async def gc(
    where: Iterable[Spec | Target] | Spec | Target | None = None,
    *,
    dry_run: bool = False,
) -> list[Reaped]:
    """Delete expired and orphaned sandboxes where the user names; return what was deleted.

    ``where`` holds specs (their target: platform, region, cluster, namespace...) or
    :class:`Target` objects; the default sweeps the local Docker Engine. Deletes go
    through the same per-target limits as fleets, each shielded from cancellation and
    bounded in time; if some fail, the others are still deleted and
    :class:`CleanupError` names the ones that remain.
    """
    targets = _targets(DockerSpec() if where is None else where)
    reaped: list[Reaped] = []
    async with AsyncExitStack() as stack:
        for target in targets:
            backend = await open_backend(stack, target)
            reaped += await _sweep(backend, dry_run=dry_run)
    return reaped


def _targets(where: Iterable[Spec | Target] | Spec | Target) -> list[Target]:
    items = [where] if isinstance(where, DockerSpec | KubernetesSpec | Target) else list(where)
    targets = []
    for item in items:
        if isinstance(item, DockerSpec | KubernetesSpec):
            item = item.target()
        if not isinstance(item, Target):
            raise SpecError("where", f"takes specs or targets, got {type(item).__name__}")
        targets.append(item)
    return list(dict.fromkeys(targets))


async def _sweep(backend: Backend, *, dry_run: bool) -> list[Reaped]:
    driver, target = backend.driver, backend.target
    records = await driver.list_sandboxes({MANAGED: "true"})
    # why_reap reads /proc: off the loop.
    reasons = await asyncio.to_thread(_reasons, records)
    doomed = [
        (record, Reaped(record.name, str(target.platform), reason, str(target)))
        for record, reason in zip(records, reasons, strict=True)
        if reason is not None
    ]
    if dry_run or not doomed:
        return [reaped for _, reaped in doomed]

    async def delete(record: SandboxRecord) -> None:
        async with backend.limiter.destroys.hold():
            await driver.destroy(record)

    results = await asyncio.gather(
        *(shielded(delete(record), timeout=_DELETE_TIMEOUT) for record, _ in doomed),
        return_exceptions=True,
    )
    failures = [
        (record.name, error)
        for (record, _), error in zip(doomed, results, strict=True)
        if isinstance(error, BaseException)
    ]
    for _, error in failures:
        if not isinstance(error, Exception):
            raise error  # cancellation, once every delete has finished
    if failures:  # the rest are deleted: say which are not, and why
        raise CleanupError(
            "; ".join(f"{name}: {error!r}" for name, error in failures),
            sandbox=", ".join(name for name, _ in failures),
            platform=str(target),
        )
    return [reaped for _, reaped in doomed]


def _reasons(records: list[SandboxRecord]) -> list[str | None]:
    return [why_reap(record) for record in records]


def why_reap(record: SandboxRecord, *, now: float | None = None) -> str | None:
    """Why the sandbox should be deleted, or None to leave it alone."""
    labels = record.labels
    now = time.time() if now is None else now
    expires = labels.get(EXPIRES_AT, NEVER)
    if expires != NEVER and _number(expires) is not None and now >= float(expires):
        return "expired"
    if record.finished:
        return f"finished ({record.state})"
    if labels.get(SESSION) == SESSION_ID:
        return None  # ours, and we are alive
    if labels.get(HOST) != socket.gethostname()[:63]:
        return None  # another host's: only its TTL can tell
    pid, created = _number(labels.get(PID, "")), _number(labels.get(CREATED_AT, ""))
    if pid is None:
        return None
    if not _alive(int(pid), created_before=created):
        return f"owner process {int(pid)} is gone"
    return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _alive(pid: int, *, created_before: float | None) -> bool:
    """Whether process ``pid`` exists and is the one that created the sandbox.

    A pid can be reused: a process that started after the sandbox was created is not
    its owner (checked through /proc where it exists).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    if created_before is None:
        return True
    started = _process_start_time(pid)
    return started is None or started <= created_before + 1.0


def _process_start_time(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # Field 22 (starttime, in clock ticks since boot) counts after the ")" of the command.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")
