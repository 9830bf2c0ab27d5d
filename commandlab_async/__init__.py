"""commandlab_async: sandboxes ("computers") for AI agents and evals, from asyncio.

```python
async with provision(DockerSpec()) as computer:
    result = await computer.run("python3 -V")
```
"""

from .computer import CommandResult, Computer
from .errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    CleanupError,
    CommandLabError,
    CommandTimeoutError,
    DaemonError,
    DaemonUnreachableError,
    FleetError,
    MissingExtraError,
    ProvisionError,
    ReadyTimeoutError,
    RemoteFileNotFoundError,
    SandboxExitedError,
    SpecError,
    UnsupportedPlatformError,
)
from .events import EventKind, LifecycleEvent
from .lifecycle import Fleet, provision, provision_many
from .limits import Limits, set_limits
from .platforms.aws_ecs.options import EcsOptions
from .platforms.azure_aci.options import AciOptions
from .platforms.base import PlatformOptions, RunningSandbox, Target
from .platforms.docker.options import DockerOptions
from .platforms.gcp_cloud_run.options import CloudRunOptions
from .platforms.kubernetes.options import AksOptions, EksOptions, GkeOptions, KubeconfigOptions
from .reaper import Reaped, gc
from .specs import DEFAULT_IMAGE, DockerPlatform, DockerSpec, KubernetesPlatform, KubernetesSpec

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMAGE",
    "AciOptions",
    "AksOptions",
    "AuthenticationError",
    "BackendError",
    "BackendUnavailableError",
    "CleanupError",
    "CloudRunOptions",
    "CommandLabError",
    "CommandResult",
    "CommandTimeoutError",
    "Computer",
    "DaemonError",
    "DaemonUnreachableError",
    "DockerOptions",
    "DockerPlatform",
    "DockerSpec",
    "EcsOptions",
    "EksOptions",
    "EventKind",
    "Fleet",
    "FleetError",
    "GkeOptions",
    "KubeconfigOptions",
    "KubernetesPlatform",
    "KubernetesSpec",
    "LifecycleEvent",
    "Limits",
    "MissingExtraError",
    "PlatformOptions",
    "ProvisionError",
    "ReadyTimeoutError",
    "Reaped",
    "RemoteFileNotFoundError",
    "RunningSandbox",
    "SandboxExitedError",
    "SpecError",
    "Target",
    "UnsupportedPlatformError",
    "__version__",
    "gc",
    "provision",
    "provision_many",
    "set_limits",
]
