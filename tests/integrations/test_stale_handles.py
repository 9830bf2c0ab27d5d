"""A saved handle that outlives its sandbox (its TTL, ``gc``, ``docker rm``): one clear
line, and the handle is removed — but only once the backend (or the missing socket)
says the sandbox is gone, never on an error that may pass."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from commandlab_async import DaemonUnreachableError, SandboxNotFoundError, connect
from tests.conftest import ENGINE_ENV, docker, run_cli

pytestmark = pytest.mark.docker


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def up(state: Path) -> Iterator[str]:
    """One detached sandbox brought up by `commandlab up` (a process that has exited)."""
    label = f"test={uuid.uuid4().hex[:12]}"
    env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state)}
    done = run_cli("up", "--ttl", "300", "-l", label, "--json", env=env)
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)
    try:
        yield item["name"]
    finally:
        run_cli("rm", "-l", label, env=env)


def _cli(state: Path, *args: str, **env: str) -> tuple[int, str]:
    done = run_cli(*args, env={**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state), **env})
    return done.returncode, done.stderr.decode()


def test_exec_on_a_removed_sandbox_says_so_in_one_line_and_prunes_its_handle(
    state: Path, up: str
) -> None:
    handle = state / "sandboxes" / f"{up}.json"
    assert handle.exists()
    docker("rm", "-f", up)
    status, said = _cli(state, "exec", up, "--", "true")
    assert status == 125, said
    assert said.count("\n") == 1, said
    assert f"sandbox {up}: is gone (" in said
    assert "its saved handle was removed" in said
    for internal in ("ClientConnector", "ConnectionKey", "2f746d70", "Traceback"):
        assert internal not in said
    assert not handle.exists()
    status, said = _cli(state, "exec", up, "--", "true")
    assert (status, "no handle of it is saved" in said) == (125, True)


async def test_connect_to_a_removed_sandbox_raises_not_found_and_prunes(
    state: Path, up: str
) -> None:
    docker("rm", "-f", up)
    with pytest.raises(SandboxNotFoundError, match=r"is gone .*its saved handle was removed"):
        async with connect(up) as computer:
            await computer.run("true")
    assert not (state / "sandboxes" / f"{up}.json").exists()


async def test_a_handle_stays_when_the_backend_cannot_say_the_sandbox_is_gone(
    state: Path, up: str, tmp_path: Path
) -> None:
    handle = state / "sandboxes" / f"{up}.json"
    saved = json.loads(handle.read_text())
    # Its daemon is gone but its socket file is still there, and the engine cannot be
    # asked (a DOCKER_HOST nobody listens on): nothing says the sandbox is gone.
    docker("rm", "-f", up)
    saved["scope"] = {"host": f"unix://{tmp_path}/no-engine.sock"}
    handle.write_text(json.dumps(saved))
    with pytest.raises(DaemonUnreachableError):
        async with connect(up) as computer:
            await computer.run("true")
    assert handle.exists()
