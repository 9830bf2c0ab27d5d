"""provision: identity → create → ready → yield → shielded destroy, on every exit path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from .computer import Computer
from .drivers import driver_class
from .drivers.base import Driver
from .errors import CleanupError, ReadyTimeoutError, SpecError
from .identity import SandboxIdentity, new_identity
from .pools import lease
from .readiness import Progress, wait_ready
from .shielding import settle, shielded
from .specs import DockerSpec, KubernetesSpec, Spec

__all__ = ["provision"]

log = logging.getLogger("commandlab_async")


def _http_session() -> aiohttp.ClientSession:
    # One pool for every Computer of the process; no cap, so a fleet's commands never queue.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def _check_spec(spec: object) -> Spec:
    if not isinstance(spec, DockerSpec | KubernetesSpec):
        raise SpecError(
            "spec", f"must be a DockerSpec or KubernetesSpec, got {type(spec).__name__}"
        )
    return spec


@asynccontextmanager
async def provision(spec: Spec) -> AsyncIterator[Computer]:
    """Bring up one sandbox and yield its :class:`Computer`; delete it when the block exits.

    Returns only once the daemon inside answered an authenticated health request.
    The sandbox is deleted on every exit path — normal exit, exception, cancellation,
    timeout — with cleanup shielded from cancellation and bounded by
    ``spec.destroy_timeout``.

    Raises :class:`SpecError` or :class:`BackendUnavailableError` before anything is
    created, and :class:`ProvisionError` (with the sandbox's name) when it cannot come up.
    """
    spec = _check_spec(spec)
    cls = driver_class(spec.platform)
    async with (
        lease(("driver", spec.platform), cls) as driver,
        lease("http", _http_session) as http,
    ):
        identity = new_identity(spec)
        try:
            computer = await bring_up(driver, http, spec, identity)
            yield computer
        except BaseException as exc:
            await tear_down(driver, spec, identity, pending=exc)
            raise
        else:
            await tear_down(driver, spec, identity, pending=None)


async def bring_up(
    driver: Driver, http: aiohttp.ClientSession, spec: Spec, identity: SandboxIdentity
) -> Computer:
    """Create the sandbox and wait until its daemon answers, within ``spec.ready_timeout``."""
    progress = Progress("creating")
    try:
        async with asyncio.timeout(spec.ready_timeout) as deadline:
            await settle(driver.create(spec, identity), grace=spec.destroy_timeout)
            progress.state = "created; waiting for the backend to run it"
            url = await driver.endpoint(spec, identity)
            progress.state = "running"
            computer = Computer(
                name=identity.name,
                url=url,
                token=identity.token,
                session=http,
                platform=driver.platform,
            )
            await wait_ready(computer, driver, progress)
            return computer
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ReadyTimeoutError(
            sandbox=identity.name,
            platform=driver.platform,
            timeout=spec.ready_timeout,
            state=progress.state,
        ) from None


async def tear_down(
    driver: Driver, spec: Spec, identity: SandboxIdentity, *, pending: BaseException | None
) -> None:
    """Delete the sandbox, shielded from cancellation and bounded in time.

    If cleanup fails while another error is on its way out, that error stays the one
    raised and carries a note about the cleanup failure; otherwise CleanupError is raised.
    """
    try:
        await shielded(driver.destroy(identity.name), timeout=spec.destroy_timeout)
    except Exception as exc:
        error = CleanupError(
            f"could not delete it ({exc!r}); its TTL or `commandlab gc` will",
            sandbox=identity.name,
            platform=driver.platform,
        )
        if pending is None:
            raise error from exc
        log.error("%s", error)
        pending.add_note(str(error))
