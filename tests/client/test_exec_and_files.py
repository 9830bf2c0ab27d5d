"""Commands and files on a real sandbox, tried as a careless and as a hostile user would.

Every test ends by checking that the sandbox is still alive and usable: no command's
output, stdin, file or connection storm may take it down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from commandlab_async import (
    CommandTimeoutError,
    Computer,
    DaemonError,
    DockerSpec,
    FileTooLargeError,
    OutputChunk,
    OutputLimitExceededError,
    RemoteFileNotFoundError,
    RemoteIsADirectoryError,
    RemoteNotADirectoryError,
    RemotePermissionError,
    RemoteProcessLookupError,
    ResourceExhaustedError,
    UnsupportedOperationError,
    provision,
)

pytestmark = pytest.mark.docker

MIB = 1024 * 1024


@pytest.fixture
async def computer() -> AsyncIterator[Computer]:
    async with provision(DockerSpec(memory=2048)) as computer:
        yield computer
        await assert_usable(computer)


async def assert_usable(computer: Computer) -> None:
    r = await computer.run("echo alive")
    assert r.stdout == "alive\n"


async def daemon_peak_rss_mib(computer: Computer) -> float:
    """The daemon's peak resident memory so far (VmHWM), read inside the sandbox."""
    pid = (await computer.health())["pid"]
    r = await computer.run(["grep", "VmHWM", f"/proc/{pid}/status"])
    return int(r.stdout.split()[1]) / 1024


async def test_two_gigabytes_of_stdout_keep_head_and_tail_in_bounded_memory(
    computer: Computer,
) -> None:
    r = await computer.run("yes | head -c 2000000000")
    assert r.exit_code == 0
    assert r.truncated
    kept = len(r.stdout_bytes)
    assert kept == 16 * MIB
    assert r.stdout_omitted == 2_000_000_000 - kept
    assert r.stdout_bytes[:4] == b"y\ny\n"
    assert r.stdout_bytes.endswith(b"y\n")
    assert await daemon_peak_rss_mib(computer) < 64


async def test_output_limit_can_raise_and_kills_the_command(computer: Computer) -> None:
    with pytest.raises(OutputLimitExceededError) as caught:
        await computer.run("yes", max_output=1000, on_output_limit="raise", timeout=60)
    result = caught.value.result
    assert result.exit_code == -9
    assert len(result.stdout_bytes) == 1000
    assert (await computer.run("pgrep -x yes || true")).stdout == ""


async def test_output_limit_raises_only_past_the_limit_not_half_of_it(computer: Computer) -> None:
    # Issue 27: a 9 MB command under the default 16 MiB limit was killed at 8 MiB.
    r = await computer.run("head -c 9000000 /dev/zero", on_output_limit="raise", timeout=60)
    assert (r.exit_code, r.truncated, r.stdout_bytes) == (0, False, bytes(9_000_000))


async def test_endless_output_with_a_timeout_is_cut_not_fatal(computer: Computer) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        await computer.run("yes", timeout=3)
    assert caught.value.result.truncated
    assert await daemon_peak_rss_mib(computer) < 64


async def test_a_gibibyte_goes_up_and_down_in_bounded_memory(
    computer: Computer, tmp_path: Path
) -> None:
    source = tmp_path / "up.bin"
    with source.open("wb") as f:  # sparse, with random bytes at both ends
        f.write(os.urandom(MIB))
        f.seek(1024 * MIB - MIB)
        f.write(os.urandom(MIB))
    tracemalloc.start()
    try:
        await computer.upload(source, "big/up.bin")
        back = tmp_path / "down.bin"
        size = await computer.download("big/up.bin", back)
        client_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == 1024 * MIB
    assert subprocess.run(["cmp", source, back]).returncode == 0
    assert client_peak < 100 * MIB
    assert await daemon_peak_rss_mib(computer) < 100
    await computer.run("rm big/up.bin")


async def test_a_terabyte_sparse_file_is_refused_by_size_before_transfer(
    computer: Computer,
) -> None:
    await computer.run("truncate -s 1T huge")
    with pytest.raises(FileTooLargeError) as caught:
        await computer.read_file("huge")
    assert caught.value.size == 1024**4
    with pytest.raises(FileTooLargeError):
        await computer.download("huge", os.devnull, max_size=1024)


async def test_cancelling_a_command_kills_it(computer: Computer) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(computer.run("sleep 1.5; touch sentinel-a"), 0.5)
    task = asyncio.create_task(computer.run("(sleep 1.5; touch sentinel-b) & wait"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(2)
    r = await computer.run("ls sentinel-* 2>/dev/null; pgrep -x sleep || true")
    assert r.stdout == ""


async def test_idle_unauthenticated_connections_do_not_lock_the_client_out(
    computer: Computer,
) -> None:
    def connect() -> socket.socket:
        if computer.url.startswith("unix:"):  # the local fast path
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(computer.url.removeprefix("unix:"))
            return sock
        url = urlsplit(computer.url)
        assert url.hostname == "127.0.0.1"
        return socket.create_connection((url.hostname, url.port or 80), timeout=5)

    idle = []
    try:
        for _ in range(1100):
            idle.append(connect())
        results = await asyncio.gather(*(computer.run(f"echo {i}") for i in range(20)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    finally:
        for sock in idle:
            sock.close()


async def test_a_mebibyte_of_argv_runs_without_a_shell(computer: Computer) -> None:
    args = ["x" * 1023] * 1024
    script = "import sys; print(len(sys.argv) - 1, sum(map(len, sys.argv[1:])))"
    r = await computer.run(["python3", "-c", script, *args])
    assert r.stdout == f"1024 {1023 * 1024}\n"
    r = await computer.run(["printf", "%s|", "$HOME", "a b", "*"])
    assert r.stdout == "$HOME|a b|*|"  # argv: no expansion, no splitting, no globbing


async def test_two_hundred_mebibytes_of_stdin_stream_through(computer: Computer) -> None:
    data = os.urandom(MIB) * 200
    r = await computer.run("wc -c", stdin=data)
    assert r.stdout.strip() == str(200 * MIB)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"z" * MIB

    r = await computer.run(["wc", "-c"], stdin=pieces())
    assert r.stdout.strip() == str(50 * MIB)
    assert await daemon_peak_rss_mib(computer) < 64


async def test_six_hundred_concurrent_commands_succeed_or_fail_one_typed_way(
    computer: Computer,
) -> None:
    outcomes = await asyncio.gather(
        *(computer.run("sleep 0.2; echo ok") for _ in range(600)), return_exceptions=True
    )
    failures = {type(o) for o in outcomes if isinstance(o, BaseException)}
    assert failures <= {ResourceExhaustedError}, failures
    assert sum(not isinstance(o, BaseException) and o.stdout == "ok\n" for o in outcomes) > 0


async def test_a_program_that_cannot_start_is_a_typed_os_error(computer: Computer) -> None:
    with pytest.raises(RemoteFileNotFoundError) as missing:
        await computer.run(["no-such-program"])
    assert isinstance(missing.value, FileNotFoundError)
    assert missing.value.code == "not_found"
    await computer.write_file("script.txt", "echo hi\n", mode=0o644)
    with pytest.raises(PermissionError):
        await computer.run(["./script.txt"])
    with pytest.raises(RemoteFileNotFoundError):
        await computer.run("pwd", cwd="no/such/dir")
    assert (await computer.run("no-such-program")).exit_code == 127  # the shell's own answer
    with pytest.raises(ValueError, match="timeout"):
        await computer.run("true", timeout=1e10)


async def test_file_errors_are_typed_and_carry_stable_codes(computer: Computer) -> None:
    home = await computer.working_dir()
    assert home == "/home/computer"
    with pytest.raises(RemoteIsADirectoryError) as is_dir:
        await computer.read_file("/tmp")
    assert isinstance(is_dir.value, IsADirectoryError)
    await computer.write_file("secret", "x", mode=0)
    with pytest.raises(RemotePermissionError) as denied:
        await computer.read_file("secret")
    assert (denied.value.code, denied.value.errno) == ("permission_denied", 13)
    with pytest.raises(RemoteNotADirectoryError):
        await computer.read_file("/etc/passwd/x")
    with pytest.raises(FileNotFoundError):
        await computer.stat("nothing-here")
    await computer.write_file("ro.txt", "original")
    await computer.run("chmod 444 ro.txt")
    with pytest.raises(PermissionError):
        await computer.write_file("ro.txt", "overwritten")
    assert await computer.read_file("ro.txt") == b"original"
    with pytest.raises(PermissionError):
        await computer.write_file("/etc/new-file", "x")


async def test_relative_paths_stat_and_listing(computer: Computer) -> None:
    await computer.write_file("deep/er/file.txt", "12345", mode=0o600)
    info = await computer.stat("deep/er/file.txt")
    assert (info.path, info.type, info.size, info.mode) == (
        "/home/computer/deep/er/file.txt",
        "file",
        5,
        0o600,
    )
    assert (await computer.run("cat file.txt", cwd="deep/er")).stdout == "12345"
    entries = await computer.list_dir("deep")
    assert [(e.name, e.type) for e in entries] == [("er", "directory")]
    # A listing says whose each entry is, as stat does (it said None).
    (listed,) = await computer.list_dir("deep/er")
    assert (listed.uid, listed.gid) == (info.uid, info.gid) == (1000, 1000)


async def test_streaming_a_process_with_stdin_and_signals(computer: Computer) -> None:
    async with computer.start(["python3", "-u", "-c", LOOP]) as process:
        output = process.output()
        assert await _line(output) == b"ready\n"
        await process.write("echo this\n")
        assert await _line(output) == b"echo this\n"
        await process.signal(15)
        assert [chunk async for chunk in output] == []
        assert process.exit_code == -15


LOOP = "import sys\nprint('ready')\nfor line in sys.stdin: print(line, end='')\n"


async def _line(output: AsyncIterator[OutputChunk]) -> bytes:
    """One stdout line, however the pipe split it into chunks (print writes its end apart)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await anext(output)
        assert chunk.stream == "stdout"
        line += chunk.data
    return line


async def test_background_processes_outlive_the_call_and_reattach(computer: Computer) -> None:
    process = await computer.start("for i in 1 2 3; do echo $i; sleep 0.3; done", background=True)
    await process.close()
    listed = {p.id: p for p in await computer.processes()}
    assert listed[process.id].running
    async with computer.attach(process.id) as again:
        assert b"".join([c.data async for c in again.output()]) == b"1\n2\n3\n"
        assert again.exit_code == 0
    sleeper = await computer.start("sleep 600", background=True)
    await sleeper.close()
    await computer.kill_process(sleeper.id)
    with pytest.raises(RemoteProcessLookupError):
        await computer.kill_process(sleeper.id)
    assert (await computer.run("pgrep -x sleep || true")).stdout == ""


async def test_finished_background_jobs_cannot_exhaust_a_small_sandbox() -> None:
    # Issue 27: finished jobs' output was kept, and in a 128 MiB sandbox the 46th job of
    # ~2 MB got the daemon OOM-killed (and the sandbox with it).
    job = "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2"
    async with provision(DockerSpec(memory=128)) as computer:
        ids = []
        for _ in range(64):
            process = await computer.start(job, background=True)
            await process.close()
            ids.append(process.id)
            while any(p.id == process.id and p.running for p in await computer.processes()):
                await asyncio.sleep(0.02)
        assert await daemon_peak_rss_mib(computer) < 80
        assert [p.exit_code for p in await computer.processes()] == [0] * 64
        async with computer.attach(ids[-1]) as newest:
            kept = [chunk async for chunk in newest.output()]
        assert newest.exit_code == 0
        assert sum(len(c.data) for c in kept if c.stream == "stderr") >= MIB
        with pytest.raises(DaemonError) as caught:
            await computer.attach(ids[0])
        assert caught.value.code == "output_evicted"
        assert "exit code 0" in str(caught.value)
        await assert_usable(computer)


async def test_switching_users_needs_a_root_sandbox() -> None:
    async with provision(DockerSpec()) as computer:
        with pytest.raises(UnsupportedOperationError):
            await computer.run("id -u", user="root")
        assert (await computer.run("id -u", user=1000)).stdout == "1000\n"  # itself: fine
    async with provision(DockerSpec(run_as_root=True)) as computer:
        r = await computer.run("id -un; echo $HOME", user="nobody")
        assert r.stdout == "nobody\n/nonexistent\n"
        assert (await computer.run("id -u")).stdout == "0\n"


async def test_a_process_is_gone_from_the_listing_once_its_block_ends(computer: Computer) -> None:
    """Killed by leaving the block, or waited for: either way ``processes()`` no longer
    lists it when the block is left (it did about half the time)."""
    for _ in range(10):
        async with computer.start(["sleep", "30"]) as running:
            pass
        async with computer.start(["true"]) as finished:
            assert await finished.wait() == 0
        listed = {p.id for p in await computer.processes()}
        assert running.id not in listed
        assert finished.id not in listed
