"""One error tree for everything commandlab_async raises.

```
CommandLabError
├── SpecError                     invalid spec, raised before anything is created (ValueError)
├── BackendUnavailableError       the platform cannot be used from this process
│   ├── UnsupportedPlatformError  no driver is written for the platform yet
│   └── MissingExtraError         the platform's optional extra is not installed (ImportError)
├── UnsupportedOperationError     this platform or sandbox cannot do that (yet)
├── BackendError                  the backend's API refused or failed a call (any call)
│   ├── BackendTimeoutError       it did not answer in time (TimeoutError)
│   └── ImageBuildError           the engine could not build an image (the build's last lines)
├── ProvisionError                a sandbox could not be brought up; it has been deleted
│   ├── SandboxExitedError        the sandbox stopped before its daemon became ready
│   └── ReadyTimeoutError         readiness deadline passed; names the last state (TimeoutError)
├── FleetError                    sandboxes of a fleet failed, to come up or to be deleted
│                                 (an ExceptionGroup: one error above per sandbox)
├── CleanupError                  a sandbox could not be deleted (names it: it may still exist)
├── SandboxNotFoundError          no sandbox of that name is known here (LookupError)
└── DaemonError                   the daemon inside a sandbox refused or failed a request
    ├── DaemonUnreachableError    no connection to the daemon
    │   ├── DaemonUnresponsiveError   it stopped answering (frozen, starved) (TimeoutError)
    │   ├── DaemonProtocolError       its reply broke the protocol (malformed, too big, too slow)
    │   └── SandboxDeletedError       the Computer's sandbox was deleted (its block ended)
    ├── AuthenticationError       the daemon refused the token
    ├── CommandTimeoutError       a command ran past its timeout; its processes were killed
    ├── OutputLimitExceededError  a command printed more than allowed and was killed
    ├── ResourceExhaustedError    the sandbox hit a limit (pids, memory, processes)
    ├── FileTooLargeError         a file is bigger than the size limit of the read
    └── RemoteOSError             a path or program failed in the sandbox (OSError)
        ├── RemoteFileNotFoundError      (FileNotFoundError)
        ├── RemotePermissionError        (PermissionError)
        ├── RemoteIsADirectoryError      (IsADirectoryError)
        ├── RemoteNotADirectoryError     (NotADirectoryError)
        └── RemoteProcessLookupError     no such process id (ProcessLookupError)
```

A create the backend refuses while a sandbox is brought up is a ``BackendError`` naming
the sandbox (it has been deleted, as after any failed bring-up); to catch every way a
bring-up can fail, catch ``(ProvisionError, BackendError)``.
```

Every ``DaemonError`` has ``code``: the daemon's stable error code (``not_found``,
``permission_denied``...) when it answered one.

Errors that wrap another carry it as ``__cause__``. No message ever contains a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._client.processes import CommandResult

_LOG_LINES = 10  # of a sandbox's output, shown in SandboxExitedError's message

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CleanupError",
    "CommandLabError",
    "CommandTimeoutError",
    "DaemonError",
    "DaemonProtocolError",
    "DaemonUnreachableError",
    "DaemonUnresponsiveError",
    "FileTooLargeError",
    "FleetError",
    "ImageBuildError",
    "MissingExtraError",
    "OutputLimitExceededError",
    "ProvisionError",
    "ReadyTimeoutError",
    "RemoteFileNotFoundError",
    "RemoteIsADirectoryError",
    "RemoteNotADirectoryError",
    "RemoteOSError",
    "RemotePermissionError",
    "RemoteProcessLookupError",
    "ResourceExhaustedError",
    "SandboxDeletedError",
    "SandboxExitedError",
    "SandboxNotFoundError",
    "SpecError",
    "UnsupportedOperationError",
    "UnsupportedPlatformError",
]


class CommandLabError(Exception):
    """Base class of every error this library raises."""


class SpecError(CommandLabError, ValueError):
    """A spec is invalid. Raised at construction, before any backend call.

    ``field`` names the offending field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class BackendUnavailableError(CommandLabError):
    """The chosen platform cannot be used from this process."""


class UnsupportedPlatformError(BackendUnavailableError):
    """No driver exists yet for the platform the spec names."""

    def __init__(self, platform: str) -> None:
        super().__init__(
            f"platform {str(platform)!r} has no driver in this version of commandlab-async"
        )
        self.platform = platform


class MissingExtraError(BackendUnavailableError, ImportError):
    """The platform needs optional extras that are not installed.

    ``extras`` names them all (EKS, for instance, needs ``kubernetes`` and ``aws``).
    """

    def __init__(self, platform: str, extras: tuple[str, ...]) -> None:
        names, plural = ",".join(extras), "s" if len(extras) > 1 else ""
        super().__init__(
            f"platform {str(platform)!r} needs the {names!r} extra{plural}: "
            f"pip install 'commandlab-async[{names}]'"
        )
        self.platform = platform
        self.extras = extras


class ProvisionError(CommandLabError):
    """A sandbox could not be brought up. It has been (or is being) deleted.

    ``sandbox`` is None when the error concerns no single sandbox (a closed warm pool).
    """

    def __init__(self, message: str, *, sandbox: str | None, platform: str) -> None:
        where = f"{platform} sandbox {sandbox}" if sandbox is not None else str(platform)
        super().__init__(f"{where}: {message}")
        self.sandbox = sandbox
        self.platform = platform


class UnsupportedOperationError(CommandLabError):
    """This platform or sandbox cannot do what was asked: read logs where the driver
    cannot, switch users in a sandbox without ``run_as_root``...

    ``sandbox`` names the sandbox; ``status`` and ``code`` are the daemon's HTTP status and
    error code when it was the daemon that said so (``user_unsupported``), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox: str,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"sandbox {sandbox}: {message}")
        self.sandbox = sandbox
        self.status = status
        self.code = code


class BackendError(CommandLabError):
    """The backend's API refused or failed a call: a create, a listing, a delete...

    ``sandbox`` names the sandbox the call was about, None for calls about none (listing
    a target). ``transient`` tells whether a retry could succeed; ``code`` is the
    backend's own status or error code (an HTTP status, ``ThrottlingException``...) when
    it answered.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox: str | None,
        platform: str,
        transient: bool = False,
        code: int | str | None = None,
    ) -> None:
        where = f"{platform} sandbox {sandbox}" if sandbox is not None else str(platform)
        super().__init__(f"{where}: {message}")
        self.sandbox = sandbox
        self.platform = platform
        self.transient = transient
        self.code = code


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time: one call (``Driver.call_timeout``) or a whole
    sweep (``gc(timeout=...)``). It may or may not have acted on the request."""

    def __init__(self, message: str, *, sandbox: str | None, platform: str) -> None:
        super().__init__(
            message, sandbox=sandbox, platform=platform, transient=True, code="timeout"
        )


class ImageBuildError(BackendError):
    """The Docker Engine could not build an image (``build_image``, ``commandlab image
    build``, or the automatic build of the missing default image): a base it cannot pull,
    a step that failed, no engine. ``image`` names the image being built; ``log`` holds
    the build's last lines, which the message shows too."""

    def __init__(self, message: str, *, image: str, log: Sequence[str] = ()) -> None:
        shown = "".join(f"\n  | {line}" for line in log)
        super().__init__(
            message + (f"; the build's last lines:{shown}" if shown else ""),
            sandbox=None,
            platform="docker",
            code="image_build",
        )
        self.image = image
        self.log = tuple(log)


class SandboxExitedError(ProvisionError):
    """The sandbox stopped before its daemon answered a health request.

    ``state`` is the backend's word for it; ``exit_code``, ``reason`` (``OOM killed``,
    the engine's error...) and ``logs`` (the last lines it printed) are filled in where
    the backend can tell them, and the message then shows them.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox: str,
        platform: str,
        state: str,
        exit_code: int | None = None,
        reason: str | None = None,
        logs: str = "",
    ) -> None:
        if exit_code == 0:  # a daemon serves until deleted: whatever ended was not one
            message += (
                "; its image's command ended: the image's command must start the commandlab"
                " daemon (images built by `commandlab image build` do)"
            )
        if logs:
            lines = logs.rstrip("\n").splitlines()[-_LOG_LINES:]
            message += "; its last output:\n" + "\n".join(f"    {line}" for line in lines)
        super().__init__(message, sandbox=sandbox, platform=platform)
        self.state = state
        self.exit_code = exit_code
        self.reason = reason
        self.logs = logs


class ReadyTimeoutError(ProvisionError, TimeoutError):
    """The sandbox did not become ready before its deadline.

    ``state`` is the last state observed (backend state and daemon probe result).
    """

    def __init__(self, *, sandbox: str, platform: str, timeout: float, state: str) -> None:
        super().__init__(
            f"not ready after {timeout:g}s (last state: {state})",
            sandbox=sandbox,
            platform=platform,
        )
        self.timeout = timeout
        self.state = state


class FleetError(CommandLabError, ExceptionGroup[Exception]):
    """Sandboxes of a fleet failed: to come up, or to be deleted when the fleet closed.

    The group holds one error per failed sandbox, each naming it. When members failed to
    come up, every member was deleted (a member whose delete failed too is reported with
    a :class:`CleanupError` beside them); when the group is of ``CleanupError`` only, the
    fleet's work was done and those sandboxes may still exist (the reaper will find them).
    """

    def __new__(cls, message: str, errors: Sequence[Exception]) -> FleetError:
        return super().__new__(cls, message, errors)


class CleanupError(CommandLabError):
    """A sandbox could not be deleted; it may still exist (the reaper will find it)."""

    def __init__(self, message: str, *, sandbox: str, platform: str) -> None:
        super().__init__(f"{platform} sandbox {sandbox}: {message}")
        self.sandbox = sandbox
        self.platform = platform


class SandboxNotFoundError(CommandLabError, LookupError):
    """No sandbox of that name is known: not on the backend, or, to reach one from another
    process, no handle of it is saved here (only kept and detached sandboxes have one)."""

    def __init__(self, message: str, *, sandbox: str) -> None:
        super().__init__(f"sandbox {sandbox}: {message}")
        self.sandbox = sandbox


class DaemonError(CommandLabError):
    """The daemon inside a sandbox refused or failed a request.

    ``status`` is the HTTP status and ``code`` the daemon's error code, when it answered.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox: str,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"sandbox {sandbox}: {message}")
        self.sandbox = sandbox
        self.status = status
        self.code = code


class DesktopError(DaemonError):
    """The sandbox's desktop could not do what was asked (the X server refused it)."""


class DesktopUnavailableError(DesktopError):
    """The sandbox's desktop is not running: its X server did not start, or died.

    Commands and files still work, and the sandbox is deleted as usual.
    """


class InvalidActionError(CommandLabError, ValueError):
    """A desktop action that cannot run, found before anything was sent: an unknown key
    (the message suggests close names), a point off the screen, an empty drag...

    ``index`` is the action's place in its batch (None for a single call).
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DaemonUnreachableError(DaemonError):
    """No connection could be made to the daemon (or it dropped the connection)."""


class DaemonUnresponsiveError(DaemonUnreachableError, TimeoutError):
    """The daemon stopped answering: a call waited on it in silence and it did not answer
    a health check either (frozen, starved, or cut off). The call was abandoned; this is
    raised within ``LIVENESS_TIMEOUT`` seconds, whatever timeout the call had."""


class DaemonProtocolError(DaemonUnreachableError):
    """The daemon's reply broke the protocol: headers, a body, a frame or a JSON reply
    too big, malformed or of the wrong shape, or a reply head that would not end. Not the
    daemon this library runs (code in the sandbox can serve another on its socket), or a
    broken one: the connection is dropped, and the message quotes at most a short,
    truncated piece of what came."""


class SandboxDeletedError(DaemonUnreachableError):
    """The :class:`Computer`'s sandbox was deleted (its ``provision`` block ended): a
    Computer works only inside the block that made it."""


class AuthenticationError(DaemonError):
    """The daemon refused the token (HTTP 401), or a front end on the way refused the
    request (HTTP 403 not from the daemon, e.g. Cloud Run's IAM invoker check)."""


class CommandTimeoutError(DaemonError, TimeoutError):
    """A command ran past its timeout. Its whole process group was killed in the sandbox.

    ``result`` holds what the command printed before it was killed.
    """

    def __init__(self, message: str, *, sandbox: str, result: CommandResult) -> None:
        super().__init__(message, sandbox=sandbox)
        self.result = result


class OutputLimitExceededError(DaemonError):
    """A command printed more than ``max_output`` and was killed (``on_output_limit="raise"``).

    ``result`` holds the output kept (the head and tail of each stream).
    """

    def __init__(self, message: str, *, sandbox: str, result: CommandResult) -> None:
        super().__init__(message, sandbox=sandbox, code="output_limit_exceeded")
        self.result = result


class ResourceExhaustedError(DaemonError):
    """The sandbox hit a limit. ``limit`` says which: ``pids``, ``memory``, ``processes``..."""

    def __init__(self, message: str, *, sandbox: str, limit: str, status: int | None = None):
        super().__init__(message, sandbox=sandbox, status=status, code="resource_exhausted")
        self.limit = limit


class FileTooLargeError(DaemonError):
    """The file is bigger than the read's ``max_size``; nothing was transferred.

    ``size`` is the file's size in bytes (None when the file does not report one).
    """

    def __init__(self, message: str, *, sandbox: str, path: str, size: int | None) -> None:
        super().__init__(message, sandbox=sandbox, status=413, code="file_too_large")
        self.path = path
        self.size = size


class RemoteOSError(DaemonError, OSError):
    """A path or a program failed inside the sandbox; also the matching builtin ``OSError``.

    ``errno`` is the POSIX error number, ``filename`` (and ``path``) the path concerned,
    ``code`` the daemon's stable code. ``except FileNotFoundError`` catches a missing file
    in the sandbox just as a local one.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox: str,
        errno: int,
        path: str | None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, sandbox=sandbox, status=status, code=code)
        self._message = f"sandbox {sandbox}: {message}"
        self.errno = errno
        self.strerror = message
        self.filename = path
        self.path = path

    def __str__(self) -> str:
        return self._message


class RemoteFileNotFoundError(RemoteOSError, FileNotFoundError):
    """No such file, directory or program in the sandbox."""


class RemotePermissionError(RemoteOSError, PermissionError):
    """The sandbox refused access to the path (or the program)."""


class RemoteIsADirectoryError(RemoteOSError, IsADirectoryError):
    """The path is a directory where a file was needed."""


class RemoteNotADirectoryError(RemoteOSError, NotADirectoryError):
    """A part of the path is not a directory."""


class RemoteProcessLookupError(RemoteOSError, ProcessLookupError):
    """No process with that id is known to the daemon."""
