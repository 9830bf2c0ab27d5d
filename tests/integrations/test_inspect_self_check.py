"""Inspect AI's own sandbox checks, run against the ``commandlab`` provider on local Docker.

``inspect_ai.util._sandbox.self_check`` is Inspect's portable conformance suite: its
``test_*`` functions are pulled in below and each gets a fresh sample sandbox from
``sandbox_env``, made the way Inspect makes one (task_init, sample_init, then
sample_cleanup and task_cleanup).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from inspect_ai.util._sandbox import self_check
from inspect_ai.util._sandbox.self_check import *  # noqa: F403

from commandlab_async.integrations.inspect_sandbox import (
    CommandLabSandbox,
    CommandLabSandboxConfig,
)

pytestmark = pytest.mark.docker

_ROOT_READS_ANYTHING = "root may read and overwrite a file it has no permission bits for"

# config id -> (config, the checks it cannot pass and why)
CONFIGS: dict[str, tuple[CommandLabSandboxConfig, dict[str, str]]] = {
    # Commands and files as the unprivileged "computer", root one argument away: all 44.
    "least-privilege": (CommandLabSandboxConfig(user="computer"), {}),
    # The default, like Inspect's own default Docker sandbox: everything as root.
    "root": (
        CommandLabSandboxConfig(),
        {
            "test_read_file_not_allowed": _ROOT_READS_ANYTHING,
            "test_write_text_file_without_permissions": _ROOT_READS_ANYTHING,
            "test_write_binary_file_without_permissions": _ROOT_READS_ANYTHING,
        },
    ),
}


def test_the_whole_battery_is_here() -> None:
    assert len(self_check.__all__) == 44
    assert all(name in globals() for name in self_check.__all__)


@pytest.fixture(params=list(CONFIGS))
async def sandbox_env(request: pytest.FixtureRequest) -> AsyncIterator[CommandLabSandbox]:
    config, cannot = CONFIGS[request.param]
    reason = cannot.get(request.node.originalname)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    task = "self_check"
    await CommandLabSandbox.task_init(task, config)
    environments = await CommandLabSandbox.sample_init(task, config, {})
    try:
        sandbox = environments["default"]
        assert isinstance(sandbox, CommandLabSandbox)
        yield sandbox
    finally:
        await CommandLabSandbox.sample_cleanup(task, config, environments, False)
        await CommandLabSandbox.task_cleanup(task, config, True)
