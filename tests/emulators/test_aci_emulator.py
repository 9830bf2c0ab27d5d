"""The ACI emulator, driven only through the real SDKs (azure-identity, azure-mgmt-*)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential
from azure.mgmt.containerinstance.aio import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import (
    Container,
    ContainerGroup,
    ContainerPort,
    EnvironmentVariable,
    IpAddress,
    Port,
    ResourceRequests,
    ResourceRequirements,
)

from commandlab_async.emulators.aci import AciEmulator
from commandlab_async.emulators.faults import Rule
from commandlab_async.platforms.base import DockerPlatform, RunningSandbox

COMPUTER = "commandlab/computer:latest"
MISSING = "commandlab-test/no-such-image:latest"
RG = "sandboxes"


def spec(image: str, secret: str = "", cpu: float = 1.0) -> ContainerGroup:
    """A group as a driver would ask for one: the daemon's token hash as a secure value."""
    return ContainerGroup(
        location="westeurope",
        os_type="Linux",
        restart_policy="Never",
        tags={"commandlab-session": "s1"},
        containers=[
            Container(
                name="computer",
                image=image,
                resources=ResourceRequirements(requests=ResourceRequests(cpu=cpu, memory_in_gb=1)),
                ports=[ContainerPort(port=8000)],
                environment_variables=[
                    EnvironmentVariable(name="COMMANDLAB_TOKEN_SHA256", secure_value=secret),
                    EnvironmentVariable(name="PLAIN", value="visible"),
                ],
            )
        ],
        ip_address=IpAddress(type="Public", ports=[Port(port=8000, protocol="TCP")]),
    )


def client_for(emulator: AciEmulator, ca: Path) -> tuple[ClientSecretCredential, Any]:
    credential = ClientSecretCredential(
        emulator.tenant_id,
        emulator.client_id,
        emulator.client_secret,
        authority=emulator.url,
        connection_verify=str(ca),
    )
    client = ContainerInstanceManagementClient(
        credential,
        emulator.subscription_id,
        base_url=emulator.url,
        credential_scopes=[emulator.url + "/.default"],
        connection_verify=str(ca),
        retry_total=0,
        polling_interval=0.1,
    )
    return credential, client


def code(error: HttpResponseError) -> str | None:
    """The ARM error code of an SDK exception."""
    return error.error.code if error.error is not None else None


def retry_after(error: HttpResponseError) -> str:
    assert error.response is not None
    return str(error.response.headers["Retry-After"])  # type: ignore[attr-defined]


@pytest.fixture
async def emulator() -> AsyncIterator[AciEmulator]:
    async with AciEmulator(page_size=2) as emulator:
        yield emulator


@pytest.fixture
async def aci(emulator: AciEmulator, tmp_path: Path) -> AsyncIterator[Any]:
    credential, client = client_for(emulator, emulator.write_ca(tmp_path / "ca.pem"))
    async with credential, client:
        yield client


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


@pytest.mark.docker
async def test_group_runs_for_real_and_keeps_its_secret(emulator: AciEmulator, aci: Any) -> None:
    token = secrets.token_urlsafe(16)
    digest = hashlib.sha256(token.encode()).hexdigest()
    poller = await aci.container_groups.begin_create_or_update(RG, "box-1", spec(COMPUTER, digest))
    created = await poller.result()
    assert created.provisioning_state == "Succeeded"
    assert [r.status for r in emulator.calls("PUT group")] == [201]
    assert emulator.calls("GET operation")  # the SDK followed Azure-AsyncOperation

    group = await aci.container_groups.get(RG, "box-1")
    assert group.provisioning_state == "Succeeded"
    assert group.instance_view.state == "Running"
    assert group.ip_address.ip.startswith("203.0.113.")
    container = group.containers[0]
    assert container.instance_view.current_state.state == "Running"
    assert [e.name for e in container.instance_view.events] == ["Pulling", "Pulled", "Started"]
    secure, plain = container.environment_variables
    assert (secure.name, secure.value, secure.secure_value) == (
        "COMMANDLAB_TOKEN_SHA256",
        None,
        None,
    )
    assert plain.value == "visible"
    assert all(digest not in r.response for r in emulator.requests)
    assert (
        emulator.groups[group.id]["properties"]["containers"][0]["properties"][
            "environmentVariables"
        ][0]["secureValue"]
        == digest
    )

    running = RunningSandbox(
        name="box-1",
        platform=DockerPlatform.AZURE_CONTAINER_INSTANCES,
        port=8000,
        addresses={"public": group.ip_address.ip},
        url=f"http://{group.ip_address.ip}:8000",
        raw={},
    )
    url = await emulator.resolver(running)
    assert url == f"http://127.0.0.1:{emulator.port_of('box-1')}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/health", headers={"X-CommandLab-Token": token}) as health,
    ):
        assert health.status == 200  # the daemon got the secure value as its environment

    await emulator.exit_container("box-1", 3)
    stopped = await aci.container_groups.get(RG, "box-1")
    state = stopped.containers[0].instance_view.current_state
    assert (state.state, state.exit_code, state.detail_status) == ("Terminated", 3, "Error")
    assert stopped.instance_view.state == "Failed"

    await (await aci.container_groups.begin_delete(RG, "box-1")).result()
    assert [r.status for r in emulator.calls("DELETE group")] == [200]
    assert await emulator.containers() == []
    assert emulator.live() == []
    with pytest.raises(ResourceNotFoundError):
        await aci.container_groups.get(RG, "box-1")


@pytest.mark.docker
async def test_missing_image_keeps_creating_and_lists_page_by_page(
    emulator: AciEmulator, aci: Any
) -> None:
    for n in range(3):
        await aci.container_groups.begin_create_or_update(RG, f"gone-{n}", spec(MISSING))

    async def backing_off() -> bool:
        group = await aci.container_groups.get(RG, "gone-0")
        view = group.containers[0].instance_view
        return view is not None and "BackOff" in [e.name for e in view.events]

    await until(backing_off)
    group = await aci.container_groups.get(RG, "gone-0")
    assert group.provisioning_state == "Creating"
    view = group.containers[0].instance_view
    assert view.current_state.state == "Waiting"
    failed = next(e for e in view.events if e.name == "Failed")
    assert failed.type == "Warning"
    assert f'Failed to pull image "{MISSING}"' in failed.message
    with pytest.raises(ResourceExistsError) as conflict:
        await aci.container_groups.begin_create_or_update(RG, "gone-0", spec(MISSING))
    assert code(conflict.value) == "ContainerGroupTransitioning"

    names = [g.name async for g in aci.container_groups.list_by_resource_group(RG)]
    assert names == ["gone-0", "gone-1", "gone-2"]
    pages = emulator.calls("LIST groups")
    assert len(pages) == 2
    assert "$skiptoken" in pages[1].query
    assert "nextLink" in json.loads(pages[0].response)
    assert len([g async for g in aci.container_groups.list()]) == 3  # subscription-wide
    assert await emulator.containers() == []


async def test_errors_reach_the_sdk_as_arm_errors(emulator: AciEmulator, aci: Any) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        await aci.container_groups.get(RG, "nope")
    assert code(missing.value) == "ResourceNotFound"
    await (await aci.container_groups.begin_delete(RG, "nope")).result()  # 204: nothing to do

    with pytest.raises(HttpResponseError) as bad:
        await aci.container_groups.begin_create_or_update(RG, "Bad_Name", spec(MISSING))
    assert (bad.value.status_code, code(bad.value)) == (400, "InvalidContainerGroupName")
    with pytest.raises(HttpResponseError) as big:
        await aci.container_groups.begin_create_or_update(RG, "big", spec(MISSING, cpu=8))
    assert code(big.value) == "ResourceRequestsExceedMaxAllowed"

    emulator.add(Rule("PUT group", status=429, times=1))
    with pytest.raises(HttpResponseError) as throttled:
        await aci.container_groups.begin_create_or_update(RG, "later", spec(MISSING))
    assert throttled.value.status_code == 429
    assert retry_after(throttled.value) == "1"
    assert emulator.live() == []  # refused before the emulator acted


async def test_write_limit_and_quota(tmp_path: Path) -> None:
    async with AciEmulator(writes_per_second=0.01, write_burst=2, max_groups=1) as emulator:
        credential, aci = client_for(emulator, emulator.write_ca(tmp_path / "ca.pem"))
        async with credential, aci:
            await aci.container_groups.begin_create_or_update(RG, "one", spec(MISSING))
            with pytest.raises(HttpResponseError) as quota:
                await aci.container_groups.begin_create_or_update(RG, "two", spec(MISSING))
            assert code(quota.value) == "ContainerGroupQuotaReached"
            with pytest.raises(HttpResponseError) as throttled:
                await aci.container_groups.begin_create_or_update(RG, "three", spec(MISSING))
            assert throttled.value.status_code == 429
            assert code(throttled.value) == "TooManyRequests"
            assert int(retry_after(throttled.value)) >= 1
        assert [r.status for r in emulator.calls("PUT group")] == [201, 400, 429]


async def test_credentials_and_bearer_tokens(
    emulator: AciEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = str(emulator.write_ca(tmp_path / "ca.pem"))
    wrong = ClientSecretCredential(
        emulator.tenant_id,
        emulator.client_id,
        "wrong",
        authority=emulator.url,
        connection_verify=ca,
    )
    async with wrong:
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            await wrong.get_token(emulator.url + "/.default")
    assert emulator.calls("POST token")[-1].status == 401

    monkeypatch.setenv("AZURE_AUTHORITY_HOST", emulator.url)
    monkeypatch.setenv("AZURE_TENANT_ID", emulator.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", emulator.client_id)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", emulator.client_secret)
    async with (
        DefaultAzureCredential(connection_verify=ca) as credential,
        ContainerInstanceManagementClient(
            credential,
            emulator.subscription_id,
            base_url=emulator.url,
            credential_scopes=[emulator.url + "/.default"],
            connection_verify=ca,
            retry_total=0,
        ) as aci,
    ):
        assert [g async for g in aci.container_groups.list()] == []
    assert emulator.calls("POST token")[-1].status == 200

    url = f"{emulator.url}/subscriptions/{emulator.subscription_id}/providers/"
    url += "Microsoft.ContainerInstance/containerGroups?api-version=2023-05-01"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=ssl.create_default_context(cafile=ca)) as anonymous,
    ):
        assert anonymous.status == 401
        assert (await anonymous.json())["error"]["code"] == "AuthenticationFailed"
