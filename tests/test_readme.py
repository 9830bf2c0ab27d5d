"""The README's examples, run as a newcomer copies them: verbatim, in a fresh directory
outside this checkout, in a process of their own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENGINE_ENV

pytestmark = pytest.mark.docker

README = (Path(__file__).parents[1] / "README.md").read_text()


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of its level."""
    found = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", README, re.M | re.S)
    assert found, f"no section {title!r} in the README"
    return found[2]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def run(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_first_example_runs_as_written(tmp_path: Path) -> None:
    (example, *_) = blocks(section("Use"), "python")
    script = tmp_path / "example.py"
    script.write_text(example)
    done = run([sys.executable, str(script)], tmp_path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pytest_example_runs_as_written(tmp_path: Path) -> None:
    """The configuration block and the tests, copied into a new project: all pass. Without
    the configuration, pytest-asyncio's strict mode fails them, which the README says."""
    text = section("pytest")
    (config,) = blocks(text, "toml")
    (tests,) = blocks(text, "python")
    assert config.startswith("# pyproject.toml")
    assert tests.startswith("# test_sandboxes.py")
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_sandboxes.py").write_text(tests)
    pytest_args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]

    bare = run(pytest_args, project, tmp_path)
    assert "async def functions are not natively supported" in bare.stdout, bare.stdout

    (project / "pyproject.toml").write_text(config)
    done = run(pytest_args, project, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout
