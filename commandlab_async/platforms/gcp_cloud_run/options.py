"""Options and target of Google Cloud Run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..._validation import check_bool, check_text
from ...errors import SpecError
from ..base import DockerPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["CloudRunOptions", "CloudRunTarget"]

# Cloud Run's label rules (those of every Google Cloud resource).
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# With CPU always allocated, an instance has 1, 2, 4, 6 or 8 vCPU; each takes memory
# (MiB) in this range.
_MEMORY_BY_CPU: dict[int, tuple[int, int]] = {
    1: (512, 4096),
    2: (512, 8192),
    4: (2048, 16384),
    6: (4096, 24576),
    8: (4096, 32768),
}
# Set by Cloud Run in every container; a service that sets one is refused.
_RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")


@dataclass(frozen=True, kw_only=True)
class CloudRunTarget(Target):
    """One project in one region."""

    project_id: str
    region: str


@dataclass(frozen=True, kw_only=True)
class CloudRunOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.GCP_CLOUD_RUN`: one Service per sandbox."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.GCP_CLOUD_RUN
    target_class: ClassVar[type[CloudRunTarget]] = CloudRunTarget
    scope: ClassVar[dict[str, bool]] = {"project_id": True, "region": True}
    not_honoured: ClassVar[dict[str, str]] = {
        "pids_limit": "Cloud Run has no per-instance process limit",
        "network": "the daemon is reached over the service's HTTPS front end",
        "disk": "Cloud Run's filesystem is in memory: writes count against `memory`",
        "run_as_root": "Cloud Run runs the image's own USER: build the image with the one you want",
    }

    public: bool = False
    """Let anyone reach the service's URL (IAM invoker check disabled; the sandbox's token
    is then the only gate). By default the caller also needs ``run.routes.invoke`` and
    sends a Google ID token with each request."""
    service_account: str | None = None
    """Runtime service account of the sandbox (default: the project's compute account)."""

    def __post_init__(self) -> None:
        check_bool("public", self.public)
        check_text("service_account", self.service_account)

    def check(self, spec: Spec) -> None:
        cpu = round(spec.cpu)
        if cpu not in _MEMORY_BY_CPU or abs(spec.cpu - cpu) > 1e-9:
            raise SpecError(
                "cpu", f"Cloud Run with CPU always allocated takes 1, 2, 4, 6 or 8, got {spec.cpu}"
            )
        low, high = _MEMORY_BY_CPU[cpu]
        if not low <= spec.memory <= high:
            raise SpecError(
                "memory", f"Cloud Run with {cpu} vCPU takes {low}..{high} MiB, got {spec.memory}"
            )
        for key, value in spec.labels.items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise SpecError(
                    "labels",
                    f"{key!r}: {value!r} breaks Cloud Run's label rules (keys: lowercase "
                    "letter first, then lowercase letters, digits, '_' or '-'; values the same "
                    "characters; both at most 63)",
                )
        for name in _RESERVED_ENV:
            if name in spec.env:
                raise SpecError("env", f"{name} is set by Cloud Run itself")

    def target(self, spec: Spec) -> CloudRunTarget:
        return self.target_from({"project_id": spec.project_id, "region": spec.region})

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> CloudRunTarget:
        project_id, region = take_scope(scope, "project_id", "region")
        if not project_id:
            raise SpecError("project_id", "is required on Cloud Run")
        if not region:
            raise SpecError("region", "is required on Cloud Run")
        return CloudRunTarget(platform=cls.platform, project_id=project_id, region=region)
