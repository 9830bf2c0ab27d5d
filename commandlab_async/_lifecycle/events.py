"""Lifecycle events: what happens to each sandbox, with timestamps, for progress displays."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["EventCallback", "EventKind", "EventStream", "LifecycleEvent", "lifecycle_events"]

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
    POOL_HIT = "pool-hit"
    """Handed out ready by a :class:`WarmPool` (instead of ``creating`` ... ``ready``: a
    cold start); the detail says how long the caller waited, if at all."""


@dataclass(frozen=True)
class LifecycleEvent:
    """One step of one sandbox. ``at`` is ``time.time()`` when it happened."""

    sandbox: str
    platform: str
    kind: EventKind
    detail: str = ""
    at: float = field(default_factory=time.time)


EventCallback = Callable[[LifecycleEvent], None]


class EventStream:
    """Lifecycle events as an async iterator, through a bounded buffer.

    It is an :data:`EventCallback`, so ``provision_many(spec, count=50, on_event=stream)``
    streams one fleet's events; :func:`lifecycle_events` streams every sandbox's of the
    process. Events may arrive from any thread or event loop. When ``maxsize`` events
    wait unread, the oldest is dropped and counted in :attr:`dropped`: a slow progress
    display loses history, never the latest state, and never slows a lifecycle down.
    :meth:`close` (or leaving ``async with``) ends the iteration once the events already
    buffered are read.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self._buffer: deque[LifecycleEvent] = deque(maxlen=maxsize)
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        """Events dropped because the buffer was full."""

    def __call__(self, event: LifecycleEvent) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def close(self) -> None:
        """No more events; iteration ends after those buffered. Idempotent."""
        _unsubscribe(self)
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> LifecycleEvent:
        while True:
            with self._lock:
                if self._buffer:
                    return self._buffer.popleft()
                if self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    def set_result() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop = waiter.get_loop()
    if not loop.is_closed():
        loop.call_soon_threadsafe(set_result)


# Copied on write, so emit() from any thread reads it without a lock.
_subscribers: frozenset[EventStream] = frozenset()
_subscribers_lock = threading.Lock()


def _unsubscribe(stream: EventStream) -> None:
    global _subscribers
    with _subscribers_lock:
        _subscribers = _subscribers - {stream}


def lifecycle_events(maxsize: int = 1024) -> EventStream:
    """Every lifecycle event of the process, from now until the stream is closed.

    ```python
    async with lifecycle_events() as events:
        async for event in events:
            print(event.sandbox, event.kind)
    ```
    """
    global _subscribers
    stream = EventStream(maxsize)
    with _subscribers_lock:
        _subscribers = _subscribers | {stream}
    return stream


def emit(
    callback: EventCallback | None, sandbox: str, platform: str, kind: EventKind, detail: str = ""
) -> None:
    """Deliver an event; a failing callback is logged, never allowed to break a lifecycle."""
    if callback is None and not _subscribers:
        return
    event = LifecycleEvent(sandbox, platform, kind, detail)
    for deliver in (callback, *_subscribers):
        if deliver is None:
            continue
        try:
            deliver(event)
        except Exception:
            log.exception("lifecycle event callback failed")
