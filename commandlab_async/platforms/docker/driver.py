"""Local Docker Engine driver (aiodocker).

Each sandbox is one container: labelled, resource-limited, named and hostnamed after the
sandbox, auto-removed when its daemon exits at the TTL. Its daemon serves on a Unix
socket in a private host directory mounted into it (:mod:`.socket_dirs`), or, for an
engine on another machine, on a port published on 127.0.0.1 with an ephemeral host port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiodocker
import aiohttp

from ...daemon.protocol import LISTENING, SOCKET_ENV
from ...errors import BackendError, SandboxNotFoundError, SpecError
from ...labels import SESSION
from ...specs import Spec
from ..base import DockerPlatform, Limits, RunningSandbox
from ..driver import (
    Driver,
    Failure,
    SandboxIdentity,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    daemon_env,
)
from . import images, socket_dirs
from .options import DockerOptions, DockerTarget

__all__ = ["DockerDriver"]

_MIB = 1024 * 1024
_TERMINAL = {"exited", "dead", "removing"}
# The daemon's startup line: from there on, the container's output is the daemon's log.
_LISTENING = LISTENING.rstrip()
# Storage drivers that take a per-container size (overlay2 only on xfs with pquota).
_DISK_QUOTA_DRIVERS = {"btrfs", "zfs", "devicemapper", "windowsfilter"}
_KEPT = 4000  # characters of a container's startup output kept for its error
_LAST_WORDS_WAIT = 1.0  # how long an exit waits for the end of the container's output
_FIRST_SOCKET_POLL = 0.002


@dataclass
class _Startup:
    """What a container printed from its start until its daemon listened or it stopped.

    The engine removes a stopped container (AutoRemove, which the TTL relies on) with
    its logs, so they are read while it comes up; and how it ended, while it still can be.
    """

    output: str = ""
    ended: dict[str, Any] | None = None
    """Its inspect document once it stopped, if read before the engine removed it."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class DockerDriver(Driver[DockerTarget]):
    """Driver for :attr:`DockerPlatform.LOCAL`: the engine ``DOCKER_HOST`` names."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.LOCAL
    # The local engine is the bottleneck, not an API quota: no rate limit, generous bounds.
    default_limits = Limits(creates_in_flight=32, creates_per_second=math.inf, probes_in_flight=128)
    # Loopback probes are cheap: poll often so readiness is seen within ~20 ms.
    probe_interval = 0.02
    # A busy local engine answers within seconds; one silent for 30 s is not answering.
    call_timeout = 30.0

    def __init__(self, target: DockerTarget) -> None:
        super().__init__(target)
        self._docker = aiodocker.Docker(url=target.host)
        self._startups: dict[str, _Startup] = {}
        self._disk_refusal: str | None = None  # why this engine cannot limit disk; "" if it can
        self._awaiting_socket: set[str] = set()  # running, their daemons' sockets not made yet
        self._images: set[str] = set()  # images seen on the engine: not asked about again
        self._builds: dict[str, asyncio.Task[None]] = {}  # the one build of each image

    async def close(self) -> None:
        followers = [s.task for s in self._startups.values() if s.task is not None]
        followers += self._builds.values()
        for task in followers:
            task.cancel()
        # Let them end before their connections' session closes under them.
        await asyncio.gather(*followers, return_exceptions=True)
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

    def _uses_socket(self, spec: Spec) -> bool:
        assert isinstance(spec.options, DockerOptions)
        return spec.options.uses_unix_socket(spec, self.target)

    def _config(self, spec: Spec, identity: SandboxIdentity, socket: bool) -> dict[str, Any]:
        env = daemon_env(spec, identity)
        if socket:
            env[SOCKET_ENV] = f"{socket_dirs.IN_SANDBOX}/{socket_dirs.SOCKET_NAME}"
            endpoint: dict[str, Any] = {
                "Mounts": [
                    {
                        "Type": "bind",
                        "Source": str(socket_dirs.path_of(self.target.host, identity.name)),
                        "Target": socket_dirs.IN_SANDBOX,
                    }
                ],
            }
            exposed: dict[str, Any] = {}
        else:
            port = f"{spec.daemon_port}/tcp"
            # Loopback only, ephemeral host port: sandboxes never collide or leak outside.
            endpoint = {"PortBindings": {port: [{"HostIp": "127.0.0.1", "HostPort": ""}]}}
            exposed = {"ExposedPorts": {port: {}}}
        return {
            "Image": spec.image,
            "Hostname": identity.name,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": identity.labels,
            **exposed,
            "HostConfig": {
                **endpoint,
                # Only loopback: nothing in or out (the daemon is on its Unix socket).
                **({"NetworkMode": "none"} if spec.network == "none" else {}),
                # The daemon exits at the TTL; the engine then removes the container.
                "AutoRemove": True,
                # An init process reaps the orphans of killed commands.
                "Init": True,
                "NanoCpus": int(spec.cpu * 1e9),
                "Memory": spec.memory * _MIB,
                "MemorySwap": spec.memory * _MIB,
                "PidsLimit": spec.pids_limit,
                **({"StorageOpt": {"size": f"{spec.disk}M"}} if spec.disk is not None else {}),
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

    async def prepare(self, spec: Spec) -> Awaitable[None] | None:
        self._uses_socket(spec)  # a spec this engine cannot keep is refused before any call
        image = spec.image
        if image in self._images:
            return None
        found = await self.call_or_missing(
            "inspect image", None, lambda: self._docker.images.inspect(image)
        )
        if found is not None:
            self._images.add(image)
            return None
        if image != images.DEFAULT_TAG or not images.auto_build_enabled():
            raise BackendError(
                images.missing_image_message(image),
                sandbox=None,
                platform=self.platform,
                code=404,
            )
        # One build for every member of a fleet: the first starts it, all wait for it.
        build = self._builds.get(image)
        if build is None:
            build = self._builds[image] = asyncio.create_task(
                images.auto_build(self._docker, image)
            )
            build.add_done_callback(lambda task: self._built(image, task))
        return self._await_build(image, build)

    async def _await_build(self, image: str, build: asyncio.Task[None]) -> None:
        # Shielded: a member stopped by a sibling's failure does not stop the build of
        # the others; close() does, once no one uses this driver.
        await asyncio.shield(build)
        self._images.add(image)

    def _built(self, image: str, task: asyncio.Task[None]) -> None:
        del self._builds[image]  # a failed build is tried again by the next provision
        if not task.cancelled():
            task.exception()  # retrieved here if every waiter was cancelled

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        name = identity.name
        try:
            socket = self._uses_socket(spec)
        except SpecError:
            self.mark_not_created(name)
            raise
        if not socket:
            await self._create(spec, identity, socket)
            return
        try:
            await asyncio.to_thread(socket_dirs.make, self.target.host, name)
        except OSError as exc:
            self.mark_not_created(name)
            raise BackendError(
                f"cannot make the directory of its daemon's socket: {exc}",
                sandbox=name,
                platform=self.platform,
                code="socket_dir",
            ) from exc
        try:
            await self._create(spec, identity, socket)
        except BaseException:
            if name in self._not_created:  # no delete will come to remove it
                await asyncio.to_thread(socket_dirs.remove, self.target.host, name)
            raise

    async def _create(self, spec: Spec, identity: SandboxIdentity, socket: bool) -> None:
        name = identity.name
        config = self._config(spec, identity, socket)
        if spec.disk is not None:
            await self._check_disk_limit(spec.disk, name)

        reached = False

        async def create_once() -> None:
            nonlocal reached
            try:
                await self._docker.containers.create(config, name=name)
            except aiodocker.DockerError as exc:
                # aiodocker's 900 wraps a connection error; one that never connected
                # means this attempt never reached the engine.
                if exc.status == 900 and isinstance(exc.__context__, aiohttp.ClientConnectorError):
                    raise
                reached = True
                # A retried create whose first attempt reached the engine: it is ours.
                if exc.status == 409 and await self._owned(identity):
                    return
                raise
            except BaseException:
                reached = True  # sent, perhaps acted on: only a delete can tell
                raise

        try:
            await self.call("create", name, create_once)
        except BackendError as exc:
            if not reached:  # the engine refused every connection: nothing to delete
                self.mark_not_created(name)
            if exc.code == 404:  # removed since prepare() saw it
                self._images.discard(spec.image)
                raise BackendError(
                    images.missing_image_message(spec.image),
                    sandbox=name,
                    platform=self.platform,
                    code=404,
                ) from exc.__cause__
            raise
        await self.call("start", name, self._docker.containers.container(name).start)
        startup = self._startups[name] = _Startup()
        startup.task = asyncio.create_task(self._follow(identity, startup))

    async def _follow(self, sandbox: SandboxRef, startup: _Startup) -> None:
        """Keep the container's output until its daemon listens; note how it ended."""
        # aiodocker's own log() inspects first; the container is known not to use a TTY.
        logs = self._docker._query(
            f"containers/{sandbox.name}/logs",
            params={"follow": 1, "stdout": 1, "stderr": 1},
            timeout=aiohttp.ClientTimeout(),
        )
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, BackendError):
            async with logs as response:
                try:
                    async for chunk in _demultiplexed(response.content):
                        text = chunk.decode(errors="replace")
                        startup.output = (startup.output + text)[-_KEPT:]
                        if _LISTENING in text:
                            return
                finally:
                    response.close()  # _query leaves that to us; the stream may not end
            # The output ended: the container stopped. Read why before it is removed.
            startup.ended = await self._inspect(sandbox)

    async def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        if await self._inspect(sandbox) is None:
            raise SandboxNotFoundError("no such container", sandbox=sandbox.name)
        query = self._docker._query(
            f"containers/{sandbox.name}/logs",
            params={"follow": int(follow), "stdout": 1, "stderr": 1},
            timeout=aiohttp.ClientTimeout(),
        )
        async with query as response:
            try:
                async for chunk in _demultiplexed(response.content):
                    yield chunk
            finally:
                response.close()

    async def _check_disk_limit(self, disk: int, name: str) -> None:
        """Refuse ``disk`` before the create if this engine cannot keep it."""
        try:
            refusal = await self._why_no_disk_limit()
        except BaseException:
            self.mark_not_created(name)
            raise
        if refusal:
            self.mark_not_created(name)
            raise BackendError(
                f"disk={disk}: {refusal}; leave `disk` unset on this engine",
                sandbox=name,
                platform=self.platform,
                code="disk_unsupported",
            )

    async def _why_no_disk_limit(self) -> str:
        """Why this engine cannot limit a container's writable layer; "" if it can.

        Asked once: the engine's own refusal comes as a 500, retried as transient.
        """
        if self._disk_refusal is None:
            info = await self.call("info", None, self._docker.system.info)
            driver = info.get("Driver", "")
            status = dict(pair for pair in info.get("DriverStatus") or [] if len(pair) == 2)
            backing = status.get("Backing Filesystem", "")
            able = driver in _DISK_QUOTA_DRIVERS or (driver == "overlay2" and backing == "xfs")
            self._disk_refusal = (
                ""
                if able
                else f"this engine cannot limit a container's filesystem (storage driver "
                f"{driver or '?'} on {backing or '?'}; it takes overlay2 on xfs mounted "
                "with pquota, btrfs or zfs)"
            )
        return self._disk_refusal

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
        # The container was started by create(); only its address is missing.
        info = await self._inspect(identity)
        if self._uses_socket(spec):
            if info is None or self._state_of(info).terminal:
                state = await self._final_state(identity, info)
                raise state.exited_error(identity.name, self.platform)
            socket = await self._sealed_socket(identity)
            return RunningSandbox(
                name=identity.name,
                platform=self.platform,
                port=0,
                addresses={"unix": str(socket)},
                url=f"unix:{socket}",
                raw=info,
            )
        ports = (info or {}).get("NetworkSettings", {}).get("Ports") or {}
        bindings = ports.get(f"{spec.daemon_port}/tcp")
        if info is None or not bindings:
            state = await self._final_state(identity, info)
            raise state.exited_error(identity.name, self.platform)
        port = int(bindings[0]["HostPort"])
        return RunningSandbox(
            name=identity.name,
            platform=self.platform,
            port=port,
            addresses={"loopback": "127.0.0.1"},
            url=f"http://127.0.0.1:{port}",
            raw=info,
        )

    async def _sealed_socket(self, identity: SandboxIdentity) -> Path:
        """Wait until the daemon's socket appears, then seal it (see :mod:`.socket_dirs`).

        Polled like readiness (a few milliseconds, backing off); the container's end,
        seen on its output stream, fails it fast. The caller's deadline bounds it.
        """
        name = identity.name
        self._awaiting_socket.add(name)  # kept if cancelled: a timeout's message says it
        try:
            sealed = await self._seal_when_made(identity)
        except Exception:
            self._awaiting_socket.discard(name)
            raise
        self._awaiting_socket.discard(name)
        return sealed

    async def _seal_when_made(self, identity: SandboxIdentity) -> Path:
        name = identity.name
        startup = self._startups.get(name)
        loop = asyncio.get_running_loop()
        delay = _FIRST_SOCKET_POLL
        next_check = loop.time() + 1.0
        while True:
            try:
                sealed = await asyncio.to_thread(socket_dirs.seal, self.target.host, name)
            except OSError as exc:
                raise BackendError(
                    f"cannot take its daemon's socket out of the sandbox's reach: {exc}",
                    sandbox=name,
                    platform=self.platform,
                    code="socket_dir",
                ) from exc
            if sealed is not None:
                return sealed
            # Its output ends as it stops; without one to follow, ask now and then.
            ended = (
                startup is None
                or startup.task is None
                or (startup.task.done() and _LISTENING not in startup.output)
            )
            if ended or loop.time() >= next_check:
                next_check = loop.time() + 1.0
                state = await self.state(identity)
                if state.terminal:
                    raise state.exited_error(name, self.platform)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.probe_interval)

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        if sandbox.name in self._awaiting_socket:
            return "running; daemon not answering (it has not made its socket)"
        return None

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        info = await self._inspect(sandbox)
        state = self._state_of(info)
        return await self._final_state(sandbox, info) if state.terminal else state

    async def _final_state(self, sandbox: SandboxRef, info: dict[str, Any] | None) -> SandboxState:
        """How a stopped container ended, with what it printed, as far as can be known."""
        startup = self._startups.get(sandbox.name)
        if startup is None or startup.task is None:
            return self._state_of(info)
        # Its output ends as it stops: wait a moment for the last of it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LAST_WORDS_WAIT):
                await asyncio.shield(startup.task)
        state = self._state_of(info or startup.ended)
        return SandboxState(
            state.detail,
            terminal=True,
            exit_code=state.exit_code,
            reason=state.reason,
            logs=startup.output,
        )

    @staticmethod
    def _state_of(info: dict[str, Any] | None) -> SandboxState:
        if info is None:
            return SandboxState("gone (exited and removed)", terminal=True)
        state = info["State"]
        status = state["Status"]
        if status not in _TERMINAL:
            return SandboxState(status)
        code = state.get("ExitCode")
        said = "OOM killed" if state.get("OOMKilled") else state.get("Error") or None
        detail = f"{status} (exit code {code}{f'; {said}' if said else ''})"
        reason = said or "exited"
        return SandboxState(detail, terminal=True, exit_code=code, reason=reason)

    async def destroy(self, sandbox: SandboxRef) -> None:
        self._awaiting_socket.discard(sandbox.name)
        startup = self._startups.pop(sandbox.name, None)
        if startup is not None and startup.task is not None:
            startup.task.cancel()
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
        await asyncio.to_thread(socket_dirs.remove, self.target.host, sandbox.name)

    async def _wait_gone(self, sandbox: SandboxRef) -> None:
        delay = 0.01
        while await self._inspect(sandbox) is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def tidy(self, existing: list[SandboxRecord]) -> None:
        # The socket directories of sandboxes the engine removed by itself (at the TTL).
        names = {record.name for record in existing}
        await asyncio.to_thread(socket_dirs.prune, self.target.host, names)

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


async def _demultiplexed(body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The payloads of the engine's log stream (no TTY): 8-byte headers, then data."""
    while True:
        try:
            head = await body.readexactly(8)
            payload = await body.readexactly(int.from_bytes(head[4:], "big"))
        except asyncio.IncompleteReadError:
            return
        yield payload
