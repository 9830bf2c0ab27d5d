"""The platform registry: one row per platform, drivers imported on first use.

A row names the platform's options class (plain dataclasses: specs are validated without
any SDK), the module and class of its driver (imported only when a sandbox is provisioned
there, so cloud SDKs stay optional) and the extras that import needs. Adding a platform
costs one options class, one row here and its driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
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

__all__ = ["REGISTRY", "PlatformEntry", "driver_class", "options_class"]


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
