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
from .reaper import Reaped, gc
from .specs import DEFAULT_IMAGE, DockerPlatform, DockerSpec, KubernetesPlatform, KubernetesSpec

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMAGE",
    "AuthenticationError",
    "BackendError",
    "BackendUnavailableError",
    "CleanupError",
    "CommandLabError",
    "CommandResult",
    "CommandTimeoutError",
    "Computer",
    "DaemonError",
    "DaemonUnreachableError",
    "DockerPlatform",
    "DockerSpec",
    "EventKind",
    "Fleet",
    "FleetError",
    "KubernetesPlatform",
    "KubernetesSpec",
    "LifecycleEvent",
    "Limits",
    "MissingExtraError",
    "ProvisionError",
    "ReadyTimeoutError",
    "Reaped",
    "RemoteFileNotFoundError",
    "SandboxExitedError",
    "SpecError",
    "UnsupportedPlatformError",
    "__version__",
    "gc",
    "provision",
    "provision_many",
    "set_limits",
]
