"""The platform registry: one row per platform, drivers imported on first use.

A row names the platform's options class (plain dataclasses: specs are validated without
any SDK), the module and class of its driver (imported only when a sandbox is provisioned
there, so cloud SDKs stay optional) and the extras that import needs. Adding a platform
costs one options class, one row here and its driver.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, cast

from ..errors import MissingExtraError, UnsupportedPlatformError
from .aws_ecs.options import EcsOptions
from .azure_aci.options import AciOptions
from .base import DockerPlatform, KubernetesPlatform, Platform, PlatformOptions
from .docker.options import DockerOptions
from .gcp_cloud_run.options import CloudRunOptions
from .kubernetes.options import AksOptions, EksOptions, GkeOptions, KubeconfigOptions

if TYPE_CHECKING:
    from .driver import Driver

__all__ = ["REGISTRY", "PlatformEntry", "check_extras", "driver_class", "options_class"]

# What each extra installs that its drivers import: enough to tell, without importing a
# cloud SDK (which takes up to a second), that the extra is there.
_EXTRA_MODULES = {
    "aws": ("aioboto3",),
    "azure": ("azure.identity.aio", "azure.mgmt.containerinstance"),
    "gcp": ("google.cloud.run_v2",),
    "kubernetes": ("kubernetes_asyncio",),
}


@dataclass(frozen=True)
class PlatformEntry:
    options: type[PlatformOptions]
    driver: str | None
    """``module:Class`` of the driver, or None while the platform has none."""
    extras: tuple[str, ...] = ()
    """The ``commandlab-async[...]`` extras the driver's module needs."""


REGISTRY: dict[Platform, PlatformEntry] = {
    DockerPlatform.LOCAL: PlatformEntry(
        DockerOptions, "commandlab_async.platforms.docker.driver:DockerDriver"
    ),
    DockerPlatform.AWS_ECS: PlatformEntry(
        EcsOptions, "commandlab_async.platforms.aws_ecs.driver:EcsDriver", ("aws",)
    ),
    DockerPlatform.AZURE_CONTAINER_INSTANCES: PlatformEntry(
        AciOptions, "commandlab_async.platforms.azure_aci.driver:AciDriver", ("azure",)
    ),
    DockerPlatform.GCP_CLOUD_RUN: PlatformEntry(
        CloudRunOptions, "commandlab_async.platforms.gcp_cloud_run.driver:CloudRunDriver", ("gcp",)
    ),
    KubernetesPlatform.LOCAL: PlatformEntry(
        KubeconfigOptions,
        "commandlab_async.platforms.kubernetes.driver:KubernetesDriver",
        ("kubernetes",),
    ),
    KubernetesPlatform.AWS_EKS: PlatformEntry(
        EksOptions, "commandlab_async.platforms.kubernetes.driver:EksDriver", ("kubernetes", "aws")
    ),
    KubernetesPlatform.AZURE_AKS: PlatformEntry(
        AksOptions,
        "commandlab_async.platforms.kubernetes.driver:AksDriver",
        ("kubernetes", "azure"),
    ),
    KubernetesPlatform.GCP_GKE: PlatformEntry(
        GkeOptions, "commandlab_async.platforms.kubernetes.driver:GkeDriver", ("kubernetes", "gcp")
    ),
}


def options_class(platform: Platform) -> type[PlatformOptions]:
    """The options class of ``platform``."""
    return REGISTRY[platform].options


def check_extras(platform: Platform) -> None:
    """Raise :class:`MissingExtraError` when an extra ``platform`` needs is not installed.

    Called when a platform is chosen (a spec or a target is made), so the error comes
    before anything is created, not at ``provision``. Looks the modules up without
    importing them.
    """
    extras = REGISTRY[platform].extras
    if not all(_importable(module) for extra in extras for module in _EXTRA_MODULES[extra]):
        raise MissingExtraError(str(platform), extras)


def _importable(name: str) -> bool:
    if name in sys.modules:  # None there means "import fails" (how tests hide an SDK)
        return sys.modules[name] is not None
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing or hidden
        return False


def driver_class(platform: Platform) -> type[Driver[Any]]:
    """The driver class of ``platform``, importing its module on first use."""
    entry = REGISTRY[platform]
    if entry.driver is None:
        raise UnsupportedPlatformError(str(platform))
    module_name, _, class_name = entry.driver.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        if not entry.extras:
            raise
        raise MissingExtraError(str(platform), entry.extras) from exc
    return cast("type[Driver[Any]]", getattr(module, class_name))
