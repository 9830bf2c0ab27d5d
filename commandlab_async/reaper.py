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

from .drivers import driver_class
from .drivers.base import SandboxRecord
from .errors import CleanupError
from .identity import CREATED_AT, EXPIRES_AT, HOST, MANAGED, NEVER, PID, SESSION, SESSION_ID
from .pools import lease
from .specs import DockerPlatform, KubernetesPlatform

__all__ = ["Reaped", "gc"]

_DELETE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Reaped:
    """A sandbox the reaper deleted (or would delete, in a dry run), and why."""

    name: str
    platform: str
    reason: str


async def gc(
    platforms: Iterable[DockerPlatform | KubernetesPlatform] = (DockerPlatform.LOCAL,),
    *,
    dry_run: bool = False,
) -> list[Reaped]:
    """Delete expired and orphaned sandboxes on ``platforms``; return what was deleted.

    Each delete is bounded in time; if some fail, the others are still deleted and
    :class:`CleanupError` names the ones that remain.
    """
    reaped: list[Reaped] = []
    async with AsyncExitStack() as stack:
        for platform in platforms:
            driver = await stack.enter_async_context(
                lease(("driver", platform), driver_class(platform))
            )
            records = await driver.list_sandboxes({MANAGED: "true"})
            # why_reap reads /proc: off the loop.
            reasons = await asyncio.to_thread(_reasons, records)
            doomed = [
                Reaped(record.name, str(platform), reason)
                for record, reason in zip(records, reasons, strict=True)
                if reason is not None
            ]
            if not dry_run:
                results = await asyncio.gather(
                    *(asyncio.wait_for(driver.destroy(r.name), _DELETE_TIMEOUT) for r in doomed),
                    return_exceptions=True,
                )
                failures = [
                    (r.name, e)
                    for r, e in zip(doomed, results, strict=True)
                    if isinstance(e, BaseException)
                ]
                for _, error in failures:
                    if not isinstance(error, Exception):
                        raise error  # cancellation
                if failures:  # the rest are deleted: say which are not, and why
                    raise CleanupError(
                        "; ".join(f"{name}: {error!r}" for name, error in failures),
                        sandbox=", ".join(name for name, _ in failures),
                        platform=str(platform),
                    )
            reaped.extend(doomed)
    return reaped


def _reasons(records: list[SandboxRecord]) -> list[str | None]:
    return [why_reap(record) for record in records]


def why_reap(record: SandboxRecord, *, now: float | None = None) -> str | None:
    """Why the sandbox should be deleted, or None to leave it alone."""
    labels = record.labels
    now = time.time() if now is None else now
    expires = labels.get(EXPIRES_AT, NEVER)
    if expires != NEVER and _number(expires) is not None and now >= float(expires):
        return "expired"
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
