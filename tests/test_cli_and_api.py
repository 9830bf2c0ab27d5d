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
