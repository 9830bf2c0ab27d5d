"""Options and target of the four kinds of Kubernetes cluster."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..._validation import check_ids, check_int, check_number, check_text
from ...errors import SpecError
from .._clouds.azure import ARM_ENDPOINT, SUBSCRIPTION_ENV
from ..base import KubernetesPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = [
    "AKS_SERVER_SCOPE",
    "GKE_API_ENDPOINT",
    "AksOptions",
    "EksOptions",
    "GkeOptions",
    "KubeconfigOptions",
    "KubernetesTarget",
]

GKE_API_ENDPOINT = "https://container.googleapis.com"
#: The AKS server application every AAD-enabled cluster accepts tokens for.
AKS_SERVER_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"

Workload = Literal["pod", "deployment"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
Reach = Literal["proxy", "service", "pod-ip"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]

_NOT_HONOURED = {
    "pids_limit": "a pod's process limit is a node setting (the kubelet's podPidsLimit)",
    "network": "the daemon is reached over the pod's network (through the API server)",
}
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True, kw_only=True)
class KubernetesTarget(Target):
    """One namespace of one cluster, and what it takes to log in to it."""

    namespace: str
    cluster: str | None
    """The cluster's name (EKS, AKS, GKE), or the kubeconfig context (None: the current one)."""
    region: str | None = None
    """EKS region, or GKE location (region or zone)."""
    resource_group: str | None = None
    project_id: str | None = None
    subscription_id: str | None = None
    kubeconfig: str | None = None
    """kubeconfig file (None: ``KUBECONFIG`` as it is when the driver starts, then
    ``~/.kube/config``, then the in-cluster service account)."""
    api_endpoint: str | None = None
    """ARM (AKS) or the GKE API the cluster is described by."""
    credential: Any = field(default=None, repr=False)
    """The user's Azure async token credential (AKS; None: ``DefaultAzureCredential``)."""


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME.fullmatch(name))


@dataclass(frozen=True, kw_only=True)
class _KubernetesOptions(PlatformOptions):
    """What every kind of cluster takes: the pod's shape, how it is exposed and reached."""

    target_class: ClassVar[type[KubernetesTarget]] = KubernetesTarget
    not_honoured: ClassVar[dict[str, str]] = _NOT_HONOURED
    option_scope: ClassVar[tuple[str, ...]] = ()
    """Option fields ``commandlab gc`` may name besides the spec's scope fields."""

    workload: Workload = "pod"
    """``"pod"``: a bare pod (nothing restarts it). ``"deployment"``: a one-replica
    Deployment whose pod is the sandbox, for clusters whose policy wants controllers."""
    service: ServiceType | None = None
    """Expose the pod with a Service of this type, deleted with the pod (None: no Service)."""
    reach: Reach = "proxy"
    """How the client reaches the daemon: ``"proxy"`` through the API server's pod proxy
    (needs only the cluster credentials), ``"service"`` through the Service's load balancer
    or node port (HTTPS with a pinned per-sandbox certificate), ``"pod-ip"`` straight to
    the pod (a client that runs in the cluster)."""
    image_pull_policy: PullPolicy | None = None
    """None: Kubernetes' default (``Always`` for ``:latest`` images)."""
    image_pull_secrets: tuple[str, ...] = ()
    """Names of Secrets in the namespace that hold registry credentials."""
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """As in a pod spec, e.g. ``{"key": "sandbox", "operator": "Exists"}``."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Extra pod annotations (the spec's ``labels`` become pod labels)."""
    requests_per_second: float = 50.0
    """Sustained API requests per second to the cluster, every fleet of the process
    together. client-go's default is 5 (burst 10), far too slow for a fleet; kubectl has
    used 50 since Kubernetes 1.27. The API server's priority and fairness protects it."""
    request_burst: int = 100

    def __post_init__(self) -> None:
        if self.workload not in ("pod", "deployment"):
            raise SpecError("workload", f"must be 'pod' or 'deployment', got {self.workload!r}")
        if self.service not in (None, "ClusterIP", "NodePort", "LoadBalancer"):
            raise SpecError(
                "service", f"must be ClusterIP, NodePort or LoadBalancer, got {self.service!r}"
            )
        if self.reach not in ("proxy", "service", "pod-ip"):
            raise SpecError("reach", f"must be 'proxy', 'service' or 'pod-ip', got {self.reach!r}")
        if self.reach == "service" and self.service not in ("NodePort", "LoadBalancer"):
            raise SpecError(
                "reach",
                "'service' needs service='NodePort' or 'LoadBalancer' (a ClusterIP "
                "is reachable only inside the cluster: use reach='pod-ip' there)",
            )
        if self.image_pull_policy not in (None, "Always", "IfNotPresent", "Never"):
            raise SpecError(
                "image_pull_policy",
                f"must be Always, IfNotPresent, Never or None, got {self.image_pull_policy!r}",
            )
        secrets = self.image_pull_secrets
        if secrets != ():
            secrets = check_ids("image_pull_secrets", secrets)
        for name in secrets:
            if not _DNS_SUBDOMAIN.fullmatch(name):
                raise SpecError("image_pull_secrets", f"{name!r} is not a Secret name")
        object.__setattr__(self, "image_pull_secrets", secrets)
        check_text("service_account", self.service_account)
        if self.service_account is not None and not _DNS_SUBDOMAIN.fullmatch(self.service_account):
            raise SpecError("service_account", f"{self.service_account!r} is not a name")
        self._check_map("node_selector", self.node_selector, value_is_label=True)
        self._check_map("annotations", self.annotations, value_is_label=False)
        if not isinstance(self.tolerations, tuple) or not all(
            isinstance(t, Mapping) and set(t) <= _TOLERATION_KEYS for t in self.tolerations
        ):
            raise SpecError(
                "tolerations",
                f"must be a tuple of mappings with keys among {sorted(_TOLERATION_KEYS)}",
            )
        object.__setattr__(
            self, "tolerations", tuple(MappingProxyType(dict(t)) for t in self.tolerations)
        )
        check_number("requests_per_second", self.requests_per_second, low=0.1, high=10_000)
        check_int("request_burst", self.request_burst, low=1, high=10_000)

    def _check_map(self, name: str, value: object, *, value_is_label: bool) -> None:
        if not isinstance(value, Mapping):
            raise SpecError(name, f"must be a mapping, got {type(value).__name__}")
        for key, item in value.items():
            if not isinstance(key, str) or not _label_key(key):
                raise SpecError(name, f"{key!r} is not a valid Kubernetes key")
            if not isinstance(item, str):
                raise SpecError(name, f"value of {key!r} must be a str")
            if value_is_label and item and not _LABEL_NAME.fullmatch(item):
                raise SpecError(name, f"value of {key!r} is not a valid label value: {item!r}")
        object.__setattr__(self, name, MappingProxyType(dict(value)))

    def check(self, spec: Spec) -> None:
        # The pod name is the sandbox's name (prefix + 13 characters): a DNS-1123 label,
        # because a Service of the same name must be one too.
        if spec.name_prefix.endswith("-"):
            raise SpecError("name_prefix", "a Kubernetes name cannot hold '--' at the join")
        for key, value in spec.labels.items():
            if not _label_key(key) or (value and not _LABEL_NAME.fullmatch(value)):
                raise SpecError(
                    "labels",
                    f"{key!r}: {value!r} is not a Kubernetes label (values: at most 63 letters, "
                    "digits, '-', '_' or '.', starting and ending alphanumeric)",
                )

    def target(self, spec: Spec) -> KubernetesTarget:
        return self._target(
            namespace=getattr(spec, "namespace", "default"),
            cluster=getattr(spec, "cluster_name", None),
            region=spec.region,
            resource_group=spec.resource_group,
            project_id=spec.project_id,
        )

    def _target(self, **scope: Any) -> KubernetesTarget:
        return KubernetesTarget(platform=self.platform, **scope)

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> KubernetesTarget:
        flat = tuple(n for n in cls.scope if n != "cluster_name")
        names = ("namespace", "cluster", *flat, *cls.option_scope)
        values = dict(zip(names, take_scope(scope, *names), strict=True))
        extra = {n: values.pop(n) for n in cls.option_scope}
        options = cls(**{k: v for k, v in extra.items() if v is not None})  # type: ignore[arg-type]
        namespace = values.pop("namespace") or "default"
        cluster = values.pop("cluster")
        for name, required in cls.scope.items():
            value = cluster if name == "cluster_name" else values.get(name)
            if required and value is None:
                flag = "cluster" if name == "cluster_name" else name
                raise SpecError(flag, f"is required on platform '{cls.platform}'")
        return options._target(namespace=namespace, cluster=cluster, **values)


@dataclass(frozen=True, kw_only=True)
class KubeconfigOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.LOCAL`: a kubeconfig cluster or in-cluster config."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.LOCAL
    kubeconfig: str | None = None
    """kubeconfig file (default: ``KUBECONFIG``, then ``~/.kube/config``, then the
    in-cluster service account)."""
    context: str | None = None
    """kubeconfig context (default: the current context)."""
    image_pull_policy: PullPolicy | None = "IfNotPresent"
    """Local clusters (kind, minikube, k3d) hold images loaded by hand: never pull those."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_text("kubeconfig", self.kubeconfig)
        check_text("context", self.context)

    def target(self, spec: Spec) -> KubernetesTarget:
        return self._target(namespace=getattr(spec, "namespace", "default"), cluster=None)

    def _target(self, **scope: Any) -> KubernetesTarget:
        scope["cluster"] = scope.get("cluster") or self.context
        # Read when provisioning: kubernetes_asyncio reads KUBECONFIG when it is imported.
        kubeconfig = self.kubeconfig or os.environ.get("KUBECONFIG") or None
        return KubernetesTarget(platform=self.platform, kubeconfig=kubeconfig, **scope)


@dataclass(frozen=True, kw_only=True)
class EksOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.AWS_EKS`: the cluster's endpoint and CA come
    from EKS ``DescribeCluster``, its tokens are presigned STS requests (no aws CLI)."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.AWS_EKS
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "region": True}


@dataclass(frozen=True, kw_only=True)
class AksOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.AZURE_AKS`: the endpoint and CA come from ARM
    ``listClusterUserCredential``, tokens from azure-identity for the AKS server app."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.AZURE_AKS
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "resource_group": True}
    option_scope = ("subscription_id",)

    subscription_id: str | None = None
    """Azure subscription (None: ``AZURE_SUBSCRIPTION_ID``)."""
    credential: Any = field(default=None, repr=False, compare=False)
    """An ``azure.core.credentials_async.AsyncTokenCredential`` of your own (you close it);
    None: ``azure.identity.aio.DefaultAzureCredential``, closed with the driver."""
    arm_endpoint: str = ARM_ENDPOINT
    """Azure Resource Manager of a sovereign cloud."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_text("subscription_id", self.subscription_id)
        _check_https("arm_endpoint", self.arm_endpoint)
        if self.credential is not None and not callable(
            getattr(self.credential, "get_token", None)
        ):
            raise SpecError("credential", "must be an async token credential (with get_token)")

    def _target(self, **scope: Any) -> KubernetesTarget:
        subscription_id = self.subscription_id or os.environ.get(SUBSCRIPTION_ENV)
        if not subscription_id:
            raise SpecError(
                "subscription_id",
                f"is required on AKS: set AksOptions(subscription_id=...) or {SUBSCRIPTION_ENV}",
            )
        return KubernetesTarget(
            platform=self.platform,
            subscription_id=subscription_id,
            api_endpoint=self.arm_endpoint.rstrip("/"),
            credential=self.credential,
            **scope,
        )


@dataclass(frozen=True, kw_only=True)
class GkeOptions(_KubernetesOptions):
    """Options of :attr:`KubernetesPlatform.GCP_GKE`: the endpoint and CA come from the GKE
    API, tokens from Google's default credentials. ``region`` is the cluster's location
    (a region, or a zone for zonal clusters)."""

    platform: ClassVar[KubernetesPlatform] = KubernetesPlatform.GCP_GKE
    scope: ClassVar[dict[str, bool]] = {"cluster_name": True, "project_id": True, "region": True}

    api_endpoint: str = GKE_API_ENDPOINT
    """The GKE API that describes the cluster (e.g. a Private Service Connect endpoint)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_https("api_endpoint", self.api_endpoint)

    def _target(self, **scope: Any) -> KubernetesTarget:
        return KubernetesTarget(
            platform=self.platform, api_endpoint=self.api_endpoint.rstrip("/"), **scope
        )


def _check_https(name: str, value: object) -> None:
    check_text(name, value, required=True)
    assert isinstance(value, str)
    if not value.startswith("https://"):
        raise SpecError(name, f"must be an https:// URL, got {value!r}")
