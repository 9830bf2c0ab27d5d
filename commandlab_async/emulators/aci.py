"""An emulator of Azure Resource Manager for Container Instances, backed by the local Docker Engine.

The real SDK (``azure.mgmt.containerinstance.aio.ContainerInstanceManagementClient``, api-version
2023-05-01) talks to :class:`AciEmulator` unmodified over HTTPS, and ``azure.identity.aio``
credentials get their tokens from it: one aiohttp server on 127.0.0.1 plays both ARM and the
Microsoft Entra ID token endpoint (point ``authority``/``AZURE_AUTHORITY_HOST`` and the client's
``base_url`` at :attr:`AciEmulator.url`, and ``connection_verify`` at :meth:`AciEmulator.write_ca`).
Each container group's containers really run on the local engine, their ports published on
127.0.0.1; the group reports a documentation address (TEST-NET, or 10.x for a VNet group) that is
never connected to: :meth:`AciEmulator.resolver` maps it to the published port.
:func:`arm_client` is the SDK's own client on an emulator (the ``azure`` extra).

Routes (everything else is a 404/405 with an ARM error body)::

    POST   /{tenant}/oauth2/v2.0/token                                          "POST token"
    PUT    /subscriptions/{s}/resourceGroups/{rg}/providers/
               Microsoft.ContainerInstance/containerGroups/{name}               "PUT group"
    GET    (same)                                                               "GET group"
    DELETE (same)                                                               "DELETE group"
    GET    .../containerGroups/{name}/containers/{container}/logs               "GET logs"
    GET    /subscriptions/{s}/resourceGroups/{rg}/providers/
               Microsoft.ContainerInstance/containerGroups                      "LIST groups"
    GET    /subscriptions/{s}/providers/Microsoft.ContainerInstance/containerGroups  "LIST groups"
    GET    /subscriptions/{s}/providers/Microsoft.ContainerInstance/
               locations/{region}/operations/{id}                               "GET operation"

Faults are injected with :class:`~commandlab_async.emulators.faults.Rule`, whose pattern is
matched (fullmatch) against the quoted "what" strings above; a request the emulator does not
serve is described as ``"<METHOD> <path>"``.  ``status`` answers that status with an ARM error
body (Entra-style for the token endpoint); ``drop`` closes the connection unanswered; with
``forward`` the emulator acts first, so the answer is what is lost.  Every request is recorded
in :attr:`AciEmulator.requests` (status 0: dropped, or not answered yet).

How a group lives, as ACI shows it: ``Pending`` -> (``create_latency``) ``Creating`` -> the
image is looked up on the engine.  Missing: ``Pulling``/``Failed``/``BackOff`` events on the
container, which waits (``ImagePullBackOff``) while the group stays ``Creating`` and retries every
few seconds, as ACI keeps retrying until the group is deleted.  Present: the containers are
created and started, then the group turns ``Succeeded`` with its IP once the first port takes
connections (or the container exits, or ``listen_timeout`` passes: ACI has no readiness check of
its own).  A container that exits shows ``Terminated`` and, with every container terminated, the
group's ``instanceView.state`` is ``Succeeded`` (all exit codes 0) or ``Failed`` -- what ACI
reports for restart policy ``Never``; containers are never restarted, whatever the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import math
import re
import secrets
import ssl
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiodocker
from aiohttp import web

from ._containers import LocalEngine
from ._entra import access_token
from ._https import Emulator, Listener, LocalCA
from .faults import Recording, Rule, faulted

if TYPE_CHECKING:
    from azure.mgmt.containerinstance.aio import ContainerInstanceManagementClient

LABEL = "commandlab.aci-emulator"
API_VERSION = "2023-05-01"
PROVIDER = "Microsoft.ContainerInstance"
TYPE = f"{PROVIDER}/containerGroups"
ARM_WRITES = 1199  # what ARM reports as remaining writes when no limit is configured
PULL_RETRY = 3.0  # seconds between pull attempts of a missing image

# ARM matches the fixed segments of a path case-insensitively.
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = r"/resourcegroups/(?P<rg>[^/]+)"
_CG = rf"/providers/{PROVIDER}/containergroups"
_OP = rf"/providers/{PROVIDER}/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)"
ROUTES = [
    ("group", re.compile(rf"{_SUB}{_RG}{_CG}/(?P<name>[^/]+)", re.I)),
    ("logs", re.compile(rf"{_SUB}{_RG}{_CG}/(?P<name>[^/]+)/containers/(?P<c>[^/]+)/logs", re.I)),
    ("list", re.compile(rf"{_SUB}(?:{_RG})?{_CG}", re.I)),
    ("operation", re.compile(rf"{_SUB}{_OP}", re.I)),
]
TOKEN_PATH = re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token")
WHAT = {
    ("group", "PUT"): "PUT group",
    ("group", "GET"): "GET group",
    ("group", "DELETE"): "DELETE group",
    ("logs", "GET"): "GET logs",
    ("list", "GET"): "LIST groups",
    ("operation", "GET"): "GET operation",
}

NAME = re.compile(r"(?!.*--)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
TAG_NAME_FORBIDDEN = set("<>%&\\?/")
MAX_CPU, MAX_MEMORY_GB = 4.0, 16.0
# Documentation ranges (RFC 5737) for public IPs: unique per live group, never connected to.
PUBLIC_NETS = ("203.0.113", "198.51.100", "192.0.2")
STATUS_CODES = {
    400: "BadRequest", 401: "AuthenticationFailed", 403: "AuthorizationFailed",
    404: "NotFound", 409: "Conflict", 412: "PreconditionFailed", 429: "TooManyRequests",
    500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
    504: "GatewayTimeout",
}  # fmt: skip


@dataclass
class Recorded:
    """One HTTP request as the emulator received it, and its answer."""

    what: str
    """What rules match against, e.g. ``PUT group`` (see the module docstring)."""
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    """The answer's status; 0 while unanswered, or when the connection was dropped."""
    request: Any = None
    """The JSON body (a token request: its form, with the secret masked)."""
    response: str = ""
    """The answer's body as sent."""
    at: float = 0.0
    """When it arrived (``time.monotonic()``)."""


class _Running(Protocol):
    """What :meth:`AciEmulator.resolver` reads of a ``RunningSandbox``."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str | None: ...


class _ArmError(Exception):
    """Ends a request with an ARM error body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class _Group:
    """The emulator's bookkeeping for one container group (its resource is in ``groups``)."""

    id: str
    subscription: str
    name: str
    resource: dict[str, Any]
    operation: str
    op_started: str
    op_ended: str | None = None
    task: asyncio.Task[None] | None = None
    # Creating and starting containers is never cancelled half-way (the engine might act on a
    # request whose client went away); a delete waits for it and removes the result.
    starting: asyncio.Future[None] | None = None
    container_ids: list[str] = field(default_factory=list)
    published: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port
    ip: str | None = None
    exit_codes: dict[int, int] = field(default_factory=dict)  # set by exit_container
    deleted: bool = False

    @property
    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = self.resource["properties"]
        return props

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.properties["containers"])

    @property
    def state(self) -> str:
        return str(self.properties["provisioningState"])

    @property
    def main_port(self) -> int | None:
        """The first port of the first container: the one :meth:`AciEmulator.port_of` names."""
        ports = self.containers[0]["properties"].get("ports") or []
        return int(ports[0]["port"]) if ports else None


class AciEmulator(Emulator, Recording[Recorded]):
    """ARM + Entra ID token endpoint for ACI container groups, over HTTPS on 127.0.0.1.

    ``create_latency`` delays every deployment; ``max_groups`` caps groups per subscription and
    region (``ContainerGroupQuotaReached``); ``writes_per_second``/``write_burst`` rate-limit
    PUT and DELETE with a token bucket (429 ``TooManyRequests``); ``page_size`` caps list
    pages; ``listen_timeout`` bounds how long a deployment waits for the first port to take
    connections before it is reported ``Succeeded`` anyway.
    """

    retry_after = 1
    """``Retry-After`` of a create's 201 (0 leaves it out).  azure-core's poller ignores it: it
    polls the operation at once, then waits each status answer's ``Retry-After`` (the
    emulator sends none) or else its ``polling_interval``."""

    def __init__(
        self,
        *,
        create_latency: float = 0.0,
        max_groups: int = 100,
        writes_per_second: float | None = None,
        write_burst: int = 200,
        page_size: int = 100,
        listen_timeout: float = 30.0,
    ) -> None:
        self.create_latency = create_latency
        self.max_groups = max_groups
        self.writes_per_second = writes_per_second
        self.write_burst = write_burst
        self.page_size = page_size
        self.listen_timeout = listen_timeout
        self.url = ""
        self.ca = LocalCA()
        self.tenant_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())
        self.client_secret = secrets.token_urlsafe(30)
        self.subscription_id = str(uuid.uuid4())
        self.groups: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.rules: list[Rule] = []
        self._engine = LocalEngine(LABEL)
        self._live: dict[str, _Group] = {}  # lower-cased resource id -> group
        self._operations: dict[str, _Group] = {}  # operation id -> group (outlives a delete)
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._ip_turn = 0
        self._bucket = float(write_burst)
        self._bucket_at = time.monotonic()
        self._listener: Listener | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Serve ARM and the token endpoint over HTTPS on 127.0.0.1, with a fresh test CA."""
        self._engine.open()
        self._listener, self.url = await self._serve_https(self._handle, client_max_size=1 << 24)

    async def aclose(self) -> None:
        """Stop serving, stop every deployment and force-remove every container we started."""
        if self._listener is not None:
            await self._listener.close()
        for key in list(self._live):
            self._forget(self._live[key])
        await self._engine.close()

    # ----------------------------------------------------------------------- test interface

    def live(self) -> list[str]:
        """Names of the container groups that exist now."""
        return [str(resource["name"]) for resource in self.groups.values()]

    async def containers(self) -> list[str]:
        """Ids of the engine's containers started by this emulator that still exist.

        Removals already under way (deleted groups) are waited for first, so a test that
        deleted everything sees ``[]`` rather than a container a moment from gone.
        """
        return await self._engine.containers()

    def port_of(self, name: str) -> int | None:
        """The 127.0.0.1 port publishing the first port of group ``name``'s first container."""
        group = self._named(name)
        if group is None or group.main_port is None:
            return None
        return group.published.get(group.main_port)

    async def resolver(self, running: _Running) -> str:
        """An ``EndpointResolver``: the driver's URL for a group, moved to its published port.

        Asserts that the driver offers the address this emulator reported for the group (a
        documentation or 10.x address nobody may connect to) and one of its exposed ports.
        """
        group = self._named(running.name)
        assert group is not None, f"no live container group named {running.name!r}"
        assert running.url, f"the driver offered no URL for {running.name!r}"
        parts = urllib.parse.urlsplit(running.url)
        assert group.ip is not None, f"{running.name!r} has no IP address yet"
        assert parts.hostname == group.ip, (
            f"{running.url!r} is not at the address reported for {running.name!r}: {group.ip}"
        )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        assert port in group.published, (
            f"{running.url!r}: port {port} is not exposed by {running.name!r} "
            f"(exposed: {sorted(group.published)})"
        )
        netloc = f"127.0.0.1:{group.published[port]}"
        return urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path, parts.query, parts.fragment)
        )

    async def exit_container(self, name: str, code: int = 1) -> None:
        """Make group ``name``'s containers exit with ``code`` (they are killed), as if their
        process had ended: the group then shows them ``Terminated``."""
        group = self._named(name)
        assert group is not None, f"no live container group named {name!r}"
        assert group.starting is not None, f"{name!r} has no containers yet"
        await asyncio.wait([group.starting])
        for index, container_id in enumerate(group.container_ids):
            group.exit_codes[index] = code
            await self._engine.kill(container_id)  # it may have exited already
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(aiodocker.DockerError):
                    if not (await self._engine.show(container_id))["State"]["Running"]:
                        break
                await asyncio.sleep(0.05)
        await self._refresh(group)

    # -------------------------------------------------------------------------- HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route, match = _route(request.path)
        if request.method == "POST" and TOKEN_PATH.fullmatch(request.path):
            what = "POST token"
        else:
            what = WHAT.get((route, request.method), f"{request.method} {request.path}")
        body = await request.read()
        record = Recorded(what, request.method, request.path, dict(request.query))
        record.request, record.at = _parse_body(body, what), time.monotonic()
        self.requests.append(record)

        async def act() -> web.Response:
            if what == "POST token":
                return self._token(request, body)
            return await self._arm(request, route, match, body)

        response = await faulted(
            self._rule_for(what), act, lambda rule: self._fail(request, record, rule)
        )
        record.status = response.status
        record.response = response.text or ""
        return response

    def _fail(self, request: web.Request, record: Recorded, rule: Rule) -> web.Response:
        if rule.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp's way to abandon a dropped request
        status = rule.status or 500
        headers: dict[str, str] = {}
        if record.what == "POST token":
            body = rule.body or {
                "error": "temporarily_unavailable",
                "error_description": f"AADSTS50196: injected fault: HTTP {status}.",
            }
        else:
            code = STATUS_CODES.get(status, "InternalServerError")
            body = rule.body or {
                "error": {"code": code, "message": f"Injected fault: HTTP {status}."}
            }
        if status == 429:
            headers["Retry-After"] = "1"
            headers["x-ms-ratelimit-remaining-subscription-writes"] = "0"
        response = _json(body, status, headers)
        record.status, record.response = status, response.text or ""
        return response

    async def _arm(
        self, request: web.Request, route: str, match: re.Match[str] | None, body: bytes
    ) -> web.Response:
        """Authenticate, check the api-version, throttle writes, then act."""
        write = request.method in ("PUT", "DELETE", "PATCH", "POST")
        headers = {"x-ms-request-id": str(uuid.uuid4())}
        try:
            self._authenticate(request)
            version = request.query.get("api-version")
            if version is None:
                raise _ArmError(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )
            if version != API_VERSION:
                raise _ArmError(
                    400,
                    "InvalidApiVersionParameter",
                    f"The api-version '{version}' is invalid. The supported versions are "
                    f"'{API_VERSION}'.",
                )
            if match is None:
                raise _ArmError(
                    404, "NotFound", f"The emulator serves no resource at '{request.path}'."
                )
            if (route, request.method) not in WHAT:
                raise _ArmError(
                    405,
                    "MethodNotAllowed",
                    f"The emulator does not serve '{request.method}' on '{request.path}'.",
                )
            if write:
                headers["x-ms-ratelimit-remaining-subscription-writes"] = str(self._take_write())
            else:
                headers["x-ms-ratelimit-remaining-subscription-reads"] = "11999"
            status, answer, extra = await self._act(request, route, match, body)
            headers.update(extra)
            return _json(answer, status, headers) if answer is not None else _empty(status, headers)
        except _ArmError as error:
            headers.update(error.headers)
            if error.status in (401, 403):
                headers["x-ms-failure-cause"] = "gateway"
            body_ = {"error": {"code": error.code, "message": error.message}}
            return _json(body_, error.status, headers)

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            problem = "The 'Authorization' header is missing."
        elif token not in self._tokens:
            problem = "The access token is invalid."
        elif self._tokens[token] < time.monotonic():
            problem = "The access token has expired."
        else:
            return
        challenge = (
            f'Bearer authorization_uri="{self.url}/{self.tenant_id}", error="invalid_token", '
            f'error_description="{problem}"'
        )
        raise _ArmError(
            401, "AuthenticationFailed", f"Authentication failed. {problem}",
            {"WWW-Authenticate": challenge},
        )  # fmt: skip

    def _take_write(self) -> int:
        """Take a token from the write bucket; refuse like ARM's subscription write throttle."""
        if self.writes_per_second is None:
            return ARM_WRITES
        now = time.monotonic()
        refill = (now - self._bucket_at) * self.writes_per_second
        self._bucket = min(float(self.write_burst), self._bucket + refill)
        self._bucket_at = now
        if self._bucket < 1:
            wait = max(1, math.ceil((1 - self._bucket) / self.writes_per_second))
            raise _ArmError(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation "
                f"type - Write. Please retry after {wait} second(s).",
                {"Retry-After": str(wait), "x-ms-ratelimit-remaining-subscription-writes": "0"},
            )
        self._bucket -= 1
        return int(self._bucket)

    # --------------------------------------------------------------------------- token endpoint

    def _token(self, request: web.Request, body: bytes) -> web.Response:
        """Microsoft Entra ID's v2.0 token endpoint, for one service principal and its secret."""
        tenant = TOKEN_PATH.fullmatch(request.path)
        assert tenant is not None
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return _entra(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type: only 'client_credentials' is served.",
            )
        if tenant["tenant"] != self.tenant_id:
            return _entra(400, "invalid_request", 90002, f"Tenant '{tenant['tenant']}' not found.")
        if form.get("client_id") != self.client_id:
            return _entra(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{self.tenant_id}'.",
            )  # fmt: skip
        if not secrets.compare_digest(form.get("client_secret", ""), self.client_secret):
            return _entra(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app "
                f"'{self.client_id}'.",
            )  # fmt: skip
        if not form.get("scope", "").endswith("/.default"):
            return _entra(
                400, "invalid_scope", 1002012,
                f"The provided value for scope {form.get('scope')} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed.",
            )  # fmt: skip
        token, _ = access_token(
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            audience=form["scope"].removesuffix("/.default"),
            lifetime=3599,
            kid="aci-emulator",
        )
        self._tokens[token] = time.monotonic() + 3599
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }
        )

    # ------------------------------------------------------------------------------ resources

    async def _act(
        self, request: web.Request, route: str, match: re.Match[str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """Serve an authenticated ARM request: (status, JSON answer or None, extra headers)."""
        if route == "operation":
            return 200, self._operation(match["sub"], match["loc"], match["op"]), {}
        if route == "list":
            return 200, await self._list(request, match), {}
        group_id = (
            f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/{TYPE}/"
            f"{match['name']}"
        )
        group = self._live.get(group_id.lower())
        if route == "logs":
            return 200, await self._logs(group, match, request.query.get("tail")), {}
        if request.method == "PUT":
            return self._put(group_id, match, body, group)
        if request.method == "DELETE":
            if group is None:
                return 204, None, {}
            self._forget(group)
            return 200, _public(group.resource), {}
        if group is None:
            raise _not_found(match["rg"], match["name"])
        await self._refresh(group)
        return 200, _public(group.resource), {}

    def _put(
        self, group_id: str, match: re.Match[str], body: bytes, group: _Group | None
    ) -> tuple[int, Any, dict[str, str]]:
        name = match["name"]
        if group is not None:
            if group.state in ("Pending", "Creating"):
                raise _ArmError(
                    409,
                    "ContainerGroupTransitioning",
                    f"The container group '{name}' is still transitioning, please retry later.",
                )
            # ACI compares and redeploys on a changed definition; the emulator keeps the first.
            return 200, _public(group.resource), {}
        try:
            spec = json.loads(body or b"null")
        except ValueError as error:
            raise _ArmError(
                400, "InvalidRequestContent", f"The request content was invalid: {error}"
            ) from None
        if not isinstance(spec, dict):
            raise _ArmError(400, "InvalidRequestContent", "The request content was invalid.")
        _validate(name, spec)
        region = _region(spec["location"])
        usage = sum(
            g.subscription.lower() == match["sub"].lower()
            and _region(g.resource["location"]) == region
            for g in self._live.values()
        )
        if usage >= self.max_groups:
            raise _ArmError(
                400,
                "ContainerGroupQuotaReached",
                f"Resource type '{TYPE}' container group quota 'ContainerGroups' exceeded in "
                f"region '{region}'. Limit: '{self.max_groups}', Usage: '{usage}' Requested: '1'.",
            )
        resource = _resource(group_id, name, spec)
        operation = str(uuid.uuid4())
        group = _Group(group_id, match["sub"], name, resource, operation, _now())
        self._live[group_id.lower()] = group
        self._operations[operation] = group
        self.groups[group_id] = resource
        group.task = asyncio.create_task(self._deploy(group))
        op_url = (
            f"{self.url}/subscriptions/{match['sub']}/providers/{PROVIDER}/locations/{region}/"
            f"operations/{operation}?api-version={API_VERSION}"
        )
        headers = {"Azure-AsyncOperation": op_url}
        if self.retry_after:
            headers["Retry-After"] = str(self.retry_after)
        return 201, _public(resource), headers

    async def _list(self, request: web.Request, match: re.Match[str]) -> dict[str, Any]:
        prefix = f"/subscriptions/{match['sub']}/"
        if match["rg"] is not None:
            prefix += f"resourcegroups/{match['rg']}/"
        found = [g for key, g in self._live.items() if key.startswith(prefix.lower())]
        try:
            start = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            raise _ArmError(400, "InvalidSkipToken", "The $skiptoken is invalid.") from None
        page = found[start : start + self.page_size]
        await self._refresh_many(page)
        answer: dict[str, Any] = {"value": [_public(g.resource) for g in page]}
        if start + self.page_size < len(found):
            query = urllib.parse.urlencode(
                {"api-version": API_VERSION, "$skiptoken": str(start + self.page_size)}
            )
            answer["nextLink"] = f"{self.url}{request.path}?{query}"
        return answer

    def _operation(self, sub: str, region: str, op: str) -> dict[str, Any]:
        group = self._operations.get(op)
        if group is None or group.subscription.lower() != sub.lower():
            raise _ArmError(404, "OperationNotFound", f"The operation '{op}' could not be found.")
        answer: dict[str, Any] = {
            "id": f"/subscriptions/{sub}/providers/{PROVIDER}/locations/{region}/operations/{op}",
            "name": op,
            "status": "InProgress",
            "startTime": group.op_started,
        }
        if group.state == "Succeeded":
            answer["status"] = "Succeeded"
        elif group.state == "Failed":
            answer["status"] = "Failed"
            answer["error"] = {
                "code": "ContainerGroupDeploymentFailed",
                "message": f"The container group '{group.name}' failed to deploy: "
                + "; ".join(_failures(group)),
            }
        elif group.deleted:
            answer["status"] = "Canceled"
            answer["error"] = {
                "code": "ContainerGroupDeleted",
                "message": f"The container group '{group.name}' was deleted while deploying.",
            }
        if answer["status"] != "InProgress":
            answer["endTime"] = group.op_ended or _now()
        return answer

    async def _logs(
        self, group: _Group | None, match: re.Match[str], tail: str | None
    ) -> dict[str, Any]:
        if group is None:
            raise _not_found(match["rg"], match["name"])
        names = [c["name"] for c in group.containers]
        if match["c"] not in names:
            raise _ArmError(
                404, "ContainerNotFound",
                f"The container '{match['c']}' could not be found in container group "
                f"'{group.name}'.",
            )  # fmt: skip
        index = names.index(match["c"])
        if index >= len(group.container_ids):
            return {"content": ""}
        params = {"tail": tail} if tail else {}
        return {"content": await self._engine.logs(group.container_ids[index], **params)}

    def _named(self, name: str) -> _Group | None:
        return next((g for g in self._live.values() if g.name == name), None)

    def _forget(self, group: _Group) -> None:
        """Delete the group now; its containers are removed in the background."""
        self._live.pop(group.id.lower(), None)
        self.groups.pop(group.id, None)
        group.deleted = True
        if group.op_ended is None:
            group.op_ended = _now()
        if group.task is not None:
            group.task.cancel()  # now: a deployment still in its latency sleep never runs
        self._engine.spawn(self._teardown(group), removal=True)

    # ---------------------------------------------------------------------------- deployments

    async def _deploy(self, group: _Group) -> None:
        """Pending -> Creating -> (image pulled) containers running -> Succeeded."""
        props = group.properties
        try:
            await asyncio.sleep(self.create_latency)
            props["provisioningState"] = "Creating"
            props["instanceView"] = {"events": [], "state": "Pending"}
            for container in group.containers:
                container["properties"]["instanceView"] = {
                    "restartCount": 0,
                    "currentState": {"state": "Waiting", "detailStatus": "ContainerCreating"},
                    "events": [],
                }
            # ACI keeps retrying until the group is deleted: a poll, as the engine has no event.
            while not await self._pull(group):  # noqa: ASYNC110
                await asyncio.sleep(PULL_RETRY)
            group.starting = self._engine.atomic(self._run(group))
            try:
                await asyncio.shield(group.starting)
            except aiodocker.DockerError as error:
                self._failed(group, error.message)
                return
            await self._listening(group)
            if "ipAddress" in props:
                group.ip = self._next_ip(private=props["ipAddress"]["type"] == "Private")
                props["ipAddress"]["ip"] = group.ip
            props["provisioningState"] = "Succeeded"
            props["instanceView"]["state"] = "Running"
            group.op_ended = _now()
            await self._refresh(group)  # it may have exited already
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the engine misbehaved: the deployment fails, not the test
            self._failed(group, f"{type(error).__name__}: {error}")

    async def _pull(self, group: _Group) -> bool:
        """Look each image up on the engine (nothing is pulled); report what ACI would."""
        ready = True
        for container in group.containers:
            image = container["properties"]["image"]
            view = container["properties"]["instanceView"]
            _event(view, "Pulling", f'pulling image "{image}"')
            if await self._engine.image(image) is None:
                ref = image if "/" in image else f"docker.io/library/{image}"
                _event(
                    view, "Failed",
                    f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed '
                    f'to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
                    f"{ref}: not found",
                    "Warning",
                )  # fmt: skip
                _event(view, "BackOff", f'Back-off pulling image "{image}"', "Warning")
                retried = view["currentState"].get("detailStatus") != "ContainerCreating"
                detail = "ImagePullBackOff" if retried else "ErrImagePull"
                view["currentState"] = {"state": "Waiting", "detailStatus": detail}
                ready = False
                continue
            _event(view, "Pulled", f'Successfully pulled image "{image}"')
        return ready

    async def _run(self, group: _Group) -> None:
        """Create and start the group's containers; the first one owns the network namespace
        (so the containers share localhost, as in ACI) and publishes the exposed ports."""
        props = group.properties
        ports = {int(p["port"]) for p in (props.get("ipAddress") or {}).get("ports") or []}
        if group.main_port is not None:
            ports.add(group.main_port)
        for index, container in enumerate(group.containers):
            spec = container["properties"]
            env = []
            for variable in spec.get("environmentVariables") or []:
                value = variable.get("value")
                if value is None:
                    value = variable.get("secureValue", "")
                env.append(f"{variable['name']}={value}")
            requests = spec["resources"]["requests"]
            memory = int(float(requests["memoryInGB"]) * (1 << 30))
            host_config: dict[str, Any] = {"Memory": memory, "MemorySwap": memory}
            config: dict[str, Any] = {
                "Image": spec["image"],
                "Env": env,
                "Labels": {f"{LABEL}.group": group.id},
                "HostConfig": host_config,
            }
            if index > 0:
                host_config["NetworkMode"] = f"container:{group.container_ids[0]}"
            if spec.get("command"):
                # ACI's command replaces the image's ENTRYPOINT (and so drops its CMD too).
                config["Entrypoint"] = list(spec["command"])
            # Group names are unique per resource group only: a suffix keeps engine names apart.
            name = (
                f"aci-{self._engine.instance[:8]}-{group.name}-{container['name']}-"
                f"{secrets.token_hex(3)}"
            )
            publish = ports if index == 0 else None
            created = await self._engine.create(config, name=name, publish=publish)
            group.container_ids.append(created.id)
            await created.start()
            view = spec["instanceView"]
            view["currentState"] = {"state": "Running", "startTime": _now(), "detailStatus": ""}
            _event(view, "Started", "Started container")
            if index == 0:
                # A container that already exited has no port bindings any more.
                group.published.update(await self._engine.published(created))

    async def _listening(self, group: _Group) -> None:
        """Wait (up to ``listen_timeout``) until the first port takes connections, or the
        first container exits."""
        port = group.published.get(group.main_port or -1)
        deadline = time.monotonic() + self.listen_timeout
        while port is not None and time.monotonic() < deadline:
            if not (await self._engine.show(group.container_ids[0]))["State"]["Running"]:
                return
            if await _answers(port):
                return
            await asyncio.sleep(0.1)

    def _failed(self, group: _Group, message: str) -> None:
        """The engine would not run the group: its provisioning failed."""
        props = group.properties
        props["provisioningState"] = "Failed"
        props.setdefault("instanceView", {"events": []})["state"] = "Failed"
        for container in group.containers:
            view = container["properties"].setdefault(
                "instanceView", {"restartCount": 0, "events": []}
            )
            if view.get("currentState", {}).get("state") != "Running":
                _event(view, "Failed", f"Error: {message}", "Warning")
                view["currentState"] = {
                    "state": "Terminated", "startTime": _now(), "exitCode": 128,
                    "finishTime": _now(), "detailStatus": "Error",
                }  # fmt: skip
        group.op_ended = _now()

    async def _refresh_many(self, groups: list[_Group]) -> None:
        """:meth:`_refresh` for many groups, asking the engine once which containers stopped."""
        if self._engine.closed or not any(g.container_ids for g in groups):
            return
        ids = set(await self._engine.ours(status=("exited", "dead")))
        await asyncio.gather(*(self._refresh(g) for g in groups if ids & set(g.container_ids)))

    async def _refresh(self, group: _Group) -> None:
        """Bring the states of running containers up to date with the engine."""
        if self._engine.closed or "instanceView" not in group.properties:
            return
        for index, container_id in enumerate(group.container_ids):
            view = group.containers[index]["properties"]["instanceView"]
            current = view["currentState"]
            if current["state"] != "Running":
                continue
            state = await self._engine.state(container_id)  # GONE once removed
            if state["Running"]:
                continue
            code = group.exit_codes.get(index, state["ExitCode"])
            view["currentState"] = {
                "state": "Terminated",
                "startTime": current.get("startTime") or _now(),
                "exitCode": code,
                "finishTime": _docker_time(state.get("FinishedAt")) or _now(),
                "detailStatus": "Completed" if code == 0 else "Error",
            }
        states = [c["properties"]["instanceView"]["currentState"] for c in group.containers]
        if group.state == "Succeeded" and all(s["state"] == "Terminated" for s in states):
            # What ACI reports once restart policy Never has let every container end.
            failed = any(s["exitCode"] for s in states)
            group.properties["instanceView"]["state"] = "Failed" if failed else "Succeeded"

    async def _teardown(self, group: _Group) -> None:
        """Stop a deployment and remove its containers."""
        if group.task is not None:
            group.task.cancel()
            await asyncio.wait([group.task])
        if group.starting is not None:
            # Containers being created when the delete came: wait for them, then remove them.
            await asyncio.wait([group.starting])
            if not group.starting.cancelled():
                group.starting.exception()  # retrieved: reported through the group's state
        for container_id in group.container_ids:
            await self._engine.remove(container_id)

    def _next_ip(self, *, private: bool) -> str:
        """An address no live group has: documentation ranges, or 10.x for a VNet group."""
        taken = {g.ip for g in self._live.values()}
        for _ in range(1 << 16):
            turn, self._ip_turn = self._ip_turn, self._ip_turn + 1
            if private:
                ip = f"10.0.{turn // 250 % 256}.{4 + turn % 250}"  # Azure keeps .0-.3
            else:
                net = PUBLIC_NETS[turn // 254 % len(PUBLIC_NETS)]
                ip = f"{net}.{1 + turn % 254}"
            if ip not in taken:
                return ip
        raise RuntimeError("no free address")


@contextlib.asynccontextmanager
async def arm_client(
    emulator: AciEmulator, directory: Path
) -> AsyncIterator[ContainerInstanceManagementClient]:
    """The Azure SDK's own client (``azure-identity``, ``azure-mgmt-containerinstance``: the
    ``azure`` extra) on ``emulator``, signed in as its service principal; the CA's PEM is
    written to ``directory``."""
    from azure.identity.aio import ClientSecretCredential
    from azure.mgmt.containerinstance.aio import ContainerInstanceManagementClient

    ca = str(emulator.write_ca(directory / "ca.pem"))
    async with (
        ClientSecretCredential(
            emulator.tenant_id,
            emulator.client_id,
            emulator.client_secret,
            authority=emulator.url,
            connection_verify=ca,
        ) as credential,
        ContainerInstanceManagementClient(
            credential,
            emulator.subscription_id,
            base_url=emulator.url,
            credential_scopes=[f"{emulator.url}/.default"],
            connection_verify=ca,
            retry_total=0,
        ) as client,
    ):
        yield client


# --------------------------------------------------------------------------------- helpers


def _route(path: str) -> tuple[str, re.Match[str] | None]:
    for name, pattern in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return name, match
    return "", None


def _parse_body(body: bytes, what: str) -> Any:
    if not body:
        return None
    if what == "POST token":
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
        if "client_secret" in form:
            form["client_secret"] = "***"
        return form
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def _empty(status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, headers=headers)


def _entra(status: int, error: str, code: int, description: str) -> web.Response:
    """An error as Microsoft Entra ID's token endpoint words it."""
    now = datetime.datetime.now(datetime.UTC)
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return _json(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status,
    )


def _not_found(rg: str, name: str) -> _ArmError:
    return _ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{TYPE}/{name}' under resource group '{rg}' was not found. For more "
        "details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def _now() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _docker_time(stamp: str | None) -> str | None:
    """The engine's nanosecond RFC 3339 time as ARM writes times (milliseconds, Z)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", stamp or "")
    if match is None or match[1].startswith("0001"):
        return None
    return f"{match[1]}{(match[2] or '.000')[:4].ljust(4, '0')}Z"


def _region(location: str) -> str:
    """ARM's normalized region name: "East US" -> "eastus"."""
    return location.replace(" ", "").lower()


def _event(view: dict[str, Any], name: str, message: str, kind: str = "Normal") -> None:
    """Add an event to an instance view, or count it again as Kubernetes-style events do."""
    now = _now()
    for event in view["events"]:
        if event["name"] == name and event["message"] == message:
            event["count"] += 1
            event["lastTimestamp"] = now
            return
    view["events"].append(
        {
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "name": name,
            "message": message,
            "type": kind,
        }
    )


def _failures(group: _Group) -> Iterator[str]:
    for container in group.containers:
        for event in container["properties"].get("instanceView", {}).get("events", []):
            if event["type"] == "Warning":
                yield f"{container['name']}: {event['message']}"


def _public(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as ARM answers it: no secret ever leaves.

    ACI answers an environment variable set with ``secureValue`` by its ``name`` alone, and
    likewise leaves out registry passwords, secret volumes' contents and protected settings.
    """
    public = copy.deepcopy(resource)
    props = public["properties"]
    for container in props.get("containers", []) + props.get("initContainers", []):
        for variable in container.get("properties", {}).get("environmentVariables") or []:
            variable.pop("secureValue", None)
    for credential in props.get("imageRegistryCredentials") or []:
        credential.pop("password", None)
    for volume in props.get("volumes") or []:
        volume.pop("secret", None)
    for extension in props.get("extensions") or []:
        extension.get("properties", {}).pop("protectedSettings", None)
    return public


def _resource(group_id: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The stored resource for a validated PUT body (secure values kept)."""
    props = copy.deepcopy(spec["properties"])
    for key in ("provisioningState", "instanceView"):
        props.pop(key, None)
    props.setdefault("sku", "Standard")
    props.setdefault("restartPolicy", "Always")
    props.setdefault("initContainers", [])
    for container in props["containers"]:
        cprops = container["properties"]
        cprops.pop("instanceView", None)
        cprops.setdefault("command", [])
        cprops.setdefault("environmentVariables", [])
        cprops.setdefault("ports", [])
        for port in cprops["ports"]:
            port.setdefault("protocol", "TCP")
    ip = props.get("ipAddress")
    if ip is not None:
        ip.pop("ip", None)
        for port in ip.get("ports") or []:
            port.setdefault("protocol", "TCP")
        if ip.get("dnsNameLabel"):
            ip["fqdn"] = f"{ip['dnsNameLabel']}.{_region(spec['location'])}.azurecontainer.io"
    resource: dict[str, Any] = {
        "properties": props,
        "id": group_id,
        "name": name,
        "type": TYPE,
        "location": spec["location"],
        "tags": dict(spec.get("tags") or {}),
    }
    for key in ("identity", "zones"):
        if key in spec:
            resource[key] = copy.deepcopy(spec[key])
    resource["properties"]["provisioningState"] = "Pending"
    return resource


def _bad(code: str, message: str) -> _ArmError:
    return _ArmError(400, code, message)


def _validate(name: str, spec: dict[str, Any]) -> None:
    """Refuse what ARM and ACI refuse in a container group PUT."""
    if len(name) > 63 or not NAME.fullmatch(name):
        raise _bad(
            "InvalidContainerGroupName",
            f"The container group name '{name}' is invalid. The container group name must "
            "contain no more than 63 characters and must match the regex "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?' (e.g. 'my-name'), without consecutive hyphens.",
        )
    if not spec.get("location"):
        raise _bad("LocationRequired", "The location property is required for this definition.")
    _validate_tags(spec.get("tags") or {})
    props = spec.get("properties")
    if not isinstance(props, dict):
        raise _bad("InvalidRequestContent", "The request content must have 'properties'.")
    if props.get("osType") not in ("Linux", "Windows"):
        raise _bad(
            "InvalidOsType",
            f"The 'osType' '{props.get('osType')}' is invalid. The supported values are "
            "'Linux', 'Windows'.",
        )
    if props.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        raise _bad(
            "InvalidRestartPolicy",
            f"The restart policy '{props['restartPolicy']}' is invalid. The supported values "
            "are 'Always', 'OnFailure', 'Never'.",
        )
    containers = props.get("containers")
    if not containers:
        raise _bad(
            "NoContainersInContainerGroup",
            f"The container group '{name}' must have at least one container.",
        )
    exposed: set[int] = set()
    seen: set[str] = set()
    for container in containers:
        cname = container.get("name") or ""
        if len(cname) > 63 or not NAME.fullmatch(cname):
            raise _bad(
                "InvalidContainerName",
                f"The container name '{cname}' in container group '{name}' is invalid. The "
                "container name must contain no more than 63 characters and must match the "
                "regex '[a-z0-9]([-a-z0-9]*[a-z0-9])?' (e.g. 'my-name').",
            )
        if cname in seen:
            raise _bad(
                "DuplicateContainerName",
                f"The container name '{cname}' is used more than once in container group '{name}'.",
            )
        seen.add(cname)
        cprops = container.get("properties") or {}
        if not cprops.get("image"):
            raise _bad(
                "InvalidContainerImage",
                f"The image of container '{cname}' in container group '{name}' is empty.",
            )
        _validate_resources(name, cname, cprops.get("resources"))
        exposed.update(int(p.get("port", 0)) for p in cprops.get("ports") or [])
    ip = props.get("ipAddress")
    if ip is not None:
        ports = [int(p.get("port", 0)) for p in ip.get("ports") or []]
        if not ports or not set(ports) <= exposed:
            raise _bad(
                "InvalidIpAddressPorts",
                f"The ports in the 'ipAddress' of container group '{name}' must be one of the "
                f"ports of its containers: {sorted(exposed)}; got {sorted(ports)}.",
            )
        kind = ip.get("type")
        if kind not in ("Public", "Private"):
            raise _bad(
                "InvalidIpAddressType",
                f"The IP address type '{kind}' is invalid. The supported values are 'Public', "
                "'Private'.",
            )
        if (kind == "Private") != bool(props.get("subnetIds")):
            raise _bad(
                "InvalidIpAddressType",
                f"The IP address type of container group '{name}' must be 'Private' exactly "
                "when it is deployed into a virtual network subnet ('subnetIds').",
            )


def _validate_tags(tags: dict[str, Any]) -> None:
    if len(tags) > 50:
        raise _bad(
            "InvalidTagCount",
            f"The number of tags ({len(tags)}) exceeds the maximum of 50 per resource.",
        )
    for key, value in tags.items():
        if len(key) > 512:
            raise _bad(
                "InvalidTagNameLength",
                f"The tag name '{key[:40]}...' exceeds the maximum length of 512 characters.",
            )
        if TAG_NAME_FORBIDDEN & set(key) or any(ord(c) < 32 for c in key):
            raise _bad(
                "InvalidTagNameCharacters",
                f"The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/' or control "
                "characters.",
            )
        if not isinstance(value, str) or len(value) > 256:
            raise _bad(
                "InvalidTagValueLength",
                f"The value of tag '{key}' must be a string of at most 256 characters.",
            )


def _validate_resources(group: str, container: str, resources: Any) -> None:
    requests = (resources or {}).get("requests") or {}
    try:
        cpu, memory = float(requests["cpu"]), float(requests["memoryInGB"])
    except (KeyError, TypeError, ValueError):
        raise _bad(
            "InvalidContainerResourceRequests",
            f"The resource requests of container '{container}' in container group '{group}' "
            "must set 'cpu' and 'memoryInGB'.",
        ) from None
    if not (0 < cpu <= MAX_CPU and 0 < memory <= MAX_MEMORY_GB):
        raise _bad(
            "ResourceRequestsExceedMaxAllowed",
            f"The resource requests of container '{container}' in container group '{group}' "
            f"(cpu {cpu}, memoryInGB {memory}) are out of range: each must be above 0, cpu "
            f"at most {MAX_CPU:g} and memoryInGB at most {MAX_MEMORY_GB:g}.",
        )


_PROBE_TLS = ssl.create_default_context()
_PROBE_TLS.check_hostname = False
_PROBE_TLS.verify_mode = ssl.CERT_NONE


async def _answers(port: int) -> bool:
    """Whether something behind a published port takes connections, HTTP or TLS.

    Docker's userland proxy accepts every connection on a published port and closes it at once
    when nothing listens inside, so an accepted connection proves nothing: a peer must answer a
    plain HTTP request, complete (or answer) a TLS handshake, or at least hold the connection.
    """
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        if await asyncio.wait_for(reader.read(1), 1.0):
            return True  # any answer at all
    except TimeoutError:
        return True  # held open: something is there (a TLS server waits for its handshake)
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    # Closed without a word: nothing there, or a TLS server refusing plain text.
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=_PROBE_TLS, server_hostname="localhost"),
            1.0,
        )
    except TimeoutError:
        return True
    except ssl.SSLError as error:
        return "EOF" not in str(error)  # it spoke, but not TLS as we like it: still a server
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
