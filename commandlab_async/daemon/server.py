"""The server: one loop thread for connections, request heads and ``/health``, and a
bounded pool of worker threads for everything else.

The loop accepts connections and reads request heads without blocking, within
``HEADER_DEADLINE`` and ``MAX_HEADER_BYTES``, and authenticates them there: an
unauthenticated client costs one socket and never a thread.  What unauthenticated
clients can make it hold is bounded by the sandbox's memory limit (``memory_limit``),
however many connect: at most a sixteenth of it (1 to 16 MiB) in request heads not yet
authenticated (past that the largest are dropped), and at most ``MAX_CONNECTIONS``
connections, fewer in a small sandbox (past that the oldest unauthenticated one is
dropped).  A client that pipelines requests faster than it reads the replies is not read
from until it does.  An authenticated request (except ``/health``) goes to one of at
most ``MAX_WORKERS`` threads; more wait in a queue.  A request no worker thread can be
started for (the sandbox is out of pids or memory) waits ``STARVED_GRACE`` seconds for a
busy one, then gets a 503.  Idle workers exit after ``WORKER_IDLE`` seconds, giving their
pids back; the TTL is kept by the loop (no timer thread).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
import traceback
from collections import deque

from .connections import CHUNK, IO_TIMEOUT, LINGER_SECONDS, Conn, Exchange, TLSSocket
from .errors import ClientGone, RequestError
from .http import (
    Request,
    authenticate,
    error_payload,
    head_end,
    json_response,
    log,
    parse_head,
    printable,
)
from .protocol import (
    DAEMON_VERSION,
    HEADER_DEADLINE,
    HEADERS_TOO_LARGE,
    HEALTH_PATH,
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    LIMIT_MEMORY,
    LIMIT_PIDS,
    MAX_BACKGROUND,
    MAX_HEADER_BYTES,
    MAX_TIMEOUT,
    RESOURCE_EXHAUSTED,
    UNAUTHORIZED,
)
from .routes import find_endpoint

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping
    from typing import Any

    from .config import Config
    from .desktop import Desktop
    from .processes import Registry

MAX_CONNECTIONS = 4096
# What one open connection may cost the daemon beyond what it buffers (objects, kernel
# socket, TLS state): the sandbox's memory limit divided by this caps the connections.
CONNECTION_COST = 16 * 1024
TLS_CONNECTION_COST = 64 * 1024
MIN_CONNECTIONS = 64
# Request heads not yet authenticated may buffer this share of the sandbox's memory in
# all (between the two bounds); past it the largest are dropped.
PREAUTH_SHARE = 16
PREAUTH_MIN = 1024 * 1024
PREAUTH_MAX = 16 * 1024 * 1024
MAX_WORKERS = 128
WORKER_IDLE = 10.0  # an idle worker thread exits after this (it holds one of the pids)
STARVED_GRACE = 2.0  # a request no thread can serve waits this long, then gets a 503


def tls_failure(exc: BaseException) -> str | None:
    """A terse reason for a failed handshake; None for a peer that merely went away."""
    import ssl

    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return None
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return printable(str(exc.reason), 80)
    if isinstance(exc, OSError) and exc.strerror:
        return printable(exc.strerror, 80)
    return type(exc).__name__


def memory_limit() -> int:
    """The sandbox's memory limit in bytes (its cgroup's, v2 or v1), else the machine's."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        physical = 1 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                text = file.read(64).strip()
        except OSError:
            continue
        if text.isdigit():
            return max(1, min(int(text), physical))
        break  # "max": no limit
    return max(1, physical)


def would_block(exc: OSError) -> bool:
    """Whether a non-blocking send or receive only has to wait (plain or TLS)."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return True
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


def listen(config: Config) -> socket.socket:
    """The listening socket: TCP on host and port, or the Unix socket at ``socket_path``."""
    path = config.socket_path
    if path is None:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.host, config.port))
        listener.listen(1024)
    else:
        # Bound under another name and renamed into place once it listens: the client
        # moves the socket out of the sandbox's reach the moment it appears, so it must
        # appear ready (see the client's socket_dirs.py).
        staging = f"{path}.{os.getpid()}.tmp"
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)  # a previous daemon's: nothing listens on it any more
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(staging)
        # The client's host user is rarely the sandbox's: the host directory guards access.
        os.chmod(staging, 0o666)
        listener.listen(1024)
        os.rename(staging, path)
    listener.setblocking(False)
    return listener


class Server:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        base_env: Mapping[str, str],
        umask: int,
        workdir: str,
        tls: ssl.SSLContext | None = None,
        desktop: Desktop | None = None,
    ) -> None:
        self.config = config
        self.desktop = desktop  # None: the image has no desktop
        self.tls = tls  # None: plain HTTP
        self.registry = registry
        self.base_env = dict(base_env)
        self.umask = umask
        self.workdir = workdir
        self.started = time.monotonic()
        self.deadline = None if config.ttl is None else self.started + config.ttl
        self.listener = listen(config)
        self.port = 0 if config.socket_path else self.listener.getsockname()[1]
        # Bounds on what clients that have not authenticated can make the daemon hold,
        # from the sandbox's memory: however many connect, they cannot exhaust it.
        memory = memory_limit()
        cost = CONNECTION_COST if tls is None else TLS_CONNECTION_COST
        self.max_connections = max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, memory // 4 // cost))
        self.preauth_budget = max(PREAUTH_MIN, min(PREAUTH_MAX, memory // PREAUTH_SHARE))
        self.preauth = 0  # bytes buffered by unauthenticated connections
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}  # owned by the loop, registered in the selector
        self.returned: deque[Conn] = deque()  # handed back by workers
        self.lock = threading.Lock()
        self.jobs: deque[tuple[Conn, Request]] = deque()
        self.jobs_ready = threading.Condition(self.lock)
        self.workers = 0
        self.idle = 0
        self.busy_conns = 0  # connections held by workers or queued
        # When a worker thread could not be started for queued jobs (out of pids or
        # memory) and no worker was idle: retried, then refused after STARVED_GRACE.
        self.starved_since: float | None = None

    # -- loop side ---------------------------------------------------------

    def serve_forever(self, on_expiry: Callable[[], object] | None = None) -> None:
        """Serve until the process ends; ``on_expiry`` is called at the TTL (it exits).

        The TTL is checked here rather than by a timer thread: one thread (one of the
        sandbox's pids) fewer, and nothing to fail to start.
        """
        next_sweep = time.monotonic() + 0.5
        while True:
            for key, _ in self.selector.select(0.5):
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fileobj is self.wake_r:
                    self.take_returned()
                else:
                    self.readable(key.data)
            now = time.monotonic()
            if on_expiry is not None and self.deadline is not None and now >= self.deadline:
                on_expiry()
            if now >= next_sweep:
                next_sweep = now + 0.5
                for conn in [c for c in self.conns.values() if c.deadline <= now]:
                    self.drop(conn)
                if self.starved_since is not None:
                    self.unstarve(now)

    def accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: retry on the next event
                log(f"accept failed: {exc!r}")
                return
            if len(self.conns) + self.busy_conns >= self.max_connections:
                victims = [c for c in self.conns.values() if not c.authenticated] or list(
                    self.conns.values()
                )
                if victims:
                    self.drop(min(victims, key=lambda c: c.deadline))
                else:
                    sock.close()
                    continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = str(address[0]) if isinstance(address, tuple) else "-"
            if self.tls is None:
                conn = Conn(sock, peer)
            else:  # the handshake is driven by the loop, within HEADER_DEADLINE
                try:
                    wrapped = self.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError):
                    sock.close()
                    continue
                conn = Conn(TLSSocket(wrapped), peer)
            self.watch(conn)

    def watch(self, conn: Conn) -> None:
        self.conns[conn.sock.fileno()] = conn
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def unwatch(self, conn: Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)

    def want(self, conn: Conn, events: int) -> None:
        """Wait for ``events`` on a watched connection (TLS may need to write to read)."""
        if self.selector.get_key(conn.sock).events != events:
            self.selector.modify(conn.sock, events, conn)

    def drop(self, conn: Conn) -> None:
        self.preauth -= conn.charged
        conn.charged = 0
        self.unwatch(conn)
        conn.close()

    def watched(self, conn: Conn) -> bool:
        """Whether the loop still owns ``conn`` (not dropped, not handed to a worker)."""
        return self.conns.get(conn.sock.fileno()) is conn

    def recharge(self, conn: Conn) -> bool:
        """Count what ``conn`` buffers before authenticating; shed the largest such
        buffers past the budget. Whether ``conn`` is still open."""
        owed = 0 if conn.authenticated or conn.draining else len(conn.buf)
        self.preauth += owed - conn.charged
        conn.charged = owed
        if self.preauth > self.preauth_budget:
            # Heads that grow without ending: a real client's fits in one read and
            # authenticates at once, so it is never among the largest.
            victims = sorted(
                (c for c in self.conns.values() if c.charged), key=lambda c: -c.charged
            )
            for victim in victims:
                if self.preauth <= self.preauth_budget * 3 // 4:
                    break
                self.drop(victim)
        return self.watched(conn)

    def flush(self, conn: Conn) -> None:
        """Send what is left of a reply; go on with the connection's pipeline once sent."""
        try:
            sent = conn.sock.send(conn.out)
        except OSError as exc:
            if not would_block(exc):
                self.drop(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        if conn.close_after:
            self.drop(conn)
            return
        self.want(conn, selectors.EVENT_READ)
        conn.deadline = time.monotonic() + IDLE_TIMEOUT
        self.serve_buffered(conn)
        if conn.tls and self.watched(conn) and not conn.out and conn.pending():
            self.readable_tls(conn)

    def take_returned(self) -> None:
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass
        while True:
            with self.lock:
                if not self.returned:
                    return
                conn = self.returned.popleft()
                self.busy_conns -= 1
            conn.sock.setblocking(False)
            conn.deadline = time.monotonic() + IDLE_TIMEOUT
            self.watch(conn)
            if conn.tls and conn.pending():
                self.readable(conn)
            elif conn.buf:
                self.serve_buffered(conn)

    def readable(self, conn: Conn) -> None:
        if conn.out:
            self.flush(conn)
            return
        if conn.tls:
            self.readable_tls(conn)
            return
        try:
            data = conn.sock.recv(self.read_size(conn))
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"":
            self.drop(conn)
            return
        if conn.draining:
            return
        if data:
            if not conn.buf:  # the first byte of a request starts its header deadline
                conn.deadline = time.monotonic() + HEADER_DEADLINE
            conn.buf += data
            if not self.recharge(conn):
                return
        self.serve_buffered(conn)

    @staticmethod
    def read_size(conn: Conn) -> int:
        """How much to read: before authenticating, no more than a head may hold."""
        if conn.authenticated:
            return CHUNK
        return max(1, min(CHUNK, MAX_HEADER_BYTES + 4 - len(conn.buf)))

    def readable_tls(self, conn: Conn) -> None:
        """``readable`` for TLS: advance the handshake, then read what can be decrypted.

        Nothing here waits.  The SSL would-block errors are OSErrors: caught first.
        """
        import ssl

        sock = conn.sock
        assert isinstance(sock, TLSSocket)
        if conn.handshaking:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self.want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.want(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError) as exc:
                reason = tls_failure(exc)
                if reason:
                    log(f"{conn.peer} tls handshake failed: {reason}")
                self.drop(conn)
                return
            conn.handshaking = False
        while True:
            try:
                data = sock.recv(self.read_size(conn))
            except ssl.SSLWantReadError:
                self.want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.want(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError):
                data = b""
            if not data:
                self.drop(conn)
                return
            self.want(conn, selectors.EVENT_READ)
            # One record per recv: keep reading what OpenSSL already holds, but never
            # past the socket's own data (an EOF behind a request must not cost it).
            if not conn.draining:
                if not conn.buf:  # the first byte of a request starts its header deadline
                    conn.deadline = time.monotonic() + HEADER_DEADLINE
                conn.buf += data
                if not self.recharge(conn):
                    return
                if sock.pending() and len(conn.buf) <= MAX_HEADER_BYTES:
                    continue
                self.serve_buffered(conn)
            if not self.watched(conn) or conn.out or not sock.pending():
                return  # handed to a worker, dropped, or nothing more buffered

    def serve_buffered(self, conn: Conn) -> None:
        """Serve the complete requests in ``conn.buf`` (a loop: pipelining cannot recurse)."""
        self.serve_requests(conn)
        if self.watched(conn):
            self.recharge(conn)
        else:  # handed to a worker (authenticated) or dropped: it owes nothing
            self.preauth -= conn.charged
            conn.charged = 0

    def serve_requests(self, conn: Conn) -> None:
        while True:
            while conn.buf[:2] == b"\r\n" or conn.buf[:1] == b"\n":  # allowed before a request
                del conn.buf[: 2 if conn.buf[:1] == b"\r" else 1]
            found = head_end(conn.buf)
            if found is None:
                if len(conn.buf) > MAX_HEADER_BYTES:
                    self.reject(conn, RequestError(HEADERS_TOO_LARGE, "headers too large"))
                return
            end, cut = found
            if end > MAX_HEADER_BYTES:
                self.reject(conn, RequestError(HEADERS_TOO_LARGE, "headers too large"))
                return
            head = bytes(conn.buf[:end])
            del conn.buf[: end + cut]
            try:
                request = parse_head(head)
            except RequestError as exc:
                self.reject(conn, exc)
                return
            if not authenticate(request.headers, self.config.token_sha256):
                self.reject(conn, RequestError(UNAUTHORIZED, "missing or invalid token"), request)
                return
            conn.authenticated = True
            if request.path == HEALTH_PATH and request.method in ("GET", "HEAD"):
                if not self.health(conn, request):
                    return
                continue
            self.unwatch(conn)
            self.submit(conn, request)
            return

    def reject(self, conn: Conn, exc: RequestError, request: Request | None = None) -> None:
        """Answer an error from the loop and close (the body, if any, is never read)."""
        log(f"{conn.peer} {self.target(request)} {exc.status}")
        with contextlib.suppress(OSError):
            conn.sock.send(json_response(exc.status, error_payload(exc), close=True))
            conn.sock.shutdown(socket.SHUT_WR)
        # Keep reading (and dropping) for a moment so the client sees the reply.
        conn.draining = True
        conn.buf.clear()
        conn.deadline = time.monotonic() + LINGER_SECONDS

    def health_payload(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "version": DAEMON_VERSION,
            "uptime": now - self.started,
            "pid": os.getpid(),
            "expires_in": None if self.deadline is None else max(0.0, self.deadline - now),
            "cwd": self.workdir,
            "uid": os.geteuid(),
            "limits": {
                "max_timeout": MAX_TIMEOUT,
                "max_workers": MAX_WORKERS,
                "max_background": MAX_BACKGROUND,
                "max_connections": self.max_connections,
                "preauth_bytes": self.preauth_budget,
            },
            "tls": self.tls is not None,
            "desktop": None if self.desktop is None else self.desktop.summary(),
        }

    def health(self, conn: Conn, request: Request) -> bool:
        """Answer ``/health`` from the loop; whether the connection stays open."""
        close = not request.keep_alive or bool(
            request.headers.get("content-length") or request.headers.get("transfer-encoding")
        )
        data = json_response(200, self.health_payload(), close=close)
        if request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            sent = 0 if would_block(exc) else -1
        log(f"{conn.peer} {self.target(request)} 200")
        if sent < 0 or (sent == len(data) and close):
            self.drop(conn)
            return False
        conn.deadline = time.monotonic() + IDLE_TIMEOUT
        if sent < len(data):
            # The peer pipelines faster than it reads: hold this reply (and read no
            # more) until it can be sent, rather than drop the connection or buffer.
            conn.out = data[sent:]
            conn.close_after = close
            self.want(conn, selectors.EVENT_WRITE)
            return False
        return True

    @staticmethod
    def target(request: Request | None) -> str:
        return (
            "<malformed request>"
            if request is None
            else printable(f"{request.method} {request.path}")
        )

    # -- worker side -------------------------------------------------------

    def submit(self, conn: Conn, request: Request) -> None:
        with self.lock:
            self.busy_conns += 1
            self.jobs.append((conn, request))
            if self.idle > 0 or self.workers >= MAX_WORKERS:
                self.jobs_ready.notify()
                return
        if self.start_worker():
            return
        # No thread to be had: the sandbox is out of pids (or memory).  A busy worker
        # takes the job when it is done; unstarve() refuses it if none comes in time.
        with self.lock:
            stranded = self.workers == 0 and bool(self.jobs) and self.jobs[-1][0] is conn
            if stranded:
                self.jobs.pop()
                self.busy_conns -= 1
            elif self.starved_since is None:
                self.starved_since = time.monotonic()
        if stranded:  # nobody will ever take it: answer from here
            self.refuse_starved(conn, request)

    def start_worker(self) -> bool:
        """Start one more worker thread; False when the system will not give us one."""
        with self.lock:
            self.workers += 1
        try:
            threading.Thread(target=self.work, name="worker", daemon=True).start()
        except RuntimeError:  # "can't start new thread": out of pids or memory
            with self.lock:
                self.workers -= 1
            return False
        return True

    def unstarve(self, now: float) -> None:
        """Jobs queued while no thread could be started: retry, then answer 503."""
        with self.lock:
            if not self.jobs or self.idle > 0 or self.workers >= MAX_WORKERS:
                self.starved_since = None  # a worker will take them
                return
            starved_since = self.starved_since
        if self.start_worker():
            with self.lock:
                self.starved_since = None
            return
        if starved_since is None or now - starved_since < STARVED_GRACE:
            return
        with self.lock:
            refused = list(self.jobs)
            self.jobs.clear()
            self.busy_conns -= len(refused)
            self.starved_since = None
        for conn, request in refused:
            self.refuse_starved(conn, request)

    def refuse_starved(self, conn: Conn, request: Request) -> None:
        """Answer a request no worker thread can serve (from the loop) and close."""
        self.watch(conn)
        self.reject(
            conn,
            RequestError(
                RESOURCE_EXHAUSTED,
                "cannot start a thread: the sandbox's process limit (pids) is reached",
                limit=LIMIT_PIDS,
            ),
            request,
        )

    def work(self) -> None:
        while True:
            with self.lock:
                while not self.jobs:
                    self.idle += 1
                    woken = self.jobs_ready.wait(WORKER_IDLE)
                    self.idle -= 1
                    if not woken and not self.jobs:
                        # Idle for long: give the thread (a pid) back to the sandbox.
                        self.workers -= 1
                        return
                conn, request = self.jobs.popleft()
            keep = False
            try:
                keep = self.handle(conn, request)
            except Exception:
                log(f"{conn.peer} unhandled error:\n{traceback.format_exc()}")
            if keep:
                with self.lock:
                    self.returned.append(conn)
                with contextlib.suppress(OSError):
                    self.wake_w.send(b"x")
            else:
                with self.lock:
                    self.busy_conns -= 1

    def handle(self, conn: Conn, request: Request) -> bool:
        """Serve one request; whether the connection can take another."""
        conn.sock.settimeout(IO_TIMEOUT)
        try:
            ex = Exchange(self, conn, request)
        except RequestError as exc:  # the body's framing is unusable: answer and close
            log(f"{conn.peer} {self.target(request)} {exc.status}")
            with contextlib.suppress(ClientGone):
                conn.send(json_response(exc.status, error_payload(exc), close=True))
            conn.linger_close()
            return False
        try:
            find_endpoint(request)(ex)
        except RequestError as exc:
            if ex.started:
                conn.close()
                log(f"{conn.peer} {self.target(request)} {exc.status} (after the reply began)")
                return False
            extra = [("Allow", ", ".join(exc.extra["allow"]))] if "allow" in exc.extra else None
            try:
                ex.send_json(exc.status, error_payload(exc), extra)
            except ClientGone:
                conn.close()
                return False
        except ClientGone as exc:
            log(f"{conn.peer} {self.target(request)}: client went away ({exc})")
            conn.close()
            return False
        except MemoryError:  # the sandbox is out of memory: say so if we still can
            if not ex.started:
                with contextlib.suppress(ClientGone, MemoryError):
                    ex.close = True
                    ex.send_json(
                        503,
                        {
                            "error": RESOURCE_EXHAUSTED,
                            "message": "the sandbox is out of memory",
                            "limit": LIMIT_MEMORY,
                        },
                    )
            log(f"{conn.peer} {self.target(request)}: out of memory")
            conn.close()
            return False
        except Exception as exc:
            if not ex.started:
                with contextlib.suppress(ClientGone):
                    ex.close = True
                    ex.send_json(
                        500, {"error": INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}
                    )
            conn.close()
            raise
        log(f"{conn.peer} {self.target(request)} {ex.status}")
        if ex.close or not ex.body.done:
            if ex.body.done:
                conn.close()
            else:
                conn.linger_close()
            return False
        return True
