"""Azure Container Instances end to end: the real SDK against the ARM emulator, whose
groups run on the local Docker Engine and whose daemons serve TLS with pinned certificates.

Contract behaviour shared with every backend (cancellation, lost answers, throttling,
translation, idempotent destroy, listing) is in ``test_driver_contract.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

import pytest

from commandlab_async import (
    BackendError,
    Limits,
    ProvisionError,
    ReadyTimeoutError,
    RunningSandbox,
    SandboxExitedError,
    provision,
    provision_many,
    set_limits,
)
from commandlab_async._admin.reaper import gc
from commandlab_async._client.tls import make_sandbox_tls
from commandlab_async._lifecycle import limits as limits_module
from commandlab_async._lifecycle.identity import SESSION_ID
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.emulators.aci import AciEmulator, arm_client
from commandlab_async.emulators.faults import Rule
from commandlab_async.labels import SESSION
from tests.client.test_tls import tls_server
from tests.conftest import EXITS_IMAGE, NEVER_HEALTHY_IMAGE
from tests.platforms.azure_support import (
    RESOURCE_GROUP,
    aci_spec,
    foreign_group,
    start_emulator,
    stop_emulator,
)

pytestmark = pytest.mark.docker


def _responses(aci: AciEmulator) -> str:
    return "\n".join(r.response for r in aci.requests)


async def test_one_sandbox_runs_over_pinned_tls_and_leaks_no_secret(
    aci: AciEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    spec = aci_spec(aci, labels={"team": "evals"})
    async with provision(spec) as computer:
        assert computer.url.startswith("https://127.0.0.1:")
        assert (await computer.run("echo ok")).stdout == "ok\n"
        await computer.write_file("/tmp/x", b"payload")
        assert await computer.read_file("/tmp/x") == b"payload"
        assert (await computer.health())["tls"] is True
        token = computer._headers["X-CommandLab-Token"]
        env = (await computer.run("env")).stdout
        (group,) = aci.groups.values()
        assert group["tags"]["team"] == "evals"
        assert group["tags"][SESSION] == SESSION_ID
        assert group["properties"]["restartPolicy"] == "Never"
        name = computer.name
    # The daemon took its key out of the environment commands see.
    assert "PRIVATE KEY" not in env
    assert "COMMANDLAB_TOKEN_SHA256" not in env
    seen = _responses(aci)
    assert '"provisioningState": "Succeeded"' in seen or "Succeeded" in seen
    for secret in (token, "PRIVATE KEY", "secureValue"):
        assert secret not in seen, f"{secret[:12]}... in an ARM answer"
        assert secret not in caplog.text
    assert aci.calls("PUT group")[0].path.endswith(f"/containerGroups/{name}")
    assert len(aci.calls("DELETE group")) == 1


async def test_a_fleet_comes_up_within_the_rate_bound(
    aci: AciEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_module, "_overrides", {})
    spec = aci_spec(aci)
    set_limits(spec.target(), Limits(creates_in_flight=20, creates_per_second=20, create_burst=5))
    async with provision_many(spec, count=20) as fleet:
        results = await asyncio.gather(*(c.run("hostname") for c in fleet))
        assert all(r.exit_code == 0 for r in results)
        assert len(aci.live()) == 20
    puts = sorted(r.at for r in aci.calls("PUT group"))
    assert len(puts) == 20
    # A burst of 5, then 20 a second: the 20th create comes no sooner than 0.75 s in.
    assert puts[-1] - puts[0] >= (20 - 5) / 20 - 0.05
    assert len(aci.calls("DELETE group")) == 20


async def test_throttling_waits_as_long_as_arm_asks(aci: AciEmulator) -> None:
    aci.add(Rule("PUT group", status=429, times=2))
    async with provision(aci_spec(aci)):
        pass
    first, second, third = (r.at for r in aci.calls("PUT group"))
    # Retry-After: 1 on each refusal, more than our own backoff would wait.
    assert second - first >= 0.95
    assert third - second >= 0.95


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retried(aci: AciEmulator, status: int) -> None:
    aci.add(Rule("PUT group", status=status, times=1))
    aci.add(Rule("GET group", status=status, times=1))
    async with provision(aci_spec(aci)) as computer:
        assert (await computer.run("true")).exit_code == 0
    assert len(aci.calls("PUT group")) == 2


async def test_the_group_quota_is_named_and_not_retried(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await start_emulator(tmp_path_factory.mktemp("aci"), monkeypatch, max_groups=1)
    try:
        spec = aci_spec(emulator)
        async with provision(spec):
            with pytest.raises(BackendError) as info:
                async with provision(spec):
                    pytest.fail("the body must not run")
        assert info.value.code == "ContainerGroupQuotaReached"
        assert info.value.transient is False
        assert any("100 container groups" in note for note in info.value.__notes__)
        assert len(emulator.calls("PUT group")) == 2
    finally:
        assert await stop_emulator(emulator) == []


async def test_a_missing_image_fails_fast_in_acis_words(aci: AciEmulator) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxExitedError, match="Failed to pull image") as info:
        async with provision(aci_spec(aci, image="commandlab-test/no-such-image:1")):
            pytest.fail("the body must not run")
    assert time.monotonic() - started < 20, "not the 60 s deadline"
    assert "Failed" in info.value.state
    assert aci.live() == []


@pytest.mark.usefixtures("test_images")
async def test_a_container_that_exits_fails_fast_with_its_code(aci: AciEmulator) -> None:
    with pytest.raises(SandboxExitedError, match="exited with code 3"):
        async with provision(aci_spec(aci, image=EXITS_IMAGE)):
            pytest.fail("the body must not run")
    assert aci.live() == []


async def test_a_ready_timeout_names_the_pending_group_in_acis_words(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ARM keeps the group Pending (not yet Creating) past the sandbox's deadline.
    emulator = await start_emulator(tmp_path_factory.mktemp("aci"), monkeypatch, create_latency=30)
    try:
        with pytest.raises(ReadyTimeoutError) as info:
            async with provision(aci_spec(emulator, ready_timeout=1.5)):
                pytest.fail("the body must not run")
        assert "provisioningState Pending" in str(info.value), str(info.value)
        assert "<" not in info.value.state  # no enum or object reprs
    finally:
        assert await stop_emulator(emulator) == []


@pytest.mark.usefixtures("test_images")
async def test_a_ready_timeout_while_creating_names_the_container_and_its_last_event(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The container runs but never listens: ACI keeps the group Creating (instance Pending).
    emulator = await start_emulator(tmp_path_factory.mktemp("aci"), monkeypatch, listen_timeout=60)
    try:
        with pytest.raises(ReadyTimeoutError) as info:
            async with provision(aci_spec(emulator, image=NEVER_HEALTHY_IMAGE, ready_timeout=5)):
                pytest.fail("the body must not run")
        state = info.value.state
        assert "provisioningState Creating, instance Pending" in state, state
        assert "container computer Running" in state, state
        assert "Started: Started container" in state, state
    finally:
        assert await stop_emulator(emulator) == []


async def test_a_lost_create_answer_is_adopted_not_duplicated(aci: AciEmulator) -> None:
    aci.add(Rule("PUT group", drop=True, forward=True, times=1))
    async with provision(aci_spec(aci)) as computer:
        assert aci.live() == [computer.name]
        assert (await computer.run("echo ok")).stdout == "ok\n"
    assert len(aci.calls("PUT group")) >= 2
    assert aci.live() == []


async def test_a_different_certificate_never_sees_the_token(aci: AciEmulator) -> None:
    impostor = await make_sandbox_tls("impostor")
    async with tls_server(impostor) as (port, received):

        async def elsewhere(running: RunningSandbox, port: int = port) -> str:
            await aci.resolver(running)  # the real group is there; we are sent elsewhere
            return f"https://127.0.0.1:{port}"

        started = time.monotonic()
        with pytest.raises(ProvisionError, match="certificate was refused"):
            async with provision(aci_spec(aci, endpoint_resolver=elsewhere)):
                pytest.fail("the body must not run")
        assert time.monotonic() - started < 30, "refused at once, not at the deadline"
        assert b"".join(received) == b"", "not one byte after the handshake"
    assert aci.live() == []


async def test_wrong_credentials_fail_once_without_a_cleanup_error(
    aci: AciEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-the-secret")
    with pytest.raises(BackendError) as info:
        async with provision(aci_spec(aci)):
            pytest.fail("the body must not run")
    assert info.value.transient is False
    assert not isinstance(info.value, ExceptionGroup)
    assert aci.calls("PUT group") == []


async def test_gc_deletes_finished_groups_and_leaves_foreign_ones(
    aci: AciEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = aci_spec(aci, ttl=None)
    async with arm_client(aci, tmp_path_factory.mktemp("ca")) as arm:
        # Someone else's group in the same resource group: no tags of ours.
        await arm.container_groups.begin_create_or_update(
            RESOURCE_GROUP, "not-ours", foreign_group(), polling=False
        )
        async with provision(spec) as computer:
            await aci.exit_container(computer.name, 0)
            swept = await gc([spec.target()])
            assert [(r.name, r.reason.split(" ")[0]) for r in swept] == [
                (computer.name, "finished")
            ]
            assert aci.live() == ["not-ours"]
        async with AsyncExitStack() as stack:
            backend = await open_backend(stack, spec.target())
            assert await backend.driver.list_sandboxes({SESSION: SESSION_ID}) == []
        await arm.container_groups.begin_delete(RESOURCE_GROUP, "not-ours", polling=False)
