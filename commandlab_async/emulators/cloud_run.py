"""An emulator of the Cloud Run Admin API v2 whose services really run on the local Docker Engine.

The real SDK (``google.cloud.run_v2.ServicesAsyncClient``) talks to :class:`CloudRunEmulator`
unmodified over a real gRPC channel.  Each service's container runs on the local engine, behind
its own HTTPS "front" (a streaming reverse proxy with Google front end authentication), so a
client does real HTTPS to the service ``uri``.  A fake Google OAuth2 token endpoint lets
google-auth service-account credentials mint ID tokens offline.

Everything listens on 127.0.0.1 only.  Faults are injected with
:class:`~commandlab_async.emulators.faults.Rule` matched against the short gRPC method name
(``CreateService``, ``GetOperation``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiodocker
import aiohttp
import grpc
from aiohttp import web
from google.auth import crypt, jwt
from google.auth import exceptions as auth_exceptions
from google.cloud import run_v2
from google.longrunning import operations_pb2  # type: ignore[import-untyped]  # no py.typed
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no py.typed

from ._containers import LocalEngine
from ._google import (
    GOOGLE_ISSUER,
    JWT_BEARER,
    TrustedKeys,
    rsa_key,
    verify_assertion,
    write_service_account_key,
)
from ._https import Emulator, Listener, LocalCA
from .faults import Recording, Rule, faulted

LABEL = "commandlab.cloud-run-emulator"
ERROR_DOMAIN = "run.googleapis.com"

# Raw protobuf classes behind the SDK's proto-plus types.
Service = run_v2.Service.pb()
Condition = run_v2.Condition.pb()
CreateServiceRequest = run_v2.CreateServiceRequest.pb()
GetServiceRequest = run_v2.GetServiceRequest.pb()
ListServicesRequest = run_v2.ListServicesRequest.pb()
ListServicesResponse = run_v2.ListServicesResponse.pb()
DeleteServiceRequest = run_v2.DeleteServiceRequest.pb()
UpdateServiceRequest = run_v2.UpdateServiceRequest.pb()

C = grpc.StatusCode
# Google's HTTP <-> gRPC mapping (google/rpc/code.proto), for Rule.status.
HTTP_TO_GRPC = {
    400: C.INVALID_ARGUMENT, 401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED, 404: C.NOT_FOUND,
    409: C.ALREADY_EXISTS, 412: C.FAILED_PRECONDITION, 429: C.RESOURCE_EXHAUSTED,
    499: C.CANCELLED, 500: C.INTERNAL, 501: C.UNIMPLEMENTED, 503: C.UNAVAILABLE,
    504: C.DEADLINE_EXCEEDED,
}  # fmt: skip

SERVICE_ID = re.compile(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
PARENT = re.compile(r"projects/([^/]+)/locations/([^/]+)")
SERVICE_NAME = re.compile(r"(projects/([^/]+)/locations/([^/]+))/services/([^/]+)")
MEMORY = re.compile(r"([0-9]+)(Ki|Mi|Gi|K|M|G)?")
MEMORY_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20}
MEMORY_UNITS["Gi"] = 1 << 30

# Hop-by-hop headers (RFC 9110 7.6.1), plus `host` (the upstream's own) and `expect`: forwarding
# `Expect: 100-continue` would make the upstream client wait for an interim reply.
HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "expect",
}  # fmt: skip
FORBIDDEN_HTML = (
    '<html><head>\n<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
    "<title>403 Forbidden</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n"
    "<h1>Error: Forbidden. Your client does not have permission to get URL "
    "<code>{path}</code> from this server.</h1>\n</body></html>\n"
)


@dataclass
class Call:
    """One gRPC call as the emulator received it."""

    method: str
    request: Any
    metadata: dict[str, Any]
    at: float

    @property
    def what(self) -> str:
        """What rules match against: the short method name."""
        return self.method


@dataclass
class FrontRequest:
    """One HTTPS request to a service's front."""

    service: str
    method: str
    path: str
    authorized: bool
    status: int = 0


class _Abort(Exception):
    """Ends an RPC with a (rich) error status."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str | None = None, quota: bool = False
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason
        self.quota = quota  # refused by the emulator's own quotas (recorded in `refused`)


@dataclass
class _Operation:
    name: str
    service: Any  # the Service the operation is about; packed as its metadata
    final: Any = None  # the done Operation, once the work finished
    polls_left: int = 0


@dataclass
class _Deployment:
    service_id: str
    service: Any
    op: _Operation
    task: asyncio.Task[None] | None = None
    # Creating and starting the container is never cancelled half-way (the engine might act
    # on a request whose client went away); a delete waits for it and removes the result.
    starting: asyncio.Future[None] | None = None
    container_id: str | None = None
    upstream_port: int | None = None
    front: Listener | None = None


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class CloudRunEmulator(Emulator, Recording[Call]):
    """Cloud Run Admin API v2 (Services + long-running Operations) over gRPC on 127.0.0.1.

    ``create_latency`` delays every deployment; ``polls_before_done`` keeps a finished operation
    looking unfinished for that many ``GetOperation`` calls; ``listen_timeout`` bounds how long a
    container may take to answer HTTP; ``max_services`` caps services per parent;
    ``writes_per_minute`` rate-limits Create/Delete (a token bucket holding ``write_burst``,
    by default a minute's worth); ``page_size`` caps ListServices pages.
    """

    def __init__(
        self,
        *,
        create_latency: float = 0.0,
        polls_before_done: int = 0,
        listen_timeout: float = 30.0,
        max_services: int = 1000,
        writes_per_minute: float | None = None,
        write_burst: int | None = None,
        page_size: int = 100,
    ) -> None:
        self.create_latency = create_latency
        self.polls_before_done = polls_before_done
        self.listen_timeout = listen_timeout
        self.max_services = max_services
        self.writes_per_minute = writes_per_minute
        self.page_size = page_size
        self.address = ""
        self.token_uri = ""
        self.ca = LocalCA()
        self.services: dict[str, Any] = {}
        self.all_calls: list[Call] = []
        self.requests = self.all_calls  # the same list, by the name faults' Recording uses
        self.refused: list[Call] = []  # calls refused by the write rate or the service quota
        self.front_requests: list[FrontRequest] = []
        self.id_tokens_issued = 0
        self.rules: list[Rule] = []
        self._engine = LocalEngine(LABEL)
        self._operations: dict[str, _Operation] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._deploy_failures: deque[tuple[int, str]] = deque()
        self.write_burst = float(write_burst or writes_per_minute or 0)
        self._bucket = self.write_burst
        self._bucket_at = time.monotonic()
        self._google_kid = secrets.token_hex(20)
        self._google_private, self._google_public = rsa_key()
        self._google_signer = crypt.RSASigner.from_string(self._google_private, self._google_kid)
        self._sa_keys: TrustedKeys = {}
        self._server: grpc.aio.Server | None = None
        self._token_listener = Listener(self._token, shutdown_timeout=60.0)
        self._http: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the gRPC server and the token endpoint (both on 127.0.0.1)."""
        self._ssl = self.ca.server_context()
        self._engine.open()
        # No cookie jar (a proxy keeps no state between clients), bytes passed through exactly
        # as the container sent them, no cap on streams in flight (long-lived exec replies), and
        # a fresh upstream connection per request: reusing one the daemon has just closed would
        # turn into a spurious 503.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        self.token_uri = f"http://127.0.0.1:{await self._token_listener.start()}/token"
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(self._handlers())
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def aclose(self) -> None:
        """Stop everything and force-remove every container this emulator started."""
        if self._server is not None:
            await self._server.stop(None)
        for name in list(self._deployments):
            self._engine.spawn(self._teardown(self._deployments.pop(name)), removal=True)
        await self._engine.close()
        await self._token_listener.close()
        if self._http is not None:
            await self._http.close()

    # ----------------------------------------------------------------------- test interface

    def write_service_account(
        self, path: Path, email: str = "sandboxes@p.iam.gserviceaccount.com"
    ) -> Path:
        """Write a service-account JSON key whose key the token endpoint trusts."""
        return write_service_account_key(path, email, self.token_uri, self._sa_keys)

    def live(self) -> list[str]:
        """Ids of the services that exist now."""
        return [name.rsplit("/", 1)[1] for name in self.services]

    async def containers(self) -> list[str]:
        """Ids of the engine's containers started by this emulator that still exist.

        Removals already under way (deleted services) are waited for first, so a test that
        deleted everything sees ``[]`` rather than a container a moment from gone.
        """
        return await self._engine.containers()

    def fail_deploys(self, code: int, message: str, times: int = 1) -> None:
        """Make the next ``times`` deployments fail with ``code``/``message``, no container."""
        self._deploy_failures.extend([(code, message)] * times)

    # ------------------------------------------------------------------------ gRPC plumbing

    def _handlers(self) -> list[Any]:
        def unary(method: str, impl: Callable[[Any], Awaitable[Any]], req: Any, resp: Any) -> Any:
            async def behaviour(request: Any, context: Any) -> Any:
                return await self._dispatch(method, impl, request, context)

            return grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        async def unimplemented(request: Any) -> Any:
            raise _Abort(C.UNIMPLEMENTED, "Not implemented by the emulator.")

        op, ops = operations_pb2.Operation, operations_pb2
        services = {
            "CreateService": unary("CreateService", self._create, CreateServiceRequest, op),
            "GetService": unary("GetService", self._get, GetServiceRequest, Service),
            "ListServices": unary(
                "ListServices", self._list, ListServicesRequest, ListServicesResponse
            ),
            "DeleteService": unary("DeleteService", self._delete, DeleteServiceRequest, op),
            "UpdateService": unary("UpdateService", unimplemented, UpdateServiceRequest, op),
        }
        operations = {
            "GetOperation": unary("GetOperation", self._get_op, ops.GetOperationRequest, op),
            "ListOperations": unary("ListOperations", unimplemented, ops.ListOperationsRequest, op),
            "DeleteOperation": unary(
                "DeleteOperation", unimplemented, ops.DeleteOperationRequest, op
            ),
            "WaitOperation": unary("WaitOperation", unimplemented, ops.WaitOperationRequest, op),
        }
        return [
            grpc.method_handlers_generic_handler("google.cloud.run.v2.Services", services),
            grpc.method_handlers_generic_handler("google.longrunning.Operations", operations),
        ]

    async def _dispatch(
        self, method: str, impl: Callable[[Any], Awaitable[Any]], request: Any, context: Any
    ) -> Any:
        call = Call(method, request, dict(context.invocation_metadata() or ()), time.monotonic())
        self.all_calls.append(call)
        rule = self._rule_for(method)
        try:
            return await faulted(rule, lambda: impl(request), _raise_injected)
        except _Abort as error:
            if error.quota:
                self.refused.append(call)
            await context.abort(error.code, error.message, trailing_metadata=_details(error))

    # ------------------------------------------------------------------------------ methods

    async def _create(self, request: Any) -> Any:
        self._take_write()
        parent = PARENT.fullmatch(request.parent)
        if parent is None:
            raise _Abort(C.INVALID_ARGUMENT, f"Invalid parent '{request.parent}'.")
        sid = request.service_id
        if not SERVICE_ID.fullmatch(sid):
            raise _Abort(
                C.INVALID_ARGUMENT,
                f"service_id '{sid}' is invalid: it must start with a letter, contain only "
                "lowercase letters, digits and hyphens, not end with a hyphen, and be less "
                "than 50 characters.",
            )
        _validate(request.service)
        name = f"{request.parent}/services/{sid}"
        if name in self.services:
            raise _Abort(C.ALREADY_EXISTS, f"Resource '{sid}' already exists.")
        siblings = sum(n.startswith(request.parent + "/services/") for n in self.services)
        if siblings >= self.max_services:
            raise _Abort(
                C.RESOURCE_EXHAUSTED,
                "Quota exceeded for total allowable count of services per project per region.",
                "RESOURCE_QUOTA_EXCEEDED",
                quota=True,
            )
        service = Service()
        service.CopyFrom(request.service)
        service.name = name
        service.uid = str(uuid.uuid4())
        service.generation = 1
        service.create_time.CopyFrom(_now())
        service.update_time.CopyFrom(service.create_time)
        service.etag = secrets.token_hex(8)
        service.latest_created_revision = f"{name}/revisions/{_revision(sid)}"
        service.reconciling = True
        _condition(service, Condition.CONDITION_RECONCILING, "")
        op = _Operation(f"{request.parent}/operations/{uuid.uuid4()}", service)
        if request.validate_only:
            op.final = _done(op, response=service)
            return op.final
        self._operations[op.name] = op
        self.services[name] = service
        deployment = _Deployment(sid, service, op)
        self._deployments[name] = deployment
        deployment.task = asyncio.create_task(self._deploy(deployment))
        return _pending(op)

    async def _get(self, request: Any) -> Any:
        return self._lookup(request.name)

    async def _list(self, request: Any) -> Any:
        if PARENT.fullmatch(request.parent) is None:
            raise _Abort(C.INVALID_ARGUMENT, f"Invalid parent '{request.parent}'.")
        matching = [s for n, s in self.services.items() if n.startswith(request.parent + "/")]
        size = min(request.page_size or self.page_size, self.page_size)
        try:
            start = int(request.page_token or "0")
        except ValueError:
            raise _Abort(C.INVALID_ARGUMENT, "Invalid page token.") from None
        response = ListServicesResponse(services=matching[start : start + size])
        if start + size < len(matching):
            response.next_page_token = str(start + size)
        return response

    async def _delete(self, request: Any) -> Any:
        self._take_write()
        service = self._lookup(request.name)
        del self.services[request.name]
        op = _Operation(
            f"{request.name.rsplit('/services/', 1)[0]}/operations/{uuid.uuid4()}", service
        )
        op.final = _done(op, response=service)
        self._operations[op.name] = op
        deployment = self._deployments.pop(request.name, None)
        if deployment is not None:
            if deployment.task is not None:
                deployment.task.cancel()  # now: a create still in its latency sleep never runs
            self._engine.spawn(self._teardown(deployment), removal=True)
        return op.final

    async def _get_op(self, request: Any) -> Any:
        op = self._operations.get(request.name)
        if op is None:
            raise _Abort(C.NOT_FOUND, f"Operation '{request.name}' does not exist.")
        if op.final is None:
            return _pending(op)
        if op.polls_left > 0:
            op.polls_left -= 1
            return _pending(op)
        return op.final

    def _lookup(self, name: str) -> Any:
        match = SERVICE_NAME.fullmatch(name)
        if match is None:
            raise _Abort(C.INVALID_ARGUMENT, f"Invalid resource name '{name}'.")
        if name not in self.services:
            _, project, region, sid = match.groups()
            raise _Abort(
                C.NOT_FOUND,
                f"Resource '{sid}' of kind 'SERVICE' in region '{region}' "
                f"in project '{project}' does not exist.",
            )
        return self.services[name]

    def _take_write(self) -> None:
        """Take a token from the write bucket, or fail like Google's per-minute write quota."""
        if self.writes_per_minute is None:
            return
        now = time.monotonic()
        refill = (now - self._bucket_at) * self.writes_per_minute / 60
        self._bucket = min(self.write_burst, self._bucket + refill)
        self._bucket_at = now
        if self._bucket < 1:
            raise _Abort(
                C.RESOURCE_EXHAUSTED,
                "Quota exceeded for quota metric 'Write requests' and limit 'Write requests "
                "per minute per region' of service 'run.googleapis.com'.",
                "RATE_LIMIT_EXCEEDED",
                quota=True,
            )
        self._bucket -= 1

    # ----------------------------------------------------------------------- deployments

    async def _deploy(self, dep: _Deployment) -> None:
        """Run the service's container, wait for it to listen, then put a front before it."""
        container = dep.service.template.containers[0]
        port = (container.ports[0].container_port if container.ports else 0) or 8080
        try:
            await asyncio.sleep(self.create_latency)
            if self._deploy_failures:
                self._finish(dep, *self._deploy_failures.popleft())
                return
            if await self._engine.image(container.image) is None:
                self._finish(dep, 5, f"Image '{container.image}' not found.")
                return
            dep.starting = self._engine.atomic(self._run(dep, port))
            try:
                await asyncio.shield(dep.starting)
                started = await self._listening(dep)
            except aiodocker.DockerError:
                # The engine would not run it (e.g. an image with no command): to Cloud Run
                # that is a container that failed to start.
                started = False
            if not started:
                await self._engine.remove(dep.container_id)
                self._finish(
                    dep,
                    9,
                    f"Revision '{_revision(dep.service_id)}' is not ready and cannot serve "
                    "traffic. The user-provided container failed to start and listen on the "
                    f"port defined provided by the PORT={port} environment variable within "
                    "the allocated timeout.",
                )
                return
            await self._start_front(dep)
            self._finish(dep, 0, "")
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the engine refused: the deployment fails, not the test
            await self._engine.remove(dep.container_id)
            self._finish(dep, 13, f"Deployment failed: {error}")

    async def _run(self, dep: _Deployment, port: int) -> None:
        spec = dep.service.template.containers[0]
        service = dep.service.name
        env = [f"{e.name}={e.value}" for e in spec.env if e.name != "PORT"]
        env += [
            f"PORT={port}",
            f"K_SERVICE={dep.service_id}",
            f"K_REVISION={_revision(dep.service_id)}",
            f"K_CONFIGURATION={dep.service_id}",
        ]
        host_config: dict[str, Any] = {}
        memory = MEMORY.fullmatch(spec.resources.limits.get("memory", ""))
        if memory is not None:
            host_config["Memory"] = int(memory[1]) * MEMORY_UNITS[memory[2]]
        config: dict[str, Any] = {
            "Image": spec.image,
            "Env": env,
            "Labels": {f"{LABEL}.service": service},
            "HostConfig": host_config,
        }
        if spec.command:
            config["Entrypoint"] = list(spec.command)
        if spec.args:
            config["Cmd"] = list(spec.args)
        if spec.working_dir:
            config["WorkingDir"] = spec.working_dir
        name = f"cloudrun-{self._engine.instance[:8]}-{dep.service_id}-{secrets.token_hex(3)}"
        created = await self._engine.create(config, name=name, publish=[port])
        dep.container_id = created.id
        await created.start()
        # A container that already exited has no port binding any more.
        dep.upstream_port = (await self._engine.published(created)).get(port)

    async def _listening(self, dep: _Deployment) -> bool:
        """Whether the container answers HTTP (any status) within ``listen_timeout``.

        Docker's userland proxy accepts TCP connections on the published port even when
        nothing listens inside, so only a whole HTTP answer counts.
        """
        assert self._http is not None
        deadline = time.monotonic() + self.listen_timeout
        while dep.upstream_port is not None and time.monotonic() < deadline:
            state = (await self._engine.show(dep.container_id or ""))["State"]
            if not state.get("Running"):
                return False
            url = f"http://127.0.0.1:{dep.upstream_port}/"
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=1)):
                    return True
            await asyncio.sleep(0.1)
        return False

    def _finish(self, dep: _Deployment, code: int, message: str) -> None:
        """End the deployment: ``code`` 0 is success, else a google.rpc.Code."""
        service = dep.service
        service.reconciling = False
        service.update_time.CopyFrom(_now())
        if code == 0:
            service.observed_generation = 1
            service.latest_ready_revision = service.latest_created_revision
            _condition(service, Condition.CONDITION_SUCCEEDED, "")
            dep.op.final = _done(dep.op, response=service)
        else:
            _condition(service, Condition.CONDITION_FAILED, message)
            dep.op.final = _done(dep.op, error=status_pb2.Status(code=code, message=message))
        dep.op.polls_left = self.polls_before_done

    async def _teardown(self, dep: _Deployment) -> None:
        """Cancel a pending deployment, stop its front and remove its container."""
        if dep.task is not None:
            dep.task.cancel()
            await asyncio.wait([dep.task])
        if dep.starting is not None:
            # A container being created when the delete came: wait for it, then remove it.
            await asyncio.wait([dep.starting])
            if not dep.starting.cancelled():
                dep.starting.exception()  # retrieved: it is reported through the operation
        if dep.op.final is None:
            dep.op.final = _done(
                dep.op,
                error=status_pb2.Status(
                    code=10, message=f"Service '{dep.service_id}' was deleted while deploying."
                ),
            )
        if dep.front is not None:
            await dep.front.close()
        await self._engine.remove(dep.container_id)

    # -------------------------------------------------------------------------- HTTPS front

    async def _start_front(self, dep: _Deployment) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._front(request, dep)

        # A client that goes away cancels its handler, which closes the upstream connection:
        # that is how the daemon learns a foreground command lost its client.
        dep.front = Listener(handle, handler_cancellation=True)
        port = await dep.front.start(self._ssl)
        dep.service.uri = f"https://127.0.0.1:{port}"
        del dep.service.urls[:]
        dep.service.urls.append(dep.service.uri)

    async def _front(self, request: web.Request, dep: _Deployment) -> web.StreamResponse:
        authorized = dep.service.invoker_iam_disabled or self._authorized(request, dep)
        record = FrontRequest(dep.service_id, request.method, request.path, authorized)
        self.front_requests.append(record)
        if not authorized:
            record.status = 403
            body = FORBIDDEN_HTML.format(path=html.escape(request.path))
            return web.Response(status=403, text=body, content_type="text/html")
        assert self._http is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS]
        headers += [("X-Forwarded-Proto", "https"), ("X-Forwarded-For", request.remote or "")]
        try:
            upstream = await self._http.request(
                request.method,
                f"http://127.0.0.1:{dep.upstream_port}{request.path_qs}",
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        except (aiohttp.ClientError, OSError):
            record.status = 503  # the container is gone
            return web.Response(status=503, text="Service Unavailable")
        try:
            record.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_HEADERS:
                    response.headers.add(key, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:
                # The container broke off mid-reply: break the client's connection too rather
                # than end the body cleanly.
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError from None
            await response.write_eof()
            return response
        finally:
            upstream.close()

    def _authorized(self, request: web.Request, dep: _Deployment) -> bool:
        """Whether the request carries a valid ID token for this service, as Google checks."""
        for header in ("X-Serverless-Authorization", "Authorization"):
            scheme, _, token = request.headers.get(header, "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                continue
            uri = dep.service.uri
            try:
                claims = jwt.decode(token, certs=self._google_public, audience=[uri, uri + "/"])
            except (ValueError, auth_exceptions.GoogleAuthError):
                return False
            return bool(claims.get("iss") == GOOGLE_ISSUER)
        return False

    # ----------------------------------------------------------------------- token endpoint

    async def _token(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/token":
            return web.json_response({"error": "not_found"}, status=404)
        form = await request.post()
        assertion = str(form.get("assertion", ""))
        claims = self._verify_assertion(assertion) if form.get("grant_type") == JWT_BEARER else None
        if claims is None:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        if "target_audience" in claims:
            now = int(time.time())
            id_claims = {
                "iss": GOOGLE_ISSUER,
                "aud": claims["target_audience"],
                "azp": claims["iss"],
                "email": claims["iss"],
                "email_verified": True,
                "sub": claims["iss"],
                "iat": now,
                "exp": now + 3600,
            }
            self.id_tokens_issued += 1
            token = jwt.encode(self._google_signer, id_claims).decode()
            return web.json_response({"id_token": token})
        return web.json_response(
            {"access_token": secrets.token_urlsafe(32), "expires_in": 3600, "token_type": "Bearer"}
        )

    def _verify_assertion(self, assertion: str) -> dict[str, Any] | None:
        """The claims of a JWT grant signed by one of our service-account keys, else None."""
        return verify_assertion(assertion, self._sa_keys, self.token_uri, by_issuer=True)


# ------------------------------------------------------------------------------- helpers


def _revision(service_id: str) -> str:
    return f"{service_id}-00001-abc"


def _condition(service: Any, state: int, message: str) -> None:
    condition = service.terminal_condition
    condition.type_ = "Ready"  # proto-plus renames the field `type` in the descriptor
    condition.state = state
    condition.message = message
    condition.last_transition_time.CopyFrom(_now())


def _pending(op: _Operation) -> Any:
    """The operation as not done yet, its metadata the service as it is now."""
    return operations_pb2.Operation(name=op.name, done=False, metadata=_pack(op.service))


def _done(op: _Operation, *, response: Any = None, error: Any = None) -> Any:
    final = operations_pb2.Operation(name=op.name, done=True, metadata=_pack(op.service))
    if error is not None:
        final.error.CopyFrom(error)
    else:
        final.response.CopyFrom(_pack(response))
    return final


def _validate(service: Any) -> None:
    """Refuse what Cloud Run refuses in a Service on create."""
    for key, value in service.labels.items():
        if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise _Abort(
                C.INVALID_ARGUMENT,
                f"Invalid label '{key}': '{value}'. Keys must start with a lowercase letter "
                "and contain only lowercase letters, digits, '_' and '-' (at most 63); values "
                "the same characters (at most 63).",
            )
    for notes in (service.annotations, service.template.annotations):
        for key in notes:
            if key.startswith("run.googleapis.com/"):
                raise _Abort(
                    C.INVALID_ARGUMENT,
                    f"Annotation '{key}' is not supported: system annotations in the "
                    "'run.googleapis.com/' namespace cannot be set in v2.",
                )
    containers = service.template.containers
    if len(containers) != 1 or not containers[0].image:
        raise _Abort(
            C.INVALID_ARGUMENT,
            "template.containers must hold exactly one container, with an image.",
        )


def _injected(rule: Rule) -> _Abort:
    if rule.drop:
        # What a connection lost mid-call looks like to a gRPC client.
        return _Abort(C.UNAVAILABLE, "connection reset")
    status = rule.status or 500
    body = rule.body or {}
    message = body.get("message") or f"injected fault: HTTP {status}"
    return _Abort(HTTP_TO_GRPC.get(status, C.UNKNOWN), message, body.get("reason"))


def _raise_injected(rule: Rule) -> NoReturn:
    raise _injected(rule)


def _details(error: _Abort) -> tuple[tuple[str, bytes], ...]:
    """``grpc-status-details-bin``: the google.rpc.Status api_core reads ``.reason`` from."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.reason:
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
        status.details.append(_pack(info))
    return (("grpc-status-details-bin", status.SerializeToString()),)
