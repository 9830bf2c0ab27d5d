"""Options and target of Azure Container Instances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..base import DockerPlatform, PlatformOptions, Target

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["AciOptions", "AciTarget"]


@dataclass(frozen=True, kw_only=True)
class AciTarget(Target):
    """One resource group in one region."""

    resource_group: str
    region: str


@dataclass(frozen=True, kw_only=True)
class AciOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.AZURE_CONTAINER_INSTANCES`."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.AZURE_CONTAINER_INSTANCES
    scope: ClassVar[dict[str, bool]] = {"resource_group": True, "region": True}

    def target(self, spec: Spec) -> AciTarget:
        assert spec.resource_group is not None
        assert spec.region is not None
        return AciTarget(
            platform=self.platform, resource_group=spec.resource_group, region=spec.region
        )
