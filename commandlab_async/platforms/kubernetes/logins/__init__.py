"""Reaching and authenticating to a Kubernetes cluster: one module per kind of cluster.

:func:`login` finds the cluster's API server, the CA that signs its certificate and a way
to authenticate, and returns a :class:`ClusterLogin` that hands out fresh
``kubernetes_asyncio`` configurations, request headers and an SSL context, keeping
short-lived tokens fresh in the background (:mod:`.tokens`):

- :mod:`.kubeconfig` (``kubernetes``): a kubeconfig file and context (tokens, client
  certificates, exec plugins, OIDC), or the pod's service account when running in a cluster.
- :mod:`.eks` (``aws-eks``): ``DescribeCluster`` gives the endpoint and CA; the token is a
  presigned STS ``GetCallerIdentity`` URL, made with botocore (no aws CLI, no exec plugin).
- :mod:`.aks` (``azure-aks``): ARM ``listClusterUserCredential`` gives the endpoint and
  CA; tokens come from azure-identity for the AKS server application.
- :mod:`.gke` (``gcp-gke``): the GKE API gives the endpoint and CA; the token is the
  Google access token of the default credentials.

Nothing here blocks the event loop: file reads, botocore's credential chain and
google-auth's refreshes run in threads. Each module imports its cloud's SDK only when it
logs in, so a missing extra is a :class:`MissingExtraError` naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ...base import KubernetesPlatform
from ..options import KubernetesTarget
from . import aks, eks, gke, kubeconfig
from .base import ClusterLogin, missing

__all__ = ["ClusterLogin", "login"]

_LOG_IN: dict[KubernetesPlatform, Callable[[KubernetesTarget, ClusterLogin], Awaitable[None]]] = {
    KubernetesPlatform.LOCAL: kubeconfig.log_in,
    KubernetesPlatform.AWS_EKS: eks.log_in,
    KubernetesPlatform.AZURE_AKS: aks.log_in,
    KubernetesPlatform.GCP_GKE: gke.log_in,
}


async def login(target: KubernetesTarget) -> ClusterLogin:
    """Log in to the cluster ``target`` names; the caller closes the result.

    Raises :class:`MissingExtraError` when an SDK the platform needs is missing,
    :class:`SpecError` for a kubeconfig or context that does not exist, and
    :class:`BackendError` when the cloud refuses or fails (``transient`` for
    throttling, 5xx and connection errors, which are worth retrying).
    """
    platform = KubernetesPlatform(target.platform)
    result = ClusterLogin(platform)
    try:
        try:
            import kubernetes_asyncio.client  # noqa: F401  (configuration() needs it)
        except ImportError as exc:
            raise missing(platform) from exc
        await _LOG_IN[platform](target, result)
        await result._finish()
    except BaseException:
        await asyncio.shield(result.close())
        raise
    return result
