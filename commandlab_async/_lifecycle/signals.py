"""SIGTERM ends a process only after its sandboxes are deleted.

``asyncio.run`` already turns SIGINT into a cancellation of the main task, so cleanup
runs. SIGTERM's default action kills the process on the spot, leaking every sandbox.
While sandboxes are held, a handler cancels the tasks holding them (and any that start
holding one afterwards); when the last one has cleaned up, the handler that was there
before is put back and the signal raised again, so the process still ends the way it
would have. A handler installed before ours (a web server's graceful shutdown, say)
thus runs after cleanup instead of racing it; an ignored SIGTERM stays ignored, and one
the program gave its event loop stays the loop's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["terminate_after_cleanup"]


_Handler = Callable[[int, FrameType | None], Any] | int | None


class _Guard:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.holders: Counter[asyncio.Task[object]] = Counter()
        self.installed = False
        self.terminating = False
        self.previous: _Handler = signal.SIG_DFL
        self.ours: _Handler = None

    def enter(self, task: asyncio.Task[object]) -> None:
        if not self.holders and not self.installed and self._may_install():
            self.previous = signal.getsignal(signal.SIGTERM)
            self.loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            self.ours = signal.getsignal(signal.SIGTERM)
            self.installed = True
        self.holders[task] += 1
        if self.terminating:  # too late to start: clean up with the others
            task.cancel("SIGTERM")

    def leave(self, task: asyncio.Task[object]) -> None:
        self.holders[task] -= 1
        if self.holders[task] <= 0:
            del self.holders[task]
        if self.holders or not self.installed:
            return
        current = signal.getsignal(signal.SIGTERM)
        self.loop.remove_signal_handler(signal.SIGTERM)  # sets SIG_DFL
        if current is not self.ours:
            signal.signal(signal.SIGTERM, current)  # replaced after us: theirs stays
        elif self.previous is not None:  # None: set outside Python, cannot be restored
            signal.signal(signal.SIGTERM, self.previous)
        self.installed = False
        if self.terminating:
            self.terminating = False
            os.kill(os.getpid(), signal.SIGTERM)

    def _may_install(self) -> bool:
        handler = signal.getsignal(signal.SIGTERM)
        return (
            threading.current_thread() is threading.main_thread()
            and handler is not signal.SIG_IGN
            # The program gave SIGTERM to its event loop (loop.add_signal_handler, as
            # aiohttp's run_app does): the loop keeps one callback per signal, so ours
            # would replace theirs. Their shutdown cancels our holders anyway.
            and getattr(handler, "__module__", None) != "asyncio.unix_events"
        )

    def _on_sigterm(self) -> None:
        self.terminating = True
        for task in self.holders:
            task.cancel("SIGTERM")


_guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Guard] = weakref.WeakKeyDictionary()


@contextmanager
def terminate_after_cleanup() -> Iterator[None]:
    """Hold sandboxes in the current task: on SIGTERM, cancel it, and exit after cleanup."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - provision always runs in a task
        yield
        return
    guard = _guards.get(loop)
    if guard is None:
        guard = _guards[loop] = _Guard(loop)
    guard.enter(task)
    try:
        yield
    finally:
        guard.leave(task)
