"""Lifecycle events: what happens to each sandbox, with timestamps, for progress displays."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EventCallback", "EventKind", "LifecycleEvent"]

log = logging.getLogger("commandlab_async")


class EventKind(enum.StrEnum):
    """The steps of a sandbox's life, in order (``FAILED`` replaces the rest on failure,
    ``KEPT`` the deletion of a kept sandbox)."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    KEPT = "kept"
    """Left running when its block ended (:meth:`Computer.keep`); its TTL still applies."""


@dataclass(frozen=True)
class LifecycleEvent:
    """One step of one sandbox. ``at`` is ``time.time()`` when it happened."""

    sandbox: str
    platform: str
    kind: EventKind
    detail: str = ""
    at: float = field(default_factory=time.time)


EventCallback = Callable[[LifecycleEvent], None]


def emit(
    callback: EventCallback | None, sandbox: str, platform: str, kind: EventKind, detail: str = ""
) -> None:
    """Deliver an event; a failing callback is logged, never allowed to break a lifecycle."""
    if callback is None:
        return
    try:
        callback(LifecycleEvent(sandbox, platform, kind, detail))
    except Exception:
        log.exception("lifecycle event callback failed")
