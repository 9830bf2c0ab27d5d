"""Start the daemon: configuration from the environment, then serve until a signal or
the TTL (``python3 -I -S daemon.pyz``, or ``python -m commandlab_async.daemon``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from .config import ConfigError, load_config, tls_context
from .desktop import start_desktop
from .http import log
from .processes import Registry, oom_score_adjustable
from .protocol import LISTENING, SERVING_TLS, TLS_CERT_ENV, TLS_KEY_ENV, TOKEN_SHA256_ENV
from .server import Server

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def make_undumpable() -> None:
    """Best effort: keep commands of the same user out of our memory (tokens pass through it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (ImportError, OSError, AttributeError):
        pass


def _fail(message: str, status: int) -> NoReturn:
    print(f"commandlab daemon: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _exit_now(status: int) -> NoReturn:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


def main() -> None:
    """Start the daemon from its environment and serve until a signal or the TTL."""
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        _fail(str(exc), 2)
    oom_adjust = oom_score_adjustable()  # before make_undumpable: see there
    make_undumpable()
    # Commands do not inherit the digest (a digest cannot be presented as a token anyway),
    # nor the TLS key (nor its certificate).
    os.environ.pop(TOKEN_SHA256_ENV, None)
    os.environ.pop(TLS_CERT_ENV, None)
    os.environ.pop(TLS_KEY_ENV, None)
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            tls = tls_context(config.tls_cert, config.tls_key)
        except ConfigError as exc:
            _fail(str(exc), 2)
        config.tls_cert = config.tls_key = None  # loaded: keep no copy around
    umask = os.umask(0)
    os.umask(umask)
    # Small thread stacks: a full worker pool must not cost the sandbox much memory.
    with contextlib.suppress(ValueError, RuntimeError):
        threading.stack_size(512 * 1024)
    registry = Registry(oom_adjust=oom_adjust)
    # The X server comes up before the daemon listens: a ready daemon has a ready desktop
    # (and commands get its DISPLAY).
    desktop = start_desktop(os.environ, os.environ)
    try:
        server = Server(config, registry, os.environ, umask, os.getcwd(), tls, desktop)
    except OSError as exc:
        _fail(f"cannot listen on {config.address}: {exc}", 1)

    def stop(reason: str) -> NoReturn:
        killed = registry.kill_all()
        if desktop is not None:
            desktop.stop()
        log(f"{reason}; killed {killed} process group(s); exiting")
        _exit_now(0)

    signal.signal(signal.SIGTERM, lambda signum, frame: stop(f"received signal {signum}"))
    signal.signal(signal.SIGINT, lambda signum, frame: stop(f"received signal {signum}"))
    # Tools parse the port at the end of this line: nothing may follow it.
    where = config.address if config.socket_path else f"{config.host}:{server.port}"
    print(f"{LISTENING}{where}", file=sys.stderr, flush=True)
    if tls is not None:
        print(SERVING_TLS, file=sys.stderr, flush=True)
    server.serve_forever(on_expiry=lambda: stop(f"ttl of {config.ttl}s expired"))
