"""Signals, SIGKILL, TTL and the reaper: sandboxes go away even when the process does not
clean up itself, and the reaper never touches a live sibling's."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from commandlab_async import CleanupError, DockerSpec, gc, provision
from commandlab_async._admin import reaper
from commandlab_async._admin.reaper import why_reap
from commandlab_async._lifecycle.identity import owner_labels, owner_namespace, process_start_ticks
from commandlab_async.emulators.faults import FaultyDockerProxy, Rule
from commandlab_async.labels import EXPIRES_AT, OWNER_NS, PID, PID_START, SESSION
from commandlab_async.platforms.driver import SandboxRecord
from tests.conftest import NEVER_HEALTHY_IMAGE, commandlab_cli, docker, our_containers

pytestmark = pytest.mark.docker


def containers_of(pid: int) -> list[str]:
    return docker("ps", "-a", "--filter", f"label={PID}={pid}", "--format", "{{.Names}}").split()


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Holder:
    """A subprocess holding a fleet (tests/lifecycle/holder.py)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line == b"ready\n", line

    async def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 60)


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Coroutine[Any, Any, Holder]]]:
    holders: list[Holder] = []

    async def start(
        count: int = 2, image: str | None = None, env: dict[str, str] | None = None
    ) -> Holder:
        args = [sys.executable, "-m", "tests.lifecycle.holder", str(count)] + (
            [image] if image else []
        )
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}
        )
        holders.append(Holder(proc))
        return holders[-1]

    yield start
    for holder in holders:
        if holder.proc.returncode is None:
            holder.proc.kill()
            await holder.proc.wait()
        leftovers = containers_of(holder.pid)
        if leftovers:
            docker("rm", "-f", *leftovers)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["creating", "waiting", "body"])
async def test_signal_cleans_up_then_exits_by_the_signal(
    spawn: Callable[..., Coroutine[Any, Any, Holder]],
    docker_proxy: FaultyDockerProxy,
    phase: str,
    sig: signal.Signals,
) -> None:
    if phase == "creating":
        rule = docker_proxy.add(Rule(r"POST /containers/create", delay_after=1.0))
        holder = await spawn(2)
        await rule.seen.wait()
        await asyncio.sleep(0.2)
    elif phase == "waiting":
        holder = await spawn(2, NEVER_HEALTHY_IMAGE)
        await eventually(lambda: len(containers_of(holder.pid)) == 2)
        await asyncio.sleep(0.3)
    else:
        holder = await spawn(2)
        await holder.wait_ready()
    status = await holder.stop(sig)
    assert status == -sig, f"exit status {status}, expected death by {sig.name}"
    assert containers_of(holder.pid) == []


async def test_a_programs_own_sigterm_handler_runs_after_cleanup(
    spawn: Callable[..., Coroutine[Any, Any, Holder]],
) -> None:
    holder = await spawn(2, env={"HOLDER_OWN_SIGTERM": "signal"})
    await holder.wait_ready()
    assert await holder.stop(signal.SIGTERM) == 3  # the program's handler ended it...
    assert holder.proc.stdout is not None
    said = await holder.proc.stdout.read()
    assert said == b"own handler: 0 sandboxes left\n"  # ...once its sandboxes were gone


async def test_a_sigterm_the_program_gave_its_event_loop_stays_the_loops(
    spawn: Callable[..., Coroutine[Any, Any, Holder]],
) -> None:
    holder = await spawn(2, env={"HOLDER_OWN_SIGTERM": "loop"})
    await holder.wait_ready()
    assert await holder.stop(signal.SIGTERM) == 1  # cancelled by its own handler
    assert holder.proc.stdout is not None
    assert await holder.proc.stdout.read() == b"own loop handler\n"
    assert containers_of(holder.pid) == []


async def test_sigkill_leaves_sandboxes_that_gc_removes_without_touching_siblings(
    spawn: Callable[..., Coroutine[Any, Any, Holder]],
) -> None:
    victim, sibling_a, sibling_b = [await spawn(1) for _ in range(3)]
    for holder in (victim, sibling_a, sibling_b):
        await holder.wait_ready()
    async with provision(DockerSpec()):  # this process is a live owner too
        assert await victim.stop(signal.SIGKILL) == -signal.SIGKILL
        assert len(containers_of(victim.pid)) == 1, "nothing can clean up after SIGKILL"

        dry = await commandlab_cli("gc", "--dry-run")
        assert f"owner process {victim.pid} is gone" in dry
        assert len(containers_of(victim.pid)) == 1

        out = await commandlab_cli("gc")
        assert "deleted 1 sandbox(es)" in out
        assert containers_of(victim.pid) == []
        assert len(containers_of(sibling_a.pid)) == 1
        assert len(containers_of(sibling_b.pid)) == 1
        assert len(our_containers()) == 1
    for holder in (sibling_a, sibling_b):
        assert await holder.stop(signal.SIGTERM) == -signal.SIGTERM
        assert containers_of(holder.pid) == []


async def test_gc_in_another_pid_namespace_spares_owners_it_cannot_see(
    spawn: Callable[..., Coroutine[Any, Any, Holder]],
) -> None:
    """Same hostname, own PID namespace (a container, a CI runner): the owners' pids mean
    nothing there, so that reaper leaves their sandboxes to the TTL; one in the owners'
    namespace still deletes a dead owner's."""
    probe = [
        "-c",
        "from commandlab_async._lifecycle.identity import owner_namespace as o; print(o())",
    ]
    assert (await in_new_pid_namespace(*probe)).strip() not in ("None", owner_namespace())
    # the /proc of the namespace above shows other pids: no namespace to judge in
    assert (await in_new_pid_namespace(*probe, mount_proc=False)).strip() == "None"
    live, dead = await spawn(1), await spawn(1)
    for holder in (live, dead):
        await holder.wait_ready()
    assert await dead.stop(signal.SIGKILL) == -signal.SIGKILL
    async with provision(DockerSpec()):  # this process is a live owner too
        out = await in_new_pid_namespace("-m", "commandlab_async.integrations.cli", "gc")
        assert out.splitlines() == ["deleted 0 sandbox(es)"]
        assert len(containers_of(live.pid)) == 1
        assert len(containers_of(dead.pid)) == 1, "not its to judge: left to the TTL"
        assert len(our_containers()) == 1

        out = await commandlab_cli("gc")
        assert f"owner process {dead.pid} is gone" in out
        assert containers_of(dead.pid) == []
        assert len(containers_of(live.pid)) == 1
        assert len(our_containers()) == 1
    assert await live.stop(signal.SIGTERM) == -signal.SIGTERM


async def in_new_pid_namespace(*args: str, mount_proc: bool = True) -> str:
    """Output of ``python ARGS`` run as pid 1 of a new PID namespace, with a /proc of its
    own unless ``mount_proc`` is false (the hostname stays); skips the test where
    ``unshare`` is missing or not permitted."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux) to make a PID namespace")
    proc = await asyncio.create_subprocess_exec(
        *[unshare, "--pid", "--fork", *["--mount-proc"] * mount_proc, sys.executable, *args],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 and b"Operation not permitted" in err:
        pytest.skip(f"not permitted to make a PID namespace: {err.decode().strip()}")
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_ttl_removes_the_sandbox_by_itself() -> None:
    async with provision(DockerSpec(ttl=2)) as computer:
        assert (await computer.health())["expires_in"] <= 2
        await eventually(lambda: our_containers() == [], timeout=30)
    # leaving the block after the sandbox expired is not an error


async def test_gc_deletes_expired_sandboxes_of_live_owners() -> None:
    async with provision(DockerSpec()) as computer:
        name = computer.name
        assert await gc() == []
        # Label-based expiry as a foreign tool sees it (this sandbox's label says 1 h).
        later = time.time() + 2 * 3600
        info = docker("inspect", "-f", "{{json .Config.Labels}}", name)
        record = SandboxRecord(name, json.loads(info), "running")
        assert why_reap(record, now=later) == "expired"
        assert why_reap(record) is None


def test_why_reap_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    ours = owner_namespace()
    assert ours is not None, "this Linux /proc should tell our boot and PID namespace"

    def record(**labels: str) -> SandboxRecord:
        base = owner_labels()  # this very process, alive, in this namespace
        base.update({SESSION: "other", EXPIRES_AT: str(int(now + 60))}, **labels)
        return SandboxRecord("x", {k: v for k, v in base.items() if v}, "running")

    me = os.getpid()
    assert record().labels[OWNER_NS] == ours
    assert why_reap(record()) is None  # a live owner in our namespace
    assert why_reap(record(**{EXPIRES_AT: str(int(now - 1))})) == "expired"
    assert why_reap(record(**{EXPIRES_AT: "never"})) is None
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert why_reap(record(**{PID: dead})) == f"owner process {dead} is gone"
    # kept: it belongs to no process any more, only its TTL ends it
    assert why_reap(record(**{PID: dead}), kept=True) is None
    assert why_reap(record(**{PID: dead, EXPIRES_AT: str(int(now - 1))}), kept=True) == "expired"
    # our pid, alive, but started at another tick: the pid was reused
    assert why_reap(record(**{PID_START: "1"})) == f"owner process {me} is gone"
    # another live process, with its own start: alive
    init_start = process_start_ticks(1)
    assert init_start is not None
    assert why_reap(record(**{PID: "1", PID_START: init_start})) is None
    # another machine or PID namespace, or a label from before owner-ns: not ours to judge
    for other_ns in ("0123456789abcdef", ""):
        assert why_reap(record(**{PID: dead, OWNER_NS: other_ns})) is None
        assert why_reap(record(**{PID_START: "1", OWNER_NS: other_ns})) is None
        expired = record(**{PID: dead, OWNER_NS: other_ns, EXPIRES_AT: str(int(now - 1))})
        assert why_reap(expired) == "expired"
    for bad_pid in ("0", "-1", "", "1e30", "²", "99999999999999999999"):
        assert why_reap(record(**{PID: bad_pid})) is None
    with monkeypatch.context() as patch:  # where /proc cannot tell our namespace
        patch.setattr(reaper, "owner_namespace", lambda: None)
        assert why_reap(record(**{PID: dead, OWNER_NS: ""})) is None
        assert why_reap(record(**{PID: dead})) is None
    # Finished but still there (a stopped ACI group counts against the quota): whoever owns it.
    finished = SandboxRecord("x", record(**{OWNER_NS: ""}).labels, "Succeeded", True)
    assert why_reap(finished) == "finished (Succeeded)"


def test_owner_labels_fit_every_backend() -> None:
    """Kubernetes' label-value rules, the strictest of our backends (Cloud Run also
    lowercases, which hex and digits already are)."""
    labels = owner_labels()
    assert {OWNER_NS, PID_START} <= labels.keys()
    assert re.fullmatch(r"[0-9a-f]{16}", labels[OWNER_NS])
    assert labels[PID_START] == process_start_ticks(os.getpid())
    for key in (OWNER_NS, PID_START, PID, SESSION):
        assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", labels[key])


async def test_gc_reports_what_it_could_not_delete_and_deletes_the_rest(
    spawn: Callable[..., Coroutine[Any, Any, Holder]], docker_proxy: FaultyDockerProxy
) -> None:
    victim = await spawn(2)
    await victim.wait_ready()
    assert await victim.stop(signal.SIGKILL) == -signal.SIGKILL
    stuck, _freed = containers_of(victim.pid)
    docker_proxy.add(Rule(rf"DELETE /containers/{stuck}", status=400))
    with pytest.raises(CleanupError) as info:
        await gc()
    assert info.value.sandbox == stuck
    assert containers_of(victim.pid) == [stuck]
    docker_proxy.rules.clear()
    assert [r.name for r in await gc()] == [stuck]
    assert containers_of(victim.pid) == []
