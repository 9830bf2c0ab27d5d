"""Kept sandboxes on every cloud, reached from another process through their saved handle:
``commandlab exec`` and ``cp`` (both through ``connect()``) in a fresh process with the
same environment, against each emulator. The handle holds no platform credential: that
process finds them again the way the first one did."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from commandlab_async import Computer, Spec, provision, remove
from commandlab_async.emulators.aci import AciEmulator
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.emulators.kubernetes import KubeEmulator
from tests.platforms.aws_support import Aws
from tests.platforms.azure_support import aci_spec
from tests.platforms.gcp_support import cloud_run_spec
from tests.platforms.k8s_support import kube_spec


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


async def elsewhere(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """The CLI in a process of its own, with this one's environment (the emulators answer
    on this loop meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commandlab_async.integrations.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def kept(spec: Spec) -> Computer:
    """A sandbox brought up here and kept: its handle is saved when its block ends."""
    async with provision(spec) as computer:
        computer.keep()
    return computer


async def reached_elsewhere(name: str, state: Path, *secrets: str) -> dict[str, object]:
    """exec and cp from another process work; the handle holds none of ``secrets``."""
    assert await elsewhere("exec", name, "--", "sh", "-c", "echo hi; exit 3") == (3, "hi\n", "")
    status, _, err = await elsewhere("cp", "-", f"{name}:/tmp/x", stdin=b"through a handle")
    assert status == 0, err
    assert (await elsewhere("cp", f"{name}:/tmp/x", "-"))[:2] == (0, "through a handle")
    handle = state / "sandboxes" / f"{name}.json"
    assert handle.stat().st_mode & 0o777 == 0o600
    text = handle.read_text()
    for secret in ("PRIVATE KEY", *secrets):
        assert secret not in text
    saved: dict[str, object] = json.loads(text)
    return saved


@pytest.mark.aws
async def test_ecs_over_a_pinned_certificate(aws: Aws, state: Path) -> None:
    computer = await kept(aws.spec({"assign_public_ip": True}))
    try:
        saved = await reached_elsewhere(computer.name, state, "testing")
        assert saved["scope"] == {"region": "us-east-1", "cluster": "default"}
        assert str(saved["pin"]).startswith("-----BEGIN CERTIFICATE-----")
        # Its daemon dies while ECS still runs the task: not known to be gone, kept.
        for proc in aws.daemons.procs.values():
            proc.kill()
        status, _, err = await elsewhere("exec", computer.name, "--", "true")
        assert status != 0
        assert "is gone" not in err
        assert (state / "sandboxes" / f"{computer.name}.json").exists()
    finally:
        await remove(aws.spec(), names=[computer.name])
    assert not (state / "sandboxes" / f"{computer.name}.json").exists()  # rm took it


@pytest.mark.aws
async def test_ecs_a_stopped_task_prunes_its_handle(aws: Aws, state: Path) -> None:
    computer = await kept(aws.spec())
    handle = state / "sandboxes" / f"{computer.name}.json"
    try:
        for proc in aws.daemons.procs.values():
            proc.kill()
        async with aws.session.client("ecs", endpoint_url=aws.moto_url) as ecs:
            (arn,) = (await ecs.list_tasks(cluster="default"))["taskArns"]
            await ecs.stop_task(cluster="default", task=arn)
        status, out, err = await elsewhere("exec", computer.name, "--", "true")
        assert (status, out, err.count("\n")) == (125, "", 1), err
        assert f"sandbox {computer.name}: is gone (" in err
        assert "its saved handle was removed" in err
        assert not handle.exists()
    finally:
        await remove(aws.spec(), names=[computer.name])


@pytest.mark.docker
async def test_aci_over_a_pinned_certificate(aci: AciEmulator, state: Path) -> None:
    spec = aci_spec(aci)
    computer = await kept(spec)
    try:
        saved = await reached_elsewhere(computer.name, state, aci.client_secret)
        assert saved["scope"] == {
            "subscription_id": aci.subscription_id,
            "resource_group": "evals-rg",
            "region": "westeurope",
            "arm_endpoint": aci.url,
        }
        assert str(saved["pin"]).startswith("-----BEGIN CERTIFICATE-----")
    finally:
        await remove(spec, names=[computer.name])


@pytest.mark.docker
async def test_cloud_run_with_an_id_token_minted_there(
    cloud_run: CloudRunEmulator, state: Path
) -> None:
    spec = cloud_run_spec()
    computer = await kept(spec)
    handle = state / "sandboxes" / f"{computer.name}.json"
    try:
        issued = cloud_run.id_tokens_issued
        saved = await reached_elsewhere(computer.name, state, "eyJ")
        assert saved["pin"] is None
        # Each process minted its own ID token (none is saved) and sent it every time.
        assert cloud_run.id_tokens_issued > issued
        assert all(r.authorized for r in cloud_run.front_requests)
    finally:
        text = handle.read_text()
        await remove(spec, names=[computer.name])
    # A handle that outlived its service (deleted elsewhere): the next exec says so in
    # one line and removes it.
    handle.write_text(text)
    handle.chmod(0o600)
    status, _, err = await elsewhere("exec", computer.name, "--", "true")
    assert (status, err.count("\n")) == (125, 1), err
    assert "is gone (gcp-cloud-run says it no longer exists)" in err
    assert not handle.exists()


@pytest.mark.docker
async def test_kubernetes_through_the_pod_proxy(kube: KubeEmulator, state: Path) -> None:
    spec = kube_spec()
    computer = await kept(spec)
    try:
        saved = await reached_elsewhere(computer.name, state, *kube.tokens)
        assert saved["pin"] is None
        assert saved["scope"] == {
            "namespace": "sandboxes",
            "kubeconfig": os.environ["KUBECONFIG"],
        }
    finally:
        await remove(spec, names=[computer.name])


@pytest.mark.docker
async def test_inspects_connection_works_from_another_process(
    kube: KubeEmulator, state: Path
) -> None:
    from commandlab_async.integrations.inspect_sandbox.sandbox import CommandLabSandbox

    config = {"platform": "kubernetes", "namespace": "sandboxes", "ready_timeout": 60}
    envs = await CommandLabSandbox.sample_init("task", config, {})
    sandbox = envs["default"]
    assert isinstance(sandbox, CommandLabSandbox)
    name = sandbox.computer.name
    try:
        connection = await sandbox.connection(user="computer")
        assert connection.command == f"commandlab exec -i -u computer {name} -- bash -l"
        status, out, err = await elsewhere(
            *connection.command.split()[1:], stdin=b"whoami; echo $0\n"
        )
        assert (status, out) == (0, "computer\nbash\n"), err
    finally:
        await CommandLabSandbox.sample_cleanup("task", config, envs, interrupted=False)
    # Its handle went before the sandbox did (not kept: deleted).
    assert not (state / "sandboxes" / f"{name}.json").exists()
