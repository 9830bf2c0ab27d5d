"""A driver on the protocol with an in-memory backend, for lifecycle tests in milliseconds.

``FakeCloud`` is the backend: it keeps sandboxes by name, records every call and can be
told to be slow, to lose a create's answer after acting, to throttle, to refuse, to let a
sandbox exit or its daemon never answer. Its daemons are one in-process HTTP server on
127.0.0.1 that authenticates like the real one (the SHA-256 of the token it was given),
so readiness and ``Computer`` run their real code against it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from commandlab_async._lifecycle.identity import SandboxIdentity
from commandlab_async._lifecycle.limits import Limits
from commandlab_async.errors import SandboxExitedError
from commandlab_async.platforms.base import DockerPlatform, RunningSandbox
from commandlab_async.platforms.docker.options import DockerTarget
from commandlab_async.platforms.driver import (
    Driver,
    Failure,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    daemon_env,
)
from commandlab_async.specs import Spec


class FakeApiError(Exception):
    """What the fake SDK raises: an HTTP-like status."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"{status} {message}".strip())
        self.status = status


@dataclass
class FakeSandbox:
    name: str
    labels: dict[str, str]
    digest: str
    state: str = "running"
    healthy: bool = True


@dataclass
class FakeCloud:
    """The backend behind every FakeDriver of a test, and its knobs."""

    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    create_delay: float = 0.0
    destroy_delay: float = 0.0
    lose_create_answers: int = 0
    """Create this many times, then raise a dropped connection instead of answering."""
    throttle: int = 0
    """Answer this many calls (any kind) with 429 first."""
    refuse_create: int | None = None
    """Answer creates with this status (a permanent error) without acting."""
    refuse_destroy: int | None = None
    exits: bool = False
    """New sandboxes stop before their daemon answers."""
    never_healthy: bool = False
    """New sandboxes run but their daemon never answers."""
    url: str = ""
    requested: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a create reached the backend (which acts after ``create_delay``)."""
    drivers: list[FakeDriver] = field(default_factory=list)

    pending: set[asyncio.Future[None]] = field(default_factory=set)
    creating: int = 0
    peak_creating: int = 0
    """The most create calls the backend had in flight at once."""

    async def _act(self, box: FakeSandbox) -> None:
        await asyncio.sleep(self.create_delay)
        self.sandboxes[box.name] = box

    async def settled(self) -> None:
        """Wait until the backend finished every create it was asked for."""
        await asyncio.gather(*self.pending)

    def live(self) -> list[str]:
        return sorted(self.sandboxes)

    def count(self, call: str) -> int:
        return sum(1 for c in self.calls if c == call)

    async def _api(self, call: str) -> None:
        self.calls.append(call)
        await asyncio.sleep(0)
        if self.throttle:
            self.throttle -= 1
            raise FakeApiError(429, "slow down")

    async def _health(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-CommandLab-Token", "")
        digest = hashlib.sha256(token.encode()).hexdigest()
        box = next((b for b in self.sandboxes.values() if b.digest == digest), None)
        if box is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        if not box.healthy:
            return web.json_response({"error": "booting"}, status=503)
        return web.json_response({"version": "fake", "uptime": 0.0})

    async def serve(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return runner


class FakeDriver(Driver[DockerTarget]):
    """Stands in for the local Docker driver (tests swap the registry row)."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.LOCAL
    default_limits = Limits(creates_in_flight=8, creates_per_second=1000, create_burst=100)
    probe_interval = 0.005
    first_wait = 0.001
    max_wait = 0.01
    cloud: ClassVar[FakeCloud]

    def __init__(self, target: DockerTarget) -> None:
        super().__init__(target)
        self.closed = False
        self.cloud.drivers.append(self)

    async def close(self) -> None:
        self.closed = True

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, FakeApiError):
            return Failure(
                exc.status, transient=exc.status in (429, 503), not_found=exc.status == 404
            )
        if isinstance(exc, ConnectionResetError):
            return Failure(None, transient=True)
        return None

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        cloud = self.cloud

        async def create_once() -> None:
            await cloud._api("create")
            if cloud.refuse_create is not None:
                raise FakeApiError(cloud.refuse_create, "refused")
            if identity.name in cloud.sandboxes:
                return  # a retried create that had acted: it is ours (same name)
            box = FakeSandbox(
                identity.name,
                dict(identity.labels),
                daemon_env(spec, identity)["COMMANDLAB_TOKEN_SHA256"],
                state="exited (code 3)" if cloud.exits else "running",
                healthy=not (cloud.exits or cloud.never_healthy),
            )
            cloud.requested.set()
            # Like a real server, the backend finishes what it was asked even when the
            # client stops waiting for the answer.
            backend = asyncio.ensure_future(cloud._act(box))
            cloud.pending.add(backend)
            await asyncio.shield(backend)
            if cloud.lose_create_answers:
                cloud.lose_create_answers -= 1
                raise ConnectionResetError("the answer was lost")

        cloud.creating += 1
        cloud.peak_creating = max(cloud.peak_creating, cloud.creating)
        try:
            await self.call("create", identity.name, create_once)
        finally:
            cloud.creating -= 1

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        box = self.cloud.sandboxes.get(identity.name)
        if box is None or box.state != "running":
            detail = box.state if box else "gone"
            raise SandboxExitedError(
                f"stopped before its daemon answered: {detail}",
                sandbox=identity.name,
                platform=self.platform,
                state=detail,
            )
        return RunningSandbox(
            name=identity.name,
            platform=self.platform,
            port=0,
            addresses={"loopback": "127.0.0.1"},
            url=self.cloud.url,
            raw={"name": identity.name},
        )

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        await self.call("state", sandbox.name, lambda: self.cloud._api("state"))
        box = self.cloud.sandboxes.get(sandbox.name)
        if box is None:
            return SandboxState("gone", terminal=True)
        return SandboxState(box.state, terminal=box.state != "running")

    async def destroy(self, sandbox: SandboxRef) -> None:
        cloud = self.cloud

        async def delete() -> None:
            await cloud._api("destroy")
            await asyncio.sleep(cloud.destroy_delay)
            if cloud.refuse_destroy is not None:
                raise FakeApiError(cloud.refuse_destroy, "cannot delete")
            if sandbox.name not in cloud.sandboxes:
                raise FakeApiError(404, "no such sandbox")
            del cloud.sandboxes[sandbox.name]

        await self.call_or_missing("destroy", sandbox.name, delete)

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        await self.call("list", None, lambda: self.cloud._api("list"))
        return [
            SandboxRecord(box.name, dict(box.labels), box.state)
            for box in self.cloud.sandboxes.values()
            if all(box.labels.get(k) == v for k, v in labels.items())
        ]
