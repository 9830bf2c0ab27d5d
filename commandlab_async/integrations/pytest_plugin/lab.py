"""CommandLab: this pytest process's sandboxes, held on the background loop."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ... import Computer, Fleet, Spec, WarmPool, labelled, provision, provision_many
from ...labels import TEST_RUN, WORKER
from .background import BackgroundLoop, Hold
from .settings import Keep, Settings

__all__ = ["CommandLab", "KeptSandbox"]

T = TypeVar("T")
# How long interrupted or final cleanup may take: the longest destroy_timeout, and then some.
_CLEANUP_GRACE = 90.0


@dataclass(frozen=True)
class KeptSandbox:
    """A sandbox left running after its test, for the end-of-run summary."""

    name: str
    platform: str
    test: str
    expires_at: float | None


class CommandLab:
    """The sandboxes of this pytest process (the ``commandlab`` fixture).

    Every sandbox is brought up, held and deleted on one background event loop and
    carries this run's and worker's labels; Computers work from any test's loop.
    """

    def __init__(self, settings: Settings, *, run_id: str, worker: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.worker = worker
        self.kept: list[KeptSandbox] = []
        self.shared: list[tuple[Computer, Spec]] = []
        """The session fleet's sandboxes, named in the reports of the tests that use it."""
        self.failures = 0
        """Failed test phases so far: a sandbox is kept with ``--commandlab-keep=failed``
        when a test failed while it was up."""
        self._background: BackgroundLoop | None = None
        self._lock = threading.RLock()  # the SIGTERM handler may close from inside
        self._sigterm = _SigtermCleanup(self)
        self.say: Callable[[str], None] = lambda text: print(f"commandlab: {text}")
        """Tells the person at the terminal (past pytest's output capture)."""

    @property
    def labels(self) -> dict[str, str]:
        """The labels every sandbox of this process carries."""
        return {TEST_RUN: self.run_id, WORKER: self.worker}

    def spec(self, spec: Spec | None = None, **overrides: Any) -> Spec:
        """``spec`` (default: the run's options) with ``overrides`` applied."""
        if spec is None:
            return self.settings.spec(overrides)
        return dataclasses.replace(spec, **overrides) if overrides else spec

    # -- sync, for fixtures ------------------------------------------------

    @contextmanager
    def provision(
        self, spec: Spec | None = None, *, what: str = "a fixture", **overrides: Any
    ) -> Iterator[Computer]:
        """Like :func:`~commandlab_async.provision`, from synchronous code (a fixture of
        any scope): the sandbox lives on the background loop and is deleted when the
        block ends (or kept, as ``--commandlab-keep`` says; ``what`` names its user in
        the summary)."""
        failures = self.failures
        hold = self._enter(self._provision(self.spec(spec, **overrides)))
        sandbox = hold.entered.result()
        try:
            yield sandbox
        finally:
            self.release([hold], failures, what)

    @contextmanager
    def fleet(
        self,
        spec: Spec | None = None,
        count: int | None = None,
        *,
        what: str = "a fixture's fleet",
        **overrides: Any,
    ) -> Iterator[Fleet]:
        """Like :func:`~commandlab_async.provision_many` with one spec, from synchronous
        code; ``count`` defaults to ``--commandlab-count``."""
        failures = self.failures
        spec = self.spec(spec, **overrides)
        hold = self._enter(self._fleet(spec, count or self.settings.count))
        try:
            yield hold.entered.result()
        finally:
            self.release([hold], failures, what)

    def release(
        self, holds: Sequence[Hold[Computer] | Hold[Fleet]], failures: int, what: str
    ) -> None:
        """Leave held sandboxes (kept if asked: ``failures`` counts failures before they
        were made) and wait for their cleanup; the errors of those deletes are raised."""
        computers = [c for hold in holds for c in _computers(hold.entered.result())]
        keep = self.settings.keep
        if keep is Keep.ALWAYS or (keep is Keep.FAILED and self.failures > failures):
            for computer in computers:
                computer.keep()
        errors: list[BaseException] = []
        for hold in holds:
            hold.release()
        for hold in holds:
            try:
                hold.finished.result(_CLEANUP_GRACE)
            except BaseException as exc:
                errors.append(exc)
        self._record_kept(computers, what)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup("sandboxes could not be deleted", errors)

    def _record_kept(self, computers: list[Computer], what: str) -> None:
        """Name the kept ones in the end-of-run summary (their handles are saved by now)."""
        for computer in computers:
            if computer.kept:
                self.kept.append(
                    KeptSandbox(computer.name, computer.platform, what, computer.expires_at)
                )

    # -- async, for factories ----------------------------------------------

    async def provision_async(self, spec: Spec) -> Hold[Computer]:
        """Bring up a sandbox from any event loop; release the hold to delete it."""
        return await self.background.enter_async(self._provision(spec))

    # -- the loop ----------------------------------------------------------

    @property
    def background(self) -> BackgroundLoop:
        with self._lock:
            if self._background is None:
                self._sigterm.install()
                self._background = BackgroundLoop("commandlab-pytest")
                if self.settings.pool:
                    # Filled in the background; held until the loop closes.
                    self._background.hold(self._warm_pool(self.settings.pool))
            return self._background

    def close(self) -> list[BaseException]:
        """Delete whatever is still held (bounded); the errors of those deletes."""
        with self._lock:
            background, self._background = self._background, None
        self._sigterm.uninstall()
        return [] if background is None else background.close(_CLEANUP_GRACE)

    def _enter(self, manager: AbstractAsyncContextManager[T]) -> Hold[T]:
        return self.background.enter(manager, _CLEANUP_GRACE)

    @asynccontextmanager
    async def _provision(self, spec: Spec) -> AsyncIterator[Computer]:
        with labelled(self.labels):
            async with provision(spec) as computer:
                yield computer

    @asynccontextmanager
    async def _warm_pool(self, size: int) -> AsyncIterator[WarmPool]:
        """Ready sandboxes of the run's own spec, for every provision of it on this loop."""
        with labelled(self.labels):
            async with WarmPool(self.spec(), size=size, wait=False) as pool:
                yield pool

    @asynccontextmanager
    async def _fleet(self, spec: Spec, count: int) -> AsyncIterator[Fleet]:
        with labelled(self.labels):
            async with provision_many(spec, count=count) as fleet:
                yield fleet


def _computers(made: Computer | Fleet) -> list[Computer]:
    return [made] if isinstance(made, Computer) else list(made)


class _SigtermCleanup:
    """SIGTERM deletes this process's sandboxes, then ends it as SIGTERM would have.

    Installed only over the default action (another handler, or an ignored SIGTERM, is
    left alone), from the main thread.
    """

    def __init__(self, lab: CommandLab) -> None:
        self._lab = lab
        self._installed = False

    def install(self) -> None:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        self._lab.say("SIGTERM: deleting this process's sandboxes first")
        try:
            self._lab.close()
        finally:  # end as SIGTERM would have, whatever cleanup met
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
