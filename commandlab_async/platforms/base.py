"""What every platform declares without importing its SDK: its name, its options, its target.

A *platform* is where a sandbox runs (local Docker, ECS, a kind of Kubernetes cluster...).
Its :class:`PlatformOptions` subclass holds the fields only that platform understands and
the facts a spec is checked against; its :class:`Target` names what scopes one driver
(region, cluster, namespace...). Both are plain dataclasses, so a spec is validated
before any SDK is imported.
"""

from __future__ import annotations

import enum
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SpecError

if TYPE_CHECKING:
    from ..specs import Spec

__all__ = [
    "DockerPlatform",
    "EndpointResolver",
    "HeaderSource",
    "KubernetesPlatform",
    "Limits",
    "MachineQuota",
    "Platform",
    "PlatformOptions",
    "RunningSandbox",
    "Target",
]


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


Platform = DockerPlatform | KubernetesPlatform

PLATFORMS: dict[str, Platform] = {str(p): p for p in (*DockerPlatform, *KubernetesPlatform)}
"""Every platform by its name (``docker``, ``aws-ecs``, ... ``gcp-gke``)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where sandboxes go: a platform plus what scopes it (region, cluster, namespace...).

    One driver (one SDK client) and one set of limits serve every sandbox of a process
    on one target, because cloud quotas are per region, cluster or namespace.
    """

    platform: Platform

    def __str__(self) -> str:
        scope = ", ".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if f.name != "platform" and getattr(self, f.name) is not None
        )
        return f"{self.platform}[{scope}]" if scope else str(self.platform)


@dataclass(frozen=True)
class RunningSandbox:
    """What the backend says about a sandbox that runs: where its daemon can be reached.

    An :data:`EndpointResolver` receives it and returns the daemon's base URL.
    """

    name: str
    platform: Platform
    port: int
    """The daemon's port as the backend exposes it."""
    addresses: Mapping[str, str]
    """The sandbox's addresses by kind, e.g. ``{"private": ..., "public": ...}``."""
    url: str | None
    """The driver's choice of base URL (None when it has none to offer)."""
    raw: Mapping[str, Any]
    """The backend's own description (container inspect, ECS task...)."""
    ssl: ssl.SSLContext | None = None
    """How to verify the daemon's HTTPS certificate (None: aiohttp's default)."""
    headers: HeaderSource | None = None
    """Extra headers for every request to the daemon, e.g. the identity token a
    platform's front end requires (Cloud Run's ``X-Serverless-Authorization``)."""


HeaderSource = Callable[[], Awaitable[Mapping[str, str]]]
"""Async hook returning extra request headers; called per request, so it must cache."""


EndpointResolver = Callable[[RunningSandbox], Awaitable[str]]
"""Async hook mapping a running sandbox to its daemon's base URL (a tunnel, a proxy...)."""


@dataclass(frozen=True, kw_only=True)
class PlatformOptions:
    """Base of each platform's options: the fields only that platform understands.

    Subclasses also state the facts a spec is checked against, so that adding a platform
    touches no shared code: which flat scope fields it uses (and which it requires),
    which portable fields it cannot honour, and its defaults for portable fields.
    """

    platform: ClassVar[Platform]
    target_class: ClassVar[type[Target]] = Target
    """The class of this platform's :class:`Target` (a saved handle names its fields)."""
    scope: ClassVar[Mapping[str, bool]] = {}
    """Flat spec fields that scope this platform (``region``...) -> whether required."""
    defaults: ClassVar[Mapping[str, object]] = {}
    """This platform's defaults for portable fields left unset (``memory``...)."""
    not_honoured: ClassVar[Mapping[str, str]] = {}
    """Portable fields this platform cannot honour -> why (setting one is a SpecError)."""

    def check(self, spec: Spec) -> None:
        """Check the options against the spec's portable fields (raise SpecError)."""

    def target(self, spec: Spec) -> Target:
        """The target a sandbox of ``spec`` goes to (called when provisioning, not before)."""
        return Target(platform=self.platform)

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> Target:
        """A target named field by field (e.g. by ``commandlab gc --region ...``)."""
        take_scope(scope)
        return Target(platform=cls.platform)


def take_scope(scope: Mapping[str, str | None], *names: str) -> list[str | None]:
    """The values of ``names`` in ``scope``; SpecError for any other name given."""
    for name in scope:
        if name not in names:
            takes = f"it takes: {', '.join(names)}" if names else "it takes no scope"
            raise SpecError(name, f"does not scope this platform ({takes})")
    return [scope.get(name) for name in names]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on what one process asks of one backend at once."""

    creates_in_flight: int = 16
    """Create calls running at once."""
    creates_per_second: float = 20.0
    """Sustained create rate; ``math.inf`` for none."""
    create_burst: int = 10
    """Creates allowed back to back before the rate applies."""
    probes_in_flight: int = 64
    """Readiness probes of daemons running at once."""
    destroys_in_flight: int = 32
    """Delete calls running at once (separate from creates)."""

    def __post_init__(self) -> None:
        for name in ("creates_in_flight", "create_burst", "probes_in_flight", "destroys_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(name, f"must be a positive int, got {value!r}")
        rate = self.creates_per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise SpecError("creates_per_second", f"must be positive, got {rate!r}")


@dataclass(frozen=True, kw_only=True)
class MachineQuota:
    """One rate quota of a backend: a token bucket every process of this user on this
    machine draws from."""

    scope: str
    """What the backend counts the quota per, e.g. ``"gcp-cloud-run writes
    project=p region=r"``. Quotas of equal scope share one bucket, whichever process or
    target names them (they should agree on its rate)."""
    per_second: float
    """Tokens added a second (the sustained rate)."""
    burst: int
    """Tokens the bucket holds at most (calls allowed back to back)."""
    creates: bool = True
    """Whether a create takes a token."""
    deletes: bool = False
    """Whether a delete takes a token."""

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not self.scope:
            raise SpecError("scope", f"must be a non-empty str, got {self.scope!r}")
        rate = self.per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
            raise SpecError("per_second", f"must be positive and finite, got {rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise SpecError("burst", f"must be a positive int, got {self.burst!r}")
        if not (self.creates or self.deletes):
            raise SpecError("creates", "a quota must count creates, deletes or both")
