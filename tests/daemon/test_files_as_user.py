"""File reads and writes as another user: that user's permissions, never the root daemon's.

A root daemon hands the path work to a short-lived agent running as the user, which
passes the opened file back; these tests check the kernel really judged the user.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from commandlab_async import (
    Computer,
    DaemonError,
    DockerSpec,
    RemoteFileNotFoundError,
    RemotePermissionError,
    UnsupportedOperationError,
    provision,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def root_computer() -> AsyncIterator[Computer]:
    async with provision(DockerSpec(run_as_root=True)) as computer:
        yield computer
        # No agent outlives its request (one cut short ends as soon as the daemon sees
        # the client gone), and no half-written upload is left behind.
        async with asyncio.timeout(10):
            while "file_agent" in (await computer.run(["ps", "-eo", "args"])).stdout:
                await asyncio.sleep(0.1)
        leftovers = await computer.run("find / -xdev -name '.commandlab-upload-*' | head")
        assert leftovers.stdout == ""


async def test_what_a_user_writes_is_theirs(root_computer: Computer) -> None:
    await root_computer.write_file("/tmp/as-user/deep/a.txt", "hello", user="computer")
    owners = await root_computer.run("stat -c '%U %a %n' /tmp/as-user /tmp/as-user/deep/a.txt")
    assert owners.stdout == "computer 755 /tmp/as-user\ncomputer 644 /tmp/as-user/deep/a.txt\n"
    assert await root_computer.read_file("/tmp/as-user/deep/a.txt", user=1000) == b"hello"


async def test_a_file_the_user_cannot_read_is_refused_though_root_could(
    root_computer: Computer,
) -> None:
    await root_computer.write_file("/tmp/secret.txt", "root only", mode=0o600)
    with pytest.raises(RemotePermissionError, match=r"/tmp/secret\.txt"):
        await root_computer.read_file("/tmp/secret.txt", user="computer")
    assert await root_computer.read_file("/tmp/secret.txt") == b"root only"


async def test_a_symlink_does_not_lend_root_its_reach(root_computer: Computer) -> None:
    await root_computer.run("ln -sf /etc/shadow /tmp/innocent", user="computer")
    with pytest.raises(RemotePermissionError):
        await root_computer.read_file("/tmp/innocent", user="computer")
    await root_computer.run("ln -sfn /etc /tmp/etc-link", user="computer")
    with pytest.raises(RemotePermissionError):
        await root_computer.write_file("/tmp/etc-link/evil", "x", user="computer")
    assert (await root_computer.run("test -e /etc/evil")).exit_code == 1


async def test_read_only_files_and_directories_hold_for_the_user(
    root_computer: Computer,
) -> None:
    await root_computer.write_file("/tmp/frozen.txt", "before", user="computer")
    await root_computer.run("chmod a-w /tmp/frozen.txt")
    with pytest.raises(RemotePermissionError):
        await root_computer.write_file("/tmp/frozen.txt", "after", user="computer")
    with pytest.raises(RemotePermissionError):
        await root_computer.write_file("/etc/motd-new", "x", user="computer")
    assert await root_computer.read_file("/tmp/frozen.txt") == b"before"
    await root_computer.write_file("/tmp/frozen.txt", "root may", mode=0o644)
    assert await root_computer.read_file("/tmp/frozen.txt", user="computer") == b"root may"


async def test_an_upload_cut_short_leaves_the_old_file(root_computer: Computer) -> None:
    await root_computer.write_file("/tmp/kept.txt", "old", user="computer")

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"new, partly"
        await asyncio.sleep(30)
        yield b"never"

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await root_computer.write_file("/tmp/kept.txt", slow_body(), user="computer")
    assert await root_computer.read_file("/tmp/kept.txt") == b"old"


async def test_large_files_go_both_ways_as_the_user(root_computer: Computer) -> None:
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB
    await root_computer.write_file("big.bin", data, user="computer")
    assert await root_computer.read_file("big.bin", user="computer") == data


async def test_unknown_users_and_missing_files_are_typed(root_computer: Computer) -> None:
    with pytest.raises(DaemonError) as info:
        await root_computer.read_file("/etc/hostname", user="nobody-here")
    assert info.value.code == "no_such_user"
    with pytest.raises(RemoteFileNotFoundError, match=r"missing\.txt"):
        await root_computer.read_file("missing.txt", user="computer")
    with pytest.raises(ValueError, match="user"):
        await root_computer.read_file("x", user="")


async def test_switching_users_for_files_needs_a_root_sandbox() -> None:
    async with provision(DockerSpec()) as computer:
        with pytest.raises(UnsupportedOperationError):
            await computer.write_file("a.txt", "x", user="root")
        await computer.write_file("a.txt", "x", user="computer")  # itself: fine
        assert await computer.read_file("a.txt", user=1000) == b"x"


async def test_a_root_write_keeps_the_users_file_theirs_and_follows_none_of_their_symlinks(
    root_computer: Computer,
) -> None:
    # Issue 27: a root write over a user's file made it root's, and followed the symlinks
    # the user planted.
    await root_computer.write_file("notes.txt", "v1", user="computer")
    await root_computer.write_file("notes.txt", "v2", mode=0o600)
    await root_computer.write_file("notes.txt", "v3")
    owner = await root_computer.run("stat -c '%U:%G %a' notes.txt; cat notes.txt")
    assert owner.stdout == "computer:computer 600\nv3"
    shadow = (await root_computer.run("sha256sum /etc/shadow")).stdout
    # A directory symlink of theirs on the way does not take root's write into /etc...
    await root_computer.run("ln -s /etc /home/computer/etc-link", user="computer")
    for path in ["etc-link/shadow", "etc-link/cron.d/evil", "/home/computer/etc-link/evil"]:
        with pytest.raises(RemotePermissionError, match="symlink"):
            await root_computer.write_file(path, "root::0:0:99999:7:::\n")
    assert (await root_computer.run("sha256sum /etc/shadow")).stdout == shadow
    assert (await root_computer.run("ls /etc/evil /etc/cron.d/evil")).exit_code != 0
    # ...and one at the target is replaced, not written through, lending root's new file
    # nothing (owner, mode) from where it pointed.
    await root_computer.run("ln -s /etc/shadow /home/computer/planted", user="computer")
    await root_computer.write_file("planted", "for root")
    assert (await root_computer.run("sha256sum /etc/shadow")).stdout == shadow
    planted = await root_computer.run("stat -c '%F %U:%G %a' planted")
    assert planted.stdout == "regular file root:root 644\n"
