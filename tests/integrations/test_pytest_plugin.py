"""The pytest plugin as a user meets it: tests/integrations/plugin_project run by pytest in a
subprocess (plain, with xdist, keeping failures, killed), and what it leaves behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ENGINE_ENV, docker, run_cli

pytestmark = pytest.mark.docker

PROJECT = Path(__file__).parent / "plugin_project"
PLAIN_TESTS = 10  # the project's tests that run without switches


class Project:
    """Runs of the plugin project, all sharing one state directory (handles)."""

    def __init__(self, state: Path) -> None:
        self.env = {**ENGINE_ENV, "COMMANDLAB_STATE_DIR": str(state)}
        self.runs: list[str] = []

    def start(self, *args: str, **switches: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=PROJECT,
            env={**self.env, **switches},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, *args: str, **switches: str) -> tuple[int, str]:
        process = self.start(*args, **switches)
        output, _ = process.communicate(timeout=300)
        self.note_run(output)
        return process.returncode, output

    def note_run(self, output: str) -> str:
        found = re.search(r"commandlab: run ([0-9a-f]{12})", output)
        assert found, output
        self.runs.append(found[1])
        return found[1]

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=self.env)


def containers(run: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=commandlab.test-run={run}").split()


def names(ids: list[str]) -> list[str]:
    if not ids:
        return []
    return [n.strip("/") for n in docker("inspect", "-f", "{{.Name}}", *ids).split()]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path / "state")
    try:
        yield made
    finally:  # whatever a failed test left
        for run in made.runs:
            if left := containers(run):
                docker("rm", "-f", *left)


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            output, _ = process.communicate()
            raise AssertionError(f"pytest ended early:\n{output}")
        assert time.monotonic() < deadline, "the project's sandboxes never came up"
        time.sleep(0.1)


def test_a_plain_run_passes_and_leaves_nothing(project: Project) -> None:
    status, output = project.run()
    assert status == 0, output
    assert f"{PLAIN_TESTS} passed" in output
    assert containers(project.runs[0]) == []


def test_a_warm_pool_serves_the_computer_fixture_and_leaves_nothing(project: Project) -> None:
    status, output = project.run("--commandlab-pool=2", PLUGIN_PROJECT_POOL="1")
    assert status == 0, output
    assert f"{PLAIN_TESTS + 1} passed" in output
    assert containers(project.runs[0]) == []


def test_xdist_workers_own_their_sandboxes_and_report_what_they_kept(project: Project) -> None:
    status, output = project.run("-n", "2")
    assert status == 0, output
    assert f"{PLAIN_TESTS} passed" in output
    assert containers(project.runs[0]) == []

    status, output = project.run("-n", "2", "--commandlab-keep=always")
    assert status == 0, output
    run = project.runs[1]
    kept = containers(run)
    # Per test: 6 computers + 2 from the factory; per worker: a module and a session fleet.
    assert 8 + 2 + 2 <= len(kept) <= 8 + 2 * (2 + 2), output
    workers = {
        docker("inspect", "-f", '{{index .Config.Labels "commandlab.worker"}}', name).strip()
        for name in kept
    }
    assert workers == {"gw0", "gw1"}
    assert "sandboxes kept running" in output
    assert output.count(" from ") >= len(kept)  # the controller lists every worker's
    removed = project.cli("rm", "-l", f"commandlab.test-run={run}", "--json")
    assert removed.returncode == 0, removed.stderr
    assert len(json.loads(removed.stdout)) == len(kept)
    assert containers(run) == []


def test_without_pytest_asyncio_anyio_s_plugin_runs_the_tests(project: Project) -> None:
    status, output = project.run("-p", "no:asyncio", "test_with_anyio.py")
    assert status == 0, output
    assert "1 passed" in output
    assert containers(project.runs[0]) == []


def test_keep_failed_keeps_the_failed_tests_sandbox_and_says_how_to_enter_it(
    project: Project,
) -> None:
    status, output = project.run(
        "--commandlab-keep=failed",
        "-k",
        "fails_on_purpose or computer_is_fresh",
        PLUGIN_PROJECT_FAIL="1",
    )
    assert status == 1, output
    # The failure's report: the sandbox's last command and its logs.
    assert "$ echo the last words; echo oops >&2; exit 3   [exit 3," in output
    assert "stderr: oops" in output
    assert "commandlab daemon listening" in output
    # Only the failed test's sandbox is left, and the summary says how to use it.
    (name,) = names(containers(project.runs[0]))
    assert f"commandlab exec -i {name} -- sh" in output
    assert f"commandlab rm {name}" in output
    evidence = project.cli("exec", name, "--", "cat", "/tmp/evidence")
    assert evidence.stdout.decode() == "left for a human"
    assert project.cli("rm", name).returncode == 0
    assert containers(project.runs[0]) == []


@pytest.mark.parametrize(
    ("signum", "status", "says"),
    [
        (signal.SIGTERM, -signal.SIGTERM, "SIGTERM: deleting this process's sandboxes first"),
        (signal.SIGINT, 2, "KeyboardInterrupt"),  # Ctrl-C: pytest's own teardown
    ],
)
def test_a_signal_deletes_everything_before_pytest_ends(
    project: Project, tmp_path: Path, signum: int, status: int, says: str
) -> None:
    up = tmp_path / "up"
    process = project.start("-k", "wait_for_release", PLUGIN_PROJECT_UP=str(up))
    wait_for(up, process)
    time.sleep(0.2)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    run = project.note_run(output)
    assert process.returncode == status, output
    assert says in output
    assert containers(run) == []


def test_sigkill_then_gc_removes_that_runs_sandboxes_and_spares_a_live_run(
    project: Project, tmp_path: Path
) -> None:
    up_a, up_b = tmp_path / "a", tmp_path / "b"
    killed = project.start("-k", "wait_for_release", PLUGIN_PROJECT_UP=str(up_a))
    alive = project.start("-k", "wait_for_release", PLUGIN_PROJECT_UP=str(up_b))
    try:
        wait_for(up_a, killed)
        wait_for(up_b, alive)
        both = set(names(docker("ps", "-aq", "--filter", "label=commandlab.test-run").split()))
        killed.kill()
        run_a = project.note_run(killed.communicate(timeout=60)[0])
        of_a = set(names(containers(run_a)))
        assert len(of_a) == 3  # its computer and its 2-sandbox fleet
        of_b = both - of_a
        assert len(of_b) == 3

        swept = project.cli("gc", "--json")
        assert swept.returncode == 0, swept.stderr
        reaped = {r["name"] for r in json.loads(swept.stdout)}
        assert of_a <= reaped
        assert not of_b & reaped
        assert containers(run_a) == []

        (up_b.parent / (up_b.name + ".release")).touch()
        output, _ = alive.communicate(timeout=120)
        run_b = project.note_run(output)
        assert alive.returncode == 0, output  # gc left the live run's sandboxes alone
        assert containers(run_b) == []
    finally:
        for process in (killed, alive):
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_a_crashed_xdist_worker_s_sandboxes_are_removed_by_the_controller(
    project: Project,
) -> None:
    status, output = project.run(
        "-n", "2", "-k", "crashes_its_worker or computer_is_fresh", PLUGIN_PROJECT_CRASH="1"
    )
    assert status == 1, output
    assert re.search(r"commandlab: worker gw\d crashed: deleted its 1 sandbox\(es\)", output)
    assert containers(project.runs[0]) == []
