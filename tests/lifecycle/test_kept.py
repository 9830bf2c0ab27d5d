"""Kept means kept: a sandbox kept by a process that has exited since belongs to no process.

``gc`` leaves it (its owner labels, fixed at create, still name the gone process: its saved
handle is what says it is kept), ``ls`` says ``kept``, and only its TTL or ``rm`` removes it.
Everything runs as a user would: the keeper, ``ls``, ``gc``, ``exec`` and ``rm`` are each a
process of their own, on the real engine.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from commandlab_async._admin.handles import Handle, load, save, state_dir
from commandlab_async._admin.reaper import is_kept, saved_handles
from commandlab_async.labels import EXPIRES_AT, PID, SESSION
from commandlab_async.platforms.driver import SandboxRecord
from tests.conftest import ENGINE_ENV, docker, run_cli

KEEPER = """
import asyncio, sys
from commandlab_async import DockerSpec, provision

async def main() -> None:
    spec = DockerSpec(ttl=float(sys.argv[1]), labels={"test": sys.argv[2]})
    async with provision(spec) as computer:
        computer.keep()
        print(computer.name, flush=True)
        sys.stdin.readline()  # the test may act on the sandbox before the block ends

asyncio.run(main())
"""


class Lab:
    """A state directory of this test's, shared by the keeper and every CLI run."""

    def __init__(self, state: Path) -> None:
        self.env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state)}
        self.label = uuid.uuid4().hex[:12]

    def keep(self, ttl: float, *, while_held: str = "") -> str:
        """Keep a sandbox in a child process that then exits; its name. ``while_held``
        is a docker verb run on the sandbox before the child's block ends."""
        with subprocess.Popen(
            [sys.executable, "-c", KEEPER, str(ttl), self.label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
        ) as child:
            assert child.stdin is not None
            assert child.stdout is not None
            name = child.stdout.readline().decode().strip()
            if while_held and name:
                docker(while_held, name)
            child.stdin.close()
            assert child.wait(60) == 0
        assert name
        return name

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=self.env)

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "state")
    try:
        yield lab
    finally:
        left = docker("ps", "-aq", "--filter", f"label=test={lab.label}").split()
        if left:
            docker("rm", "-f", *left)


@pytest.mark.docker
def test_a_kept_sandbox_outlives_its_owner_until_rm(lab: Lab) -> None:
    name = lab.keep(ttl=600)
    (item,) = lab.json("ls", "-l", f"test={lab.label}")
    assert item["name"] == name
    assert item["labels"][PID]  # its owner labels still name the process that has exited
    assert (item["owner"], item["reapable"], item["handle"]) == ("kept", None, True)

    dry = lab.json("gc", "--dry-run")
    assert name not in {r["name"] for r in dry}
    reaped = lab.json("gc")
    assert name not in {r["name"] for r in reaped}
    assert lab.cli("exec", name, "--", "true").returncode == 0  # still there, still reachable

    assert [r["name"] for r in lab.json("rm", name)] == [name]
    assert lab.json("ls", "-l", f"test={lab.label}") == []


@pytest.mark.docker
def test_gc_deletes_a_kept_sandbox_once_its_ttl_passed(lab: Lab) -> None:
    # Paused, its daemon cannot end it at the TTL itself: gc is what must.
    name = lab.keep(ttl=3, while_held="pause")
    (item,) = lab.json("ls", "-l", f"test={lab.label}")
    assert (item["owner"], item["reapable"]) == ("kept", None)
    expires = float(docker("inspect", "-f", f'{{{{index .Config.Labels "{EXPIRES_AT}"}}}}', name))
    time.sleep(max(expires - time.time(), 0) + 0.1)
    reaped = lab.json("gc")
    assert [(r["name"], r["reason"]) for r in reaped if r["name"] == name] == [(name, "expired")]
    assert docker("ps", "-aq", "--filter", f"name={name}") == ""


@pytest.mark.unit
def test_only_a_kept_handle_of_the_same_sandbox_spares_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path / "state"))
    labels = {SESSION: "0123456789abcdef", PID: "1"}
    record = SandboxRecord("commandlab-0123456789ab", labels, "running")

    def saved(**fields: Any) -> bool:
        handle = Handle(
            name=record.name,
            platform="docker",
            url="http://127.0.0.1:32769",
            expires_at=None,
            labels=labels,
            token=secrets.token_urlsafe(32),
        )
        save(Handle(**{**handle.__dict__, **fields}))
        return is_kept(record, saved_handles())

    assert is_kept(record, saved_handles()) is False  # no handle at all
    assert saved(kept=True) is True
    assert saved(kept=False) is False  # saved while its owner holds it: still owned
    assert saved(kept=True, labels={SESSION: "another"}) is False  # a namesake's
    # A handle saved before handles said so was a kept (or detached) sandbox's.
    assert saved(kept=True) is True
    path = state_dir() / "sandboxes" / f"{record.name}.json"
    data = json.loads(path.read_text())
    del data["kept"]
    path.write_text(json.dumps(data))
    assert load(record.name).kept is True
    assert is_kept(record, saved_handles()) is True
