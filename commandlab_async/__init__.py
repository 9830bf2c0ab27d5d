"""commandlab_async: sandboxes ("computers") for AI agents and evals, from asyncio.

```python
async with provision(DockerSpec()) as computer:
    result = await computer.run("python3 -V")
```
"""

from ._admin.handles import connect, share_handle
from ._admin.reaper import GC_TIMEOUT, Reaped, gc, remove
from ._admin.sandboxes import SandboxInfo, list_sandboxes, read_logs, target_for
from ._client.computer import Computer
from ._client.desktop import Actions, BatchResult, Desktop, Screenshot, Window
from ._client.files import FileInfo
from ._client.history import CommandRecord
from ._client.processes import CommandResult, OutputChunk, Process, ProcessInfo
from ._lifecycle.events import (
    EventKind,
    EventStream,
    LifecycleEvent,
    lifecycle_events,
)
from ._lifecycle.identity import labelled
from ._lifecycle.limits import Limits, set_limits
from ._lifecycle.machine_quota import MachineQuota, set_machine_quotas
from ._lifecycle.provision import Fleet, provision, provision_many
from ._lifecycle.warm_pools import WarmPool
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
    DesktopError,
    DesktopUnavailableError,
    FileTooLargeError,
    FleetError,
    ImageBuildError,
    InvalidActionError,
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
from .platforms.aws_ecs.options import EcsOptions
from .platforms.azure_aci.options import AciOptions
from .platforms.base import PlatformOptions, RunningSandbox, Target
from .platforms.docker.images import build_image
from .platforms.docker.options import DockerOptions
from .platforms.gcp_cloud_run.options import CloudRunOptions
from .platforms.kubernetes.options import AksOptions, EksOptions, GkeOptions, KubeconfigOptions
from .specs import (
    DEFAULT_IMAGE,
    DESKTOP_IMAGE,
    PLATFORMS,
    DockerPlatform,
    DockerSpec,
    KubernetesPlatform,
    KubernetesSpec,
    Spec,
    options_for,
    spec_for,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMAGE",
    "DESKTOP_IMAGE",
    "GC_TIMEOUT",
    "PLATFORMS",
    "AciOptions",
    "Actions",
    "AksOptions",
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BatchResult",
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
    "Desktop",
    "DesktopError",
    "DesktopUnavailableError",
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
    "ImageBuildError",
    "InvalidActionError",
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
    "SandboxInfo",
    "SandboxNotFoundError",
    "Screenshot",
    "Spec",
    "SpecError",
    "Target",
    "UnsupportedOperationError",
    "UnsupportedPlatformError",
    "WarmPool",
    "Window",
    "__version__",
    "build_image",
    "connect",
    "gc",
    "labelled",
    "lifecycle_events",
    "list_sandboxes",
    "options_for",
    "provision",
    "provision_many",
    "read_logs",
    "remove",
    "set_limits",
    "set_machine_quotas",
    "share_handle",
    "spec_for",
    "target_for",
]
