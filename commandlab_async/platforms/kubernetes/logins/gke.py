"""Logging in to a GKE cluster (``gcp-gke``) with google-auth (no gke-gcloud-auth-plugin).

The GKE API gives the endpoint and CA; the token is the Google access token of the
default credentials, refreshed (in a thread: google-auth blocks) before it expires.
"""

from __future__ import annotations

import asyncio
import datetime
import urllib.parse
from typing import Any

from ....errors import SpecError
from ..._clouds import gcp, http_session
from ...base import KubernetesPlatform
from ..options import GKE_API_ENDPOINT, KubernetesTarget
from .base import ClusterLogin, b64, error, missing, required
from .rest import HTTP_TIMEOUT, fetch_json
from .tokens import Token, make_token, seconds_until

__all__ = ["log_in"]


async def log_in(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        import google.auth.transport.requests
        import requests
        from google.auth import exceptions as auth_errors
    except ImportError as exc:
        raise missing(KubernetesPlatform.GCP_GKE) from exc
    cluster = required(target.cluster, "cluster", target)
    location = required(target.region, "region", target)
    credentials, adc_project = await gcp.default_credentials(str(target.platform))
    project = target.project_id or adc_project
    if not project:
        raise SpecError("project_id", "is required on GKE (the credentials name no project)")
    http = requests.Session()
    result._closers.append(lambda: asyncio.to_thread(http.close))
    request = google.auth.transport.requests.Request(session=http)

    def refresh() -> tuple[str, Any]:
        credentials.refresh(request)
        return str(credentials.token), credentials.expiry

    async def fetch() -> Token:
        try:
            value, expiry = await asyncio.to_thread(refresh)
        except (auth_errors.TransportError, auth_errors.RefreshError) as exc:
            message = f"Google token refresh failed: {exc}"
            raise gcp.auth_error(exc, message, str(target.platform)) from exc
        lifetime = seconds_until(expiry) if isinstance(expiry, datetime.datetime) else None
        return make_token(value, lifetime=lifetime, reread=None if lifetime else 30 * 60.0)

    await result._use_tokens(fetch)
    headers = await result.headers()
    if getattr(credentials, "quota_project_id", None):
        headers["x-goog-user-project"] = str(credentials.quota_project_id)
    api = (target.api_endpoint or GKE_API_ENDPOINT).rstrip("/")
    name = f"projects/{project}/locations/{location}/clusters/{cluster}"
    url = f"{api}/v1/{urllib.parse.quote(name)}"

    def explain(status: int, message: str) -> str:
        if status == 404:
            return f"GKE cluster {name} not found [{message}]"
        if status in (401, 403):
            return (
                f"not allowed to get GKE cluster {name}: the identity needs "
                f"container.clusters.get (roles/container.clusterViewer) [{message}]"
            )
        return f"GKE GetCluster {name} failed: HTTP {status} [{message}]"

    session = await http_session(timeout=HTTP_TIMEOUT)
    result._closers.append(session.close)
    described = await fetch_json(session, "GET", url, headers, target, explain)
    endpoint = str(described.get("endpoint") or "")
    ca = (described.get("masterAuth") or {}).get("clusterCaCertificate")
    if not endpoint or not ca:
        raise error(
            target,
            f"GKE cluster {name} has no endpoint yet (status {described.get('status')})",
            code=str(described.get("status")),
            transient=described.get("status") in ("PROVISIONING", "RECONCILING"),
        )
    # The API gives a bare address ("34.1.2.3", or host:port), not a URL.
    result.host = endpoint.rstrip("/") if "://" in endpoint else f"https://{endpoint}"
    await result._use_ca(b64(ca, "masterAuth.clusterCaCertificate", target))
