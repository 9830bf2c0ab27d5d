"""Client connections: a TLS socket usable from two threads, a connection and its
buffer, a request body as it arrives, and one request with its reply (``Exchange``)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time

from .errors import ClientGone, RequestError
from .http import HEX_DIGITS, Request, json_response, response_head
from .protocol import BAD_CONTENT_LENGTH, BAD_REQUEST, HEADER_DEADLINE, MAX_HEADER_BYTES, decimal

TYPE_CHECKING = False
if TYPE_CHECKING:
    import io
    import ssl
    from collections.abc import Callable
    from typing import Any

    from .server import Server

    Buffer = bytes | bytearray | memoryview

CHUNK = 256 * 1024  # what one read or write of a stream moves at most
IO_TIMEOUT = 300.0  # a client that stalls a transfer this long is dropped
LINGER_SECONDS = 2.0  # drain unread input this long before closing, so replies arrive


class TLSSocket:
    """A server-side TLS connection that behaves like the plain socket ``Conn`` holds.

    OpenSSL forbids using one connection from two threads at once, and a background
    command's stdin writer reads while the worker sends.  So the ``ssl.SSLSocket``
    underneath never blocks: every OpenSSL call runs under a lock, and waiting for the
    network happens outside it.  Timeouts behave like a socket's: 0 raises
    ``ssl.SSLWantReadError``/``SSLWantWriteError``, a number raises ``TimeoutError``
    after that long without progress.  ``shutdown`` only shuts the TCP side, so what the
    peer still sends can be read (and discarded) as before.
    """

    __slots__ = ("closed", "lock", "shut", "ssl", "timeout")

    def __init__(self, ssl_sock: ssl.SSLSocket) -> None:
        ssl_sock.settimeout(0.0)
        self.ssl = ssl_sock
        self.lock = threading.Lock()
        self.timeout: float | None = 0.0
        self.closed = False
        self.shut = False  # TCP write side shut: no close_notify any more

    def fileno(self) -> int:
        return self.ssl.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def pending(self) -> int:
        """Decrypted bytes held inside OpenSSL (the descriptor does not show them)."""
        with self.lock:
            return 0 if self.closed else self.ssl.pending()

    def attempt(self, op: Callable[..., Any], *args: Any) -> Any:
        """One non-blocking OpenSSL call under the lock."""
        with self.lock:
            if self.closed:
                raise OSError(errno.EBADF, "connection closed")
            return op(*args)

    def call(self, op: Callable[..., Any], *args: Any) -> Any:
        """``op`` retried until it completes, waiting (outside the lock) per the timeout."""
        import ssl

        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.attempt(op, *args)
            except ssl.SSLWantReadError:
                if timeout == 0:
                    raise
                flag = select.POLLIN
            except ssl.SSLWantWriteError:
                if timeout == 0:
                    raise
                flag = select.POLLOUT
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            poller = select.poll()
            poller.register(self.fileno(), flag)
            poller.poll(min(left, 1.0) * 1000)  # slices: notice a close by another thread

    def do_handshake(self) -> None:
        self.call(self.ssl.do_handshake)

    def recv(self, size: int) -> bytes:
        data: bytes = self.call(self.ssl.recv, size)
        return data

    def recv_nowait(self, size: int) -> bytes:
        """``recv`` that never waits, whatever the timeout (raises ``SSLWantReadError``)."""
        data: bytes = self.attempt(self.ssl.recv, size)
        return data

    def send(self, data: Buffer) -> int:
        sent: int = self.call(self.ssl.send, data)
        return sent

    def sendall(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view)  # a retry after SSLWantWrite passes the same bytes
            view = view[sent:]

    def sendfile(self, file: io.FileIO, offset: int = 0, count: int | None = None) -> int:
        """Like ``socket.sendfile``, by reading and sending (the kernel cannot encrypt)."""
        total = 0
        while count is None or total < count:
            size = CHUNK if count is None else min(CHUNK, count - total)
            data = os.pread(file.fileno(), size, offset + total)
            if not data:
                break
            self.sendall(data)
            total += len(data)
        return total

    def shutdown(self, how: int) -> None:
        with self.lock:
            # SSLSocket.shutdown would also drop its TLS state, and later reads would
            # then return raw records: shut the TCP side only.
            socket.socket.shutdown(self.ssl, how)
            self.shut = True

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if not self.shut:  # best effort close_notify, without waiting for the peer's
                with contextlib.suppress(OSError, ValueError):
                    self.ssl.unwrap()
            self.ssl.close()


class Conn:
    """One client connection: owned by the loop between requests, by one worker during one."""

    __slots__ = (
        "authenticated",
        "buf",
        "charged",
        "close_after",
        "deadline",
        "draining",
        "handshaking",
        "out",
        "peer",
        "sock",
        "tls",
    )

    def __init__(self, sock: socket.socket | TLSSocket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()  # received, not yet consumed
        self.deadline = time.monotonic() + HEADER_DEADLINE
        self.draining = False  # replied and half-closed: discard input until EOF
        self.authenticated = False
        self.charged = 0  # bytes of ``buf`` counted against the pre-auth budget
        self.out = b""  # a reply the loop could not send at once (the peer is not reading)
        self.close_after = False  # close once ``out`` is sent
        self.tls = isinstance(sock, TLSSocket)
        self.handshaking = self.tls  # TLS: the handshake is not done yet

    def pending(self) -> int:
        """TLS: bytes decrypted but not read yet (selectors cannot see them); else 0."""
        return self.sock.pending() if isinstance(self.sock, TLSSocket) else 0

    def receive_nowait(self) -> str:
        """TLS: receive what is there into ``buf`` without waiting: data, idle or gone."""
        import ssl

        assert isinstance(self.sock, TLSSocket)
        try:
            data = self.sock.recv_nowait(CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return "idle"
        except (OSError, ValueError):
            return "gone"
        if not data:
            return "gone"
        self.buf += data
        return "data"

    def fill(self) -> None:
        """Receive more bytes into ``buf`` (blocking, with the socket's timeout)."""
        try:
            data = self.sock.recv(CHUNK)
        except (OSError, ValueError) as exc:
            raise ClientGone(f"receive failed: {exc!r}") from None
        if not data:
            raise ClientGone("connection closed by the client")
        self.buf += data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as exc:
            raise ClientGone(f"send failed: {exc!r}") from None

    def send_parts(self, parts: list[Buffer]) -> None:
        """Send several buffers in order with scatter-gather writes (no joining copy)."""
        sock = self.sock
        if isinstance(sock, TLSSocket):  # no sendmsg: one write makes full TLS records
            self.send(b"".join(parts))
            return
        views = [memoryview(part) for part in parts if len(part)]
        try:
            while views:
                sent = sock.sendmsg(views[:512])
                while sent:
                    if sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    else:
                        views[0] = views[0][sent:]
                        sent = 0
        except (OSError, ValueError) as exc:
            raise ClientGone(f"send failed: {exc!r}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def linger_close(self) -> None:
        """Half-close, discard input for a while (so the peer reads our reply), close."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                if not self.sock.recv(CHUNK):
                    break
        except OSError:
            pass
        self.close()


class Body:
    """A request body, decoded from ``Content-Length`` or chunked framing, in pieces."""

    def __init__(self, conn: Conn, request: Request) -> None:
        self.conn = conn
        self.chunked = False
        self.remaining = 0  # Content-Length bytes left, or bytes left in the current chunk
        self.state = "data"  # chunked: size, data, crlf, trailer, done
        encodings = request.headers.get("transfer-encoding")
        lengths = request.headers.get("content-length")
        if encodings:
            if [e.strip().lower() for e in ",".join(encodings).split(",")] != [
                "chunked"
            ] or lengths:
                raise RequestError(BAD_REQUEST, "only 'Transfer-Encoding: chunked' is supported")
            self.chunked = True
            self.state = "size"
        elif lengths:
            values = {v.strip() for v in lengths}
            value = values.pop()
            length = decimal(value)
            if values or length is None:
                raise RequestError(BAD_CONTENT_LENGTH, "invalid Content-Length header")
            self.remaining = length
        self.done = not self.chunked and self.remaining == 0
        self.expect_continue = (request.header("expect") or "").lower() == "100-continue"

    def _continue(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def take(self, limit: int) -> bytes:
        """Decode up to ``limit`` body bytes from what was already received (may be b"")."""
        buf = self.conn.buf
        while not self.done:
            if self.state == "data":
                n = min(limit, self.remaining, len(buf))
                if n == 0:
                    return b""
                data = bytes(buf[:n])
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    if self.chunked:
                        self.state = "crlf"
                    else:
                        self.done = True
                return data
            if self.state == "crlf":
                if len(buf) < 2:
                    return b""
                if buf[:2] != b"\r\n":
                    raise RequestError(BAD_REQUEST, "malformed chunked body")
                del buf[:2]
                self.state = "size"
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > 4096:
                    raise RequestError(BAD_REQUEST, "malformed chunked body")
                return b""
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if self.state == "trailer":
                if not line:
                    self.done = True
                continue
            size_text = line.split(b";", 1)[0].strip()
            digits = set(size_text.decode("latin-1"))
            if not size_text or len(size_text) > 15 or not digits <= HEX_DIGITS:
                raise RequestError(BAD_REQUEST, "malformed chunk size")
            self.remaining = int(size_text, 16)
            self.state = "data" if self.remaining else "trailer"
        return b""

    def read(self, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` bytes of the body, blocking; b"" at its end."""
        self._continue()
        while True:
            data = self.take(limit)
            if data or self.done:
                return data
            self.conn.fill()

    def discard(self, budget: float) -> bool:
        """Read and drop the rest of the body for up to ``budget`` s; whether it ended."""
        deadline = time.monotonic() + budget
        try:
            while not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.conn.sock.settimeout(left)
                if not self.take(CHUNK):
                    if self.done:
                        break
                    self.conn.fill()
        except (ClientGone, RequestError):
            return False
        finally:
            with contextlib.suppress(OSError):
                self.conn.sock.settimeout(IO_TIMEOUT)
        return True


class Exchange:
    """One authenticated request handled by a worker, and its reply."""

    def __init__(self, server: Server, conn: Conn, request: Request) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.body = Body(conn, request)
        self.started = False  # response headers sent
        self.close = not request.keep_alive
        self.status = 0

    def send_json(
        self, status: int, payload: object, extra: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.started = True
        self.settle()
        data = json_response(status, payload, close=self.close, extra=extra)
        if self.request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        self.conn.send(data)

    def settle(self) -> None:
        """Before replying: finish reading a small unread body, or plan to close."""
        if not self.body.done and not self.body.expect_continue and self.body.discard(0.5):
            return
        if not self.body.done:
            self.close = True

    def begin(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.started = True
        if self.close:
            headers = [*headers, ("Connection", "close")]
        self.conn.send(response_head(status, headers))

    def begin_chunked(self, content_type: str) -> None:
        """Start a streamed reply: chunked, or for HTTP/1.0 ended by closing."""
        if self.request.version == "HTTP/1.0":
            self.close = True
            self.begin(200, [("Content-Type", content_type)])
        else:
            self.begin(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])

    def send_chunk(self, parts: list[Buffer]) -> None:
        """Send ``parts`` as one HTTP chunk, without copying them together."""
        size = sum(len(part) for part in parts)
        if not size:
            return
        if self.request.version == "HTTP/1.0":
            self.conn.send_parts(parts)
        else:
            self.conn.send_parts([b"%x\r\n" % size, *parts, b"\r\n"])

    def end_chunked(self) -> None:
        if self.request.version != "HTTP/1.0":
            self.conn.send(b"0\r\n\r\n")


def peek_client(conn: Conn) -> str:
    """``gone`` when the peer closed its end, ``data`` when it sent more, else ``idle``."""
    if conn.tls:  # no MSG_PEEK through TLS: receive into buf, which readers consume first
        return "data" if len(conn.buf) >= MAX_HEADER_BYTES else conn.receive_nowait()
    assert isinstance(conn.sock, socket.socket)
    try:
        conn.sock.setblocking(False)
        return "data" if conn.sock.recv(1, socket.MSG_PEEK) else "gone"
    except (BlockingIOError, InterruptedError):
        return "idle"
    except OSError:
        return "gone"
    finally:
        with contextlib.suppress(OSError):
            conn.sock.settimeout(IO_TIMEOUT)
