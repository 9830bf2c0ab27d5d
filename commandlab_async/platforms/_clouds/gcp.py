"""Google Cloud credentials shared by Cloud Run and GKE, and google-auth's failures as ours.

Both use Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
files or the metadata server) for the cloud-platform scope; google-auth reads and
refreshes them with blocking I/O, so callers run it in threads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...errors import BackendError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.auth.exceptions import GoogleAuthError

__all__ = ["SCOPES", "auth_error", "default_credentials"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


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
