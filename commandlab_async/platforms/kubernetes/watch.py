"""One watch of a namespace's pods, shared by every sandbox of the process waiting on it.

A fleet of 200 pods costs one list and one long-lived watch, not 200 pollers: the watch
keeps the latest copy of each pod (by its sandbox label), and waiters are woken when their
pod changes. It resumes from the last resourceVersion it saw when the stream ends or is
cut, and lists again when the API server answers 410 (history compacted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

__all__ = ["PodWatch", "WatchExpired"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Pod = Mapping[str, Any]


class WatchExpired(Exception):
    """The API server no longer has the history a watch asked for (410 Gone)."""


@dataclass
class _Entry:
    pod: Pod | None = None
    seen: bool = False
    """A pod with this key was seen at least once (so None now means it is gone)."""


Lister = Callable[[], Awaitable[Mapping[str, Any]]]
"""Lists the pods (a PodList as a dict), retrying what is transient."""
Opener = Callable[[str], Awaitable[aiohttp.ClientResponse]]
"""Opens a watch from a resourceVersion; raises for an error answer (410: WatchExpired)."""


class PodWatch:
    """The latest state of every pod carrying ``key_label``, kept by one list + watch."""

    def __init__(self, key_label: str, list_pods: Lister, open_watch: Opener) -> None:
        self._key_label = key_label
        self._list = list_pods
        self._open = open_watch
        self._entries: dict[str, _Entry] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.synced = False
        """The first list has been read: :meth:`get` answers for every pod."""
        self.events = 0
        """Watch events received (for tests and benchmarks)."""

    def get(self, key: str) -> tuple[Pod | None, bool]:
        """The pod last seen with ``key``, and whether one was ever seen."""
        entry = self._entries.get(key)
        return (entry.pod, entry.seen) if entry else (None, False)

    async def wait(self, key: str, check: Callable[[Pod | None, bool], T | None]) -> T:
        """Wait until ``check(pod, seen)`` returns something other than None; return it.

        ``check`` runs on every change of the pod; what it raises is raised here. The
        caller bounds the wait with its own deadline.
        """
        self._start()
        while True:
            if self._error is not None:
                raise self._error
            wakeup = self._wakeups.setdefault(key, asyncio.Event())
            if self.synced:
                result = check(*self.get(key))
                if result is not None:
                    return result
            await wakeup.wait()

    def forget(self, key: str) -> None:
        """Drop what is known of a sandbox that has been deleted."""
        self._entries.pop(key, None)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._error = None
            self._task = asyncio.create_task(self._run(), name="commandlab-pod-watch")

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self, key: str) -> None:
        if (event := self._wakeups.pop(key, None)) is not None:
            event.set()

    def _wake_all(self) -> None:
        for key in list(self._wakeups):
            self._wake(key)

    async def _run(self) -> None:
        pause = 0.1
        while True:
            try:
                if self._version is None:
                    self._replace(await self._list())
                await self._follow()
                pause = 0.1
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                log.debug("pod watch expired at %s: listing again", self._version)
                self._version = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A cut stream or a dropped connection: resume where it stopped.
                log.debug("pod watch interrupted (%r); resuming", exc)
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(pause * 2, 5.0)
            except Exception as exc:
                # Refused (RBAC, a bad selector...) or failed after retries: every waiter
                # hears it; the next waiter starts a new watch.
                self._error = exc
                self._wake_all()
                return

    def _replace(self, listed: Mapping[str, Any]) -> None:
        current: dict[str, Pod] = {}
        for pod in listed.get("items") or []:
            if (key := self._key(pod)) is not None:
                current[key] = pod
        for key, entry in self._entries.items():
            if key not in current and entry.pod is not None:
                entry.pod = None  # deleted while we were not watching
                self._wake(key)
        for key, pod in current.items():
            self._entries[key] = _Entry(pod, seen=True)
            self._wake(key)
        self._version = str(listed.get("metadata", {}).get("resourceVersion") or "") or None
        self.synced = True
        self._wake_all()

    def _key(self, pod: Pod) -> str | None:
        value = (pod.get("metadata", {}).get("labels") or {}).get(self._key_label)
        return str(value) if value is not None else None

    async def _follow(self) -> None:
        assert self._version is not None
        response = await self._open(self._version)
        async with response:
            buffered = b""
            async for chunk in response.content.iter_any():
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._apply(json.loads(line))

    def _apply(self, event: Mapping[str, Any]) -> None:
        self.events += 1
        kind, pod = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if pod.get("code") == 410:
                raise WatchExpired(pod.get("message"))
            raise aiohttp.ClientPayloadError(f"watch error: {pod.get('message')}")
        version = pod.get("metadata", {}).get("resourceVersion")
        if version:
            self._version = str(version)
        if kind == "BOOKMARK" or (key := self._key(pod)) is None:
            return
        entry = self._entries.setdefault(key, _Entry())
        if kind == "DELETED":
            # A Deployment's replacement pod may already be here: only the pod we hold
            # for this key is gone.
            held = entry.pod.get("metadata", {}).get("name") if entry.pod else None
            if held == pod.get("metadata", {}).get("name"):
                entry.pod = None
        else:
            entry.pod, entry.seen = pod, True
        self._wake(key)
