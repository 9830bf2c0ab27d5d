"""Google ID tokens for private Cloud Run services, fetched off the event loop and cached.

A private service (the default) lets a request through Google's front end only with an
ID token whose audience is the service's URL, sent in ``X-Serverless-Authorization`` so
that ``Authorization`` stays free (the sandbox's own token travels in
``X-CommandLab-Token`` anyway). google-auth fetches it with blocking I/O (a service
account's token endpoint or the metadata server), so it runs in a thread, once per
audience at a time, and is reused until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping

from .._clouds import gcp, jwt_expiry
from ..base import DockerPlatform, HeaderSource

__all__ = ["IdTokens", "fetch_id_token"]

_PLATFORM = DockerPlatform.GCP_CLOUD_RUN
# Fetch a new token when the cached one has less than this left (they last an hour).
_REFRESH_MARGIN = 300.0


def fetch_id_token(audience: str) -> str:
    """An ID token for ``audience`` from Google's default credentials (blocking).

    Works with a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``), the
    metadata server (GCE, GKE, Cloud Run) and, through google-auth, impersonation.
    """
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    try:
        token: str = google.oauth2.id_token.fetch_id_token(request, audience)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise gcp.auth_error(
            exc,
            f"no Google credentials that can mint an ID token for {audience} ({exc}); use a "
            "service account (GOOGLE_APPLICATION_CREDENTIALS, the metadata server) or make "
            "the sandbox public (CloudRunOptions(public=True))",
            _PLATFORM,
        ) from exc
    except google.auth.exceptions.GoogleAuthError as exc:
        # A refused refresh (a revoked key) or an unreachable token endpoint.
        raise gcp.auth_error(
            exc, f"could not get an ID token for {audience}: {exc}", _PLATFORM
        ) from exc
    return token


def _expiry(token: str) -> float:
    """When ``token`` expires (Google's front end verifies it; we only read it)."""
    expiry = jwt_expiry(token)
    return time.time() + 60.0 if expiry is None else expiry  # unreadable: use it briefly


class IdTokens:
    """A cache of ID tokens by audience; one fetch in flight per audience."""

    def __init__(self, fetch: Callable[[str], str] = fetch_id_token) -> None:
        self._fetch = fetch
        self._tokens: dict[str, tuple[str, float]] = {}
        self._fetching: dict[str, asyncio.Future[str]] = {}

    async def token(self, audience: str) -> str:
        """A token for ``audience`` valid for at least a few more minutes."""
        cached = self._tokens.get(audience)
        if cached is not None and cached[1] - time.time() > _REFRESH_MARGIN:
            return cached[0]
        future = self._fetching.get(audience)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(self._fetch, audience))
            self._fetching[audience] = future
            future.add_done_callback(lambda done: self._store(audience, done))
        # Shielded: one caller giving up does not cancel the fetch the others wait for.
        return await asyncio.shield(future)

    def _store(self, audience: str, done: asyncio.Future[str]) -> None:
        self._fetching.pop(audience, None)
        if not done.cancelled() and done.exception() is None:
            token = done.result()
            self._tokens[audience] = (token, _expiry(token))

    def forget(self, audience: str) -> None:
        """Drop the token of an audience that is gone (a deleted service)."""
        self._tokens.pop(audience, None)

    def headers_for(self, audience: str) -> HeaderSource:
        """The :data:`HeaderSource` of one service: its ID token as Cloud Run wants it."""
        return functools.partial(self._headers, audience)

    async def _headers(self, audience: str) -> Mapping[str, str]:
        return {"X-Serverless-Authorization": f"Bearer {await self.token(audience)}"}
