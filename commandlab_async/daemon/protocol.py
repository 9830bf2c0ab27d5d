"""The daemon's wire contract: what a client (and whoever starts a daemon) relies on.

Pure constants and tiny helpers, standard library only (none imported), Python >= 3.9:
the client imports this module as ``commandlab_async.daemon.protocol``, the daemon as
``.protocol``, so both sides name the same thing the same way.

Configuration (environment variables)
-------------------------------------
``COMMANDLAB_TOKEN_SHA256`` (``TOKEN_SHA256_ENV``)  required: SHA-256 of the client's
    token (UTF-8) as 64 hex digits.  The daemon never sees the token itself; it hashes
    what each request presents and compares in constant time.  Removed from the
    environment commands get.  Missing or malformed: a message on stderr and exit
    status 2.
``COMMANDLAB_TOKEN`` (``LEGACY_TOKEN_ENV``)  must NOT be set (a client handing the raw
    token to the sandbox): refused with exit status 2.
``COMMANDLAB_PORT``   TCP port, default 8000 (0 picks one; the startup line says which).
``COMMANDLAB_HOST``   bind address, default ``0.0.0.0`` (IPv6 literals work).
``COMMANDLAB_SOCKET``  optional absolute path: listen on a Unix socket there instead of
    TCP (host and port are then ignored).  A stale socket file is replaced; the new one
    is made connectable by any user (mode 0666), so whoever may reach its directory
    decides who may connect: the client's host directory is private to it.
``COMMANDLAB_TTL``    optional lifetime in seconds: at expiry every process group the
    daemon started is SIGKILLed and the daemon exits 0, which stops the container.
``COMMANDLAB_TLS_CERT`` and ``COMMANDLAB_TLS_KEY``  optional, both or neither: the PEM
    text (not a path: some platforms can only hand a sandbox environment variables) of
    the server certificate (or chain, leaf first) and of its unencrypted private key.
    Given, the daemon serves HTTPS only (TLS >= 1.2, no client certificates).  Both are
    removed from the environment commands get; the key passes through a private
    temporary file (0600, in /dev/shm when there is one) that is deleted once loaded.
    Only one set, a malformed PEM, a key that does not match the certificate or a
    Python without ``ssl``: a message on stderr (never the key) and exit status 2.

Startup prints ``commandlab daemon listening on <host>:<port>`` (or ``unix:<path>``)
on stderr (``LISTENING``; nothing follows the port on that line), then
``commandlab daemon: serving TLS (https)`` (``SERVING_TLS``) when TLS is on.  SIGTERM
and SIGINT kill every process group and exit 0.  One terse log line per request
(client, method, path without query, status); headers are never logged.

Protocol
--------
Every request carries the token in ``X-CommandLab-Token`` (``TOKEN_HEADER``; or, only
when that header is absent, ``Authorization: Bearer``); otherwise ``401`` and the
connection closes.  Request heads must arrive within ``HEADER_DEADLINE`` seconds and
fit in ``MAX_HEADER_BYTES`` (``MAX_HEADER_COUNT`` lines); an idle keep-alive connection
closes after ``IDLE_TIMEOUT``.  Request bodies are framed by ``Content-Length`` or
``Transfer-Encoding: chunked``.  Relative paths resolve against the daemon's working
directory (``/health`` reports it).  Errors are JSON ``{"error": <code>, "message":
<text>, ...}`` with stable codes, each always with the same status (``ERROR_STATUS``):
``not_found`` 404, ``permission_denied`` 403, ``is_a_directory`` 400,
``not_a_directory`` 400, ``file_too_large`` 413 (with ``size``), ``exec_format_error``
400, ``resource_exhausted`` 503 (with ``limit``: ``pids``, ``memory``, ``processes``,
``files``), ``user_unsupported`` 400, ``no_such_user`` 400, ``no_such_process`` 404,
``output_evicted`` 410 (with ``exit_code``), ``bad_request`` 400, ``unauthorized`` 401,
``shutting_down`` 503, and the others below.

``GET /health``
    ``{"version", "uptime", "pid", "expires_in", "cwd", "uid", "limits", "tls"}``.

``POST /exec``
    Body: one JSON object on the first line (at most ``MAX_EXEC_HEADER`` bytes), then
    stdin as raw bytes until the body ends (end of body closes the command's stdin).
    JSON keys: ``argv`` (list of strings, run directly) or ``command`` (string, run by
    ``/bin/sh -c``); ``cwd``, ``env`` (overlaid on the daemon's), ``user`` (name or uid;
    needs a root daemon), ``timeout`` (seconds, <= ``MAX_TIMEOUT``), ``max_output``
    (bytes kept per stream: the first half is streamed, then the last half is kept and
    sent at the end after a gap frame; null: stream everything), ``on_limit``
    (``truncate``, or ``kill``: the command is killed once a stream printed more than
    ``max_output`` bytes), ``background`` (the process outlives this request).
    Reply: 200, chunked, ``FRAMES_CONTENT_TYPE``, a sequence of frames ``<kind: 1 byte>
    <length: 4 bytes BE><payload>`` (``frame_head``): ``S`` JSON ``{"id", "pid"}`` first;
    ``1``/``2`` stdout/stderr bytes; ``G`` JSON ``{"stream": 1|2, "omitted": n}`` where
    ``n`` bytes were dropped (then comes the stream's kept tail); ``X`` JSON
    ``{"exit_code", "duration", "timed_out", "limit_exceeded", "stdout_omitted",
    "stderr_omitted"}`` last (HTTP/1.0 clients get the frames unchunked, ended by
    closing).  A foreground command's whole process group is killed when the client goes
    away before it ends: a client that closes (or half-closes) its connection is taken as
    gone.  A background command keeps running, its output going to a ring of the last
    ``RING_BYTES`` per stream; all rings together hold at most ``OUTPUT_BUDGET`` (the
    output of those that finished longest ago goes first).  At most ``MAX_BACKGROUND``
    background processes run at once.

``GET /processes``  ``[{"id", "pid", "argv", "background", "running", "exit_code"}]``.
    A process ``<id>`` is ``p`` and a number (``valid_process_id``); any other id, or a
    query parameter the endpoint does not take, is ``bad_request``.
``GET /processes/<id>/output``  a background process's frames from its ring (a ``G``
    frame says what was lost), then live ones, then ``X``; ``output_evicted`` when it
    finished and its output was dropped for ``OUTPUT_BUDGET``.
``POST /processes/<id>/signal?signal=<n>``  signals the process group.
``DELETE /processes/<id>``  kills the process group and forgets the process.

``GET /files?path=<p>[&max_size=<n>][&user=<u>]``  the file, streamed;
    ``file_too_large`` before any byte is sent when it is bigger than ``max_size``
    (a file that reports no size, as in /proc, is read up to ``MAX_PSEUDO_FILE``).
``PUT /files?path=<p>[&mode=<octal>][&user=<u>]``  the body becomes the file (written
    aside under a name starting ``UPLOAD_PREFIX`` and renamed, parents created).  An
    existing file keeps its mode and owner and must be writable; a symlink at the path
    is replaced, not written through, and one on the way is followed only when it is
    root's or the writer's.  ``{"path", "size"}``.
    With ``user`` (name or uid; needs a root daemon) the file is opened, created and
    renamed by a short-lived process running as that user, so its permissions apply.
``GET /files/stat?path=<p>``  ``{"path", "type", "size", "mode", "mtime", "uid", "gid"}``.
``GET /files/list?path=<p>``  ``{"path", "entries": [{"name", "type", "size", "mode",
    "mtime", "uid", "gid"}], "truncated"}`` (at most ``MAX_LIST_ENTRIES``).
"""

from __future__ import annotations

DAEMON_VERSION = "3"  # /health's "version"

# ---------------------------------------------------------------- environment

TOKEN_SHA256_ENV = "COMMANDLAB_TOKEN_SHA256"
LEGACY_TOKEN_ENV = "COMMANDLAB_TOKEN"
PORT_ENV = "COMMANDLAB_PORT"
HOST_ENV = "COMMANDLAB_HOST"
SOCKET_ENV = "COMMANDLAB_SOCKET"
TTL_ENV = "COMMANDLAB_TTL"
TLS_CERT_ENV = "COMMANDLAB_TLS_CERT"
TLS_KEY_ENV = "COMMANDLAB_TLS_KEY"
DESKTOP_ENV = "COMMANDLAB_DESKTOP"  # set by a desktop image: "xvfb"
SCREEN_ENV = "COMMANDLAB_SCREEN"  # the desktop's size: "<width>x<height>x<depth>"

DEFAULT_SCREEN = (1280, 800, 24)
DEFAULT_PORT = 8000
DEFAULT_HOST = "0.0.0.0"

# Lines on stderr at startup (the address follows LISTENING, and nothing after it).
LISTENING = "commandlab daemon listening on "
SERVING_TLS = "commandlab daemon: serving TLS (https)"

# ---------------------------------------------------------------- requests

TOKEN_HEADER = "X-CommandLab-Token"  # header names match case-insensitively (compare lowercased)

HEALTH_PATH = "/health"
EXEC_PATH = "/exec"
PROCESSES_PATH = "/processes"  # then /<id>, /<id>/output, /<id>/signal
FILES_PATH = "/files"
FILE_STAT_PATH = "/files/stat"
FILE_LIST_PATH = "/files/list"
DESKTOP_PATH = "/desktop"

MAX_HEADER_BYTES = 64 * 1024  # a request's head (line and headers)
MAX_HEADER_COUNT = 100
HEADER_DEADLINE = 10.0  # seconds to send a request's head
IDLE_TIMEOUT = 30.0  # an idle keep-alive connection is closed after this
MAX_EXEC_HEADER = 8 * 1024 * 1024  # the JSON line of /exec (argv can be large)
MAX_TIMEOUT = 1_000_000.0  # seconds; larger values are refused rather than overflowed
MAX_BACKGROUND = 64  # background processes at once
MAX_LIST_ENTRIES = 10_000  # entries of one /files/list reply
MAX_PSEUDO_FILE = 64 * 1024 * 1024  # a file without a size is read up to this
RING_BYTES = 1024 * 1024  # a background process's output kept per stream
# What all background processes' rings may hold together, whatever their number: past
# it the output of the processes that finished longest ago goes first, then the oldest
# bytes of the fullest rings of running ones.
OUTPUT_BUDGET = 16 * 1024 * 1024
UPLOAD_PREFIX = ".commandlab-upload-"  # a file being written, beside where it goes

PROCESS_ID_PREFIX = "p"


def decimal(text: str) -> int | None:
    """The value of a plain ASCII decimal number (a length, a size, a uid, a signal), else
    None: no sign, no spaces, at most 18 digits (``str.isdigit`` alone accepts '²')."""
    if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def valid_process_id(text: str) -> bool:
    """Whether ``text`` is a process id as the daemon makes them: ``p`` and a number."""
    digits = text[1:]
    return (
        text[:1] == PROCESS_ID_PREFIX
        and 0 < len(digits) <= 18
        and digits.isascii()
        and digits.isdigit()
        and digits[0] != "0"
    )


# ---------------------------------------------------------------- frames

FRAMES_CONTENT_TYPE = "application/x-commandlab-frames"

FRAME_START = b"S"  # JSON {"id", "pid"}: always first
FRAME_STDOUT = b"1"  # bytes
FRAME_STDERR = b"2"  # bytes
FRAME_GAP = b"G"  # JSON {"stream": 1|2, "omitted": n}
FRAME_EXIT = b"X"  # JSON {"exit_code", "duration", ...}: always last
FRAME_KINDS = frozenset((FRAME_START, FRAME_STDOUT, FRAME_STDERR, FRAME_GAP, FRAME_EXIT))
STREAM_KINDS = (FRAME_STDOUT, FRAME_STDERR)  # stream 1 and stream 2
FRAME_HEAD_SIZE = 5  # the kind (1 byte), then the payload's length (4 bytes, big-endian)
MAX_FRAME_PAYLOAD = 2**32 - 1


def frame_head(kind: bytes, length: int) -> bytes:
    """The 5 bytes that precede a frame's payload of ``length`` bytes."""
    return kind + length.to_bytes(4, "big")


def parse_frame_head(head: bytes) -> tuple[bytes, int]:
    """(kind, payload length) of a frame's ``FRAME_HEAD_SIZE`` first bytes."""
    return head[:1], int.from_bytes(head[1:FRAME_HEAD_SIZE], "big")


# ---------------------------------------------------------------- errors

NOT_FOUND = "not_found"
PERMISSION_DENIED = "permission_denied"
IS_A_DIRECTORY = "is_a_directory"
NOT_A_DIRECTORY = "not_a_directory"
NOT_A_REGULAR_FILE = "not_a_regular_file"
FILE_TOO_LARGE = "file_too_large"  # with "size" (null: a file without a size)
BAD_PATH = "bad_path"
BAD_MODE = "bad_mode"
INSUFFICIENT_STORAGE = "insufficient_storage"
IO_ERROR = "io_error"
EXEC_FORMAT_ERROR = "exec_format_error"
RESOURCE_EXHAUSTED = "resource_exhausted"  # with "limit": one of LIMITS
USER_UNSUPPORTED = "user_unsupported"
NO_SUCH_USER = "no_such_user"
NO_SUCH_PROCESS = "no_such_process"
NOT_BACKGROUND = "not_background"
OUTPUT_EVICTED = "output_evicted"  # with "exit_code"
BAD_REQUEST = "bad_request"
BAD_JSON = "bad_json"
BAD_CONTENT_LENGTH = "bad_content_length"
PAYLOAD_TOO_LARGE = "payload_too_large"
HEADERS_TOO_LARGE = "headers_too_large"
HTTP_VERSION_NOT_SUPPORTED = "http_version_not_supported"
METHOD_NOT_ALLOWED = "method_not_allowed"  # with "allow": the methods allowed
UNAUTHORIZED = "unauthorized"
SHUTTING_DOWN = "shutting_down"
INTERNAL_ERROR = "internal_error"
NO_DESKTOP = "no_desktop"  # the image has no desktop
DESKTOP_UNAVAILABLE = "desktop_unavailable"  # its X server failed or died
BAD_ACTION = "bad_action"  # with "index": the action's place in its batch (or null)

# What ran out, in a resource_exhausted error's "limit".
LIMIT_PIDS = "pids"
LIMIT_MEMORY = "memory"
LIMIT_PROCESSES = "processes"  # MAX_BACKGROUND
LIMIT_FILES = "files"
LIMITS = (LIMIT_PIDS, LIMIT_MEMORY, LIMIT_PROCESSES, LIMIT_FILES)

# Every error code and the HTTP status it always comes with.
ERROR_STATUS = {
    NOT_FOUND: 404,
    PERMISSION_DENIED: 403,
    IS_A_DIRECTORY: 400,
    NOT_A_DIRECTORY: 400,
    NOT_A_REGULAR_FILE: 400,
    FILE_TOO_LARGE: 413,
    BAD_PATH: 400,
    BAD_MODE: 400,
    INSUFFICIENT_STORAGE: 507,
    IO_ERROR: 500,
    EXEC_FORMAT_ERROR: 400,
    RESOURCE_EXHAUSTED: 503,
    USER_UNSUPPORTED: 400,
    NO_SUCH_USER: 400,
    NO_SUCH_PROCESS: 404,
    NOT_BACKGROUND: 409,
    OUTPUT_EVICTED: 410,
    BAD_REQUEST: 400,
    BAD_JSON: 400,
    BAD_CONTENT_LENGTH: 400,
    PAYLOAD_TOO_LARGE: 413,
    HEADERS_TOO_LARGE: 431,
    HTTP_VERSION_NOT_SUPPORTED: 505,
    METHOD_NOT_ALLOWED: 405,
    UNAUTHORIZED: 401,
    SHUTTING_DOWN: 503,
    INTERNAL_ERROR: 500,
    NO_DESKTOP: 501,
    DESKTOP_UNAVAILABLE: 503,
    BAD_ACTION: 400,
}
