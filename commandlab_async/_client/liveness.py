"""Telling a slow command from a daemon that stopped answering.

A command may print nothing for an hour; a daemon frozen by code in its sandbox (it runs
as the same user), starved, or cut off looks the same from the connection. So a call
that has waited :data:`CHECK_AFTER` seconds for the daemon asks it, on another
connection, whether it is alive: ``/health`` is answered by the daemon's own loop,
whatever its workers are doing. An answer lets the call wait on (and ask again after
the next quiet stretch); no answer within :data:`PROBE_TIMEOUT` abandons the call with
:class:`~commandlab_async.errors.DaemonUnresponsiveError`. A daemon that stops answering
is therefore noticed within :data:`LIVENESS_TIMEOUT` seconds, even by calls that gave no
timeout. Concurrent calls to one sandbox share one probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

__all__ = ["CHECK_AFTER", "LIVENESS_TIMEOUT", "PROBE_TIMEOUT", "Liveness"]

CHECK_AFTER = 5.0
"""Seconds a call waits on the daemon in silence before the daemon is asked if it lives."""
PROBE_TIMEOUT = 5.0
"""Seconds the daemon has to answer that question."""
LIVENESS_TIMEOUT = CHECK_AFTER + PROBE_TIMEOUT
"""The longest a call waits on a daemon that stopped answering, in seconds."""

Probe = Callable[[], Awaitable[None]]
"""Asks the daemon whether it is alive: returns if so, raises the verdict if not."""


class Liveness:
    """Watches the awaits of calls to one daemon and abandons them if the daemon is dead."""

    def __init__(self, probe: Probe, *, check_after: float = CHECK_AFTER) -> None:
        self._probe = probe
        self.check_after = check_after
        self._running: asyncio.Future[None] | None = None

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Around one await on the daemon; never around code that yields to the caller."""
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to abandon
            yield
            return
        watch = _Watch(self, task)
        try:
            yield
        except asyncio.CancelledError:
            # Our cancel, and no one else's: the daemon's verdict replaces it.
            if watch.verdict is not None and task.uncancel() == 0:
                raise watch.verdict from None
            raise
        finally:
            watch.close()

    def shared_probe(self) -> asyncio.Future[None]:
        """The probe in flight, or a new one: concurrent calls ask the daemon once."""
        # A Computer may be used from several loops: a probe serves only its own.
        running, loop = self._running, asyncio.get_running_loop()
        if running is None or running.done() or running.get_loop() is not loop:
            running = self._running = asyncio.ensure_future(self._probe())
            # Read its outcome even if every watcher has left before it ends.
            running.add_done_callback(lambda f: f.cancelled() or f.exception())
        return running


class _Watch:
    """The timer of one watched await: probe after each quiet stretch, cancel on a verdict."""

    def __init__(self, liveness: Liveness, task: asyncio.Task[object]) -> None:
        self._liveness = liveness
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._open = True
        self.verdict: BaseException | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(
            liveness.check_after, self._check
        )

    def _check(self) -> None:
        if self._open:
            self._liveness.shared_probe().add_done_callback(self._judge)

    def _judge(self, probe: asyncio.Future[None]) -> None:
        if not self._open:
            return
        error = None if probe.cancelled() else probe.exception()
        if error is None:
            self._handle = self._loop.call_later(self._liveness.check_after, self._check)
        else:
            self.verdict = error
            self._task.cancel()

    def close(self) -> None:
        self._open = False
        if self._handle is not None:
            self._handle.cancel()
