"""The section a failed test's report gets for each of its sandboxes."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from ... import CommandLabError, CommandRecord, Computer, Spec, read_logs

__all__ = ["LOG_TIMEOUT", "log_tail", "section"]

COMMANDS = 5
"""The last commands shown per sandbox."""
TAIL_CHARS = 1000
"""Of each stream of each command, and of the logs: the end."""
LOG_TIMEOUT = 3.0
"""Seconds a report waits for a sandbox's logs."""


async def log_tail(spec: Spec, name: str) -> str:
    """The end of what the sandbox printed, or why there is none (bounded in time)."""
    data = bytearray()
    try:
        async with (
            asyncio.timeout(LOG_TIMEOUT),
            aclosing(read_logs(name, spec.target())) as chunks,
        ):
            async for chunk in chunks:
                data += chunk
                del data[: -TAIL_CHARS * 4]
    except TimeoutError:
        data += f"\n(logs: no end within {LOG_TIMEOUT:g}s)".encode()
    except CommandLabError as exc:
        return f"(no logs: {exc})"
    return _tail(data.decode("utf-8", "replace"))


def section(computer: Computer, records: list[CommandRecord], logs: str) -> str:
    """The report text of one sandbox: its last commands, then its logs."""
    lines = [f"sandbox {computer.name} on {computer.platform}"]
    if not records:
        lines.append("no commands run by this test")
    shown = records[-COMMANDS:]
    if len(records) > len(shown):
        lines.append(f"({len(records) - len(shown)} earlier commands not shown)")
    for record in shown:
        outcome = f"exit {record.exit_code}" if record.error is None else f"raised {record.error}"
        lines.append(f"$ {record.command}   [{outcome}, {record.duration:.3f}s]")
        for name, text in (("stdout", record.stdout_tail), ("stderr", record.stderr_tail)):
            if text:
                lines.append(f"  {name}: " + _tail(text).rstrip("\n").replace("\n", "\n    "))
    lines += ["logs:", logs.rstrip("\n") or "(empty)"]
    return "\n".join(lines)


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]
