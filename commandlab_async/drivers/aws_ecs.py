"""AWS ECS/Fargate driver (aioboto3): one Fargate task per sandbox.

Credentials, region and endpoints come from the standard AWS chain (environment,
profiles, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_ECS``). Tasks carry the sandbox's
labels as tags plus its name, and ``startedBy`` names the owner session, so a task whose
``run_task`` answer was lost is still found and stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoRegionError,
)

from ..errors import BackendError, SandboxExitedError
from ..identity import SESSION_ID, SandboxIdentity
from ..specs import DockerSpec, EcsTask, Spec
from .base import SandboxRecord, SandboxState, daemon_env, retry_transient

__all__ = ["AwsEcsDriver"]

T = TypeVar("T")
_PLATFORM = "aws-ecs"
_CONTAINER = "computer"
NAME_TAG = "commandlab.name"
#: startedBy (at most 36 characters) names the owner session.
STARTED_BY = f"commandlab-{SESSION_ID}"
_TRANSIENT_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServerException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
}
_STOPPING = {"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"}
# Our own retries (tenacity, under the fleet's rate limit) replace botocore's, so that a
# retried run_task is known to us (it may have started a task whose answer was lost).
_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"})


class _CapacityFailure(Exception):
    """run_task answered with a failure that a later attempt may not get (capacity)."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES or status >= 500
    # Connection resets and read timeouts: the request may or may not have acted.
    return isinstance(exc, ConnectionError | HTTPClientError | _CapacityFailure)


@dataclass
class _Where:
    """Where a sandbox's task lives; known from the moment its create starts."""

    region: str | None
    cluster: str
    task_arn: str | None = None
    certain: bool = False
    """True when exactly one run_task reached ECS and answered: no need to search."""


def _task_definition(spec: DockerSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": _CONTAINER,
        "image": spec.image,
        "essential": True,
        "memory": spec.memory,
        "portMappings": [{"containerPort": spec.daemon_port, "protocol": "tcp"}],
    }
    if spec.log_configuration is not None:
        container["logConfiguration"] = dict(spec.log_configuration)
    definition: dict[str, Any] = {
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(round(spec.cpu * 1024)),
        "memory": str(spec.memory),
        "containerDefinitions": [container],
    }
    if spec.execution_role_arn:
        definition["executionRoleArn"] = spec.execution_role_arn
    if spec.task_role_arn:
        definition["taskRoleArn"] = spec.task_role_arn
    # Content-addressed family: one definition per distinct spec, reused across runs.
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    definition["family"] = f"{spec.name_prefix}-{digest[:16]}"
    return definition


def _warm(session: aioboto3.Session, service: str) -> None:
    """Load what creating a client reads from disk, so it is cached before the loop needs it."""
    core = session._session  # the botocore session behind aioboto3's
    core.get_scoped_config()
    for name in ("endpoint_resolver", "default_config_resolver", "monitor"):
        core._get_internal_component(name)
    loader = core.get_component("data_loader")
    # The same call shapes as botocore's client factory: its cache keys on them.
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        with suppress(Exception):  # not every service ships every kind
            loader.load_service_model(service, kind, api_version=None)
    for data in ("_retry", "partitions", "sdk-default-configuration"):
        loader.load_data(data)


async def default_endpoint(task: EcsTask) -> str:
    """The daemon's URL at the task's public IP if it has one, else its private IP."""
    ip = task.public_ip or task.private_ip
    if ip is None:
        raise LookupError(f"task {task.task_arn} has no IP address")
    return f"http://{ip}:{task.port}"


class AwsEcsDriver:
    """Driver for :attr:`DockerPlatform.AWS_ECS`."""

    platform = _PLATFORM
    probe_interval = 0.25

    def __init__(self) -> None:
        self._session: aioboto3.Session | None = None
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._client_lock = asyncio.Lock()
        self._where: dict[str, _Where] = {}
        self._definitions: dict[tuple[str | None, str], asyncio.Task[str]] = {}
        self._registered: list[tuple[str | None, str]] = []

    async def close(self) -> None:
        try:
            for region, arn in self._registered:  # ours, and no sandbox uses them any more
                ecs = await self._client("ecs", region)
                # Best effort: an ACTIVE definition left behind costs nothing.
                with suppress(ClientError, BotoCoreError, BackendError):
                    await ecs.deregister_task_definition(taskDefinition=arn)
        finally:
            await self._stack.aclose()

    async def _client(self, service: str, region: str | None) -> Any:
        async with self._client_lock:
            key = (service, region)
            if key not in self._clients:
                if self._session is None:
                    self._session = await asyncio.to_thread(aioboto3.Session)
                session: Any = self._session
                # botocore reads config files and service models from disk synchronously:
                # load them into its caches in a thread, not on the event loop.
                await asyncio.to_thread(_warm, session, service)
                try:
                    self._clients[key] = await self._stack.enter_async_context(
                        session.client(service, region_name=region, config=_CONFIG)
                    )
                except NoRegionError as exc:
                    raise BackendError(
                        "no AWS region: set spec.region or AWS_DEFAULT_REGION",
                        sandbox="*",
                        platform=_PLATFORM,
                    ) from exc
            return self._clients[key]

    async def _call(self, what: str, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Call AWS, retrying throttling, 5xx and capacity failures with jittered backoff."""
        try:
            return await retry_transient(
                fn, transient=_is_transient, attempts=5, first_wait=0.1, max_wait=5.0
            )
        except (ClientError, BotoCoreError, _CapacityFailure) as exc:
            raise BackendError(
                f"{what} failed: {exc}",
                sandbox=name,
                platform=_PLATFORM,
                transient=_is_transient(exc),
            ) from exc

    async def _definition_arn(self, spec: DockerSpec, name: str) -> str:
        definition = _task_definition(spec)
        key = (spec.region, definition["family"])
        if key not in self._definitions:  # one lookup/registration per distinct spec
            self._definitions[key] = asyncio.ensure_future(
                self._find_or_register(spec.region, definition, name)
            )
        try:
            return await asyncio.shield(self._definitions[key])
        except BackendError:
            self._definitions.pop(key, None)
            raise

    async def _find_or_register(
        self, region: str | None, definition: dict[str, Any], name: str
    ) -> str:
        ecs = await self._client("ecs", region)
        try:
            found = await ecs.describe_task_definition(taskDefinition=definition["family"])
            if found["taskDefinition"].get("status") == "ACTIVE":
                arn: str = found["taskDefinition"]["taskDefinitionArn"]
                return arn  # registered earlier (by anyone): reuse, never deregister
        except ClientError as exc:
            if _is_transient(exc):
                raise BackendError(
                    f"describe_task_definition failed: {exc}",
                    sandbox=name,
                    platform=_PLATFORM,
                    transient=True,
                ) from exc
        answer = await self._call(
            "register_task_definition", name, lambda: ecs.register_task_definition(**definition)
        )
        arn = answer["taskDefinition"]["taskDefinitionArn"]
        self._registered.append((region, arn))
        return arn

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        assert isinstance(spec, DockerSpec)
        name = identity.name
        where = self._where[name] = _Where(spec.region, spec.cluster or "default")
        definition_arn = await self._definition_arn(spec, name)
        ecs = await self._client("ecs", spec.region)
        tags = [{"key": k, "value": v} for k, v in identity.labels.items()]
        tags.append({"key": NAME_TAG, "value": name})
        environment = [{"name": k, "value": v} for k, v in daemon_env(spec, identity).items()]
        attempts = 0

        async def run_task() -> str:
            nonlocal attempts
            attempts += 1
            answer = await ecs.run_task(
                cluster=where.cluster,
                taskDefinition=definition_arn,
                launchType="FARGATE",
                count=1,
                startedBy=STARTED_BY,
                tags=tags,
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": list(spec.subnets),
                        "securityGroups": list(spec.security_groups),
                        "assignPublicIp": "ENABLED" if spec.assign_public_ip else "DISABLED",
                    }
                },
                overrides={
                    "containerOverrides": [{"name": _CONTAINER, "environment": environment}]
                },
            )
            if not answer.get("tasks"):
                reasons = "; ".join(
                    f"{f.get('reason')} {f.get('detail', '')}".strip()
                    for f in answer.get("failures", [])
                )
                if "RESOURCE" in reasons or "capacity" in reasons.lower():
                    raise _CapacityFailure(reasons)
                raise BackendError(
                    f"run_task placed no task: {reasons or 'no reason given'}",
                    sandbox=name,
                    platform=_PLATFORM,
                )
            arn: str = answer["tasks"][0]["taskArn"]
            return arn

        try:
            where.task_arn = await self._call("run_task", name, run_task)
        finally:
            # A retried run_task may have started a task whose answer was lost.
            where.certain = attempts == 1 and where.task_arn is not None

    async def _describe(self, where: _Where, arns: list[str]) -> list[dict[str, Any]]:
        ecs = await self._client("ecs", where.region)
        answer = await self._call(
            "describe_tasks",
            arns[0],
            lambda: ecs.describe_tasks(cluster=where.cluster, tasks=arns, include=["TAGS"]),
        )
        tasks: list[dict[str, Any]] = answer.get("tasks", [])
        return tasks

    async def endpoint(self, spec: Spec, identity: SandboxIdentity) -> str:
        assert isinstance(spec, DockerSpec)
        where = self._where[identity.name]
        assert where.task_arn is not None
        delay = 0.1
        while True:
            (task,) = await self._describe(where, [where.task_arn])
            self._raise_if_stopped(identity.name, task)
            if task.get("lastStatus") == "RUNNING":
                found = await self._task(spec, identity.name, task)
                resolver = spec.endpoint_resolver or default_endpoint
                return await resolver(found)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _task(self, spec: DockerSpec, name: str, task: dict[str, Any]) -> EcsTask:
        details = {
            d["name"]: d["value"]
            for attachment in task.get("attachments", [])
            if attachment.get("type") == "ElasticNetworkInterface"
            for d in attachment.get("details", [])
        }
        public_ip = None
        if spec.assign_public_ip and (eni := details.get("networkInterfaceId")):
            ec2 = await self._client("ec2", spec.region)
            answer = await self._call(
                "describe_network_interfaces",
                name,
                lambda: ec2.describe_network_interfaces(NetworkInterfaceIds=[eni]),
            )
            for interface in answer.get("NetworkInterfaces", []):
                public_ip = interface.get("Association", {}).get("PublicIp")
        return EcsTask(
            name,
            task["taskArn"],
            details.get("privateIPv4Address"),
            public_ip,
            spec.daemon_port,
            task,
        )

    @staticmethod
    def _raise_if_stopped(name: str, task: dict[str, Any]) -> None:
        if task.get("lastStatus") in _STOPPING or task.get("desiredStatus") == "STOPPED":
            reason = task.get("stoppedReason") or "no reason given"
            raise SandboxExitedError(
                f"task stopped before its daemon answered: {reason}",
                sandbox=name,
                platform=_PLATFORM,
                state=f"{task.get('lastStatus')}: {reason}",
            )

    async def state(self, name: str) -> SandboxState:
        where = self._where.get(name)
        if where is None or where.task_arn is None:
            return SandboxState("not created")
        tasks = await self._describe(where, [where.task_arn])
        if not tasks:
            return SandboxState("gone", terminal=True)
        task = tasks[0]
        status = str(task.get("lastStatus"))
        if status in _STOPPING or task.get("desiredStatus") == "STOPPED":
            return SandboxState(f"{status}: {task.get('stoppedReason') or 'stopping'}", True)
        return SandboxState(status)

    async def destroy(self, name: str) -> None:
        where = self._where.get(name)
        if where is None:
            return  # never created by this driver, nor listed by it
        arns = (
            [where.task_arn] if where.certain and where.task_arn else await self._find(where, name)
        )
        ecs = await self._client("ecs", where.region)
        for arn in arns:
            try:
                await self._call(
                    "stop_task",
                    name,
                    lambda arn=arn: ecs.stop_task(  # type: ignore[misc]
                        cluster=where.cluster, task=arn, reason="deleted by commandlab"
                    ),
                )
            except BackendError as exc:
                if "not found" not in str(exc).lower():
                    raise
        self._where.pop(name, None)

    async def _find(self, where: _Where, name: str) -> list[str]:
        """Tasks of this session carrying ``name``, found by startedBy and the name tag."""
        ecs = await self._client("ecs", where.region)
        answer = await self._call(
            "list_tasks",
            name,
            lambda: ecs.list_tasks(
                cluster=where.cluster, startedBy=STARTED_BY, desiredStatus="RUNNING"
            ),
        )
        arns: list[str] = answer.get("taskArns", [])
        found = []
        for start in range(0, len(arns), 100):
            for task in await self._describe(where, arns[start : start + 100]):
                tags = {t["key"]: t["value"] for t in task.get("tags", [])}
                if tags.get(NAME_TAG) == name:
                    found.append(task["taskArn"])
        return found

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        """Running tasks of the default region's ``default`` cluster carrying ``labels``."""
        where = _Where(None, "default")
        ecs = await self._client("ecs", None)
        records = []
        paginator = ecs.get_paginator("list_tasks")
        async for page in paginator.paginate(cluster=where.cluster, desiredStatus="RUNNING"):
            arns = page.get("taskArns", [])
            for start in range(0, len(arns), 100):
                for task in await self._describe(where, arns[start : start + 100]):
                    tags = {t["key"]: t["value"] for t in task.get("tags", [])}
                    name = tags.get(NAME_TAG)
                    if name and all(tags.get(k) == v for k, v in labels.items()):
                        self._where[name] = _Where(None, "default", task["taskArn"], True)
                        records.append(SandboxRecord(name, tags, str(task.get("lastStatus"))))
        return records
