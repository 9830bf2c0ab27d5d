"""The local engine's fast path: daemons on Unix sockets in private host directories,
sandboxes with no network at all, hostnames that are sandbox names."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from commandlab_async import (
    BackendError,
    DockerOptions,
    DockerSpec,
    SpecError,
    gc,
    provision,
)
from commandlab_async._client.transport import http_url, socket_path
from commandlab_async.platforms.docker import socket_dirs
from tests.conftest import docker, our_containers

pytestmark = pytest.mark.docker


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private runtime directory (a socket's path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cl-"))
    monkeypatch.setenv("COMMANDLAB_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def inspect(name: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(docker("inspect", name))[0]
    return info


async def test_the_daemon_serves_on_a_socket_in_a_private_directory() -> None:
    async with provision(DockerSpec()) as computer:
        assert computer.url.startswith("unix:/")
        socket = Path(computer.url.removeprefix("unix:"))
        engine = os.environ.get("DOCKER_HOST")
        assert socket == socket_dirs.sealed_path(engine, computer.name)
        assert mode(socket_dirs.base_dir()) == 0o700
        assert stat.S_ISSOCK(os.lstat(socket).st_mode)
        # Sealed: the directory it was made in, mounted into the sandbox, is gone.
        directory = socket_dirs.path_of(engine, computer.name)
        assert not directory.exists()
        host = inspect(computer.name)["HostConfig"]
        assert isinstance(host, dict)
        assert not host["PortBindings"]  # nothing published, no port proxy
        (mount,) = host["Mounts"]
        assert (mount["Source"], mount["Target"]) == (str(directory), "/run/commandlab")
        assert (await computer.run("hostname")).stdout == f"{computer.name}\n"
        assert (await computer.run("ls /sys/class/net")).stdout.split() == ["eth0", "lo"]
    assert not await asyncio.to_thread(os.path.lexists, socket)  # removed with the sandbox
    assert our_containers() == []


async def test_network_none_leaves_only_loopback_and_everything_else_works() -> None:
    async with provision(DockerSpec(network="none")) as computer:
        # No route out exists at all: the only interface is loopback (nothing is sent).
        assert (await computer.run("ls /sys/class/net")).stdout.split() == ["lo"]
        assert (await computer.run("cat /proc/net/route | wc -l")).stdout.strip() == "1"
        host = inspect(computer.name)["HostConfig"]
        assert isinstance(host, dict)
        assert host["NetworkMode"] == "none"
        await computer.write_file("data/in.txt", b"offline")
        assert await computer.read_file("data/in.txt") == b"offline"
        result = await computer.run(["python3", "-c", "print(open('data/in.txt').read())"])
        assert result.stdout == "offline\n"
    assert our_containers() == []


async def test_tcp_transport_publishes_on_loopback_only() -> None:
    async with provision(DockerSpec(options=DockerOptions(transport="tcp"))) as computer:
        assert computer.url.startswith("http://127.0.0.1:")
        host = inspect(computer.name)["HostConfig"]
        assert isinstance(host, dict)
        (binding,) = host["PortBindings"]["8000/tcp"]
        assert binding["HostIp"] == "127.0.0.1"
        assert not host.get("Mounts")
        assert (await computer.run("hostname")).stdout == f"{computer.name}\n"
    assert our_containers() == []


async def test_what_cannot_be_kept_is_refused_before_anything_is_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SpecError, match="network"):
        DockerSpec(network="none", options=DockerOptions(transport="tcp"))
    with pytest.raises(SpecError, match="network"):
        DockerSpec(network="host")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="transport"):
        DockerOptions(transport="ssh")  # type: ignore[arg-type]
    # A remote engine cannot mount our directories (nothing listens there: never reached).
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    for spec in (DockerSpec(network="none"), DockerSpec(options=DockerOptions(transport="unix"))):
        with pytest.raises(SpecError, match="cannot mount"):
            async with provision(spec):
                pytest.fail("the body must not run")


async def test_a_base_directory_that_is_not_private_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("COMMANDLAB_RUNTIME_DIR", str(shared))
    with pytest.raises(BackendError, match="mode 0700") as info:
        async with provision(DockerSpec()):
            pytest.fail("the body must not run")
    assert info.value.code == "socket_dir"
    assert getattr(info.value, "__notes__", []) == []  # nothing was created to delete
    assert list(shared.iterdir()) == []
    assert our_containers() == []


@pytest.mark.usefixtures("runtime_dir")
async def test_a_failed_create_leaves_no_directory() -> None:
    # More CPUs than the engine has: it refuses the create, made after the directory.
    # (A missing image fails before: the driver's prepare() looks for it first.)
    cpus = int(docker("info", "-f", "{{.NCPU}}")) + 1
    if cpus > 64:
        pytest.skip("the engine has as many CPUs as a spec may ask for")
    with pytest.raises(BackendError, match="CPUs"):
        async with provision(DockerSpec(cpu=cpus)):
            pytest.fail("the body must not run")
    engine = socket_dirs.engine_dir(os.environ.get("DOCKER_HOST"))
    assert list(engine.iterdir()) == []
    with pytest.raises(BackendError, match="is not on the engine"):
        async with provision(DockerSpec(image="commandlab-test/not-an-image:none")):
            pytest.fail("the body must not run")
    assert list(engine.iterdir()) == []


@pytest.mark.usefixtures("runtime_dir")
async def test_gc_tidies_directories_the_engine_left_behind() -> None:
    engine = os.environ.get("DOCKER_HOST")
    socket_dirs.make(engine, "commandlab-stale00000001")
    stale = socket_dirs.path_of(engine, "commandlab-stale00000001")
    socket_dirs.make(engine, "commandlab-young00000001")
    young = socket_dirs.path_of(engine, "commandlab-young00000001")
    stale_socket = socket_dirs.sealed_path(engine, "commandlab-sealed0000001")
    stale_socket.touch()
    hour_ago = time.time() - 3600
    for path in (stale, stale_socket):
        os.utime(path, (hour_ago, hour_ago))
    async with provision(DockerSpec()) as computer:
        live = socket_dirs.sealed_path(engine, computer.name)
        os.utime(live, (hour_ago, hour_ago))
        await gc()
        assert not stale.exists()  # its sandbox is gone: the TTL removed it
        assert not stale_socket.exists()  # likewise, after it was sealed
        assert young.exists()  # may belong to a create on its way
        assert live.exists()  # its sandbox exists
        assert (await computer.run("true")).exit_code == 0
    assert our_containers() == []


def test_socket_urls_round_trip_through_host_names() -> None:
    path = "/tmp/commandlab-0/0123abcd/commandlab-5ea8253406b1/daemon.sock"
    url = http_url(f"unix:{path}")
    host = url.removeprefix("http://")
    assert all(len(label) <= 63 for label in host.split("."))
    assert socket_path(host) == path
    assert http_url("https://example.test:8443") == "https://example.test:8443"
    assert socket_path("127.0.0.1") is None
    assert socket_path("zz.commandlab-unix") is None  # not hex: not ours
