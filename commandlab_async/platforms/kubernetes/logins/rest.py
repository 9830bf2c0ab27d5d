"""JSON requests to the cloud APIs that describe a cluster: ARM (AKS) and the GKE API.

Their sessions trust the system store and give up on a request after
:data:`HTTP_TIMEOUT`; a failure is a :class:`BackendError` in the cloud's own words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from ...._client.transport import describe
from ..options import KubernetesTarget
from .base import error

__all__ = ["HTTP_TIMEOUT", "fetch_json"]

#: Seconds one request to a cloud API may take.
HTTP_TIMEOUT = 30.0


async def fetch_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    target: KubernetesTarget,
    explain: Callable[[int, str], str],
) -> Any:
    """One JSON request to a cloud API, its failures as :class:`BackendError`;
    ``explain(status, message)`` words a refusal."""
    try:
        async with session.request(method, url, headers=headers) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise error(target, f"{method} {url} failed: {describe(exc)}", transient=True) from exc
    if status >= 300:
        raise error(target, explain(status, _cloud_message(text)), code=status)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(target, f"{url} answered no JSON", code="InvalidResponse") from exc


def _cloud_message(text: str) -> str:
    """The message of an ARM or Google error body (``{"error": {"message": ...}}``)."""
    try:
        problem = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:300]
    if isinstance(problem, dict):
        code = problem.get("code") or problem.get("status")
        return f"{code}: {problem.get('message')}" if code else str(problem.get("message"))
    return text[:300]
