"""SIGTERM ends a process only after its sandboxes are deleted.

``asyncio.run`` already turns SIGINT into a cancellation of the main task, so cleanup
runs. SIGTERM's default action kills the process on the spot, leaking every sandbox.
While sandboxes are held, and only if nobody else handles SIGTERM, a handler cancels
the tasks holding them; when the last one has cleaned up, the default action is
restored and the signal raised again, so the process still exits by SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["terminate_after_cleanup"]


class _Guard:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.holders: Counter[asyncio.Task[object]] = Counter()
        self.installed = False
        self.terminating = False

    def enter(self, task: asyncio.Task[object]) -> None:
        if not self.holders and not self.installed and self._may_install():
            self.loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            self.installed = True
        self.holders[task] += 1

    def leave(self, task: asyncio.Task[object]) -> None:
        self.holders[task] -= 1
        if self.holders[task] <= 0:
            del self.holders[task]
        if self.holders or not self.installed:
            return
        self.loop.remove_signal_handler(signal.SIGTERM)  # restores SIG_DFL
        self.installed = False
        if self.terminating:
            os.kill(os.getpid(), signal.SIGTERM)

    def _may_install(self) -> bool:
        return (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
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
