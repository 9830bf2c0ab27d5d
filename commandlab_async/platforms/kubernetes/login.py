"""Reaching and authenticating to a Kubernetes cluster: kubeconfig, EKS, AKS or GKE.

:func:`login` finds the cluster's API server, the CA that signs its certificate and a way
to authenticate, and returns a :class:`ClusterLogin` that hands out fresh
``kubernetes_asyncio`` configurations, request headers and an SSL context, keeping
short-lived tokens fresh in the background:

- ``kubernetes`` (LOCAL): a kubeconfig file and context (tokens, client certificates,
  exec plugins, OIDC), or the pod's service account when running in a cluster.
- ``aws-eks``: ``DescribeCluster`` gives the endpoint and CA; the token is a presigned
  STS ``GetCallerIdentity`` URL, made here with botocore (no aws CLI, no exec plugin).
- ``azure-aks``: ARM ``listClusterUserCredential`` gives the endpoint and CA; tokens
  come from azure-identity for the AKS server application.
- ``gcp-gke``: the GKE API gives the endpoint and CA; the token is the Google access
  token of the default credentials.

Nothing here blocks the event loop: file reads, botocore's credential chain and
google-auth's refreshes run in threads. Cloud SDKs are imported only for their platform.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, MissingExtraError, SpecError
from ..base import KubernetesPlatform
from .options import AKS_SERVER_SCOPE, KubernetesTarget

if TYPE_CHECKING:
    from kubernetes_asyncio.client import Configuration

__all__ = ["ClusterLogin", "login"]

log = logging.getLogger(__name__)

#: A token is refreshed in the background once less than this much of it is left
#: (or a quarter of its lifetime, when that is shorter).
REFRESH_AHEAD = 300.0
#: EKS accepts a presigned STS URL for 15 minutes after it was signed; like ``aws eks
#: get-token`` we count 14, so it is refreshed after about 10.
EKS_TOKEN_LIFETIME = 14 * 60.0
#: How often a token of unknown lifetime is fetched again (exec plugins without an
#: expiry, ``tokenFile``, the in-cluster service account token, which the kubelet rotates).
REREAD_EVERY = 60.0
#: Requests stop using a token this long before it expires (at most a tenth of its life).
_EXPIRY_SKEW = 10.0
#: After a failed background refresh, the next attempt waits at least this long.
_RETRY_AFTER_FAILURE = 5.0
_HTTP_TIMEOUT = 30.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_ARM_API_VERSION = "2024-02-01"
_GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_EXTRAS: dict[KubernetesPlatform, tuple[str, ...]] = {
    KubernetesPlatform.LOCAL: ("kubernetes",),
    KubernetesPlatform.AWS_EKS: ("kubernetes", "aws"),
    KubernetesPlatform.AZURE_AKS: ("kubernetes", "azure"),
    KubernetesPlatform.GCP_GKE: ("kubernetes", "gcp"),
}

# The clock tokens are timed with (tests move it forward instead of waiting).
_monotonic = time.monotonic


# ----------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    value: str
    scheme: str
    refresh_at: float | None
    """Monotonic time from which a background refresh starts (None: never)."""
    stale_at: float | None
    """Monotonic time from which requests wait for a new token (None: never)."""


def _token(
    value: str, *, lifetime: float | None, reread: float | None = None, scheme: str = "Bearer"
) -> _Token:
    """A token valid ``lifetime`` more seconds (None: unknown, never expires here);
    ``reread``: fetch it again after that long anyway, without ever waiting for it."""
    now = _monotonic()
    if lifetime is None:
        refresh = None if reread is None else now + reread
        return _Token(value, scheme, refresh, None)
    lifetime = max(lifetime, 0.0)
    ahead = min(REFRESH_AHEAD, lifetime / 4)
    skew = min(_EXPIRY_SKEW, lifetime / 10)
    return _Token(value, scheme, now + lifetime - ahead, now + lifetime - skew)


class _Tokens:
    """The current token, refreshed ahead of expiry by one task that every caller shares."""

    def __init__(self, fetch: Callable[[], Awaitable[_Token]], first: _Token) -> None:
        self._fetch = fetch
        self._token = first
        self._task: asyncio.Task[_Token] | None = None
        self._retry_at = 0.0
        self.refreshes = 0

    async def get(self) -> _Token:
        token = self._token
        now = _monotonic()
        if token.stale_at is not None and now >= token.stale_at:
            # Expired: nothing to send until a new one arrives.
            return await asyncio.shield(self._start())
        if (
            token.refresh_at is not None
            and now >= token.refresh_at
            and self._task is None
            and now >= self._retry_at
        ):
            self._start()  # in the background: this request still uses the current one
        return token

    def _start(self) -> asyncio.Task[_Token]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(_log_failure)
        return self._task

    async def _run(self) -> _Token:
        try:
            self.refreshes += 1
            token = await self._fetch()
        except Exception:
            self._retry_at = _monotonic() + _RETRY_AFTER_FAILURE
            raise
        finally:
            self._task = None
        self._token = token
        return token

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _log_failure(task: asyncio.Task[_Token]) -> None:
    # Retrieved here so a failed background refresh is never "never retrieved"; a caller
    # that needs the token sees the error itself.
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster token refresh failed: %s", task.exception())


# ------------------------------------------------------------------------------- the login


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
        self._tokens: _Tokens | None = None
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

    async def _use_tokens(self, fetch: Callable[[], Awaitable[_Token]]) -> None:
        self._tokens = _Tokens(fetch, await fetch())

    def _make_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, keyfile=self.key_file)
        if not self.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


async def login(target: KubernetesTarget) -> ClusterLogin:
    """Log in to the cluster ``target`` names; the caller closes the result.

    Raises :class:`MissingExtraError` when an SDK the platform needs is missing,
    :class:`SpecError` for a kubeconfig or context that does not exist, and
    :class:`BackendError` when the cloud refuses or fails (``transient`` for
    throttling, 5xx and connection errors, which are worth retrying).
    """
    platform = KubernetesPlatform(target.platform)
    steps = {
        KubernetesPlatform.LOCAL: _local,
        KubernetesPlatform.AWS_EKS: _eks,
        KubernetesPlatform.AZURE_AKS: _aks,
        KubernetesPlatform.GCP_GKE: _gke,
    }
    result = ClusterLogin(platform)
    try:
        try:
            import kubernetes_asyncio.client  # noqa: F401  (configuration() needs it)
        except ImportError as exc:
            raise _missing(platform) from exc
        await steps[platform](target, result)
        await result._finish()
    except BaseException:
        await asyncio.shield(result.close())
        raise
    return result


# ------------------------------------------------------------------------------- helpers


def _missing(platform: KubernetesPlatform) -> MissingExtraError:
    return MissingExtraError(str(platform), _EXTRAS[platform])


def _error(
    target: KubernetesTarget,
    message: str,
    *,
    code: int | str | None = None,
    transient: bool | None = None,
) -> BackendError:
    if transient is None:
        transient = isinstance(code, int) and code in _TRANSIENT_STATUS
    return BackendError(
        message, sandbox=None, platform=str(target.platform), transient=transient, code=code
    )


def _required(value: str | None, name: str, target: KubernetesTarget) -> str:
    if not value:
        raise SpecError(name, f"is required on platform {str(target.platform)!r}")
    return value


def _b64(data: str, what: str, target: KubernetesTarget) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _error(target, f"{what} is not base64", code="InvalidResponse") from exc


def _seconds_until(expiry: datetime.datetime) -> float:
    if expiry.tzinfo is None:  # google-auth's expiries are naive UTC
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()


async def _http_session(result: ClusterLogin) -> Any:
    """An aiohttp session trusting the system store as it is now (``SSL_CERT_FILE`` is
    read when the context is made, so in a thread), closed with the login."""
    import aiohttp

    context = await asyncio.to_thread(ssl.create_default_context)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT),
    )
    result._closers.append(session.close)
    return session


async def _fetch_json(
    session: Any,
    method: str,
    url: str,
    headers: dict[str, str],
    target: KubernetesTarget,
    explain: Callable[[int, str], str],
) -> Any:
    """One JSON request to a cloud API, its failures as :class:`BackendError`."""
    import aiohttp

    try:
        async with session.request(method, url, headers=headers) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _error(target, f"{method} {url} failed: {exc!r}", transient=True) from exc
    if status >= 300:
        raise _error(target, explain(status, _cloud_message(text)), code=status)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _error(target, f"{url} answered no JSON", code="InvalidResponse") from exc


def _cloud_message(text: str) -> str:
    """The message of an ARM or Google error body (``{"error": {"message": ...}}``)."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:300]
    if isinstance(error, dict):
        code = error.get("code") or error.get("status")
        return f"{code}: {error.get('message')}" if code else str(error.get("message"))
    return text[:300]


# ------------------------------------------------------------------------- LOCAL (kubeconfig)


async def _local(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        from kubernetes_asyncio.config import incluster_config, kube_config
    except ImportError as exc:
        raise _missing(KubernetesPlatform.LOCAL) from exc

    # Read now, not when kubernetes_asyncio was imported (it reads KUBECONFIG then).
    paths = target.kubeconfig or os.environ.get("KUBECONFIG") or None
    if paths is None:
        default = Path.home() / ".kube" / "config"
        if await asyncio.to_thread(default.is_file):
            paths = str(default)
        elif os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME):
            await _in_cluster(target, result)
            return
        else:
            raise SpecError(
                "kubeconfig",
                "no cluster to log in to: set KUBECONFIG or KubeconfigOptions(kubeconfig=...) "
                f"({default} does not exist, and this process does not run in a pod)",
            )
    loader = await asyncio.to_thread(_kubeconfig_loader, kube_config, paths, target.cluster)
    config, lifetime = await _load_kubeconfig(loader, target)
    first = _kubeconfig_token(loader, config, lifetime)
    if first is not None:  # else the client certificate authenticates (kind, minikube)

        async def fetch() -> _Token:
            again, lifetime = await _load_kubeconfig(loader, target)
            token = _kubeconfig_token(loader, again, lifetime)
            if token is None:
                raise _error(target, "the kubeconfig's user gave no token", code="NoToken")
            return token

        result._tokens = _Tokens(fetch, first)
    result.host = str(config.host)
    result.ca_file = config.ssl_ca_cert
    result.verify_ssl = bool(config.verify_ssl)
    result.cert_file = config.cert_file
    result.key_file = config.key_file
    result.tls_server_name = config.tls_server_name
    result.proxy = config.proxy


def _kubeconfig_loader(kube_config: Any, paths: str, context: str | None) -> Any:
    """Read and merge the kubeconfig file(s), pick the context (a worker thread)."""
    import yaml  # kubernetes_asyncio's dependency

    names = [p for p in paths.split(kube_config.ENV_KUBECONFIG_PATH_SEPARATOR) if p]
    if not any(os.path.isfile(os.path.expanduser(p)) for p in names):
        raise SpecError("kubeconfig", f"{paths} does not exist")
    try:
        merged = kube_config.KubeConfigMerger(paths).config
    except (yaml.YAMLError, OSError, AttributeError, TypeError) as exc:
        raise SpecError("kubeconfig", f"{paths} is not a valid kubeconfig: {exc}") from exc
    contexts = [str(c["name"]) for c in (merged.value.get("contexts") or [])]
    wanted = context or merged.value.get("current-context")
    if not wanted:
        raise SpecError("context", f"{paths} names no current-context: choose one of {contexts}")
    if wanted not in contexts:
        raise SpecError("context", f"{wanted!r} is not a context of {paths} (it has {contexts})")
    try:
        # No config_persister: refreshed tokens are never written back to the user's file.
        return kube_config.KubeConfigLoader(
            config_dict=merged, config_base_path=None, active_context=wanted
        )
    except (kube_config.ConfigException, KeyError, AssertionError) as exc:
        raise SpecError("kubeconfig", f"context {wanted!r} of {paths}: {exc}") from exc


async def _load_kubeconfig(loader: Any, target: KubernetesTarget) -> tuple[Any, float | None]:
    """Authenticate as the kubeconfig's user says: (configuration, seconds an exec
    plugin's token is valid or None).

    What ``KubeConfigLoader.load_and_set`` does, split so that nothing blocks the loop:
    an exec plugin runs here (kubernetes_asyncio's runner: a subprocess, awaited), and
    the rest, which reads token files and writes the CA and key data to temporary
    files, in a thread.
    """
    from kubernetes_asyncio.config import ConfigException
    from kubernetes_asyncio.config.exec_provider import ExecProvider

    user = loader._user  # the context's user section (a ConfigNode), None without one
    status = None
    # The loader's own order: auth-provider (oidc, gcp) first, then exec, then tokens.
    if user is not None and "exec" in user and loader.provider is None:
        try:
            status = await ExecProvider(user["exec"]).run()
        except (ConfigException, OSError) as exc:
            command = user["exec"].safe_get("command")
            raise _error(
                target,
                f"the kubeconfig's exec plugin ({command}) failed: {exc}",
                code="ExecPluginFailed",
            ) from exc
    return await asyncio.to_thread(_load_kubeconfig_files, loader, status, target)


def _load_kubeconfig_files(
    loader: Any, status: Any, target: KubernetesTarget
) -> tuple[Any, float | None]:
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException
    from kubernetes_asyncio.config.dateutil import parse_rfc3339
    from kubernetes_asyncio.config.kube_config import FileOrData

    config = Configuration()
    lifetime = None
    try:
        if status is not None:
            if "token" in status:
                loader.token = f"Bearer {status['token']}"
                if status.get("expirationTimestamp"):
                    lifetime = _seconds_until(parse_rfc3339(status["expirationTimestamp"]))
            elif "clientCertificateData" in status and "clientKeyData" in status:
                for attr, key in (
                    ("cert_file", "clientCertificateData"),
                    ("key_file", "clientKeyData"),
                ):
                    data = FileOrData(status, None, data_key_name=key, base64_file_content=False)
                    setattr(loader, attr, data.as_file())
            else:
                raise _error(
                    target,
                    "the kubeconfig's exec plugin gave neither a token nor a client certificate",
                    code="ExecPluginFailed",
                )
        elif loader.provider in ("oidc", "gcp"):
            # Rare (gcp is gone since Kubernetes 1.26): their refreshes await aiohttp and
            # write temporary files, so they get this thread's own event loop.
            asyncio.run(loader._load_authentication())
        elif loader._user is not None and not loader._load_user_token():
            loader._load_user_pass_token()
        loader._load_cluster_info()
        loader._set_config(config)
    except ConfigException as exc:
        raise SpecError("kubeconfig", str(exc)) from exc
    except OSError as exc:
        raise SpecError("kubeconfig", str(exc)) from exc
    return config, lifetime


def _kubeconfig_token(loader: Any, config: Any, lifetime: float | None) -> _Token | None:
    value = config.api_key.get("BearerToken")
    if not value:
        return None
    scheme, _, credential = str(value).partition(" ")
    reread = None
    user = loader._user
    if lifetime is not None:
        pass  # an exec plugin said when its token expires
    elif user is None:
        pass
    elif "exec" in user and loader.provider is None:
        reread = 10 * REREAD_EVERY  # no expiry given: fetched again now and then
    elif loader.provider in ("oidc", "gcp"):
        exp = _jwt_expiry(credential)
        lifetime, reread = (exp - time.time() if exp else None), REREAD_EVERY
    elif "tokenFile" in user and "token" not in user:
        reread = REREAD_EVERY  # a projected token the kubelet rotates
    return _token(credential, lifetime=lifetime, reread=reread, scheme=scheme)


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


async def _in_cluster(target: KubernetesTarget, result: ClusterLogin) -> None:
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException, incluster_config

    # Read when called, so a test (or a sidecar layout) can point them elsewhere.
    loader = incluster_config.InClusterConfigLoader(
        token_filename=incluster_config.SERVICE_TOKEN_FILENAME,
        cert_filename=incluster_config.SERVICE_CERT_FILENAME,
        try_refresh_token=False,
    )

    def load() -> Any:
        config = Configuration()
        loader.load_and_set(config)
        return config

    async def fetch() -> _Token:
        try:
            config = await asyncio.to_thread(load)
        except ConfigException as exc:
            raise SpecError("kubeconfig", f"in-cluster service account: {exc}") from exc
        result.host, result.ca_file = str(config.host), config.ssl_ca_cert
        scheme, _, value = str(config.api_key["BearerToken"]).partition(" ")
        # The kubelet rotates the projected token file: read it again every minute.
        return _token(value, lifetime=None, reread=REREAD_EVERY, scheme=scheme)

    await result._use_tokens(fetch)


# ----------------------------------------------------------------------------------- EKS


async def _eks(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        import aioboto3
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise _missing(KubernetesPlatform.AWS_EKS) from exc
    cluster = _required(target.cluster, "cluster", target)
    # botocore's credential chain reads files and may call IMDS, SSO or STS: all of it in
    # a thread, with the plain (sync) botocore session. The same credentials sign the
    # tokens and describe the cluster.
    core = await asyncio.to_thread(botocore.session.Session)
    try:
        region = target.region or await asyncio.to_thread(core.get_config_variable, "region")
        credentials = await asyncio.to_thread(core.get_credentials)
    except BotoCoreError as exc:
        raise _error(target, f"AWS configuration: {exc}", code=type(exc).__name__) from exc
    if not region:
        raise SpecError("region", "is required on EKS: set spec.region or AWS_DEFAULT_REGION")
    if credentials is None:
        raise _error(
            target,
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run with an IAM role (instance profile, task role, "
            "EKS pod identity)",
            code="NoCredentials",
        )

    async def fetch() -> _Token:
        try:
            value = await asyncio.to_thread(_eks_token, credentials, region, cluster)
        except BotoCoreError as exc:
            raise _error(target, f"AWS credentials: {exc}", code=type(exc).__name__) from exc
        return _token(value, lifetime=EKS_TOKEN_LIFETIME)

    await result._use_tokens(fetch)

    frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
    session = await asyncio.to_thread(aioboto3.Session)
    await asyncio.to_thread(_warm_eks, session)
    try:
        async with session.client(
            "eks",
            region_name=region,
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
            # One attempt: the caller retries what is transient, with its own limiter.
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        ) as eks:
            described = (await eks.describe_cluster(name=cluster))["cluster"]
    except ClientError as exc:
        raise _eks_error(target, exc, cluster, region) from exc
    except BotoCoreError as exc:
        # Connection failures, timeouts: worth another try.
        raise _error(target, f"EKS DescribeCluster: {exc}", transient=True) from exc
    status = described.get("status")
    endpoint = described.get("endpoint")
    ca = (described.get("certificateAuthority") or {}).get("data")
    if not endpoint or not ca:
        raise _error(
            target,
            f"EKS cluster {cluster!r} has no endpoint yet (status {status})",
            code=str(status),
            transient=status in ("CREATING", "UPDATING"),
        )
    result.host = str(endpoint).rstrip("/")
    await result._use_ca(_b64(ca, "certificateAuthority.data", target))


def _sts_url(region: str) -> str:
    # What EKS verifies: the regional STS endpoint of the cluster's partition, whatever
    # AWS_ENDPOINT_URL_STS says (that one is for this process's own STS calls).
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}/?Action=GetCallerIdentity&Version=2011-06-15"


def _eks_token(credentials: Any, region: str, cluster: str) -> str:
    """``k8s-aws-v1.`` + the presigned GetCallerIdentity URL, base64url without padding."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    frozen = credentials.get_frozen_credentials()  # refreshes expiring role credentials
    request = AWSRequest(method="GET", url=_sts_url(region), headers={"x-k8s-aws-id": cluster})
    SigV4QueryAuth(frozen, "sts", region, expires=60).add_auth(request)
    url = request.prepare().url
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    return f"k8s-aws-v1.{encoded}"


def _warm_eks(session: Any) -> None:
    """Load what making an EKS client reads from disk, before the event loop needs it."""
    core = session._session
    core.get_scoped_config()
    for name in ("endpoint_resolver", "default_config_resolver", "monitor"):
        core._get_internal_component(name)
    loader = core.get_component("data_loader")
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        with contextlib.suppress(Exception):  # not every service ships every kind
            loader.load_service_model("eks", kind, api_version=None)
    for data in ("_retry", "partitions", "sdk-default-configuration"):
        loader.load_data(data)


def _eks_error(target: KubernetesTarget, exc: Any, cluster: str, region: str) -> BackendError:
    error = exc.response.get("Error", {})
    code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = error.get("Message") or str(exc)
    if code == "ResourceNotFoundException" or status == 404:
        text = (
            f"EKS cluster {cluster!r} not found in {region}: check the name and region "
            f"(aws eks list-clusters --region {region}) [{message}]"
        )
    elif status in (401, 403):
        text = (
            f"not allowed to describe EKS cluster {cluster!r}: the AWS identity needs "
            f"eks:DescribeCluster on it [{message}]"
        )
    else:
        text = f"EKS DescribeCluster {cluster!r} failed: {message}"
    throttled = code in ("ThrottlingException", "TooManyRequestsException")
    return _error(target, text, code=code, transient=throttled or status in _TRANSIENT_STATUS)


# ----------------------------------------------------------------------------------- AKS


async def _aks(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        from azure.core.pipeline.transport import AioHttpTransport
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise _missing(KubernetesPlatform.AZURE_AKS) from exc
    cluster = _required(target.cluster, "cluster", target)
    group = _required(target.resource_group, "resource_group", target)
    subscription = target.subscription_id
    if not subscription:
        raise SpecError(
            "subscription_id",
            "is required on AKS: set AksOptions(subscription_id=...) or AZURE_SUBSCRIPTION_ID",
        )
    arm = (target.api_endpoint or "https://management.azure.com").rstrip("/")
    session = await _http_session(result)
    credential = target.credential
    if credential is None:
        transport = AioHttpTransport(session=session, session_owner=False)
        # Reads the environment and token caches from disk: in a thread.
        credential = await asyncio.to_thread(lambda: DefaultAzureCredential(transport=transport))
        result._closers.append(credential.close)

    async def get_token(scope: str) -> Any:
        try:
            return await credential.get_token(scope)
        except ClientAuthenticationError as exc:
            status = getattr(exc, "status_code", None)
            raise _error(
                target,
                f"no Azure token for {scope}: sign in (az login), or set AZURE_TENANT_ID, "
                f"AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or use a managed identity "
                f"[{exc.message}]",
                code=status or type(exc).__name__,
            ) from exc
        except ServiceRequestError as exc:
            raise _error(target, f"Azure sign-in failed: {exc}", transient=True) from exc

    async def fetch() -> _Token:
        access = await get_token(AKS_SERVER_SCOPE)
        return _token(access.token, lifetime=access.expires_on - time.time())

    arm_token = await get_token(f"{arm}/.default")
    path = (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
        f"Microsoft.ContainerService/managedClusters/{cluster}/listClusterUserCredential"
    )
    url = f"{arm}{urllib.parse.quote(path)}?api-version={_ARM_API_VERSION}"

    def explain(status: int, message: str) -> str:
        if status == 404:
            return (
                f"AKS cluster {cluster!r} not found in resource group {group!r} of "
                f"subscription {subscription} [{message}]"
            )
        if status in (401, 403):
            return (
                f"not allowed to list the user credentials of AKS cluster {cluster!r}: the "
                "identity needs the 'Azure Kubernetes Service Cluster User Role' "
                f"(listClusterUserCredential/action) [{message}]"
            )
        return f"ARM listClusterUserCredential of {cluster!r} failed: HTTP {status} [{message}]"

    answer = await _fetch_json(
        session, "POST", url, {"Authorization": f"Bearer {arm_token.token}"}, target, explain
    )
    server, ca = _aks_cluster(answer, target)
    result.host = server.rstrip("/")
    await result._use_ca(ca)
    await result._use_tokens(fetch)


def _aks_cluster(answer: Any, target: KubernetesTarget) -> tuple[str, bytes]:
    """The server and CA of the kubeconfig ARM returned (its exec-plugin user is ignored:
    our tokens come from azure-identity)."""
    import yaml

    try:
        encoded = answer["kubeconfigs"][0]["value"]
        kubeconfig = yaml.safe_load(_b64(encoded, "kubeconfigs[0].value", target))
        clusters = {c["name"]: c["cluster"] for c in kubeconfig["clusters"]}
        current = kubeconfig.get("current-context")
        contexts = {c["name"]: c["context"] for c in kubeconfig.get("contexts") or []}
        name = contexts[current]["cluster"] if current in contexts else next(iter(clusters))
        cluster = clusters[name]
        return str(cluster["server"]), _b64(
            cluster["certificate-authority-data"], "certificate-authority-data", target
        )
    except (KeyError, IndexError, TypeError, StopIteration, yaml.YAMLError) as exc:
        raise _error(
            target, f"listClusterUserCredential answered no usable kubeconfig: {exc!r}",
            code="InvalidResponse",
        ) from exc  # fmt: skip


# ----------------------------------------------------------------------------------- GKE


async def _gke(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        import google.auth
        import google.auth.transport.requests
        import requests
        from google.auth import exceptions as auth_errors
    except ImportError as exc:
        raise _missing(KubernetesPlatform.GCP_GKE) from exc
    cluster = _required(target.cluster, "cluster", target)
    location = _required(target.region, "region", target)
    try:
        # Reads GOOGLE_APPLICATION_CREDENTIALS or gcloud's files, may probe the metadata
        # server: all blocking, so in a thread.
        credentials, adc_project = await asyncio.to_thread(
            google.auth.default, scopes=[_GOOGLE_SCOPE]
        )
    except auth_errors.DefaultCredentialsError as exc:
        raise _error(
            target,
            "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run "
            f"`gcloud auth application-default login`, or run on Google Cloud [{exc}]",
            code="DefaultCredentialsError",
        ) from exc
    project = target.project_id or adc_project
    if not project:
        raise SpecError("project_id", "is required on GKE (the credentials name no project)")
    http = requests.Session()
    result._closers.append(lambda: asyncio.to_thread(http.close))
    request = google.auth.transport.requests.Request(session=http)

    def refresh() -> tuple[str, Any]:
        credentials.refresh(request)
        return str(credentials.token), credentials.expiry

    async def fetch() -> _Token:
        try:
            value, expiry = await asyncio.to_thread(refresh)
        except auth_errors.TransportError as exc:
            raise _error(target, f"Google token refresh failed: {exc}", transient=True) from exc
        except auth_errors.RefreshError as exc:
            raise _error(
                target,
                f"Google token refresh failed: {exc}",
                code="RefreshError",
                transient=bool(getattr(exc, "retryable", False)),
            ) from exc
        lifetime = _seconds_until(expiry) if isinstance(expiry, datetime.datetime) else None
        return _token(value, lifetime=lifetime, reread=None if lifetime else 30 * 60.0)

    await result._use_tokens(fetch)
    headers = await result.headers()
    if getattr(credentials, "quota_project_id", None):
        headers["x-goog-user-project"] = str(credentials.quota_project_id)
    api = (target.api_endpoint or "https://container.googleapis.com").rstrip("/")
    name = f"projects/{project}/locations/{location}/clusters/{cluster}"
    url = f"{api}/v1/{urllib.parse.quote(name)}"

    def explain(status: int, message: str) -> str:
        if status == 404:
            return f"GKE cluster {name} not found [{message}]"
        if status in (401, 403):
            return (
                f"not allowed to get GKE cluster {name}: the identity needs "
                f"container.clusters.get (roles/container.clusterViewer) [{message}]"
            )
        return f"GKE GetCluster {name} failed: HTTP {status} [{message}]"

    session = await _http_session(result)
    described = await _fetch_json(session, "GET", url, headers, target, explain)
    endpoint = str(described.get("endpoint") or "")
    ca = (described.get("masterAuth") or {}).get("clusterCaCertificate")
    if not endpoint or not ca:
        raise _error(
            target,
            f"GKE cluster {name} has no endpoint yet (status {described.get('status')})",
            code=str(described.get("status")),
            transient=described.get("status") in ("PROVISIONING", "RECONCILING"),
        )
    # The API gives a bare address ("34.1.2.3", or host:port), not a URL.
    result.host = endpoint.rstrip("/") if "://" in endpoint else f"https://{endpoint}"
    await result._use_ca(_b64(ca, "masterAuth.clusterCaCertificate", target))
