"""A cluster's bearer token, refreshed ahead of expiry by one background task.

Every login that authenticates with a token (all but a kubeconfig's client certificate)
hands :class:`Tokens` a coroutine that fetches a new one; requests keep using the current
token while the next is fetched, and wait only once it has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["REFRESH_AHEAD", "REREAD_EVERY", "Token", "Tokens", "make_token", "seconds_until"]

log = logging.getLogger(__name__)

#: A token is refreshed in the background once less than this much of it is left
#: (or a quarter of its lifetime, when that is shorter).
REFRESH_AHEAD = 300.0
#: How often a token of unknown lifetime is fetched again (exec plugins without an
#: expiry, ``tokenFile``, the in-cluster service account token, which the kubelet rotates).
REREAD_EVERY = 60.0
#: Requests stop using a token this long before it expires (at most a tenth of its life).
_EXPIRY_SKEW = 10.0
#: After a failed background refresh, the next attempt waits at least this long.
_RETRY_AFTER_FAILURE = 5.0

# The clock tokens are timed with (tests move it forward instead of waiting).
_monotonic = time.monotonic


@dataclass(frozen=True)
class Token:
    value: str
    scheme: str
    refresh_at: float | None
    """Monotonic time from which a background refresh starts (None: never)."""
    stale_at: float | None
    """Monotonic time from which requests wait for a new token (None: never)."""


def make_token(
    value: str, *, lifetime: float | None, reread: float | None = None, scheme: str = "Bearer"
) -> Token:
    """A token valid ``lifetime`` more seconds (None: unknown, never expires here);
    ``reread``: fetch it again after that long anyway, without ever waiting for it."""
    now = _monotonic()
    if lifetime is None:
        refresh = None if reread is None else now + reread
        return Token(value, scheme, refresh, None)
    lifetime = max(lifetime, 0.0)
    ahead = min(REFRESH_AHEAD, lifetime / 4)
    skew = min(_EXPIRY_SKEW, lifetime / 10)
    return Token(value, scheme, now + lifetime - ahead, now + lifetime - skew)


def seconds_until(expiry: datetime.datetime) -> float:
    """Seconds from now until ``expiry`` (a naive one is UTC)."""
    if expiry.tzinfo is None:  # google-auth's expiries are naive UTC
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()


class Tokens:
    """The current token, refreshed ahead of expiry by one task that every caller shares."""

    def __init__(self, fetch: Callable[[], Awaitable[Token]], first: Token) -> None:
        self._fetch = fetch
        self._token = first
        self._task: asyncio.Task[Token] | None = None
        self._retry_at = 0.0
        self.refreshes = 0

    async def get(self) -> Token:
        token = self._token
        now = _monotonic()
        if token.stale_at is not None and now >= token.stale_at:
            # Expired: nothing to send until a new one arrives.
            return await asyncio.shield(self._start())
        if (
            token.refresh_at is not None
            and now >= token.refresh_at
            and self._task is None
            and now >= self._retry_at
        ):
            self._start()  # in the background: this request still uses the current one
        return token

    def _start(self) -> asyncio.Task[Token]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(_log_failure)
        return self._task

    async def _run(self) -> Token:
        try:
            self.refreshes += 1
            token = await self._fetch()
        except Exception:
            self._retry_at = _monotonic() + _RETRY_AFTER_FAILURE
            raise
        finally:
            self._task = None
        self._token = token
        return token

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _log_failure(task: asyncio.Task[Token]) -> None:
    # Retrieved here so a failed background refresh is never "never retrieved"; a caller
    # that needs the token sees the error itself.
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster token refresh failed: %s", task.exception())
