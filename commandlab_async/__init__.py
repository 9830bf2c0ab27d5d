"""commandlab_async: sandboxes ("computers") for AI agents and evals, from asyncio.

```python
async with provision(DockerSpec()) as computer:
    result = await computer.run("python3 -V")
```
"""

from .computer import Computer
from .errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CleanupError,
    CommandLabError,
    CommandTimeoutError,
    DaemonError,
    DaemonProtocolError,
    DaemonUnreachableError,
    DaemonUnresponsiveError,
    FileTooLargeError,
    FleetError,
    MissingExtraError,
    OutputLimitExceededError,
    ProvisionError,
    ReadyTimeoutError,
    RemoteFileNotFoundError,
    RemoteIsADirectoryError,
    RemoteNotADirectoryError,
    RemoteOSError,
    RemotePermissionError,
    RemoteProcessLookupError,
    ResourceExhaustedError,
    SandboxDeletedError,
    SandboxExitedError,
    SandboxNotFoundError,
    SpecError,
    UnsupportedOperationError,
    UnsupportedPlatformError,
)
from .events import EventKind, EventStream, LifecycleEvent, lifecycle_events
from .files import FileInfo
from .handles import connect
from .history import CommandRecord
from .lifecycle import Fleet, provision, provision_many
from .limits import Limits, set_limits
from .machine_quota import MachineQuota, set_machine_quotas
from .platforms.aws_ecs.options import EcsOptions
from .platforms.azure_aci.options import AciOptions
from .platforms.base import PlatformOptions, RunningSandbox, Target
from .platforms.docker.options import DockerOptions
from .platforms.gcp_cloud_run.options import CloudRunOptions
from .platforms.kubernetes.options import AksOptions, EksOptions, GkeOptions, KubeconfigOptions
from .process import CommandResult, OutputChunk, Process, ProcessInfo
from .reaper import Reaped, gc, remove
from .specs import DEFAULT_IMAGE, DockerPlatform, DockerSpec, KubernetesPlatform, KubernetesSpec
from .warm_pools import WarmPool

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMAGE",
    "AciOptions",
    "AksOptions",
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CleanupError",
    "CloudRunOptions",
    "CommandLabError",
    "CommandRecord",
    "CommandResult",
    "CommandTimeoutError",
    "Computer",
    "DaemonError",
    "DaemonProtocolError",
    "DaemonUnreachableError",
    "DaemonUnresponsiveError",
    "DockerOptions",
    "DockerPlatform",
    "DockerSpec",
    "EcsOptions",
    "EksOptions",
    "EventKind",
    "EventStream",
    "FileInfo",
    "FileTooLargeError",
    "Fleet",
    "FleetError",
    "GkeOptions",
    "KubeconfigOptions",
    "KubernetesPlatform",
    "KubernetesSpec",
    "LifecycleEvent",
    "Limits",
    "MachineQuota",
    "MissingExtraError",
    "OutputChunk",
    "OutputLimitExceededError",
    "PlatformOptions",
    "Process",
    "ProcessInfo",
    "ProvisionError",
    "ReadyTimeoutError",
    "Reaped",
    "RemoteFileNotFoundError",
    "RemoteIsADirectoryError",
    "RemoteNotADirectoryError",
    "RemoteOSError",
    "RemotePermissionError",
    "RemoteProcessLookupError",
    "ResourceExhaustedError",
    "RunningSandbox",
    "SandboxDeletedError",
    "SandboxExitedError",
    "SandboxNotFoundError",
    "SpecError",
    "Target",
    "UnsupportedOperationError",
    "UnsupportedPlatformError",
    "WarmPool",
    "__version__",
    "connect",
    "gc",
    "lifecycle_events",
    "provision",
    "provision_many",
    "remove",
    "set_limits",
    "set_machine_quotas",
]
