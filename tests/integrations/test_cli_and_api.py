"""The command line as a user runs it, and the public API surface."""

from __future__ import annotations

import subprocess

import pytest

import commandlab_async
from tests.conftest import run_cli

pytestmark = pytest.mark.docker


def _commandlab(*args: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(*args)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_demo_brings_up_uses_and_deletes_a_sandbox() -> None:
    done = _commandlab("demo")
    assert done.returncode == 0, done.stderr
    assert "hello from" in done.stdout
    assert "written from the host" in done.stdout
    assert "deleted" in done.stdout


def test_demo_fleet() -> None:
    done = _commandlab("demo", "--count", "3")
    assert done.returncode == 0, done.stderr
    assert "down: 3 sandboxes deleted" in done.stdout


def test_demo_with_a_missing_image_fails_cleanly() -> None:
    done = _commandlab("demo", "--image", "commandlab-test/absent:nope")
    assert done.returncode == 1
    assert "not on the engine" in done.stderr
    assert "Traceback" not in done.stderr


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(commandlab_async).items()
        if not name.startswith("_") and not isinstance(value, type(commandlab_async))
    }
    assert set(commandlab_async.__all__) - {"__version__"} == public
    for name in commandlab_async.__all__:
        value = getattr(commandlab_async, name)
        if callable(value):
            assert value.__doc__, f"{name} has no docstring"


async def test_the_admin_api_lists_reads_logs_and_names_targets() -> None:
    from contextlib import aclosing

    from commandlab_async import (
        DockerSpec,
        SpecError,
        list_sandboxes,
        provision,
        read_logs,
        target_for,
    )

    docker = target_for("docker")
    labels = {"suite": "admin-api"}
    async with provision(DockerSpec(labels=labels, ttl=600)) as computer:
        (info,) = await list_sandboxes(docker, labels=labels)
        assert (info.name, info.platform, info.state) == (computer.name, "docker", "running")
        assert info.owner.startswith("pid ")
        assert info.reapable is None
        assert info.expires_at == pytest.approx(computer.expires_at, abs=1)
        assert info.created_at is not None
        assert info.expires_at - info.created_at == pytest.approx(600, abs=1)
        logs = bytearray()
        async with aclosing(read_logs(computer.name)) as chunks:
            async for chunk in chunks:
                logs += chunk
        assert b"commandlab daemon listening" in logs
    assert await list_sandboxes(labels=labels) == []
    with pytest.raises(SpecError, match="platform"):
        target_for("nowhere")
    with pytest.raises(SpecError):
        target_for("aws-ecs", galaxy="far")


def test_the_error_tree_says_what_failed() -> None:
    from commandlab_async import (
        BackendError,
        CommandLabError,
        DaemonError,
        FleetError,
        ProvisionError,
        UnsupportedOperationError,
    )

    assert not issubclass(BackendError, ProvisionError)  # a listing fails, nothing deleted
    assert not issubclass(UnsupportedOperationError, DaemonError)  # drivers raise it too
    for cls in (BackendError, UnsupportedOperationError, FleetError):
        assert issubclass(cls, CommandLabError)
    error = BackendError("listing failed", sandbox=None, platform="aws-ecs", code=503)
    assert (str(error), error.sandbox, error.code) == ("aws-ecs: listing failed", None, 503)
