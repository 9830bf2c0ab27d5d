"""Commands: ``POST /exec`` (foreground or background, stdin from the request body,
output as frames) and the ``/processes`` endpoints that list, signal, kill and attach to
what it started."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import threading
import time

from .connections import CHUNK, LINGER_SECONDS, peek_client
from .errors import ClientGone, RequestError, spawn_failure
from .http import parse_query, printable, require_method
from .processes import Ring, kill_group
from .protocol import (
    BAD_JSON,
    BAD_REQUEST,
    FRAME_EXIT,
    FRAME_GAP,
    FRAME_START,
    FRAMES_CONTENT_TYPE,
    LIMIT_PIDS,
    MAX_EXEC_HEADER,
    MAX_TIMEOUT,
    NOT_BACKGROUND,
    NOT_FOUND,
    OUTPUT_BUDGET,
    OUTPUT_EVICTED,
    PAYLOAD_TOO_LARGE,
    RESOURCE_EXHAUSTED,
    STREAM_KINDS,
    decimal,
    frame_head,
    valid_process_id,
)
from .users import resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from .connections import Body, Exchange
    from .processes import Process

    Buffer = bytes | bytearray | memoryview

# A background process's pipes are read this much at a time: a read allocates this much
# before it shrinks to what came, and smaller pieces leave the allocator fewer holes.
PUMP_READ = 64 * 1024
STDIN_HIGH_WATER = 1024 * 1024
KILL_GRACE = 5.0  # after killing a group, wait this long for its pipes to close
F_SETPIPE_SZ = 1031


def frame(kind: bytes, payload: Buffer) -> list[Buffer]:
    """A frame as parts to send: its 5-byte head, then the payload itself (not copied)."""
    return [frame_head(kind, len(payload)), payload]


def json_frame(kind: bytes, payload: object) -> list[Buffer]:
    return frame(kind, json.dumps(payload, separators=(",", ":")).encode())


class ExecRequest:
    def __init__(self, payload: object, workdir: str) -> None:
        if not isinstance(payload, dict):
            raise RequestError(BAD_REQUEST, "the first line must be a JSON object")
        argv = payload.get("argv")
        command = payload.get("command")
        if (argv is None) == (command is None):
            raise RequestError(BAD_REQUEST, "give exactly one of 'argv' and 'command'")
        if command is not None:
            if not isinstance(command, str) or "\x00" in command:
                raise RequestError(BAD_REQUEST, "'command' must be a string without NUL")
            argv = ["/bin/sh", "-c", command]
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\x00" not in a for a in argv)
        ):
            raise RequestError(
                BAD_REQUEST, "'argv' must be a non-empty list of strings without NUL"
            )
        self.argv: list[str] = argv
        self.shell = command is not None  # argv is ["/bin/sh", "-c", command]
        cwd = payload.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\x00" in cwd):
            raise RequestError(BAD_REQUEST, "'cwd' must be a non-empty string or null")
        self.cwd = os.path.join(workdir, cwd) if cwd else workdir
        env = payload.get("env")
        if env is not None and not isinstance(env, dict):
            raise RequestError(BAD_REQUEST, "'env' must be an object or null")
        self.env: dict[str, str] = {}
        for key, value in (env or {}).items():
            if (
                not isinstance(value, str)
                or not key
                or "=" in key
                or "\x00" in key
                or "\x00" in value
            ):
                raise RequestError(BAD_REQUEST, f"invalid environment variable {key!r}")
            self.env[key] = value
        self.timeout = number(payload.get("timeout"), "timeout", MAX_TIMEOUT)
        max_output = payload.get("max_output")
        if max_output is not None and (
            isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0
        ):
            raise RequestError(BAD_REQUEST, "'max_output' must be a non-negative integer or null")
        self.max_output: int | None = max_output
        self.on_limit = payload.get("on_limit", "truncate")
        if self.on_limit not in ("truncate", "kill"):
            raise RequestError(BAD_REQUEST, "'on_limit' must be 'truncate' or 'kill'")
        self.background = payload.get("background", False)
        if not isinstance(self.background, bool):
            raise RequestError(BAD_REQUEST, "'background' must be a boolean")
        self.user = payload.get("user")


def number(value: object, name: str, maximum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(BAD_REQUEST, f"'{name}' must be a number or null")
    try:
        result = float(value)
    except OverflowError:
        result = float("inf")
    if not (0 < result <= maximum):
        raise RequestError(
            BAD_REQUEST,
            f"'{name}' must be > 0 and at most {maximum:g} seconds, got {value!r}",
        )
    return result


def handle_exec(ex: Exchange) -> None:
    server = ex.server
    body = ex.body
    if body.done:
        raise RequestError(BAD_REQUEST, "the body must start with a JSON line")
    # The JSON line, then stdin.
    line = bytearray()
    while True:
        data = body.read()
        if not data:
            raise RequestError(BAD_REQUEST, "the body must start with one JSON line")
        end = data.find(b"\n")
        if end >= 0:
            line += data[:end]
            pending = data[end + 1 :]
            break
        line += data
        if len(line) > MAX_EXEC_HEADER:
            raise RequestError(PAYLOAD_TOO_LARGE, f"the JSON line exceeds {MAX_EXEC_HEADER} bytes")
    try:
        payload = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise RequestError(BAD_JSON, f"malformed JSON line: {exc}") from None
    req = ExecRequest(payload, server.workdir)
    user = resolve_user(req.user)
    env = dict(server.base_env)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(req.env)
    try:
        process = server.registry.spawn(
            req.argv, req.cwd, env, user, req.background, shell=req.shell
        )
    except OSError as exc:
        raise spawn_failure(exc, req.argv[0], req.cwd) from None
    except (ValueError, TypeError) as exc:
        raise RequestError(BAD_REQUEST, f"cannot start the command: {exc}") from None
    if req.background:
        try:
            feed_background(process, req.timeout, server.registry.shed)
        except RuntimeError:  # no thread for its output: the sandbox is out of pids
            process.background = False  # so that the cleanup below kills it
    try:
        if req.background and not process.background:
            raise RequestError(
                RESOURCE_EXHAUSTED,
                "cannot start a thread: the sandbox's process limit (pids) is reached",
                limit=LIMIT_PIDS,
            )
        ex.begin_chunked(FRAMES_CONTENT_TYPE)
        ex.send_chunk(json_frame(FRAME_START, {"id": process.id, "pid": process.popen.pid}))
        if req.background:
            stream_background(ex, process, bytes(pending), stdin=True)
        else:
            run_foreground(ex, process, req, bytes(pending))
    finally:
        if not process.background:
            if process.exit_code is None:
                kill_group(process.popen.pid)
                process.finish(process.popen.wait())
            close_pipes(process.popen)
            server.registry.forget(process)


def close_pipes(popen: subprocess.Popen[bytes]) -> None:
    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def widen_pipe(fd: int) -> None:
    """Bigger pipes mean fewer, larger reads for chatty commands (best effort)."""
    with contextlib.suppress(OSError, ImportError):
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, 1024 * 1024)


class Limiter:
    """Keeps the first half of ``max_output`` bytes streaming and the last half aside."""

    def __init__(self, max_output: int | None) -> None:
        self.max_output = max_output
        self.head = None if max_output is None else max_output - max_output // 2
        self.tail_size = 0 if max_output is None else max_output // 2
        self.sent = 0
        self.tail = Ring(max(self.tail_size, 1))
        self.overflow = 0  # bytes past the head

    @property
    def exceeded(self) -> bool:
        """Whether the stream printed more than ``max_output`` (not merely past the head)."""
        return self.max_output is not None and self.sent + self.overflow > self.max_output

    def feed(self, data: bytes) -> bytes:
        """What to stream now; the rest is kept in the tail ring."""
        if self.head is None:
            return data
        room = max(0, self.head - self.sent)
        now, rest = data[:room], data[room:]
        self.sent += len(now)
        if rest:
            self.overflow += len(rest)
            if self.tail_size:
                self.tail.append(rest)
        return now

    def kept_tail(self) -> tuple[int, list[Buffer]]:
        """(bytes omitted, the tail kept: views, not copies)."""
        kept = self.tail.tail(self.tail_size) if self.overflow and self.tail_size else []
        return self.overflow - sum(len(view) for view in kept), kept


class StdinFeed:
    """Copies the request body into a command's stdin without blocking, then closes it."""

    def __init__(self, sel: selectors.BaseSelector, popen: subprocess.Popen[bytes], first: bytes):
        assert popen.stdin is not None
        self.sel = sel
        self.pipe = popen.stdin
        self.fd: int | None = self.pipe.fileno()
        os.set_blocking(self.fd, False)
        self.buf = bytearray(first)
        self.registered = False

    @property
    def full(self) -> bool:
        return len(self.buf) >= STDIN_HIGH_WATER

    def pull(self, body: Body) -> None:
        """Take decoded body bytes already received; close stdin at the body's end."""
        if self.fd is None:
            body.take(1 << 62)  # the command closed its stdin: decode and drop
            return
        if not self.full and not body.done:
            self.buf += body.take(STDIN_HIGH_WATER)
        if not self.buf and body.done:
            self.close()
            return
        if bool(self.buf) != self.registered:
            if self.buf:
                self.sel.register(self.fd, selectors.EVENT_WRITE, "stdin")
            else:
                self.sel.unregister(self.fd)
            self.registered = bool(self.buf)

    def push(self) -> None:
        """The pipe has room: write what we can."""
        if self.fd is None:
            return
        try:
            written = os.write(self.fd, self.buf[:CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command closed its stdin; drop what is left
            self.close()
            return
        del self.buf[:written]

    def close(self) -> None:
        if self.fd is not None and self.registered:
            self.sel.unregister(self.fd)
        self.registered = False
        self.fd = None
        self.buf.clear()
        with contextlib.suppress(OSError):
            self.pipe.close()


def run_foreground(ex: Exchange, process: Process, req: ExecRequest, stdin_data: bytes) -> None:
    """Stream a command's output to the client, feed it stdin, kill it if the client goes."""
    popen = process.popen
    conn = ex.conn
    body = ex.body
    assert popen.stdout is not None
    assert popen.stderr is not None
    deadline = None if req.timeout is None else process.started + req.timeout
    limiters = (Limiter(req.max_output), Limiter(req.max_output))
    limit_exceeded = False
    sel = selectors.DefaultSelector()
    pidfd = open_pidfd(popen.pid)
    try:
        for index, pipe in enumerate((popen.stdout, popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            widen_pipe(pipe.fileno())
            sel.register(pipe.fileno(), selectors.EVENT_READ, index)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        stdin = StdinFeed(sel, popen, stdin_data)
        watch_client = True  # False once the client pipelined its next request
        client_registered = False
        open_streams = 2
        killed_at: float | None = None
        while True:
            stdin.pull(body)
            # Read from the client while it sends stdin we have room for, and after
            # that to notice it going away (the sign to kill the command).
            want_client = watch_client and (body.done or not stdin.full)
            if want_client != client_registered:
                if want_client:
                    sel.register(conn.sock, selectors.EVENT_READ, "client")
                else:
                    sel.unregister(conn.sock)
                client_registered = want_client
            exited = popen.poll() is not None
            if exited and open_streams == 0:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline and killed_at is None:
                process.timed_out = True
                kill_group(popen.pid)
                killed_at = now
            if killed_at is not None and now - killed_at > KILL_GRACE:
                break  # something that left the group holds the pipes: stop waiting
            # Without a pidfd, poll for the exit of a command whose pipes are closed.
            wait = 1.0 if pidfd is not None and not exited else 0.05
            if deadline is not None and killed_at is None:
                wait = min(wait, max(0.0, deadline - now))
            if killed_at is not None:
                wait = min(wait, 0.1)
            output: list[Buffer] = []
            # TLS: bytes already decrypted inside OpenSSL never make the socket readable.
            buffered = client_registered and conn.tls and conn.pending() > 0
            events = sel.select(0.0 if buffered else wait)
            if buffered and not any(key.data == "client" for key, _ in events):
                events.append((sel.get_key(conn.sock), selectors.EVENT_READ))
            for key, _ in events:
                tag = key.data
                if tag == "exit":
                    sel.unregister(key.fd)
                elif tag == "client":
                    if not body.done:
                        if not conn.tls:
                            conn.fill()  # ClientGone when the client went away mid-body
                        elif conn.receive_nowait() == "gone":  # a partial record: wait more
                            raise ClientGone("connection closed by the client")
                        continue
                    seen = peek_client(conn)
                    if seen == "gone":
                        raise ClientGone("client went away")
                    if seen == "data":
                        watch_client = False  # the next request is pipelined behind
                elif tag == "stdin":
                    stdin.push()
                else:
                    try:
                        data = os.read(key.fd, CHUNK)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(key.fd)
                        open_streams -= 1
                        continue
                    streamed = limiters[tag].feed(data)
                    if streamed:
                        output += frame(STREAM_KINDS[tag], streamed)
                    if limiters[tag].exceeded and req.on_limit == "kill" and not limit_exceeded:
                        limit_exceeded = True
                        kill_group(popen.pid)
                        killed_at = time.monotonic()
            if output:
                ex.send_chunk(output)
        stdin.close()
        if popen.poll() is None:
            kill_group(popen.pid)
        process.finish(popen.wait())
        # Forgotten before its exit frame is sent: a client that read the exit (or killed
        # it and read to the end) and then lists processes does not find it there.
        ex.server.registry.forget(process)
        omitted = [0, 0]
        last: list[Buffer] = []
        for index, limiter in enumerate(limiters):
            omitted[index], kept = limiter.kept_tail()
            if omitted[index]:
                last += json_frame(FRAME_GAP, {"stream": index + 1, "omitted": omitted[index]})
            size = sum(len(view) for view in kept)
            if size:
                last += [frame_head(STREAM_KINDS[index], size), *kept]
        last += json_frame(FRAME_EXIT, process.exit_payload(omitted[0], omitted[1], limit_exceeded))
        ex.send_chunk(last)
        ex.end_chunked()
        if not body.done and not body.discard(LINGER_SECONDS):
            ex.close = True
    finally:
        if pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        sel.close()


def open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux >= 5.3), if any."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
        return fd
    except OSError:
        return None


def feed_background(process: Process, timeout: float | None, shed: Callable[[int], None]) -> None:
    """Start the thread that drains a background process's output into its rings.

    ``shed`` (the registry's) keeps all rings together within ``OUTPUT_BUDGET``.
    """

    def pump() -> None:
        popen = process.popen
        assert popen.stdout is not None
        assert popen.stderr is not None
        sel = selectors.DefaultSelector()
        for index, pipe in enumerate((popen.stdout, popen.stderr)):
            widen_pipe(pipe.fileno())
            sel.register(pipe.fileno(), selectors.EVENT_READ, index)
        deadline = None if timeout is None else process.started + timeout
        try:
            while sel.get_map():
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(wait)
                if deadline is not None and time.monotonic() >= deadline and not process.timed_out:
                    process.timed_out = True
                    kill_group(popen.pid)
                    deadline = time.monotonic() + KILL_GRACE
                elif deadline is not None and process.timed_out and time.monotonic() >= deadline:
                    break
                for key, _ in events:
                    data = os.read(key.fd, PUMP_READ)
                    grown = 0
                    with process.cond:
                        ring = process.rings[key.data]
                        if data:
                            grown = ring.append(data)
                        else:
                            ring.eof = True
                            sel.unregister(key.fd)
                        process.cond.notify_all()
                    if grown > 0:
                        shed(grown)
        finally:
            sel.close()
            process.finish(popen.wait())
            with process.cond:
                for ring in process.rings:
                    ring.eof = True
                process.cond.notify_all()
            with contextlib.suppress(OSError):
                popen.stdout.close()
                popen.stderr.close()

    threading.Thread(target=pump, name=f"pump-{process.id}", daemon=True).start()


def stream_background(ex: Exchange, process: Process, stdin_data: bytes, *, stdin: bool) -> None:
    """Stream a background process's rings to this client (and this body to its stdin)."""
    popen = process.popen
    body = ex.body
    offsets = [0, 0]
    writer: threading.Thread | None = None
    if stdin and popen.stdin is not None:
        writer = threading.Thread(target=feed_stdin, args=(popen, body, stdin_data), daemon=True)
        try:
            writer.start()
        except RuntimeError:  # out of pids: the process gets no stdin
            writer = None
            with contextlib.suppress(OSError):
                popen.stdin.close()
    while True:
        with process.cond:
            ready = [process.rings[i].end > offsets[i] for i in (0, 1)]
            finished = process.exit_code is not None and all(r.eof for r in process.rings)
            if not any(ready) and not finished:
                process.cond.wait(1.0)
                ready = [process.rings[i].end > offsets[i] for i in (0, 1)]
            pieces: list[Buffer] = []
            for i in (0, 1):
                if ready[i]:
                    lost, data = process.rings[i].read(offsets[i], CHUNK)
                    if lost:
                        pieces += json_frame(FRAME_GAP, {"stream": i + 1, "omitted": lost})
                    offsets[i] += lost + len(data)
                    pieces += frame(STREAM_KINDS[i], data)
            done = finished and not any(ready)
        if pieces:
            ex.send_chunk(pieces)
        elif (writer is None or not writer.is_alive()) and peek_client(ex.conn) == "gone":
            raise ClientGone("client went away")
        if done:
            ex.send_chunk(json_frame(FRAME_EXIT, process.exit_payload()))
            ex.end_chunked()
            break
    if writer is not None:
        writer.join(LINGER_SECONDS)
        if writer.is_alive():
            ex.close = True


def feed_stdin(popen: subprocess.Popen[bytes], body: Body, first: bytes) -> None:
    """Copy the request body into a background process's stdin, then close it."""
    assert popen.stdin is not None
    try:
        data = first
        while True:
            if data:
                popen.stdin.write(data)
                popen.stdin.flush()
            data = body.read()
            if not data:
                break
    except (OSError, ClientGone, RequestError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            popen.stdin.close()


def handle_processes(ex: Exchange) -> None:
    parts = ex.request.path.split("/")  # "", "processes", [id], [action]
    registry = ex.server.registry
    method = ex.request.method
    if len(parts) == 2:
        require_method(ex.request, "GET")
        ex.send_json(200, [p.info() for p in registry.list()])
        return
    pid_id = parts[2]
    if not valid_process_id(pid_id):
        raise RequestError(
            BAD_REQUEST, f"malformed process id {printable(pid_id, 40)!r} (p<number>)"
        )
    action = parts[3] if len(parts) == 4 else None
    if len(parts) > 4 or action not in (None, "output", "signal"):
        raise RequestError(NOT_FOUND, "no such endpoint")
    # Nothing else rides in the query: a client that failed to quote an id ("p1?x=y")
    # must not reach process p1.
    allowed = {"signal"} if action == "signal" else set()
    unexpected = sorted(set(parse_query(ex.request.query)) - allowed)
    if unexpected:
        raise RequestError(
            BAD_REQUEST, f"unexpected query parameter {printable(unexpected[0], 40)!r}"
        )
    process = registry.get(pid_id)
    if action is None:
        require_method(ex.request, "GET", "DELETE")
        if method == "DELETE":
            if process.exit_code is None:
                kill_group(process.popen.pid)
            if not process.background:
                ex.send_json(200, process.info())
                return
            registry.forget(process)
        ex.send_json(200, process.info())
    elif action == "signal":
        require_method(ex.request, "POST")
        text = parse_query(ex.request.query).get("signal", "15")
        signum = decimal(text)
        if signum is None or not 0 < signum < 65:
            raise RequestError(BAD_REQUEST, "'signal' must be a signal number")
        if process.exit_code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signum)
        ex.send_json(200, process.info())
    else:
        require_method(ex.request, "GET")
        if not process.background:
            raise RequestError(NOT_BACKGROUND, "only background processes can be attached to")
        if process.evicted:
            raise RequestError(
                OUTPUT_EVICTED,
                f"{process.id} finished (exit code {process.exit_code}) and its output was"
                " dropped to keep background processes' output within the daemon's budget"
                f" ({OUTPUT_BUDGET >> 20} MiB in all; the output of those that finished"
                " longest ago goes first)",
                exit_code=process.exit_code,
            )
        ex.begin_chunked(FRAMES_CONTENT_TYPE)
        ex.send_chunk(json_frame(FRAME_START, {"id": process.id, "pid": process.popen.pid}))
        stream_background(ex, process, b"", stdin=False)
