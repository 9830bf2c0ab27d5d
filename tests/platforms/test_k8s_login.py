"""Cluster authentication: kubeconfig, in-cluster, EKS, AKS and GKE, end to end.

Each login is checked the way the driver uses it: kubernetes_asyncio's ``VersionApi``
through :meth:`ClusterLogin.configuration` against a local HTTPS server standing in for
the API server (its own CA, as a cluster's), which checks tokens with the verifiers of
:mod:`commandlab_async.emulators.clusters`, and the login's own headers and SSL context with
aiohttp. The clouds are :class:`~commandlab_async.emulators.clusters.ClusterFakes` (EKS, ARM +
Entra, GKE + Google OAuth2) and moto's STS; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, VersionApi

from commandlab_async.emulators._https import Listener, LocalCA
from commandlab_async.emulators.clusters import AKS_SERVER_APP, ClusterFakes, verify_eks_token
from commandlab_async.emulators.faults import Rule
from commandlab_async.errors import BackendError, MissingExtraError, SpecError
from commandlab_async.platforms.base import KubernetesPlatform
from commandlab_async.platforms.kubernetes.logins import ClusterLogin, login
from commandlab_async.platforms.kubernetes.logins import tokens as tokens_module
from commandlab_async.platforms.kubernetes.options import AKS_SERVER_SCOPE, KubernetesTarget
from tests.platforms.k8s_support import REGION

pytestmark = pytest.mark.unit

RESOURCE_GROUP = "evals-rg"
PROJECT = "sbx-test"
LOCATION = "us-central1"
VERSION = {
    "major": "1",
    "minor": "31",
    "emulationMajor": "1",
    "emulationMinor": "31",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "30",
    "gitVersion": "v1.31.4",
    "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
    "gitTreeState": "clean",
    "buildDate": "2024-12-10T18:37:39Z",
    "goVersion": "go1.22.9",
    "compiler": "gc",
    "platform": "linux/amd64",
}
Verify = Callable[[str], Awaitable[str | None]]


# ------------------------------------------------------------------------ the stand-ins


class ApiServer:
    """A local HTTPS server standing in for a Kubernetes API server: ``/version`` only.

    It has its own CA (as a cluster has), records each request's ``Authorization`` and
    client certificate, and with ``verify`` refuses tokens that do not check out (401
    ``Status``, as the API server does).
    """

    def __init__(self, verify: Verify | None = None, *, client_ca: LocalCA | None = None):
        self.verify = verify
        self.client_ca = client_ca
        self.ca = LocalCA()
        self.ca_pem = self.ca.pem
        self.url = ""
        self.seen: list[dict[str, Any]] = []
        self._listener = Listener(self._serve, shutdown_timeout=0.5)

    async def start(self) -> ApiServer:
        context = self.ca.server_context()
        if self.client_ca is not None:  # a cluster's users have a CA of their own
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=self.client_ca.pem.decode())
        self.url = f"https://127.0.0.1:{await self._listener.start(context)}"
        return self

    async def close(self) -> None:
        await self._listener.close()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.rstrip("/") == "/version":
            return await self._version(request)
        raise web.HTTPNotFound()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def tokens(self) -> list[str]:
        return [s["authorization"].partition(" ")[2] for s in self.seen if s["authorization"]]

    async def _version(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        authorization = request.headers.get("Authorization")
        seen: dict[str, Any] = {"authorization": authorization, "cn": subject.get("commonName")}
        self.seen.append(seen)
        if self.verify is not None:
            scheme, _, token = (authorization or "").partition(" ")
            seen["user"] = await self.verify(token) if scheme == "Bearer" else None
            if seen["user"] is None:
                return web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "Unauthorized",
                        "reason": "Unauthorized",
                        "code": 401,
                    },
                    status=401,
                )
        return web.json_response(VERSION)


@pytest.fixture
async def api_server() -> AsyncIterator[Callable[..., Awaitable[ApiServer]]]:
    servers: list[ApiServer] = []

    async def make(verify: Verify | None = None, **kwargs: Any) -> ApiServer:
        server = await ApiServer(verify, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


class Clock:
    """The login's clock, moved forward by hand instead of waiting for tokens to age."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        monkeypatch.setattr(tokens_module, "_monotonic", lambda: time.monotonic() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def local(kubeconfig: Path | None = None, context: str | None = None) -> KubernetesTarget:
    return KubernetesTarget(
        platform=KubernetesPlatform.LOCAL,
        namespace="default",
        cluster=context,
        kubeconfig=str(kubeconfig) if kubeconfig else None,
    )


def eks(cluster: str = "demo", region: str = REGION) -> KubernetesTarget:
    return KubernetesTarget(
        platform=KubernetesPlatform.AWS_EKS, namespace="default", cluster=cluster, region=region
    )


def aks(fakes: ClusterFakes, cluster: str = "demo", **kwargs: Any) -> KubernetesTarget:
    fields: dict[str, Any] = {
        "platform": KubernetesPlatform.AZURE_AKS,
        "namespace": "default",
        "cluster": cluster,
        "resource_group": RESOURCE_GROUP,
        "subscription_id": fakes.subscription_id,
        "api_endpoint": fakes.url,
    }
    return KubernetesTarget(**{**fields, **kwargs})


def gke(fakes: ClusterFakes, cluster: str = "demo") -> KubernetesTarget:
    return KubernetesTarget(
        platform=KubernetesPlatform.GCP_GKE,
        namespace="default",
        cluster=cluster,
        region=LOCATION,
        project_id=PROJECT,
        api_endpoint=fakes.url,
    )


async def git_version(cluster: ClusterLogin) -> str:
    """``kubectl version`` through kubernetes_asyncio, as the driver's ApiClient does it."""
    async with ApiClient(configuration=await cluster.configuration()) as client:
        info = await VersionApi(client).get_code()
    return str(info.git_version)


async def version_with_aiohttp(cluster: ClusterLogin) -> int:
    """A request of one's own (as through the pod proxy): headers + ssl context."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{cluster.host}/version",
            headers=await cluster.headers(),
            ssl=cluster.ssl_context(),
        ) as response,
    ):
        return response.status


async def settled(cluster: ClusterLogin, refreshes: int) -> None:
    """Wait until ``refreshes`` token refreshes have run to the end."""
    tokens = cluster._tokens
    assert tokens is not None
    async with asyncio.timeout(10):
        while cluster.refreshes < refreshes or tokens._task is not None:
            await asyncio.sleep(0.01)


def kubeconfig(
    path: Path,
    clusters: dict[str, tuple[str, bytes]],
    users: dict[str, dict[str, Any]],
    current: str | None,
) -> Path:
    """A kubeconfig with one context per cluster (named as it), each with the same-named user."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
            for name, (server, ca) in clusters.items()
        ],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in clusters],
    }
    if current is not None:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------------------ kubeconfig


async def test_kubeconfig_with_a_token(tmp_path: Path, api_server: Any) -> None:
    api = await api_server()
    path = kubeconfig(
        tmp_path / "config", {"kind": (api.url, api.ca_pem)}, {"kind": {"token": "s3cr3t"}}, "kind"
    )
    cluster = await login(local(path))
    try:
        assert cluster.host == api.url
        assert await git_version(cluster) == "v1.31.4"
        assert api.seen[-1]["authorization"] == "Bearer s3cr3t"
        assert await cluster.headers() == {"Authorization": "Bearer s3cr3t"}
        assert await version_with_aiohttp(cluster) == 200
        assert "s3cr3t" not in repr(cluster)
    finally:
        await cluster.close()


async def test_kubeconfig_with_a_client_certificate(tmp_path: Path, api_server: Any) -> None:
    # kind and minikube: the API server authenticates the client certificate; no token.
    users_ca = LocalCA()
    api = await api_server(client_ca=users_ca)
    cert, key = users_ca.client_cert("kubernetes-admin", "system:masters")
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    path = kubeconfig(tmp_path / "config", {"kind": (api.url, api.ca_pem)}, {"kind": user}, "kind")
    cluster = await login(local(path))
    try:
        assert await cluster.headers() == {}
        assert cluster.refreshes == 0
        assert await git_version(cluster) == "v1.31.4"
        assert await version_with_aiohttp(cluster) == 200
        assert [s["cn"] for s in api.seen] == ["kubernetes-admin", "kubernetes-admin"]
        assert [s["authorization"] for s in api.seen] == [None, None]
    finally:
        await cluster.close()


async def test_an_explicit_context_wins_over_the_current_one(
    tmp_path: Path, api_server: Any
) -> None:
    api = await api_server()
    path = kubeconfig(
        tmp_path / "config",
        {"prod": ("https://127.0.0.1:9", b"not a CA"), "dev": (api.url, api.ca_pem)},
        {"prod": {"token": "prod-token"}, "dev": {"token": "dev-token"}},
        current="prod",
    )
    cluster = await login(local(path, context="dev"))
    try:
        assert cluster.host == api.url
        assert await git_version(cluster) == "v1.31.4"
        assert api.tokens() == ["dev-token"]
    finally:
        await cluster.close()


async def test_a_missing_context_or_file_is_a_spec_error(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config", {"dev": ("https://127.0.0.1:9", b"x")}, {"dev": {"token": "t"}}, None
    )
    with pytest.raises(SpecError) as missing:
        await login(local(path, context="staging"))
    assert missing.value.field == "context"
    assert "'staging' is not a context" in str(missing.value)
    assert "['dev']" in str(missing.value)
    with pytest.raises(SpecError) as no_current:
        await login(local(path))
    assert no_current.value.field == "context"
    with pytest.raises(SpecError) as no_file:
        await login(local(tmp_path / "nowhere"))
    assert no_file.value.field == "kubeconfig"


async def test_kubeconfig_is_read_from_the_environment_at_call_time(
    tmp_path: Path, api_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes_asyncio read KUBECONFIG when it was imported, long before this.
    api = await api_server()
    path = kubeconfig(
        tmp_path / "late", {"late": (api.url, api.ca_pem)}, {"late": {"token": "late"}}, "late"
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    cluster = await login(local())
    try:
        assert cluster.host == api.url
        assert await git_version(cluster) == "v1.31.4"
    finally:
        await cluster.close()


async def test_exec_plugin_tokens_are_refreshed_ahead_of_expiry(
    tmp_path: Path, api_server: Any, clock: Clock
) -> None:
    api = await api_server()
    counter = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import datetime, json, pathlib\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',\n"
        "  'kind': 'ExecCredential', 'status': {'token': f'exec-{n}',\n"
        "  'expirationTimestamp': exp.strftime('%Y-%m-%dT%H:%M:%SZ')}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    path = kubeconfig(tmp_path / "config", {"eks": (api.url, api.ca_pem)}, {"eks": user}, "eks")
    cluster = await login(local(path))
    try:
        assert await git_version(cluster) == "v1.31.4"
        clock.advance(8 * 60)  # 2 of 10 minutes left: time for a new one, not yet urgent
        assert await git_version(cluster) == "v1.31.4"  # sent at once, with the old token
        await settled(cluster, 1)
        assert await git_version(cluster) == "v1.31.4"
        assert api.tokens() == ["exec-1", "exec-1", "exec-2"]
        assert counter.read_text() == "2"
    finally:
        await cluster.close()


async def test_in_cluster_service_account(
    tmp_path: Path, api_server: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_asyncio.config import incluster_config

    api = await api_server()
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token-1")
    ca.write_bytes(api.ca_pem)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    cluster = await login(local())
    try:
        assert cluster.host == api.url
        assert await git_version(cluster) == "v1.31.4"
        token.write_text("sa-token-2")  # the kubelet rotated it
        clock.advance(61)
        await cluster.headers()
        await settled(cluster, 1)
        assert await cluster.headers() == {"Authorization": "Bearer sa-token-2"}
    finally:
        await cluster.close()


async def test_no_kubeconfig_and_not_in_a_pod_is_a_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SpecError) as error:
        await login(local())
    assert error.value.field == "kubeconfig"
    assert "KUBECONFIG" in str(error.value)


# ------------------------------------------------------------------------------------- EKS


def _eks_url(token: str) -> urllib.parse.SplitResult:
    prefix, _, encoded = token.partition(".")
    assert prefix == "k8s-aws-v1"
    assert "=" not in encoded
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    return urllib.parse.urlsplit(url)


async def test_eks_token_is_a_presigned_sts_request(
    fakes: ClusterFakes,
    api_server: Any,
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The process's own STS calls may go elsewhere: the token still names the real STS.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_url)
    verify = verify_eks_token(moto_url, "demo", secret_keys={"testing": "testing"})
    api = await api_server(verify)
    fakes.register("demo", api.url, api.ca_pem, region=REGION)
    cluster = await login(eks())
    try:
        assert cluster.host == api.url
        (token,) = [v.partition(" ")[2] for v in (await cluster.headers()).values()]
        url = _eks_url(token)
        query = dict(urllib.parse.parse_qsl(url.query))
        assert (url.scheme, url.netloc, url.path) == ("https", f"sts.{REGION}.amazonaws.com", "/")
        assert query["Action"] == "GetCallerIdentity"
        assert query["Version"] == "2011-06-15"
        assert query["X-Amz-Expires"] == "60"
        assert query["X-Amz-SignedHeaders"] == "host;x-k8s-aws-id"
        assert query["X-Amz-Credential"].endswith(f"/{REGION}/sts/aws4_request")
        # As the cluster checks it: moto's STS knows the caller.
        assert await verify(token) == f"arn:aws:sts::{ACCOUNT_ID}:user/moto"
        assert (
            await verify_eks_token(moto_url, "other", secret_keys={"testing": "testing"})(token)
            is None
        )  # signed for another cluster
        assert await git_version(cluster) == "v1.31.4"
        assert api.seen[-1]["user"] == f"arn:aws:sts::{ACCOUNT_ID}:user/moto"
        (described,) = fakes.calls("GET eks cluster")
        assert (described.path, described.region) == ("/clusters/demo", REGION)
    finally:
        await cluster.close()


ACCOUNT_ID = "123456789012"


async def test_eks_token_is_refreshed_before_it_expires(
    fakes: ClusterFakes, api_server: Any, moto_url: str, clock: Clock
) -> None:
    api = await api_server(verify_eks_token(moto_url, "demo"))
    fakes.register("demo", api.url, api.ca_pem)
    cluster = await login(eks())
    try:
        first = await cluster.headers()
        clock.advance(10 * 60)  # not yet: valid 14 more minutes, refreshed with < 3.5 left
        assert await cluster.headers() == first
        assert cluster.refreshes == 0
        clock.advance(60 + 1)
        assert await cluster.headers() == first  # no wait: refreshed in the background
        await settled(cluster, 1)
        clock.advance(15 * 60)  # expired: callers wait, all for one refresh
        answers = await asyncio.gather(*(cluster.headers() for _ in range(10)))
        assert cluster.refreshes == 2
        assert len({a["Authorization"] for a in answers}) == 1
        assert await git_version(cluster) == "v1.31.4"
    finally:
        await cluster.close()


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (None, "ResourceNotFoundException", False),
        (403, "AccessDeniedException", False),
        (429, "ThrottlingException", True),
        (503, "ServerException", True),
    ],
)
async def test_eks_describe_failures(
    fakes: ClusterFakes, status: int | None, code: str, transient: bool
) -> None:
    if status is not None:
        fakes.register("demo", "https://127.0.0.1:9", b"unused")
        fakes.add(Rule("GET eks cluster", status=status))
    with pytest.raises(BackendError) as error:
        await login(eks())
    assert (error.value.code, error.value.transient) == (code, transient)
    assert "'demo'" in str(error.value)
    if status is None:
        assert f"not found in {REGION}" in str(error.value)


async def test_eks_without_credentials(
    fakes: ClusterFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BackendError) as error:
        await login(eks())
    assert error.value.code == "NoCredentials"
    assert not error.value.transient
    assert "AWS_PROFILE" in str(error.value)
    assert fakes.calls("GET eks cluster") == []


# ------------------------------------------------------------------------------------- AKS


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_aks_login_with_default_credentials(fakes: ClusterFakes, api_server: Any) -> None:
    verify = fakes.verify_aks_token()
    api = await api_server(verify)
    fakes.register("demo", api.url, api.ca_pem, resource_group=RESOURCE_GROUP)
    cluster = await login(aks(fakes))
    try:
        assert cluster.host == api.url
        # One token for ARM, one for the cluster (the AKS server application).
        scopes = [c.body["scope"] for c in fakes.calls("POST entra token")]
        assert scopes == [f"{fakes.url}/.default", AKS_SERVER_SCOPE]
        (listed,) = fakes.calls("POST aks credentials")
        assert listed.path == (
            f"/subscriptions/{fakes.subscription_id}/resourceGroups/{RESOURCE_GROUP}/providers/"
            "Microsoft.ContainerService/managedClusters/demo/listClusterUserCredential"
        )
        assert listed.query == {"api-version": "2024-02-01"}
        arm_token = listed.headers["Authorization"].partition(" ")[2]
        assert _claims(arm_token)["aud"] == fakes.url
        assert await verify(arm_token) is None  # an ARM token does not open the cluster
        token = (await cluster.headers())["Authorization"].partition(" ")[2]
        assert _claims(token)["aud"] == AKS_SERVER_APP
        assert await git_version(cluster) == "v1.31.4"
        assert api.seen[-1]["user"] == fakes.client_id
        assert await version_with_aiohttp(cluster) == 200
    finally:
        await cluster.close()


class CountingCredential:
    """An async token credential of the user's own, counting what it is asked for."""

    def __init__(self, fakes: ClusterFakes, lifetime: float = 3600) -> None:
        self.fakes = fakes
        self.lifetime = lifetime
        self.scopes: list[str] = []
        self.closed = False
        self.fail: Exception | None = None

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken
        from azure.identity.aio import ClientSecretCredential

        self.scopes.extend(scopes)
        if self.fail is not None:
            raise self.fail
        async with ClientSecretCredential(
            self.fakes.tenant_id,
            self.fakes.client_id,
            self.fakes.client_secret,
            authority=self.fakes.url,
            connection_verify=os.environ["SSL_CERT_FILE"],
        ) as inner:
            token = await inner.get_token(*scopes)
        return AccessToken(token.token, int(time.time() + self.lifetime))

    async def close(self) -> None:
        self.closed = True


async def test_aks_cluster_token_is_refreshed_from_the_users_credential(
    fakes: ClusterFakes, api_server: Any, clock: Clock
) -> None:
    api = await api_server(fakes.verify_aks_token())
    fakes.register("demo", api.url, api.ca_pem)
    credential = CountingCredential(fakes)
    cluster = await login(aks(fakes, credential=credential))
    try:
        assert credential.scopes == [f"{fakes.url}/.default", AKS_SERVER_SCOPE]
        clock.advance(56 * 60)  # 4 minutes left of 60
        await git_version(cluster)
        await settled(cluster, 1)
        assert credential.scopes[2:] == [AKS_SERVER_SCOPE]
        assert await git_version(cluster) == "v1.31.4"
    finally:
        await cluster.close()
    assert not credential.closed  # the user's: the user closes it


async def test_aks_failures(fakes: ClusterFakes, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    with pytest.raises(SpecError) as no_subscription:
        await login(aks(fakes, subscription_id=None))
    assert no_subscription.value.field == "subscription_id"
    with pytest.raises(BackendError) as missing:
        await login(aks(fakes, cluster="nope"))
    assert (missing.value.code, missing.value.transient) == (404, False)
    assert f"'nope' not found in resource group '{RESOURCE_GROUP}'" in str(missing.value)
    fakes.register("demo", "https://127.0.0.1:9", b"unused")
    fakes.add(Rule("POST aks credentials", status=503, times=1))
    with pytest.raises(BackendError) as unavailable:
        await login(aks(fakes))
    assert (unavailable.value.code, unavailable.value.transient) == (503, True)
    fakes.add(Rule("POST aks credentials", status=403, times=1))
    with pytest.raises(BackendError) as forbidden:
        await login(aks(fakes))
    assert (forbidden.value.code, forbidden.value.transient) == (403, False)
    assert "Cluster User Role" in str(forbidden.value)
    credential = CountingCredential(fakes)
    credential.fail = ClientAuthenticationError("AADSTS7000215: Invalid client secret.")
    with pytest.raises(BackendError) as refused:
        await login(aks(fakes, credential=credential))
    assert not refused.value.transient
    assert "AZURE_CLIENT_SECRET" in str(refused.value)


# ------------------------------------------------------------------------------------- GKE


async def test_gke_login_with_a_service_account_key(fakes: ClusterFakes, api_server: Any) -> None:
    verify = fakes.verify_gke_token()
    api = await api_server(verify)
    fakes.register("demo", api.url, api.ca_pem, project=PROJECT, region=LOCATION)
    cluster = await login(gke(fakes))
    try:
        # GKE gave "127.0.0.1:<port>", no scheme.
        (described,) = fakes.calls("GET gke cluster")
        assert described.path == f"/v1/projects/{PROJECT}/locations/{LOCATION}/clusters/demo"
        assert cluster.host == f"https://127.0.0.1:{api.port}"
        (grant,) = fakes.calls("POST google token")
        assert grant.body["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        token = (await cluster.headers())["Authorization"].partition(" ")[2]
        assert described.headers["Authorization"] == f"Bearer {token}"
        assert await verify(token) == "sandboxes@sbx-test.iam.gserviceaccount.com"
        assert await git_version(cluster) == "v1.31.4"
        assert await version_with_aiohttp(cluster) == 200
    finally:
        await cluster.close()


async def test_gke_token_is_refreshed_in_a_thread(
    fakes: ClusterFakes, api_server: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.oauth2 import service_account

    threads: list[threading.Thread] = []
    refresh = service_account.Credentials.refresh

    def recording(self: Any, request: Any) -> None:
        threads.append(threading.current_thread())
        refresh(self, request)

    monkeypatch.setattr(service_account.Credentials, "refresh", recording)
    api = await api_server(fakes.verify_gke_token())
    fakes.register("demo", api.url, api.ca_pem)
    cluster = await login(gke(fakes))
    try:
        first = await cluster.headers()
        clock.advance(56 * 60)
        assert await cluster.headers() == first
        await settled(cluster, 1)
        assert await cluster.headers() != first
        assert await git_version(cluster) == "v1.31.4"
        assert len(threads) == 2
        assert threading.main_thread() not in threads
    finally:
        await cluster.close()


async def test_gke_cluster_not_found(fakes: ClusterFakes) -> None:
    fakes.register("demo", "https://127.0.0.1:9", b"unused", project="elsewhere")
    with pytest.raises(BackendError) as error:
        await login(gke(fakes))
    assert (error.value.code, error.value.transient) == (404, False)
    assert f"projects/{PROJECT}/locations/{LOCATION}/clusters/demo" in str(error.value)


# ------------------------------------------------------------------------- missing extras


@pytest.mark.parametrize(
    ("platform", "module", "extras"),
    [
        (KubernetesPlatform.LOCAL, "kubernetes_asyncio.config", ("kubernetes",)),
        (KubernetesPlatform.AWS_EKS, "kubernetes_asyncio.client", ("kubernetes", "aws")),
        (KubernetesPlatform.AWS_EKS, "aioboto3", ("kubernetes", "aws")),
        (KubernetesPlatform.AZURE_AKS, "azure.identity.aio", ("kubernetes", "azure")),
        (KubernetesPlatform.GCP_GKE, "google.auth", ("kubernetes", "gcp")),
    ],
)
async def test_a_missing_sdk_names_the_extras_to_install(
    monkeypatch: pytest.MonkeyPatch,
    platform: KubernetesPlatform,
    module: str,
    extras: tuple[str, ...],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    target = KubernetesTarget(
        platform=platform,
        namespace="default",
        cluster="demo",
        region=REGION,
        resource_group=RESOURCE_GROUP,
        project_id=PROJECT,
        subscription_id="sub",
    )
    with pytest.raises(MissingExtraError) as error:
        await login(target)
    assert error.value.extras == extras
    assert f"commandlab-async[{','.join(extras)}]" in str(error.value)


# ---------------------------------------------------------------------- the event loop


async def test_logging_in_never_blocks_the_event_loop(
    fakes: ClusterFakes,
    api_server: Any,
    tmp_path: Path,
    moto_url: str,
    clock: Clock,
) -> None:
    import importlib

    from blockbuster import blockbuster_ctx

    # Importing an SDK the first time reads its files (once, like any import): done up
    # front, so that only what logging in does is checked.
    for module in (
        "aioboto3", "botocore.session", "botocore.auth", "azure.identity.aio",
        "azure.core.pipeline.transport", "google.auth", "google.auth.transport.requests",
        "google.oauth2.service_account", "kubernetes_asyncio.config", "yaml",
    ):  # fmt: skip
        importlib.import_module(module)
    api = await api_server()
    fakes.register("demo", api.url, api.ca_pem)
    path = kubeconfig(
        tmp_path / "config", {"kind": (api.url, api.ca_pem)}, {"kind": {"token": "t"}}, "kind"
    )
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'from-exec', "
        "'expirationTimestamp': '2099-01-01T00:00:00Z'}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    with_exec = kubeconfig(
        tmp_path / "exec", {"exec": (api.url, api.ca_pem)}, {"exec": user}, "exec"
    )
    targets = [local(path), local(with_exec), eks(), aks(fakes), gke(fakes)]
    with blockbuster_ctx("commandlab_async"):
        for target in targets:
            cluster = await login(target)
            try:
                await cluster.configuration()
                clock.advance(3600)  # every token expired: refreshed on the spot
                assert await cluster.headers()
                cluster.ssl_context()
            finally:
                await cluster.close()
