"""Specs: frozen, typed descriptions of a sandbox, validated at construction.

An invalid spec raises :class:`~commandlab_async.errors.SpecError` naming the field, before
any backend is contacted.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import SpecError

__all__ = [
    "DEFAULT_IMAGE",
    "DockerPlatform",
    "DockerSpec",
    "EcsTask",
    "EndpointResolver",
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
# Fargate's valid memory sizes (MiB) per CPU units (1024 units = 1 vCPU).
_FARGATE_MEMORY: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4097, 1024)),
    1024: list(range(2048, 8193, 1024)),
    2048: list(range(4096, 16385, 1024)),
    4096: list(range(8192, 30721, 1024)),
    8192: list(range(16384, 61441, 4096)),
    16384: list(range(32768, 122881, 8192)),
}


@dataclass(frozen=True)
class EcsTask:
    """What an endpoint resolver is told about a running ECS task."""

    name: str
    task_arn: str
    private_ip: str | None
    public_ip: str | None
    port: int
    description: Mapping[str, Any]
    """The task as ``describe_tasks`` returned it."""


EndpointResolver = Callable[[EcsTask], Awaitable[str]]


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
    memory: int = 2048
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
    # AWS ECS/Fargate
    cluster: str | None = None
    """ECS cluster (default: ``default``)."""
    subnets: tuple[str, ...] = ()
    """Subnets of the task's network interface (required on ECS)."""
    security_groups: tuple[str, ...] = ()
    """Security groups of the task's network interface (required on ECS)."""
    assign_public_ip: bool = False
    """Give the task a public IP (and connect to it rather than to the private one)."""
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    log_configuration: Mapping[str, Any] | None = None
    """ECS ``logConfiguration`` of the container, passed as is."""
    endpoint_resolver: EndpointResolver | None = None
    """Async hook mapping a running task to the daemon's base URL (default: its public IP
    with ``assign_public_ip``, else its private IP). Replace it to reach tasks through a
    tunnel or load balancer."""

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
        self._check_ecs_fields()
        if self.platform is DockerPlatform.AZURE_CONTAINER_INSTANCES:
            self._require(self.platform, "resource_group", "region")
        elif self.platform is DockerPlatform.GCP_CLOUD_RUN:
            self._require(self.platform, "project_id", "region")
        elif self.platform is DockerPlatform.LOCAL:
            for name in ("region", "resource_group", "project_id"):
                if getattr(self, name) is not None:
                    raise SpecError(name, "has no meaning on local Docker")

    def _check_ecs_fields(self) -> None:
        ecs_only = (
            "cluster",
            "subnets",
            "security_groups",
            "assign_public_ip",
            "execution_role_arn",
            "task_role_arn",
            "log_configuration",
            "endpoint_resolver",
        )
        if self.platform is not DockerPlatform.AWS_ECS:
            for name in ecs_only:
                if getattr(self, name) not in (None, (), False):
                    raise SpecError(name, "is only used on platform 'aws-ecs'")
            return
        for name in ("cluster", "execution_role_arn", "task_role_arn"):
            _check_text(name, getattr(self, name))
        for name in ("subnets", "security_groups"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple | list) or not value:
                raise SpecError(name, "must be a non-empty tuple of ids on aws-ecs")
            for item in value:
                _check_text(name, item, required=True)
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.assign_public_ip, bool):
            raise SpecError("assign_public_ip", "must be a bool")
        if self.log_configuration is not None and not isinstance(self.log_configuration, Mapping):
            raise SpecError("log_configuration", "must be a mapping (ECS logConfiguration)")
        if self.endpoint_resolver is not None and not callable(self.endpoint_resolver):
            raise SpecError("endpoint_resolver", "must be an async callable")
        units = round(self.cpu * 1024)
        allowed = _FARGATE_MEMORY.get(units)
        if allowed is None or abs(self.cpu * 1024 - units) > 1e-6:
            raise SpecError(
                "cpu", f"Fargate takes 0.25, 0.5, 1, 2, 4, 8 or 16 vCPU, got {self.cpu}"
            )
        if self.memory not in allowed:
            raise SpecError(
                "memory",
                f"Fargate with {self.cpu:g} vCPU takes {allowed[0]}..{allowed[-1]} MiB "
                f"in steps of {allowed[1] - allowed[0]}, got {self.memory}",
            )


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
