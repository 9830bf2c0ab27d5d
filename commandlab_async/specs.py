"""Specs: frozen, typed descriptions of a sandbox, validated at construction.

An invalid spec raises :class:`~commandlab_async.errors.SpecError` naming the field, before
any backend is contacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from ._validation import check_bool, check_int, check_number, check_str_map, check_text
from .errors import SpecError
from .platforms import check_extras, options_class
from .platforms.base import (
    PLATFORMS,
    DockerPlatform,
    EndpointResolver,
    KubernetesPlatform,
    Platform,
    PlatformOptions,
    RunningSandbox,
    Target,
)

__all__ = [
    "DEFAULT_IMAGE",
    "DESKTOP_IMAGE",
    "MIN_MEMORY",
    "MIN_PIDS",
    "PLATFORMS",
    "DockerPlatform",
    "DockerSpec",
    "EndpointResolver",
    "KubernetesPlatform",
    "KubernetesSpec",
    "PlatformOptions",
    "RunningSandbox",
    "Spec",
    "checked_spec",
    "options_for",
    "spec_for",
]

#: The project's computer image, built by ``commandlab image build`` (:func:`build_image`),
#: and on local Docker by the first provision that misses it.
DEFAULT_IMAGE = "commandlab/computer:latest"
DESKTOP_IMAGE = "commandlab/desktop:latest"
"""The computer image with a desktop (X server, window manager, fonts): ``computer.desktop``."""

_NAME_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,29}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_RESERVED_LABEL_PREFIX = "commandlab."
_RESERVED_ENV_PREFIX = "COMMANDLAB_"
# Portable fields that are None until the platform's default fills them in.
_GLOBAL_DEFAULTS: dict[str, object] = {"memory": 1024}
# What "not set" looks like for a portable field a platform may be unable to honour.
_UNSET: tuple[object, ...] = (None, False)
# The least a sandbox may have for its daemon to keep serving beside its commands,
# measured with the default image (Python 3.11, local Docker). Memory: the daemon's RSS is
# 21 MiB idle, 26 MiB serving 8 commands, 32 MiB with TLS; at 64 MiB it served 8
# concurrent shell commands and outlived a command allocating twice the limit, at 16 MiB
# it was OOM-killed. Pids count threads: docker-init and the daemon's loop (2), a worker
# thread per request in progress, two processes per shell command (dash does not exec
# its last command): 8 concurrent shell commands take 26.
MIN_MEMORY = 64
MIN_PIDS = 32


@dataclass(frozen=True, kw_only=True)
class _SandboxSpec:
    """Fields every platform shares; ``options`` holds the chosen platform's own."""

    platform: Platform
    options: PlatformOptions | None = None
    """The platform's own options (e.g. :class:`EcsOptions`); default: its defaults."""
    image: str = DEFAULT_IMAGE
    """Container image. It must run the commandlab daemon (the default image does)."""
    daemon_port: int = 8000
    """Port the daemon listens on inside the sandbox."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the sandbox (names starting with ``COMMANDLAB_`` are reserved)."""
    cpu: float = 1.0
    """CPU cores the sandbox may use."""
    memory: int = None  # type: ignore[assignment]  # filled in by __post_init__
    """Memory limit in MiB, at least 64: the daemon takes ~32 of it (default: 1024, or the
    platform's own, e.g. 2048 on Fargate). A command that exceeds it is the one killed."""
    pids_limit: int | None = None
    """Most processes and threads in the sandbox, at least 32: the daemon uses a thread per
    request (default: 1024 where the platform can limit them)."""
    disk: int | None = None
    """Most MiB the sandbox may write to its filesystem (None: the platform's default).
    Local Docker needs an engine that can limit a container's writable layer (overlay2
    on xfs with ``pquota``, btrfs, zfs); Kubernetes sets the pod's ``ephemeral-storage``
    limit (the kubelet evicts past it); Fargate sizes the task's ephemeral storage
    (21 to 200 GiB). ACI and Cloud Run cannot limit it (a SpecError)."""
    network: Literal["none"] | None = None
    """``"none"``: the sandbox has no network at all, only loopback (local Docker, whose
    daemon then serves on a Unix socket). None: the platform's default network."""
    screen: tuple[int, int] | tuple[int, int, int] = (1280, 800, 24)
    """A desktop image's screen: width, height (and depth, 24 or 16) in pixels. The size
    models expect by default, so a screenshot's pixels are the click coordinates. Images
    without a desktop ignore it."""
    run_as_root: bool = False
    """Run the daemon and commands as root with the platform's default capabilities (for
    workloads that install packages); by default the image's unprivileged user runs
    them with every capability dropped."""
    ttl: float | None = 3600.0
    """Seconds until the sandbox deletes itself even if this process dies; ``None``: never."""
    ready_timeout: float = 120.0
    """Seconds from sending the create until the daemon must answer. Time queued behind
    the target's create limit is not counted (the timeout's message names it apart)."""
    destroy_timeout: float = 60.0
    """Seconds cleanup may take before it gives up (the TTL and ``gc`` remain); a create
    cut short by a deadline or a cancellation gets half of it to settle first."""
    name_prefix: str = "commandlab"
    """Start of each sandbox name: lowercase letters, digits and dashes."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels/tags (keys starting with ``commandlab.`` are reserved)."""
    endpoint_resolver: EndpointResolver | None = None
    """Async hook mapping a :class:`RunningSandbox` to its daemon's base URL (default: the
    driver's choice). Replace it to reach sandboxes through a tunnel or load balancer."""
    region: str | None = None
    resource_group: str | None = None
    project_id: str | None = None

    _platform_type: ClassVar[type[DockerPlatform] | type[KubernetesPlatform]]
    _scope_fields: ClassVar[tuple[str, ...]] = ("region", "resource_group", "project_id")

    def __post_init__(self) -> None:
        kind = self._platform_type
        if not isinstance(self.platform, kind):
            given = self.platform  # shown as written in code, not as an enum's repr
            shown = (
                f"{type(given).__name__}.{given.name}" if isinstance(given, Enum) else repr(given)
            )
            raise SpecError("platform", f"must be a {kind.__name__}, got {shown}")
        options = self._resolve_options()
        for name, value in {**_GLOBAL_DEFAULTS, **options.defaults}.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_portable()
        self._check_scope(options)
        for name, why in options.not_honoured.items():
            if getattr(self, name) not in _UNSET:
                raise SpecError(name, f"platform '{self.platform}' cannot honour it: {why}")
        options.check(self)  # type: ignore[arg-type]  # self is a concrete Spec
        # Freeze the mappings so a spec cannot change under a running fleet.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def target(self) -> Target:
        """Where a sandbox of this spec goes: its platform plus region, cluster, namespace...

        Read when provisioning (local Docker follows ``DOCKER_HOST`` as it is then).
        """
        assert self.options is not None  # filled in at construction
        return self.options.target(self)  # type: ignore[arg-type]  # self is a concrete Spec

    def _resolve_options(self) -> PlatformOptions:
        check_extras(self.platform)
        cls = options_class(self.platform)
        if self.options is None:
            object.__setattr__(self, "options", cls())
        elif type(self.options) is not cls:
            raise SpecError(
                "options",
                f"platform '{self.platform}' takes {cls.__name__}, "
                f"got {type(self.options).__name__}",
            )
        assert isinstance(self.options, PlatformOptions)
        return self.options

    def _check_portable(self) -> None:
        check_text("image", self.image, required=True)
        check_int("daemon_port", self.daemon_port, low=1, high=65535)
        check_str_map("env", self.env, _ENV_NAME, _RESERVED_ENV_PREFIX)
        check_str_map("labels", self.labels, _LABEL_KEY, _RESERVED_LABEL_PREFIX)
        for key, value in self.labels.items():
            if len(value) > 63:
                raise SpecError("labels", f"value of {key!r} is longer than 63 characters")
        check_number("cpu", self.cpu, low=0.01, high=64)
        check_int(
            "memory",
            self.memory,
            low=MIN_MEMORY,
            high=262_144,
            unit="MiB",
            why_low="the daemon in the sandbox needs ~32 MiB of it, the commands the rest",
        )
        if self.pids_limit is not None:
            check_int(
                "pids_limit",
                self.pids_limit,
                low=MIN_PIDS,
                high=1_000_000,
                why_low="it counts threads too, and the daemon needs a thread per request"
                " besides the commands' processes (8 concurrent shell commands take 26)",
            )
        if self.disk is not None:
            check_int("disk", self.disk, low=64, high=16 * 1024 * 1024, unit="MiB")
        self._check_screen()
        if self.network not in (None, "none"):
            raise SpecError("network", f"must be None or 'none', got {self.network!r}")
        check_bool("run_as_root", self.run_as_root)
        if self.ttl is not None:
            check_number("ttl", self.ttl, low=1, high=7 * 24 * 3600)
        check_number("ready_timeout", self.ready_timeout, low=0.001, high=24 * 3600)
        check_number("destroy_timeout", self.destroy_timeout, low=0.1, high=3600)
        if not isinstance(self.name_prefix, str) or not _NAME_PREFIX.fullmatch(self.name_prefix):
            raise SpecError(
                "name_prefix",
                "must start with a lowercase letter and hold at most 30 lowercase letters, "
                f"digits and dashes, got {self.name_prefix!r}",
            )
        if self.endpoint_resolver is not None and not callable(self.endpoint_resolver):
            raise SpecError("endpoint_resolver", "must be an async callable")

    def _check_screen(self) -> None:
        screen = self.screen
        if not isinstance(screen, tuple | list) or len(screen) not in (2, 3):
            raise SpecError(
                "screen", f"must be (width, height) or (width, height, depth), got {screen!r}"
            )
        if len(screen) == 2:
            screen = (*screen, 24)
        width, height, depth = screen
        check_int("screen", width, low=16, high=8192, unit="pixels wide")
        check_int("screen", height, low=16, high=8192, unit="pixels high")
        if depth not in (16, 24) or isinstance(depth, bool):
            raise SpecError("screen", f"depth must be 24 or 16, got {depth!r}")
        object.__setattr__(self, "screen", (width, height, depth))

    def _check_scope(self, options: PlatformOptions) -> None:
        for name in self._scope_fields:
            value = getattr(self, name)
            check_text(name, value)
            if name not in options.scope and value is not None:
                raise SpecError(name, f"has no meaning on platform '{self.platform}'")
            if options.scope.get(name) and value is None:
                raise SpecError(name, f"is required on platform '{self.platform}'")


@dataclass(frozen=True, kw_only=True)
class DockerSpec(_SandboxSpec):
    """A sandbox that is one container: on local Docker, ECS/Fargate, ACI or Cloud Run.

    ``options`` takes the platform's own options, e.g.
    ``DockerSpec(platform=DockerPlatform.AWS_ECS, options=EcsOptions(subnets=...))``.
    """

    platform: DockerPlatform = DockerPlatform.LOCAL
    _platform_type = DockerPlatform


@dataclass(frozen=True, kw_only=True)
class KubernetesSpec(_SandboxSpec):
    """A sandbox that is one pod on a Kubernetes cluster."""

    platform: KubernetesPlatform = KubernetesPlatform.LOCAL
    namespace: str = "default"
    cluster_name: str | None = None
    _platform_type = KubernetesPlatform
    _scope_fields = (*_SandboxSpec._scope_fields, "cluster_name")

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", self.namespace
        ):
            raise SpecError("namespace", f"must be a DNS-1123 label, got {self.namespace!r}")
        super().__post_init__()


Spec = DockerSpec | KubernetesSpec


_KUBERNETES_ONLY = ("namespace", "cluster_name")


def checked_spec(spec: object) -> Spec:
    """``spec`` itself if it is a spec, else SpecError (for arguments typed as a Spec)."""
    if not isinstance(spec, DockerSpec | KubernetesSpec):
        kind = type(spec).__name__
        raise SpecError("spec", f"must be a DockerSpec or KubernetesSpec, got {kind}")
    return spec


def spec_for(
    platform: str | Platform,
    *,
    options: PlatformOptions | Mapping[str, Any] | None = None,
    **fields: Any,
) -> Spec:
    """A :class:`DockerSpec` or :class:`KubernetesSpec` for a platform given by name.

    For configuration read from text (a command line, an ini file, a YAML config):
    ``platform`` is a name such as ``docker`` or ``aws-eks``, ``options`` the platform's
    options or a mapping of their fields, ``fields`` the spec's fields. Anything that
    does not fit is a :class:`SpecError` naming it.
    """
    chosen = _platform_named(platform)
    if isinstance(options, Mapping):
        options = options_for(chosen, options)
    kind: type[DockerSpec] | type[KubernetesSpec] = (
        KubernetesSpec if isinstance(chosen, KubernetesPlatform) else DockerSpec
    )
    known = {f for f in kind.__dataclass_fields__ if not f.startswith("_")}
    for name in fields:
        if name in _KUBERNETES_ONLY and kind is DockerSpec:
            raise SpecError(name, f"has no meaning on platform {str(chosen)!r}")
        if name not in known:
            raise SpecError(name, "is not a field of a spec")
    return kind(platform=chosen, options=options, **fields)  # type: ignore[arg-type]


def options_for(platform: str | Platform, fields: Mapping[str, Any]) -> PlatformOptions:
    """The options of a platform given by name (``aws-ecs``...) from a mapping of their
    fields, as configuration read from text gives them. An unknown platform or field is a
    :class:`SpecError` naming it (``options.<field>`` for a field the options lack)."""
    cls = options_class(_platform_named(platform))
    known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
    for name in fields:
        if name not in known:
            takes = ", ".join(sorted(known)) or "nothing"
            raise SpecError(
                f"options.{name}", f"is not an option of platform '{platform}' (it takes: {takes})"
            )
    return cls(**fields)


def _platform_named(platform: str | Platform) -> Platform:
    chosen = PLATFORMS.get(str(platform))
    if chosen is None:
        raise SpecError("platform", f"must be one of {sorted(PLATFORMS)}, got {platform!r}")
    return chosen
