"""The apps that record what reaches a desktop's screen (the ``desktop`` fixture, a
sandbox with them in /tmp/apps, is in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from commandlab_async import Computer


async def wait_for_file(computer: Computer, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await computer.run(["test", "-e", path])).ok:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        await asyncio.sleep(0.05)


class App:
    """A recording app started on the desktop; stopped when the test ends."""

    def __init__(self, computer: Computer, name: str, record: str) -> None:
        self.computer = computer
        self.name = name
        self.record = record

    async def events(self, settle: float = 0.3) -> list[dict[str, Any]]:
        await asyncio.sleep(settle)  # the app writes what reached it as it handles it
        text = (await self.computer.read_file(self.record)).decode()
        return [json.loads(line) for line in text.splitlines()]

    async def typed(self, expected: str, timeout: float = 20.0) -> str:
        """What the terminal received, once it is as long as ``expected`` (in bytes)."""
        want = len(expected.encode())
        deadline = time.monotonic() + timeout
        while True:
            data = await self.computer.read_file(self.record)
            if len(data) >= want or time.monotonic() > deadline:
                await asyncio.sleep(0.1)  # anything more (which would be wrong) shows too
                return (await self.computer.read_file(self.record)).decode("utf-8", "replace")
            await asyncio.sleep(0.05)


async def start_app(computer: Computer, kind: str) -> App:
    """``events``: a full-screen Tk window logging mouse and key events as JSON lines;
    ``typed``: an xterm whose every typed byte goes to a file."""
    # "[a]": the pattern must not match the shell that runs pkill.
    await computer.run("pkill -f '/tmp/[a]pps/'; pkill xterm; rm -rf /tmp/rec; mkdir /tmp/rec")
    record, ready = f"/tmp/rec/{kind}", f"/tmp/rec/{kind}.ready"
    if kind == "events":
        argv = ["python3", "/tmp/apps/events.py", record, ready]
    else:
        argv = [
            "xterm",
            "-u8",
            "-fa",
            "Monospace",
            "-geometry",
            "100x30+0+0",
            "-e",
            "python3",
            "/tmp/apps/typed.py",
            record,
            ready,
        ]
    async with computer.start(argv, env={"LANG": "C.UTF-8"}, background=True):
        pass
    await wait_for_file(computer, ready)
    # A click gives it the focus (openbox may not focus a new window right after input to
    # another). The Tk app records it: its record (appended to) starts again after it.
    if kind == "events":
        await computer.desktop.click(1279, 799)
        await asyncio.sleep(0.2)
        await computer.run(["truncate", "-s", "0", record])
    else:  # inside the terminal; a left click types nothing
        await computer.desktop.click(50, 100)
        await asyncio.sleep(0.2)
    return App(computer, kind, record)
