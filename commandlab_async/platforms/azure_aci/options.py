"""Options and target of Azure Container Instances."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..._validation import check_ids, check_text
from ...errors import SpecError
from .._clouds.azure import ARM_ENDPOINT, SUBSCRIPTION_ENV
from ..base import DockerPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["ARM_ENDPOINT", "SUBSCRIPTION_ENV", "AciOptions", "AciTarget", "memory_in_gb"]

# ACI's sizes: a Linux group takes up to 4 vCPU and 16 GB in most regions; memory is
# counted in GB with one decimal.
_MAX_CPU = 4.0
_MAX_MEMORY_GB = 16.0
# ARM's tag rules.
_MAX_TAGS = 50
_TAG_NAME_FORBIDDEN = set("<>%&\\?/")
# A DNS name label: 3..63 lowercase letters, digits and dashes, a letter first.
_DNS_LABEL = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")


def memory_in_gb(memory_mib: int) -> float:
    """A spec's memory (MiB) in ACI's unit (GB with one decimal)."""
    return round(memory_mib / 1024, 1)


@dataclass(frozen=True, kw_only=True)
class AciTarget(Target):
    """One resource group in one region of one subscription, reached with one credential."""

    subscription_id: str
    resource_group: str
    region: str | None
    """Where new groups go (None: a target named only to list and delete, as gc does)."""
    arm_endpoint: str = ARM_ENDPOINT
    credential: Any = field(default=None, repr=False)
    """The user's async token credential (None: ``DefaultAzureCredential``)."""


@dataclass(frozen=True, kw_only=True)
class AciOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.AZURE_CONTAINER_INSTANCES`: one container group
    per sandbox, reached over HTTPS with a certificate made for it and pinned."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.AZURE_CONTAINER_INSTANCES
    target_class: ClassVar[type[AciTarget]] = AciTarget
    scope: ClassVar[dict[str, bool]] = {"resource_group": True, "region": True}
    not_honoured: ClassVar[dict[str, str]] = {
        "pids_limit": "ACI has no per-container process limit",
        "network": "the daemon is reached over the container group's network",
        "disk": "ACI cannot limit a container's filesystem",
        "run_as_root": "ACI runs the image's own USER: build the image with the one you want",
    }

    subscription_id: str | None = None
    """Azure subscription (None: ``AZURE_SUBSCRIPTION_ID``)."""
    subnet_ids: tuple[str, ...] = ()
    """Resource ids of VNet subnets (delegated to ``Microsoft.ContainerInstance``): the group
    gets a private IP there instead of a public one, and the client must be able to route
    to it."""
    dns_name_label: str | None = None
    """Give a public group ``<label>.<region>.azurecontainer.io`` (must be unique in the
    region, so only for single sandboxes; the client still connects by IP)."""
    credential: Any = field(default=None, repr=False, compare=False)
    """An ``azure.core.credentials_async.AsyncTokenCredential`` of your own (you close it);
    None: ``azure.identity.aio.DefaultAzureCredential``, closed with the driver."""
    arm_endpoint: str = ARM_ENDPOINT
    """Azure Resource Manager of a sovereign cloud (e.g. ``https://management.chinacloudapi.cn``)."""

    def __post_init__(self) -> None:
        check_text("subscription_id", self.subscription_id)
        if self.subnet_ids != ():
            object.__setattr__(self, "subnet_ids", check_ids("subnet_ids", self.subnet_ids))
        check_text("dns_name_label", self.dns_name_label)
        if self.dns_name_label is not None:
            if self.subnet_ids:
                raise SpecError("dns_name_label", "a group on a VNet subnet has no public name")
            if not _DNS_LABEL.fullmatch(self.dns_name_label):
                raise SpecError(
                    "dns_name_label",
                    "3..63 lowercase letters, digits and dashes, a letter first, "
                    f"got {self.dns_name_label!r}",
                )
        check_text("arm_endpoint", self.arm_endpoint, required=True)
        if not self.arm_endpoint.startswith("https://"):
            raise SpecError("arm_endpoint", f"must be an https:// URL, got {self.arm_endpoint!r}")
        if self.credential is not None and not callable(
            getattr(self.credential, "get_token", None)
        ):
            raise SpecError("credential", "must be an async token credential (with get_token)")

    def check(self, spec: Spec) -> None:
        if not 0 < spec.cpu <= _MAX_CPU or abs(spec.cpu * 100 - round(spec.cpu * 100)) > 1e-9:
            raise SpecError("cpu", f"ACI takes 0.01..{_MAX_CPU:g} vCPU, got {spec.cpu}")
        gb = memory_in_gb(spec.memory)
        if not 0.1 <= gb <= _MAX_MEMORY_GB or abs(gb * 1024 - spec.memory) > 0.5:
            raise SpecError(
                "memory",
                f"ACI counts memory in steps of 0.1 GB up to {_MAX_MEMORY_GB:g} GB "
                f"(e.g. 512, 1024 or 1536 MiB), got {spec.memory} MiB",
            )
        if "--" in spec.name_prefix or spec.name_prefix.endswith("-"):
            raise SpecError("name_prefix", "ACI group names cannot hold '--' or end in '-'")
        if len(spec.labels) > _MAX_TAGS - 8:  # our own labels are tags too
            raise SpecError("labels", f"ARM takes {_MAX_TAGS} tags, ours included")
        for key, value in spec.labels.items():
            if len(key) > 512 or len(value) > 256 or _TAG_NAME_FORBIDDEN & set(key):
                raise SpecError(
                    "labels",
                    f"{key!r}: {value!r} breaks ARM's tag rules (names at most 512 characters "
                    "without <>%&\\?/, values at most 256)",
                )

    def target(self, spec: Spec) -> AciTarget:
        return self._target(spec.resource_group, spec.region, self.subscription_id)

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> AciTarget:
        resource_group, region, subscription_id = take_scope(
            scope, "resource_group", "region", "subscription_id"
        )
        return cls()._target(resource_group, region, subscription_id)

    def _target(
        self, resource_group: str | None, region: str | None, subscription_id: str | None
    ) -> AciTarget:
        # Read when provisioning, not when the spec is made: the environment may change.
        subscription_id = subscription_id or os.environ.get(SUBSCRIPTION_ENV)
        if not subscription_id:
            raise SpecError(
                "subscription_id",
                "is required on Azure Container Instances: set "
                f"AciOptions(subscription_id=...) or {SUBSCRIPTION_ENV}",
            )
        if not resource_group:
            raise SpecError("resource_group", "is required on Azure Container Instances")
        return AciTarget(
            platform=self.platform,
            subscription_id=subscription_id,
            resource_group=resource_group,
            region=region,
            arm_endpoint=self.arm_endpoint.rstrip("/"),
            credential=self.credential,
        )
