"""Sandboxes seen from outside the code that made them: list them, read their logs.

The CLI's ``ls`` and ``logs``, the pytest plugin's failure reports and anything a user
builds stand on these, so that none has to reach into drivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import MappingProxyType

from .._lifecycle.identity import is_detached
from .._lifecycle.leases import open_backend
from .._validation import to_number
from ..errors import SandboxNotFoundError, SpecError
from ..labels import CREATED_AT, EXPIRES_AT, MANAGED, NEVER, PID
from ..platforms import driver_class, options_class
from ..platforms.base import PLATFORMS, Platform, Target
from ..platforms.driver import SandboxRecord
from .handles import load, scan, target_of
from .reaper import is_kept, why_reap

__all__ = ["SandboxInfo", "list_sandboxes", "read_logs", "target_for"]

log = logging.getLogger("commandlab_async")


@dataclass(frozen=True, kw_only=True)
class SandboxInfo:
    """One sandbox of ours as its backend lists it, with what its labels tell."""

    name: str
    target: Target
    """Where it runs: ``target.platform`` and the region, cluster... of the listing."""
    state: str
    """The backend's word for it (``running``, ``exited (code 2)``...)."""
    labels: Mapping[str, str]
    created_at: float | None
    """Epoch seconds; None when its label is missing or unreadable."""
    expires_at: float | None
    """When its TTL deletes it (epoch seconds); None when it has no TTL."""
    owner: str
    """``pid N``, ``pid N (gone)``, ``detached`` (brought up to belong to no process),
    ``kept`` (left running by its owner, ``Computer.keep()``: it belongs to no process
    any more, and only its TTL or ``rm`` removes it) or ``unknown``."""
    reapable: str | None
    """Why :func:`~commandlab_async.gc` would delete it now, None if it would not."""
    reachable: bool
    """A handle of it is saved here: :func:`~commandlab_async.connect` can reach it."""

    @property
    def platform(self) -> str:
        return str(self.target.platform)


def target_for(platform: str | Platform, **scope: str) -> Target:
    """The target a platform name and its scope name: ``target_for("aws-ecs",
    region="eu-west-1")``. Raises SpecError for an unknown platform or scope, and
    UnsupportedPlatformError for a platform without a driver, before any I/O."""
    if str(platform) not in PLATFORMS:
        raise SpecError("platform", f"must be one of {sorted(PLATFORMS)}, got {platform!r}")
    resolved = PLATFORMS[str(platform)]
    driver_class(resolved)  # a platform without a driver says so before its scope
    return options_class(resolved).target_from(scope)


async def list_sandboxes(
    where: Target | Iterable[Target] | None = None, *, labels: Mapping[str, str] | None = None
) -> list[SandboxInfo]:
    """Every sandbox of ours on ``where`` (default: local Docker) carrying ``labels``,
    oldest first, whoever made it. Saved handles that cannot be read are skipped with a
    warning on the ``commandlab_async`` logger naming the file."""
    targets = _targets(where)
    found: list[tuple[Target, SandboxRecord]] = []
    async with AsyncExitStack() as stack:
        for target in targets:
            backend = await open_backend(stack, target)
            records = await backend.driver.list_sandboxes({**(labels or {}), MANAGED: "true"})
            found += [(target, record) for record in records]
    saved, skipped = await asyncio.to_thread(scan)
    for problem in skipped:  # a bad handle costs only its own sandbox's reachability
        log.warning("%s", " ".join(problem.split()))
    handles = {h.name: h for h in saved}
    kept = [is_kept(record, handles) for _, record in found]
    reasons = await asyncio.to_thread(
        lambda: [why_reap(r, kept=k) for (_, r), k in zip(found, kept, strict=True)]
    )
    infos = [
        _describe(target, record, reason, record.name in handles, kept=k)
        for (target, record), reason, k in zip(found, reasons, kept, strict=True)
    ]
    return sorted(infos, key=lambda i: (i.created_at or 0, i.name))


async def read_logs(
    name: str, where: Target | None = None, *, follow: bool = False
) -> AsyncGenerator[bytes, None]:
    """What the sandbox ``name`` on ``where`` printed — its daemon's log — as chunks of
    bytes, passed on as they come (hostile: whatever the sandbox wrote); with ``follow``,
    until the sandbox stops. ``where`` defaults to the target of the handle of ``name``
    saved here (a kept sandbox, or one ``commandlab up`` brought up), else local Docker.

    Local Docker and Kubernetes follow the log as a stream; Azure ACI serves it whole
    (its last 4 MB), so following it reads it again every 2 s. An async generator: to
    stop early, iterate it inside ``contextlib.aclosing`` so its connection closes at
    once rather than when the generator is collected. Raises UnsupportedOperationError
    on ECS and Cloud Run, whose logs are in CloudWatch and Cloud Logging (the message
    says where), and SandboxNotFoundError when ``where`` has no sandbox ``name``.
    """
    sandbox = SandboxRecord(name, {}, "")
    if where is None:
        try:
            handle = await asyncio.to_thread(load, name)
        except SandboxNotFoundError:  # no usable handle: local Docker, as ever
            pass
        else:
            where, sandbox = target_of(handle), SandboxRecord(name, handle.labels, "")
    (target,) = _targets(where)
    async with AsyncExitStack() as stack:
        backend = await open_backend(stack, target)
        async for chunk in backend.driver.logs(sandbox, follow=follow):
            yield chunk


def _targets(where: Target | Iterable[Target] | None) -> list[Target]:
    if where is None:
        return [target_for("docker")]
    if isinstance(where, Target):
        return [where]
    targets = list(where)
    if not all(isinstance(t, Target) for t in targets):
        raise SpecError("where", "takes Targets (see target_for)")
    return targets


def _describe(
    target: Target, record: SandboxRecord, reason: str | None, handle: bool, *, kept: bool
) -> SandboxInfo:
    labels = MappingProxyType(dict(record.labels))
    expires_text = labels.get(EXPIRES_AT, NEVER)
    if is_detached(labels):
        owner = "detached"
    elif kept:
        owner = "kept"
    elif PID in labels:
        owner = f"pid {labels[PID]}" + (" (gone)" if reason and "owner" in reason else "")
    else:
        owner = "unknown"
    return SandboxInfo(
        name=record.name,
        target=target,
        state=record.state,
        labels=labels,
        created_at=to_number(labels.get(CREATED_AT, "")),
        expires_at=None if expires_text == NEVER else to_number(expires_text),
        owner=owner,
        reapable=reason,
        reachable=handle,
    )
