"""Google Cloud Run driver (google-cloud-run, gRPC): one Service per sandbox.

A sandbox must keep its files and processes between requests, so each is a Service with
exactly one instance that always has its CPU, in the second-generation environment
(a full Linux kernel surface), with the longest request timeout Cloud Run allows.
Credentials come from Google's default chain. ``CLOUD_RUN_EMULATOR_HOST`` (``host:port``),
as with Google's other emulators, sends the API calls in plain gRPC to an emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import string
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

import grpc
from google.api_core import exceptions as google_errors
from google.api_core.operation_async import AsyncOperation
from google.cloud import run_v2
from google.cloud.run_v2.services.services.transports import ServicesGrpcAsyncIOTransport
from google.protobuf import duration_pb2

from ...daemon.protocol import TTL_ENV
from ...errors import BackendError, SandboxExitedError, UnsupportedOperationError
from ...labels import CREATED_AT, MANAGED, SESSION
from ...specs import Spec
from .._clouds import gcp, system_ssl_context
from ..base import DockerPlatform, Limits, MachineQuota, RunningSandbox
from ..driver import (
    Driver,
    Failure,
    Reach,
    SandboxIdentity,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    daemon_env,
)
from .id_tokens import IdTokens
from .options import LABEL_VALUE, CloudRunOptions, CloudRunTarget

__all__ = ["EMULATOR_ENV", "CloudRunDriver", "gcp_labels"]

EMULATOR_ENV = "CLOUD_RUN_EMULATOR_HOST"
_API_HOST = "run.googleapis.com:443"
_REQUEST_TIMEOUT = duration_pb2.Duration(seconds=3600)  # the longest Cloud Run allows
_MAX_CONCURRENCY = 1000  # requests one instance takes at once (Cloud Run's most)
_RPC_TIMEOUT = 30.0
# Deploys take seconds to minutes: poll from 50 ms (the emulator, a warm region), doubling
# to at most this, so a fleet of 30 asks at most 15 times a second.
_MAX_POLL = 2.0
_Condition = run_v2.Condition.State
_TRANSIENT = (
    # A quota, most often the writes per minute; gcp.exhausted_quota tells when it is a
    # count (services per region...), which waiting does not free.
    google_errors.ResourceExhausted,
    google_errors.ServiceUnavailable,
    google_errors.DeadlineExceeded,
    google_errors.InternalServerError,
    google_errors.Aborted,
)
# The quota on how many services may exist, and what to do when it is full (Google does
# not raise it: https://cloud.google.com/run/quotas).
_SERVICES = re.compile(r"service", re.IGNORECASE)
_SERVICES_IN_TEXT = re.compile(r"\bservices\b", re.IGNORECASE)
_SERVICES_NOTE = (
    "Cloud Run holds at most 1,000 services per region in a project, and Google does not "
    "raise that limit: delete finished ones (`commandlab gc`) or use another region or project"
)
_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-")


def gcp_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` under Google's label rules: our ``commandlab.x`` keys become
    ``commandlab-x``; values outside the rules (a host name) are made to fit.

    Lossy, so the exact labels also travel as annotations, which gc reads.
    """
    fitted = {}
    for key, value in labels.items():
        fitted[key.replace(".", "-")] = (
            value
            if LABEL_VALUE.fullmatch(value)
            else "".join(c if c in _LABEL_CHARS else "-" for c in value.lower())[:63]
        )
    return fitted


def _options(spec: Spec) -> CloudRunOptions:
    assert isinstance(spec.options, CloudRunOptions)  # the registry guarantees it
    return spec.options


def _service(spec: Spec, identity: SandboxIdentity) -> run_v2.Service:
    options = _options(spec)
    env = daemon_env(spec, identity)
    # A daemon that exits at its TTL would be replaced by a fresh instance that keeps
    # billing: on Cloud Run the TTL is enforced by deleting the service (lifecycle, gc).
    env.pop(TTL_ENV, None)
    container = run_v2.Container(
        image=spec.image,
        ports=[run_v2.ContainerPort(container_port=spec.daemon_port)],
        env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()],
        resources=run_v2.ResourceRequirements(
            limits={"cpu": str(round(spec.cpu)), "memory": f"{spec.memory}Mi"},
            cpu_idle=False,  # CPU always allocated: commands run between requests too
        ),
    )
    return run_v2.Service(
        labels=gcp_labels(identity.labels),
        annotations=dict(identity.labels),
        invoker_iam_disabled=options.public,
        template=run_v2.RevisionTemplate(
            scaling=run_v2.RevisionScaling(min_instance_count=1, max_instance_count=1),
            timeout=_REQUEST_TIMEOUT,
            execution_environment=run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2,
            max_instance_request_concurrency=_MAX_CONCURRENCY,
            service_account=options.service_account or "",
            containers=[container],
        ),
    )


def _terminal(service: run_v2.Service) -> tuple[bool, str | None]:
    """(done deploying, the failure's message if it failed) of a service."""
    condition = service.terminal_condition
    if service.reconciling or condition.state == _Condition.CONDITION_RECONCILING:
        return False, None
    if condition.state == _Condition.CONDITION_FAILED:
        return True, condition.message or "deploy failed (no message)"
    return condition.state == _Condition.CONDITION_SUCCEEDED, None


def _quota_note(quota: gcp.ExhaustedQuota, message: str) -> str:
    """What to do about a used-up quota that retrying will not free."""
    if _SERVICES.search(quota.name or "") or (
        quota.name is None and _SERVICES_IN_TEXT.search(message)
    ):
        return _SERVICES_NOTE
    which = f"Cloud Run's quota {quota.name!r}" if quota.name else "A Cloud Run quota"
    return (
        f"{which} is used up, and retrying soon will not free it: delete finished "
        "sandboxes (`commandlab gc`), ask for fewer or smaller ones, use another region, "
        "or ask Google for more (https://cloud.google.com/run/quotas)"
    )


def _progress(service: run_v2.Service) -> str | None:
    """Where a service that does not serve yet stands, in Cloud Run's words: its terminal
    (Ready) condition and every other condition not yet succeeded; None if it has none."""
    others = [c for c in service.conditions if c.state != _Condition.CONDITION_SUCCEEDED]
    said = [_condition(c) for c in [service.terminal_condition, *others] if c.type_ or c.state]
    return "; ".join(said) or None


def _condition(condition: run_v2.Condition) -> str:
    """``Ready RECONCILING (reason): message``, parts Cloud Run left empty left out."""
    state = getattr(condition.state, "name", str(condition.state)).removeprefix("CONDITION_")
    said = f"{condition.type_ or 'condition'} {state}"
    if (field := run_v2.Condition.pb(condition).WhichOneof("reasons")) is not None:
        reason = getattr(condition, field)
        reason = str(getattr(reason, "name", reason))
        said += f" ({reason})" if reason != state else ""
    return f"{said}: {condition.message}" if condition.message else said


def _state_of(service: run_v2.Service) -> str:
    done, failure = _terminal(service)
    return f"failed: {failure}" if failure else "serving" if done else "deploying"


class CloudRunDriver(Driver[CloudRunTarget]):
    """Driver for :attr:`DockerPlatform.GCP_CLOUD_RUN`: one single-instance Service each."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.GCP_CLOUD_RUN
    # Cloud Run takes 60 writes per minute per region, and a sandbox costs two (create
    # and delete): half for creates, in a burst that brings a fleet of 30 up at once.
    default_limits = Limits(
        creates_in_flight=30, creates_per_second=0.5, create_burst=30, probes_in_flight=64
    )

    @classmethod
    def machine_quotas(cls, target: CloudRunTarget) -> tuple[MachineQuota, ...]:
        # Cloud Run Admin API: 60 write requests a minute per project and region
        # (https://cloud.google.com/run/quotas, API rate limits; refused as "Write requests
        # per minute per region"); a create and a delete cost one write each. Counted as a
        # bucket of 60 refilled at 1/s, as default_limits does, of which creates may spend
        # half, so the deletes of a fleet of 30 always find their tokens. An emulator is a
        # cloud of its own.
        where = f"project={target.project_id} region={target.region}"
        if emulator := os.environ.get(EMULATOR_ENV):
            where += f" endpoint={emulator}"
        return (
            MachineQuota(
                scope=f"gcp-cloud-run writes {where}",
                per_second=1.0,
                burst=60,
                creates=True,
                deletes=True,
            ),
            MachineQuota(scope=f"gcp-cloud-run creates {where}", per_second=0.5, burst=30),
        )

    probe_interval = 0.5
    # A write over the per-minute quota is worth waiting for: back off up to ~30 s.
    attempts = 6
    first_wait = 0.5
    max_wait = 16.0

    def __init__(self, target: CloudRunTarget) -> None:
        super().__init__(target)
        self._parent = f"projects/{target.project_id}/locations/{target.region}"
        self._services: run_v2.ServicesAsyncClient | None = None
        self._ssl: ssl.SSLContext | None = None
        self._lock = asyncio.Lock()
        self._id_tokens = IdTokens()
        # name -> the create operation, until running() has read it. Only an
        # optimisation: a sandbox without one is followed through get_service.
        self._ops: dict[str, AsyncOperation] = {}
        self._uris: dict[str, str] = {}  # name -> service URL, to drop its cached ID token
        # name -> the service as running() last saw it (for waiting_on).
        self._seen: dict[str, run_v2.Service] = {}

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, google_errors.GoogleAPICallError):
            status = exc.grpc_status_code
            code: int | str | None = status.name if status is not None else exc.code
            # A quota decides by its kind, whatever the status: a rate refills within a
            # minute, a count (services, instances, CPUs) only when something is deleted.
            # Its name is read from the message when no detail carries it.
            quota = gcp.exhausted_quota(exc)
            transient = quota.rate if quota is not None else isinstance(exc, _TRANSIENT)
            return Failure(
                code, transient=transient, not_found=isinstance(exc, google_errors.NotFound)
            )
        if isinstance(exc, google_errors.RetryError):
            return Failure(None, transient=True)
        return None

    def translate(self, exc: Exception, what: str, sandbox: str | None) -> Exception:
        error = super().translate(exc, what, sandbox)
        if isinstance(exc, google_errors.GoogleAPICallError):
            quota = gcp.exhausted_quota(exc)
            if quota is not None and not quota.rate:
                error.add_note(_quota_note(quota, str(exc.message or "")))
        return error

    async def _client(self) -> run_v2.ServicesAsyncClient:
        async with self._lock:
            if self._services is None:
                emulator = os.environ.get(EMULATOR_ENV)
                if emulator:
                    channel = grpc.aio.insecure_channel(emulator)
                else:
                    credentials, _ = await gcp.default_credentials(self.platform)
                    channel = ServicesGrpcAsyncIOTransport.create_channel(
                        _API_HOST, credentials=credentials, scopes=gcp.SCOPES
                    )
                # The channel belongs to the loop; the client's constructor looks for
                # client-certificate files on disk, so it is made in a thread.
                transport = ServicesGrpcAsyncIOTransport(channel=channel)
                self._services = await asyncio.to_thread(
                    run_v2.ServicesAsyncClient, transport=transport
                )
                self._ssl = await system_ssl_context()
            return self._services

    async def close(self) -> None:
        if self._services is not None:
            await self._services.transport.close()
            self._services = None

    def _name(self, sandbox: SandboxRef) -> str:
        return f"{self._parent}/services/{sandbox.name}"

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        client = await self._client()
        service = _service(spec, identity)
        try:
            self._ops[identity.name] = await self.call(
                "create_service",
                identity.name,
                lambda: client.create_service(
                    parent=self._parent,
                    service=service,
                    service_id=identity.name,
                    retry=None,
                    timeout=_RPC_TIMEOUT,
                ),
            )
        except BackendError as exc:
            # A retried create whose first answer was lost: ours if it carries our identity.
            if not isinstance(exc.__cause__, google_errors.AlreadyExists):
                raise
            found = await self._get(identity)
            mine = {k: identity.labels[k] for k in (SESSION, CREATED_AT)}
            if found is None or any(found.annotations.get(k) != v for k, v in mine.items()):
                raise
            self._ops.pop(identity.name, None)

    async def _get(self, sandbox: SandboxRef) -> run_v2.Service | None:
        client = await self._client()
        return await self.call_or_missing(
            "get_service",
            sandbox.name,
            lambda: client.get_service(name=self._name(sandbox), retry=None, timeout=_RPC_TIMEOUT),
        )

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        op = self._ops.pop(identity.name, None)
        service = await (self._operation(op, identity) if op else self._deployed(identity))
        self._seen.pop(identity.name, None)
        assert self._ssl is not None  # set with the client
        self._uris[identity.name] = service.uri
        return RunningSandbox(
            name=identity.name,
            platform=self.platform,
            port=443,
            addresses={"uri": service.uri},
            url=service.uri or None,
            raw=run_v2.Service.to_dict(service),
            ssl=self._ssl,
            headers=None if _options(spec).public else self._id_tokens.headers_for(service.uri),
        )

    async def reach(self, sandbox: SandboxRef, url: str, pin: str | None) -> Reach | None:
        service = await self._get(sandbox)
        if service is None:
            return None
        assert self._ssl is not None  # set with the client
        if service.invoker_iam_disabled:  # public: Google's front end wants no ID token
            return Reach(url, self._ssl)
        self._uris[sandbox.name] = service.uri
        return Reach(url, self._ssl, self._id_tokens.headers_for(service.uri))

    async def _operation(self, op: AsyncOperation, identity: SandboxIdentity) -> run_v2.Service:
        """Poll the create operation with a short backoff until it is done: its service."""
        delay = 0.05
        while not await self.call("get_operation", identity.name, lambda: op.done(retry=None)):
            # The operation's metadata is the service as it is now.
            if (now := op.metadata) is not None:
                self._seen[identity.name] = now
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)
        try:
            service: run_v2.Service = await op.result()
        except google_errors.GoogleAPICallError as exc:
            # The async client drops the code: it is in the operation's own error. Never
            # retried: one code means different things (a missing image is reported as
            # INTERNAL in some regions, NOT_FOUND in others).
            error = op.operation.error
            raise self._exited(identity.name, f"{error.message} (code {error.code})") from exc
        done, failure = _terminal(service)
        if failure is not None:
            raise self._exited(identity.name, failure)
        return service if done and service.uri else await self._deployed(identity)

    async def _deployed(self, identity: SandboxIdentity) -> run_v2.Service:
        """Poll the service until its terminal condition says it is deployed, with a URL."""
        delay = 0.05
        while True:
            service = await self._get(identity)
            if service is None:
                raise SandboxExitedError(
                    "service is gone", sandbox=identity.name, platform=self.platform, state="gone"
                )
            done, failure = _terminal(service)
            if failure is not None:
                raise self._exited(identity.name, failure)
            if done and service.uri:
                return service
            self._seen[identity.name] = service
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)

    def _exited(self, name: str, why: str) -> SandboxExitedError:
        return SandboxExitedError(
            f"Cloud Run could not deploy it: {why}",
            sandbox=name,
            platform=self.platform,
            state=f"failed: {why}",
        )

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        service = self._seen.get(sandbox.name)
        return _progress(service) if service is not None else None

    def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        raise UnsupportedOperationError(
            "Cloud Run keeps a service's log in Cloud Logging: gcloud logging read"
            f" 'resource.type=cloud_run_revision AND resource.labels.service_name={sandbox.name}'"
            f" --project {self.target.project_id}",
            sandbox=sandbox.name,
        )

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        service = await self._get(sandbox)
        if service is None:
            return SandboxState("gone", terminal=True)
        return SandboxState(_state_of(service), terminal=_terminal(service)[1] is not None)

    async def destroy(self, sandbox: SandboxRef) -> None:
        try:
            client = await self._client()
        except BackendError:
            # No credentials: this driver never had a client, so no create ever left it.
            return
        self._ops.pop(sandbox.name, None)
        self._seen.pop(sandbox.name, None)
        if uri := self._uris.pop(sandbox.name, None):
            self._id_tokens.forget(uri)
        # The delete's operation is not awaited: the service is gone from the API (and
        # from the quota) as soon as the call is accepted.
        await self.call_or_missing(
            "delete_service",
            sandbox.name,
            lambda: client.delete_service(
                name=self._name(sandbox), retry=None, timeout=_RPC_TIMEOUT
            ),
        )

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        client = await self._client()
        records = []
        try:
            pager = await client.list_services(
                parent=self._parent, retry=None, timeout=_RPC_TIMEOUT
            )
            async for service in pager:
                exact = dict(service.annotations)
                if MANAGED in exact and all(exact.get(k) == v for k, v in labels.items()):
                    state = _state_of(service)
                    records.append(SandboxRecord(service.name.rsplit("/", 1)[-1], exact, state))
        except google_errors.GoogleAPICallError as exc:
            raise self.translate(exc, "list_services", None) from exc
        return records
