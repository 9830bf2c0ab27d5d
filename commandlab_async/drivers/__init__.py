"""Backend drivers, imported on first use so that cloud SDKs stay optional.

The registry maps a platform to the module holding its driver and the extra that module
needs; a platform missing from it has no driver yet.
"""

from __future__ import annotations

from importlib import import_module
from typing import cast

from ..errors import MissingExtraError, UnsupportedPlatformError
from ..specs import DockerPlatform, KubernetesPlatform
from .base import Driver

__all__ = ["driver_class"]

Platform = DockerPlatform | KubernetesPlatform

# platform -> (module, class, extra that module needs or None)
_REGISTRY: dict[Platform, tuple[str, str, str | None]] = {
    DockerPlatform.LOCAL: ("commandlab_async.drivers.docker", "DockerDriver", None),
    DockerPlatform.AWS_ECS: ("commandlab_async.drivers.aws_ecs", "AwsEcsDriver", "aws"),
}


def driver_class(platform: Platform) -> type[Driver]:
    """The driver class for ``platform``, importing its module on first use."""
    try:
        module_name, class_name, extra = _REGISTRY[platform]
    except KeyError:
        raise UnsupportedPlatformError(str(platform)) from None
    try:
        module = import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise MissingExtraError(str(platform), extra) from exc
    return cast(type[Driver], getattr(module, class_name))
