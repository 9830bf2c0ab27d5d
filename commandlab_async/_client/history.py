"""The last commands a Computer ran: for failure reports and progress displays."""

from __future__ import annotations

import shlex
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from .processes import CommandResult

__all__ = ["CommandRecord", "History"]

TAIL_BYTES = 2048
"""Bytes of each stream a record keeps: the end of what the command printed."""
DEPTH = 20
"""Commands a Computer remembers."""


@dataclass(frozen=True)
class CommandRecord:
    """One command run with :meth:`Computer.run`, as a summary.

    ``exit_code`` is None when the call raised (``error`` says what); the tails hold at
    most the last :data:`TAIL_BYTES` of each stream.
    """

    command: str
    started_at: float
    """``time.time()`` when the call began."""
    duration: float
    """Seconds the call took, as seen by the client."""
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    error: str | None = None


class History:
    """A bounded record of the commands of one Computer (the last :data:`DEPTH`)."""

    def __init__(self) -> None:
        self._records: deque[CommandRecord] = deque(maxlen=DEPTH)

    def add(
        self,
        command: str | Sequence[str],
        started_at: float,
        result: CommandResult | None,
        error: BaseException | None = None,
    ) -> None:
        text = command if isinstance(command, str) else shlex.join(command)
        self._records.append(
            CommandRecord(
                command=text[:500],
                started_at=started_at,
                duration=time.time() - started_at,
                exit_code=None if result is None or error is not None else result.exit_code,
                stdout_tail=_tail(result.stdout_bytes) if result else "",
                stderr_tail=_tail(result.stderr_bytes) if result else "",
                error=None if error is None else f"{type(error).__name__}: {error}"[:500],
            )
        )

    def records(self, since: float = 0.0) -> list[CommandRecord]:
        """The records of commands begun at ``since`` (a ``time.time()``) or later."""
        return [r for r in self._records if r.started_at >= since]


def _tail(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", "replace")
