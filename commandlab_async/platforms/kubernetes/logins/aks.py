"""Logging in to an AKS cluster (``azure-aks``) with azure-identity (no kubelogin).

ARM ``listClusterUserCredential`` gives the endpoint and CA (the kubeconfig it returns is
read for those alone); tokens come from the Azure credential, for the AKS server
application every AAD-enabled cluster accepts.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from ....errors import SpecError
from ..._clouds.azure import ARM_ENDPOINT, AzureSession, arm_scope
from ...base import KubernetesPlatform
from ..options import AKS_SERVER_SCOPE, KubernetesTarget
from .base import ClusterLogin, b64, error, missing, required
from .rest import HTTP_TIMEOUT, fetch_json
from .tokens import Token, make_token

__all__ = ["log_in"]

_ARM_API_VERSION = "2024-02-01"


async def log_in(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        import azure.identity.aio  # noqa: F401  (the azure extra: AzureSession signs in with it)
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
    except ImportError as exc:
        raise missing(KubernetesPlatform.AZURE_AKS) from exc
    cluster = required(target.cluster, "cluster", target)
    group = required(target.resource_group, "resource_group", target)
    subscription = target.subscription_id
    if not subscription:
        raise SpecError(
            "subscription_id",
            "is required on AKS: set AksOptions(subscription_id=...) or AZURE_SUBSCRIPTION_ID",
        )
    arm = (target.api_endpoint or ARM_ENDPOINT).rstrip("/")
    azure_session = await AzureSession.open(target.credential, timeout=HTTP_TIMEOUT)
    result._closers.append(azure_session.close)

    async def get_token(scope: str) -> Any:
        try:
            return await azure_session.credential.get_token(scope)
        except ClientAuthenticationError as exc:
            status = getattr(exc, "status_code", None)
            raise error(
                target,
                f"no Azure token for {scope}: sign in (az login), or set AZURE_TENANT_ID, "
                f"AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or use a managed identity "
                f"[{exc.message}]",
                code=status or type(exc).__name__,
            ) from exc
        except ServiceRequestError as exc:
            raise error(target, f"Azure sign-in failed: {exc}", transient=True) from exc

    async def fetch() -> Token:
        access = await get_token(AKS_SERVER_SCOPE)
        return make_token(access.token, lifetime=access.expires_on - time.time())

    arm_token = await get_token(arm_scope(arm))
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

    answer = await fetch_json(
        azure_session.http,
        "POST",
        url,
        {"Authorization": f"Bearer {arm_token.token}"},
        target,
        explain,
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
        kubeconfig = yaml.safe_load(b64(encoded, "kubeconfigs[0].value", target))
        clusters = {c["name"]: c["cluster"] for c in kubeconfig["clusters"]}
        current = kubeconfig.get("current-context")
        contexts = {c["name"]: c["context"] for c in kubeconfig.get("contexts") or []}
        name = contexts[current]["cluster"] if current in contexts else next(iter(clusters))
        cluster = clusters[name]
        return str(cluster["server"]), b64(
            cluster["certificate-authority-data"], "certificate-authority-data", target
        )
    except (KeyError, IndexError, TypeError, StopIteration, yaml.YAMLError) as exc:
        raise error(
            target, f"listClusterUserCredential answered no usable kubeconfig: {exc!r}",
            code="InvalidResponse",
        ) from exc  # fmt: skip
