"""Fault injection: rules, the emulators' request recording, and a fault-injecting proxy.

A :class:`Rule` says what to do with the requests whose "what" name it matches: delay them
(before or after they are served), answer with an error instead, or drop the connection.
Every emulator records its requests and applies rules through :class:`Recording` and
:func:`faulted`.

:class:`FaultyProxy` puts the same faults in front of a real server: every request is
recorded and forwarded unless a rule says otherwise. :class:`FaultyDockerProxy` serves a
unix socket for ``DOCKER_HOST``; :class:`FaultyHttpProxy` a loopback TCP port for
``AWS_ENDPOINT_URL`` (moto).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
from aiohttp import web

from ._https import Listener

ENGINE_SOCKET = "/var/run/docker.sock"
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Rule:
    """What to do with requests whose ``METHOD path`` matches ``pattern``.

    The path is matched without the API version prefix, e.g. ``POST /containers/create``.
    """

    pattern: str
    delay_before: float = 0.0
    """Seconds to hold the request before the engine sees it."""
    delay_after: float = 0.0
    """Seconds to hold the engine's answer (the engine has already acted)."""
    status: int | None = None
    """Answer with this status instead of forwarding."""
    drop: bool = False
    """Close the connection without an answer (after forwarding if ``forward``)."""
    forward: bool = False
    """With ``drop``/``status``: still let the engine act before failing."""
    times: int | None = None
    """Apply to this many matching requests, then stop (None: always)."""
    body: dict[str, Any] | None = None
    """JSON body of the injected error (default: a Docker-style message)."""
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a request first matches."""

    def take(self, what: str) -> bool:
        if not re.fullmatch(self.pattern, what) or self.times == 0:
            return False
        if self.times is not None:
            self.times -= 1
        self.seen.set()
        return True


class _Named(Protocol):
    @property
    def what(self) -> str: ...


R = TypeVar("R", bound=_Named)
T = TypeVar("T")


class Recording(Generic[R]):
    """What the emulators share: requests recorded in order, and faults injected by the
    "what" name each emulator gives its requests (``PUT group``, ``POST pods``...)."""

    requests: list[R]
    rules: list[Rule]

    def add(self, rule: Rule) -> Rule:
        """Inject a fault on requests whose "what" string fullmatches ``rule.pattern``."""
        self.rules.append(rule)
        return rule

    def calls(self, pattern: str) -> list[R]:
        """Recorded requests whose "what" string fullmatches the regex ``pattern``."""
        return [r for r in self.requests if re.fullmatch(pattern, r.what)]

    def _rule_for(self, what: str) -> Rule | None:
        """The first rule that applies to a request named ``what`` (and counts it)."""
        return next((r for r in self.rules if r.take(what)), None)


async def faulted(
    rule: Rule | None, act: Callable[[], Awaitable[T]], fail: Callable[[Rule], T]
) -> T:
    """Serve a request under ``rule``: wait ``delay_before``; then, for a fault (``status``
    or ``drop``) without ``forward``, ``fail`` instead of acting; else ``act``, wait
    ``delay_after``, and for a fault ``fail`` anyway (the emulator acted; the answer is lost).
    """
    if rule is not None and rule.delay_before:
        await asyncio.sleep(rule.delay_before)
    if rule is not None and (rule.status or rule.drop) and not rule.forward:
        return fail(rule)
    result = await act()
    if rule is not None and rule.delay_after:
        await asyncio.sleep(rule.delay_after)
    if rule is not None and (rule.status or rule.drop):
        return fail(rule)
    return result


class FaultyProxy:
    """Forwards to ``upstream`` (a base URL) through connectors made by ``connector``."""

    def __init__(
        self, upstream: str, connector: Callable[[], aiohttp.BaseConnector] | None = None
    ) -> None:
        self.upstream = upstream
        self._connector = connector
        self.rules: list[Rule] = []
        self.requests: list[str] = []
        self.spans: list[tuple[str, float, float]] = []
        """(request, started, finished) on the loop clock, for every finished request."""
        self.arrived: list[tuple[str, float]] = []
        """(request, when it arrived) on the loop clock, for every request."""
        self._frozen = False
        self._freeze_after: str | None = None
        self._listener = Listener(self._handle)
        self._client: aiohttp.ClientSession | None = None

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def calls(self, pattern: str) -> list[str]:
        return [r for r in self.requests if re.fullmatch(pattern, r)]

    def freeze(self, *, after: str | None = None) -> None:
        """Stop answering, like a server that hangs: from now on no request is forwarded
        or answered, nor is any answer still on its way, until the proxy closes.

        With ``after``, from the next request matching that pattern on, which the server
        still receives and acts on (its answer is held like the rest).
        """
        if after is None:
            self._frozen = True
        else:
            self._freeze_after = after

    @staticmethod
    async def _hang() -> None:
        await asyncio.Event().wait()  # until the listener's shutdown cancels the handler

    def peak(self, pattern: str) -> int:
        """Most requests matching ``pattern`` that the engine had in flight at once."""
        edges = sorted(
            (t, step)
            for what, start, end in self.spans
            if re.fullmatch(pattern, what)
            for t, step in ((start, 1), (end, -1))
        )
        peak = current = 0
        for _, step in edges:
            current += step
            peak = max(peak, current)
        return peak

    def starts(self, pattern: str) -> list[float]:
        return sorted(start for what, start, _ in self.spans if re.fullmatch(pattern, what))

    def describe(self, request: web.Request) -> str:
        """What rules match against: ``METHOD /path``."""
        return f"{request.method} {request.path}"

    def _setup(self) -> Listener:
        connector = self._connector() if self._connector else None
        self._client = aiohttp.ClientSession(connector=connector)
        # A request held by a hang rule must not hold the test's teardown for a minute: the
        # listener's shutdown timeout is a second.
        return self._listener

    async def close(self) -> None:
        await self._listener.close()
        if self._client is not None:
            await self._client.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        what = self.describe(request)
        self.requests.append(what)
        started = asyncio.get_running_loop().time()
        self.arrived.append((what, started))
        try:
            return await self._forward(request, what)
        finally:
            self.spans.append((what, started, asyncio.get_running_loop().time()))

    async def _forward(self, request: web.Request, what: str) -> web.StreamResponse:
        if self._frozen:
            await self._hang()
        trigger = self._freeze_after is not None and re.fullmatch(self._freeze_after, what)
        if trigger:
            self._freeze_after = None
        rule = next((r for r in self.rules if r.take(what)), None)
        body = await request.read()
        if rule is not None and rule.delay_before:
            await asyncio.sleep(rule.delay_before)
        if rule is not None and (rule.status or rule.drop) and not rule.forward:
            return self._fail(request, rule)
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            self._frozen = self._frozen or bool(trigger)
            if self._frozen:
                await self._hang()
            if rule is not None and rule.delay_after:
                await asyncio.sleep(rule.delay_after)
            if rule is not None and (rule.status or rule.drop):
                return self._fail(request, rule)
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:
                    response.headers[key] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if self._frozen:
                    await self._hang()
                await response.write(chunk)
            await response.write_eof()
            return response

    @staticmethod
    def _fail(request: web.Request, rule: Rule) -> web.StreamResponse:
        if rule.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp's way to abandon a dropped request
        status = rule.status or 500  # not a drop: a status
        body = rule.body or {"message": f"injected fault {status}"}
        return web.json_response(body, status=status)


class FaultyDockerProxy(FaultyProxy):
    """The Docker Engine behind a unix socket; point ``DOCKER_HOST`` at :attr:`url`."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__("http://docker", lambda: aiohttp.UnixConnector(ENGINE_SOCKET))
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def describe(self, request: web.Request) -> str:
        # Without the API version prefix, e.g. ``POST /containers/create``.
        return f"{request.method} {re.sub(r'^/v[0-9.]+', '', request.path)}"

    async def start(self) -> None:
        await self._setup().start_unix(self.socket_path)


class FaultyHttpProxy(FaultyProxy):
    """A server behind a loopback TCP port; :attr:`url` is the proxy's base URL."""

    port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self, request: web.Request) -> str:
        # AWS JSON APIs name the action in a header, e.g. ``RunTask``.
        target = request.headers.get("X-Amz-Target", "")
        return target.rsplit(".", 1)[-1] if target else super().describe(request)

    async def start(self) -> None:
        self.port = await self._setup().start()
