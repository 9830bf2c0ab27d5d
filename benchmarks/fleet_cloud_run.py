"""A fleet of Cloud Run sandboxes on the emulator: ready in about one deploy latency?

The emulator (``commandlab_async.emulators.cloud_run``) is Cloud Run's Admin API over real
gRPC; each create takes ``--latency`` seconds before its container starts on the local Docker
Engine behind an HTTPS front, as a deploy would. In the same run, a hand-written baseline
does the same work with the raw SDK: create every service at once, poll each operation
(50 ms doubling to 2 s), poll the daemon's ``/health`` over HTTPS, delete every service.

Prints, for the library and the baseline: time until every daemon answered, that time
over the latency (1.0 is the floor), the library/baseline ratio, and the Admin API calls
per sandbox by method. ``--private`` makes the library's sandboxes private (an ID token
per service, fetched in a thread) while the baseline stays public.

Run:  .venv/bin/python benchmarks/fleet_cloud_run.py [--count 30] [--latency 2]
(needs the dev extras and the local images, like the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import ssl
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
from _cloud_run import CloudRunEmulator, point_google_at
from _report import fleet_report  # benchmarks/ is on sys.path when a script runs
from google.cloud import run_v2
from google.cloud.run_v2.services.services.transports import ServicesGrpcAsyncIOTransport

from commandlab_async import (
    DEFAULT_IMAGE,
    CloudRunOptions,
    DockerPlatform,
    DockerSpec,
    provision_many,
)

PARENT = "projects/bench/locations/us-central1"


async def library(count: int, private: bool) -> float:
    spec = DockerSpec(
        platform=DockerPlatform.GCP_CLOUD_RUN,
        project_id="bench",
        region="us-central1",
        options=CloudRunOptions(public=not private),
        ready_timeout=600,
    )
    started = time.perf_counter()
    async with provision_many(spec, count=count) as fleet:
        ready = time.perf_counter() - started
        assert len(fleet) == count
    return ready


async def baseline(count: int, address: str, ca_file: str) -> float:
    channel = grpc.aio.insecure_channel(address)
    client = run_v2.ServicesAsyncClient(transport=ServicesGrpcAsyncIOTransport(channel=channel))
    context = ssl.create_default_context(cafile=ca_file)
    names: list[str] = []

    async def one(http: aiohttp.ClientSession, index: int) -> None:
        token = secrets.token_urlsafe(32)
        env = {
            "COMMANDLAB_TOKEN_SHA256": hashlib.sha256(token.encode()).hexdigest(),
            "COMMANDLAB_PORT": "8000",
        }
        service = run_v2.Service(
            invoker_iam_disabled=True,
            template=run_v2.RevisionTemplate(
                scaling=run_v2.RevisionScaling(min_instance_count=1, max_instance_count=1),
                containers=[
                    run_v2.Container(
                        image=DEFAULT_IMAGE,
                        ports=[run_v2.ContainerPort(container_port=8000)],
                        env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()],
                    )
                ],
            ),
        )
        service_id = f"baseline-{index}-{secrets.token_hex(4)}"
        op = await client.create_service(parent=PARENT, service=service, service_id=service_id)
        names.append(f"{PARENT}/services/{service_id}")
        delay = 0.05
        while not await op.done(retry=None):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        uri = (await op.result()).uri
        while True:
            try:
                async with http.get(
                    f"{uri}/health", headers={"X-CommandLab-Token": token}, ssl=context
                ) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)

    try:
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            await asyncio.gather(*(one(http, i) for i in range(count)))
            return time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.delete_service(name=name) for name in names))
        await channel.close()


async def run(count: int, latency: float, private: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with CloudRunEmulator(create_latency=latency) as emulator:
            point_google_at(emulator, Path(tmp))
            ours = await library(count, private)
            library_calls = Counter(call.method for call in emulator.all_calls)
            emulator.all_calls.clear()
            theirs = await baseline(count, emulator.address, os.environ["SSL_CERT_FILE"])
            baseline_calls = Counter(call.method for call in emulator.all_calls)
            left = emulator.live()
        assert left == [], f"services left: {left}"

    print(f"{count} sandboxes, emulated deploy latency {latency:g} s")
    print(
        fleet_report(
            count=count,
            latency=latency,
            timings=[
                ("library" + (" (private)" if private else ""), ours),
                ("raw SDK baseline", theirs),
            ],
            calls={"library": library_calls, "baseline": baseline_calls},
            calls_title="API calls per sandbox",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.count, args.latency, args.private))


if __name__ == "__main__":
    main()
