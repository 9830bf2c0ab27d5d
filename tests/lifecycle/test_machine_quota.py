"""One quota for the machine: every process of this user shares each cloud's rate quotas.

The buckets are real files in a runtime directory of the test's own, taken from by real
processes (``tests/lifecycle/quota_worker.py``); the end-to-end tests bring fleets up from eight
processes at once against the Cloud Run emulator, whose write quota refuses what goes
over it, and measure what it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockingError, blockbuster_ctx

from commandlab_async import (
    DockerPlatform,
    KubernetesPlatform,
    Limits,
    MachineQuota,
    set_machine_quotas,
)
from commandlab_async._lifecycle import machine_quota as mq
from commandlab_async._lifecycle.limits import Limiter
from commandlab_async._lifecycle.machine_quota import (
    MachineBuckets,
    bucket_path,
    machine_quotas_for,
)
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.platforms.aws_ecs.driver import EcsDriver
from commandlab_async.platforms.aws_ecs.options import EcsTarget
from commandlab_async.platforms.azure_aci.driver import AciDriver
from commandlab_async.platforms.azure_aci.options import AciTarget
from commandlab_async.platforms.docker.driver import DockerDriver
from commandlab_async.platforms.docker.options import DockerTarget
from commandlab_async.platforms.gcp_cloud_run.driver import CloudRunDriver
from commandlab_async.platforms.gcp_cloud_run.options import CloudRunTarget
from commandlab_async.platforms.kubernetes.driver import KubernetesDriver
from commandlab_async.platforms.kubernetes.options import KubernetesTarget
from tests.platforms.gcp_support import start_emulator, stop_emulator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Machine-wide quotas on (conftest turns them off), in a runtime directory of this
    test's own; the processes the test starts inherit both."""
    directory = tmp_path / "runtime"
    monkeypatch.setenv("COMMANDLAB_RUNTIME_DIR", str(directory))
    monkeypatch.delenv(mq.ENV, raising=False)
    return directory


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def make_dir(path: Path, mode: int) -> None:
    path.mkdir()
    path.chmod(mode)  # whatever the umask


def quota(per_second: float, burst: int, **kwargs: Any) -> MachineQuota:
    return MachineQuota(scope="test bucket", per_second=per_second, burst=burst, **kwargs)


def excess(stamps: Sequence[float], per_second: float, burst: int) -> float:
    """The most calls, in any window, beyond what a full bucket of ``burst`` refilled at
    ``per_second`` allows there (<= 0: the calls kept to it)."""
    ordered = sorted(stamps)
    worst = -math.inf
    for i, first in enumerate(ordered):
        for j in range(i, len(ordered)):
            worst = max(worst, (j - i + 1) - (burst + per_second * (ordered[j] - first)))
    return worst


def rate_line(what: str, stamps: Sequence[float], per_second: float, burst: int) -> str:
    """What was measured: the rate past the burst, against the limit."""
    ordered = sorted(stamps)
    span = ordered[-1] - ordered[0]
    past_burst = (len(ordered) - burst) / span if span > 0 and len(ordered) > burst else 0.0
    return (
        f"{what}: {len(ordered)} calls in {span:.2f}s, {past_burst:.2f}/s past the burst of"
        f" {burst} (limit {per_second:g}/s), worst excess over the bucket"
        f" {excess(ordered, per_second, burst):+.2f} calls"
    )


@asynccontextmanager
async def workers(
    mode: str, arguments: Sequence[dict[str, Any]], env: dict[str, str]
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Start one ``tests.lifecycle.quota_worker`` per ``arguments``, each ready (imports done);
    kill, on the way out, any still running."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for args in arguments:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.lifecycle.quota_worker",
                    mode,
                    json.dumps(args),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=REPO,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if line != b"ready\n":
                assert proc.stderr is not None
                raise AssertionError(f"worker did not start: {(await proc.stderr.read())!r}")
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def go(procs: Sequence[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
    """Let every worker start at once; their results."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    outputs = await asyncio.gather(*(proc.communicate() for proc in procs))
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().splitlines()[-1]))
    return results


# -- one process ----------------------------------------------------------------------------


@pytest.mark.unit
async def test_creates_take_the_burst_then_the_rate(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(2, 3)])
    started = time.monotonic()
    stamps = []
    for _ in range(7):
        await buckets.take_create()
        stamps.append(time.monotonic())
    assert stamps[2] - started < 0.45  # the burst, at once (a token's wait is 0.5 s)
    assert stamps[-1] - started >= (7 - 3) / 2 * 0.95  # then 2 a second
    assert excess(stamps, 2, 3) <= 0.05
    assert buckets.fallbacks == 0
    assert mode_of(runtime_dir) == mode_of(runtime_dir / "quotas") == 0o700
    assert mode_of(bucket_path("test bucket")) == 0o600


@pytest.mark.unit
async def test_a_delete_goes_before_waiting_creates_on_credit(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(1, 2, deletes=True)])
    for _ in range(2):
        await buckets.take_create()  # empty now
    started = time.monotonic()
    order: list[tuple[str, float]] = []

    async def create() -> None:
        await buckets.take_create()
        order.append(("create", time.monotonic() - started))

    async def delete() -> None:
        await asyncio.sleep(0.05)  # comes after the create started waiting
        await buckets.take_delete(patience=10)
        order.append(("delete", time.monotonic() - started))

    await asyncio.gather(create(), delete())
    assert [what for what, _ in order] == ["delete", "create"]
    (_, deleted), (_, created) = order
    assert deleted < 1.6  # its own token, due at 1 s
    assert created >= 1.8  # the token after the delete's, due at 2 s


@pytest.mark.unit
async def test_a_delete_never_waits_past_its_patience(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(0.2, 1, deletes=True)])  # a token every 5 s
    await buckets.take_create()
    started = time.monotonic()
    await buckets.take_delete(patience=0.2)
    assert 0.15 <= time.monotonic() - started < 2.5  # not the 5 s its token was due in
    # The delete went on credit: creates pay for it (its token and their own: ~10 s).
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await buckets.take_create()


@pytest.mark.unit
async def test_limiter_destroy_waits_at_most_half_its_budget(runtime_dir: Path) -> None:
    limiter = Limiter(Limits(), MachineBuckets([quota(0.1, 1, creates=False, deletes=True)]))
    sent: list[float] = []

    async def call() -> None:
        sent.append(time.monotonic())

    await limiter.delete(call, budget=0.1)  # the bucket's one token
    started = time.monotonic()
    await limiter.delete(call, budget=0.6)  # due in 10 s
    assert 0.25 <= sent[-1] - started < 0.6  # half of 0.6 s, then the delete goes


@pytest.mark.unit
async def test_a_cancelled_delete_gives_its_token_back(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(0.5, 1, deletes=True)])
    await buckets.take_create()  # empty
    waiting = asyncio.create_task(buckets.take_delete(patience=10))  # on credit: -1
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    started = time.monotonic()
    await buckets.take_create()
    # With the token back, the next is due within 2 s; kept, it would be 4.
    assert time.monotonic() - started < 3.2


@pytest.mark.unit
async def test_a_users_create_goes_before_a_warm_pools(runtime_dir: Path) -> None:
    limiter = Limiter(
        Limits(creates_per_second=math.inf),
        MachineBuckets([quota(4, 1)]),
    )
    async with limiter.create():
        pass  # the bucket is empty now
    order: list[str] = []

    async def create(background: bool, after: float) -> None:
        await asyncio.sleep(after)
        async with limiter.create(background=background):
            order.append("background" if background else "user")

    await asyncio.gather(create(True, 0), create(False, 0.05))
    assert order == ["user", "background"]


@pytest.mark.unit
async def test_the_files_are_never_touched_on_the_event_loop(runtime_dir: Path) -> None:
    # blockbuster raises on any blocking call (mkdir, open, flock, sleep...) made from a
    # coroutine of ours.
    with blockbuster_ctx("commandlab_async"):
        buckets = MachineBuckets([quota(50, 1, deletes=True)])
        await buckets.take_create()
        await buckets.take_create()  # after a wait
        await buckets.take_delete(patience=1)
        with pytest.raises(BlockingError):
            take_on_the_loop()
    assert buckets.fallbacks == 0


def take_on_the_loop() -> None:
    """What the test above would catch: the file work called on the event loop."""
    mq._take_create([quota(50, 1)])


@pytest.mark.unit
async def test_an_unreadable_bucket_counts_as_empty(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(5, 3)])
    await buckets.take_create()  # makes the file
    bucket_path("test bucket").write_bytes(b"\x00garbage from a crash\x00")
    started = time.monotonic()
    await buckets.take_create()
    assert time.monotonic() - started >= 0.15  # empty: one token's wait (0.2 s)
    assert buckets.fallbacks == 0


@pytest.mark.unit
async def test_a_runtime_directory_open_to_others_is_not_trusted(
    runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_dir(runtime_dir, 0o755)
    buckets = MachineBuckets([quota(1, 1, deletes=True)])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="commandlab_async"):
        for _ in range(3):
            await buckets.take_create()  # within the process's own limits only
        await buckets.take_delete(patience=10)
    assert time.monotonic() - started < 2.0  # a token a second: it would be 3 s
    assert buckets.fallbacks == 4
    assert "mode 0700" in caplog.text
    assert not (runtime_dir / "quotas").exists()


@pytest.mark.unit
def test_on_by_default_for_clouds_and_how_to_turn_it_off(
    runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = CloudRunTarget(platform=DockerPlatform.GCP_CLOUD_RUN, project_id="p", region="r")
    defaults = CloudRunDriver.machine_quotas(target)
    assert machine_quotas_for(target, defaults) == defaults
    assert DockerDriver.machine_quotas(DockerTarget(platform=DockerPlatform.LOCAL)) == ()
    kube = KubernetesTarget(platform=KubernetesPlatform.LOCAL, namespace="default", cluster=None)
    assert KubernetesDriver.machine_quotas(kube) == ()
    # Per target, per platform, per process (and its children).
    monkeypatch.setattr(mq, "_overrides", {})
    own = (quota(1, 1),)
    set_machine_quotas(target, own)
    assert machine_quotas_for(target, defaults) == own
    set_machine_quotas("gcp-cloud-run", ())
    other = CloudRunTarget(platform=DockerPlatform.GCP_CLOUD_RUN, project_id="p", region="s")
    assert machine_quotas_for(other, CloudRunDriver.machine_quotas(other)) == ()
    monkeypatch.setenv(mq.ENV, "off")
    assert machine_quotas_for(target, defaults) == ()


@pytest.mark.unit
def test_default_quotas_are_the_documented_ones_per_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CLOUD_RUN_EMULATOR_HOST", raising=False)
    run = CloudRunDriver.machine_quotas(
        CloudRunTarget(platform=DockerPlatform.GCP_CLOUD_RUN, project_id="p", region="r")
    )
    writes = next(q for q in run if q.deletes)
    assert writes.creates
    assert (writes.per_second * 60, writes.burst) == (60, 60)
    (share,) = [q for q in run if not q.deletes]  # creates leave half the writes to deletes
    assert (share.per_second, share.burst) == (writes.per_second / 2, writes.burst // 2)
    other_region = CloudRunDriver.machine_quotas(
        CloudRunTarget(platform=DockerPlatform.GCP_CLOUD_RUN, project_id="p", region="s")
    )
    assert {q.scope for q in run}.isdisjoint(q.scope for q in other_region)
    monkeypatch.setenv("CLOUD_RUN_EMULATOR_HOST", "127.0.0.1:1234")  # a cloud of its own
    emulated = CloudRunDriver.machine_quotas(
        CloudRunTarget(platform=DockerPlatform.GCP_CLOUD_RUN, project_id="p", region="r")
    )
    assert {q.scope for q in run}.isdisjoint(q.scope for q in emulated)

    def aci(group: str) -> tuple[MachineQuota, ...]:
        return AciDriver.machine_quotas(
            AciTarget(
                platform=DockerPlatform.AZURE_CONTAINER_INSTANCES,
                subscription_id="s",
                resource_group=group,
                region="westeurope",
            )
        )

    # ACI counts per subscription and region: two resource groups share the buckets.
    assert aci("a") == aci("b")
    for kind in ("creates", "deletes"):
        (bucket,) = [q for q in aci("a") if q.scope.startswith(f"azure-aci {kind}")]
        assert bucket.burst + bucket.per_second * 300 <= 100  # per 5 minutes
        assert bucket.burst + bucket.per_second * 3600 <= 300  # per hour
    ecs = EcsDriver.machine_quotas(EcsTarget(platform=DockerPlatform.AWS_ECS, region="eu-west-1"))
    assert {(q.burst, q.per_second) for q in ecs} == {(100, 40), (100, 20)}
    assert not any(q.deletes for q in ecs)


# -- several processes ----------------------------------------------------------------------


async def test_processes_share_one_bucket(runtime_dir: Path) -> None:
    """Six processes take five tokens each from a bucket of 5 refilled at 10/s: 30 calls
    that cannot take less than 2.5 s, whereas each process alone would take its five at
    once."""
    per_second, burst, takes = 10.0, 5, 5
    arguments = {"quotas": [{"scope": "shared", "per_second": per_second, "burst": burst}]}
    async with workers("bucket", [{**arguments, "takes": takes}] * 6, dict(os.environ)) as procs:
        results = await go(procs)
    stamps = [stamp for result in results for stamp in result["stamps"]]
    assert all(result["fallbacks"] == 0 for result in results)
    assert len(stamps) == 30
    line = rate_line("6 processes on one bucket", stamps, per_second, burst)
    print(line)
    assert max(stamps) - min(stamps) >= (30 - burst) / per_second * 0.95, line
    # Stamps are taken just after each take: a process scheduled out in between may
    # stamp late, which can only bunch stamps by one call.
    assert excess(stamps, per_second, burst) <= 1, line


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@contextmanager
def lock_held(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the bucket's lock (killed on the way out)."""
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)], stdout=subprocess.PIPE
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"locked\n"
            yield holder
        finally:
            holder.kill()


async def test_a_process_killed_holding_the_lock_leaves_nothing_taken(runtime_dir: Path) -> None:
    buckets = MachineBuckets([quota(0.1, 2)])
    with lock_held(bucket_path("test bucket")) as holder:
        waiting = asyncio.create_task(buckets.take_create())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # waits for the lock (in a thread)
        holder.send_signal(signal.SIGKILL)
        started = time.monotonic()
        await waiting  # the lock died with the process
        await buckets.take_create()  # and the bucket is whole: its burst of 2, at once
        assert time.monotonic() - started < 3.0  # a token every 10 s
        assert buckets.fallbacks == 0


async def test_a_stopped_lock_holder_delays_a_take_by_the_lock_timeout_at_most(
    runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mq, "LOCK_TIMEOUT", 0.5)
    buckets = MachineBuckets([quota(0.1, 2)])
    with lock_held(bucket_path("test bucket")) as holder:
        holder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="commandlab_async"):
            await buckets.take_create()
        assert 0.5 <= time.monotonic() - started < 4.0  # not the 10 s of a token
        assert buckets.fallbacks == 1
        assert "stayed locked" in caplog.text


# -- eight processes against the Cloud Run emulator ----------------------------------------

# The emulator's write quota, scaled down from 60 a minute so the test takes seconds: 4
# writes a second, in a bucket of 6. The workers' machine-wide writes bucket (the driver's
# own, scaled): 3 a second, a burst of 4, half of it for creates.
EMULATOR_WRITES_PER_MINUTE = 240
EMULATOR_WRITE_BURST = 6
WRITES_PER_SECOND = 3.0
WRITE_BURST = 4
PROCESSES = 8


def worker_env(runtime_dir: Path, *, machine_quota: bool) -> dict[str, str]:
    env = dict(os.environ)  # the emulator's endpoints, set by start_emulator
    env["COMMANDLAB_RUNTIME_DIR"] = str(runtime_dir)
    if machine_quota:
        env.pop(mq.ENV, None)
    else:
        env[mq.ENV] = "off"
    return env


async def quota_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CloudRunEmulator:
    """The Cloud Run emulator with the scaled-down write quota these runs meet."""
    return await start_emulator(
        tmp_path,
        monkeypatch,
        writes_per_minute=EMULATOR_WRITES_PER_MINUTE,
        write_burst=EMULATOR_WRITE_BURST,
    )


async def eight_workers(
    runtime_dir: Path, *, count: int, machine_quota: bool
) -> list[dict[str, Any]]:
    """PROCESSES workers each bringing up ``count`` sandboxes at once; their results."""
    arguments = {"count": count, "writes_per_second": WRITES_PER_SECOND, "write_burst": WRITE_BURST}
    env = worker_env(runtime_dir, machine_quota=machine_quota)
    async with workers("cloud-run", [arguments] * PROCESSES, env) as procs:
        return await go(procs)


@pytest.mark.docker
async def test_eight_processes_stay_within_cloud_runs_write_quota(
    runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await quota_emulator(tmp_path, monkeypatch)
    try:
        results = await eight_workers(runtime_dir, count=2, machine_quota=True)
    finally:
        left = await stop_emulator(emulator)
    assert left == []
    assert [r["error"] for r in results] == [None] * PROCESSES
    assert emulator.refused == []
    creates = [c.at for c in emulator.calls("CreateService")]
    writes = [c.at for c in emulator.calls("CreateService|DeleteService")]
    assert (len(creates), len(writes)) == (2 * PROCESSES, 4 * PROCESSES)
    lines = [
        rate_line("creates", creates, WRITES_PER_SECOND / 2, WRITE_BURST // 2),
        rate_line("writes", writes, WRITES_PER_SECOND, WRITE_BURST),
    ]
    print("\n".join(lines))
    # Arrival times at the emulator: one call may overtake another on its way there.
    assert excess(creates, WRITES_PER_SECOND / 2, WRITE_BURST // 2) <= 1, lines
    assert excess(writes, WRITES_PER_SECOND, WRITE_BURST) <= 1, lines
    assert excess(writes, EMULATOR_WRITES_PER_MINUTE / 60, EMULATOR_WRITE_BURST) <= 0, lines


@pytest.mark.docker
async def test_without_the_machine_quota_eight_processes_overrun_it(
    runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: each process within its own limits only. Deploys fail at once (no
    containers); the writes alone show the quota overrun."""
    emulator = await quota_emulator(tmp_path, monkeypatch)
    emulator.fail_deploys(13, "Deployment failed: the control needs no container.", times=100)
    try:
        await eight_workers(runtime_dir, count=3, machine_quota=False)
    finally:
        await stop_emulator(emulator)  # a delete may have run out of retries: not asserted
    writes = emulator.calls("CreateService|DeleteService")
    print(f"machine quota off: {len(emulator.refused)} of {len(writes)} writes refused")
    print(rate_line("writes", [c.at for c in writes], WRITES_PER_SECOND, WRITE_BURST))
    assert emulator.refused, "eight processes, each at its own limits, overrun the quota"
    assert not (runtime_dir / "quotas").exists()
