"""Files as another user: a short-lived agent process running as them does the path work.

A root daemon must not open paths on a user's behalf (the kernel would check root's
permissions, and a path can be swapped under a check).  So for a request with ``user=``
the daemon (``FileAgent``) starts ``python3 -I -S`` as that user, which imports this
module from where the daemon's package is (the zipapp, or the source folder) and runs
``serve``: it opens the file and passes the descriptor back over a socket pair; for a
write it also puts the new content in place once the daemon has copied the body in.

The agent is paid for on every such request, so it imports only this module, ``fileops``
(the file work), ``errors`` and ``protocol``, and of the standard library little more
than ``os``: ``_socket`` rather than ``socket`` (which imports ``selectors`` and
``enum``), and its messages are NUL-separated fields rather than JSON (``json`` imports
``re``).  Python compiles nothing either: the zipapp holds the modules' bytecode.

Messages (one SOCK_SEQPACKET datagram each; fields UTF-8, ``surrogatepass``):
the request ``read NUL <path> NUL <max_size or "">`` or ``write NUL <path> NUL <mode or
""> NUL <umask>``; the reply ``ok [NUL <size>]`` with the descriptor, or ``error NUL
<code> NUL <message>`` and for each extra field ``NUL <name> NUL <s|i|n><value>`` (a
string, an integer, null).  For a write, the daemon then sends ``commit`` (or closes the
socket: abort) and the agent answers ``ok`` once the file is in place, or an error.
"""

from __future__ import annotations

import _socket  # not socket: see above
import os
import sys

from .errors import RequestError
from .fileops import abort_write, finish_write, open_for_read, open_for_write
from .protocol import ERROR_STATUS, IO_ERROR, decimal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .users import RunAs

AGENT_TIMEOUT = 30.0  # seconds the agent may take to start and answer
MAX_AGENT_MESSAGE = 256 * 1024  # a reply quotes the path (at most a request head) twice
COMMIT = b"commit"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Where the agent imports the package from, and its name there: the zipapp and
# "commandlab_daemon" in an image; the folder holding this package and "daemon" when run
# from source (so that the client package around it is never imported).
AGENT_PATH = os.path.dirname(_PACKAGE_DIR)
AGENT_PACKAGE = os.path.basename(_PACKAGE_DIR)
# Appended to sys.path, not prepended: nothing there may shadow the standard library.
# Once served, the agent exits at once: an interpreter's orderly shutdown costs more than
# the rest of its work (it holds nothing to flush: its I/O is on descriptors).
AGENT_BOOT = (
    "import sys; sys.path.append(sys.argv[1]); "
    "agent = __import__(sys.argv[2] + '.file_agent', fromlist=['serve']); "
    "agent.serve(int(sys.argv[3])); agent.os._exit(0)"
)


def agent_argv(fd: int) -> list[str]:
    """The command line of an agent that serves the socket ``fd`` it inherits."""
    return [sys.executable, "-I", "-S", "-c", AGENT_BOOT, AGENT_PATH, AGENT_PACKAGE, str(fd)]


# ---------------------------------------------------------------- messages


def encode(*fields: str) -> bytes:
    return b"\0".join(field.encode("utf-8", "surrogatepass") for field in fields)


def decode(data: bytes) -> list[str]:
    return [field.decode("utf-8", "surrogatepass") for field in data.split(b"\0")]


def encode_error(exc: RequestError) -> bytes:
    fields = ["error", exc.code, exc.message]
    for name, value in exc.extra.items():
        if isinstance(value, str):
            fields += [name, "s" + value]
        elif isinstance(value, int) and not isinstance(value, bool):
            fields += [name, "i" + str(value)]
        elif value is None:
            fields += [name, "n"]
    return encode(*fields)


def decode_error(fields: list[str]) -> RequestError:
    """The agent's ``error`` reply as the RequestError it stands for."""
    if len(fields) % 2 == 0 or fields[1] not in ERROR_STATUS:
        return RequestError(IO_ERROR, "the file agent sent a malformed reply")
    extra: dict[str, Any] = {}
    for index in range(3, len(fields), 2):
        name, value = fields[index], fields[index + 1]
        kind, text = value[:1], value[1:]
        if kind == "s":
            extra[name] = text
        elif kind == "i" and decimal(text) is not None:
            extra[name] = decimal(text)
        elif value == "n":
            extra[name] = None
        else:
            return RequestError(IO_ERROR, "the file agent sent a malformed reply")
    return RequestError(fields[1], fields[2], **extra)


def send(sock: _socket.socket, data: bytes, fd: int | None = None) -> None:
    """Send one message, and with it the descriptor ``fd``."""
    if fd is None:
        sock.send(data)
        return
    rights = fd.to_bytes(4, sys.byteorder, signed=True)  # one C int
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def receive(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """One message, and the descriptors that came with it (close-on-exec)."""
    flags = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)
    data, ancillary, _, _ = sock.recvmsg(MAX_AGENT_MESSAGE, _socket.CMSG_SPACE(4), flags)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % 4
            fds += [
                int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, whole, 4)
            ]
    return data, fds


# ---------------------------------------------------------------- the daemon's side


class FileAgent:
    """The daemon's side of one file operation done by an agent running as ``user``.

    ``fields`` is the request (see the module's docstring), ``read`` or ``write`` first.
    """

    def __init__(self, user: RunAs, *fields: str) -> None:
        import subprocess  # lazy: the agent's side never needs it

        from .errors import spawn_failure

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                agent_argv(theirs.fileno()),
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                user=user.uid,
                group=user.gid,
                extra_groups=user.groups,
            )
        except OSError as exc:
            ours.close()
            raise spawn_failure(exc, sys.executable, "/") from None
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(AGENT_TIMEOUT)
        try:
            self.sock.send(encode(*fields))
        except OSError as exc:  # it died at once: reap it, then say so
            self.__exit__()
            raise RequestError(IO_ERROR, f"the file agent did not start: {exc}") from None

    def receive(self) -> tuple[list[str], int]:
        """The fields of the agent's ``ok`` and the descriptor it opened; its error raised."""
        fields, fds = self._reply()
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RequestError(IO_ERROR, "the file agent sent no descriptor")
        return fields, fds[0]

    def commit(self) -> None:
        """Tell the agent the content is written, and wait until it is in place."""
        try:
            self.sock.send(COMMIT)
        except OSError as exc:
            raise RequestError(IO_ERROR, f"the file agent went away: {exc}") from None
        _, fds = self._reply()
        for fd in fds:
            os.close(fd)

    def _reply(self) -> tuple[list[str], list[int]]:
        try:
            data, fds = receive(self.sock)
        except OSError as exc:
            raise RequestError(IO_ERROR, f"the file agent did not answer: {exc}") from None
        try:
            fields = decode(data)
        except UnicodeDecodeError:
            fields = []
        if data and fields[:1] == ["ok"]:
            return fields[1:], fds
        for fd in fds:
            os.close(fd)
        if not data:
            raise RequestError(IO_ERROR, "the file agent exited without answering")
        if fields[:1] != ["error"] or len(fields) < 3:
            raise RequestError(IO_ERROR, "the file agent sent a malformed reply")
        raise decode_error(fields)

    def __enter__(self) -> FileAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()  # an agent still waiting takes this as "abort"
        try:
            self.popen.wait(AGENT_TIMEOUT)
        except Exception:
            self.popen.kill()
            self.popen.wait()


def read_as(user: RunAs, path: str, max_size: int | None) -> tuple[int, int]:
    """A descriptor of the regular file ``path`` opened by ``user``, and its size."""
    with FileAgent(user, "read", path, "" if max_size is None else str(max_size)) as agent:
        fields, fd = agent.receive()
    size = decimal(fields[0]) if len(fields) == 1 else None
    if size is None:
        os.close(fd)
        raise RequestError(IO_ERROR, "the file agent sent a malformed reply")
    return fd, size


# ---------------------------------------------------------------- the agent's side


def serve(fd: int) -> None:
    """The agent (``AGENT_BOOT``), running as the user: one request on the socket ``fd``."""
    sock = _socket.socket(fileno=fd)
    fields = decode(sock.recv(MAX_AGENT_MESSAGE))
    if len(fields) < 3:  # the daemon went away before it asked
        return
    try:
        if fields[0] == "read":
            opened, size = open_for_read(fields[1], decimal(fields[2]))
            send(sock, encode("ok", str(size)), opened)
            return
        upload = open_for_write(fields[1])
        send(sock, b"ok", upload.fd)
        if sock.recv(16) != COMMIT:  # the daemon gave up: the body never came whole
            abort_write(upload)
            return
        finish_write(upload, decimal(fields[2]), int(fields[3]))
        sock.send(b"ok")
    except RequestError as exc:
        sock.send(encode_error(exc))
