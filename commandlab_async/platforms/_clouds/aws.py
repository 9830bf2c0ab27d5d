"""AWS client set-up shared by ECS and EKS: aioboto3 sessions and clients.

botocore reads the environment, config files and service models from disk, all
synchronously: sessions are made and clients' files loaded in a thread, so the event loop
never waits on a disk. Clients make one attempt per call: the caller retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["client", "session"]


async def session() -> Any:
    """A new ``aioboto3.Session`` (it reads the environment and config files)."""
    import aioboto3

    return await asyncio.to_thread(aioboto3.Session)


@contextlib.asynccontextmanager
async def client(
    session: Any, service: str, *, region: str | None, credentials: Any = None
) -> AsyncIterator[Any]:
    """An aioboto3 client of ``service`` that makes one attempt per call.

    ``credentials``: botocore's frozen credentials to sign with (None: the session's own
    chain). Raises botocore's ``NoRegionError`` on entering when no region is known.
    """
    from botocore.config import Config

    # Our own retries (tenacity, under the fleet's rate limit) replace botocore's, so
    # that a retried call is known to us: a retried run_task may have started a task
    # whose answer was lost.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    keys = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key,
            "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.token,
        }
    await asyncio.to_thread(_warm, session, service)
    async with session.client(service, region_name=region, config=config, **keys) as made:
        yield made


def _warm(session: Any, service: str) -> None:
    """Load what creating a client reads from disk, so it is cached before the loop needs it."""
    core = session._session  # the botocore session behind aioboto3's
    core.get_scoped_config()
    for name in ("endpoint_resolver", "default_config_resolver", "monitor"):
        core._get_internal_component(name)
    loader = core.get_component("data_loader")
    # The same call shapes as botocore's client factory: its cache keys on them.
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        with contextlib.suppress(Exception):  # not every service ships every kind
            loader.load_service_model(service, kind, api_version=None)
    for data in ("_retry", "partitions", "sdk-default-configuration"):
        loader.load_data(data)
