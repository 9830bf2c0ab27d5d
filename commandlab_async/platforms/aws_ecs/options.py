"""Options and target of AWS ECS/Fargate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..._validation import check_bool, check_ids, check_text
from ...errors import SpecError
from ..base import DockerPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["EcsOptions", "EcsTarget", "fargate_storage_gib"]

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


@dataclass(frozen=True, kw_only=True)
class EcsTarget(Target):
    """One ECS cluster in one region (None: the region of the AWS chain)."""

    region: str | None
    cluster: str = "default"


@dataclass(frozen=True, kw_only=True)
class EcsOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.AWS_ECS`: where and how the Fargate task runs."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.AWS_ECS
    target_class: ClassVar[type[EcsTarget]] = EcsTarget
    scope: ClassVar[dict[str, bool]] = {"region": False}
    # 1 vCPU takes 2048..8192 MiB on Fargate.
    defaults: ClassVar[dict[str, object]] = {"memory": 2048}
    not_honoured: ClassVar[dict[str, str]] = {
        "pids_limit": "Fargate has no per-task process limit",
        "network": "the daemon is reached over the task's network interface",
    }

    subnets: tuple[str, ...] = ()
    """Subnets of the task's network interface (required)."""
    security_groups: tuple[str, ...] = ()
    """Security groups of the task's network interface (required)."""
    cluster: str = "default"
    """ECS cluster."""
    assign_public_ip: bool = False
    """Give the task a public IP (and connect to it rather than to the private one)."""
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    log_configuration: Mapping[str, Any] | None = None
    """ECS ``logConfiguration`` of the container, passed as is."""

    def __post_init__(self) -> None:
        for name in ("subnets", "security_groups"):
            object.__setattr__(self, name, check_ids(name, getattr(self, name)))
        check_text("cluster", self.cluster, required=True)
        for name in ("execution_role_arn", "task_role_arn"):
            check_text(name, getattr(self, name))
        check_bool("assign_public_ip", self.assign_public_ip)
        if self.log_configuration is not None and not isinstance(self.log_configuration, Mapping):
            raise SpecError("log_configuration", "must be a mapping (ECS logConfiguration)")

    def check(self, spec: Spec) -> None:
        units = round(spec.cpu * 1024)
        allowed = _FARGATE_MEMORY.get(units)
        if allowed is None or abs(spec.cpu * 1024 - units) > 1e-6:
            raise SpecError(
                "cpu", f"Fargate takes 0.25, 0.5, 1, 2, 4, 8 or 16 vCPU, got {spec.cpu}"
            )
        if spec.memory not in allowed:
            raise SpecError(
                "memory",
                f"Fargate with {spec.cpu:g} vCPU takes {allowed[0]}..{allowed[-1]} MiB "
                f"in steps of {allowed[1] - allowed[0]}, got {spec.memory}",
            )
        if spec.disk is not None and not 21 <= fargate_storage_gib(spec.disk) <= 200:
            raise SpecError(
                "disk",
                f"Fargate's ephemeral storage is 21..200 GiB (20 GiB without `disk`), got "
                f"{spec.disk} MiB",
            )
        if spec.daemon_port < 1024 and not spec.run_as_root:
            # Every capability is dropped and Fargate can add back only SYS_PTRACE.
            raise SpecError(
                "daemon_port", "an unprivileged daemon cannot bind a port below 1024 on Fargate"
            )

    def target(self, spec: Spec) -> EcsTarget:
        return self.target_from({"region": spec.region, "cluster": self.cluster})

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> EcsTarget:
        region, cluster = take_scope(scope, "region", "cluster")
        return EcsTarget(platform=cls.platform, region=region, cluster=cluster or "default")


def fargate_storage_gib(disk: int) -> int:
    """The task's ``ephemeralStorage.sizeInGiB`` for ``disk`` MiB (rounded up)."""
    return -(-disk // 1024)
