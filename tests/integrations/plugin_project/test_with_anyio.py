"""anyio's pytest plugin runs these (on asyncio); they pass without pytest-asyncio too."""

from __future__ import annotations

import pytest

from commandlab_async import Computer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # our sandboxes are asyncio's; trio is not supported


async def test_a_computer_under_anyio(computer: Computer) -> None:
    assert (await computer.run("echo anyio")).stdout == "anyio\n"
