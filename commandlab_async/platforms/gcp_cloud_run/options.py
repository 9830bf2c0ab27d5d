"""Options and target of Google Cloud Run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..base import DockerPlatform, PlatformOptions, Target

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["CloudRunOptions", "CloudRunTarget"]


@dataclass(frozen=True, kw_only=True)
class CloudRunTarget(Target):
    """One project in one region."""

    project_id: str
    region: str


@dataclass(frozen=True, kw_only=True)
class CloudRunOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.GCP_CLOUD_RUN`."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.GCP_CLOUD_RUN
    scope: ClassVar[dict[str, bool]] = {"project_id": True, "region": True}

    def target(self, spec: Spec) -> CloudRunTarget:
        assert spec.project_id is not None
        assert spec.region is not None
        return CloudRunTarget(
            platform=self.platform, project_id=spec.project_id, region=spec.region
        )
