"""A fleet of emulated Fargate tasks: does bring-up overlap, or add up?

moto runs in server mode on loopback as the ECS API. Every task takes ``--latency``
seconds (default 2) to "boot": its daemon stand-in — one in-process HTTP server that
knows every task's token — refuses health checks until then. If the library brings
tasks up concurrently, time-to-all-ready is about one latency; one after another it
would be N latencies. Prints time-to-all-ready / latency (1.0 is the floor).

Run:  .venv/bin/python benchmarks/fleet_ecs.py [--count 100] [--latency 2]
(needs the dev extras: aioboto3 and moto[server])
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time

import aioboto3
from aiohttp import web

from commandlab_async import (
    DockerPlatform,
    DockerSpec,
    EcsOptions,
    EventKind,
    LifecycleEvent,
    RunningSandbox,
    provision_many,
)
from commandlab_async.emulators.moto import MotoServer, pin_ecs_tasks

REGION = "us-east-1"


class StandInDaemons:
    """Answers /health for a task's token once the task has 'booted'."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.ready_at: dict[str, float] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def resolve(self, task: RunningSandbox) -> str:
        (override,) = task.raw["overrides"]["containerOverrides"]
        env = {e["name"]: e["value"] for e in override["environment"]}
        self.ready_at.setdefault(env["COMMANDLAB_TOKEN_SHA256"], time.monotonic() + self.latency)
        return self.url

    async def _health(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-CommandLab-Token", "")
        ready_at = self.ready_at.get(hashlib.sha256(token.encode()).hexdigest())
        if ready_at is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        if time.monotonic() < ready_at:
            return web.json_response({"error": "booting"}, status=503)
        return web.json_response({"version": "stand-in", "uptime": 0.0})


async def prepare(url: str) -> tuple[str, str]:
    await pin_ecs_tasks(url)
    session = aioboto3.Session()
    async with (
        session.client("ec2", region_name=REGION) as ec2,
        session.client("ecs", region_name=REGION) as ecs,
    ):
        subnet = (await ec2.describe_subnets())["Subnets"][0]
        group = await ec2.create_security_group(
            GroupName="bench", Description="bench", VpcId=subnet["VpcId"]
        )
        await ecs.create_cluster(clusterName="default")
    return subnet["SubnetId"], group["GroupId"]


async def run(count: int, latency: float) -> None:
    moto = MotoServer()
    url = moto.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=url,
    )
    daemons = StandInDaemons(latency)
    await daemons.start()
    try:
        subnet, group = await prepare(url)
        spec = DockerSpec(
            platform=DockerPlatform.AWS_ECS,
            region=REGION,
            options=EcsOptions(subnets=(subnet,), security_groups=(group,)),
            endpoint_resolver=daemons.resolve,
            ready_timeout=300,
        )
        events: list[LifecycleEvent] = []
        started_at = time.time()
        started = time.perf_counter()
        async with provision_many(spec, count=count, on_event=events.append) as fleet:
            ready = time.perf_counter() - started
            assert len(fleet) == count
            exit_started = time.perf_counter()
        destroyed = time.perf_counter() - exit_started
    finally:
        await daemons.close()
        moto.stop()
    print(
        f"{'tasks':>6} {'latency s':>10} {'all ready s':>12} {'ready/latency':>14} "
        f"{'all stopped s':>14}"
    )
    print(f"{count:>6} {latency:>10.2f} {ready:>12.2f} {ready / latency:>14.2f} {destroyed:>14.2f}")
    print("when each step was reached (seconds from the provision_many call):")
    for kind in (EventKind.CREATING, EventKind.CREATED, EventKind.RUNNING, EventKind.READY):
        times = sorted(e.at - started_at for e in events if e.kind is kind)
        print(f"  {kind.value:>9}: first {times[0]:5.2f} s, last {times[-1]:5.2f} s")
    print(
        f"one after another would take ≥ {count * latency:.0f} s "
        f"(ratio {count:.0f}); concurrent bring-up is the point"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--latency", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.latency))


if __name__ == "__main__":
    main()
