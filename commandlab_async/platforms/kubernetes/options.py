"""Options and target of the four kinds of Kubernetes cluster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...validation import check_text
from ..base import KubernetesPlatform, PlatformOptions, Target

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["AksOptions", "EksOptions", "GkeOptions", "KubeconfigOptions", "KubernetesTarget"]

_PIDS = {"pids_limit": "a pod's process limit is a node setting (the kubelet's podPidsLimit)"}


@dataclass(frozen=True, kw_only=True)
class KubernetesTarget(Target):
    """One namespace of one cluster."""

    cluster: str | None
    """The cluster's name, or the kubeconfig context (None: the current one)."""
    location: str | None
    """Region, resource group or project that holds the cluster, where it needs one."""
    namespace: str


@dataclass(frozen=True, kw_only=True)
class _KubernetesOptions(PlatformOptions):
    not_honoured: ClassVar[dict[str, str]] = _PIDS

    def target(self, spec: Spec) -> KubernetesTarget:
        namespace = getattr(spec, "namespace", "default")
        scopes = (spec.project_id, spec.resource_group, spec.region)
        location = "/".join(s for s in scopes if s) or None
        cluster = getattr(spec, "cluster_name", None)
        return KubernetesTarget(
            platform=self.platform, cluster=cluster, location=location, namespace=namespace
        )


@dataclass(frozen=True, kw_only=True)
class KubeconfigOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.LOCAL`: a kubeconfig cluster or in-cluster config."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.LOCAL
    kubeconfig: str | None = None
    """kubeconfig file (default: ``KUBECONFIG``, then ``~/.kube/config``)."""
    context: str | None = None
    """kubeconfig context (default: the current context)."""

    def __post_init__(self) -> None:
        check_text("kubeconfig", self.kubeconfig)
        check_text("context", self.context)

    def target(self, spec: Spec) -> KubernetesTarget:
        namespace = getattr(spec, "namespace", "default")
        return KubernetesTarget(
            platform=self.platform,
            cluster=self.context,
            location=self.kubeconfig,
            namespace=namespace,
        )


@dataclass(frozen=True, kw_only=True)
class EksOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.AWS_EKS`."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.AWS_EKS
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "region": True}


@dataclass(frozen=True, kw_only=True)
class AksOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.AZURE_AKS`."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.AZURE_AKS
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "resource_group": True}


@dataclass(frozen=True, kw_only=True)
class GkeOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.GCP_GKE`."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.GCP_GKE
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "project_id": True, "region": True}
