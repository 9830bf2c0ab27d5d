"""The daemon's configuration, from its environment (see ``protocol``), and its TLS context."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os

from .protocol import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOST_ENV,
    LEGACY_TOKEN_ENV,
    PORT_ENV,
    SOCKET_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_SHA256_ENV,
    TTL_ENV,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

_HEX = frozenset("0123456789abcdefABCDEF")


class ConfigError(ValueError):
    """The daemon configuration (environment) is invalid."""


class Config:
    def __init__(
        self,
        token_sha256: bytes,
        host: str,
        port: int,
        ttl: float | None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        socket_path: str | None = None,
    ) -> None:
        self.token_sha256 = token_sha256
        self.host = host
        self.port = port
        self.socket_path = socket_path  # a Unix socket instead of host and port
        self.ttl = ttl
        self.tls_cert = tls_cert  # PEM text, or None for plain HTTP
        self.tls_key = tls_key

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"


def parse_token_sha256(text: str) -> bytes:
    """Decode the configured digest; never echo it (it may be a raw token set by mistake)."""
    if not text:
        raise ConfigError(f"{TOKEN_SHA256_ENV} is not set")
    if len(text) != 64 or not set(text) <= _HEX:
        raise ConfigError(
            f"{TOKEN_SHA256_ENV} must be the SHA-256 of the client's token as exactly"
            f" 64 hexadecimal digits (got {len(text)} characters"
            f"{'' if len(text) != 64 else ', not all hexadecimal'})"
        )
    digest = bytes.fromhex(text)
    if hmac.compare_digest(digest, hashlib.sha256(b"").digest()):
        raise ConfigError(f"{TOKEN_SHA256_ENV} is the SHA-256 of an empty token")
    return digest


def load_config(environ: Mapping[str, str]) -> Config:
    """Parse and validate the daemon configuration from ``environ``."""
    if LEGACY_TOKEN_ENV in environ:
        raise ConfigError(
            f"{LEGACY_TOKEN_ENV} is set, but the daemon no longer accepts the token itself:"
            f" pass its SHA-256 (64 hex digits) in {TOKEN_SHA256_ENV} instead and keep"
            f" the token out of the sandbox"
        )
    token_sha256 = parse_token_sha256(environ.get(TOKEN_SHA256_ENV, ""))
    host = environ.get(HOST_ENV, "").strip() or DEFAULT_HOST
    port_text = environ.get(PORT_ENV, "").strip()
    port = DEFAULT_PORT
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{PORT_ENV} must be an integer, got {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"{PORT_ENV} must be between 0 and 65535, got {port}")
    ttl_text = environ.get(TTL_ENV, "").strip()
    ttl: float | None = None
    if ttl_text:
        try:
            ttl = float(ttl_text)
        except ValueError:
            raise ConfigError(f"{TTL_ENV} must be a number of seconds, got {ttl_text!r}") from None
        if not (0 < ttl < float("inf")):
            raise ConfigError(f"{TTL_ENV} must be a positive finite number, got {ttl_text!r}")
    tls_cert = environ.get(TLS_CERT_ENV, "").strip() or None
    tls_key = environ.get(TLS_KEY_ENV, "").strip() or None
    if (tls_cert is None) != (tls_key is None):
        given, missing = (
            (TLS_CERT_ENV, TLS_KEY_ENV) if tls_cert is not None else (TLS_KEY_ENV, TLS_CERT_ENV)
        )
        raise ConfigError(
            f"{given} is set but {missing} is not: TLS needs both the certificate and its key"
        )
    socket_path = environ.get(SOCKET_ENV, "").strip() or None
    if socket_path is not None and not socket_path.startswith("/"):
        raise ConfigError(f"{SOCKET_ENV} must be an absolute path, got {socket_path!r}")
    return Config(token_sha256, host, port, ttl, tls_cert, tls_key, socket_path)


def _encrypted_key() -> bytes:
    """The password callback of ``load_cert_chain``: only called for an encrypted key."""
    raise ConfigError(f"{TLS_KEY_ENV} is an encrypted private key: give it unencrypted")


def _private_dir() -> str:
    """A new directory only we can read, in memory (/dev/shm) when possible."""
    import tempfile  # lazy

    if os.path.isdir("/dev/shm"):
        with contextlib.suppress(OSError):
            return tempfile.mkdtemp(prefix="commandlab-tls-", dir="/dev/shm")
    return tempfile.mkdtemp(prefix="commandlab-tls-")


def tls_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server context for the PEM certificate (chain) and unencrypted private key.

    ``load_cert_chain`` only reads files: both go to a private temporary file that is
    deleted as soon as they are loaded, whatever happens.  Errors never quote the key.
    """
    try:
        import ssl
    except ImportError:
        raise ConfigError(
            f"{TLS_CERT_ENV} and {TLS_KEY_ENV} are set, but this Python has no ssl module"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError(
            f"{TLS_CERT_ENV} must be a PEM certificate (-----BEGIN CERTIFICATE-----...)"
        )
    if "PRIVATE KEY-----" not in key_pem or "-----BEGIN" not in key_pem:
        raise ConfigError(
            f"{TLS_KEY_ENV} must be a PEM private key (-----BEGIN PRIVATE KEY-----...)"
        )
    if "ENCRYPTED" in key_pem:
        _encrypted_key()
    try:  # the certificate alone, from memory: a clearer message than load_cert_chain's
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_pem)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{TLS_CERT_ENV} does not hold a readable PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # no client certificates: the token authenticates
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    paths: list[str] = []
    try:
        directory = _private_dir()
    except OSError as exc:
        raise ConfigError(
            f"cannot create a private temporary directory for the TLS key: {exc}"
        ) from None
    try:
        for name, text in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(directory, name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
            paths.append(path)
            with open(fd, "wb") as out:
                out.write(text.encode("utf-8", "surrogateescape"))
        context.load_cert_chain(paths[0], paths[1], password=_encrypted_key)
    except ConfigError:
        raise
    except ssl.SSLError as exc:
        reason = str(exc.reason or "").upper()
        if "KEY_VALUES_MISMATCH" in reason:
            explanation = f"the private key in {TLS_KEY_ENV} does not match the certificate"
        else:
            explanation = f"{TLS_KEY_ENV} does not hold a readable unencrypted PEM private key" + (
                f" ({exc.reason})" if exc.reason else ""
            )
        raise ConfigError(f"cannot load the TLS certificate and key: {explanation}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate and key: {type(exc).__name__}"
            f"{': ' + exc.strerror if isinstance(exc, OSError) and exc.strerror else ''}"
        ) from None
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return context
