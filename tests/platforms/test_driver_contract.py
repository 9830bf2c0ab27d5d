"""The contract every driver keeps, run against each backend through one fixture.

Each backend plugs in with a :class:`Backend` harness: how to make a spec, how to see
what lives on the backend, which request creates a sandbox (for fault rules on its
proxy), what throttling and a permanent refusal look like on its wire, and a spec whose
sandbox stops before its daemon answers. The ACI, Cloud Run and Kubernetes emulators add
one harness each.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import aiodocker
import pytest
from azure.core.exceptions import HttpResponseError
from botocore.exceptions import ClientError
from google.api_core.exceptions import GoogleAPICallError
from google.protobuf.json_format import MessageToDict
from kubernetes_asyncio.client.exceptions import ApiException

from commandlab_async import (
    AuthenticationError,
    BackendError,
    Computer,
    DockerSpec,
    RunningSandbox,
    SandboxExitedError,
    provision,
    provision_many,
)
from commandlab_async._lifecycle.identity import SESSION_ID, new_identity
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.emulators.aci import AciEmulator
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.emulators.faults import FaultyProxy, Rule
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.labels import SESSION
from commandlab_async.platforms.aws_ecs.driver import NAME_TAG
from commandlab_async.platforms.driver import Driver
from commandlab_async.specs import Spec
from tests.conftest import EXITS_IMAGE, docker, our_containers
from tests.platforms.aws_support import Aws
from tests.platforms.azure_support import aci_spec
from tests.platforms.gcp_support import cloud_run_spec
from tests.platforms.k8s_support import NAMESPACE, kube_spec, our_pods


class Faults(Protocol):
    """Where a backend's requests are seen and faults injected (a proxy, an emulator)."""

    def add(self, rule: Rule) -> Rule: ...
    def calls(self, pattern: str) -> list[Any]: ...


@dataclass
class Backend:
    """What the contract needs to know about one backend."""

    spec: Callable[..., Spec]
    live: Callable[[], Awaitable[list[str]]]
    """Names of this process's sandboxes that still exist (or run) on the backend."""
    proxy: Faults
    create_call: str
    """The proxy's name for the request that creates a sandbox."""
    throttled: Rule
    """An answer that means "slow down" (a template: copied per use)."""
    refused: Rule
    """A permanent refusal of a create."""
    sdk_error: type[BaseException]
    exits: Callable[[], Spec]
    """A spec whose sandbox stops before its daemon answers."""
    exit_reason: str
    """A regex the SandboxExitedError's message matches: the backend's own reason."""
    describe: Callable[[str], Awaitable[Any]]
    """Everything the backend tells whoever may read the sandbox's configuration."""


def _rule(template: Rule, **changes: Any) -> Rule:
    fields = {k: getattr(template, k) for k in ("pattern", "status", "body")}
    return Rule(**{**fields, **changes})


@pytest.fixture
def docker_backend(docker_proxy: FaultyProxy) -> Backend:
    async def live() -> list[str]:
        return our_containers()

    async def inspect(name: str) -> Any:
        return json.loads(docker("inspect", name))

    return Backend(
        spec=lambda **kw: DockerSpec(**{"ready_timeout": 60, **kw}),
        live=live,
        proxy=docker_proxy,
        create_call=r"POST /containers/create",
        throttled=Rule(r"POST /containers/create", status=503),
        refused=Rule(r"POST /containers/create", status=400, body={"message": "bad parameter"}),
        sdk_error=aiodocker.DockerError,
        exits=lambda: DockerSpec(image=EXITS_IMAGE, ready_timeout=60),
        exit_reason=r"exit code 3|gone",
        describe=inspect,
    )


@pytest.fixture
def ecs_backend(aws: Aws) -> Backend:
    async def live() -> list[str]:
        return [
            {t["key"]: t["value"] for t in task["tags"]}[NAME_TAG]
            for task in await aws.tasks()
            if task["lastStatus"] != "STOPPED" and task["startedBy"] == f"commandlab-{SESSION_ID}"
        ]

    async def describe(name: str) -> Any:
        return [t for t in await aws.tasks() if {"key": NAME_TAG, "value": name} in t["tags"]]

    async def stops(task: RunningSandbox) -> str:
        async with aws.session.client(
            "ecs", region_name="us-east-1", endpoint_url=aws.moto_url
        ) as ecs:
            await ecs.stop_task(
                cluster="default", task=task.raw["taskArn"], reason="Essential container exited"
            )
        return "http://127.0.0.1:9"  # discard port: nothing answers

    return Backend(
        spec=aws.spec,
        live=live,
        proxy=aws.proxy,
        create_call="RunTask",
        throttled=Rule("RunTask", status=400, body={"__type": "ThrottlingException"}),
        refused=Rule(
            "RunTask",
            status=400,
            body={"__type": "InvalidParameterException", "message": "no such subnet"},
        ),
        sdk_error=ClientError,
        exits=lambda: aws.spec(endpoint_resolver=stops, ready_timeout=30),
        exit_reason="Essential container exited",
        describe=describe,
    )


@pytest.fixture
def cloud_run_backend(cloud_run: CloudRunEmulator) -> Backend:
    async def describe(name: str) -> Any:
        (service,) = [s for s in cloud_run.services.values() if s.name.endswith(f"/{name}")]
        return MessageToDict(service)

    return Backend(
        spec=cloud_run_spec,
        live=lambda: asyncio.sleep(0, sorted(cloud_run.live())),
        proxy=cloud_run,
        create_call="CreateService",
        throttled=Rule("CreateService", status=429, body={"reason": "RATE_LIMIT_EXCEEDED"}),
        refused=Rule("CreateService", status=400, body={"message": "invalid template"}),
        sdk_error=GoogleAPICallError,
        exits=lambda: cloud_run_spec(image=EXITS_IMAGE),
        exit_reason="failed to start and listen on the port",
        describe=describe,
    )


@pytest.fixture
def aci_backend(aci: AciEmulator) -> Backend:
    async def describe(name: str) -> Any:
        # What ARM answered last about the group, to anyone with read access.
        answers = [r for r in aci.calls("GET group") if r.path.endswith(f"/{name}")]
        return json.loads(answers[-1].response)

    return Backend(
        spec=lambda **kw: aci_spec(aci, **kw),
        live=lambda: asyncio.sleep(0, sorted(aci.live())),
        proxy=aci,
        create_call="PUT group",
        throttled=Rule("PUT group", status=429),
        refused=Rule(
            "PUT group",
            status=400,
            body={"error": {"code": "InvalidImageName", "message": "bad image reference"}},
        ),
        sdk_error=HttpResponseError,
        exits=lambda: aci_spec(aci, image=EXITS_IMAGE),
        exit_reason="exited with code 3",
        describe=describe,
    )


@pytest.fixture
def kubernetes_backend(kube: KubeEmulator) -> Backend:
    async def describe(name: str) -> Any:
        # The pod as anyone allowed to read pods in the namespace sees it.
        return copy.deepcopy(kube.get("pods", NAMESPACE, name))

    return Backend(
        spec=kube_spec,
        live=lambda: asyncio.sleep(0, our_pods(kube)),
        proxy=kube,
        create_call="POST pods",
        throttled=Rule("POST pods", status=429),
        refused=Rule("POST pods", status=403),
        sdk_error=ApiException,
        # The test images run as root, which a locked-down pod refuses to start.
        exits=lambda: kube_spec(image=EXITS_IMAGE, run_as_root=True),
        exit_reason="exited with code 3",
        describe=describe,
    )


@pytest.fixture(
    params=[
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("ecs", marks=pytest.mark.aws),
        pytest.param("cloud_run", marks=pytest.mark.docker),
        pytest.param("aci", marks=pytest.mark.docker),
        pytest.param("kubernetes", marks=pytest.mark.docker),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """One harness per backend; the emulated clouds add theirs here."""
    harness: Backend = request.getfixturevalue(f"{request.param}_backend")
    return harness


async def test_create_then_running_then_ready(backend: Backend) -> None:
    async with provision(backend.spec()) as computer:
        assert (await computer.run("echo ok")).stdout == "ok\n"
        assert await backend.live() == [computer.name]
    assert await backend.live() == []


async def test_cancel_while_create_is_in_flight(backend: Backend) -> None:
    slow = backend.proxy.add(Rule(backend.create_call, delay_after=0.5))

    async def user() -> None:
        async with provision(backend.spec()):
            pytest.fail("the body must not run")

    task = asyncio.create_task(user())
    await slow.seen.wait()
    await asyncio.sleep(0.1)  # the backend has acted; its answer is held back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend.live() == []


async def test_lost_create_answer_is_found_and_deleted(backend: Backend) -> None:
    backend.proxy.add(Rule(backend.create_call, drop=True, forward=True, times=1))
    async with provision(backend.spec()) as computer:
        assert set(await backend.live()) == {computer.name}
    assert len(backend.proxy.calls(backend.create_call)) == 2
    assert await backend.live() == []


async def test_throttling_is_retried(backend: Backend) -> None:
    rule = backend.proxy.add(_rule(backend.throttled, times=2))
    async with provision(backend.spec()):
        pass
    assert rule.times == 0
    assert len(backend.proxy.calls(backend.create_call)) == 3


async def test_sandbox_that_exits_fails_fast_with_the_reason(backend: Backend) -> None:
    with pytest.raises(SandboxExitedError, match=backend.exit_reason):
        async with provision(backend.exits()):
            pytest.fail("the body must not run")
    assert await backend.live() == []


async def test_errors_are_translated_with_the_sdk_error_as_cause(backend: Backend) -> None:
    backend.proxy.add(backend.refused)
    with pytest.raises(BackendError) as info:
        async with provision(backend.spec()):
            pytest.fail("the body must not run")
    assert info.value.transient is False
    assert info.value.code is not None
    assert isinstance(info.value.__cause__, backend.sdk_error)
    assert len(backend.proxy.calls(backend.create_call)) == 1


async def _driver(stack: AsyncExitStack, spec: Spec) -> Driver[Any]:
    return (await open_backend(stack, spec.target())).driver


async def test_destroy_is_idempotent_and_not_found_is_success(backend: Backend) -> None:
    spec = backend.spec()
    async with AsyncExitStack() as stack:
        driver = await _driver(stack, spec)
        await driver.destroy(new_identity(spec))  # never created
        identity = new_identity(spec)
        await driver.create(spec, identity)
        assert await backend.live() == [identity.name]
        await driver.destroy(identity)
        await driver.destroy(identity)
        assert await backend.live() == []


async def test_list_by_labels_returns_exactly_ours(backend: Backend) -> None:
    specs = [backend.spec(labels={"contract": team}) for team in ("a", "b")]
    async with provision_many(specs) as fleet, AsyncExitStack() as stack:
        driver = await _driver(stack, specs[0])
        mine = {SESSION: SESSION_ID}
        found = await driver.list_sandboxes({**mine, "contract": "a"})
        assert [r.name for r in found] == [fleet[0].name]
        assert found[0].labels["contract"] == "a"
        both = await driver.list_sandboxes(mine)
        assert sorted(r.name for r in both) == sorted(c.name for c in fleet)
        assert await driver.list_sandboxes({**mine, "contract": "nobody"}) == []


def _strings(value: Any) -> set[str]:
    """Every string in a JSON-like document, and each ``NAME=value`` split in two."""
    if isinstance(value, str):
        return {value, *value.split("=", 1)}
    if isinstance(value, dict):
        return {s for k, v in value.items() for s in (*_strings(k), *_strings(v))}
    if isinstance(value, list):
        return {s for item in value for s in _strings(item)}
    return set()


async def test_backend_description_holds_nothing_that_authenticates(backend: Backend) -> None:
    async with provision(backend.spec()) as computer:
        token = computer._headers["X-CommandLab-Token"]
        candidates = _strings(await backend.describe(computer.name)) - {""}
        assert len(candidates) > 10, "the description was read"
        assert token not in candidates
        for candidate in sorted(candidates):
            impostor = Computer(
                name=computer.name,
                url=computer.url,
                token=candidate,
                session=computer._session,
                platform=computer.platform,
                # Everything else the real client has: only the token differs.
                ssl_context=computer._ssl if isinstance(computer._ssl, ssl.SSLContext) else None,
                extra_headers=computer._extra_headers,
            )
            with pytest.raises(AuthenticationError) as refused:
                await impostor.health()
            assert refused.value.status == 401, "refused by the daemon, not on the way"
