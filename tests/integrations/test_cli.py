"""The ``commandlab`` verbs end to end on the local engine, each in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENGINE_ENV, docker, run_cli

pytestmark = pytest.mark.docker


class Cli:
    def __init__(self, state: Path) -> None:
        self.env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state)}

    def __call__(
        self, *args: str, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=self.env, stdin=stdin)

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state")


@pytest.fixture
def up(cli: Cli) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """Two sandboxes brought up by `commandlab up` (a process that has exited since)."""
    label = f"test={uuid.uuid4().hex[:12]}"
    started = cli.json("up", "-n", "2", "--ttl", "300", "-l", label)
    try:
        yield started, label
    finally:
        cli("rm", "-l", label)


def test_up_leaves_detached_sandboxes_that_ls_lists_and_gc_spares(
    cli: Cli, up: tuple[list[dict[str, Any]], str]
) -> None:
    started, label = up
    assert len(started) == 2
    assert all(s["platform"] == "docker" and s["url"].startswith("unix:/") for s in started)
    listed = cli.json("ls", "-l", label)
    assert sorted(i["name"] for i in listed) == sorted(s["name"] for s in started)
    for item in listed:
        assert item["owner"] == "detached"
        assert item["handle"] is True
        assert item["state"] == "running"
        assert item["labels"]["commandlab.detached"] == "true"
        assert 290 < item["expires_at"] - item["created_at"] <= 301
    # Their maker has exited; they belong to no process, so gc leaves them to their TTL.
    reaped = cli.json("gc")
    assert not {r["name"] for r in reaped} & {s["name"] for s in started}
    assert len(cli.json("ls", "-l", label, "--newer-than", "600")) == 2
    assert cli.json("ls", "-l", label, "--older-than", "600") == []


def test_exec_streams_output_and_exits_with_the_commands_status(
    cli: Cli, up: tuple[list[dict[str, Any]], str]
) -> None:
    name = up[0][0]["name"]
    done = cli("exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")
    assert cli("exec", "-i", name, "--", "wc", "-c", stdin=b"x" * 100_000).stdout == b"100000\n"
    # Without -i the command reads end of file, as with docker exec.
    assert cli("exec", name, "--", "cat", stdin=b"ignored").stdout == b""
    assert cli("exec", name, "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert cli("exec", "--timeout", "0.5", name, "--", "sleep", "30").returncode == 124
    done = cli("exec", "-e", "A=1", "-w", "/tmp", name, "--", "sh", "-c", "echo $A $PWD")
    assert done.stdout == b"1 /tmp\n"
    missing = cli("exec", name, "--", "no-such-program")
    assert missing.returncode == 127
    assert missing.stderr.count(b"\n") == 1
    assert b"no such program" in missing.stderr
    assert cli("exec", name, "--", "/etc/passwd").returncode == 126


def test_cp_copies_both_ways_and_logs_show_the_daemon(
    cli: Cli, up: tuple[list[dict[str, Any]], str], tmp_path: Path
) -> None:
    name = up[0][0]["name"]
    local = tmp_path / "in.bin"
    local.write_bytes(os.urandom(300_000))
    assert cli("cp", str(local), f"{name}:/tmp/in.bin").returncode == 0
    assert cli("cp", f"{name}:/tmp/in.bin", str(tmp_path / "out.bin")).returncode == 0
    assert (tmp_path / "out.bin").read_bytes() == local.read_bytes()
    assert cli("cp", "-", f"{name}:/tmp/piped", stdin=b"piped in").returncode == 0
    assert cli("cp", f"{name}:/tmp/piped", "-").stdout == b"piped in"
    logs = cli("logs", name)
    assert logs.returncode == 0
    assert b"commandlab daemon listening" in logs.stdout
    assert b"PUT /files" in logs.stdout


def test_rm_by_name_and_by_label_removes_sandboxes_and_handles(
    cli: Cli, up: tuple[list[dict[str, Any]], str]
) -> None:
    started, label = up
    first, second = (s["name"] for s in started)
    removed = cli.json("rm", first)
    assert [(r["name"], r["reason"]) for r in removed] == [(first, "named")]
    assert cli("exec", first, "--", "true").returncode == 125  # its handle went with it
    assert [r["name"] for r in cli.json("rm", "-l", label)] == [second]
    assert cli.json("ls", "-l", label) == []
    assert not docker("ps", "-aq", "--filter", f"label={label}").strip()


def test_errors_are_one_line_with_documented_exit_codes(cli: Cli) -> None:
    cases = [
        (("exec", "nosuch-123456", "--", "true"), 125, b"no handle of it is saved"),
        (("rm", "nosuch-123456"), 1, b"no such sandbox"),
        (("rm",), 2, b"takes sandbox names"),
        (("up", "--ttl", "0"), 2, b"ttl"),
        (("up", "-l", "novalue"), 2, b"KEY=VALUE"),
        (("cp", "a", "b"), 2, b"one side is NAME:PATH"),
        (("logs", "nosuch-123456"), 1, b"no such container"),
        (("up", "--image", "commandlab-test/absent:nope"), 1, b"not on the engine"),
    ]
    for args, status, words in cases:
        done = cli(*args)
        assert done.returncode == status, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
        assert done.stderr.startswith(b"commandlab: "), args
        assert done.stderr.count(b"\n") == 1, args
        assert b"Traceback" not in done.stderr
    assert cli("frobnicate").returncode == 2


def test_bad_handles_are_refused_by_exec_and_skipped_by_ls(
    cli: Cli, up: tuple[list[dict[str, Any]], str], tmp_path: Path
) -> None:
    """A FIFO hung exec and ls forever, a link to /dev/zero ran them out of memory, a
    malformed handle was an "internal error": now each is a one-line error naming the
    file, and ls lists what it can, saying which handles it skipped."""
    started, label = up
    directory = tmp_path / "state" / "sandboxes"
    os.mkfifo(directory / "stuck.json")
    (directory / "zero.json").symlink_to("/dev/zero")
    good = json.loads((directory / f"{started[0]['name']}.json").read_text())
    (directory / "garbage.json").write_text(json.dumps({**good, "name": "garbage", "url": 5}))

    def bounded(*args: str) -> subprocess.CompletedProcess[bytes]:
        """The CLI in at most 1.5 GB of address space and 60 s (a bad handle must cost
        neither)."""
        command = [sys.executable, "-m", "commandlab_async.integrations.cli", *args]
        return subprocess.run(
            ["sh", "-c", 'ulimit -v 1500000 && exec "$@"', "sh", *command],
            capture_output=True,
            timeout=60,
            env=cli.env,
        )

    listed = bounded("ls", "-l", label, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(i["name"], i["handle"]) for i in json.loads(listed.stdout)} == {
        (s["name"], True) for s in started
    }
    warnings = listed.stderr.decode().splitlines()
    for bad in ("stuck", "zero", "garbage"):
        assert any(str(directory / f"{bad}.json") in line for line in warnings), warnings
        done = bounded("exec", bad, "--", "true")
        assert done.returncode == 125, done.stderr
        assert str(directory / f"{bad}.json").encode() in done.stderr
        assert done.stderr.startswith(b"commandlab: ")
        assert done.stderr.count(b"\n") == 1
        assert b"internal error" not in done.stderr
    assert bounded("exec", started[0]["name"], "--", "true").returncode == 0
