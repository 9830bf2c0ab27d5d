"""``CommandLabSandbox``: Inspect's ``SandboxEnvironment`` on a commandlab computer.

Each sample's sandbox is one ``provision`` block, entered in ``sample_init`` and left in
``sample_cleanup`` (or ``task_cleanup``, for samples Inspect did not clean up), so it
comes up under our per-target limits and is deleted shielded and bounded like any other.
Under ``--no-sandbox-cleanup`` Inspect skips ``sample_cleanup``: ``task_cleanup`` keeps
each sandbox (:meth:`Computer.keep`: it belongs to no process then, and only its TTL or
``commandlab rm`` removes it) and prints how to reach and remove it.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import fields, replace
from typing import Any, Literal, overload

from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    SandboxUnavailableError,
    SandboxUserUnsupportedError,
    sandboxenv,
)
from inspect_ai.util._sandbox.exec_remote import (
    ExecRemoteAwaitableOptions,
    ExecRemoteProcess,
    ExecRemoteStreamingOptions,
)
from inspect_ai.util._sandbox.lifecycle import sandbox_lifecycle_state
from pydantic import BaseModel

from ... import Computer, DockerPlatform, Target, gc, provision, share_handle
from ...errors import (
    CleanupError,
    CommandTimeoutError,
    DaemonError,
    DaemonUnreachableError,
    FileTooLargeError,
    RemoteFileNotFoundError,
    UnsupportedOperationError,
)
from ..cli.sandboxes import SCOPE_FLAGS
from .config import load_config
from .streaming import StreamingProcess, exit_status

__all__ = ["CommandLabSandbox"]

log = logging.getLogger("commandlab_async.inspect")


class _Held:
    """The sandboxes of one run that Inspect has not cleaned up yet. Held strongly: a
    provision block must be left by _close, in the run's event loop, never by the
    garbage collector or the loop's shutdown (by then its HTTP session is closed)."""

    def __init__(self) -> None:
        self.sandboxes: set[CommandLabSandbox] = set()


# Outside an Inspect run's lifecycle scope (the provider driven directly): by task name.
_unscoped: dict[str, _Held] = {}


def _held(task_name: str) -> _Held:
    """Where the sandboxes of ``task_name`` are held: the run's lifecycle scope, which
    every sample of the run shares and whose end Inspect's final ``task_cleanup``
    (named ``"shutdown"``, not after any task) marks; else the task's own entry."""
    scope = sandbox_lifecycle_state()
    if scope is not None:
        return scope.get(_Held)
    return _unscoped.setdefault(_task_key(task_name), _Held())


def _task_key(task_name: str) -> str:
    # Inspect hands sample_init the unqualified task name and the rest the qualified one.
    return task_name.rsplit("/", 1)[-1]


def _kept_message(kept: Sequence[CommandLabSandbox]) -> str:
    """How to reach and remove each kept sandbox, a few lines each."""
    lines = [
        f"commandlab: kept {len(kept)} sandbox(es) running (--no-sandbox-cleanup); each is"
        " deleted only by its TTL or `commandlab rm`, never by `commandlab gc`:"
    ]
    for sandbox in sorted(kept, key=lambda s: (s._sample, s._computer.name)):
        computer = sandbox._computer
        expires = computer.expires_at
        until = (
            "no TTL"
            if expires is None
            else time.strftime("until %H:%M:%S", time.localtime(expires))
        )
        sample = f"sample {sandbox._sample}: " if sandbox._sample else ""
        lines += [
            f"  {sample}{computer.name} ({computer.platform}, {until})",
            f"    enter:   {shlex.join(['commandlab', 'exec', '-i', computer.name, '--', 'sh'])}",
            f"    remove:  {shlex.join(_rm_command(computer.name, sandbox._target))}",
        ]
    return "\n".join(lines)


def _rm_command(name: str, target: Target | None) -> list[str]:
    """``commandlab rm NAME`` with the flags that name the sandbox's target."""
    words = ["commandlab", "rm", name]
    if target is None or target.platform == DockerPlatform.LOCAL:
        return words
    words += ["--platform", str(target.platform)]
    flag_of = {field: flag for flag, field in SCOPE_FLAGS.items()}
    for f in fields(target):
        value = getattr(target, f.name)
        if f.name in flag_of and isinstance(value, str):
            words += [f"--{flag_of[f.name].replace('_', '-')}", value]
    return words


@sandboxenv(name="commandlab")
class CommandLabSandbox(SandboxEnvironment):
    """A sample's sandbox: one commandlab computer on any platform we support."""

    def __init__(
        self,
        computer: Computer,
        stack: AsyncExitStack,
        user: str | None,
        held: _Held | None = None,
        sample: str = "",
        target: Target | None = None,
    ) -> None:
        super().__init__()
        self._computer = computer
        self._stack = stack
        self._user = user
        self._held = held
        self._sample = sample
        self._target = target

    @property
    def computer(self) -> Computer:
        """The commandlab :class:`Computer` behind this sandbox (for the full API)."""
        return self._computer

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return load_config(config)

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        # Fail the task at once on a bad config, before any sample starts.
        load_config(config).to_spec()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "the commandlab sandbox needs Inspect's asyncio backend (not trio)"
            ) from None

    @classmethod
    async def sample_init(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, metadata: dict[str, str]
    ) -> dict[str, SandboxEnvironment]:
        settings = load_config(config)
        spec = settings.to_spec()
        spec = replace(spec, labels={**spec.labels, "inspect-task": _task_key(task_name)[:63]})
        # Relative paths and commands start in the daemon's working directory (the
        # image's, /home/computer by default), which is the sample's directory.
        held = _held(task_name)
        stack = AsyncExitStack()
        computer = await stack.enter_async_context(provision(spec))
        sample = str(metadata.get("__sample_id__", ""))  # Inspect's, for the kept list
        sandbox = cls(computer, stack, settings.user, held, sample, spec.target())
        held.sandboxes.add(sandbox)
        return {"default": sandbox}

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        # Interrupted or not, delete at once (shielded and bounded inside provision):
        # nothing is gained by waiting for the task's end.
        ours = [e for e in environments.values() if isinstance(e, CommandLabSandbox)]
        await asyncio.gather(*(sandbox._close() for sandbox in ours))

    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        # Every sandbox of the run at its end (Inspect's "shutdown": the samples it did
        # not clean up, of every task), else those of the task named.
        left = list(_held(task_name).sandboxes)
        if not left:
            return
        if not cleanup:  # --no-sandbox-cleanup: keep them for the user to look into
            for sandbox in left:
                sandbox._computer.keep()
        await asyncio.gather(*(sandbox._close() for sandbox in left))
        if not cleanup:
            print(_kept_message(left), flush=True)

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup commandlab``: delete what interrupted evals left.

        Runs ``gc`` on local Docker: every sandbox whose owner process is gone or whose
        TTL passed. It deletes no sandbox by id (a live eval's are its own), and leaves
        those ``--no-sandbox-cleanup`` kept to their TTL or ``commandlab rm NAME``.
        """
        if id is not None:
            print(f"commandlab: deleting what dead evals left, not {id} alone")
        reaped = await gc()
        for gone in reaped:
            print(f"deleted {gone.name} ({gone.reason})")
        print(f"commandlab: {len(reaped)} sandbox(es) deleted")

    async def _close(self) -> None:
        if self._held is not None:
            self._held.sandboxes.discard(self)
        try:
            await self._stack.aclose()
        except CleanupError as exc:  # the TTL and gc remain; the sample's result stands
            log.warning("%s", exc)

    # -- commands ----------------------------------------------------------

    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        try:
            # Twice the limit keeps (at least) its last `limit` bytes: Inspect's contract
            # is the trailing portion of each stream.
            result = await self._computer.run(
                cmd,
                stdin=input,
                cwd=cwd,
                env=env,
                user=user or self._user,
                timeout=timeout,
                max_output=2 * limit,
            )
        except CommandTimeoutError as exc:
            error = TimeoutError(f"Command timed out after {timeout} seconds")
            partial = exc.result.stdout + exc.result.stderr
            if partial:
                error.truncated_output = partial  # type: ignore[attr-defined]
            raise error from exc
        except UnsupportedOperationError as exc:
            raise SandboxUserUnsupportedError(str(exc)) from exc
        except RemoteFileNotFoundError as exc:  # the program, or cwd: the command's failure
            return ExecResult(False, 127, "", f"{exc}\n")
        except DaemonUnreachableError as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        except DaemonError as exc:
            if exc.code in ("no_such_user", "exec_format_error"):
                return ExecResult(False, 126, "", f"{exc}\n")
            raise
        status = exit_status(result.exit_code)
        stdout, stderr = result.stdout_bytes[-limit:], result.stderr_bytes[-limit:]
        return ExecResult(
            status == 0,
            status,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
        )

    @overload
    async def exec_remote(
        self,
        cmd: list[str],
        options: ExecRemoteStreamingOptions | None = None,
        *,
        stream: Literal[True] = True,
    ) -> ExecRemoteProcess: ...

    @overload
    async def exec_remote(
        self,
        cmd: list[str],
        options: ExecRemoteAwaitableOptions | None = None,
        *,
        stream: Literal[False],
    ) -> ExecResult[str]: ...

    async def exec_remote(
        self,
        cmd: list[str],
        options: ExecRemoteStreamingOptions | ExecRemoteAwaitableOptions | None = None,
        *,
        stream: bool = True,
    ) -> ExecRemoteProcess | ExecResult[str]:
        """Run ``cmd`` with output streamed as it comes, over the daemon's own exec stream.

        Unlike the default, nothing is injected into the sandbox and nothing is polled.
        """
        if not stream:
            awaitable = options if isinstance(options, ExecRemoteAwaitableOptions) else None
            opts = awaitable or ExecRemoteAwaitableOptions()
            timeout = None if opts.timeout is None else max(1, round(opts.timeout))
            return await self.exec(cmd, opts.input, opts.cwd, opts.env, opts.user, timeout=timeout)
        opts_s = options if isinstance(options, ExecRemoteStreamingOptions) else None
        opts_s = opts_s or ExecRemoteStreamingOptions()
        try:
            process = await self._computer.start(
                cmd, cwd=opts_s.cwd, env=opts_s.env, user=opts_s.user or self._user
            )
        except UnsupportedOperationError as exc:
            raise SandboxUserUnsupportedError(str(exc)) from exc
        except DaemonUnreachableError as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        streaming = StreamingProcess(process, stdin_open=opts_s.stdin_open)
        if opts_s.input is not None:
            await process.write(opts_s.input)
        if not opts_s.stdin_open:
            await process.close_stdin()
        return streaming

    # -- files -------------------------------------------------------------

    async def write_file(self, file: str, contents: str | bytes) -> None:
        data = contents.encode() if isinstance(contents, str) else contents
        await self._computer.write_file(file, data, user=self._user)

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        try:
            data = await self._computer.read_file(
                file, max_size=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE, user=self._user
            )
        except FileTooLargeError as exc:
            raise OutputLimitExceededError(
                SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None
            ) from exc
        return data.decode("utf-8") if text else data

    # -- people ------------------------------------------------------------

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        name = self._computer.name
        who = user or self._user
        if self._computer.platform != DockerPlatform.LOCAL:
            # Through its saved handle. Its block removes the handle before it deletes the
            # sandbox (and saves it again, as kept, when it keeps it). No terminal: `exec
            # -i` is a shell whose input is the caller's.
            await self._stack.enter_async_context(share_handle(self._computer))
            shell = ["commandlab", "exec", "-i", *(["-u", who] if who else []), name, "--"]
            return SandboxConnection(type="commandlab", command=shlex.join([*shell, "bash", "-l"]))
        command = ["docker", "exec", "-it", *(["--user", who] if who else []), name, "bash", "-l"]
        return SandboxConnection(
            type="commandlab",
            command=shlex.join(command),
            vscode_command=["remote-containers.attachToRunningContainer", name],
            container=name,
        )

    def default_polling_interval(self) -> float:
        return 0.2
