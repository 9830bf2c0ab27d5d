"""Code in a sandbox attacks what it shares with the host: the daemon's socket.

Each test reproduces a finding of a hostile probe (issue 27) on the real engine: the
sandbox's own users try to take over its daemon's socket, redirect the client to another
socket, or fill the host's disk through the directory the socket was made in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from commandlab_async import Computer, DockerSpec, provision
from commandlab_async.platforms.docker import socket_dirs
from tests.conftest import our_containers

pytestmark = pytest.mark.docker

# A fake daemon the sandbox's code would serve in place of the real one: it writes down
# every request it is sent (the client's token with it) and answers nothing.
_IMPOSTOR = r"""
import os, socket, sys, threading
path = sys.argv[1]
if os.path.lexists(path):
    os.rename(path, path + ".real")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o666)
server.listen(8)
print("impostor listening", flush=True)
def serve():
    while True:
        conn, _ = server.accept()
        with open("/tmp/captured", "ab") as out:
            out.write(conn.recv(65536))
        conn.close()
threading.Thread(target=serve, daemon=True).start()
threading.Event().wait(30)
"""

_SOCKET = f"{socket_dirs.IN_SANDBOX}/{socket_dirs.SOCKET_NAME}"


def _host_files() -> list[Path]:
    return sorted(socket_dirs.base_dir().rglob("*"))


async def _take_over_attempts(computer: Computer, user: str) -> list[str]:
    """Every way the probe used to get at the socket's directory, as ``user``; what worked."""
    worked = []
    attempts = {
        "rename the socket": f"mv {_SOCKET} /tmp/moved",
        "write a file": f"head -c 1048576 /dev/zero > {socket_dirs.IN_SANDBOX}/fill",
        "make a directory": f"mkdir {socket_dirs.IN_SANDBOX}/d",
        "plant a symlink": f"ln -s /var/run/docker.sock {socket_dirs.IN_SANDBOX}/link",
        "plant a fifo": f"mkfifo {socket_dirs.IN_SANDBOX}/fifo",
        "serve an impostor": f"timeout 5 python3 -c '{_IMPOSTOR}' {_SOCKET}",
    }
    for what, command in attempts.items():
        result = await computer.run(command, user=user, timeout=10)
        if result.exit_code == 0 or "impostor listening" in result.stdout:
            worked.append(what)
    return worked


async def test_no_user_of_a_root_sandbox_can_replace_its_daemons_socket() -> None:
    """The probe's root escalation: `computer` served its own socket in a run_as_root
    sandbox, relayed traffic, captured the token and ran commands as uid 0."""
    before = set(_host_files())
    async with provision(DockerSpec(run_as_root=True)) as computer:
        url = computer.url
        for user in ("computer", "root"):
            assert await _take_over_attempts(computer, user) == []
        # The client still reaches the real daemon, and nothing ever saw its token.
        assert (await computer.run("id -u")).stdout == "0\n"
        captured = await computer.run("cat /tmp/captured 2>/dev/null | wc -c")
        assert captured.stdout.strip() == "0"
        assert computer.url == url
        # Nothing the sandbox wrote reached the host: only its sealed socket is there.
        sealed = socket_dirs.sealed_path(os.environ.get("DOCKER_HOST"), computer.name)
        assert set(_host_files()) - before == {sealed}
        assert sealed.lstat().st_size == 0
    assert our_containers() == []


async def test_an_unprivileged_sandbox_cannot_write_to_the_hosts_disk() -> None:
    """The probe wrote 191 MB into the host's /tmp through the socket's directory."""
    before = set(_host_files())
    async with provision(DockerSpec()) as computer:
        assert await _take_over_attempts(computer, "computer") == []
        listing = await computer.run(f"ls -a {socket_dirs.IN_SANDBOX}; echo $?")
        assert listing.stdout.split() == ["0"]  # a deleted directory: no entries at all
        assert len(set(_host_files()) - before) == 1
        assert (await computer.run("true")).exit_code == 0
    assert our_containers() == []
