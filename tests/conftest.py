from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings

from commandlab_async import DESKTOP_IMAGE, Computer, DockerSpec, provision
from commandlab_async._lifecycle.identity import SESSION_ID
from commandlab_async.emulators.faults import FaultyDockerProxy
from commandlab_async.labels import SESSION
from commandlab_async.platforms import REGISTRY, PlatformEntry
from commandlab_async.platforms.base import DockerPlatform
from commandlab_async.platforms.docker.options import DockerOptions
from tests.lifecycle.fake_driver import FakeCloud, FakeDriver

# Property tests draw the same examples on every run: a test suite that fails by chance
# throws work away. COMMANDLAB_HYPOTHESIS=explore draws new ones (to hunt, not to gate).
hypothesis_settings.register_profile("deterministic", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("COMMANDLAB_HYPOTHESIS", "deterministic"))

# A user's project, run in subprocesses by test_pytest_plugin.py.
collect_ignore = ["integrations/plugin_project"]

pytest_plugins = [
    "tests.platforms.aws_support",
    "tests.platforms.azure_support",
    "tests.platforms.gcp_support",
    "tests.platforms.k8s_support",
]

BASE_IMAGE = "commandlab/python-base:bookworm-ps-users"
NEVER_HEALTHY_IMAGE = "commandlab-test/never-healthy:latest"
EXITS_IMAGE = "commandlab-test/exits:latest"
NO_PYTHON_IMAGE = "commandlab-test/no-python:latest"
EXITS_ZERO_IMAGE = "commandlab-test/exits-zero:latest"
NO_PYTHON_BASE_IMAGE = "commandlab-test/no-python-base:latest"
HANGS_IMAGE = "commandlab-test/hangs:latest"
WRONG_ANSWERS_IMAGE = "commandlab-test/wrong-answers:latest"
# Daemon stand-ins: one accepts connections and never answers, one answers 500 to all.
_HANG = (
    "import socket,time; s=socket.create_server(('', 8000)); c=[s.accept() for _ in iter(int, 1)]"
)
_WRONG = (
    "import http.server as h\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self): self.send_error(500)\n"
    "h.HTTPServer(('', 8000), H).serve_forever()"
)
_TEST_IMAGES = {
    HANGS_IMAGE: f"CMD {json.dumps(['python3', '-c', _HANG])}",
    WRONG_ANSWERS_IMAGE: f"CMD {json.dumps(['python3', '-c', _WRONG])}",
    NEVER_HEALTHY_IMAGE: 'CMD ["sleep", "infinity"]',
    EXITS_IMAGE: 'CMD ["sh", "-c", "echo boom >&2; exit 3"]',
    # An image whose command is not the daemon, and ends at once: exit status 0.
    EXITS_ZERO_IMAGE: 'CMD ["true"]',
    # A base without python3: building the computer image on it fails at its first RUN.
    NO_PYTHON_BASE_IMAGE: "RUN rm -f /usr/bin/python3*",
    # An image whose python the daemon cannot find: the shell says so, exit status 127.
    NO_PYTHON_IMAGE: 'CMD ["sh", "-c", "exec python3.99 -I -S /opt/commandlab/daemon.pyz"]',
}


# Handles of kept sandboxes go to a directory of this run, never the user's own.
_STATE_DIR = tempfile.mkdtemp(prefix="commandlab-state-")
os.environ["COMMANDLAB_STATE_DIR"] = _STATE_DIR
atexit.register(shutil.rmtree, _STATE_DIR, ignore_errors=True)
# Machine-wide quotas are off unless asked for (COMMANDLAB_MACHINE_QUOTA=on): they would
# pace the whole run at real clouds' documented rates (a session-long moto would meet
# Fargate's and ACI's buckets), shared with every other test run of this user, and leave
# a bucket file per emulator address in the runtime directory.
# tests/lifecycle/test_machine_quota.py turns them on, in a runtime directory of its own.
os.environ.setdefault("COMMANDLAB_MACHINE_QUOTA", "off")

# The engine as the test process found it: tests point DOCKER_HOST at a proxy served by
# their own event loop, which a blocking `docker` call from that loop would deadlock on.
ENGINE_ENV = dict(os.environ)


def docker(*args: str) -> str:
    """Run the docker CLI against the real engine (never through a test's proxy)."""
    return subprocess.run(
        ["docker", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENGINE_ENV,
    ).stdout


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the ``commandlab`` CLI in a process of its own (against the real engine)."""
    return subprocess.run(
        [sys.executable, "-m", "commandlab_async.integrations.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env=ENGINE_ENV if env is None else env,
    )


async def commandlab_cli(*args: str) -> str:
    """Run the ``commandlab`` CLI in a process of its own; its output (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commandlab_async.integrations.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return out.decode()


def our_containers() -> list[str]:
    """Names of every container this test process created that still exists."""
    out = docker("ps", "-a", "--filter", f"label={SESSION}={SESSION_ID}", "--format", "{{.Names}}")
    return out.split()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is ``unit`` (no engine, no moto) or ``integration``; say which, once."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def test_images() -> None:
    """Images that misbehave on purpose, built from the local base (no registry)."""
    for image, cmd in _TEST_IMAGES.items():
        subprocess.run(
            ["docker", "build", "-q", "-t", image, "-"],
            input=f"FROM {BASE_IMAGE}\n{cmd}\n",
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that may reach the engine ends with zero containers of this process on it."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    request.getfixturevalue("test_images")
    assert our_containers() == [], "a previous test leaked containers"
    yield
    leaked = our_containers()
    if leaked:
        subprocess.run(["docker", "rm", "-f", *leaked], capture_output=True, env=ENGINE_ENV)
    assert leaked == [], f"containers leaked: {leaked}"


@pytest.fixture
async def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeCloud]:
    """Local Docker served by tests/lifecycle/fake_driver.py: no engine, milliseconds."""
    cloud = FakeCloud()
    monkeypatch.setattr(FakeDriver, "cloud", cloud, raising=False)
    monkeypatch.setitem(
        REGISTRY,
        DockerPlatform.LOCAL,
        PlatformEntry(DockerOptions, "tests.lifecycle.fake_driver:FakeDriver"),
    )
    runner = await cloud.serve()
    try:
        yield cloud
    finally:
        await runner.cleanup()


@pytest.fixture
async def docker_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FaultyDockerProxy]:
    """The engine behind a fault-injecting proxy; the library talks to it via DOCKER_HOST."""
    proxy = FaultyDockerProxy(tmp_path / "docker.sock")
    await proxy.start()
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    try:
        yield proxy
    finally:
        await proxy.close()


REPO = Path(__file__).resolve().parents[1]
DESKTOP_APPS = REPO / "tests" / "desktop" / "apps"


@pytest.fixture(scope="session")
def desktop_image() -> str:
    """The desktop image, built (or rebuilt for a changed daemon) when the tests need it."""
    subprocess.run([str(REPO / "scripts/build-images.sh"), "desktop"], check=True, cwd=REPO)
    return DESKTOP_IMAGE


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def desktop(desktop_image: str) -> AsyncIterator[Computer]:
    """One desktop sandbox (1280x800, the default) for a module's tests, with the
    recorder apps of tests/desktop/apps in /tmp/apps (each test starts its own)."""
    async with provision(DockerSpec(image=desktop_image, ready_timeout=60)) as computer:
        for app in DESKTOP_APPS.glob("*.py"):
            await computer.write_file(f"/tmp/apps/{app.name}", app.read_bytes())
        yield computer
