"""Specs: frozen, typed descriptions of a sandbox, validated at construction.

An invalid spec raises :class:`~commandlab_async.errors.SpecError` naming the field, before
any backend is contacted.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import SpecError

__all__ = [
    "DEFAULT_IMAGE",
    "DockerPlatform",
    "DockerSpec",
    "KubernetesPlatform",
    "KubernetesSpec",
    "Spec",
]

#: The project's computer image, built locally by ``scripts/build-images.sh``
#: or ``docker build commandlab_async/image``.
DEFAULT_IMAGE = "commandlab/computer:latest"

_NAME_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,29}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_RESERVED_LABEL_PREFIX = "commandlab."
_RESERVED_ENV_PREFIX = "COMMANDLAB_"


class DockerPlatform(enum.StrEnum):
    """Where a :class:`DockerSpec` container runs."""

    LOCAL = "docker"
    AWS_ECS = "aws-ecs"
    AZURE_CONTAINER_INSTANCES = "azure-aci"
    GCP_CLOUD_RUN = "gcp-cloud-run"


class KubernetesPlatform(enum.StrEnum):
    """Which Kubernetes cluster a :class:`KubernetesSpec` pod runs on."""

    LOCAL = "kubernetes"
    AWS_EKS = "aws-eks"
    AZURE_AKS = "azure-aks"
    GCP_GKE = "gcp-gke"


def _check_number(name: str, value: object, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise SpecError(name, f"must be between {low:g} and {high:g}, got {value!r}")


def _check_text(name: str, value: object, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise SpecError(name, "must be a non-empty string")


def _frozen_str_map(name: str, value: object, key_pattern: re.Pattern[str], reserved: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(name, f"must be a mapping of str to str, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key_pattern.fullmatch(key):
            raise SpecError(name, f"invalid key {key!r}")
        if key.startswith(reserved):
            raise SpecError(name, f"key {key!r} uses the reserved prefix {reserved!r}")
        if not isinstance(item, str):
            raise SpecError(name, f"value of {key!r} must be a str, got {type(item).__name__}")
        if "\x00" in item:
            raise SpecError(name, f"value of {key!r} contains a NUL byte")


@dataclass(frozen=True, kw_only=True)
class _SandboxSpec:
    """Fields every platform shares."""

    image: str = DEFAULT_IMAGE
    """Container image. It must run the commandlab daemon (the default image does)."""
    daemon_port: int = 8000
    """Port the daemon listens on inside the sandbox."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the sandbox (names starting with ``COMMANDLAB_`` are reserved)."""
    cpu: float = 1.0
    """CPU cores the sandbox may use."""
    memory: int = 1024
    """Memory limit in MiB."""
    ttl: float | None = 3600.0
    """Seconds until the sandbox deletes itself even if this process dies; ``None``: never."""
    ready_timeout: float = 120.0
    """Seconds to wait for the daemon to answer before giving up."""
    destroy_timeout: float = 60.0
    """Seconds cleanup may take before it gives up (the TTL and ``gc`` remain)."""
    name_prefix: str = "commandlab"
    """Start of each sandbox name: lowercase letters, digits and dashes."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels/tags (keys starting with ``commandlab.`` are reserved)."""
    region: str | None = None
    resource_group: str | None = None
    project_id: str | None = None

    def __post_init__(self) -> None:
        _check_text("image", self.image, required=True)
        if isinstance(self.daemon_port, bool) or not isinstance(self.daemon_port, int):
            raise SpecError("daemon_port", "must be an int")
        if not 1 <= self.daemon_port <= 65535:
            raise SpecError("daemon_port", f"must be between 1 and 65535, got {self.daemon_port}")
        _frozen_str_map("env", self.env, _ENV_NAME, _RESERVED_ENV_PREFIX)
        _frozen_str_map("labels", self.labels, _LABEL_KEY, _RESERVED_LABEL_PREFIX)
        for key, value in self.labels.items():
            if len(value) > 63:
                raise SpecError("labels", f"value of {key!r} is longer than 63 characters")
        _check_number("cpu", self.cpu, low=0.01, high=64)
        if isinstance(self.memory, bool) or not isinstance(self.memory, int):
            raise SpecError("memory", "must be an int (MiB)")
        if not 16 <= self.memory <= 262_144:
            raise SpecError("memory", f"must be between 16 and 262144 MiB, got {self.memory}")
        if self.ttl is not None:
            _check_number("ttl", self.ttl, low=1, high=7 * 24 * 3600)
        _check_number("ready_timeout", self.ready_timeout, low=0.001, high=24 * 3600)
        _check_number("destroy_timeout", self.destroy_timeout, low=0.1, high=3600)
        if not isinstance(self.name_prefix, str) or not _NAME_PREFIX.fullmatch(self.name_prefix):
            raise SpecError(
                "name_prefix",
                "must start with a lowercase letter and hold at most 30 lowercase letters, "
                f"digits and dashes, got {self.name_prefix!r}",
            )
        for name in ("region", "resource_group", "project_id"):
            _check_text(name, getattr(self, name))
        # Freeze the mappings so a spec cannot change under a running fleet.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def _require(self, platform: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) is None:
                raise SpecError(name, f"is required on platform {platform!r}")


@dataclass(frozen=True, kw_only=True)
class DockerSpec(_SandboxSpec):
    """A sandbox that is one container: on local Docker, ECS/Fargate, ACI or Cloud Run."""

    platform: DockerPlatform = DockerPlatform.LOCAL
    pids_limit: int = 1024
    """Maximum number of processes in the sandbox (local Docker)."""
    run_as_root: bool = False
    """Run the daemon and commands as root with Docker's default capabilities (for
    workloads that install packages); by default the image's unprivileged user runs
    them with every capability dropped."""

    def __post_init__(self) -> None:
        if not isinstance(self.platform, DockerPlatform):
            raise SpecError("platform", f"must be a DockerPlatform, got {self.platform!r}")
        super().__post_init__()
        if not isinstance(self.run_as_root, bool):
            raise SpecError("run_as_root", "must be a bool")
        if isinstance(self.pids_limit, bool) or not isinstance(self.pids_limit, int):
            raise SpecError("pids_limit", "must be an int")
        if not 16 <= self.pids_limit <= 1_000_000:
            raise SpecError("pids_limit", f"must be between 16 and 1000000, got {self.pids_limit}")
        if self.platform is DockerPlatform.AZURE_CONTAINER_INSTANCES:
            self._require(self.platform, "resource_group", "region")
        elif self.platform is DockerPlatform.GCP_CLOUD_RUN:
            self._require(self.platform, "project_id", "region")
        elif self.platform is DockerPlatform.LOCAL:
            for name in ("region", "resource_group", "project_id"):
                if getattr(self, name) is not None:
                    raise SpecError(name, "has no meaning on local Docker")


@dataclass(frozen=True, kw_only=True)
class KubernetesSpec(_SandboxSpec):
    """A sandbox that is one pod (a Deployment of one replica plus a Service)."""

    platform: KubernetesPlatform = KubernetesPlatform.LOCAL
    namespace: str = "default"
    cluster_name: str | None = None
    context: str | None = None
    """kubeconfig context (LOCAL only); default: the current context."""

    def __post_init__(self) -> None:
        if not isinstance(self.platform, KubernetesPlatform):
            raise SpecError("platform", f"must be a KubernetesPlatform, got {self.platform!r}")
        super().__post_init__()
        if not isinstance(self.namespace, str) or not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", self.namespace
        ):
            raise SpecError("namespace", f"must be a DNS-1123 label, got {self.namespace!r}")
        _check_text("cluster_name", self.cluster_name)
        _check_text("context", self.context)
        if self.platform is KubernetesPlatform.AWS_EKS:
            self._require(self.platform, "cluster_name", "region")
        elif self.platform is KubernetesPlatform.AZURE_AKS:
            self._require(self.platform, "cluster_name", "resource_group")
        elif self.platform is KubernetesPlatform.GCP_GKE:
            self._require(self.platform, "cluster_name", "project_id", "region")
        if self.context is not None and self.platform is not KubernetesPlatform.LOCAL:
            raise SpecError("context", "is only used on the LOCAL platform (kubeconfig)")


Spec = DockerSpec | KubernetesSpec
