"""Azure Container Instances driver (azure-mgmt-containerinstance, aio): one container
group per sandbox.

Each group is named by us before the call, runs one container that is never restarted
(the daemon exits 0 at its TTL, and the group stops), and is reached over HTTPS on its
IP: ACI offers no TLS of its own, so the daemon serves it with a key and certificate made
for this sandbox, which the client pins (:mod:`commandlab_async._client.tls`). The token's hash
and the key travel as ``secureValue`` variables, which ARM never returns.

azure-core's own retries are off (``retry_total=0``): our limiter and :meth:`Driver.call`
decide, honouring ``Retry-After``. Trust comes from the system store (``SSL_CERT_FILE``
is honoured when the driver starts, not only when aiohttp is imported).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerinstance import models
from azure.mgmt.containerinstance.aio import ContainerInstanceManagementClient

from ..._client.tls import SandboxTls, make_sandbox_tls
from ...errors import BackendError, SandboxExitedError, SandboxNotFoundError
from ...labels import CREATED_AT, MANAGED, SESSION
from ...specs import Spec
from .._clouds.azure import AzureSession, arm_scope
from ..base import DockerPlatform, Limits, MachineQuota, RunningSandbox
from ..driver import (
    TRANSIENT_STATUS,
    Driver,
    Failure,
    SandboxIdentity,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    daemon_env,
    retry_after_seconds,
)
from .options import AciOptions, AciTarget, memory_in_gb

__all__ = ["AciDriver"]

_CONTAINER = "computer"
# Polling a group while it comes up: from 0.25 s, growing to at most 2 s, so a fleet of
# 100 stays within ARM's read budget (about 25 a second per principal).
_FIRST_POLL = 0.25
_MAX_POLL = 2.0
# Following a log: ACI serves it whole (its last 4 MB), never as a stream, so it is read
# again this often and what is new is passed on. The last characters passed on find
# where to go on when the log outgrew what ACI serves.
_FOLLOW_POLL = 2.0
_ANCHOR = 4096
# Events ACI reports while it keeps retrying something that will not work (a bad image,
# a container that will not start): waiting for the deadline would only cost time.
_FATAL_EVENTS = ("Failed", "BackOff")
# Group states once its containers ended (Never restarts): all exited 0, or not; or a
# user stopped it.
_STOPPED = ("Succeeded", "Failed", "Stopped")
# The most of an event's message a ready timeout repeats (an image name can be long).
_EVENT_CHARS = 200
# ARM error codes of quotas, with what the user can do about them (never retried: they
# come as 400, and waiting minutes inside one create would not be what anyone wants).
_QUOTA_NOTES = {
    "ContainerGroupQuotaReached": (
        "ACI allows 100 container groups per region and subscription by default: delete "
        "finished ones (`commandlab gc --platform azure-aci`) or ask Azure for more"
    ),
}


def _options(spec: Spec) -> AciOptions:
    assert isinstance(spec.options, AciOptions)  # the registry guarantees it
    return spec.options


def _arm_code(exc: HttpResponseError) -> str | None:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else None


def _group(spec: Spec, identity: SandboxIdentity, tls: SandboxTls, region: str) -> Any:
    options = _options(spec)
    # The user's variables stay readable; ours are secret (ARM never returns a
    # secureValue). The certificate is not secret, but only the sandbox needs it.
    env = [models.EnvironmentVariable(name=k, value=v) for k, v in spec.env.items()]
    ours = {**daemon_env(spec, identity), **tls.daemon_env()}
    for name in spec.env:
        ours.pop(name, None)  # daemon_env starts from the user's
    env += [models.EnvironmentVariable(name=k, secure_value=v) for k, v in ours.items()]
    port = spec.daemon_port
    container = models.Container(
        name=_CONTAINER,
        image=spec.image,
        resources=models.ResourceRequirements(
            requests=models.ResourceRequests(memory_in_gb=memory_in_gb(spec.memory), cpu=spec.cpu)
        ),
        ports=[models.ContainerPort(port=port, protocol="TCP")],
        environment_variables=env,
    )
    private = bool(options.subnet_ids)
    return models.ContainerGroup(
        location=region,
        tags=dict(identity.labels),
        containers=[container],
        os_type="Linux",
        restart_policy="Never",
        ip_address=models.IpAddress(
            ports=[models.Port(port=port, protocol="TCP")],
            type="Private" if private else "Public",
            dns_name_label=options.dns_name_label,
        ),
        subnet_ids=[models.ContainerGroupSubnetId(id=s) for s in options.subnet_ids] or None,
    )


def _failure(group: Any) -> str | None:
    """Why the group will never serve, in ACI's own words; None while it still may."""
    if group.provisioning_state == "Failed":
        events = [e for c in group.containers or [] for e in _events(c)]
        events += list((group.instance_view.events if group.instance_view else None) or [])
        detail = "; ".join(f"{e.name}: {e.message}" for e in events if e.type == "Warning")
        return f"provisioning failed{': ' + detail if detail else ''}"
    for container in group.containers or []:
        view = container.instance_view
        if view is None:
            continue
        state = view.current_state
        if state is not None and state.state == "Terminated":
            return (
                f"container {container.name} exited with code {state.exit_code} "
                f"({state.detail_status or 'no detail'})"
            )
        if view.restart_count:
            return f"container {container.name} restarted {view.restart_count} time(s)"
        for event in _events(container):
            if event.name in _FATAL_EVENTS:
                return f"{event.name}: {event.message}"
    return None


def _events(container: Any) -> list[Any]:
    view = container.instance_view
    return list((view.events if view else None) or [])


def _state_of(group: Any) -> str:
    failure = _failure(group)
    if failure is not None:
        return f"failed: {failure}"
    running = group.instance_view.state if group.instance_view else None
    return str(running or group.provisioning_state or "unknown")


def _progress(group: Any) -> str:
    """Where a group that does not serve yet stands, in ACI's words: its provisioningState
    and instance view state, each container's state and its latest event."""
    provisioning = str(group.provisioning_state or "unknown")
    said = f"provisioningState {provisioning}"
    instance = group.instance_view.state if group.instance_view else None
    if instance and instance != provisioning:
        said += f", instance {instance}"
    if provisioning == "Succeeded" and not (group.ip_address and group.ip_address.ip):
        said += ", no IP address yet"
    parts = [said]
    for container in group.containers or []:
        view = container.instance_view
        current = view.current_state if view is not None else None
        if current is None or not current.state:
            continue
        detail = f" ({current.detail_status})" if current.detail_status else ""
        part = f"container {container.name} {current.state}{detail}"
        if events := _events(container):
            last = _latest(events)
            message = str(last.message or "")
            if len(message) > _EVENT_CHARS:
                message = message[: _EVENT_CHARS - 3] + "..."
            part += f", last event {last.name}" + (f": {message}" if message else "")
        parts.append(part)
    return "; ".join(parts)


def _latest(events: list[Any]) -> Any:
    """The event seen last (a repeated event keeps its place and moves its timestamp)."""

    def when(pair: tuple[int, Any]) -> tuple[float, int]:
        stamp: datetime.datetime | None = pair[1].last_timestamp
        return (stamp.timestamp() if stamp is not None else 0.0, pair[0])

    return max(enumerate(events), key=when)[1]


def _unseen(content: str, printed: int, anchor: str) -> str:
    """What of the log ``content`` is new, when the first ``printed`` characters of the
    last read, ending in ``anchor``, were passed on already."""
    if content[printed - len(anchor) : printed] == anchor:
        return content[printed:]  # it grew in place (or did not grow)
    # It outgrew what ACI serves and its start moved on: go on after where the anchor is
    # now (its first place: a log that repeats itself may be repeated, never cut).
    at = content.find(anchor) if anchor else -1
    return content[at + len(anchor) :] if at >= 0 else content


def _finished(group: Any) -> bool:
    state = group.instance_view.state if group.instance_view else None
    return state in _STOPPED or group.provisioning_state == "Failed"


class AciDriver(Driver[AciTarget]):
    """Driver for :attr:`DockerPlatform.AZURE_CONTAINER_INSTANCES`: one group each."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.AZURE_CONTAINER_INSTANCES
    # ACI's documented quotas per region: 100 groups at once, 100 creates per 5 minutes
    # and 300 per hour (ARM's 200-write burst, 10 a second, is looser than both).
    default_limits = Limits(
        creates_in_flight=100, creates_per_second=300 / 3600, create_burst=100, probes_in_flight=64
    )

    @classmethod
    def machine_quotas(cls, target: AciTarget) -> tuple[MachineQuota, ...]:
        # Per subscription and region (https://learn.microsoft.com/azure/container-instances/
        # container-instances-resource-and-quota-limits): container group creates, 300 an
        # hour and 100 per 5 minutes; deletes, the same. A bucket of 75 refilled at 225 an
        # hour stays within both windows however they are counted (75 + 225 in an hour,
        # 75 + 19 in 5 minutes). Under them, ARM's subscription writes (a bucket of 200
        # refilled at 10/s; a create's PUT and a delete's DELETE each cost one).
        where = f"subscription={target.subscription_id} region={target.region}"
        arm = f"subscription={target.subscription_id} endpoint={target.arm_endpoint}"
        hourly = 225 / 3600
        return (
            MachineQuota(scope=f"azure-aci creates {where}", per_second=hourly, burst=75),
            MachineQuota(
                scope=f"azure-aci deletes {where}",
                per_second=hourly,
                burst=75,
                creates=False,
                deletes=True,
            ),
            MachineQuota(scope=f"azure-arm writes {arm}", per_second=10, burst=200, deletes=True),
        )

    probe_interval = 0.5
    attempts = 5
    first_wait = 0.5
    max_wait = 8.0

    def __init__(self, target: AciTarget) -> None:
        super().__init__(target)
        self._lock = asyncio.Lock()
        self._arm: ContainerInstanceManagementClient | None = None
        self._azure: AzureSession | None = None
        # name -> where its group stood when running() last looked (for waiting_on).
        self._progress: dict[str, str] = {}

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, ClientAuthenticationError):
            return Failure(exc.status_code or "authentication", transient=False)
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return Failure(None, transient=True)  # no answer: the connection failed
        if isinstance(exc, HttpResponseError):
            code = _arm_code(exc) or exc.status_code
            return Failure(
                code,
                transient=exc.status_code in TRANSIENT_STATUS,
                not_found=isinstance(exc, ResourceNotFoundError),
            )
        return None

    @classmethod
    def retry_after(cls, exc: BaseException) -> float | None:
        response = getattr(exc, "response", None)
        return retry_after_seconds(
            response.headers.get("Retry-After") if response is not None else None
        )

    def translate(self, exc: Exception, what: str, sandbox: str | None) -> Exception:
        error = super().translate(exc, what, sandbox)
        if isinstance(exc, HttpResponseError) and (note := _QUOTA_NOTES.get(_arm_code(exc) or "")):
            error.add_note(note)
        return error

    async def _client(self) -> ContainerInstanceManagementClient:
        async with self._lock:
            if self._arm is None:
                target = self.target
                if self._azure is None:
                    self._azure = await AzureSession.open(target.credential)
                self._arm = ContainerInstanceManagementClient(
                    self._azure.credential,
                    target.subscription_id,
                    base_url=target.arm_endpoint,
                    credential_scopes=[arm_scope(target.arm_endpoint)],
                    transport=self._azure.transport,
                    retry_total=0,
                    polling_interval=1,
                )
            return self._arm

    async def close(self) -> None:
        async with self._lock:
            if self._arm is not None:
                await self._arm.close()
                self._arm = None
            if self._azure is not None:
                await self._azure.close()
                self._azure = None

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        assert self.target.region is not None  # AciOptions.target requires it
        client = await self._client()
        name = identity.name
        self._tls[name] = tls = await make_sandbox_tls(name)
        group = _group(spec, identity, tls, self.target.region)
        rg = self.target.resource_group
        try:
            # Not polled: running() follows the group itself, with its events.
            await self.call(
                "create container group",
                name,
                lambda: client.container_groups.begin_create_or_update(
                    rg, name, group, polling=False
                ),
            )
        except BackendError as exc:
            if isinstance(exc.__cause__, ClientAuthenticationError):
                self.mark_not_created(name)  # ARM authenticates before it acts
                self._tls.pop(name, None)
                raise
            # A create whose answer was lost and was sent again (by us or by aiohttp)
            # finds the group mid-creation: ours if it carries our session and time.
            if not isinstance(exc.__cause__, ResourceExistsError):
                raise
            found = await self._get(identity)
            tags = (found.tags or {}) if found is not None else {}
            if any(tags.get(k) != identity.labels[k] for k in (SESSION, CREATED_AT)):
                raise

    async def _get(self, sandbox: SandboxRef) -> Any:
        client = await self._client()
        rg = self.target.resource_group
        return await self.call_or_missing(
            "get container group",
            sandbox.name,
            lambda: client.container_groups.get(rg, sandbox.name),
        )

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        tls = self._tls[identity.name]
        delay = _FIRST_POLL
        while True:
            group = await self._get(identity)
            if group is None:
                raise SandboxExitedError(
                    "container group is gone",
                    sandbox=identity.name,
                    platform=self.platform,
                    state="gone",
                )
            if (failure := _failure(group)) is not None:
                raise SandboxExitedError(
                    f"ACI cannot run it: {failure}",
                    sandbox=identity.name,
                    platform=self.platform,
                    state=f"failed: {failure}",
                )
            ip = group.ip_address.ip if group.ip_address else None
            if group.provisioning_state == "Succeeded" and ip:
                self._progress.pop(identity.name, None)
                return self._running(spec, identity.name, group, ip, tls)
            self._progress[identity.name] = _progress(group)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _MAX_POLL)

    def _running(
        self, spec: Spec, name: str, group: Any, ip: str, tls: SandboxTls
    ) -> RunningSandbox:
        addresses = {"private" if _options(spec).subnet_ids else "public": ip}
        if group.ip_address.fqdn:
            addresses["fqdn"] = group.ip_address.fqdn
        return RunningSandbox(
            name=name,
            platform=self.platform,
            port=spec.daemon_port,
            addresses=addresses,
            url=f"https://{ip}:{spec.daemon_port}",
            raw=group.as_dict(),  # ARM never returns a secureValue
            ssl=tls.client_context(),
        )

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        return self._progress.get(sandbox.name)

    async def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        """The daemon container's log, as ACI serves it (at most its last 4 MB). ACI has
        no stream of it: ``follow`` reads it again every 2 s and passes on what is new,
        until the group has stopped or is gone."""
        client = await self._client()
        rg, name = self.target.resource_group, sandbox.name
        printed, anchor, first = 0, "", True
        while True:
            # The state before the log: once stopped, this read has everything.
            group = await self._get(sandbox) if follow else None
            found = await self.call_or_missing(
                "read container logs",
                name,
                lambda: client.containers.list_logs(rg, name, _CONTAINER),
            )
            if found is None:
                if first:
                    raise SandboxNotFoundError(
                        f"no container group of it in resource group {rg}", sandbox=name
                    )
                return
            first = False
            content = str(found.content or "")
            if new := _unseen(content, printed, anchor):
                # What the sandbox printed, as JSON decoded it: a lone surrogate is replaced.
                yield new.encode(errors="replace")
            printed, anchor = len(content), content[-_ANCHOR:]
            if not follow or group is None or _finished(group):
                return
            await asyncio.sleep(_FOLLOW_POLL)

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        group = await self._get(sandbox)
        if group is None:
            return SandboxState("gone", terminal=True)
        return SandboxState(_state_of(group), terminal=_failure(group) is not None)

    async def destroy(self, sandbox: SandboxRef) -> None:
        client = await self._client()
        self._tls.pop(sandbox.name, None)
        self._progress.pop(sandbox.name, None)
        rg = self.target.resource_group
        # The delete's operation is not polled: ARM has taken the group out of the
        # quota and the list once the call is accepted.
        await self.call_or_missing(
            "delete container group",
            sandbox.name,
            lambda: client.container_groups.begin_delete(rg, sandbox.name, polling=False),
        )

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        client = await self._client()
        records = []
        try:
            # ARM filters groups by nothing we set: every group of the resource group
            # comes back, and ours are picked by their tags here.
            async for group in client.container_groups.list_by_resource_group(
                self.target.resource_group
            ):
                tags = dict(group.tags or {})
                if MANAGED in tags and all(tags.get(k) == v for k, v in labels.items()):
                    records.append(
                        SandboxRecord(
                            str(group.name), tags, _state_of(group), finished=_finished(group)
                        )
                    )
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self.translate(exc, "list container groups", None) from exc
        return records
