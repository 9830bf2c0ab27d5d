"""moto, the AWS emulator, in server mode on a loopback port: ECS, EC2 and STS for the
library's ECS driver and EKS login (point ``AWS_ENDPOINT_URL`` at :attr:`MotoServer.url`).

Needs ``moto[server]`` (the ``emulators`` extra), run as ``python -m moto.server`` in a
subprocess of this interpreter.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Self

import aiohttp


class MotoServer:
    """A moto server in a subprocess, listening on 127.0.0.1; ``with`` starts and stops it."""

    def __init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and wait (blocking, up to ``timeout``) until it takes
        connections; return its URL."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        """Stop the server (and wait for it)."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def reset(url: str) -> None:
    """Forget every resource the moto server at ``url`` holds."""
    async with aiohttp.ClientSession() as http:
        (await http.post(f"{url}/moto-api/reset")).close()


async def pin_ecs_tasks(url: str) -> None:
    """Keep ECS tasks RUNNING: by default moto moves them towards STOPPED on every
    ``describe_tasks``."""
    async with aiohttp.ClientSession() as http:
        (
            await http.post(
                f"{url}/moto-api/state-manager/set-transition",
                json={
                    "model_name": "ecs::task",
                    "transition": {"progression": "manual", "times": 1_000_000_000},
                },
            )
        ).close()
