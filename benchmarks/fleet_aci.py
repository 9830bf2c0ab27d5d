"""A fleet of ACI container groups on the ARM emulator: ready in about one create latency?

The emulator (``commandlab_async.emulators.aci``) is Azure Resource Manager's container-group
API over HTTPS; each group waits ``--latency`` seconds before its container starts on the local
Docker Engine, as ACI's provisioning would. In the same run, a hand-written baseline does
the same work with the raw SDK: one credential and client, every group PUT at once
(``polling=False``), each group's GET polled from 0.25 s growing 1.5x to 2 s until it is
Succeeded with an IP, the daemon's ``/health`` polled every 50 ms, every group deleted.
The baseline skips what the library adds for safety: no per-sandbox certificate (its
daemons speak plain HTTP), no rate limit, no retries, no fail-fast checks.

Prints, for the library and the baseline: time until every daemon answered, that time
over the latency (1.0 is the floor), the library/baseline ratio, and the ARM calls per
sandbox by kind (``PUT group``, ``GET group``, ``DELETE group``, ``POST token``).

Run:  .venv/bin/python benchmarks/fleet_aci.py [--count 50] [--latency 3]
(needs the dev extras and the local images, like the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from _report import fleet_report  # benchmarks/ is on sys.path when a script runs
from azure.mgmt.containerinstance import models

from commandlab_async import DEFAULT_IMAGE, AciOptions, DockerPlatform, DockerSpec, provision_many
from commandlab_async.emulators.aci import AciEmulator, arm_client

RESOURCE_GROUP = "bench-rg"
REGION = "westeurope"


async def library(emulator: AciEmulator, count: int) -> float:
    spec = DockerSpec(
        platform=DockerPlatform.AZURE_CONTAINER_INSTANCES,
        resource_group=RESOURCE_GROUP,
        region=REGION,
        options=AciOptions(arm_endpoint=emulator.url),
        endpoint_resolver=emulator.resolver,
        ready_timeout=600,
    )
    started = time.perf_counter()
    async with provision_many(spec, count=count) as fleet:
        ready = time.perf_counter() - started
        assert len(fleet) == count
    return ready


def _group(token: str) -> models.ContainerGroup:
    env = {
        "COMMANDLAB_TOKEN_SHA256": hashlib.sha256(token.encode()).hexdigest(),
        "COMMANDLAB_PORT": "8000",
    }
    return models.ContainerGroup(
        location=REGION,
        os_type="Linux",
        restart_policy="Never",
        containers=[
            models.Container(
                name="computer",
                image=DEFAULT_IMAGE,
                resources=models.ResourceRequirements(
                    requests=models.ResourceRequests(memory_in_gb=1.0, cpu=1.0)
                ),
                ports=[models.ContainerPort(port=8000)],
                environment_variables=[
                    models.EnvironmentVariable(name=k, secure_value=v) for k, v in env.items()
                ],
            )
        ],
        ip_address=models.IpAddress(ports=[models.Port(port=8000)], type="Public"),
    )


async def baseline(emulator: AciEmulator, count: int, tmp: Path) -> float:
    names: list[str] = []
    # The SDK's own client and a ClientSecretCredential, nothing of the library's.
    async with arm_client(emulator, tmp) as client:
        groups = client.container_groups

        async def one(http: aiohttp.ClientSession, index: int) -> None:
            token = secrets.token_urlsafe(32)
            name = f"baseline-{index}-{secrets.token_hex(4)}"
            names.append(name)
            await groups.begin_create_or_update(RESOURCE_GROUP, name, _group(token), polling=False)
            delay = 0.25
            while True:
                group: Any = await groups.get(RESOURCE_GROUP, name)
                if group.provisioning_state == "Succeeded" and group.ip_address.ip:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 2.0)
            url = f"http://127.0.0.1:{emulator.port_of(name)}/health"
            while True:
                try:
                    async with http.get(url, headers={"X-CommandLab-Token": token}) as response:
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
            await asyncio.gather(
                *(groups.begin_delete(RESOURCE_GROUP, name, polling=False) for name in names)
            )


async def run(count: int, latency: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with AciEmulator(create_latency=latency, max_groups=max(100, count)) as emulator:
            ca_file = str(emulator.write_ca(Path(tmp) / "ca.pem"))
            os.environ.update(
                SSL_CERT_FILE=ca_file,
                AZURE_AUTHORITY_HOST=emulator.url,
                AZURE_TENANT_ID=emulator.tenant_id,
                AZURE_CLIENT_ID=emulator.client_id,
                AZURE_CLIENT_SECRET=emulator.client_secret,
                AZURE_SUBSCRIPTION_ID=emulator.subscription_id,
            )
            ours = await library(emulator, count)
            library_calls = Counter(r.what for r in emulator.requests)
            emulator.requests.clear()
            theirs = await baseline(emulator, count, Path(tmp))
            baseline_calls = Counter(r.what for r in emulator.requests)
            left = emulator.live()
        assert left == [], f"groups left: {left}"

    print(f"{count} container groups, emulated create latency {latency:g} s")
    print(
        fleet_report(
            count=count,
            latency=latency,
            timings=[
                ("library (TLS, limits, retries)", ours),
                ("raw SDK baseline (plain HTTP)", theirs),
            ],
            calls={"library": library_calls, "baseline": baseline_calls},
            calls_title="ARM calls per sandbox",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--latency", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.latency))


if __name__ == "__main__":
    main()
