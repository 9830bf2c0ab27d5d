"""The CLI as people use it (issue 30): ``cp`` as ``cp(1)``/``scp`` do, ``exec --timeout``
says so, Ctrl-C at any moment is quiet, and no message shows the library's internals
(enum reprs, encoded socket URLs, empty lists)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from commandlab_async import (
    Computer,
    DaemonUnreachableError,
    DockerOptions,
    DockerSpec,
    KubeconfigOptions,
    KubernetesPlatform,
    SandboxExitedError,
    SpecError,
    provision,
)
from commandlab_async._client.transport import new_session
from tests.conftest import ENGINE_ENV, EXITS_ZERO_IMAGE, NEVER_HEALTHY_IMAGE, docker

REPO = Path(__file__).resolve().parents[2]
# No traceback, and no "Exception ignored" one either; none of the internals.
NEVER_SAID = (b"Traceback", b"Exception ignored", b"commandlab-unix", b"2f746d70", b"Error(")


def _quiet(stderr: bytes) -> None:
    for words in NEVER_SAID:
        assert words not in stderr, stderr


class Cli:
    def __init__(self, state: Path) -> None:
        self.env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state)}

    def __call__(
        self, *args: str, cwd: Path | None = None, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [sys.executable, "-m", "commandlab_async.integrations.cli", *args],
            input=stdin,
            capture_output=True,
            timeout=120,
            env=self.env,
            cwd=cwd,
        )
        _quiet(done.stderr)
        return done

    def interrupted(self, *args: str, after: float) -> subprocess.Popen[bytes]:
        """The ``commandlab`` script (its entry point, ``script``), sent SIGINT ``after``
        seconds after the script imported it (the test waits for that)."""
        start = (
            "import sys; from commandlab_async.integrations.cli import script;"
            " sys.stdout.buffer.write(b'.'); sys.stdout.flush(); sys.exit(script())"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", start, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**self.env, "PYTHONPATH": str(REPO)},
        )
        assert process.stdout is not None
        assert process.stdout.read(1) == b"."
        time.sleep(after)
        process.send_signal(signal.SIGINT)
        return process


def _finish(process: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[Cli, str]]:
    """One sandbox brought up by `commandlab up`, shared by the module's tests."""
    with tempfile.TemporaryDirectory() as state:
        cli = Cli(Path(state))
        label = f"test={uuid.uuid4().hex[:12]}"
        done = cli("up", "--ttl", "300", "-l", label, "--json")
        assert done.returncode == 0, done.stderr
        (item,) = json.loads(done.stdout)
        try:
            yield cli, item["name"]
        finally:
            cli("rm", "-l", label)


@pytest.mark.docker
def test_cp_to_a_directory_puts_the_file_in_it_under_its_name(
    sandbox: tuple[Cli, str], tmp_path: Path
) -> None:
    cli, name = sandbox
    assert cli("exec", name, "--", "sh", "-c", "echo out > /tmp/out.txt").returncode == 0
    # The README's example: `.` was "[Errno 21] Is a directory: '.'".
    done = cli("cp", f"{name}:/tmp/out.txt", ".", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_bytes() == b"out\n"
    (tmp_path / "into").mkdir()
    for target in ("into", "into/"):
        (tmp_path / "into" / "out.txt").unlink(missing_ok=True)
        assert cli("cp", f"{name}:/tmp/out.txt", target, cwd=tmp_path).returncode == 0
        assert (tmp_path / "into" / "out.txt").read_bytes() == b"out\n"

    local = tmp_path / "data.csv"
    local.write_bytes(b"a,b\n")
    # An existing remote directory, one that ends in "/" (made), and scp's NAME: (home).
    for remote, landed in [
        ("/tmp", "/tmp/data.csv"),
        ("/tmp/new/", "/tmp/new/data.csv"),
        ("", "/home/computer/data.csv"),
    ]:
        done = cli("cp", "data.csv", f"{name}:{remote}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"{name}:{landed}".encode() in done.stderr
        assert cli("exec", name, "--", "cat", landed).stdout == b"a,b\n"
    # stdin has no name to give the file: a usage error, before anything is written.
    done = cli("cp", "-", f"{name}:/tmp/", stdin=b"x")
    assert (done.returncode, done.stderr.count(b"\n")) == (2, 1), done.stderr
    assert cli("cp", "-", f"{name}:/tmp/piped", stdin=b"piped").returncode == 0
    assert cli("cp", f"{name}:/tmp/piped", "-").stdout == b"piped"


@pytest.mark.docker
def test_a_local_source_that_cannot_be_sent_is_said_as_the_shell_says_it(
    cli: Cli, tmp_path: Path
) -> None:
    """Said before any sandbox is contacted (this one does not exist): it was
    ``ClientOSError(2, 'Can not write request body for http://2f746d702f…')``."""
    (tmp_path / "folder").mkdir()
    for source, words in [
        ("data.csv", b"commandlab: data.csv: No such file or directory\n"),
        ("folder", b"commandlab: folder: Is a directory\n"),
    ]:
        done = cli("cp", source, "nosuch-123456:/tmp/x", cwd=tmp_path)
        assert (done.returncode, done.stderr) == (1, words)


@pytest.mark.docker
def test_exec_timeout_says_it_timed_out_and_exits_124(sandbox: tuple[Cli, str]) -> None:
    cli, name = sandbox
    started = time.monotonic()
    done = cli("exec", "--timeout", "1", name, "--", "sleep", "30")
    assert time.monotonic() - started < 15
    assert done.returncode == 124
    assert done.stderr == b"commandlab: timed out after 1s: the command was killed\n"
    # A command killed by anyone else is still 128+9, as the shells say.
    assert cli("exec", name, "--", "sh", "-c", "kill -KILL $$").returncode == 128 + 9


@pytest.mark.docker
def test_ctrl_c_while_starting_exits_130_without_a_traceback(cli: Cli) -> None:
    """Argument parsing, the event loop's setup, the command, the interpreter's end: it
    was a traceback. (The package's own import, a third of a second before the script's
    code runs, is the one moment left: the project's layout has no module outside it.)"""
    interrupted = (130, -signal.SIGINT)
    for after in (0.0, 0.01, 0.05, 0.15, 0.3, 0.5):
        status, _, err = _finish(cli.interrupted("ls", "-l", "test=none", after=after))
        _quiet(err)
        # 130, or killed by SIGINT itself (what the shell shows as 130) once the
        # interpreter has restored the default action at its very end; or done.
        assert status in (*interrupted, 0), (after, status, err)


@pytest.mark.docker
def test_ctrl_c_during_up_deletes_what_it_brought_up(cli: Cli) -> None:
    """An image whose daemon never answers: `up` waits, and is interrupted while it does."""
    label = f"test={uuid.uuid4().hex[:12]}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commandlab_async.integrations.cli",
            "up",
            "--image",
            NEVER_HEALTHY_IMAGE,
            "-l",
            label,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**cli.env, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not docker("ps", "-q", "--filter", f"label={label}").strip():
        assert time.monotonic() < deadline
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    status, out, err = _finish(process)
    assert (status, out) == (130, b""), err
    _quiet(err)
    assert not docker("ps", "-aq", "--filter", f"label={label}").strip()
    assert cli("ls", "-l", label, "--json").stdout.strip() == b"[]"


@pytest.mark.docker
async def test_an_image_that_does_not_run_the_daemon_is_told_how_to_fix_it() -> None:
    with pytest.raises(SandboxExitedError) as caught:
        async with provision(DockerSpec(image=EXITS_ZERO_IMAGE)):
            pass
    assert caught.value.exit_code == 0
    assert "must start the commandlab daemon" in str(caught.value)
    assert "commandlab image build" in str(caught.value)


@pytest.mark.unit
def test_spec_errors_name_platforms_as_written() -> None:
    with pytest.raises(SpecError) as caught:
        DockerSpec(options=KubeconfigOptions())
    assert (
        str(caught.value) == "options: platform 'docker' takes DockerOptions, got KubeconfigOptions"
    )
    with pytest.raises(SpecError) as caught:
        DockerSpec(platform=KubernetesPlatform.LOCAL)  # type: ignore[arg-type]
    assert str(caught.value).endswith("got KubernetesPlatform.LOCAL")
    with pytest.raises(SpecError) as caught:
        DockerOptions.target_from({"region": "eu-west-1"})
    assert str(caught.value) == "region: does not scope this platform (it takes no scope)"


@pytest.fixture
async def unanswered_socket() -> AsyncIterator[Path]:
    """A Unix socket that accepts and never answers (where a daemon would be)."""
    directory = Path(tempfile.mkdtemp())
    waiting: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waiting.append(writer)

    server = await asyncio.start_unix_server(accept, directory / "daemon.sock")
    try:
        yield directory / "daemon.sock"
    finally:
        for writer in waiting:
            writer.close()
        server.close()
        await server.wait_closed()
        os.unlink(directory / "daemon.sock")
        os.rmdir(directory)


@pytest.mark.unit
async def test_connection_errors_name_the_socket_not_its_encoded_host(
    unanswered_socket: Path,
) -> None:
    async with new_session() as session:

        def computer(socket: Path) -> Computer:
            return Computer(
                name="sb", url=f"unix:{socket}", token="t", session=session, platform="docker"
            )

        gone = unanswered_socket.with_name("gone.sock")
        with pytest.raises(DaemonUnreachableError) as caught:
            await computer(gone).run("true")
        said = str(caught.value)
        assert said.startswith(f"sandbox sb: POST /exec failed: cannot connect to {gone}")
        assert "commandlab-unix" not in said
        assert "ConnectionKey" not in said

        async def failing_body() -> AsyncIterator[bytes]:
            yield b"x"
            raise OSError(5, "Input/output error")

        with pytest.raises(DaemonUnreachableError) as caught:
            await computer(unanswered_socket).write_file("/tmp/x", failing_body())
        assert "commandlab-unix" not in str(caught.value), caught.value
        assert str(unanswered_socket) in str(caught.value)
        # A local file that is not there: the OS's error, before anything is sent.
        with pytest.raises(FileNotFoundError):
            await computer(gone).upload(unanswered_socket.with_name("absent.csv"), "/tmp/x")
