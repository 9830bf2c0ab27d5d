"""Google Cloud credentials shared by Cloud Run and GKE, google-auth's failures as ours,
and which quota a Google API error says is used up.

Both use Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
files or the metadata server) for the cloud-platform scope; google-auth reads and
refreshes them with blocking I/O, so callers run it in threads.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import BackendError

if TYPE_CHECKING:
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.credentials import Credentials
    from google.auth.exceptions import GoogleAuthError

__all__ = ["SCOPES", "ExhaustedQuota", "auth_error", "default_credentials", "exhausted_quota"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

# Google's error model (https://cloud.google.com/apis/design/errors): RESOURCE_EXHAUSTED
# (429) says a quota is used up, be it a rate (requests per minute) or a count (services,
# CPUs); older APIs answer quotas with 403 or 400. The ErrorInfo reason tells which
# (RATE_LIMIT_EXCEEDED, RESOURCE_QUOTA_EXCEEDED), but answers come without one or with
# another; then the quota's name does, in ErrorInfo metadata, a QuotaFailure or the
# message ("Quota exceeded for quota metric 'Write requests' and limit 'Write requests per
# minute per region'..."): a rate quota's limit is named for its window.
_RATE_REASON = "RATE_LIMIT_EXCEEDED"
_COUNT_REASON = "RESOURCE_QUOTA_EXCEEDED"
_ABOUT_A_QUOTA = re.compile(r"quota|exceed\w*\s+the\s+maximum", re.IGNORECASE)
_LIMIT_IN_TEXT = re.compile(
    r"\blimit '([^']+)'|[?&]limit=(\w+)|quota violated:\s*(\w+)", re.IGNORECASE
)
_METRIC_IN_TEXT = re.compile(r"quota metric '([^']+)'|[?&]metric=([\w./-]+)", re.IGNORECASE)
# Windows a retry with backoff outlasts, and those it does not.
_SHORT_WINDOW = re.compile(
    r"per[\s_-]*(?:\d+[\s_-]*)?(?:second|minute)|rate[\s_-]*limit", re.IGNORECASE
)
_LONG_WINDOW = re.compile(
    r"per[\s_-]*(?:\d+[\s_-]*)?(?:hour|day|week|month)|\b(?:hourly|daily)", re.IGNORECASE
)
_REQUESTS = re.compile(r"request|quer(?:y|ies)|\bcalls?\b", re.IGNORECASE)
_COUNT_WORDS = re.compile(r"\bnumber of\b|\bcount of\b|quota violated", re.IGNORECASE)


@dataclass(frozen=True)
class ExhaustedQuota:
    """A quota a Google API said is used up."""

    name: str | None
    """The quota's limit or metric as Google named it (``Services per project per region``,
    ``CpuAllocPerProjectRegion``); None when the answer names none."""
    rate: bool
    """A rate over seconds or a minute, which refills soon: worth retrying with backoff.
    False: a count of what exists (services, instances, CPUs) or a window of hours or
    days, which waiting inside one call does not free."""


def exhausted_quota(exc: GoogleAPICallError) -> ExhaustedQuota | None:
    """The quota ``exc`` says is used up; None if it is not about a quota, or does not say
    whether a rate or a count.

    The most specific evidence decides: the quota's limit name (its window), then its
    metric (requests are rates), then the message's words, then the ErrorInfo reason.
    """
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no py.typed

    message = str(exc.message or "")
    reason = exc.reason
    metadata = dict(exc.metadata or {})
    violations = [
        v
        for detail in exc.details
        if isinstance(detail, error_details_pb2.QuotaFailure)
        for v in detail.violations
    ]
    about_a_quota = (
        exc.code == 429  # RESOURCE_EXHAUSTED
        or reason in (_RATE_REASON, _COUNT_REASON)
        or bool(violations)
        or "quota_limit" in metadata
        or "quota_metric" in metadata
        or _ABOUT_A_QUOTA.search(message) is not None
    )
    if not about_a_quota:
        return None

    def found(*names: str | None) -> list[str]:
        return [n for n in names if n]

    limits = found(metadata.get("quota_limit"), *(v.quota_id for v in violations))
    limits += found(*(n for m in _LIMIT_IN_TEXT.finditer(message) for n in m.groups()))
    if limits:
        return ExhaustedQuota(limits[0], rate=bool(_SHORT_WINDOW.search(limits[0])))
    metrics = found(metadata.get("quota_metric"), *(v.quota_metric for v in violations))
    metrics += found(*(n for m in _METRIC_IN_TEXT.finditer(message) for n in m.groups()))
    name = metrics[0] if metrics else None
    words = " ".join([message, *(v.description for v in violations)])
    if _SHORT_WINDOW.search(words):
        return ExhaustedQuota(name, rate=True)
    if _LONG_WINDOW.search(words) or _COUNT_WORDS.search(words):
        return ExhaustedQuota(name, rate=False)
    if name is not None:
        return ExhaustedQuota(name, rate=bool(_REQUESTS.search(name)))
    if reason in (_RATE_REASON, _COUNT_REASON):
        return ExhaustedQuota(None, rate=reason == _RATE_REASON)
    return None


async def default_credentials(platform: str) -> tuple[Credentials, str | None]:
    """Google's default credentials and the project they name (None: none), or
    :class:`BackendError` saying how to provide them."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        # Reads GOOGLE_APPLICATION_CREDENTIALS or gcloud's files, may probe the metadata
        # server: all blocking, so in a thread.
        credentials, project = await asyncio.to_thread(google.auth.default, scopes=SCOPES)
    except DefaultCredentialsError as exc:
        raise auth_error(
            exc,
            "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run "
            f"`gcloud auth application-default login`, or run on Google Cloud [{exc}]",
            platform,
        ) from exc
    return credentials, project


def auth_error(exc: GoogleAuthError, message: str, platform: str) -> BackendError:
    """A google-auth failure as :class:`BackendError`: transient when the token endpoint
    could not be reached or says a retry may pass; ``code`` names the failure otherwise."""
    from google.auth.exceptions import TransportError

    if isinstance(exc, TransportError):
        return BackendError(message, sandbox=None, platform=platform, transient=True)
    return BackendError(
        message,
        sandbox=None,
        platform=platform,
        transient=bool(getattr(exc, "retryable", False)),
        code=type(exc).__name__,
    )
