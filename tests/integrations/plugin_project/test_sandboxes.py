"""Tests as a user of the plugin writes them. Environment switches for the kill tests:
PLUGIN_PROJECT_FAIL=1 adds a failing test; PLUGIN_PROJECT_UP=<file> makes
test_wait_for_release write that file once its sandboxes are up, then wait for
<file>.release; PLUGIN_PROJECT_CRASH=1 kills its own worker process;
PLUGIN_PROJECT_POOL=1 adds a test that its sandbox came from the warm pool."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from commandlab_async import Computer, Fleet

FAIL = os.environ.get("PLUGIN_PROJECT_FAIL") == "1"
UP = os.environ.get("PLUGIN_PROJECT_UP")
CRASH = os.environ.get("PLUGIN_PROJECT_CRASH") == "1"
POOL = os.environ.get("PLUGIN_PROJECT_POOL") == "1"


async def test_computer_is_fresh_and_works(computer: Computer) -> None:
    result = await computer.run("test ! -e /tmp/touched && touch /tmp/touched && echo ok")
    assert result.stdout == "ok\n"


async def test_a_second_test_gets_another_sandbox(computer: Computer) -> None:
    assert (await computer.run("test -e /tmp/touched")).exit_code == 1


@pytest.mark.computer(env={"GREETING": "hello"})
async def test_marker_sets_the_spec(computer: Computer) -> None:
    assert (await computer.run("echo $GREETING")).stdout == "hello\n"


async def test_factory_makes_more(computer_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = await asyncio.gather(computer_factory(), computer_factory(env={"WHO": "b"}))
    assert a.name != b.name
    assert (await b.run("echo $WHO")).stdout == "b\n"


def test_a_sync_test_can_use_asyncio_run(computer: Computer) -> None:
    assert asyncio.run(computer.run("echo sync")).stdout == "sync\n"


async def test_session_fleet_from_a_function_loop(commandlab_fleet: Fleet) -> None:
    assert len(commandlab_fleet) == 2
    results = await asyncio.gather(*(c.run("hostname") for c in commandlab_fleet))
    assert all(r.ok for r in results)


@pytest.fixture(scope="module")
def module_fleet(commandlab):  # type: ignore[no-untyped-def]
    with commandlab.fleet(count=2) as fleet:
        yield fleet


@pytest.mark.asyncio(loop_scope="module")
async def test_module_fleet_from_the_module_loop(module_fleet: Fleet) -> None:
    await module_fleet[0].write_file("/tmp/module", "from the module loop")
    assert await module_fleet[0].read_file("/tmp/module") == b"from the module loop"


async def test_module_fleet_from_a_function_loop(module_fleet: Fleet) -> None:
    await module_fleet[1].write_file("/tmp/function", "from a function loop")
    assert (await module_fleet[1].run("cat /tmp/function")).stdout == "from a function loop"


@pytest.mark.asyncio(loop_scope="session")
async def test_session_fleet_from_the_session_loop(commandlab_fleet: Fleet) -> None:
    assert (await commandlab_fleet[1].run("echo session")).stdout == "session\n"


@pytest.mark.skipif(not FAIL, reason="PLUGIN_PROJECT_FAIL=1 adds it")
async def test_fails_on_purpose(computer: Computer) -> None:
    await computer.write_file("/tmp/evidence", "left for a human")
    result = await computer.run("echo the last words; echo oops >&2; exit 3")
    assert result.exit_code == 0


@pytest.mark.skipif(not UP, reason="PLUGIN_PROJECT_UP=<file> adds it")
async def test_wait_for_release(computer: Computer, commandlab_fleet: Fleet) -> None:
    assert UP is not None
    await asyncio.to_thread(Path(UP).write_text, computer.name)
    while not await asyncio.to_thread(Path(UP + ".release").exists):
        await asyncio.sleep(0.1)


@pytest.mark.skipif(not CRASH, reason="PLUGIN_PROJECT_CRASH=1 adds it")
async def test_crashes_its_worker(computer: Computer) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if POOL:

    def test_the_computer_came_from_the_warm_pool(computer: Computer) -> None:
        labels = subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.Labels}}", computer.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert '"commandlab.pool"' in labels
