"""Cloud Run end to end on the emulator: real gRPC, real HTTPS fronts, real daemons."""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as google_errors

from commandlab_async import (
    AuthenticationError,
    BackendError,
    Computer,
    EventKind,
    FleetError,
    LifecycleEvent,
    ReadyTimeoutError,
    SandboxExitedError,
    gc,
    provision,
    provision_many,
)
from commandlab_async._lifecycle.identity import SESSION_ID, new_identity
from commandlab_async._lifecycle.leases import open_backend
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.emulators.faults import Rule
from commandlab_async.labels import EXPIRES_AT, SESSION
from commandlab_async.platforms.driver import token_digest
from tests.conftest import EXITS_IMAGE
from tests.platforms.gcp_support import (
    PARENT,
    PROJECT,
    REGION,
    cloud_run_spec,
    start_emulator,
    stop_emulator,
)

pytestmark = pytest.mark.docker


# -- end to end ----------------------------------------------------------------------------


def _created(emulator: CloudRunEmulator) -> Any:
    (call,) = emulator.calls("CreateService")
    return call.request


async def test_private_sandbox_end_to_end(cloud_run: CloudRunEmulator) -> None:
    async with provision(cloud_run_spec(labels={"team": "evals"})) as computer:
        assert computer.url.startswith("https://127.0.0.1:")
        assert (await computer.run("echo hi; echo err >&2")).stdout == "hi\n"
        await computer.write_file("notes.txt", "kept between calls")
        assert await computer.read_file("notes.txt") == b"kept between calls"
        token = computer._headers["X-CommandLab-Token"]
    request = _created(cloud_run)
    assert request.parent == PARENT
    assert request.service_id == computer.name
    service = request.service
    assert service.invoker_iam_disabled is False
    template = service.template
    assert (template.scaling.min_instance_count, template.scaling.max_instance_count) == (1, 1)
    assert template.timeout.seconds == 3600
    assert template.execution_environment == 2  # EXECUTION_ENVIRONMENT_GEN2
    assert template.max_instance_request_concurrency == 1000
    (container,) = template.containers
    assert container.resources.cpu_idle is False
    assert dict(container.resources.limits) == {"cpu": "1", "memory": "1024Mi"}
    assert container.ports[0].container_port == 8000
    env = {e.name: e.value for e in container.env}
    assert env["COMMANDLAB_TOKEN_SHA256"] == token_digest(token)
    assert "COMMANDLAB_TTL" not in env  # the TTL is enforced by deleting the service
    assert token not in str(service)
    assert service.labels["team"] == "evals"
    assert service.annotations[SESSION] == SESSION_ID
    # Every request through Google's front carried a valid ID token; one was minted.
    assert cloud_run.front_requests
    assert all(r.authorized for r in cloud_run.front_requests)
    assert cloud_run.id_tokens_issued == 1
    assert len(cloud_run.calls("DeleteService")) == 1


async def test_public_sandbox_sends_no_id_token(cloud_run: CloudRunEmulator) -> None:
    async with provision(cloud_run_spec({"public": True})) as computer:
        assert (await computer.run("true")).exit_code == 0
    assert _created(cloud_run).service.invoker_iam_disabled is True
    assert cloud_run.id_tokens_issued == 0


async def test_private_sandbox_refuses_a_caller_without_an_id_token(
    cloud_run: CloudRunEmulator,
) -> None:
    async with provision(cloud_run_spec()) as computer:
        outsider = Computer(
            name=computer.name,
            url=computer.url,
            token=computer._headers["X-CommandLab-Token"],  # even with the right token
            session=computer._session,
            platform=computer.platform,
            ssl_context=computer._ssl,  # type: ignore[arg-type]
        )
        with pytest.raises(AuthenticationError, match=r"front end refused.*403"):
            await outsider.health()
    assert [r.status for r in cloud_run.front_requests if not r.authorized] == [403]


async def test_a_fleet(cloud_run: CloudRunEmulator) -> None:
    spec = cloud_run_spec()
    async with AsyncExitStack() as stack:
        driver = (await open_backend(stack, spec.target())).driver  # the fleet's own
        async with provision_many(spec, count=15) as fleet:
            results = await asyncio.gather(*(c.run("echo $((6*7))") for c in fleet))
            assert {r.stdout for r in results} == {"42\n"}
            assert sorted(cloud_run.live()) == sorted(c.name for c in fleet)
            assert len(driver._id_tokens._tokens) == 15
        assert driver._id_tokens._tokens == {}  # each forgotten with its service
    assert len(cloud_run.calls("CreateService")) == 15
    assert len(cloud_run.calls("DeleteService")) == 15
    assert cloud_run.id_tokens_issued == 15  # one per service URL, cached across requests


async def test_write_quota_is_respected_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 writes per minute: a fleet of 30 is 30 creates and 30 deletes, none refused."""
    emulator = await start_emulator(tmp_path, monkeypatch, writes_per_minute=60)
    try:
        async with provision_many(cloud_run_spec(), count=30):
            pass
    finally:
        left = await stop_emulator(emulator)
    assert left == []
    writes = emulator.calls("CreateService|DeleteService")
    assert len(writes) == 60
    assert emulator.refused == []


async def test_failed_deploy_fails_fast_with_cloud_runs_words(
    cloud_run: CloudRunEmulator,
) -> None:
    cloud_run.fail_deploys(13, "Image 'us-docker.pkg.dev/p/r/missing:1' not found.")
    started = time.monotonic()
    with pytest.raises(SandboxExitedError, match=r"not found\. \(code 13\)"):
        async with provision(cloud_run_spec()):
            pytest.fail("the body must not run")
    assert time.monotonic() - started < 30
    assert len(cloud_run.calls("CreateService")) == 1  # a failed deploy is never retried


async def test_container_that_never_listens_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await start_emulator(tmp_path, monkeypatch, listen_timeout=3)
    try:
        with pytest.raises(SandboxExitedError, match="failed to start and listen on the port"):
            async with provision(cloud_run_spec(image=EXITS_IMAGE)):
                pytest.fail("the body must not run")
    finally:
        left = await stop_emulator(emulator)
    assert left == []


async def test_slow_reconcile_and_lagging_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await start_emulator(tmp_path, monkeypatch, create_latency=1.0, polls_before_done=3)
    try:
        async with provision(cloud_run_spec()) as computer:
            assert (await computer.run("true")).exit_code == 0
        polls = emulator.calls("GetOperation")
        assert 4 <= len(polls) <= 25  # a short backoff, not the library's 1 s doubling
    finally:
        left = await stop_emulator(emulator)
    assert left == []


async def test_ready_timeout_during_a_slow_deploy_deletes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await start_emulator(tmp_path, monkeypatch, create_latency=4.0)
    try:
        with pytest.raises(ReadyTimeoutError, match="created; waiting for the backend"):
            async with provision(cloud_run_spec(ready_timeout=1)):
                pytest.fail("the body must not run")
        await asyncio.sleep(4.5)  # past the emulated deploy: nothing may start late
    finally:
        left = await stop_emulator(emulator)
    assert left == []


@pytest.mark.parametrize("lagging", [False, True], ids=["operation", "get-service"])
async def test_a_ready_timeout_names_the_ready_condition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lagging: bool
) -> None:
    # Still deploying at the deadline: the create operation's metadata (the service as it
    # is now) says so; so does get_service once the operation is done but the service is not.
    emulator = await start_emulator(tmp_path, monkeypatch, create_latency=30)
    if lagging:
        emulator.add(Rule("CreateService", status=409, forward=True, times=1))
    try:
        with pytest.raises(ReadyTimeoutError) as info:
            async with provision(cloud_run_spec(ready_timeout=1.5)):
                pytest.fail("the body must not run")
        assert "Ready RECONCILING" in info.value.state, info.value.state
        assert "<" not in info.value.state  # no enum reprs
    finally:
        left = await stop_emulator(emulator)
    assert left == []


async def test_permission_denied_is_surfaced_at_once(cloud_run: CloudRunEmulator) -> None:
    message = "Permission 'run.services.create' denied on resource"
    cloud_run.add(Rule("CreateService", status=403, body={"message": message}))
    with pytest.raises(BackendError, match=r"run\.services\.create") as info:
        async with provision(cloud_run_spec()):
            pytest.fail("the body must not run")
    assert info.value.transient is False
    assert info.value.code == "PERMISSION_DENIED"
    assert isinstance(info.value.__cause__, google_errors.PermissionDenied)
    assert len(cloud_run.calls("CreateService")) == 1


async def test_service_count_quota_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await start_emulator(tmp_path, monkeypatch, max_services=2)
    try:
        with pytest.raises(FleetError) as info:
            async with provision_many(cloud_run_spec(), count=3):
                pytest.fail("the body must not run")
        (error,) = info.value.exceptions
        assert isinstance(error, BackendError)
        assert error.transient is False
        assert "1,000 services per region" in "".join(getattr(error, "__notes__", []))
        assert len(emulator.calls("CreateService")) == 3  # not retried
    finally:
        left = await stop_emulator(emulator)
    assert left == []


# Google's quota message (service control's wording); the limit's name says its window.
_SERVICES_QUOTA = (
    "Quota exceeded for quota metric 'Services' and limit 'Services per project per region' "
    "of service 'run.googleapis.com' for consumer 'project_number:123456789'."
)
_MAX_SERVICES = "The project exceeds the maximum number of services (1000) in region us-central1."


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(429, {"message": _SERVICES_QUOTA}, id="429-no-details"),
        pytest.param(429, {"message": _SERVICES_QUOTA, "reason": "QUOTA_EXCEEDED"}, id="429-other"),
        pytest.param(
            429, {"message": _MAX_SERVICES, "reason": "RATE_LIMIT_EXCEEDED"}, id="429-rate-reason"
        ),
        pytest.param(403, {"message": _SERVICES_QUOTA}, id="403-no-details"),
        pytest.param(400, {"message": _MAX_SERVICES}, id="400-no-details"),
    ],
)
async def test_a_services_quota_without_its_reason_is_not_retried(
    cloud_run: CloudRunEmulator, status: int, body: dict[str, str]
) -> None:
    """Issue 32: the count of services is full whatever the answer's ErrorInfo says."""
    cloud_run.add(Rule("CreateService", status=status, body=body))
    with pytest.raises(BackendError) as info:
        async with provision(cloud_run_spec()):
            pytest.fail("the body must not run")
    assert len(cloud_run.calls("CreateService")) == 1  # asked once: waiting frees nothing
    error = info.value
    assert error.transient is False
    assert isinstance(error.__cause__, google_errors.GoogleAPICallError)
    assert "1,000 services per region" in "".join(getattr(error, "__notes__", []))


async def test_a_write_rate_quota_without_its_reason_is_retried(
    cloud_run: CloudRunEmulator,
) -> None:
    message = (
        "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute "
        "per region' of service 'run.googleapis.com' for consumer 'project_number:123456789'."
    )
    rule = cloud_run.add(Rule("CreateService", status=429, body={"message": message}, times=2))
    async with provision(cloud_run_spec()) as computer:
        assert (await computer.run("true")).exit_code == 0
    assert rule.times == 0
    assert len(cloud_run.calls("CreateService")) == 3


async def test_unavailable_on_get_operation_is_retried(cloud_run: CloudRunEmulator) -> None:
    rule = cloud_run.add(Rule("GetOperation", status=503, times=2))
    async with provision(cloud_run_spec()) as computer:
        assert (await computer.run("true")).exit_code == 0
    assert rule.times == 0


@pytest.mark.parametrize("step", ["CreateService", "GetOperation", "probing", "body"])
async def test_cancel_at_each_step_leaves_nothing(cloud_run: CloudRunEmulator, step: str) -> None:
    """Cancel while creating, while the operation is polled, while the daemon is probed
    and while a command runs in the block: the service and its container are deleted."""
    reached = asyncio.Event()
    if step in ("CreateService", "GetOperation"):
        rule = cloud_run.add(Rule(step, delay_after=0.5, times=1))
        reached = rule.seen

    def on_event(event: LifecycleEvent) -> None:
        if step == "probing" and event.kind is EventKind.RUNNING:
            reached.set()

    async def user() -> None:
        async with provision(cloud_run_spec(), on_event=on_event) as computer:
            if step == "body":
                reached.set()
                await computer.run("sleep 30")
            pytest.fail("the body must not finish")

    task = asyncio.create_task(user())
    await reached.wait()
    # The daemon answers its first probe within milliseconds: cancel at once.
    await asyncio.sleep(0 if step == "probing" else 0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cloud_run.live() == []


async def test_gc_deletes_expired_services_by_label(cloud_run: CloudRunEmulator) -> None:
    spec = cloud_run_spec()
    async with AsyncExitStack() as stack:
        driver = (await open_backend(stack, spec.target())).driver
        stale = new_identity(spec)
        stale = replace(stale, labels={**stale.labels, EXPIRES_AT: str(int(time.time()) - 10)})
        await driver.create(spec, stale)
        fresh = new_identity(spec)
        await driver.create(spec, fresh)
        # The command line finds it too (the emulator is served by this loop: no blocking run).
        args = ["gc", "--platform", "gcp-cloud-run", "--project", PROJECT, "--region", REGION]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "commandlab_async.integrations.cli",
            *args,
            "--dry-run",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        target = f"gcp-cloud-run[project_id={PROJECT}, region={REGION}]"
        assert f"would delete {target} {stale.name}: expired" in out.decode(), err.decode()
        reaped = await gc(spec)
        assert [(r.name, r.reason) for r in reaped] == [(stale.name, "expired")]
        assert cloud_run.live() == [fresh.name]
        await driver.destroy(fresh)


async def test_without_credentials_the_error_says_so_and_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUD_RUN_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    with pytest.raises(BackendError, match="no Google credentials") as info:
        async with provision(cloud_run_spec()):
            pytest.fail("the body must not run")
    assert not getattr(info.value, "__notes__", [])  # no cleanup failure on top


async def test_a_refused_id_token_fails_fast_and_leaves_nothing(
    cloud_run: CloudRunEmulator,
) -> None:
    cloud_run._sa_keys.clear()  # the token endpoint no longer knows the key (revoked)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"could not get an ID token.*invalid_grant") as info:
        async with provision(cloud_run_spec()):
            pytest.fail("the body must not run")
    assert info.value.transient is False
    assert time.monotonic() - started < 30
