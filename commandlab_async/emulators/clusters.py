"""Where managed Kubernetes clusters are described, and their tokens checked, played locally.

:class:`ClusterFakes` is one aiohttp server over HTTPS (a fresh ``trustme`` CA) on 127.0.0.1
speaking the wire protocols the real SDKs use, so they run unmodified:

- the **EKS** REST API, ``GET /clusters/{name}`` (botocore's ``eks.describe_cluster``;
  point ``AWS_ENDPOINT_URL_EKS`` at :attr:`ClusterFakes.url`, ``AWS_CA_BUNDLE`` at the CA);
- **ARM** ``POST .../managedClusters/{name}/listClusterUserCredential`` and a **Microsoft
  Entra ID** v2.0 token endpoint for one service principal (``AZURE_AUTHORITY_HOST`` = the
  url, ``AZURE_TENANT_ID``/``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET``; the ARM endpoint is
  ``AksOptions(arm_endpoint=url)``);
- the **GKE** API ``GET /v1/projects/{p}/locations/{l}/clusters/{c}`` and a **Google
  OAuth2** token endpoint for service-account keys (JWT bearer grant):
  :meth:`ClusterFakes.write_service_account` writes a key whose ``token_uri`` is this
  server (set ``GOOGLE_APPLICATION_CREDENTIALS``, and ``REQUESTS_CA_BUNDLE`` since
  google-auth uses requests; ``GkeOptions(api_endpoint=url)``).

:meth:`ClusterFakes.register` decides what every platform answers for a cluster: the API
server's URL and CA (point them at a Kubernetes emulator). Tokens are checked as the
clusters would check them by the verifiers (``async (token) -> user name | None``):
:func:`verify_eks_token` (replays the presigned STS request against moto, as
aws-iam-authenticator does), :meth:`ClusterFakes.verify_aks_token` and
:meth:`ClusterFakes.verify_gke_token`.

Every request is recorded (:attr:`ClusterFakes.requests`, :meth:`ClusterFakes.calls`) under a
short "what": ``"GET eks cluster"``, ``"POST aks credentials"``, ``"POST entra token"``,
``"GET gke cluster"``, ``"POST google token"``; faults are injected with
:class:`~commandlab_async.emulators.faults.Rule` (``status`` only) matched against it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from ._entra import access_token
from ._google import JWT_BEARER, TrustedKeys, verify_assertion, write_service_account_key
from ._https import Emulator, Listener, LocalCA
from .faults import Recording, Rule

Verifier = Callable[[str], Awaitable[str | None]]

ACCOUNT = "123456789012"
AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"  # the audience of AKS tokens
AZURE_CLI_APP = "80faf920-1908-4b52-b5ef-a8e7bedfc67a"  # kubelogin's client id in AKS kubeconfigs
ARM_API_VERSIONS = {"2023-10-01", "2024-01-01", "2024-02-01", "2024-05-01", "2024-07-01"}
GOOGLE_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
EKS_TOKEN_PREFIX = "k8s-aws-v1."
EKS_TOKEN_MAX_AGE = 15 * 60  # what EKS (aws-iam-authenticator) accepts after X-Amz-Date

_EKS_PATH = re.compile(r"/clusters/(?P<name>[^/]+)")
_AKS_PATH = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.ContainerService/managedClusters/(?P<name>[^/]+)/listClusterUserCredential",
    re.I,
)
_ENTRA_PATH = re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token")
_GKE_PATH = re.compile(r"/v1/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/clusters/(?P<c>[^/]+)")
_SCOPE = re.compile(r"Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<svc>[^/]+)/")


@dataclass
class FakeCluster:
    """What the clouds say about one cluster. ``None`` scopes match any value."""

    name: str
    server_url: str
    ca_pem: bytes
    region: str | None = None
    """EKS region, or GKE location."""
    resource_group: str | None = None
    project: str | None = None
    status: str = "ACTIVE"
    """EKS status; GKE reports RUNNING for ACTIVE."""


@dataclass
class Recorded:
    """One request as the fakes received it, and the status they answered."""

    what: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None
    status: int = 0
    region: str | None = None
    """The SigV4 credential scope's region (EKS requests)."""


@dataclass
class _Issued:
    subject: str
    audience: str
    expires: float  # wall clock
    scope: str = ""


@dataclass
class ClusterFakes(Emulator, Recording[Recorded]):
    """EKS, ARM + Entra ID and GKE + Google OAuth2 on one HTTPS server on 127.0.0.1."""

    entra_token_lifetime: int = 3599
    google_token_lifetime: int = 3600
    url: str = ""
    ca: LocalCA = field(default_factory=LocalCA)
    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    subscription_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    clusters: list[FakeCluster] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    _entra: dict[str, _Issued] = field(default_factory=dict)
    _google: dict[str, _Issued] = field(default_factory=dict)
    _sa_keys: TrustedKeys = field(default_factory=dict)
    _listener: Listener | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Serve over HTTPS on 127.0.0.1 with a fresh test CA."""
        self._listener, self.url = await self._serve_https(
            self._handle, client_max_size=1024**2, shutdown_timeout=0.5
        )

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    # ----------------------------------------------------------------------- test interface

    def register(
        self,
        cluster: str,
        server_url: str,
        ca_pem: bytes,
        *,
        region: str | None = None,
        resource_group: str | None = None,
        project: str | None = None,
        status: str = "ACTIVE",
    ) -> FakeCluster:
        """Make ``cluster`` known to EKS, AKS and GKE alike: each answers ``server_url``
        (``https://host:port`` of the API server) and ``ca_pem`` (the PEM of the CA that
        signed its certificate). ``region`` (EKS region / GKE location), ``resource_group``
        and ``project`` restrict where it is found (None: anywhere)."""
        fake = FakeCluster(cluster, server_url.rstrip("/"), ca_pem, region, resource_group, project)
        fake.status = status
        self.clusters.append(fake)
        return fake

    def write_service_account(
        self, path: Path, email: str = "sandboxes@sbx-test.iam.gserviceaccount.com"
    ) -> Path:
        """Write a service-account key file whose token endpoint is this server."""
        return write_service_account_key(path, email, f"{self.url}/token", self._sa_keys)

    def entra_audiences(self) -> list[str]:
        """The audience of every Entra token issued, in order."""
        return [issued.audience for issued in self._entra.values()]

    def verify_aks_token(self) -> Verifier:
        """A verifier accepting only unexpired Entra tokens issued for the AKS server app
        (as an AKS cluster with Entra integration does); the user is the client id."""

        async def verify(token: str) -> str | None:
            issued = self._entra.get(token)
            if issued is None or issued.expires <= time.time():
                return None
            return issued.subject if issued.audience == AKS_SERVER_APP else None

        return verify

    def verify_gke_token(self) -> Verifier:
        """A verifier accepting only unexpired access tokens this token endpoint issued
        with the cloud-platform scope; the user is the service account's email."""

        async def verify(token: str) -> str | None:
            issued = self._google.get(token)
            if issued is None or issued.expires <= time.time():
                return None
            return issued.subject if GOOGLE_CLOUD_PLATFORM in issued.scope.split() else None

        return verify

    # ------------------------------------------------------------------------------ plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        raw = await request.read()
        what = f"{request.method} {path}"
        if request.method == "GET" and _EKS_PATH.fullmatch(path):
            what = "GET eks cluster"
        elif request.method == "POST" and _AKS_PATH.fullmatch(path):
            what = "POST aks credentials"
        elif request.method == "POST" and _ENTRA_PATH.fullmatch(path):
            what = "POST entra token"
        elif request.method == "GET" and _GKE_PATH.fullmatch(path):
            what = "GET gke cluster"
        elif request.method == "POST" and path == "/token":
            what = "POST google token"
        record = Recorded(what, request.method, path, dict(request.query), dict(request.headers))
        record.body = _body(raw, request.content_type)
        self.requests.append(record)
        rule = self._rule_for(what)
        if rule is not None and rule.status:
            response = _injected(what, rule.status, rule.body)
        elif what == "GET eks cluster":
            response = self._eks(request, record)
        elif what == "POST aks credentials":
            response = self._aks(request)
        elif what == "POST entra token":
            response = self._entra_token(request, dict(urllib.parse.parse_qsl(raw.decode())))
        elif what == "GET gke cluster":
            response = self._gke(request)
        elif what == "POST google token":
            response = self._google_token(record.body or {})
        else:
            response = web.json_response({"message": f"no route for {what}"}, status=404)
        record.status = response.status
        return response

    def _find(self, name: str, **scope: str) -> FakeCluster | None:
        for cluster in self.clusters:
            if cluster.name != name:
                continue
            if all(getattr(cluster, k) in (None, v) for k, v in scope.items()):
                return cluster
        return None

    # ----------------------------------------------------------------------------------- EKS

    def _eks(self, request: web.Request, record: Recorded) -> web.Response:
        scope = _SCOPE.search(request.headers.get("Authorization", ""))
        if scope is None or scope["svc"] != "eks":
            return _aws_error(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        region = record.region = scope["region"]
        match = _EKS_PATH.fullmatch(request.path)
        assert match is not None
        name = urllib.parse.unquote(match["name"])
        cluster = self._find(name, region=region)
        if cluster is None:
            return _aws_error(
                404, "ResourceNotFoundException", f"No cluster found for name: {name}."
            )
        created = datetime.datetime(2025, 1, 6, 12, 0, tzinfo=datetime.UTC).timestamp()
        vpc = "vpc-0a1b2c3d4e5f67890"
        return web.json_response(
            {
                "cluster": {
                    "name": name,
                    "arn": f"arn:aws:eks:{region}:{ACCOUNT}:cluster/{name}",
                    "createdAt": created,
                    "version": "1.31",
                    "endpoint": cluster.server_url,
                    "roleArn": f"arn:aws:iam::{ACCOUNT}:role/eks-cluster-role",
                    "resourcesVpcConfig": {
                        "subnetIds": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
                        "securityGroupIds": [],
                        "clusterSecurityGroupId": "sg-0123456789abcdef0",
                        "vpcId": vpc,
                        "endpointPublicAccess": True,
                        "endpointPrivateAccess": True,
                        "publicAccessCidrs": ["0.0.0.0/0"],
                    },
                    "kubernetesNetworkConfig": {
                        "serviceIpv4Cidr": "172.20.0.0/16",
                        "ipFamily": "ipv4",
                        "elasticLoadBalancing": {"enabled": False},
                    },
                    "logging": {
                        "clusterLogging": [
                            {
                                "types": ["api", "audit", "authenticator"],
                                "enabled": False,
                            }
                        ]
                    },
                    "identity": {
                        "oidc": {
                            "issuer": f"https://oidc.eks.{region}.amazonaws.com/id/"
                            + hashlib.md5(name.encode()).hexdigest().upper()
                        }
                    },
                    "status": cluster.status,
                    "certificateAuthority": {"data": base64.b64encode(cluster.ca_pem).decode()},
                    "platformVersion": "eks.12",
                    "tags": {},
                    "health": {"issues": []},
                    "accessConfig": {"authenticationMode": "API_AND_CONFIG_MAP"},
                    "upgradePolicy": {"supportType": "STANDARD"},
                }
            },
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    # ----------------------------------------------------------------------------------- AKS

    def _aks(self, request: web.Request) -> web.Response:
        version = request.query.get("api-version")
        if version not in ARM_API_VERSIONS:
            return _arm_error(
                400,
                "InvalidApiVersionParameter" if version else "MissingApiVersionParameter",
                f"The api-version '{version}' is invalid.",
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        issued = self._entra.get(token) if scheme.lower() == "bearer" else None
        if issued is None or issued.expires <= time.time():
            return _arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if issued.audience.rstrip("/") != self.url:
            return _arm_error(
                401,
                "InvalidAuthenticationTokenAudience",
                f"The access token has been obtained for wrong audience or resource "
                f"'{issued.audience}'. It should exactly match one of the allowed audiences "
                f"'{self.url}', '{self.url}/'.",
            )
        match = _AKS_PATH.fullmatch(request.path)
        assert match is not None
        if match["sub"] != self.subscription_id:
            return _arm_error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{match['sub']}' could not be found.",
            )
        name, group = match["name"], match["rg"]
        cluster = self._find(name, resource_group=group)
        if cluster is None:
            return _arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerService/managedClusters/{name}' under "
                f"resource group '{group}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        user = f"clusterUser_{group}_{name}"
        kubeconfig: dict[str, Any] = {
            "apiVersion": "v1",
            "clusters": [
                {
                    "cluster": {
                        "certificate-authority-data": base64.b64encode(cluster.ca_pem).decode(),
                        "server": cluster.server_url,
                    },
                    "name": name,
                }
            ],
            "contexts": [{"context": {"cluster": name, "user": user}, "name": name}],
            "current-context": name,
            "kind": "Config",
            "preferences": {},
            "users": [
                {
                    "name": user,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "args": [
                                "get-token",
                                "--environment",
                                "AzurePublicCloud",
                                "--server-id",
                                AKS_SERVER_APP,
                                "--client-id",
                                AZURE_CLI_APP,
                                "--tenant-id",
                                self.tenant_id,
                                "--login",
                                "devicecode",
                            ],
                            "command": "kubelogin",
                            "env": None,
                            "installHint": "kubelogin is not installed.",
                            "provideClusterInfo": False,
                        }
                    },
                }
            ],
        }
        value = base64.b64encode(yaml.safe_dump(kubeconfig).encode()).decode()
        return web.json_response({"kubeconfigs": [{"name": "clusterUser", "value": value}]})

    def _entra_token(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        """Entra ID's v2.0 token endpoint for one service principal (client credentials)."""
        match = _ENTRA_PATH.fullmatch(request.path)
        assert match is not None
        if form.get("grant_type") != "client_credentials":
            return _entra_error(400, "unsupported_grant_type", "AADSTS70003: unsupported grant.")
        if match["tenant"] != self.tenant_id:
            return _entra_error(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("client_id") != self.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            return _entra_error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return _entra_error(400, "invalid_scope", "AADSTS1002012: scope needs /.default.")
        audience = scope.removesuffix("/.default")
        token, expires = access_token(
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            audience=audience,
            lifetime=self.entra_token_lifetime,
            kid="cluster-fakes",
        )
        self._entra[token] = _Issued(self.client_id, audience, expires)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.entra_token_lifetime,
                "ext_expires_in": self.entra_token_lifetime,
                "access_token": token,
            }
        )

    # ----------------------------------------------------------------------------------- GKE

    def _gke(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        issued = self._google.get(token) if scheme.lower() == "bearer" else None
        if issued is None or issued.expires <= time.time():
            return _google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        match = _GKE_PATH.fullmatch(request.path)
        assert match is not None
        project, location, name = match["p"], match["l"], match["c"]
        cluster = self._find(name, project=project, region=location)
        if cluster is None:
            return _google_error(
                404,
                "NOT_FOUND",
                f"Not found: projects/{project}/locations/{location}/clusters/{name}.",
            )
        parts = urllib.parse.urlsplit(cluster.server_url)
        # GKE gives a bare address: an IP (port 443 implied), here host:port.
        endpoint = parts.hostname if parts.port in (None, 443) else parts.netloc
        self_link = f"https://container.googleapis.com/v1/projects/{project}/locations/{location}"
        return web.json_response(
            {
                "name": name,
                "nodeConfig": {"machineType": "e2-standard-4", "diskSizeGb": 100},
                "masterAuth": {"clusterCaCertificate": base64.b64encode(cluster.ca_pem).decode()},
                "loggingService": "logging.googleapis.com/kubernetes",
                "monitoringService": "monitoring.googleapis.com/kubernetes",
                "network": "default",
                "clusterIpv4Cidr": "10.88.0.0/14",
                "subnetwork": "default",
                "locations": [f"{location}-a", f"{location}-b", f"{location}-c"],
                "selfLink": f"{self_link}/clusters/{name}",
                "zone": location,
                "endpoint": endpoint,
                "initialClusterVersion": "1.30.5-gke.1014001",
                "currentMasterVersion": "1.30.5-gke.1014001",
                "createTime": "2025-01-06T12:00:00+00:00",
                "status": "RUNNING" if cluster.status == "ACTIVE" else cluster.status,
                "location": location,
                "id": secrets.token_hex(32),
            }
        )

    def _google_token(self, form: Mapping[str, str]) -> web.Response:
        """Google's OAuth2 token endpoint: a JWT bearer grant signed by a key of ours."""
        claims = self._assertion(form.get("assertion", ""))
        if form.get("grant_type") != JWT_BEARER or claims is None:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        token = "ya29." + secrets.token_urlsafe(48)
        self._google[token] = _Issued(
            str(claims["iss"]),
            "",
            time.time() + self.google_token_lifetime,
            str(claims.get("scope", "")),
        )
        return web.json_response(
            {
                "access_token": token,
                "expires_in": self.google_token_lifetime,
                "token_type": "Bearer",
            }
        )

    def _assertion(self, assertion: str) -> dict[str, Any] | None:
        return verify_assertion(assertion, self._sa_keys, f"{self.url}/token")


# ----------------------------------------------------------------------------- EKS verifier


def verify_eks_token(
    moto_url: str,
    cluster: str,
    *,
    secret_keys: Mapping[str, str] | None = None,
    max_age: float = EKS_TOKEN_MAX_AGE,
) -> Verifier:
    """A verifier doing what aws-iam-authenticator does with an EKS token for ``cluster``.

    It decodes ``k8s-aws-v1.<base64url, no padding>``, insists on a presigned
    ``GET https://sts.<region>.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15``
    with ``X-Amz-Expires=60``, ``host`` and ``x-k8s-aws-id`` among the signed headers and an
    ``X-Amz-Date`` no older than ``max_age``, then replays it against moto's STS with the
    header ``x-k8s-aws-id: <cluster>`` and returns the caller's ARN.

    moto does not check signatures, so when ``secret_keys`` (access key id -> secret) knows
    the signing key, the SigV4 signature is checked here, over the cluster this verifier
    serves: a token minted for another cluster, or tampered with, is refused. moto's
    server also cannot route a presigned GET to STS by itself (it dispatches on the
    ``Authorization`` header, and takes the caller's key from it): the replay carries the
    same credential and signature in that header as well.
    """

    async def verify(token: str) -> str | None:
        url = _eks_url(token)
        if url is None:
            return None
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        checked = _check_presigned(parts, query, max_age)
        if checked is None:
            return None
        key, region = checked
        secret = (secret_keys or {}).get(key)
        if secret is not None and not _signature_ok(parts, query, cluster, secret, region):
            return None
        authorization = (
            f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential']}, "
            f"SignedHeaders={query['X-Amz-SignedHeaders']}, Signature={query['X-Amz-Signature']}"
        )
        headers = {
            "x-k8s-aws-id": cluster,
            "Accept": "application/json",
            "Authorization": authorization,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{moto_url}/?{parts.query}", headers=headers) as response,
        ):
            if response.status != 200:
                return None
            text = await response.text()
        return _caller_arn(text)

    return verify


def _eks_url(token: str) -> str | None:
    if not token.startswith(EKS_TOKEN_PREFIX):
        return None
    encoded = token[len(EKS_TOKEN_PREFIX) :]
    if "=" in encoded or not re.fullmatch(r"[A-Za-z0-9_-]+", encoded):
        return None  # base64url without padding, as aws-iam-authenticator insists
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _check_presigned(
    parts: urllib.parse.SplitResult, query: dict[str, str], max_age: float
) -> tuple[str, str] | None:
    """(access key id, region) of a well-formed presigned GetCallerIdentity, else None."""
    host = re.fullmatch(r"sts\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?", parts.hostname or "")
    if parts.scheme != "https" or host is None or parts.path != "/" or parts.port is not None:
        return None
    wanted = {
        "Action": "GetCallerIdentity",
        "Version": "2011-06-15",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Expires": "60",
    }
    if any(query.get(k) != v for k, v in wanted.items()):
        return None
    signed = query.get("X-Amz-SignedHeaders", "").split(";")
    if "host" not in signed or "x-k8s-aws-id" not in signed or "X-Amz-Signature" not in query:
        return None
    scope = query.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or scope[2] != host[1] or scope[3:] != ["sts", "aws4_request"]:
        return None
    try:
        signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    except (KeyError, ValueError):
        return None
    age = time.time() - signed_at.replace(tzinfo=datetime.UTC).timestamp()
    if not -60 <= age <= max_age:
        return None
    return scope[0], scope[2]


def _signature_ok(
    parts: urllib.parse.SplitResult,
    query: dict[str, str],
    cluster: str,
    secret: str,
    region: str,
) -> bool:
    """Check the SigV4 query signature as STS would, with the cluster's id as header."""
    pairs = sorted(
        (urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
        for k, v in query.items()
        if k != "X-Amz-Signature"
    )
    header_values = {"host": parts.netloc, "x-k8s-aws-id": cluster}
    signed = query["X-Amz-SignedHeaders"].split(";")
    if any(h not in header_values for h in signed):
        return False  # a header we cannot reproduce: refuse
    canonical_headers = "".join(f"{h}:{header_values[h]}\n" for h in signed)
    stamp = query["X-Amz-Date"]
    scope = "/".join(query["X-Amz-Credential"].split("/")[1:])
    for payload in ("UNSIGNED-PAYLOAD", hashlib.sha256(b"").hexdigest()):
        canonical = "\n".join(
            [
                "GET",
                "/",
                "&".join(f"{k}={v}" for k, v in pairs),
                canonical_headers,
                ";".join(signed),
                payload,
            ]
        )
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{secret}".encode()
        for part in (stamp[:8], region, "sts", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(signature, query["X-Amz-Signature"]):
            return True
    return False


def _caller_arn(text: str) -> str | None:
    try:
        body = json.loads(text)
        result = body["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
        return str(result["Arn"])
    except (ValueError, KeyError, TypeError):
        pass
    match = re.search(r"<Arn>([^<]+)</Arn>", text)  # moto answers XML whatever it is asked
    return match[1] if match else None


# --------------------------------------------------------------------------------- helpers


def _body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type == "application/x-www-form-urlencoded":
        form = dict(urllib.parse.parse_qsl(raw.decode()))
        if "client_secret" in form:
            form["client_secret"] = "***"
        return form
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _aws_error(status: int, code: str, message: str) -> web.Response:
    # restJson1: botocore reads the code from x-amzn-ErrorType (up to the first ':').
    return web.json_response(
        {"message": message},
        status=status,
        headers={
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.eks/",
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


def _arm_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers={"x-ms-request-id": str(uuid.uuid4())},
    )


def _entra_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "error_codes": [0]}, status=status
    )


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _google_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": code}}, status=status
    )


def _injected(what: str, status: int, body: dict[str, Any] | None) -> web.Response:
    message = f"Injected fault: HTTP {status}."
    if body is not None:
        return web.json_response(body, status=status)
    if what == "GET eks cluster":
        code = {403: "AccessDeniedException", 429: "ThrottlingException"}.get(
            status, "ServerException" if status >= 500 else "InvalidRequestException"
        )
        return _aws_error(status, code, message)
    if what == "GET gke cluster":
        return _google_error(status, _GOOGLE_STATUS.get(status, "UNKNOWN"), message)
    if what.endswith("token"):
        return _entra_error(status, "temporarily_unavailable", message)
    code = {403: "AuthorizationFailed", 429: "TooManyRequests"}.get(status, "InternalServerError")
    return _arm_error(status, code, message)
