"""Computer: the async client of the daemon running inside one sandbox."""

from __future__ import annotations

import base64
import io
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp

from .errors import (
    AuthenticationError,
    CommandTimeoutError,
    DaemonError,
    DaemonUnreachableError,
    RemoteFileNotFoundError,
)

__all__ = ["CommandResult", "Computer"]

# How much longer than the command's own timeout the client waits for the daemon's answer.
_REPLY_MARGIN = 30.0
_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class CommandResult:
    """What a command did. Output is kept as bytes; ``stdout``/``stderr`` decode it.

    ``stdout`` and ``stderr`` decode UTF-8 and replace invalid bytes with U+FFFD, so
    they never raise; use ``stdout_bytes``/``stderr_bytes`` for the exact bytes.
    """

    exit_code: int
    """Exit status; negative ``-N`` when the command was killed by signal ``N``."""
    stdout_bytes: bytes = field(repr=False)
    stderr_bytes: bytes = field(repr=False)
    duration: float
    """Seconds the command ran, measured inside the sandbox."""

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    def __repr__(self) -> str:
        return (
            f"CommandResult(exit_code={self.exit_code}, stdout={_preview(self.stdout)}, "
            f"stderr={_preview(self.stderr)}, duration={self.duration:.3f})"
        )


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class Computer:
    """A running sandbox. Obtained from :func:`provision` or :func:`provision_many`.

    All methods are coroutines, safe to call concurrently on one Computer or many.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        token: str,
        session: aiohttp.ClientSession,
        platform: str,
    ) -> None:
        self._name = name
        self._url = url.rstrip("/")
        # Not ``Authorization``: the Kubernetes API server's proxy strips it, and Cloud
        # Run's IAM reads it. The daemon accepts both.
        self._headers = {"X-CommandLab-Token": token}
        self._session = session
        self._platform = platform

    @property
    def name(self) -> str:
        """The sandbox name (container, task, group or service name on the backend)."""
        return self._name

    @property
    def url(self) -> str:
        """Base URL of the daemon."""
        return self._url

    @property
    def platform(self) -> str:
        return self._platform

    def __repr__(self) -> str:
        return f"Computer(name={self._name!r}, platform={self._platform!r}, url={self._url!r})"

    async def health(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the daemon for its version and uptime (an authenticated request)."""
        result: dict[str, Any] = await self._request(
            "GET", "/health", timeout=aiohttp.ClientTimeout(total=timeout)
        )
        return result

    async def run(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` with ``/bin/sh -c`` in the sandbox and return what it did.

        A sequence is quoted with :func:`shlex.join`. A non-zero exit status is returned,
        not raised. ``timeout`` is enforced inside the sandbox: at expiry the command's
        whole process group is killed and :class:`CommandTimeoutError` is raised with the
        output produced so far.
        """
        if not isinstance(command, str):
            command = shlex.join(command)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        body = {
            "command": command,
            "cwd": cwd,
            "env": dict(env) if env is not None else None,
            "stdin": base64.b64encode(stdin).decode() if stdin is not None else None,
            "timeout": timeout,
        }
        total = None if timeout is None else timeout + _REPLY_MARGIN
        reply = await self._request(
            "POST",
            "/run",
            json=body,
            timeout=aiohttp.ClientTimeout(total=total, sock_connect=_CONNECT_TIMEOUT),
        )
        result = CommandResult(
            exit_code=int(reply["exit_code"]),
            stdout_bytes=base64.b64decode(reply["stdout"]),
            stderr_bytes=base64.b64decode(reply["stderr"]),
            duration=float(reply["duration"]),
        )
        if reply.get("timed_out"):
            raise CommandTimeoutError(
                f"command timed out after {timeout}s; its process group was killed",
                sandbox=self._name,
                result=result,
            )
        return result

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        """Write ``data`` to the absolute ``path`` in the sandbox, creating parent folders.

        The file appears whole or not at all (written aside, then renamed).
        """
        if isinstance(data, str):
            data = data.encode()
        params = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")
        await self._request(
            "PUT",
            "/files",
            params=params,
            # A BytesIO shares the bytes (no copy) and is sent in chunks without blocking.
            data=io.BytesIO(data),
            timeout=aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT, sock_read=300),
        )

    async def read_file(self, path: str) -> bytes:
        """Read the file at the absolute ``path`` in the sandbox."""
        try:
            async with self._session.get(
                self._url + "/files",
                params={"path": path},
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT, sock_read=300),
            ) as response:
                if response.status != 200:
                    await self._raise_for(response, path=path)
                return await response.read()
        except aiohttp.ClientError as exc:
            raise DaemonUnreachableError(str(exc), sandbox=self._name) from exc

    async def _request(
        self, method: str, route: str, *, timeout: aiohttp.ClientTimeout, **kwargs: Any
    ) -> Any:
        try:
            async with self._session.request(
                method, self._url + route, headers=self._headers, timeout=timeout, **kwargs
            ) as response:
                if response.status != 200:
                    await self._raise_for(response, path=kwargs.get("params", {}).get("path"))
                return await response.json()
        except aiohttp.ClientError as exc:
            raise DaemonUnreachableError(
                f"{method} {route} failed: {exc!r}", sandbox=self._name
            ) from exc
        except TimeoutError as exc:
            raise DaemonUnreachableError(
                f"{method} {route}: no answer in time", sandbox=self._name
            ) from exc

    async def _raise_for(self, response: aiohttp.ClientResponse, *, path: str | None) -> NoReturn:
        status = response.status
        try:
            payload = json.loads(await response.read())
            code, message = payload.get("error", "error"), payload.get("message", "")
        except (ValueError, AttributeError, aiohttp.ClientError):
            code, message = "error", f"HTTP {status}"
        if status == 401:
            raise AuthenticationError(
                "the daemon refused the token", sandbox=self._name, status=401
            )
        if status == 404 and code == "not_found":
            raise RemoteFileNotFoundError(f"no such file: {path}", sandbox=self._name, status=404)
        raise DaemonError(f"{code}: {message}".rstrip(": "), sandbox=self._name, status=status)
