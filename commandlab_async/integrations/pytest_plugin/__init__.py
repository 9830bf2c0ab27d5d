"""pytest plugin: sandboxes as fixtures, for parallel evals (entry point ``pytest11``).

Fixtures:

- ``computer``: a fresh sandbox per test, configured by the ``--commandlab-*`` options
  and by ``@pytest.mark.computer(image=..., env=..., ...)`` (any spec field).
- ``computer_factory``: ``await computer_factory(spec=None, **overrides)`` makes more;
  every one is deleted when the test ends.
- ``commandlab_fleet``: ``--commandlab-count`` sandboxes shared by the whole session.
- ``commandlab``: this process's :class:`CommandLab`, to make fleets of any scope:
  ``with commandlab.fleet(count=4) as fleet: yield fleet`` in a module fixture.

Where the sandboxes run: ``--commandlab-platform`` and ``--commandlab-image`` (or ini
``commandlab_platform``...) for local Docker; for a cloud or a cluster, a *spec file*:
``--commandlab-spec PATH`` (relative to the working directory), or ini
``commandlab_spec = PATH`` (relative to the ini file; ``--commandlab-spec=`` turns it
off). A TOML file (``.toml``) or a JSON object (``.json``) whose keys are the spec's
fields, ``platform`` and an ``options`` table of that platform's options::

    platform = "aws-ecs"          # docker, aws-ecs, azure-aci, gcp-cloud-run,
                                  # kubernetes, aws-eks, azure-aks, gcp-gke
    region = "eu-west-1"          # scope: region, resource_group, project_id,
                                  # namespace, cluster_name (as the platform takes them)
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/computer:latest"
    cpu = 1
    memory = 2048
    ttl = 1800                    # seconds; JSON null: never
    ready_timeout = 300
    env = { PIP_INDEX_URL = "https://pypi.example/simple" }
    labels = { team = "evals" }

    [options]                     # EcsOptions, AciOptions, CloudRunOptions,
    subnets = ["subnet-0abc"]     # KubeconfigOptions... by their field names
    security_groups = ["sg-0abc"]
    cluster = "sandboxes"

Any spec field may be given (``disk``, ``pids_limit``, ``run_as_root``, ``screen``,
``destroy_timeout``, ``name_prefix``, ``daemon_port``, ``network``...), except
``endpoint_resolver`` (set it in code). The file is read when pytest starts: a file that
cannot be read or parsed, an unknown field or option, or a value no spec takes is a usage
error naming the file and the field, before any sandbox is made. Precedence: the command
line, then the file, then the other ini options, then the defaults. When
``--commandlab-platform`` (or a ``computer`` marker's ``platform=``) names another
platform than the file's, the file's ``options`` and scope are left out (they are that
platform's) and its other fields still apply. A marker's fields replace the file's
(``env=`` replaces the file's ``env`` whole).

The fixtures are synchronous: sandboxes live on a background event loop of the plugin,
and a :class:`~commandlab_async.Computer` works from any event loop, so tests in
pytest-asyncio's function, module or session loops (or anyio's, on asyncio) share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from ... import Computer, Fleet, Spec, remove
from ...labels import TEST_RUN, WORKER
from .background import Hold
from .lab import CommandLab, KeptSandbox
from .report import LOG_TIMEOUT, log_tail, section
from .settings import Settings, add_options

__all__ = ["CommandLab", "ComputerFactory"]

_LAB = pytest.StashKey[CommandLab]()
_USED = pytest.StashKey[list[tuple[Computer, Spec]]]()
_STARTED = pytest.StashKey[float]()
_FLEET = "commandlab_fleet"
_RUN_KEY = "commandlab_run"
_KEPT_KEY = "commandlab_kept"
_REMOVE_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "computer(**fields): spec fields of this test's `computer` sandbox"
        " (platform=, image=, env=, run_as_root=, options=...)",
    )
    settings = Settings.from_config(config)
    settings.check()
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:  # a pytest-xdist worker: the controller names the run
        run_id, worker = workerinput[_RUN_KEY], workerinput["workerid"]
    else:
        run_id, worker = secrets.token_hex(6), "main"
    lab = config.stash[_LAB] = CommandLab(settings, run_id=run_id, worker=worker)
    lab.say = lambda text: _say(config, text)


def _say(config: pytest.Config, text: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(f"\ncommandlab: {text}\n")
        sys.stderr.flush()


def pytest_report_header(config: pytest.Config) -> str:
    lab = config.stash[_LAB]
    settings = lab.settings
    spec_file = f" (spec file {settings.spec_file})" if settings.spec_file else ""
    return (
        f"commandlab: run {lab.run_id} (label {TEST_RUN}), platform {settings.platform}"
        f"{spec_file}, keep {settings.keep}"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    lab = config.stash.get(_LAB, None)
    if lab is not None:  # a warning this late would not be shown: say it
        for error in lab.close():
            lab.say(f"cleanup failed (the TTL or `commandlab gc` will finish it): {error}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: every worker labels its sandboxes with our run."""
    node.workerinput[_RUN_KEY] = node.config.stash[_LAB].run_id


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, on the controller: collect a worker's kept sandboxes; if it crashed,
    delete the sandboxes it left (labelled with this run and that worker, on the
    configured platform: only those)."""
    lab: CommandLab = node.config.stash[_LAB]
    output = getattr(node, "workeroutput", None) or {}
    lab.kept += [KeptSandbox(**kept) for kept in output.get(_KEPT_KEY, [])]
    if error is None:
        return
    worker = node.gateway.id
    labels = {TEST_RUN: lab.run_id, WORKER: worker}
    try:
        gone = asyncio.run(remove(lab.spec(), labels=labels, timeout=_REMOVE_TIMEOUT))
        message = f"worker {worker} crashed: deleted its {len(gone)} sandbox(es)"
    except Exception as exc:
        message = f"worker {worker} crashed; its sandboxes could not be deleted: {exc}"
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"commandlab: {message}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker, after the session's fixtures are torn down: tell the
    controller which sandboxes were kept."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[_KEPT_KEY] = [vars(kept) for kept in session.config.stash[_LAB].kept]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed:
        return report
    lab = item.config.stash[_LAB]
    lab.failures += 1
    own: list[tuple[Computer, Spec]] = item.stash.get(_USED, [])
    used = [*own]
    if _FLEET in getattr(item, "fixturenames", ()):
        used += lab.shared
    if report.when != "teardown":
        since = item.stash.get(_STARTED, 0.0)
        for computer, spec in used:
            logs = _logs(lab, spec, computer.name)
            text = section(computer, computer.history(since), logs)
            report.sections.append((f"commandlab: {computer.name}", text))
    return report


def _logs(lab: CommandLab, spec: Spec, name: str) -> str:
    try:
        return lab.background.run(log_tail(spec, name), LOG_TIMEOUT + 2)
    except Exception as exc:
        return f"(no logs: {exc!r})"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lab = config.stash.get(_LAB, None)
    if lab is None or not lab.kept or hasattr(config, "workerinput"):
        return
    write = terminalreporter.write_line
    terminalreporter.section("commandlab: sandboxes kept running", sep="=")
    for kept in lab.kept:
        until = (
            time.strftime("%H:%M:%S", time.localtime(kept.expires_at))
            if kept.expires_at
            else "deleted by hand"
        )
        write(f"{kept.name} ({kept.platform}, until {until}) from {kept.test}")
    first = lab.kept[0].name
    write(f"enter one:   commandlab exec -i {first} -- sh")
    write(f"remove one:  commandlab rm {first}")
    write(f"remove all:  commandlab rm -l {TEST_RUN}={lab.run_id}")


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def commandlab(pytestconfig: pytest.Config) -> CommandLab:
    """This process's sandboxes: its settings, labels and sync ``provision``/``fleet``."""
    return pytestconfig.stash[_LAB]


@pytest.fixture
def computer(commandlab: CommandLab, request: pytest.FixtureRequest) -> Iterator[Computer]:
    """A fresh sandbox for this test, deleted after it (unless ``--commandlab-keep``
    keeps it). ``@pytest.mark.computer(**fields)`` sets its spec's fields."""
    spec = commandlab.spec(**_marker_fields(request))
    with commandlab.provision(spec, what=request.node.nodeid) as sandbox:
        _use(request, sandbox, spec)
        yield sandbox


class ComputerFactory:
    """``await computer_factory(spec=None, **overrides)``: another sandbox for this test.

    ``overrides`` are spec fields over the test's ``@pytest.mark.computer`` and the
    options; every sandbox made is deleted when the test ends. Needs a running event
    loop (pytest-asyncio, or anyio's plugin on asyncio).
    """

    def __init__(self, lab: CommandLab, request: pytest.FixtureRequest) -> None:
        self._lab = lab
        self._request = request
        self._holds: list[Hold[Computer]] = []
        self._failures = lab.failures

    async def __call__(self, spec: Spec | None = None, **overrides: Any) -> Computer:
        if spec is None:
            spec = self._lab.spec(**{**_marker_fields(self._request), **overrides})
        else:
            spec = self._lab.spec(spec, **overrides)
        hold = await self._lab.provision_async(spec)
        self._holds.append(hold)
        sandbox = hold.entered.result()
        _use(self._request, sandbox, spec)
        return sandbox

    def close(self) -> None:
        self._lab.release(self._holds, self._failures, self._request.node.nodeid)


@pytest.fixture
def computer_factory(
    commandlab: CommandLab, request: pytest.FixtureRequest
) -> Iterator[ComputerFactory]:
    """An async factory of sandboxes for this test, all deleted after it."""
    factory = ComputerFactory(commandlab, request)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def commandlab_fleet(commandlab: CommandLab, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """``--commandlab-count`` sandboxes shared by every test of the session."""
    spec = commandlab.spec()
    with commandlab.fleet(spec, what=_FLEET) as fleet:
        commandlab.shared = [(sandbox, spec) for sandbox in fleet]
        yield fleet
        commandlab.shared = []


def _marker_fields(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("computer")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError("@pytest.mark.computer takes spec fields by name only")
    return dict(marker.kwargs)


def _use(request: pytest.FixtureRequest, sandbox: Computer, spec: Spec) -> None:
    """Name ``sandbox`` in the report of this test if it fails."""
    request.node.stash.setdefault(_USED, []).append((sandbox, spec))
