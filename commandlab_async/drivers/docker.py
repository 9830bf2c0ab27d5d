"""Local Docker Engine driver (aiodocker).

Each sandbox is one container: labelled, port published on 127.0.0.1 with an ephemeral
host port, resource-limited, auto-removed when its daemon exits at the TTL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiodocker
import aiohttp

from ..errors import BackendError, SandboxExitedError
from ..identity import SESSION, SESSION_ID, SandboxIdentity
from ..specs import DockerSpec, Spec
from .base import SandboxRecord, SandboxState, daemon_env, retry_transient

__all__ = ["DockerDriver"]

T = TypeVar("T")
_MIB = 1024 * 1024
_PLATFORM = "docker"
_TERMINAL = {"exited", "dead", "removing"}


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, aiodocker.DockerError):
        return exc.status >= 500
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ServerTimeoutError)


def _engine_status(error: BackendError) -> int | None:
    """The engine's HTTP status behind a translated error, if it answered."""
    cause = error.__cause__
    return cause.status if isinstance(cause, aiodocker.DockerError) else None


class DockerDriver:
    """Driver for :attr:`DockerPlatform.LOCAL`. The engine comes from ``DOCKER_HOST``."""

    platform = _PLATFORM
    # Loopback probes are cheap: poll often so readiness is seen within ~20 ms.
    probe_interval = 0.02

    def __init__(self) -> None:
        self._docker = aiodocker.Docker()

    async def close(self) -> None:
        await self._docker.close()

    async def _call(
        self, what: str, name: str, fn: Callable[[], Awaitable[T]], *, attempts: int = 4
    ) -> T:
        """Call the engine, retrying transient failures; translate errors to BackendError."""
        try:
            return await retry_transient(
                fn, transient=_is_transient, attempts=attempts, first_wait=0.05, max_wait=2.0
            )
        except (aiodocker.DockerError, aiohttp.ClientError) as exc:
            message = exc.message if isinstance(exc, aiodocker.DockerError) else repr(exc)
            raise BackendError(
                f"{what} failed: {message}",
                sandbox=name,
                platform=_PLATFORM,
                transient=_is_transient(exc),
            ) from exc

    def _config(self, spec: DockerSpec, identity: SandboxIdentity) -> dict[str, Any]:
        port = f"{spec.daemon_port}/tcp"
        return {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in daemon_env(spec, identity).items()],
            "Labels": identity.labels,
            "ExposedPorts": {port: {}},
            "HostConfig": {
                # Loopback only, ephemeral host port: sandboxes never collide or leak outside.
                "PortBindings": {port: [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                # The daemon exits at the TTL; the engine then removes the container.
                "AutoRemove": True,
                # An init process reaps the orphans of killed commands.
                "Init": True,
                "NanoCpus": int(spec.cpu * 1e9),
                "Memory": spec.memory * _MIB,
                "MemorySwap": spec.memory * _MIB,
                "PidsLimit": spec.pids_limit,
                "SecurityOpt": ["no-new-privileges"],
                **self._capabilities(spec),
            },
            **({"User": "0:0"} if spec.run_as_root else {}),
        }

    @staticmethod
    def _capabilities(spec: DockerSpec) -> dict[str, list[str]]:
        if spec.run_as_root:
            return {}  # Docker's default set: what package managers and chown need
        # An unprivileged daemon needs no capability, except to bind a low port.
        return {
            "CapDrop": ["ALL"],
            "CapAdd": ["NET_BIND_SERVICE"] if spec.daemon_port < 1024 else [],
        }

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        assert isinstance(spec, DockerSpec)
        name = identity.name
        config = self._config(spec, identity)

        async def create_once() -> None:
            try:
                await self._docker.containers.create(config, name=name)
            except aiodocker.DockerError as exc:
                # A retried create whose first attempt reached the engine: it is ours.
                if exc.status == 409 and await self._owned(name):
                    return
                raise

        try:
            await self._call("create", name, create_once)
        except BackendError as exc:
            if _engine_status(exc) == 404:
                raise BackendError(
                    f"image {spec.image!r} is not on the engine; build it "
                    "(scripts/build-images.sh) or pull it first",
                    sandbox=name,
                    platform=_PLATFORM,
                ) from exc.__cause__
            raise
        await self._call("start", name, self._docker.containers.container(name).start)

    async def _owned(self, name: str) -> bool:
        try:
            info = await self._docker.containers.container(name).show()
        except aiodocker.DockerError:
            return False
        labels: dict[str, str] = info["Config"]["Labels"] or {}
        return labels.get(SESSION) == SESSION_ID

    async def endpoint(self, spec: Spec, identity: SandboxIdentity) -> str:
        # The container was started by create(); only its published port is missing.
        try:
            info = await self._call("inspect", identity.name, self._inspect(identity.name))
        except BackendError as exc:
            if not (
                isinstance(exc.__cause__, aiodocker.DockerError) and exc.__cause__.status == 404
            ):
                raise
            info = None
        bindings = info and (info["NetworkSettings"]["Ports"] or {}).get(f"{spec.daemon_port}/tcp")
        if not bindings:
            state = await self.state(identity.name)
            raise SandboxExitedError(
                f"stopped before its daemon answered: {state.detail}",
                sandbox=identity.name,
                platform=_PLATFORM,
                state=state.detail,
            )
        return f"http://127.0.0.1:{bindings[0]['HostPort']}"

    def _inspect(self, name: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        return self._docker.containers.container(name).show

    async def state(self, name: str) -> SandboxState:
        try:
            info = await self._inspect(name)()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return SandboxState("gone (exited and removed)", terminal=True)
            raise
        state = info["State"]
        status = state["Status"]
        if status in _TERMINAL:
            return SandboxState(f"{status} (exit code {state.get('ExitCode')})", terminal=True)
        return SandboxState(status)

    async def destroy(self, name: str) -> None:
        container = self._docker.containers.container(name)

        async def delete() -> None:
            try:
                await container.delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return
                # 409: the engine is already removing it (auto-remove after exit).
                if exc.status != 409:
                    raise
                await self._wait_gone(name)

        await self._call("delete", name, delete)

    async def _wait_gone(self, name: str) -> None:
        delay = 0.01
        while True:
            try:
                await self._inspect(name)()
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        containers = await self._call(
            "list", "*", lambda: self._docker.containers.list(all=True, filters=filters)
        )
        records = []
        for container in containers:
            # The list endpoint's fields, e.g. Names: ["/commandlab-…"].
            name = container["Names"][0].lstrip("/")
            records.append(SandboxRecord(name, container["Labels"] or {}, container["State"]))
        return records
