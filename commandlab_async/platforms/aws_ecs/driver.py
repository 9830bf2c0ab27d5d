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
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from copy import deepcopy
from typing import Any, ClassVar

import aioboto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoRegionError,
)

from ..._client.tls import TLS_KEY_ENV, make_sandbox_tls
from ...errors import BackendError, SandboxExitedError, UnsupportedOperationError
from ...labels import SESSION
from ...specs import Spec
from .._clouds import aws
from ..base import DockerPlatform, Limits, MachineQuota, RunningSandbox
from ..driver import (
    Driver,
    Failure,
    SandboxIdentity,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    daemon_env,
)
from .options import EcsOptions, EcsTarget, fargate_storage_gib

__all__ = ["NAME_TAG", "EcsDriver", "started_by"]

_CONTAINER = "computer"
NAME_TAG = "commandlab.name"
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
_NOT_FOUND_CODES = {"ClusterNotFoundException", "TaskDefinitionNotFoundException"}
_CAPACITY = ("RESOURCE", "Capacity is unavailable")
_STOPPING = {"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"}


def _without_key(task: dict[str, Any]) -> dict[str, Any]:
    """``task`` with the TLS key in its overrides blanked (it is shown, logged, repr'd)."""
    overrides = task.get("overrides", {}).get("containerOverrides", [])
    if not any(e.get("name") == TLS_KEY_ENV for o in overrides for e in o.get("environment", [])):
        return task
    copy = deepcopy(task)
    for override in copy["overrides"]["containerOverrides"]:
        for entry in override.get("environment", []):
            if entry.get("name") == TLS_KEY_ENV:
                entry["value"] = "<hidden>"
    return copy


def _progress(task: dict[str, Any]) -> str:
    """Where a task that is not running yet stands, in ECS's words: its lastStatus, the
    reason ECS gives for a container's status (if any), and its stoppedReason."""
    parts = [f"lastStatus {task.get('lastStatus') or 'unknown'}"]
    for container in task.get("containers", []):
        if reason := container.get("reason"):
            parts.append(
                f"container {container.get('name')} {container.get('lastStatus')}: {reason}"
            )
    if stopped := task.get("stoppedReason"):
        parts.append(f"stoppedReason: {stopped}")
    return "; ".join(parts)


class _CapacityFailure(Exception):
    """run_task answered with a failure that a later attempt may not get (capacity)."""


def started_by(sandbox: SandboxRef) -> str:
    """ECS ``startedBy`` (at most 36 characters) of a sandbox: its owner session."""
    return f"commandlab-{sandbox.labels.get(SESSION, '')}"


def _task_definition(spec: Spec, options: EcsOptions) -> dict[str, Any]:
    linux: dict[str, Any] = {"initProcessEnabled": True}  # reaps orphans of killed commands
    container: dict[str, Any] = {
        "name": _CONTAINER,
        "image": spec.image,
        "essential": True,
        "memory": spec.memory,
        "portMappings": [{"containerPort": spec.daemon_port, "protocol": "tcp"}],
        "linuxParameters": linux,
    }
    if spec.run_as_root:
        container["user"] = "0"
    else:
        linux["capabilities"] = {"drop": ["ALL"]}
    if options.log_configuration is not None:
        container["logConfiguration"] = dict(options.log_configuration)
    definition: dict[str, Any] = {
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(round(spec.cpu * 1024)),
        "memory": str(spec.memory),
        "containerDefinitions": [container],
    }
    if spec.disk is not None:
        definition["ephemeralStorage"] = {"sizeInGiB": fargate_storage_gib(spec.disk)}
    if options.execution_role_arn:
        definition["executionRoleArn"] = options.execution_role_arn
    if options.task_role_arn:
        definition["taskRoleArn"] = options.task_role_arn
    # Content-addressed family: one definition per distinct spec, reused across runs.
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    definition["family"] = f"{spec.name_prefix}-{digest[:16]}"
    return definition


def _options(spec: Spec) -> EcsOptions:
    assert isinstance(spec.options, EcsOptions)  # the registry guarantees it
    return spec.options


class EcsDriver(Driver[EcsTarget]):
    """Driver for :attr:`DockerPlatform.AWS_ECS`: one Fargate task per sandbox."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.AWS_ECS
    # Under ECS's RunTask token bucket (a burst of 100, refilled at 40 per second).
    default_limits = Limits(
        creates_in_flight=50, creates_per_second=40, create_burst=100, probes_in_flight=128
    )

    @classmethod
    def machine_quotas(cls, target: EcsTarget) -> tuple[MachineQuota, ...]:
        # Per account and region: ECS's RunTask bucket (100, refilled at 40/s; "Request
        # throttling for the Amazon ECS API") and Fargate's task launches (100, refilled at
        # 20/s; "AWS Fargate throttling quotas"). The account is not known without a call:
        # processes on one region share, as if one account (at worst too polite).
        region = (
            target.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_ECS") or os.environ.get("AWS_ENDPOINT_URL")
        where = f"region={region}" + (f" endpoint={endpoint}" if endpoint else "")
        return (
            MachineQuota(scope=f"aws-ecs run-task {where}", per_second=40, burst=100),
            MachineQuota(scope=f"aws-fargate launches {where}", per_second=20, burst=100),
        )

    attempts = 5
    first_wait = 0.1
    max_wait = 5.0

    def __init__(self, target: EcsTarget) -> None:
        super().__init__(target)
        self._session: aioboto3.Session | None = None
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._client_lock = asyncio.Lock()
        self._definitions: dict[str, asyncio.Task[str]] = {}
        # name -> (task ARN, exactly one run_task reached ECS and answered). Only an
        # optimisation: without it a sandbox is found by startedBy and its name tag.
        self._tasks: dict[str, tuple[str, bool]] = {}
        # name -> where its task stood when running() last looked (for waiting_on).
        self._progress: dict[str, str] = {}

    async def close(self) -> None:
        # Task definitions stay registered: they are content-addressed, reused by any
        # process with the same spec (a sibling's may be running tasks from one right
        # now: an INACTIVE definition starts no new task), and an ACTIVE one costs nothing.
        await self._stack.aclose()

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return Failure(
                code or status,
                transient=code in _TRANSIENT_CODES or status >= 500,
                not_found=code in _NOT_FOUND_CODES,
            )
        if isinstance(exc, _CapacityFailure):
            return Failure("RESOURCE", transient=True)
        if isinstance(exc, ConnectionError | HTTPClientError):
            # Connection resets and read timeouts: the request may or may not have acted.
            return Failure(None, transient=True)
        if isinstance(exc, BotoCoreError):
            return Failure(None, transient=False)
        return None

    async def _client(self, service: str) -> Any:
        async with self._client_lock:
            if service not in self._clients:
                if self._session is None:
                    self._session = await aws.session()
                try:
                    self._clients[service] = await self._stack.enter_async_context(
                        aws.client(self._session, service, region=self.target.region)
                    )
                except NoRegionError as exc:
                    raise BackendError(
                        "no AWS region: set spec.region or AWS_DEFAULT_REGION",
                        sandbox=None,
                        platform=self.platform,
                    ) from exc
            return self._clients[service]

    async def _definition_arn(self, spec: Spec, name: str) -> str:
        definition = _task_definition(spec, _options(spec))
        family = definition["family"]
        if family not in self._definitions:  # one lookup/registration per distinct spec
            self._definitions[family] = asyncio.ensure_future(
                self._find_or_register(definition, name)
            )
        try:
            return await asyncio.shield(self._definitions[family])
        except BackendError:
            self._definitions.pop(family, None)
            raise

    async def _find_or_register(self, definition: dict[str, Any], name: str) -> str:
        ecs = await self._client("ecs")
        try:
            found = await self.call(
                "describe_task_definition",
                name,
                lambda: ecs.describe_task_definition(taskDefinition=definition["family"]),
            )
        except BackendError as exc:
            # ECS answers an unknown family with a ClientException: register it.
            if exc.code != "ClientException":
                raise
            found = None
        if found is not None and found["taskDefinition"].get("status") == "ACTIVE":
            arn: str = found["taskDefinition"]["taskDefinitionArn"]
            return arn  # registered earlier (by anyone): reuse
        answer = await self.call(
            "register_task_definition", name, lambda: ecs.register_task_definition(**definition)
        )
        arn = answer["taskDefinition"]["taskDefinitionArn"]
        return arn

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        options = _options(spec)
        name = identity.name
        definition_arn = await self._definition_arn(spec, name)
        ecs = await self._client("ecs")
        tags = [{"key": k, "value": v} for k, v in identity.labels.items()]
        tags.append({"key": NAME_TAG, "value": name})
        env = daemon_env(spec, identity)
        if options.assign_public_ip:
            # Reached across the internet: HTTPS with a certificate made for this task.
            # ECS has no secret environment short of Secrets Manager, so DescribeTasks
            # shows the key to whoever may call it (never to the network).
            self._tls[name] = tls = await make_sandbox_tls(name)
            env.update(tls.daemon_env())
        environment = [{"name": k, "value": v} for k, v in env.items()]
        attempts = 0

        async def run_task() -> str:
            nonlocal attempts
            attempts += 1
            answer = await ecs.run_task(
                cluster=self.target.cluster,
                taskDefinition=definition_arn,
                launchType="FARGATE",
                count=1,
                startedBy=started_by(identity),
                tags=tags,
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": list(options.subnets),
                        "securityGroups": list(options.security_groups),
                        "assignPublicIp": "ENABLED" if options.assign_public_ip else "DISABLED",
                    }
                },
                overrides={
                    "containerOverrides": [{"name": _CONTAINER, "environment": environment}]
                },
            )
            if not answer.get("tasks"):
                failures = answer.get("failures", [])
                reasons = "; ".join(
                    f"{f.get('reason')} {f.get('detail', '')}".strip() for f in failures
                )
                # ECS's failure reasons for "no capacity now" (RESOURCE:MEMORY..., and
                # Fargate's "Capacity is unavailable at this time") may pass on a retry.
                if any(str(f.get("reason", "")).startswith(_CAPACITY) for f in failures):
                    raise _CapacityFailure(reasons)
                raise BackendError(
                    f"run_task placed no task: {reasons or 'no reason given'}",
                    sandbox=name,
                    platform=self.platform,
                )
            arn: str = answer["tasks"][0]["taskArn"]
            return arn

        arn = await self.call("run_task", name, run_task)
        # A retried run_task may have started a task whose answer was lost: then the
        # ARN is not enough, and destroy searches by startedBy and name.
        self._tasks[name] = (arn, attempts == 1)

    async def _describe(self, arns: list[str], name: str | None) -> dict[str, Any]:
        ecs = await self._client("ecs")
        answer: dict[str, Any] = await self.call(
            "describe_tasks",
            name,
            lambda: ecs.describe_tasks(cluster=self.target.cluster, tasks=arns, include=["TAGS"]),
        )
        return answer

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        arn, _ = self._tasks[identity.name]
        delay = 0.1
        while True:
            tasks = (await self._describe([arn], identity.name)).get("tasks", [])
            if not tasks:
                raise SandboxExitedError(
                    "task is gone", sandbox=identity.name, platform=self.platform, state="gone"
                )
            task = tasks[0]
            self._raise_if_stopped(identity.name, task)
            if task.get("lastStatus") == "RUNNING":
                self._progress.pop(identity.name, None)
                return await self._running(spec, identity.name, task)
            self._progress[identity.name] = _progress(task)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _running(self, spec: Spec, name: str, task: dict[str, Any]) -> RunningSandbox:
        details = {
            d["name"]: d["value"]
            for attachment in task.get("attachments", [])
            if attachment.get("type") == "ElasticNetworkInterface"
            for d in attachment.get("details", [])
        }
        addresses = {}
        if private_ip := details.get("privateIPv4Address"):
            addresses["private"] = private_ip
        if _options(spec).assign_public_ip and (eni := details.get("networkInterfaceId")):
            ec2 = await self._client("ec2")
            answer = await self.call(
                "describe_network_interfaces",
                name,
                lambda: ec2.describe_network_interfaces(NetworkInterfaceIds=[eni]),
            )
            for interface in answer.get("NetworkInterfaces", []):
                if public_ip := interface.get("Association", {}).get("PublicIp"):
                    addresses["public"] = public_ip
        ip = addresses.get("public") or addresses.get("private")
        tls = self._tls.get(name)
        return RunningSandbox(
            name=name,
            platform=self.platform,
            port=spec.daemon_port,
            addresses=addresses,
            url=f"{'https' if tls else 'http'}://{ip}:{spec.daemon_port}" if ip else None,
            raw=_without_key(task),
            ssl=tls.client_context() if tls else None,
        )

    def _raise_if_stopped(self, name: str, task: dict[str, Any]) -> None:
        if task.get("lastStatus") in _STOPPING or task.get("desiredStatus") == "STOPPED":
            reason = task.get("stoppedReason") or "no reason given"
            raise SandboxExitedError(
                f"task stopped before its daemon answered: {reason}",
                sandbox=name,
                platform=self.platform,
                state=f"{task.get('lastStatus')}: {reason}",
            )

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        return self._progress.get(sandbox.name)

    def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        raise UnsupportedOperationError(
            "ECS keeps no log of a task itself: read it in CloudWatch Logs, in the log group"
            " its task definition's logConfiguration names (the log_configuration option)",
            sandbox=sandbox.name,
        )

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        known = self._tasks.get(sandbox.name)
        arns = [known[0]] if known else await self._find(sandbox)
        if not arns:
            return SandboxState("no running task", terminal=True)
        tasks = (await self._describe(arns[:1], sandbox.name)).get("tasks", [])
        if not tasks:
            return SandboxState("gone", terminal=True)
        task = tasks[0]
        status = str(task.get("lastStatus"))
        if status in _STOPPING or task.get("desiredStatus") == "STOPPED":
            return SandboxState(f"{status}: {task.get('stoppedReason') or 'stopping'}", True)
        return SandboxState(status)

    async def destroy(self, sandbox: SandboxRef) -> None:
        known = self._tasks.get(sandbox.name)
        arns = [known[0]] if known and known[1] else await self._find(sandbox)
        ecs = await self._client("ecs")
        for arn in arns:
            try:
                await self.call(
                    "stop_task",
                    sandbox.name,
                    lambda arn=arn: ecs.stop_task(  # type: ignore[misc]
                        cluster=self.target.cluster, task=arn, reason="deleted by commandlab"
                    ),
                )
            except BackendError:
                if not await self._stopped_or_missing(arn, sandbox.name):
                    raise
        self._tasks.pop(sandbox.name, None)
        self._tls.pop(sandbox.name, None)
        self._progress.pop(sandbox.name, None)

    async def _stopped_or_missing(self, arn: str, name: str) -> bool:
        """Whether ECS says the task is stopped or does not know it (a refused stop is fine)."""
        answer = await self._describe([arn], name)
        if any(f.get("reason") == "MISSING" for f in answer.get("failures", [])):
            return True
        return all(t.get("lastStatus") == "STOPPED" for t in answer.get("tasks", []))

    async def _find(self, sandbox: SandboxRef) -> list[str]:
        """Running tasks of the sandbox's owner session carrying its name tag."""
        ecs = await self._client("ecs")
        found = []
        paginator = ecs.get_paginator("list_tasks")
        pages = paginator.paginate(
            cluster=self.target.cluster, startedBy=started_by(sandbox), desiredStatus="RUNNING"
        )
        async for tasks in self._described(pages, sandbox.name):
            found += [t["taskArn"] for t in tasks if _tags(t).get(NAME_TAG) == sandbox.name]
        return found

    async def _described(self, pages: Any, name: str | None) -> AsyncIterator[list[Any]]:
        """The tasks of list_tasks pages, described 100 at a time (describe_tasks' most)."""
        try:
            async for page in pages:
                arns = page.get("taskArns", [])
                for start in range(0, len(arns), 100):
                    answer = await self._describe(arns[start : start + 100], name)
                    yield answer.get("tasks", [])
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, "list_tasks", name) from exc

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        ecs = await self._client("ecs")
        pages = ecs.get_paginator("list_tasks").paginate(
            cluster=self.target.cluster, desiredStatus="RUNNING"
        )
        records = []
        async for tasks in self._described(pages, None):
            for task in tasks:
                tags = _tags(task)
                name = tags.get(NAME_TAG)
                if name and all(tags.get(k) == v for k, v in labels.items()):
                    records.append(SandboxRecord(name, tags, str(task.get("lastStatus"))))
        return records


def _tags(task: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in task.get("tags", [])}
