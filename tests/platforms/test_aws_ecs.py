"""The ECS/Fargate driver against moto in server mode, with real daemons behind tasks."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace

import pytest

from commandlab_async import (
    DockerPlatform,
    DockerSpec,
    ReadyTimeoutError,
    RunningSandbox,
    SpecError,
    gc,
    provision,
    provision_many,
)
from commandlab_async._lifecycle.identity import SESSION_ID, new_identity
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.emulators.faults import Rule
from commandlab_async.labels import EXPIRES_AT
from commandlab_async.platforms.aws_ecs.driver import NAME_TAG
from tests.platforms.aws_support import REGION, Aws

pytestmark = pytest.mark.aws


async def test_happy_path_end_to_end(aws: Aws) -> None:
    async with provision(aws.spec(labels={"team": "evals"})) as computer:
        r = await computer.run("echo hello from $COMMANDLAB_PORT")
        assert r.stdout == "hello from 0\n"  # the local stand-in daemon listens on port 0
        (task,) = await aws.tasks()
        assert task["lastStatus"] == "RUNNING"
        assert task["startedBy"] == f"commandlab-{SESSION_ID}"
        tags = {t["key"]: t["value"] for t in task["tags"]}
        assert tags[NAME_TAG] == computer.name
        assert tags["team"] == "evals"
    (task,) = await aws.tasks()
    assert task["lastStatus"] == "STOPPED"
    assert aws.proxy.calls("RegisterTaskDefinition") == ["RegisterTaskDefinition"]
    # Content-addressed and maybe in use by a sibling process: never deregistered.
    assert aws.proxy.calls("DeregisterTaskDefinition") == []


async def test_a_public_ip_means_https_with_a_pinned_certificate(aws: Aws) -> None:
    seen: list[RunningSandbox] = []

    async def resolver(task: RunningSandbox) -> str:
        seen.append(task)
        return await aws.daemons(task)

    spec = aws.spec({"assign_public_ip": True}, endpoint_resolver=resolver)
    async with provision(spec) as computer:
        assert computer.url.startswith("https://127.0.0.1:")
        assert (await computer.health())["tls"] is True
        assert (await computer.run("echo ok")).stdout == "ok\n"
        (task,) = await aws.tasks()
    (running,) = seen
    assert running.url is not None
    assert running.url.startswith("https://")
    assert isinstance(running.ssl, ssl.SSLContext)
    # ECS shows overrides to whoever may describe the task (documented); what we hand on
    # (the resolver, logs, reprs) never holds the key.
    (override,) = task["overrides"]["containerOverrides"]
    assert "COMMANDLAB_TLS_KEY" in {e["name"] for e in override["environment"]}
    assert "PRIVATE KEY" not in repr(running)


async def test_a_private_ip_stays_plain_http(aws: Aws) -> None:
    async with provision(aws.spec()) as computer:
        assert computer.url.startswith("http://127.0.0.1:")
        assert (await computer.health())["tls"] is False


@pytest.mark.parametrize("root", [False, True], ids=["unprivileged", "root"])
async def test_task_definition_drops_capabilities_unless_root(aws: Aws, root: bool) -> None:
    async with provision(aws.spec(run_as_root=root)):
        (task,) = await aws.tasks()
    async with aws.session.client("ecs", region_name=REGION, endpoint_url=aws.moto_url) as ecs:
        answer = await ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    (container,) = answer["taskDefinition"]["containerDefinitions"]
    linux = container["linuxParameters"]
    assert linux["initProcessEnabled"] is True
    if root:
        assert container["user"] == "0"
        assert "capabilities" not in linux
    else:
        assert "user" not in container  # the image's unprivileged user
        assert linux["capabilities"]["drop"] == ["ALL"]
    assert "ephemeralStorage" not in answer["taskDefinition"]  # Fargate's 20 GiB default


async def test_disk_sizes_the_tasks_ephemeral_storage(aws: Aws) -> None:
    async with provision(aws.spec(disk=30 * 1024 + 1)):
        (task,) = await aws.tasks()
    async with aws.session.client("ecs", region_name=REGION, endpoint_url=aws.moto_url) as ecs:
        answer = await ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    assert answer["taskDefinition"]["ephemeralStorage"] == {"sizeInGiB": 31}  # rounded up


async def test_fleet_of_twenty(aws: Aws) -> None:
    async with provision_many(aws.spec(), count=20) as fleet:
        results = await asyncio.gather(*(c.run("echo $$") for c in fleet))
        assert len({r.stdout for r in results}) == 20  # twenty distinct daemons
        assert len(await aws.tasks()) == 20
    assert len(aws.proxy.calls("RegisterTaskDefinition")) == 1  # reused across the fleet
    assert len(aws.proxy.calls("RunTask")) == 20


async def test_invalid_spec_makes_no_aws_call(aws: Aws) -> None:
    for bad in ({"cpu": 0.3}, {"memory": 1000}, {"pids_limit": 64}, {"daemon_port": 80}):
        with pytest.raises(SpecError):
            async with provision(aws.spec(**bad)):
                pass
    with pytest.raises(SpecError):
        aws.spec({"subnets": ()})
    assert aws.proxy.requests == []


def test_without_the_aws_extra_choosing_the_platform_names_it() -> None:
    # When the spec is made, as the README says: not later, at provision.
    code = (
        "import sys; sys.modules['aioboto3'] = None\n"
        "from commandlab_async import *\n"
        "try: DockerSpec(platform=DockerPlatform.AWS_ECS, "
        "options=EcsOptions(subnets=('s',), security_groups=('g',)))\n"
        "except MissingExtraError as e: print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'commandlab-async[aws]'" in out
    assert DockerPlatform.AWS_ECS.value in out


def test_spec_needs_network_fields() -> None:
    with pytest.raises(SpecError) as info:
        DockerSpec(platform=DockerPlatform.AWS_ECS)
    assert info.value.field == "subnets"


async def test_gc_sweeps_the_cluster_and_region_it_is_given(aws: Aws) -> None:
    async with aws.session.client("ecs", region_name=REGION, endpoint_url=aws.moto_url) as ecs:
        await ecs.create_cluster(clusterName="evals")
    evals = aws.spec({"cluster": "evals"})
    expired = {EXPIRES_AT: str(int(time.time()) - 10)}
    async with AsyncExitStack() as stack:
        driver = (await open_backend(stack, evals.target())).driver
        stale = new_identity(evals)
        stale = replace(stale, labels={**stale.labels, **expired})
        await driver.create(evals, stale)
    # The default cluster has nothing of ours: sweeping it leaves the other one alone.
    assert await gc(aws.spec()) == []
    env = {**os.environ, "AWS_ENDPOINT_URL": aws.proxy.url}
    args = ["--platform", "aws-ecs", "--region", REGION, "--cluster", "evals", "--dry-run"]
    # Not subprocess.run: the proxy it talks to is served by this test's event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commandlab_async.integrations.cli",
        "gc",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    line = f"would delete aws-ecs[region={REGION}, cluster=evals] {stale.name}: expired"
    assert line in out.decode(), err.decode()
    reaped = await gc(evals)
    assert [(r.name, r.reason) for r in reaped] == [(stale.name, "expired")]
    async with aws.session.client("ecs", region_name=REGION, endpoint_url=aws.moto_url) as ecs:
        arns = (await ecs.list_tasks(cluster="evals", desiredStatus="RUNNING"))["taskArns"]
    assert arns == []


def test_gc_refuses_a_scope_the_platform_does_not_have() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commandlab_async.integrations.cli", "gc", "--namespace", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2  # bad usage
    assert "namespace: does not scope this platform" in done.stderr


async def test_no_capacity_now_is_retried(aws: Aws) -> None:
    full = {"tasks": [], "failures": [{"reason": "Capacity is unavailable at this time."}]}
    rule = aws.proxy.add(Rule("RunTask", status=200, body=full, times=1))
    async with provision(aws.spec()):
        pass
    assert rule.times == 0
    assert len(aws.proxy.calls("RunTask")) == 2


@pytest.mark.parametrize(
    ("status", "container", "expected"),
    [
        ("PROVISIONING", {}, "lastStatus PROVISIONING"),
        (
            "PENDING",
            {"reason": "ResourceInitializationError: unable to pull secrets or registry auth"},
            "lastStatus PENDING; container computer PENDING: ResourceInitializationError",
        ),
    ],
    ids=["provisioning", "pending-with-reason"],
)
async def test_a_ready_timeout_names_the_tasks_last_status(
    aws: Aws, status: str, container: dict[str, str], expected: str
) -> None:
    # moto starts every task RUNNING: ECS's answer while Fargate is still placing it is
    # given here instead (the task itself is real, and stopped at the end).
    task = {
        "taskArn": f"arn:aws:ecs:{REGION}:123456789012:task/default/0123456789abcdef",
        "lastStatus": status,
        "desiredStatus": "RUNNING",
        "containers": [{"name": "computer", "lastStatus": "PENDING", **container}],
    }
    aws.proxy.add(Rule("DescribeTasks", status=200, body={"tasks": [task], "failures": []}))
    with pytest.raises(ReadyTimeoutError) as info:
        async with provision(aws.spec(ready_timeout=1.5)):
            pytest.fail("the body must not run")
    assert expected in info.value.state, info.value.state
    assert "created; waiting for the backend to run it" in info.value.state
    assert aws.proxy.calls("StopTask") == ["StopTask"]
