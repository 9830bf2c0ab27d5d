"""Options and target of the local Docker Engine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..base import DockerPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["DockerOptions", "DockerTarget"]


@dataclass(frozen=True, kw_only=True)
class DockerTarget(Target):
    """One Docker Engine, as ``DOCKER_HOST`` names it (None: the local socket)."""

    host: str | None = None


@dataclass(frozen=True, kw_only=True)
class DockerOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.LOCAL` (none yet: every field is portable)."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.LOCAL
    defaults: ClassVar[dict[str, object]] = {"pids_limit": 1024}

    def target(self, spec: Spec) -> DockerTarget:
        # Read at provisioning time, like aiodocker does: one driver per engine.
        return self.target_from({})

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> DockerTarget:
        take_scope(scope)
        return DockerTarget(platform=cls.platform, host=os.environ.get("DOCKER_HOST") or None)
