"""The local Docker Engine playing a cloud's machines: what the container emulators share.

An emulator's container groups, services or pods really run as containers on the local
engine, their ports published on 127.0.0.1. :class:`LocalEngine` holds the engine client
and this emulator's label (``{label}={instance}`` on every container it creates, so they
are found and removed whatever the bookkeeping says), publishes ports, looks images up,
reads states and logs, and keeps the emulator's background work: removals (waited for by
:meth:`LocalEngine.containers`) and container starts that are never cancelled half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Collection, Coroutine
from typing import Any, TypeVar

import aiodocker
from aiodocker.containers import DockerContainer

ENGINE_URL = "unix:///var/run/docker.sock"  # explicit: tests point DOCKER_HOST elsewhere
GONE: dict[str, Any] = {"Running": False, "ExitCode": 137}
"""The state of a container that no longer exists: killed."""

T = TypeVar("T")


class LocalEngine:
    """The engine's containers made by one emulator, labelled ``{label}={instance}``."""

    def __init__(self, label: str, url: str = ENGINE_URL) -> None:
        self.label = label
        self.url = url
        self.instance = uuid.uuid4().hex
        """Unique to this emulator: its containers' label value (names start with a piece)."""
        self._docker: aiodocker.Docker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._removals: set[asyncio.Task[Any]] = set()
        self._starting: set[asyncio.Future[Any]] = set()

    # ----------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Connect to the engine (no request is made yet)."""
        self._docker = aiodocker.Docker(url=self.url)

    @property
    def closed(self) -> bool:
        """Not opened yet, or closed."""
        return self._docker is None

    @property
    def docker(self) -> aiodocker.Docker:
        """The engine client (open)."""
        assert self._docker is not None, "the engine is not open"
        return self._docker

    def cancel(self) -> None:
        """Cancel all background work (container starts still run to their end)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Wait for the background work, then force-remove every container carrying our
        label, whatever the bookkeeping says, and close the client."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._starting:
            await asyncio.gather(*list(self._starting), return_exceptions=True)
        if self._docker is not None:
            for container_id in await self.ours():
                await self.remove(container_id)
            await self._docker.close()
            self._docker = None

    # ------------------------------------------------------------------------ background work

    def spawn(self, work: Coroutine[Any, Any, T], *, removal: bool = False) -> asyncio.Task[T]:
        """Run ``work`` in the background until :meth:`close`; a ``removal`` (a deletion's
        teardown) is waited for by :meth:`containers`."""
        task = asyncio.create_task(work)
        for holder in (self._tasks, self._removals) if removal else (self._tasks,):
            holder.add(task)
            task.add_done_callback(holder.discard)
        return task

    def atomic(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``work`` (creating and starting containers) to its end whatever happens to
        whoever awaits it (through :func:`asyncio.shield`): the engine might act on a request
        whose client went away. :meth:`close` waits for it; a deletion should too."""
        future = asyncio.ensure_future(work)
        self._starting.add(future)
        future.add_done_callback(self._starting.discard)
        return future

    async def settle(self) -> None:
        """Wait for the removals under way to finish."""
        for _ in range(100):
            pending = [task for task in self._removals if not task.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    # ---------------------------------------------------------------------------- containers

    async def containers(self) -> list[str]:
        """Ids of the engine's containers made by this emulator that still exist.

        Removals already under way are waited for first, so after deleting everything one
        sees ``[]`` rather than a container a moment from gone.
        """
        await self.settle()
        return await self.ours()

    async def ours(self, *, status: Collection[str] = ()) -> list[str]:
        """Ids of our containers (only those in one of ``status``, if given), straight from
        the engine; also once closed."""
        filters: dict[str, list[str]] = {"label": [f"{self.label}={self.instance}"]}
        if status:
            filters["status"] = list(status)
        if self._docker is not None:
            found = await self._docker.containers.list(all=True, filters=json.dumps(filters))
        else:  # closed: someone checks for leftovers
            async with aiodocker.Docker(url=self.url) as docker:
                found = await docker.containers.list(all=True, filters=json.dumps(filters))
        return [container.id for container in found]

    async def create(
        self, config: dict[str, Any], *, name: str, publish: Collection[int] | None = None
    ) -> DockerContainer:
        """Create a container (not started) with our label, ``publish`` (container ports)
        published on 127.0.0.1 at ephemeral ports."""
        config["Labels"] = {self.label: self.instance, **(config.get("Labels") or {})}
        if publish is not None:
            host = config.setdefault("HostConfig", {})
            ports = sorted(publish)
            config["ExposedPorts"] = {f"{port}/tcp": {} for port in ports}
            host["PortBindings"] = {
                f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}] for port in ports
            }
        return await self.docker.containers.create(config, name=name)

    @staticmethod
    async def published(container: DockerContainer) -> dict[int, int]:
        """Container port -> 127.0.0.1 port, for the ports a started container publishes
        (none once it has exited)."""
        info = await container.show()
        bindings = info["NetworkSettings"]["Ports"] or {}
        return {
            int(key.split("/")[0]): int(value[0]["HostPort"])
            for key, value in bindings.items()
            if value
        }

    async def show(self, container_id: str) -> dict[str, Any]:
        """The engine's inspect of a container (``DockerError`` if it is gone)."""
        return await self.docker.containers.container(container_id).show()

    async def state(self, container_id: str) -> dict[str, Any]:
        """A container's ``State``; :data:`GONE` once it no longer exists."""
        try:
            info = await self.show(container_id)
        except aiodocker.DockerError:
            return dict(GONE)
        return dict(info["State"])

    async def image(self, ref: str, *, missing: Collection[int] = (404,)) -> dict[str, Any] | None:
        """The engine's inspect of an image; None when the engine answers a status in
        ``missing`` (nothing is ever pulled)."""
        try:
            return await self.docker.images.inspect(ref)
        except aiodocker.DockerError as error:
            if error.status in missing:
                return None
            raise

    async def logs(self, container_id: str, **params: Any) -> str:
        """A container's stdout and stderr so far (empty once it is gone)."""
        container = self.docker.containers.container(container_id)
        try:
            lines = await container.log(stdout=True, stderr=True, **params)
        except aiodocker.DockerError:
            lines = []
        return "".join(lines)

    async def follow_logs(self, container_id: str, **params: Any) -> AsyncIterator[str]:
        """A container's stdout and stderr as they come, until it stops (nothing if it
        is gone)."""
        container = self.docker.containers.container(container_id)
        try:
            async for line in container.log(stdout=True, stderr=True, follow=True, **params):
                yield line
        except aiodocker.DockerError:
            return

    async def kill(self, container_id: str) -> None:
        """SIGKILL a container (nothing if it has exited or is gone)."""
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(container_id).kill(signal="SIGKILL")

    async def remove(self, container_id: str | None) -> None:
        """Force-remove a container and its volumes (nothing if gone, or once closed: then
        :meth:`close` removed everything)."""
        if container_id is None or self._docker is None:
            return
        with contextlib.suppress(aiodocker.DockerError):
            await self._docker.containers.container(container_id).delete(force=True, v=True)
