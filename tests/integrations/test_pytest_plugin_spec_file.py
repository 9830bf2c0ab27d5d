"""The pytest plugin pointed at a platform by a spec file (``--commandlab-spec``, ini
``commandlab_spec``): a fresh project in a temporary directory, run by pytest in a
subprocess, on local Docker and on the Kubernetes emulator; bad files stop pytest at
start with a usage error naming the file and the field."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from commandlab_async import DEFAULT_IMAGE
from commandlab_async.emulators.kubernetes import KubeEmulator
from tests.conftest import ENGINE_ENV, docker
from tests.platforms.k8s_support import NAMESPACE

USAGE_ERROR = 4  # pytest's exit status for a usage error

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
{extra}
"""

# Tests as a user writes them; CHECKS says what each run expects of its spec and sandbox
# (runs without a platform to reach select test_the_spec alone).
TESTS = """\
import json, os, subprocess, time

CHECKS = json.loads(os.environ["CHECKS"])


def test_the_spec(commandlab):
    spec = commandlab.spec()
    assert str(spec.platform) == CHECKS["platform"]
    for name, value in CHECKS.get("options", {}).items():
        assert getattr(spec.options, name) == (tuple(value) if isinstance(value, list) else value)
    for name, value in CHECKS.get("fields", {}).items():
        assert getattr(spec, name) == value, name


async def test_the_sandbox(computer):
    assert computer.platform == CHECKS["platform"]
    result = await computer.run("echo $GREETING")
    assert result.stdout == "from the file\\n", result
    left = computer.expires_at - time.time()
    assert CHECKS["ttl"] - 120 < left <= CHECKS["ttl"], left
    if CHECKS["platform"] == "docker":
        label = subprocess.run(
            ["docker", "inspect", "-f", "{{index .Config.Labels \\"team\\"}}", computer.name],
            capture_output=True, text=True, check=True,
        ).stdout
        assert label == "evals\\n"
"""


def make_project(root: Path, spec: str | None, name: str = "sandboxes.toml", ini: str = "") -> Path:
    """A project in ``root``: pytest.ini (with ``ini`` lines), tests/, and ``spec`` as
    ``root/name``; returns the tests directory."""
    (root / "pytest.ini").write_text(INI.format(extra=ini))
    tests = root / "tests"
    tests.mkdir()
    (tests / "test_it.py").write_text(TESTS)
    if spec is not None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(spec))
    return tests


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args]


def run(cwd: Path, *args: str, checks: dict[str, object] | None = None) -> tuple[int, str]:
    done = subprocess.run(
        pytest_command(*args),
        cwd=cwd,
        env={**ENGINE_ENV, "CHECKS": json.dumps(checks or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


ECS_FILE = """\
platform = "aws-ecs"
region = "eu-west-1"
cpu = 0.5
memory = 1024
ttl = 1800
ready_timeout = 300
labels = { team = "evals" }

[options]
subnets = ["subnet-0abc"]
security_groups = ["sg-0abc"]
cluster = "sandboxes"
"""


@pytest.mark.unit
def test_a_spec_file_gives_a_cloud_its_options_and_scope(tmp_path: Path) -> None:
    """The issue: ``--commandlab-platform aws-ecs`` alone cannot be given subnets."""
    tests = make_project(tmp_path, ECS_FILE, name="cloud/ecs.toml")
    status, output = run(tests, "--commandlab-platform", "aws-ecs", "-k", "the_spec")
    assert status == USAGE_ERROR, output
    assert "subnets: must be a non-empty tuple of ids" in output
    assert "--commandlab-spec" in output  # says where the options go

    checks = {
        "platform": "aws-ecs",
        "options": {"subnets": ["subnet-0abc"], "security_groups": ["sg-0abc"]},
        "fields": {"region": "eu-west-1", "cpu": 0.5, "memory": 1024, "ttl": 1800},
    }
    status, output = run(
        tests, "--commandlab-spec", "../cloud/ecs.toml", "-k", "the_spec", checks=checks
    )
    assert status == 0, output
    assert "platform aws-ecs (spec file " in output

    # The command line wins over the file; another platform leaves its options out.
    checks = {"platform": "docker", "fields": {"ttl": 60, "cpu": 0.5, "region": None}}
    status, output = run(
        tests,
        "--commandlab-spec=../cloud/ecs.toml",
        "--commandlab-platform=docker",
        "--commandlab-ttl=60",
        "-k",
        "the_spec",
        checks=checks,
    )
    assert status == 0, output


BAD_FILES = [
    ("x.toml", None, "cannot read it: No such file or directory"),
    ("x.toml", "platform = ", "not valid TOML"),
    ("x.json", '{"platform": "docker",}', "not valid JSON"),
    ("x.yaml", "platform: docker", "a spec file is a .toml or .json file"),
    ("x.json", '["docker"]', "must hold a table of spec fields, not list"),
    ("x.toml", 'imgae = "x"', "imgae: is not a spec field"),
    ("x.toml", 'platform = "aws"', "platform: must be one of"),
    ("x.toml", 'endpoint_resolver = "m:f"', "endpoint_resolver: is a Python callable"),
    ("x.toml", 'platform = "aws-ecs"\noptions = "subnet-1"', "options: must be a table"),
    (
        "x.toml",
        'platform = "aws-ecs"\n[options]\nsubnet = ["s"]',
        "options.subnet: is not an option of platform 'aws-ecs' (it takes: ",
    ),
    (
        "x.toml",
        'platform = "aws-ecs"\n[options]\nsubnets = []\nsecurity_groups = ["g"]',
        "options.subnets: must be a non-empty",
    ),
    ("x.toml", 'ttl = "soon"', "ttl: "),
    ("x.json", '{"env": {"A": 1}}', "env: value of 'A' must be a str"),
    ("x.toml", 'region = "eu-west-1"', "region: has no meaning on platform"),
    ("x.toml", 'platform = "aws-ecs"', "options.subnets: must be a non-empty"),
    (
        "x.toml",
        'platform = "aws-ecs"\ncpu = 3\n[options]\nsubnets = ["s"]\nsecurity_groups = ["g"]',
        "cpu: Fargate takes",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(("name", "text", "says"), BAD_FILES)
def test_a_bad_spec_file_is_a_usage_error_naming_file_and_field(
    tmp_path: Path, name: str, text: str | None, says: str
) -> None:
    tests = make_project(tmp_path, text, name=name)
    status, output = run(tests, f"--commandlab-spec={tmp_path / name}")
    assert status == USAGE_ERROR, output
    assert f"ERROR: commandlab spec file {tmp_path / name}: " in output
    assert says in output
    assert "Traceback" not in output
    assert "commandlab: run" not in output  # stopped at start: no run, no sandbox


@pytest.mark.unit
def test_an_ini_spec_file_is_found_relative_to_the_ini_file(tmp_path: Path) -> None:
    tests = make_project(tmp_path, None, ini="commandlab_spec = cloud/missing.toml")
    status, output = run(tests)
    assert status == USAGE_ERROR, output
    assert f"commandlab spec file {tmp_path / 'cloud/missing.toml'}: cannot read it" in output
    # --commandlab-spec= turns the ini's file off.
    status, output = run(
        tests, "--commandlab-spec=", "-k", "the_spec", checks={"platform": "docker"}
    )
    assert status == 0, output


@pytest.mark.docker
def test_local_docker_from_an_ini_spec_file_under_command_line_options(tmp_path: Path) -> None:
    spec = """\
    platform = "docker"
    image = "commandlab/no-such-image:1"
    ttl = 900
    env = { GREETING = "from the file" }
    labels = { team = "evals" }
    """
    # The ini's own ttl loses to the file's; the command line's image wins over it.
    ini = "commandlab_spec = sandboxes/local.toml\ncommandlab_ttl = 60"
    tests = make_project(tmp_path, spec, name="sandboxes/local.toml", ini=ini)
    checks = {"platform": "docker", "ttl": 900}
    status, output = run(tests, f"--commandlab-image={DEFAULT_IMAGE}", checks=checks)
    assert status == 0, output
    assert "2 passed" in output
    assert docker("ps", "-aq", "--filter", "label=team=evals") == ""


@pytest.mark.docker
async def test_the_computer_fixture_on_the_kubernetes_emulator_from_a_json_spec_file(
    tmp_path: Path, kube: KubeEmulator
) -> None:
    project = tmp_path / "project"
    spec = {
        "platform": "kubernetes",
        "namespace": NAMESPACE,
        "ttl": 600,
        "ready_timeout": 60,
        "env": {"GREETING": "from the file"},
        "labels": {"team": "evals"},
        "options": {"kubeconfig": str(tmp_path / "kubeconfig"), "context": "emulator"},
    }
    project.mkdir()
    tests = make_project(project, json.dumps(spec), name="k8s.json")
    checks = {"platform": "kubernetes", "ttl": 600}
    # The emulator serves from this test's loop: wait for pytest without blocking it.
    env = {key: value for key, value in ENGINE_ENV.items() if key != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        *pytest_command("--commandlab-spec=../k8s.json"),
        cwd=tests,
        env={**env, "CHECKS": json.dumps(checks)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    assert process.returncode == 0, output
    assert "2 passed" in output
    (post,) = kube.calls("POST pods")
    assert post.path.startswith(f"/api/v1/namespaces/{NAMESPACE}/pods")
    assert post.json["metadata"]["labels"]["team"] == "evals"
