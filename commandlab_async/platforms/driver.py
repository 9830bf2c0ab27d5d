"""Driver protocol v2: what every backend implements, and the helper they all share.

One driver instance serves one :class:`Target` (a platform plus its region, cluster,
namespace...) for every fleet of a process. It is told everything per sandbox: the spec
and identity when creating, the sandbox's name and labels (:class:`SandboxRef`) when
asked for its state or to delete it. Anything it remembers per sandbox is only an
optimisation, so ``gc`` can delete what another process created.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import math
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from .._client.tls import SandboxTls, pinned_context
from ..daemon import protocol as wire
from ..errors import (
    BackendError,
    BackendTimeoutError,
    SandboxExitedError,
    UnsupportedOperationError,
)
from ..specs import Spec
from .base import HeaderSource, Limits, MachineQuota, Platform, RunningSandbox, Target

__all__ = [
    "SESSION_ID",
    "TRANSIENT_STATUS",
    "Driver",
    "Failure",
    "Reach",
    "SandboxIdentity",
    "SandboxRecord",
    "SandboxRef",
    "SandboxState",
    "TokenBucket",
    "daemon_env",
    "retry_after_seconds",
    "token_digest",
]

#: Identifies this process's sandboxes for the reaper.
SESSION_ID = secrets.token_hex(8)


@dataclass(frozen=True)
class SandboxIdentity:
    """Name, labels and token of one sandbox. The token is kept out of ``repr``."""

    name: str
    labels: dict[str, str]
    created_at: float
    expires_at: float | None
    token: str = field(repr=False)


class TokenBucket:
    """A rate limit: ``burst`` calls back to back, then ``rate`` a second, first come first
    served, with a little jitter so fleets of several processes spread out."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._refilled = asyncio.get_running_loop().time()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait until a call may be made."""
        if math.isinf(self.rate):
            return
        loop = asyncio.get_running_loop()
        async with self._lock:
            now = loop.time()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                await asyncio.sleep(wait + random.uniform(0, 0.1 * wait))
                self._tokens = 1.0
                self._refilled = loop.time()
            self._tokens -= 1


T = TypeVar("T")
_LONGEST_WAIT = 60.0  # the longest Retry-After one call waits for (seconds)
#: HTTP statuses worth another try: timeouts, throttling and 5xx.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TargetT = TypeVar("TargetT", bound=Target)


class SandboxRef(Protocol):
    """What names a sandbox on its backend: a :class:`SandboxIdentity` or a listed record."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class SandboxState:
    """What the backend says about one sandbox."""

    detail: str
    """Human-readable state, e.g. ``running`` or ``exited (code 2)``."""
    terminal: bool = False
    """True when the sandbox has stopped or is gone and will not become ready."""
    exit_code: int | None = None
    """Once stopped: its main process's exit status, where the backend tells it."""
    reason: str | None = None
    """Once stopped: why, in the backend's words (``OOM killed``...), where it tells."""
    logs: str = ""
    """Once stopped: the last of what it printed, where the driver could keep it."""

    def exited_error(self, sandbox: str, platform: str) -> SandboxExitedError:
        """The :class:`SandboxExitedError` that says this state."""
        return SandboxExitedError(
            f"stopped before its daemon answered: {self.detail}",
            sandbox=sandbox,
            platform=platform,
            state=self.detail,
            exit_code=self.exit_code,
            reason=self.reason,
            logs=self.logs,
        )


@dataclass(frozen=True)
class SandboxRecord:
    """A sandbox found on a backend by its labels."""

    name: str
    labels: Mapping[str, str]
    state: str
    finished: bool = False
    """It has stopped for good but still exists (and may count against a quota)."""


@dataclass(frozen=True)
class Failure:
    """How a driver classifies an error of its SDK: by type and status code, and text only
    where the backend puts nothing else (a Google quota named only in its message)."""

    code: int | str | None
    """The backend's HTTP status or error code; None when it did not answer."""
    transient: bool
    """A retry may succeed (throttling, 5xx, a dropped connection)."""
    not_found: bool = False
    """The thing asked about does not exist."""


@dataclass(frozen=True)
class Reach:
    """How this process reaches the daemon of a sandbox another process brought up (from
    its saved handle): the URL, and the TLS and headers this process's credentials give."""

    url: str
    ssl: ssl.SSLContext | None = None
    headers: HeaderSource | None = None


class Driver(abc.ABC, Generic[TargetT]):
    """The protocol every backend implements. The constructor does no I/O.

    Class attributes state the platform's facts; methods are coroutines that never
    block the event loop and raise :class:`BackendError` (the SDK's error as
    ``__cause__``) for what the backend refused or failed.
    """

    platform: ClassVar[Platform]
    default_limits: ClassVar[Limits] = Limits()
    """Limits that fit the backend's documented quotas; ``set_limits`` overrides them."""
    probe_interval: ClassVar[float] = 0.25
    """Longest pause between two readiness probes of the daemon (seconds)."""
    attempts: ClassVar[int] = 4
    """Calls in all for one operation whose failures are transient (see :meth:`call`)."""
    first_wait: ClassVar[float] = 0.05
    """Backoff between attempts: full jitter, from ``first_wait`` doubling to ``max_wait``."""
    max_wait: ClassVar[float] = 2.0
    call_timeout: ClassVar[float] = 60.0
    """Seconds one attempt of a backend call may take. A backend that accepts a request
    and never answers fails the call with :class:`BackendTimeoutError`, not retried: the
    caller's own deadline (``ready_timeout``, ``destroy_timeout``, gc's) is better spent
    than on asking a silent backend again."""

    def __init__(self, target: TargetT) -> None:
        self.target = target
        self._not_created: set[str] = set()
        # name -> the per-sandbox certificate its client pins (daemons reached over a
        # network with TLS of their own; see .._client.tls), until it is deleted.
        self._tls: dict[str, SandboxTls] = {}

    @classmethod
    def machine_quotas(cls, target: TargetT) -> tuple[MachineQuota, ...]:
        """The backend's documented rate quotas over ``target``, as token buckets that
        every process of this user on the machine shares (none: a local engine, whose
        only limit is this machine's). ``set_machine_quotas`` overrides them."""
        return ()

    def mark_not_created(self, name: str) -> None:
        """From :meth:`create`, before it raises: the backend was never asked (no
        connection, no credentials), so there is nothing to delete. A delete would only
        fail the same way and report a sandbox that never existed."""
        self._not_created.add(name)

    def take_not_created(self, name: str) -> bool:
        """Whether the failed create of ``name`` was marked by :meth:`mark_not_created`
        (asked once, by the lifecycle, which then skips the delete)."""
        if name not in self._not_created:
            return False
        self._not_created.discard(name)
        return True

    @classmethod
    @abc.abstractmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        """Classify an SDK error; None for anything that is not one (never translated)."""

    async def prepare(self, spec: Spec) -> Awaitable[None] | None:
        """Check that the backend has what ``spec`` needs before any sandbox of it is
        created (local Docker: its image). Raises :class:`BackendError` when the spec
        cannot be created (nothing has been). The check is bounded by ``ready_timeout``;
        a long step it starts (local Docker: building the missing default image) is
        returned, to be awaited without that bound; None when there is none."""
        return None

    @abc.abstractmethod
    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        """Ask the backend to create and start the sandbox named ``identity.name``."""

    @abc.abstractmethod
    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        """Wait until the backend says the sandbox runs and has an address; describe it.

        Raises :class:`SandboxExitedError` with the backend's reason if it stops first.
        """

    @abc.abstractmethod
    async def state(self, sandbox: SandboxRef) -> SandboxState:
        """The sandbox's current state (``terminal`` when gone or stopped)."""

    @abc.abstractmethod
    async def destroy(self, sandbox: SandboxRef) -> None:
        """Delete the sandbox. Idempotent: a sandbox that does not exist is success."""

    @abc.abstractmethod
    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        """Every sandbox on the target carrying all of ``labels``."""

    def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        """What the sandbox printed (its daemon's log), as it comes with ``follow``.

        Drivers that cannot read it raise :class:`UnsupportedOperationError`.
        """
        raise UnsupportedOperationError(
            f"reading logs is not supported on {self.platform} yet", sandbox=sandbox.name
        )

    def pin(self, sandbox: SandboxRef) -> str | None:
        """The certificate (PEM, no secret) the client pins for the sandbox's daemon, to
        save in its handle; None when its daemon is not reached over TLS of its own."""
        tls = self._tls.get(sandbox.name)
        return tls.cert_pem if tls is not None else None

    async def reach(self, sandbox: SandboxRef, url: str, pin: str | None) -> Reach | None:
        """How to reach the daemon of a sandbox from its saved handle (``url`` and ``pin``
        as saved), with this process's credentials; None when the backend says the
        sandbox is gone. By default: the saved URL, pinning the saved certificate."""
        return Reach(url, pinned_context(pin) if pin is not None else None)

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        """What the backend last said about a sandbox :meth:`running` still waits for
        (e.g. why a pod is not scheduled), without asking it again; None if nothing."""
        return None

    async def tidy(self, existing: list[SandboxRecord]) -> None:
        """Remove what sandboxes that no longer exist left outside the backend (``gc``
        calls it with every sandbox of the target, before it deletes any)."""

    async def close(self) -> None:
        """Release the SDK client and its connections."""

    async def call(
        self,
        what: str,
        sandbox: str | None,
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        """Await ``fn()``, retrying transient failures with full-jitter backoff.

        What the SDK raised last is translated into :class:`BackendError` (with ``code``
        and ``transient`` from :meth:`classify`, the SDK error as ``__cause__``). Each
        attempt is bounded by :attr:`call_timeout`.
        """

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, BackendTimeoutError):
                return False  # see call_timeout
            failure = self.classify(exc)
            asked = self.retry_after(exc)
            # A backend that asks for more than a minute (an hourly quota) is not waited
            # for inside one call: the caller hears of it now.
            return failure is not None and failure.transient and (asked or 0) <= _LONGEST_WAIT

        backoff = wait_random_exponential(multiplier=self.first_wait, max=self.max_wait)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = self.retry_after(error) if error is not None else None
            return max(asked or 0.0, backoff(state))

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(transient),
                stop=stop_after_attempt(self.attempts),
                wait=wait,
                reraise=True,
            ):
                with attempt:
                    bound = asyncio.timeout(self.call_timeout)
                    try:
                        async with bound:
                            return await fn()
                    except TimeoutError:
                        if not bound.expired():
                            raise  # the SDK's own timeout, classified like its other errors
                        raise BackendTimeoutError(
                            f"{what}: no answer from the backend in {self.call_timeout:g}s",
                            sandbox=sandbox,
                            platform=str(self.platform),
                        ) from None
        except BackendTimeoutError:
            raise
        except Exception as exc:
            translated = self.translate(exc, what, sandbox)
            if translated is exc:
                raise
            raise translated from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def call_or_missing(
        self, what: str, sandbox: str | None, fn: Callable[[], Awaitable[T]]
    ) -> T | None:
        """Like :meth:`call`, but None when the backend says the thing does not exist."""
        try:
            return await self.call(what, sandbox, fn)
        except BackendError as exc:
            failure = self.classify(exc.__cause__) if exc.__cause__ else None
            if failure is not None and failure.not_found:
                return None
            raise

    @classmethod
    def retry_after(cls, exc: BaseException) -> float | None:
        """Seconds the backend asked to wait before a retry (its ``Retry-After``), if any."""
        return None

    def translate(self, exc: Exception, what: str, sandbox: str | None) -> Exception:
        """``exc`` as the library's error if the SDK raised it, else ``exc`` itself."""
        failure = self.classify(exc)
        if failure is None:
            return exc
        return BackendError(
            f"{what} failed: {exc}",
            sandbox=sandbox,
            platform=str(self.platform),
            transient=failure.transient,
            code=failure.code,
        )


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's seconds; None when absent or an HTTP date (rare from the
    APIs we call, and the backoff covers it)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def token_digest(token: str) -> str:
    """What the sandbox is given instead of its token: the token's SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def daemon_env(spec: Spec, identity: SandboxIdentity) -> dict[str, str]:
    """Environment that tells the daemon its token's hash, its port and its time to live."""
    env = dict(spec.env)
    env[wire.TOKEN_SHA256_ENV] = token_digest(identity.token)
    env[wire.PORT_ENV] = str(spec.daemon_port)
    env[wire.SCREEN_ENV] = "x".join(str(n) for n in spec.screen)
    if identity.expires_at is not None:
        env[wire.TTL_ENV] = f"{max(identity.expires_at - time.time(), 1.0):.0f}"
    return env
