"""What every login shares: the :class:`ClusterLogin` it fills in, and its errors.

A login step (:mod:`.kubeconfig`, :mod:`.eks`, :mod:`.aks`, :mod:`.gke`) sets the API
server's ``host``, its CA (:meth:`ClusterLogin._use_ca`) and the client's credentials (a
client certificate, or :meth:`ClusterLogin._use_tokens`); :func:`.login` then builds the
SSL context.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ....errors import BackendError, MissingExtraError, SpecError
from ... import REGISTRY
from ...base import KubernetesPlatform
from ...driver import TRANSIENT_STATUS
from ..options import KubernetesTarget
from .tokens import Token, Tokens

if TYPE_CHECKING:
    from kubernetes_asyncio.client import Configuration

__all__ = ["ClusterLogin", "b64", "error", "missing", "required"]

log = logging.getLogger(__name__)


class ClusterLogin:
    """How to reach and authenticate to one cluster; tokens refreshed before they expire.

    Made by :func:`login`. ``host`` is the API server's base URL (``https://...``).
    Close it with :meth:`close` when the driver is done: it stops token refreshes, closes
    the SDK clients it made and deletes its temporary files (the CA file of
    :meth:`configuration` among them).
    """

    host: str
    """The API server's base URL, e.g. ``https://10.0.0.1:6443``."""

    def __init__(self, platform: KubernetesPlatform) -> None:
        self.platform = platform
        self.host = ""
        self.ca_file: str | None = None
        """PEM file of the CA the API server's certificate is checked against (None:
        the system store)."""
        self.verify_ssl = True
        self.cert_file: str | None = None
        self.key_file: str | None = None
        self.tls_server_name: str | None = None
        """Name to check the API server's certificate against, when not the host's."""
        self.proxy: str | None = None
        self._tokens: Tokens | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._temp_dir: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        auth = "token" if self._tokens else "client certificate" if self.cert_file else "none"
        return f"<ClusterLogin {self.platform} {self.host} auth={auth}>"

    @property
    def refreshes(self) -> int:
        """How many times the token was fetched again after the first (diagnostics)."""
        return self._tokens.refreshes if self._tokens else 0

    async def configuration(self) -> Configuration:
        """A fresh configuration for a ``kubernetes_asyncio.client.ApiClient``.

        With token authentication its ``refresh_api_key_hook`` puts the current token in
        before every request. ``ssl_ca_cert`` is a file that lives until :meth:`close`.
        """
        from kubernetes_asyncio.client import Configuration

        config = Configuration(host=self.host)
        config.ssl_ca_cert = self.ca_file
        config.verify_ssl = self.verify_ssl
        config.cert_file = self.cert_file
        config.key_file = self.key_file
        config.tls_server_name = self.tls_server_name
        config.proxy = self.proxy
        if self._tokens is not None:
            token = await self._tokens.get()
            config.api_key = {"BearerToken": token.value}
            config.api_key_prefix = {"BearerToken": token.scheme}
            config.refresh_api_key_hook = self._put_token
        return config

    async def _put_token(self, config: Configuration) -> None:
        assert self._tokens is not None
        token = await self._tokens.get()
        config.api_key["BearerToken"] = token.value
        config.api_key_prefix["BearerToken"] = token.scheme

    async def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` with the current token, or ``{}`` when the
        cluster authenticates the client certificate. Cheap: the token is cached."""
        if self._tokens is None:
            return {}
        token = await self._tokens.get()
        return {"Authorization": f"{token.scheme} {token.value}"}

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the cluster's CA (or the system store) and carries the client
        certificate, if any: for requests of one's own to the API server (aiohttp's
        ``ssl=``). Pass ``server_hostname=login.tls_server_name`` when that is set."""
        assert self._ssl is not None, "login() makes it"
        return self._ssl

    async def close(self) -> None:
        """Stop refreshing, close what this login opened, delete its temporary files."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._tokens is not None:
                await self._tokens.close()
            while self._closers:
                closer = self._closers.pop()
                try:
                    await closer()
                except Exception as exc:  # one failure must not leak the rest
                    log.warning("closing the cluster login: %s", exc)
        finally:
            if self._temp_dir is not None:
                await asyncio.to_thread(shutil.rmtree, self._temp_dir, True)
                self._temp_dir = None

    # ---------------------------------------------------------------- used while logging in

    async def _write_temp(self, name: str, content: bytes) -> str:
        def write() -> str:
            if self._temp_dir is None:
                self._temp_dir = tempfile.mkdtemp(prefix="commandlab-k8s-")  # mode 0700
            path = Path(self._temp_dir, name)
            path.write_bytes(content)
            return str(path)

        return await asyncio.to_thread(write)

    async def _use_ca(self, pem: bytes) -> None:
        self.ca_file = await self._write_temp("ca.pem", pem)

    async def _finish(self) -> None:
        """Build the SSL context (it reads the CA and key files: in a thread)."""
        self._ssl = await asyncio.to_thread(self._make_ssl)

    async def _use_tokens(self, fetch: Callable[[], Awaitable[Token]]) -> None:
        self._tokens = Tokens(fetch, await fetch())

    def _make_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, keyfile=self.key_file)
        if not self.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def missing(platform: KubernetesPlatform) -> MissingExtraError:
    """The error for an SDK of ``platform`` that is not installed (naming the extras the
    registry lists for it)."""
    return MissingExtraError(str(platform), REGISTRY[platform].extras)


def error(
    target: KubernetesTarget,
    message: str,
    *,
    code: int | str | None = None,
    transient: bool | None = None,
) -> BackendError:
    """A failure of the cloud or the cluster (``transient`` by default for an HTTP
    ``code`` worth retrying)."""
    if transient is None:
        transient = isinstance(code, int) and code in TRANSIENT_STATUS
    return BackendError(
        message, sandbox=None, platform=str(target.platform), transient=transient, code=code
    )


def required(value: str | None, name: str, target: KubernetesTarget) -> str:
    """``value``, or SpecError when the target left the field ``name`` unset."""
    if not value:
        raise SpecError(name, f"is required on platform {str(target.platform)!r}")
    return value


def b64(data: str, what: str, target: KubernetesTarget) -> bytes:
    """``data`` (a field ``what`` of the cloud's answer) decoded from base64."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise error(target, f"{what} is not base64", code="InvalidResponse") from exc
