"""Local Docker Engine driver (aiodocker).

Each sandbox is one container: labelled, port published on 127.0.0.1 with an ephemeral
host port, resource-limited, auto-removed when its daemon exits at the TTL.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import aiodocker
import aiohttp

from ...errors import BackendError, SandboxExitedError
from ...identity import SESSION, SandboxIdentity
from ...limits import Limits
from ...specs import Spec
from ..base import DockerPlatform, RunningSandbox
from ..driver import Driver, Failure, SandboxRecord, SandboxRef, SandboxState, daemon_env
from .options import DockerTarget

__all__ = ["DockerDriver"]

_MIB = 1024 * 1024
_TERMINAL = {"exited", "dead", "removing"}


class DockerDriver(Driver[DockerTarget]):
    """Driver for :attr:`DockerPlatform.LOCAL`: the engine ``DOCKER_HOST`` names."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.LOCAL
    # The local engine is the bottleneck, not an API quota: no rate limit, generous bounds.
    default_limits = Limits(creates_in_flight=32, creates_per_second=math.inf, probes_in_flight=128)
    # Loopback probes are cheap: poll often so readiness is seen within ~20 ms.
    probe_interval = 0.02

    def __init__(self, target: DockerTarget) -> None:
        super().__init__(target)
        self._docker = aiodocker.Docker(url=target.host)

    async def close(self) -> None:
        await self._docker.close()

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, aiodocker.DockerError):
            return Failure(exc.status, transient=exc.status >= 500, not_found=exc.status == 404)
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ServerTimeoutError):
            return Failure(None, transient=True)  # the engine may or may not have acted
        if isinstance(exc, aiohttp.ClientError):
            return Failure(None, transient=False)
        return None

    def _config(self, spec: Spec, identity: SandboxIdentity) -> dict[str, Any]:
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
    def _capabilities(spec: Spec) -> dict[str, list[str]]:
        if spec.run_as_root:
            return {}  # Docker's default set: what package managers and chown need
        # An unprivileged daemon needs no capability, except to bind a low port.
        return {
            "CapDrop": ["ALL"],
            "CapAdd": ["NET_BIND_SERVICE"] if spec.daemon_port < 1024 else [],
        }

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        name = identity.name
        config = self._config(spec, identity)

        async def create_once() -> None:
            try:
                await self._docker.containers.create(config, name=name)
            except aiodocker.DockerError as exc:
                # A retried create whose first attempt reached the engine: it is ours.
                if exc.status == 409 and await self._owned(identity):
                    return
                raise

        try:
            await self.call("create", name, create_once)
        except BackendError as exc:
            if exc.code == 404:
                raise BackendError(
                    f"image {spec.image!r} is not on the engine; build it "
                    "(scripts/build-images.sh) or pull it first",
                    sandbox=name,
                    platform=self.platform,
                    code=404,
                ) from exc.__cause__
            raise
        await self.call("start", name, self._docker.containers.container(name).start)

    async def _owned(self, sandbox: SandboxRef) -> bool:
        info = await self._inspect(sandbox)
        labels: dict[str, str] = (info or {}).get("Config", {}).get("Labels") or {}
        return labels.get(SESSION) == sandbox.labels.get(SESSION)

    async def _inspect(self, sandbox: SandboxRef) -> dict[str, Any] | None:
        """The container's inspect document; None if it does not exist."""
        container = self._docker.containers.container(sandbox.name)
        info: dict[str, Any] | None = await self.call_or_missing(
            "inspect", sandbox.name, container.show
        )
        return info

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        # The container was started by create(); only its published port is missing.
        info = await self._inspect(identity)
        ports = (info or {}).get("NetworkSettings", {}).get("Ports") or {}
        bindings = ports.get(f"{spec.daemon_port}/tcp")
        if info is None or not bindings:
            state = self._state_of(info)
            raise SandboxExitedError(
                f"stopped before its daemon answered: {state.detail}",
                sandbox=identity.name,
                platform=self.platform,
                state=state.detail,
            )
        port = int(bindings[0]["HostPort"])
        return RunningSandbox(
            name=identity.name,
            platform=self.platform,
            port=port,
            addresses={"loopback": "127.0.0.1"},
            url=f"http://127.0.0.1:{port}",
            raw=info,
        )

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        return self._state_of(await self._inspect(sandbox))

    @staticmethod
    def _state_of(info: dict[str, Any] | None) -> SandboxState:
        if info is None:
            return SandboxState("gone (exited and removed)", terminal=True)
        state = info["State"]
        status = state["Status"]
        if status in _TERMINAL:
            return SandboxState(f"{status} (exit code {state.get('ExitCode')})", terminal=True)
        return SandboxState(status)

    async def destroy(self, sandbox: SandboxRef) -> None:
        container = self._docker.containers.container(sandbox.name)

        async def delete() -> None:
            try:
                await container.delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return
                # 409: the engine is already removing it (auto-remove after exit).
                if exc.status != 409:
                    raise
                await self._wait_gone(sandbox)

        await self.call("delete", sandbox.name, delete)

    async def _wait_gone(self, sandbox: SandboxRef) -> None:
        delay = 0.01
        while await self._inspect(sandbox) is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        containers = await self.call(
            "list", None, lambda: self._docker.containers.list(all=True, filters=filters)
        )
        records = []
        for container in containers:
            # The list endpoint's fields, e.g. Names: ["/commandlab-…"].
            name = container["Names"][0].lstrip("/")
            records.append(SandboxRecord(name, container["Labels"] or {}, container["State"]))
        return records
