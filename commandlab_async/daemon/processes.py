"""The commands the daemon started: their output rings, the registry that can kill them
all, and the OOM score that makes a command, never the daemon, the kernel's victim."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque

from .errors import RequestError
from .protocol import (
    LIMIT_PROCESSES,
    MAX_BACKGROUND,
    NO_SUCH_PROCESS,
    OUTPUT_BUDGET,
    PROCESS_ID_PREFIX,
    RESOURCE_EXHAUSTED,
    RING_BYTES,
    SHUTTING_DOWN,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from .users import RunAs

    Buffer = bytes | bytearray | memoryview

MERGE_BELOW = 4096  # a ring joins small chunks up to this (one object, not one per write)
# The kernel's OOM killer must pick a command, never the daemon: every command's
# oom_score_adj is raised to the maximum (anyone may raise a score, only the privileged
# lower one), so the commands and what they start are always its first choice.  The
# daemon cannot set it for the child before exec (preexec_fn): the child of a
# non-dumpable process has root-owned /proc files until it execs.
OOM_SCORE_FILE = "/proc/self/oom_score_adj"
OOM_VICTIM_SCORE = b"1000"
# A shell command raises its own, with a builtin, as the shell's first act: free, before
# anything it starts, and after a switch to another user too.  `|| :` keeps $? at 0
# where /proc is not writable.  argv commands: see make_oom_victim.
OOM_SHELL_PREFIX = "{ echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null || :; "


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def oom_score_adjustable() -> bool:
    """Whether we can write our oom_score_adj (rewriting its value is always allowed).

    Ask before ``make_undumpable``: after it our /proc files belong to root.
    """
    try:
        fd = os.open(OOM_SCORE_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, os.read(fd, 16).strip() or b"0")
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def make_oom_victim(pid: int) -> None:
    """Raise a just-started argv command's oom_score_adj to the maximum (best effort).

    Done by the daemon once the command has exec'd: before that, the child of a
    non-dumpable daemon has root-owned /proc files and could not do it itself (so no
    ``preexec_fn``, which would also cost the vfork fast path: about 2 ms a spawn).
    What the program forks in the microseconds before this keeps the daemon's score.
    """
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:  # no /proc, or the command already exited
        return
    try:
        os.write(fd, OOM_VICTIM_SCORE)
    except OSError:
        pass
    finally:
        os.close(fd)


class Ring:
    """The last ``size`` bytes (or a little more) of a stream, as the chunks that came.

    Whole chunks are kept and dropped (no growing buffer; small ones are joined up to
    ``MERGE_BELOW``), so it holds at most ``size`` plus one chunk. Offsets are absolute
    positions in the stream.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.start = 0  # absolute offset of the first byte held
        self.eof = False

    @property
    def end(self) -> int:
        return self.start + self.held

    def append(self, chunk: bytes) -> int:
        """Keep ``chunk`` (dropping the oldest past ``size``); how much ``held`` grew."""
        before = self.held
        last = self.chunks[-1] if self.chunks else b""
        if last and len(last) + len(chunk) <= min(MERGE_BELOW, self.size):
            # Small writes share one object: what a chunk costs beyond its bytes stays
            # small next to them, so ``held`` is what the ring really holds.
            self.chunks[-1] = last + chunk
        else:
            self.chunks.append(chunk)
        self.held += len(chunk)
        while self.held - len(self.chunks[0]) >= self.size:
            dropped = len(self.chunks.popleft())
            self.held -= dropped
            self.start += dropped
        return self.held - before

    def drop(self, size: int) -> int:
        """Let go of the oldest whole chunks, ``size`` bytes or a little more; how many."""
        dropped = 0
        while self.chunks and dropped < size:
            dropped += len(self.chunks.popleft())
        self.held -= dropped
        self.start += dropped
        return dropped

    def tail(self, size: int) -> list[Buffer]:
        """The last ``size`` bytes held, as views of the chunks."""
        skip = max(0, self.held - size)
        views: list[Buffer] = []
        for chunk in self.chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            views.append(memoryview(chunk)[skip:])
            skip = 0
        return views

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """(bytes lost before ``offset`` could be read, up to ``limit`` bytes from there)."""
        lost = max(0, self.start - offset)
        position = self.start
        wanted = max(offset, self.start)
        parts: list[bytes] = []
        got = 0
        for chunk in self.chunks:
            if got >= limit:
                break
            if position + len(chunk) > wanted:
                piece = chunk[max(0, wanted - position) :][: limit - got]
                parts.append(piece)
                got += len(piece)
                wanted += len(piece)
            position += len(chunk)
        return lost, b"".join(parts)


class Process:
    """A command the daemon started."""

    def __init__(
        self, pid_id: str, popen: subprocess.Popen[bytes], argv: list[str], background: bool
    ) -> None:
        self.id = pid_id
        self.popen = popen
        self.argv = argv
        self.background = background
        self.started = time.monotonic()
        self.timed_out = False
        self.exit_code: int | None = None
        self.duration: float | None = None
        # Background processes only: output rings fed by a pump thread.
        self.cond = threading.Condition()
        self.rings = (Ring(RING_BYTES), Ring(RING_BYTES))
        self.evicted = False  # finished, and its output dropped for OUTPUT_BUDGET

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.popen.pid,
            "argv": self.argv[:64],
            "background": self.background,
            "running": self.exit_code is None,
            "exit_code": self.exit_code,
        }

    def finish(self, returncode: int) -> None:
        with self.cond:
            if self.exit_code is None:
                self.exit_code = returncode
                self.duration = time.monotonic() - self.started
            self.cond.notify_all()

    def exit_payload(
        self, stdout_omitted: int = 0, stderr_omitted: int = 0, limit_exceeded: bool = False
    ) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "duration": self.duration,
            "timed_out": self.timed_out,
            "limit_exceeded": limit_exceeded,
            "stdout_omitted": stdout_omitted,
            "stderr_omitted": stderr_omitted,
        }


class Registry:
    """Every process we started, so that expiry, shutdown and clients can kill them."""

    def __init__(self, oom_adjust: bool = False) -> None:
        self.lock = threading.Lock()
        self.budget_lock = threading.Lock()  # one shed() at a time; taken before any cond
        self.kept = 0  # at least what background processes' rings hold (see shed)
        self.processes: dict[str, Process] = {}
        self.closed = False
        self.counter = 0
        self.oom_adjust = oom_adjust  # raise each command's oom_score_adj (see OOM_*)

    def spawn(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        user: RunAs | None,
        background: bool,
        shell: bool = False,
    ) -> Process:
        """Start ``argv`` (``shell``: it is ``/bin/sh -c <command>``) as a new session."""
        import subprocess  # lazy: not needed to answer /health

        extra: dict[str, Any] = {}
        run_argv = argv
        if self.oom_adjust and shell:
            run_argv = [*argv[:2], OOM_SHELL_PREFIX + argv[2], *argv[3:]]
        if user is not None:
            extra = {"user": user.uid, "group": user.gid, "extra_groups": user.groups}
        # The lock spans the fork so that kill_all() never misses a new group.
        with self.lock:
            if self.closed:
                raise RequestError(SHUTTING_DOWN, "the daemon is shutting down")
            if background and not self._room_for_background():
                raise RequestError(
                    RESOURCE_EXHAUSTED,
                    f"at most {MAX_BACKGROUND} background processes may run at once",
                    limit=LIMIT_PROCESSES,
                )
            popen = subprocess.Popen(
                run_argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
            if self.oom_adjust and not shell:
                make_oom_victim(popen.pid)
            self.counter += 1
            process = Process(f"{PROCESS_ID_PREFIX}{self.counter}", popen, argv, background)
            self.processes[process.id] = process
            return process

    def _room_for_background(self) -> bool:
        """Whether another background process fits; forgets the oldest finished ones."""
        background = [p for p in self.processes.values() if p.background]
        finished = [p for p in background if p.exit_code is not None]
        while len(background) >= MAX_BACKGROUND and finished:
            oldest = finished.pop(0)
            background.remove(oldest)
            del self.processes[oldest.id]
        return len(background) < MAX_BACKGROUND

    def shed(self, grown: int) -> None:
        """Keep what background processes' rings hold within ``OUTPUT_BUDGET``.

        Called by the pump threads after a ring grew by ``grown`` bytes, holding no
        ``cond`` themselves.  Past the budget, the output of the processes that finished
        longest ago goes first, whole (their readers are told, see
        ``handle_processes``); then the oldest bytes of the fullest rings of running
        ones (their readers get a gap, as when a ring wraps).
        """
        with self.budget_lock:
            # An upper bound (what forgotten processes held is never taken off), kept
            # cheaply; only past the budget are the rings counted.
            self.kept += grown
            if self.kept <= OUTPUT_BUDGET:
                return
            with self.lock:
                processes = [p for p in self.processes.values() if p.background]
            held = sum(ring.held for p in processes for ring in p.rings)
            self.kept = held
            if held <= OUTPUT_BUDGET:
                return
            finished = [p for p in processes if p.duration is not None and not p.evicted]
            finished.sort(key=lambda p: p.started + (p.duration or 0.0))
            for process in finished:
                if held <= OUTPUT_BUDGET:
                    self.kept = held
                    return
                with process.cond:
                    freed = sum(ring.drop(ring.held) for ring in process.rings)
                    process.evicted = freed > 0
                    process.cond.notify_all()
                held -= freed
            rings = [(ring, p) for p in processes if not p.evicted for ring in p.rings]
            while held > OUTPUT_BUDGET and rings:
                ring, process = max(rings, key=lambda pair: pair[0].held)
                if not ring.held:
                    break
                with process.cond:
                    held -= ring.drop(1)
                    process.cond.notify_all()
            self.kept = held

    def get(self, pid_id: str) -> Process:
        with self.lock:
            process = self.processes.get(pid_id)
        if process is None:
            raise RequestError(NO_SUCH_PROCESS, f"no such process: {pid_id}")
        return process

    def forget(self, process: Process) -> None:
        with self.lock:
            self.processes.pop(process.id, None)

    def list(self) -> list[Process]:
        with self.lock:
            return list(self.processes.values())

    def kill_all(self) -> int:
        with self.lock:
            self.closed = True
            groups = [p.popen.pid for p in self.processes.values() if p.exit_code is None]
        for pgid in groups:
            kill_group(pgid)
        return len(groups)
