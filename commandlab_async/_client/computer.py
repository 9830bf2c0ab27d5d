"""Computer: the async client of the daemon running inside one sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import math
import os
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, NoReturn, TypeVar

import aiohttp
import anyio

from ..daemon import protocol as wire
from ..daemon.protocol import MAX_TIMEOUT
from ..errors import (
    AuthenticationError,
    CommandTimeoutError,
    DaemonError,
    DaemonProtocolError,
    DaemonUnreachableError,
    DaemonUnresponsiveError,
    DesktopError,
    DesktopUnavailableError,
    FileTooLargeError,
    OutputLimitExceededError,
    RemoteFileNotFoundError,
    RemoteIsADirectoryError,
    RemoteNotADirectoryError,
    RemoteOSError,
    RemotePermissionError,
    RemoteProcessLookupError,
    ResourceExhaustedError,
    SandboxDeletedError,
    UnsupportedOperationError,
)
from ..platforms.base import HeaderSource
from ..specs import DESKTOP_IMAGE
from .desktop import Desktop
from .files import FileInfo, parse_listing, read_local
from .history import CommandRecord, History
from .liveness import CHECK_AFTER, PROBE_TIMEOUT, Liveness
from .process_io import StdinQueue, process_route
from .processes import (
    Collector,
    CommandResult,
    Frames,
    Process,
    ProcessInfo,
    ProcessStart,
    parse_process_list,
    stdin_body,
)
from .replies import (
    MAX_ERROR_BODY,
    MAX_FIELD,
    MAX_HEADERS,
    MAX_JSON,
    MAX_LINE,
    MAX_LISTING,
    ReplyError,
    clip,
    expect_object,
    get_opt_str,
    read_json,
)
from .transport import describe, http_url, on_loop, session_for

__all__ = ["CommandResult", "Computer"]

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
"""Bytes of each stream ``run()`` keeps by default (the first and last 8 MiB)."""
DEFAULT_MAX_READ = 64 * 1024 * 1024
"""The largest file ``read_file()`` returns by default; use ``download()`` for more."""

# How much longer than the command's own timeout the client waits for the daemon's answer.
_REPLY_MARGIN = 30.0
_CONNECT_TIMEOUT = 10.0
_HEADERS_TIMEOUT = 30.0
_STALL_TIMEOUT = 300.0  # a file transfer that moves nothing for this long has failed
_JSON_TIMEOUT = 60.0  # a JSON request, its whole reply included; and reading any JSON reply
_ERROR_BODY_TIMEOUT = 10.0  # reading an error reply's words
_MAX_MESSAGE = 1000  # characters of a daemon's error message kept
_MAX_CODE = 64  # characters of a daemon's error code kept

# The daemon's error codes that are OS errors: (class, errno).
_OS_ERRORS: dict[str, tuple[type[RemoteOSError], int]] = {
    wire.NOT_FOUND: (RemoteFileNotFoundError, errno.ENOENT),
    wire.PERMISSION_DENIED: (RemotePermissionError, errno.EACCES),
    wire.IS_A_DIRECTORY: (RemoteIsADirectoryError, errno.EISDIR),
    wire.NOT_A_DIRECTORY: (RemoteNotADirectoryError, errno.ENOTDIR),
    wire.NO_SUCH_PROCESS: (RemoteProcessLookupError, errno.ESRCH),
    wire.EXEC_FORMAT_ERROR: (RemoteOSError, errno.ENOEXEC),
    wire.NOT_A_REGULAR_FILE: (RemoteOSError, errno.EINVAL),
    wire.BAD_PATH: (RemoteOSError, errno.EINVAL),
    wire.INSUFFICIENT_STORAGE: (RemoteOSError, errno.ENOSPC),
}

T = TypeVar("T")
Command = str | Sequence[str]
Stdin = bytes | str | AsyncIterable[bytes] | None


class Lifetime:
    """How long a :class:`Computer` works: ended by whoever owns its sandbox's block.

    The code that made the Computer (a ``provision`` or ``connect`` block) keeps this
    and calls :meth:`end` when its block ends; from then on the Computer raises
    :class:`SandboxDeletedError` saying why. ``expires_at`` is the sandbox's TTL
    deadline (epoch seconds), None without a TTL.
    """

    __slots__ = ("ended", "expires_at")

    def __init__(self, *, expires_at: float | None = None) -> None:
        self.ended: str | None = None
        self.expires_at = expires_at

    def end(self, why: str) -> None:
        """From now on every call of the Computer raises SandboxDeletedError saying ``why``."""
        self.ended = why


class Computer:
    """A running sandbox. Obtained from :func:`provision` or :func:`provision_many`.

    All methods are coroutines, safe to call concurrently on one Computer or many.
    Relative paths (and ``cwd``) resolve against the sandbox's working directory
    (:meth:`working_dir`).
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        token: str,
        session: aiohttp.ClientSession,
        platform: str,
        ssl_context: ssl.SSLContext | None = None,
        extra_headers: HeaderSource | None = None,
        lifetime: Lifetime | None = None,
    ) -> None:
        self._name = name
        self._url = url.rstrip("/")
        self._base = http_url(self._url)  # where requests go (a Unix socket's stand-in)
        # Not ``Authorization``: the Kubernetes API server's proxy strips it, and Cloud
        # Run's IAM reads it. The daemon accepts both.
        self._headers = {wire.TOKEN_HEADER: token}
        self._session = session
        try:  # the loop ``session`` belongs to; used on another, a Computer uses that loop's
            self._home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._home = None
        self._platform = platform
        # Per request, so each platform's verification (or a pinned certificate) applies
        # on the one connection pool every Computer of the process shares.
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._extra_headers = extra_headers
        self._cwd: str | None = None
        self._liveness = Liveness(self._probe, check_after=CHECK_AFTER)
        self._lifetime = Lifetime() if lifetime is None else lifetime
        self._kept = False
        self._history = History()
        self._desktop: Desktop | None = None

    @property
    def name(self) -> str:
        """The sandbox name (container, task, group or service name on the backend)."""
        return self._name

    @property
    def url(self) -> str:
        """Base URL of the daemon: ``http(s)://...``, or ``unix:<path>`` for a daemon on
        a Unix socket (local Docker)."""
        return self._url

    @property
    def platform(self) -> str:
        return self._platform

    def __repr__(self) -> str:
        return f"Computer(name={self._name!r}, platform={self._platform!r}, url={self._url!r})"

    def keep(self) -> None:
        """Leave the sandbox running when its ``provision`` block ends, instead of deleting it.

        It then belongs to no process: ``commandlab gc`` leaves it, even once this process
        has exited, and ``commandlab ls`` shows it as ``kept``; only its TTL (``gc`` deletes
        it once that passed) or ``commandlab rm NAME`` removes it. Its handle is saved so
        that ``commandlab exec NAME`` and :func:`~commandlab_async.connect` reach it from
        another process. This object stops working when the block ends either way.
        """
        self._kept = True

    @property
    def expires_at(self) -> float | None:
        """When the sandbox's TTL deletes it (epoch seconds); None if it has no TTL."""
        return self._lifetime.expires_at

    @property
    def desktop(self) -> Desktop:
        """The screen, keyboard and mouse of a desktop sandbox (an image with a desktop,
        such as ``DESKTOP_IMAGE``). On an image without one, its calls raise
        :class:`UnsupportedOperationError`."""
        if self._desktop is None:
            self._desktop = Desktop(self)
        return self._desktop

    @property
    def kept(self) -> bool:
        """True once :meth:`keep` was called."""
        return self._kept

    def history(self, since: float = 0.0) -> list[CommandRecord]:
        """The last commands :meth:`run` ran (up to 20; those begun at ``since`` or later),
        each with its exit code, duration and the tails of its output."""
        return self._history.records(since)

    # -- daemon ------------------------------------------------------------

    async def health(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the daemon for its version, uptime and working directory."""
        result: dict[str, Any] = await self._json(
            "GET", "/health", check=_health_reply, timeout=timeout
        )
        self._cwd = result.get("cwd")
        return result

    async def working_dir(self) -> str:
        """The sandbox's working directory: where relative paths and commands start."""
        if self._cwd is None:
            await self.health()
        if self._cwd is None:
            raise DaemonProtocolError(
                "the health reply names no working directory", sandbox=self._name
            )
        return self._cwd

    # -- commands ----------------------------------------------------------

    async def run(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | int | None = None,
        stdin: Stdin = None,
        timeout: float | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_output_limit: Literal["truncate", "raise"] = "truncate",
    ) -> CommandResult:
        """Run ``command`` in the sandbox and return what it did.

        A string runs through ``/bin/sh -c``; a sequence is the argv of a program run
        directly (no shell, no quoting, no single-argument size limit). A non-zero exit
        status is returned, not raised. ``stdin`` (bytes, str or an async iterable of
        bytes) is streamed; without it the command reads end of file.

        ``timeout`` is enforced inside the sandbox: the command's whole process group is
        killed and :class:`CommandTimeoutError` carries the output so far. At most
        ``max_output`` bytes of each stream are kept (its first and last halves, see
        :attr:`CommandResult.truncated`); with ``on_output_limit="raise"`` the command is
        killed instead when it prints more, and :class:`OutputLimitExceededError` is
        raised. ``user`` runs the command as another user (needs ``run_as_root=True``,
        else :class:`UnsupportedOperationError`). Cancelling the call kills the command.

        A program that cannot start raises :class:`RemoteOSError` (e.g.
        :class:`RemoteFileNotFoundError`, also a ``FileNotFoundError``); a sandbox out of
        processes or memory raises :class:`ResourceExhaustedError`.
        """
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
            raise ValueError("max_output must be a non-negative int")
        if on_output_limit not in ("truncate", "raise"):
            raise ValueError("on_output_limit must be 'truncate' or 'raise'")
        header = _exec_header(
            command,
            cwd=cwd,
            env=env,
            user=user,
            timeout=timeout,
            max_output=max_output,
            on_limit="kill" if on_output_limit == "raise" else "truncate",
            background=False,
        )
        if isinstance(stdin, str):
            stdin = stdin.encode()
        started_at = time.time()
        try:
            result = await self._run(header, stdin, timeout, max_output)
        except (CommandTimeoutError, OutputLimitExceededError) as exc:
            self._history.add(command, started_at, exc.result, exc)
            raise
        except BaseException as exc:
            self._history.add(command, started_at, None, exc)
            raise
        self._history.add(command, started_at, result)
        return result

    async def _run(
        self, header: bytes, stdin: Stdin, timeout: float | None, max_output: int
    ) -> CommandResult:
        total = None if timeout is None else timeout + _REPLY_MARGIN
        async with self._exec(header, stdin, total) as response:
            collector = Collector(max_output)
            frames = Frames(response, self._liveness.watch, max_output_frame=max_output)
            with self._unreachable("running a command"):
                end = await collector.read(frames)
                await frames.end()  # the chunked terminator: keeps the connection
        result = collector.result()
        if end.timed_out:
            raise CommandTimeoutError(
                f"command timed out after {timeout}s; its process group was killed",
                sandbox=self._name,
                result=result,
            )
        if end.limit_exceeded:
            raise OutputLimitExceededError(
                f"command printed more than max_output={max_output} bytes on a stream;"
                " it was killed",
                sandbox=self._name,
                result=result,
            )
        return result

    def start(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | int | None = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> ProcessStart:
        """Start ``command`` and return a :class:`Process` to stream it as it runs.

        Use ``async with computer.start(...) as process:`` (the process is killed when the
        block ends, unless ``background=True``) or ``process = await computer.start(...)``.
        Its stdin stays open until :meth:`Process.close_stdin`. ``command``, ``cwd``,
        ``env``, ``user`` and ``timeout`` are as for :meth:`run`. A background process
        outlives this call and the client: it is listed by :meth:`processes`, re-attached
        with :meth:`attach`, and killed when the sandbox goes.
        """
        header = _exec_header(
            command,
            cwd=cwd,
            env=env,
            user=user,
            timeout=timeout,
            max_output=None,
            on_limit="truncate",
            background=background,
        )

        async def open_process() -> Process:
            queue = StdinQueue(16, sandbox=self._name)
            response = await self._open_exec(header, queue, None)
            return await self._adopt(response, queue, background)

        return ProcessStart(open_process)

    def attach(self, process_id: str) -> ProcessStart:
        """Stream a background process's output again: what its ring buffer kept, then live.

        Unknown ids raise :class:`RemoteProcessLookupError`, malformed ones ``ValueError``
        before anything is sent. A process that finished and whose output the daemon
        dropped for its memory budget raises :class:`DaemonError` with code
        ``output_evicted``. Leaving the block detaches (the process keeps running).
        """
        route = process_route(process_id, "output")

        async def open_process() -> Process:
            response = await self._send("GET", route, timeout=aiohttp.ClientTimeout())
            return await self._adopt(response, None, True)

        return ProcessStart(open_process)

    async def processes(self) -> list[ProcessInfo]:
        """The processes the daemon is running (and background ones that ended)."""
        processes: list[ProcessInfo] = await self._json(
            "GET", "/processes", check=parse_process_list, limit=MAX_LISTING
        )
        return processes

    async def kill_process(self, process_id: str) -> None:
        """Kill a process's group by id and forget it (if it was a background process).

        A malformed id is a ``ValueError`` before anything is sent.
        """
        await self._json("DELETE", process_route(process_id), check=_object_reply)

    # -- files -------------------------------------------------------------

    async def read_file(
        self, path: str, *, max_size: int | None = DEFAULT_MAX_READ, user: str | int | None = None
    ) -> bytes:
        """The file at ``path`` as bytes.

        A file bigger than ``max_size`` (default 64 MiB; None for no limit) raises
        :class:`FileTooLargeError` before anything is transferred: use :meth:`download`
        or :meth:`stream_file` for big files. Missing files, directories and unreadable
        files raise :class:`RemoteFileNotFoundError`, :class:`RemoteIsADirectoryError`
        and :class:`RemotePermissionError` (also the builtin ``OSError`` subclasses).
        ``user`` reads it as another user, with that user's permissions (needs
        ``run_as_root=True``, else :class:`UnsupportedOperationError`).
        """
        parts = bytearray()
        async with self.stream_file(path, max_size=max_size, user=user) as chunks:
            async for chunk in chunks:
                parts += chunk
        return bytes(parts)

    @asynccontextmanager
    async def stream_file(
        self, path: str, *, max_size: int | None = None, user: str | int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """``async with computer.stream_file(path) as chunks: async for chunk in chunks``.

        Reads in bounded chunks; nothing is held whole. Errors and ``user`` as for
        :meth:`read_file`.
        """
        params = _file_params(path, user)
        if max_size is not None:
            if max_size < 0:
                raise ValueError("max_size must be >= 0")
            params["max_size"] = str(max_size)
        timeout = aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT, sock_read=_STALL_TIMEOUT)
        response = await self._send("GET", "/files", params=params, timeout=timeout)
        try:
            self._check_file_reply(response, path, max_size)
        except BaseException:
            response.close()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            seen = 0
            pieces = response.content.iter_chunked(1024 * 1024)
            while True:
                # Only the read is watched: the caller's work between chunks is not silence.
                with self._unreachable(f"reading {path}"), self._liveness.watch():
                    chunk = await anext(pieces, None)
                if chunk is None:
                    return
                seen += len(chunk)
                if max_size is not None and seen > max_size:  # the file grew meanwhile
                    raise FileTooLargeError(
                        f"{path} grew past max_size={max_size} while being read",
                        sandbox=self._name,
                        path=path,
                        size=None,
                    )
                yield chunk

        try:
            yield chunks()
        finally:
            response.close() if not response.content.is_eof() else response.release()

    async def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        max_size: int | None = None,
        user: str | int | None = None,
    ) -> int:
        """Copy the sandbox's ``path`` to the local ``destination``; returns the size."""
        size = 0
        async with (
            self.stream_file(path, max_size=max_size, user=user) as chunks,
            await anyio.open_file(destination, "wb") as out,
        ):
            async for chunk in chunks:
                await out.write(chunk)
                size += len(chunk)
        return size

    async def write_file(
        self,
        path: str,
        data: bytes | str | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        user: str | int | None = None,
    ) -> None:
        """Write ``data`` (bytes, str, or an async iterable of bytes) to ``path``.

        Parent directories are created. The file appears whole or not at all (written
        aside, then renamed). An existing file keeps its mode and owner and must be
        writable (else :class:`RemotePermissionError`); ``mode`` sets the permission bits.
        ``user`` writes as another user: new files and directories are theirs, and their
        permissions apply (needs ``run_as_root=True``).
        """
        if isinstance(data, str):
            data = data.encode()
        body: Any = io.BytesIO(data) if isinstance(data, bytes) else data
        params = _file_params(path, user)
        if mode is not None:
            params["mode"] = format(mode, "o")
        timeout = aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT, sock_read=_STALL_TIMEOUT)
        await self._json(
            "PUT", "/files", check=_object_reply, params=params, data=body, timeout=timeout
        )

    async def upload(
        self,
        source: str | os.PathLike[str],
        path: str,
        *,
        mode: int | None = None,
        user: str | int | None = None,
    ) -> None:
        """Copy the local file ``source`` to the sandbox's ``path``, streamed.

        A ``source`` that cannot be opened raises the builtin ``OSError`` (such as
        ``FileNotFoundError``) before anything is sent.
        """
        async with await anyio.open_file(source, "rb") as local:
            await self.write_file(path, read_local(local), mode=mode, user=user)

    async def stat(self, path: str) -> FileInfo:
        """What ``path`` is (follows symlinks); :class:`RemoteFileNotFoundError` if nothing."""
        info: FileInfo = await self._json(
            "GET", "/files/stat", check=FileInfo.from_json, params={"path": path}
        )
        return info

    async def list_dir(self, path: str = ".") -> list[FileInfo]:
        """The entries of the directory ``path``, sorted by name (at most 10,000)."""
        entries: list[FileInfo] = await self._json(
            "GET", "/files/list", check=parse_listing, limit=MAX_LISTING, params={"path": path}
        )
        return entries

    # -- plumbing ----------------------------------------------------------

    @asynccontextmanager
    async def _exec(
        self, header: bytes, stdin: Stdin, total: float | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        response = await self._open_exec(header, stdin, total)
        try:
            yield response
        finally:
            # A reply not read to its end (cancelled, failed) closes the connection,
            # which is how the daemon learns to kill the command.
            if response.content.is_eof():
                response.release()
            else:
                response.close()

    async def _open_exec(
        self, header: bytes, stdin: Any, total: float | None
    ) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=_CONNECT_TIMEOUT)
        return await self._send(
            "POST",
            "/exec",
            data=stdin_body(header, stdin),
            timeout=timeout,
            content_type="application/x-commandlab-exec",
        )

    async def _adopt(
        self, response: aiohttp.ClientResponse, stdin: Any, background: bool
    ) -> Process:
        """Read the ``S`` frame of an exec or attach reply and wrap it in a Process."""
        try:
            with self._unreachable("starting a process"):
                started = await Frames(response, self._liveness.watch).start()
        except BaseException:
            response.close()
            raise
        return Process(
            response=response,
            stdin=stdin,
            control=self._control,
            id=started.id,
            pid=started.pid,
            background=background,
            watch=self._reading_output,
        )

    @contextmanager
    def _reading_output(self) -> Iterator[None]:
        """Around each read of a :class:`Process`'s reply: watched, and errors typed."""
        with self._unreachable("reading a process's output"), self._liveness.watch():
            yield

    async def _control(self, method: str, route: str, params: dict[str, str] | None) -> Any:
        return await self._json(method, route, check=_object_reply, params=params)

    async def _send(
        self,
        method: str,
        route: str,
        *,
        timeout: aiohttp.ClientTimeout,
        content_type: str | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """Send a request; returns the 200 response (unread) or raises the typed error."""
        if self._lifetime.ended is not None:
            raise SandboxDeletedError(self._lifetime.ended, sandbox=self._name)
        headers = await self._request_headers()
        if content_type is not None:
            headers = {**headers, "Content-Type": content_type}
        with self._unreachable(f"{method} {route}"), self._liveness.watch():
            response = await self._http().request(
                method,
                self._base + route,
                headers=headers,
                timeout=timeout,
                ssl=self._ssl,
                max_line_size=MAX_LINE,
                max_field_size=MAX_FIELD,
                max_headers=MAX_HEADERS,
                # A redirect would carry the token (a header of ours) wherever the
                # daemon points: the host's services, a cloud's metadata address.
                allow_redirects=False,
                **kwargs,
            )
        if response.status != 200:
            try:
                await self._raise_for(response)
            finally:
                response.release()
        return response

    async def _json(
        self,
        method: str,
        route: str,
        *,
        check: Callable[[Any], T],
        limit: int = MAX_JSON,
        timeout: float | aiohttp.ClientTimeout | None = None,
        **kwargs: Any,
    ) -> T:
        """The JSON reply of a request, at most ``limit`` bytes, passed through ``check``
        (which raises :class:`ReplyError` for a reply of the wrong shape)."""
        if not isinstance(timeout, aiohttp.ClientTimeout):
            total = _JSON_TIMEOUT if timeout is None else timeout
            timeout = aiohttp.ClientTimeout(total=total, sock_connect=_CONNECT_TIMEOUT)
        what = f"{method} {route}"
        response = await self._send(method, route, timeout=timeout, **kwargs)
        try:
            with self._unreachable(what):
                # A reply dripped byte by byte defeats a stall timeout (an upload's only
                # one): reading it has a deadline of its own.
                with self._liveness.watch():
                    async with asyncio.timeout(_JSON_TIMEOUT):
                        reply = await read_json(response, limit)
                return check(reply)
        finally:
            # Not read to its end (too big, malformed), it closes the connection.
            response.release()

    def _http(self) -> aiohttp.ClientSession:
        """The connection pool of the running loop.

        On the loop the sandbox was brought up on, the pool it was given; on any other
        (a test's own loop, another thread's), that loop's own pool
        (:func:`.transport.session_for`), so a Computer works from every loop of the process.
        """
        loop = asyncio.get_running_loop()
        if self._home is None:
            self._home = loop
        return self._session if loop is self._home else session_for(loop)

    async def _request_headers(self) -> dict[str, str]:
        if self._extra_headers is None:
            return self._headers
        # The platform's credentials (a cluster token, say) may need a fetch: bounded too.
        try:
            async with asyncio.timeout(_HEADERS_TIMEOUT):
                extra = await on_loop(self._home, self._extra_headers)
        except TimeoutError:
            raise DaemonUnreachableError(
                "the platform's credentials for reaching the daemon were not had within"
                f" {_HEADERS_TIMEOUT:g}s",
                sandbox=self._name,
            ) from None
        return {**extra, **self._headers}

    async def _probe(self) -> None:
        """The liveness probe: returns if the daemon answers ``/health``, else raises why."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):  # the platform's headers included
                response = await self._http().get(
                    self._base + "/health",
                    headers=await self._request_headers(),
                    ssl=self._ssl,
                    max_line_size=MAX_LINE,
                    max_field_size=MAX_FIELD,
                    max_headers=MAX_HEADERS,
                    allow_redirects=False,  # as every request: the token goes nowhere else
                )
                response.release()
        except TimeoutError:
            raise DaemonUnresponsiveError(
                f"the daemon stopped answering: a call waited {CHECK_AFTER:g}s in silence and"
                f" a health check got no answer in {PROBE_TIMEOUT:g}s (frozen or starved);"
                " the call was abandoned",
                sandbox=self._name,
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise DaemonUnreachableError(
                f"the daemon cannot be reached ({describe(exc)}): the sandbox may have exited"
                " or been deleted",
                sandbox=self._name,
            ) from exc
        if response.status != 200:
            raise DaemonUnreachableError(
                f"a health check while waiting got HTTP {response.status}", sandbox=self._name
            )

    @contextmanager
    def _unreachable(self, what: str) -> Iterator[None]:
        """A broken connection or a timeout during ``what`` is a DaemonUnreachableError.

        Once the sandbox is deleted, it is a :class:`SandboxDeletedError` instead.
        """
        try:
            yield
        except DaemonError:
            raise  # already ours (the liveness verdict among them)
        except ReplyError as exc:  # a reply that breaks the protocol: see .replies
            raise DaemonProtocolError(f"{what}: {exc}", sandbox=self._name) from exc
        except aiohttp.ClientResponseError as exc:  # a head aiohttp could not parse
            raise DaemonProtocolError(
                f"{what}: a malformed reply head ({clip(str(exc.message))})", sandbox=self._name
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            # Not a daemon that is late: someone else's certificate (with a per-sandbox
            # certificate, anyone else's). Waiting will not change it.
            raise AuthenticationError(
                f"{what}: the daemon's TLS certificate was refused, so the token was not "
                f"sent ({exc.certificate_error})",
                sandbox=self._name,
            ) from exc
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            if self._lifetime.ended is not None:  # a call in flight when its block ended
                raise SandboxDeletedError(self._lifetime.ended, sandbox=self._name) from exc
            if isinstance(exc, TimeoutError):
                raise DaemonUnreachableError(
                    f"{what}: no answer in time", sandbox=self._name
                ) from exc
            gone = isinstance(exc, aiohttp.ClientConnectorError)  # no connection at all
            raise DaemonUnreachableError(
                f"{what} failed: {describe(exc)}"
                + (": the sandbox may have exited or been deleted" if gone else ""),
                sandbox=self._name,
            ) from exc

    async def _raise_for(self, response: aiohttp.ClientResponse) -> NoReturn:
        status = response.status
        # At most MAX_ERROR_BODY bytes within _ERROR_BODY_TIMEOUT: the words of an error
        # are short, and the rest goes with the connection.
        body = bytearray()
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            async with asyncio.timeout(_ERROR_BODY_TIMEOUT):
                while len(body) < MAX_ERROR_BODY and (
                    piece := await response.content.read(MAX_ERROR_BODY - len(body))
                ):
                    body += piece
        try:
            payload = json.loads(body)
            code = _short(payload.get("error", "error"), _MAX_CODE)
            message = _short(payload.get("message", ""), _MAX_MESSAGE)
        except (ValueError, AttributeError, RecursionError):
            # Not the daemon's answer: a front end or proxy on the way (Cloud Run's IAM
            # check, the Kubernetes API server...). Its own words say what went wrong.
            words = " ".join(body[:4096].decode(errors="replace").split())[:200]
            payload, code, message = {}, "error", f"HTTP {status}: {words}".rstrip(": ")
        raise _typed_error(self._name, status, code, message, payload)

    def _check_file_reply(
        self, response: aiohttp.ClientResponse, path: str, max_size: int | None
    ) -> None:
        """A file's reply is bytes, and no longer than the read allows."""
        # The header itself, not aiohttp's default for a reply without one: a head that
        # only looks complete (a bare LF before the blank line) has none, and its "body"
        # is whatever the sandbox drips next.
        declared = response.headers.get("Content-Type", "")
        if response.content_type != "application/octet-stream" or not declared:
            raise DaemonProtocolError(
                f"reading {path}: a reply of type {clip(declared or 'none')}, not a file",
                sandbox=self._name,
            )
        length = response.content_length
        if max_size is not None and length is not None and length > max_size:
            raise FileTooLargeError(
                f"{path} is {length} bytes, more than max_size={max_size}",
                sandbox=self._name,
                path=path,
                size=length,
            )


def _typed_error(
    sandbox: str, status: int, code: str, message: str, payload: dict[str, Any]
) -> DaemonError | UnsupportedOperationError:
    if status == 401:
        return AuthenticationError(
            "the daemon refused the token", sandbox=sandbox, status=401, code=code
        )
    if status == 403 and not payload:
        return AuthenticationError(
            f"the platform's front end refused the request ({message})",
            sandbox=sandbox,
            status=403,
            code=code,
        )
    path = payload.get("path")
    path = _short(path, _MAX_MESSAGE) if path is not None else None
    if code in _OS_ERRORS and (code != wire.NOT_FOUND or "path" in payload):
        cls, number = _OS_ERRORS[code]
        return cls(
            message,
            sandbox=sandbox,
            errno=number,
            path=path,
            status=status,
            code=code,
        )
    if code == wire.FILE_TOO_LARGE:
        size = payload.get("size")
        return FileTooLargeError(
            message,
            sandbox=sandbox,
            path=str(path),
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        )
    if code == wire.RESOURCE_EXHAUSTED:
        return ResourceExhaustedError(
            message, sandbox=sandbox, limit=_short(payload.get("limit"), _MAX_CODE), status=status
        )
    if code == wire.USER_UNSUPPORTED:
        return UnsupportedOperationError(message, sandbox=sandbox, status=status, code=code)
    if code == wire.NO_DESKTOP:
        return UnsupportedOperationError(
            f"{message}: provision it with image={DESKTOP_IMAGE!r} (or an image built from it)",
            sandbox=sandbox,
            status=status,
            code=code,
        )
    if code == wire.DESKTOP_UNAVAILABLE:
        return DesktopUnavailableError(message, sandbox=sandbox, status=status, code=code)
    if code == wire.BAD_ACTION:
        return DesktopError(message, sandbox=sandbox, status=status, code=code)
    return DaemonError(f"{code}: {message}", sandbox=sandbox, status=status, code=code)


def _short(value: object, limit: int) -> str:
    """A daemon's word, as a string of at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _health_reply(reply: Any) -> dict[str, Any]:
    what = "the health reply"
    health = expect_object(reply, what)
    get_opt_str(health, "cwd", what, limit=4096)
    return health


def _object_reply(reply: Any) -> dict[str, Any]:
    return expect_object(reply, "the daemon's reply")


def _exec_header(
    command: Command,
    *,
    cwd: str | None,
    env: Mapping[str, str] | None,
    user: str | int | None,
    timeout: float | None,
    max_output: int | None,
    on_limit: str,
    background: bool,
) -> bytes:
    """The JSON line of ``POST /exec``, after checking what the daemon would refuse."""
    if timeout is not None and not (0 < timeout <= MAX_TIMEOUT and math.isfinite(timeout)):
        raise ValueError(f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds, got {timeout}")
    request: dict[str, Any] = {
        "cwd": cwd,
        "env": dict(env) if env is not None else None,
        "user": user,
        "timeout": timeout,
        "max_output": max_output,
        "on_limit": on_limit,
        "background": background,
    }
    if isinstance(command, str):
        request["command"] = command
    else:
        argv = list(command)
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise ValueError("a command sequence must be a non-empty sequence of str")
        request["argv"] = argv
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def _file_params(path: str, user: str | int | None) -> dict[str, str]:
    if user is None:
        return {"path": path}
    if isinstance(user, bool) or not isinstance(user, str | int) or user == "":
        raise ValueError("user must be a user name or uid")
    return {"path": path, "user": str(user)}
