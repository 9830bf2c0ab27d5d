"""A real Inspect eval on commandlab sandboxes, and the provider's own edges.

The eval (tests/integrations/inspect_eval/eval_task.py) runs in a subprocess, as a user would run
it: 10 samples at once, each using the bash tool in its own sandbox, scored by Inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import pytest
from inspect_ai.util import ExecResult, SandboxUserUnsupportedError
from inspect_ai.util._sandbox.exec_remote import (
    ExecCompleted,
    ExecRemoteAwaitableOptions,
    ExecRemoteStreamingOptions,
    ExecStderr,
    ExecStdout,
)
from inspect_ai.util._sandbox.limits import override_max_exec_output_size

from commandlab_async import KubernetesSpec, SpecError
from commandlab_async.integrations.inspect_sandbox import (
    CommandLabSandbox,
    CommandLabSandboxConfig,
)
from commandlab_async.integrations.inspect_sandbox.config import load_config
from tests.conftest import ENGINE_ENV, docker, run_cli

EVAL = Path(__file__).parent / "inspect_eval" / "eval_task.py"


def sandboxes_of(run: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=eval-run={run}").split()


async def start_eval(run: str, sleep: float, log_dir: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EVAL),
        run,
        str(sleep),
        str(log_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.docker
async def test_ten_samples_run_at_once_are_scored_and_leave_nothing(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:12]
    proc = await start_eval(run, 4, tmp_path)
    peak = 0
    while proc.returncode is None:
        peak = max(peak, len(sandboxes_of(run)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.2)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["status"] == "success"
    samples = report["samples"]
    assert sorted(s["id"] for s in samples) == list(range(10))
    assert [s["error"] for s in samples] == [None] * 10
    assert [s["score"] for s in samples] == ["C"] * 10, "each sample's tool ran in a sandbox"
    # All ten were in flight at once: each started before any finished.
    starts = [datetime.fromisoformat(s["started_at"]) for s in samples]
    ends = [datetime.fromisoformat(s["completed_at"]) for s in samples]
    assert max(starts) < min(ends)
    assert peak == 10, f"at most {peak} sandboxes were up at once"
    assert sandboxes_of(run) == []


@asynccontextmanager
async def eval_with_ten_sandboxes_up(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """An eval whose 10 samples hold their sandboxes (for 10 minutes) when the block starts."""
    run = uuid.uuid4().hex[:12]
    proc = await start_eval(run, 600, tmp_path)
    try:
        async with asyncio.timeout(120):
            while len(sandboxes_of(run)) < 10:
                await asyncio.sleep(0.2)
        yield run, proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if left := sandboxes_of(run):
            docker("rm", "-f", *left)


@pytest.mark.docker
async def test_sigterm_mid_eval_deletes_every_sandbox_then_ends_by_sigterm(
    tmp_path: Path,
) -> None:
    async with eval_with_ten_sandboxes_up(tmp_path) as (run, proc):
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 90)
        assert proc.returncode == -signal.SIGTERM
        assert sandboxes_of(run) == []


@pytest.mark.docker
async def test_inspect_sandbox_cleanup_removes_what_a_killed_eval_left(tmp_path: Path) -> None:
    async with eval_with_ten_sandboxes_up(tmp_path) as (run, proc):
        proc.kill()  # SIGKILL: no cleanup at all
        await proc.wait()
        assert len(sandboxes_of(run)) == 10
        inspect_cli = Path(sys.executable).parent / "inspect"
        cleanup = await asyncio.create_subprocess_exec(
            str(inspect_cli), "sandbox", "cleanup", "commandlab", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(cleanup.communicate(), 120)
        assert cleanup.returncode == 0
        assert "sandbox(es) deleted" in out.decode()
        assert sandboxes_of(run) == []


@pytest.mark.docker
async def test_no_sandbox_cleanup_keeps_the_sandbox_and_says_how_it_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = CommandLabSandboxConfig(ttl=600)
    environments = await CommandLabSandbox.sample_init("kept_task", config, {})
    sandbox = environments["default"]
    assert isinstance(sandbox, CommandLabSandbox)
    name = sandbox.computer.name
    try:
        # Inspect skips sample_cleanup under --no-sandbox-cleanup, then says cleanup=False.
        await CommandLabSandbox.task_cleanup("pkg/kept_task", config, cleanup=False)
        assert docker("ps", "-q", "--filter", f"name={name}") != ""
        said = capsys.readouterr().out
        assert f"commandlab exec -i {name} -- sh" in said
        assert f"commandlab rm {name}" in said
    finally:
        docker("rm", "-f", name)


KEPT_TASK = Path(__file__).parent / "inspect_eval" / "kept_task.py"


async def inspect_eval(tmp_path: Path, *flags: str) -> tuple[str, dict[str, str]]:
    """``inspect eval kept_task.py --model mockllm/model --sandbox commandlab FLAGS`` in a
    process of its own, as a user runs it; what it printed (it must succeed) and its env."""
    env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(tmp_path / "state")}
    shutil.copy(KEPT_TASK, tmp_path)  # Inspect takes a task file by a relative path
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "inspect"),
        *("eval", KEPT_TASK.name, "--model", "mockllm/model", "--sandbox", "commandlab"),
        *("--log-dir", str(tmp_path / "logs"), *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    said = out.decode()
    assert proc.returncode == 0, said[-3000:]
    for noise in ("Traceback", "Session is closed", "athrow", "ERROR", "WARNING"):
        assert noise not in said, said[-3000:]
    return said, env


def kept_by_inspect() -> list[str]:
    label = "label=inspect-task=kept_by_inspect"
    return docker("ps", "-a", "--filter", label, "--format", "{{.Names}}").split()


@pytest.mark.docker
async def test_inspect_eval_no_sandbox_cleanup_keeps_every_sandbox(tmp_path: Path) -> None:
    """The real command line: Inspect calls task_cleanup("shutdown", ...) itself."""
    try:
        said, env = await inspect_eval(tmp_path, "--no-sandbox-cleanup")
        names = re.findall(r"commandlab rm (\S+)", said)
        assert len(names) == 2, said[-3000:]
        assert sorted(names) == sorted(kept_by_inspect())
        for name in names:
            assert f"commandlab exec -i {name} -- sh" in said
        # Alive through the run (each holds what its sample wrote) and after it; kept.
        found = {
            run_cli("exec", name, "--", "cat", "/tmp/sample", env=env).stdout for name in names
        }
        assert found == {b"first", b"second"}
        listed = json.loads(run_cli("ls", "--json", env=env).stdout)
        assert {i["name"]: i["owner"] for i in listed if i["name"] in names} == dict.fromkeys(
            names, "kept"
        )
        assert run_cli("gc", env=env).returncode == 0
        assert sorted(kept_by_inspect()) == sorted(names)
        assert run_cli("rm", *names, env=env).returncode == 0
        assert kept_by_inspect() == []
    finally:
        if left := kept_by_inspect():
            docker("rm", "-f", *left)


@pytest.mark.docker
async def test_inspect_eval_deletes_every_sandbox_quietly(tmp_path: Path) -> None:
    try:
        said, _ = await inspect_eval(tmp_path)
        assert "commandlab rm" not in said
        assert kept_by_inspect() == []
    finally:
        if left := kept_by_inspect():
            docker("rm", "-f", *left)


@pytest.mark.docker
async def test_task_cleanup_deletes_what_samples_left() -> None:
    environments = await CommandLabSandbox.sample_init("left_task", None, {})
    name = environments["default"].as_type(CommandLabSandbox).computer.name
    assert docker("ps", "-q", "--filter", f"name={name}") != ""
    await CommandLabSandbox.task_cleanup("pkg/left_task", None, cleanup=True)
    assert docker("ps", "-aq", "--filter", f"name={name}") == ""


@pytest.fixture
async def sandbox() -> CommandLabSandbox:  # type: ignore[misc]
    config = CommandLabSandboxConfig(user="computer")
    environments = await CommandLabSandbox.sample_init("edges", config, {})
    try:
        yield environments["default"].as_type(CommandLabSandbox)
    finally:
        await CommandLabSandbox.sample_cleanup("edges", config, environments, False)


@pytest.mark.docker
async def test_exec_remote_streams_events_as_they_come(sandbox: CommandLabSandbox) -> None:
    script = "echo one; sleep 0.3; echo two >&2; printf '\\303'; printf '\\251'; exit 3"
    process = await sandbox.exec_remote(["sh", "-c", script])
    events = [event async for event in process]
    assert events[0] == ExecStdout("one\n")
    assert ExecStderr("two\n") in events
    assert "".join(e.data for e in events if isinstance(e, ExecStdout)) == "one\né"
    assert events[-1] == ExecCompleted(3)
    with pytest.raises(RuntimeError, match="only be iterated once"):
        aiter(process)


@pytest.mark.docker
async def test_exec_remote_stdin_kill_and_awaitable(sandbox: CommandLabSandbox) -> None:
    cat = await sandbox.exec_remote(["cat"], ExecRemoteStreamingOptions(stdin_open=True))
    await cat.write_stdin("hello ")
    await cat.write_stdin(b"world")
    await cat.close_stdin()
    events = [e async for e in cat]
    # cat may echo the first write before the second arrives (a busy machine): one stream.
    assert "".join(e.data for e in events if isinstance(e, ExecStdout)) == "hello world"
    assert events[-1] == ExecCompleted(0)

    sleeper = await sandbox.exec_remote(["sh", "-c", "sleep 300 # remote-kill-marker"])
    await sleeper.kill()
    assert [e async for e in sleeper] == []  # killed: no ExecCompleted
    ps = await sandbox.exec(["sh", "-c", "ps -eo args | grep [r]emote-kill-marker"])
    assert ps.stdout == ""

    result = await sandbox.exec_remote(["sh", "-c", "echo out"], stream=False)
    assert result == ExecResult(True, 0, "out\n", "")
    with pytest.raises(TimeoutError):
        await sandbox.exec_remote(
            ["sleep", "30"], ExecRemoteAwaitableOptions(timeout=1), stream=False
        )


@pytest.mark.docker
async def test_exec_keeps_the_trailing_output_and_maps_failures(
    sandbox: CommandLabSandbox,
) -> None:
    with override_max_exec_output_size(1000):
        result = await sandbox.exec(["sh", "-c", "seq 1 2000; echo last"])
    assert result.success
    assert len(result.stdout) == 1000
    assert result.stdout.endswith("1999\n2000\nlast\n")
    missing = await sandbox.exec(["no-such-program"])
    assert (missing.success, missing.returncode) == (False, 127)
    assert "no-such-program" in missing.stderr
    killed = await sandbox.exec(["sh", "-c", "kill -KILL $$"])
    assert killed.returncode == 137
    assert (await sandbox.exec(["whoami"])).stdout == "computer\n"
    assert (await sandbox.exec(["whoami"], user="root")).stdout == "root\n"
    with pytest.raises(TimeoutError) as info:
        await sandbox.exec(["sh", "-c", "echo partial; sleep 30"], timeout=1)
    assert info.value.truncated_output == "partial\n"  # type: ignore[attr-defined]


@pytest.mark.docker
async def test_files_follow_inspects_contract(sandbox: CommandLabSandbox) -> None:
    await sandbox.write_file("crlf.txt", "a\r\nb")
    assert await sandbox.read_file("crlf.txt") == "a\r\nb"  # newlines kept as they are
    await sandbox.write_file("bad.bin", b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        await sandbox.read_file("bad.bin")
    assert await sandbox.read_file("bad.bin", text=False) == b"\xff\xfe"
    connection = await sandbox.connection()
    assert connection.command == f"docker exec -it --user computer {sandbox.computer.name} bash -l"
    assert connection.container == sandbox.computer.name


@pytest.mark.docker
async def test_a_sandbox_that_cannot_switch_users_says_so(tmp_path: Path) -> None:
    config = CommandLabSandboxConfig(run_as_root=False)
    environments = await CommandLabSandbox.sample_init("no_root", config, {})
    sandbox = environments["default"].as_type(CommandLabSandbox)
    try:
        with pytest.raises(SandboxUserUnsupportedError):
            await sandbox.exec(["whoami"], user="root")
    finally:
        await CommandLabSandbox.sample_cleanup("no_root", config, environments, True)


@pytest.mark.unit
def test_configs_map_onto_specs_or_fail_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("platform: kubernetes\nnamespace: evals\nmemory: 512\n")
    spec = load_config(str(tmp_path / "c.yaml")).to_spec()
    assert isinstance(spec, KubernetesSpec)
    assert (spec.namespace, spec.memory, spec.name_prefix) == ("evals", 512, "inspect")
    (tmp_path / "c.json").write_text('{"image": "alpine-with-python", "env": {"A": "1"}}')
    assert load_config(str(tmp_path / "c.json")).to_spec().image == "alpine-with-python"
    assert load_config({"memory": 512}) != load_config(None)
    hash(load_config({"env": {"A": "1"}}))  # Inspect keys its caches by config

    bad = [
        ({"platform": "mainframe"}, "platform"),
        ({"colour": "blue"}, "colour"),
        ({"memory": "lots"}, "memory"),
        ({"memory": 8}, "memory"),
        ({"namespace": "x"}, "namespace"),
        ({"options": {"warp_drive": True}}, "warp_drive"),
        (str(tmp_path / "missing.yaml"), "cannot read"),
        (str(tmp_path / "c.txt"), "yaml"),
    ]
    (tmp_path / "c.txt").write_text("platform: docker")
    for config, named in bad:
        with pytest.raises(SpecError, match=named):
            load_config(config).to_spec()
