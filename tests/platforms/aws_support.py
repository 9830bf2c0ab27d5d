"""moto in server mode behind a fault proxy, and real local daemons standing in for tasks."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import pytest

from commandlab_async import DockerPlatform, DockerSpec, EcsOptions, RunningSandbox
from commandlab_async.emulators.faults import FaultyHttpProxy
from commandlab_async.emulators.moto import MotoServer, pin_ecs_tasks, reset
from tests.daemon.daemon_bundle import daemon_argv

DAEMON = daemon_argv  # python3 -I -S <the daemon's zipapp>, as an image runs it
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real moto HTTP server on loopback for the whole session."""
    with MotoServer() as moto:
        yield moto.url


class LocalDaemons:
    """Endpoint resolver: each running task gets a real daemon on 127.0.0.1 with the
    token, port and TTL the task was given, so the whole path runs for real. Never
    connects to the 10.x addresses moto invents."""

    def __init__(self, latency: float = 0.0, moto_url: str | None = None) -> None:
        self.latency = latency
        self.moto_url = moto_url
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def __call__(self, task: RunningSandbox) -> str:
        assert task.addresses["private"].startswith("10.")  # moto's ENI: checked, never used
        raw = task.raw
        (override,) = raw["overrides"]["containerOverrides"]
        hidden = any(e["value"] == "<hidden>" for e in override["environment"])
        if hidden and self.moto_url is not None:
            # The task as ECS holds it: the driver hides the TLS key in what it hands on.
            async with aioboto3.Session().client(
                "ecs", region_name=REGION, endpoint_url=self.moto_url
            ) as ecs:
                (raw,) = (await ecs.describe_tasks(cluster="default", tasks=[raw["taskArn"]]))[
                    "tasks"
                ]
        (override,) = raw["overrides"]["containerOverrides"]
        env = {e["name"]: e["value"] for e in override["environment"]}
        await asyncio.sleep(self.latency)  # the simulated provisioning time
        proc = await asyncio.create_subprocess_exec(
            *DAEMON(),
            env={
                **env,
                "COMMANDLAB_HOST": "127.0.0.1",
                "COMMANDLAB_PORT": "0",
                "PATH": os.environ["PATH"],
            },
            stderr=asyncio.subprocess.PIPE,
        )
        self.procs[task.raw["taskArn"]] = proc
        assert proc.stderr is not None
        line = (await proc.stderr.readline()).decode()
        port = re.search(r":(\d+)\s*$", line)
        assert port, line
        scheme = "https" if task.url and task.url.startswith("https:") else "http"
        return f"{scheme}://127.0.0.1:{port.group(1)}"

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@dataclass
class Aws:
    proxy: FaultyHttpProxy
    subnet: str
    security_group: str
    daemons: LocalDaemons
    moto_url: str
    session: aioboto3.Session = field(default_factory=aioboto3.Session)

    def spec(self, options: dict[str, Any] | None = None, **kwargs: Any) -> DockerSpec:
        """An ECS spec for moto's network; ``options`` overrides EcsOptions fields."""
        ecs = {"subnets": (self.subnet,), "security_groups": (self.security_group,)}
        fields: dict[str, Any] = {
            "platform": DockerPlatform.AWS_ECS,
            "region": REGION,
            "options": EcsOptions(**{**ecs, **(options or {})}),
            "endpoint_resolver": self.daemons,
        }
        return DockerSpec(**{**fields, **kwargs})

    async def tasks(self) -> list[dict[str, Any]]:
        """Every task on the default cluster, straight from moto (not through the proxy)."""
        async with self.session.client(
            "ecs", region_name=REGION, endpoint_url=self.moto_url
        ) as ecs:
            arns = (await ecs.list_tasks(cluster="default"))["taskArns"]
            if not arns:
                return []
            described = await ecs.describe_tasks(cluster="default", tasks=arns, include=["TAGS"])
            return list(described["tasks"])


@pytest.fixture
async def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Aws]:
    await reset(moto_url)
    await pin_ecs_tasks(moto_url)  # by default every describe_tasks moves them towards STOPPED
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_ECS", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    session = aioboto3.Session()
    async with (
        session.client("ec2", region_name=REGION, endpoint_url=moto_url) as ec2,
        session.client("ecs", region_name=REGION, endpoint_url=moto_url) as ecs,
    ):
        subnet = (await ec2.describe_subnets())["Subnets"][0]
        group = await ec2.create_security_group(
            GroupName="sandboxes", Description="test", VpcId=subnet["VpcId"]
        )
        await ecs.create_cluster(clusterName="default")
    proxy = FaultyHttpProxy(moto_url)
    await proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    daemons = LocalDaemons(moto_url=moto_url)
    env = Aws(proxy, subnet["SubnetId"], group["GroupId"], daemons, moto_url, session)
    try:
        yield env
        # Nothing leaks: every task this test started is stopped.
        assert [t["taskArn"] for t in await env.tasks() if t["lastStatus"] != "STOPPED"] == []
    finally:
        await daemons.close()
        await proxy.close()
