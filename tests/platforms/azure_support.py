"""The ARM emulator wired in as Azure would be, for one test at a time.

The library finds it the way a user's process finds Azure: a service principal in
``AZURE_TENANT_ID``/``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET`` whose authority
(``AZURE_AUTHORITY_HOST``) is the emulator, ``AZURE_SUBSCRIPTION_ID``, and
``SSL_CERT_FILE`` naming the emulator's test CA. Only the ARM endpoint is an option
(``AciOptions.arm_endpoint``, the one sovereign clouds use). Managed identity is never
reached: the environment credential answers first, and the socket guard fails a test that
tries 169.254.169.254.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from commandlab_async import AciOptions, DockerPlatform, DockerSpec
from commandlab_async.emulators.aci import AciEmulator

RESOURCE_GROUP = "evals-rg"
REGION = "westeurope"
# Every variable azure-identity's default chain reads: none may come from the host.
AZURE_ENV = (
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)


def foreign_group() -> Any:
    """A container group nobody made with this library (its image is never pulled)."""
    from azure.mgmt.containerinstance import models

    return models.ContainerGroup(
        location=REGION,
        os_type="Linux",
        tags={"owner": "someone-else"},
        containers=[
            models.Container(
                name="web",
                image="example.invalid/web:1",
                resources=models.ResourceRequirements(
                    requests=models.ResourceRequests(memory_in_gb=1.0, cpu=1.0)
                ),
            )
        ],
    )


def aci_spec(
    emulator: AciEmulator, options: dict[str, Any] | None = None, **kwargs: Any
) -> DockerSpec:
    """An ACI spec on the emulator; ``options`` sets AciOptions fields."""
    fields: dict[str, Any] = {
        "platform": DockerPlatform.AZURE_CONTAINER_INSTANCES,
        "resource_group": RESOURCE_GROUP,
        "region": REGION,
        "options": AciOptions(**{"arm_endpoint": emulator.url, **(options or {})}),
        "endpoint_resolver": emulator.resolver,
        "ready_timeout": 60,
    }
    return DockerSpec(**{**fields, **kwargs})


async def start_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> AciEmulator:
    """Start an emulator and point this process's Azure clients at it."""
    emulator = AciEmulator(**settings)
    await emulator.start()
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(emulator.write_ca(tmp_path / "arm-ca.pem")))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", emulator.url)
    monkeypatch.setenv("AZURE_TENANT_ID", emulator.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", emulator.client_id)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", emulator.client_secret)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", emulator.subscription_id)
    return emulator


async def stop_emulator(emulator: AciEmulator) -> list[str]:
    """Stop the emulator; return what the test left: groups and containers."""
    left = [f"group {name}" for name in emulator.live()]
    left += [f"container {cid}" for cid in await emulator.containers()]
    await emulator.aclose()
    return left


@pytest.fixture
async def aci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AciEmulator]:
    """A fresh emulator per test; the test fails if it leaves a group or a container."""
    emulator = await start_emulator(tmp_path, monkeypatch)
    try:
        yield emulator
    finally:
        left = await stop_emulator(emulator)
    assert left == [], f"left behind: {left}"
