"""The reaper: delete sandboxes whose TTL passed or whose owner process is gone.

A sandbox left running on purpose — kept (``Computer.keep()``, the pytest plugin's
``--commandlab-keep``, Inspect's ``--no-sandbox-cleanup``) or detached — belongs to no
process: only its TTL (or ``commandlab rm``) removes it. Its labels cannot say so (they
are fixed at create on Docker and ACI), but its saved handle does: a sandbox with a
kept handle in this user's state directory is never judged by its owner. (A kept sandbox
whose handle could not be saved, or a gc run by another user or with another
``COMMANDLAB_STATE_DIR``, still judges it by its owner.)

It judges an owner only where its pid means something: the sandbox's ``owner-ns`` label
must equal the reaper's own (same boot, same PID namespace). There, the owner is gone if
its pid is not alive or now belongs to a process with another start time. Sandboxes of
other machines, containers or PID namespaces, and those without the label, are left to
their TTL; so is everything when the reaper cannot tell its own namespace.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass

from .._client.transport import reason
from .._lifecycle.identity import SESSION_ID, owner_namespace, process_start_ticks
from .._lifecycle.leases import Backend, open_backend
from .._lifecycle.shielding import shielded
from .._validation import check_number, to_number
from ..errors import BackendTimeoutError, CleanupError, SpecError
from ..labels import EXPIRES_AT, MANAGED, NEVER, OWNER_NS, PID, PID_START, SESSION
from ..platforms.base import Target
from ..platforms.driver import SandboxRecord
from ..specs import DockerSpec, KubernetesSpec, Spec
from .handles import Handle, load_all
from .handles import forget as forget_handle

__all__ = ["Reaped", "gc", "remove"]

_DELETE_TIMEOUT = 60.0
GC_TIMEOUT = 60.0
"""How long ``gc`` may take by default, listing and deleting included (seconds)."""
_PID_MAX = 1 << 22  # Linux's PID_MAX_LIMIT


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
    timeout: float = GC_TIMEOUT,
) -> list[Reaped]:
    """Delete expired and orphaned sandboxes where the user names; return what was deleted.

    A sandbox whose kept handle is saved here (kept or detached) is no orphan: it is deleted
    only once its TTL passed (or it stopped).
    ``where`` holds specs (their target: platform, region, cluster, namespace...) or
    :class:`Target` objects; the default sweeps the local Docker Engine. Deletes go
    through the same per-target limits as fleets, each shielded from cancellation and
    bounded in time; if some fail, the others are still deleted and
    :class:`CleanupError` names the ones that remain. The whole sweep takes at most
    ``timeout`` seconds, else :class:`BackendTimeoutError` names the target that did not
    answer (what was deleted by then stays deleted).
    """
    return await _sweep_all(where, _reasons, "gc", dry_run=dry_run, timeout=timeout)


async def remove(
    where: Iterable[Spec | Target] | Spec | Target | None = None,
    *,
    names: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    dry_run: bool = False,
    timeout: float = GC_TIMEOUT,
) -> list[Reaped]:
    """Delete the sandboxes carrying all of ``labels`` (those named ``names`` among them,
    if given), whoever owns them (alive or not, kept or detached); return them.

    Only sandboxes we made (``commandlab.managed``) are ever touched. ``where``,
    ``timeout`` and the errors are as for :func:`gc`; a name found on no target is not
    an error (check the result), but its saved handle, stale, is forgotten.
    """
    wanted = set(names)
    if not wanted and not labels:
        raise SpecError("remove", "needs names or labels: it never deletes everything")
    if labels is not None and not (
        isinstance(labels, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise SpecError("labels", "must be a mapping of str to str")

    def judge(records: list[SandboxRecord]) -> list[str | None]:
        if not wanted:
            return ["labelled"] * len(records)
        return ["named" if record.name in wanted else None for record in records]

    reaped = await _sweep_all(
        where, judge, "remove", dry_run=dry_run, timeout=timeout, labels=labels or {}
    )
    if not dry_run and (missing := sorted(wanted - {r.name for r in reaped})):
        await asyncio.to_thread(_forget_handles, missing)
    return reaped


async def _sweep_all(
    where: Iterable[Spec | Target] | Spec | Target | None,
    judge: Judge,
    what: str,
    *,
    dry_run: bool,
    timeout: float,
    labels: Mapping[str, str] | None = None,
) -> list[Reaped]:
    check_number("timeout", timeout, low=0.1, high=24 * 3600)
    targets = _targets(DockerSpec() if where is None else where)
    reaped: list[Reaped] = []
    if not targets:
        return reaped
    target = targets[0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline), AsyncExitStack() as stack:
            for target in targets:
                backend = await open_backend(stack, target)
                reaped += await _sweep(
                    backend, judge, dry_run=dry_run, deadline=deadline, labels=labels
                )
    except TimeoutError:
        if loop.time() < deadline:
            raise  # not ours
        raise BackendTimeoutError(
            f"{what} did not finish within {timeout:g}s: the backend did not answer"
            f" ({len(reaped)} sandbox(es) deleted before that)",
            sandbox=None,
            platform=str(target),
        ) from None
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


Judge = Callable[[list[SandboxRecord]], list[str | None]]
"""Why to delete each record, or None to leave it; runs in a thread (it may read /proc)."""


async def _sweep(
    backend: Backend,
    judge: Judge,
    *,
    dry_run: bool,
    deadline: float,
    labels: Mapping[str, str] | None = None,
) -> list[Reaped]:
    driver, target = backend.driver, backend.target
    records = await driver.list_sandboxes({**(labels or {}), MANAGED: "true"})
    reasons = await asyncio.to_thread(judge, records)
    if not labels and not dry_run:  # a full sweep: it saw every sandbox on the target
        await driver.tidy(records)
    doomed = [
        (record, Reaped(record.name, str(target.platform), reason, str(target)))
        for record, reason in zip(records, reasons, strict=True)
        if reason is not None
    ]
    if dry_run or not doomed:
        return [reaped for _, reaped in doomed]

    # Shielded, but not past gc's own deadline: each call within its budget, and queueing
    # behind the others within what is left of the sweep's time.
    left = max(deadline - asyncio.get_running_loop().time(), 0.1)
    budget = min(_DELETE_TIMEOUT, left)

    async def delete(record: SandboxRecord) -> None:
        await backend.limiter.delete(lambda: driver.destroy(record), budget=budget)

    results = await asyncio.gather(
        *(shielded(delete(record), timeout=left) for record, _ in doomed),
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
    failed = {name for name, _ in failures}
    gone = [record.name for record, _ in doomed if record.name not in failed]
    await asyncio.to_thread(_forget_handles, gone)
    if failures:  # the rest are deleted: say which are not, and why
        raise CleanupError(
            "; ".join(f"{name}: {reason(error)}" for name, error in failures),
            sandbox=", ".join(name for name, _ in failures),
            platform=str(target),
        )
    return [reaped for _, reaped in doomed]


def _forget_handles(names: list[str]) -> None:
    for name in names:
        forget_handle(name)


def _reasons(records: list[SandboxRecord]) -> list[str | None]:
    handles = saved_handles()
    return [why_reap(record, kept=is_kept(record, handles)) for record in records]


def saved_handles() -> dict[str, Handle]:
    """This user's usable saved handles, by sandbox name (reads the state directory)."""
    return {handle.name: handle for handle in load_all()}


def is_kept(record: SandboxRecord, handles: Mapping[str, Handle]) -> bool:
    """Whether the sandbox was left running on purpose (kept or detached): ``handles``
    holds a kept handle of it, saved by the process that made it (same session)."""
    handle = handles.get(record.name)
    return (
        handle is not None
        and handle.kept
        and handle.labels.get(SESSION) == record.labels.get(SESSION)
    )


def why_reap(record: SandboxRecord, *, now: float | None = None, kept: bool = False) -> str | None:
    """Why the sandbox should be deleted, or None to leave it alone. A ``kept`` one (see
    :func:`is_kept`) belongs to no process: it goes when its TTL passes or it stopped."""
    labels = record.labels
    now = time.time() if now is None else now
    expires = labels.get(EXPIRES_AT, NEVER)
    if expires != NEVER and to_number(expires) is not None and now >= float(expires):
        return "expired"
    if record.finished:
        return f"finished ({record.state})"
    if kept or labels.get(SESSION) == SESSION_ID:
        return None  # no owner to judge, or ours and we are alive
    ours = owner_namespace()
    if ours is None or labels.get(OWNER_NS) != ours:
        return None  # its pid means nothing here: only its TTL can tell
    pid = _pid(labels.get(PID, ""))
    if pid is None:
        return None
    if not _owner_alive(pid, labels.get(PID_START)):
        return f"owner process {pid} is gone"
    return None


def _pid(text: str) -> int | None:
    # Never 0 or negative: os.kill would signal a process group, not the owner.
    if text.isascii() and text.isdigit() and 0 < int(text) <= _PID_MAX:
        return int(text)
    return None


def _owner_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` exists and is the one that started at ``start`` ticks."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    started = process_start_ticks(pid)  # None: hidden from us (hidepid), so cannot tell
    return start is None or started is None or started == start
