"""Inspect's ``ExecRemoteProcess`` over a commandlab :class:`Process` (no polling)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncIterator

from inspect_ai.util._sandbox.exec_remote import (
    ExecCompleted,
    ExecOutput,
    ExecRemoteProcess,
    ExecStderr,
    ExecStdout,
)

from ... import Process

__all__ = ["StreamingProcess", "exit_status"]


def exit_status(code: int) -> int:
    """A shell's view of an exit code: death by signal N is 128 + N (ours is -N)."""
    return 128 - code if code < 0 else code


class StreamingProcess(ExecRemoteProcess):
    """Events as the daemon streams them; ``kill()`` ends them without ``ExecCompleted``.

    Inspect's base class drives its JSON-RPC tool server; this one keeps only its
    interface, so its constructor is deliberately not called.
    """

    def __init__(self, process: Process, *, stdin_open: bool) -> None:
        self._process = process
        self._stdin_open = stdin_open
        self._iteration_started = False
        self._killed = False
        self._completed = False
        self._events = self._stream()

    @property
    def pid(self) -> int:
        return self._process.pid

    def __aiter__(self) -> StreamingProcess:
        if self._iteration_started:
            raise RuntimeError("ExecRemoteProcess can only be iterated once")
        self._iteration_started = True
        return self

    async def __anext__(self) -> ExecOutput:
        return await anext(self._events)

    async def _stream(self) -> AsyncIterator[ExecOutput]:
        decoders = {
            stream: codecs.getincrementaldecoder("utf-8")("replace")
            for stream in ("stdout", "stderr")
        }
        try:
            async for chunk in self._process.output():
                if self._killed:
                    return
                text = decoders[chunk.stream].decode(chunk.data)
                if text:
                    yield ExecStdout(text) if chunk.stream == "stdout" else ExecStderr(text)
            if self._killed or self._process.exit_code is None:
                return
            self._completed = True
            yield ExecCompleted(exit_status(self._process.exit_code))
        except asyncio.CancelledError:
            await asyncio.shield(self.kill())
            raise
        except Exception:
            if not self._killed:
                raise
            # kill() closed the stream under the read: the events simply end
        finally:
            await self._process.close()

    async def write_stdin(self, data: str | bytes) -> None:
        if not self._stdin_open:
            raise RuntimeError(
                "write_stdin() requires stdin_open=True in ExecRemoteStreamingOptions"
            )
        if self._completed or self._killed:
            raise RuntimeError("Cannot write to stdin: process has terminated")
        await self._process.write(data)

    async def close_stdin(self) -> None:
        if not self._stdin_open:
            raise RuntimeError(
                "close_stdin() requires stdin_open=True in ExecRemoteStreamingOptions"
            )
        await self._process.close_stdin()

    async def kill(self) -> None:
        if self._completed or self._killed:
            return
        self._killed = True
        with contextlib.suppress(Exception):  # gone already, or the sandbox with it
            await self._process.kill()
        await self._process.close()
