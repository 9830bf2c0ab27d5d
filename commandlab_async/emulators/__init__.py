"""Emulators of the clouds' APIs, to test code that uses commandlab_async offline.

Each speaks the wire protocol of the real service on 127.0.0.1, so the real SDKs (and the
library's drivers) talk to it unmodified; sandboxes really run as containers on the local
Docker Engine, their ports published on 127.0.0.1. Every emulator records its requests and
injects faults by :class:`~commandlab_async.emulators.faults.Rule`.

- :mod:`.aci` -- :class:`AciEmulator`: Azure Resource Manager's Container Instances API
  (api-version 2023-05-01) and Microsoft Entra ID's token endpoint, over HTTPS.
- :mod:`.cloud_run` -- :class:`CloudRunEmulator`: the Cloud Run Admin API v2 over gRPC, a
  Google OAuth2 token endpoint, and each service's HTTPS front (Google front end auth).
- :mod:`.kubernetes` -- :class:`KubeEmulator`: a Kubernetes API server (core/v1 pods,
  services, events; apps/v1 deployments; watches, logs, the proxy subresource) over HTTPS.
- :mod:`.clusters` -- :class:`ClusterFakes`: where managed clusters are described and their
  tokens checked: the EKS REST API, ARM's AKS credentials and Entra ID, the GKE API and
  Google OAuth2, over HTTPS; :func:`verify_eks_token` checks EKS tokens against moto.
- :mod:`.moto` -- :class:`MotoServer`: moto (ECS, EC2, STS) in server mode.
- :mod:`.faults` -- :class:`Rule`, and :class:`FaultyDockerProxy`/:class:`FaultyHttpProxy`:
  fault-injecting proxies in front of the Docker Engine or an HTTP server (moto).

They need the ``emulators`` extra (``pip install 'commandlab-async[emulators]'``): trustme,
cryptography, PyYAML, grpcio, google-auth, google-cloud-run and moto[server]. Nothing heavy
is imported until a name is used: ``from commandlab_async.emulators import KubeEmulator``
imports :mod:`.kubernetes` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aci import AciEmulator
    from .cloud_run import CloudRunEmulator
    from .clusters import ClusterFakes, verify_eks_token
    from .faults import FaultyDockerProxy, FaultyHttpProxy, FaultyProxy, Rule
    from .kubernetes import KubeEmulator
    from .moto import MotoServer

_WHERE = {
    "AciEmulator": "aci",
    "CloudRunEmulator": "cloud_run",
    "ClusterFakes": "clusters",
    "verify_eks_token": "clusters",
    "FaultyDockerProxy": "faults",
    "FaultyHttpProxy": "faults",
    "FaultyProxy": "faults",
    "Rule": "faults",
    "KubeEmulator": "kubernetes",
    "MotoServer": "moto",
}

__all__ = [
    "AciEmulator",
    "CloudRunEmulator",
    "ClusterFakes",
    "FaultyDockerProxy",
    "FaultyHttpProxy",
    "FaultyProxy",
    "KubeEmulator",
    "MotoServer",
    "Rule",
    "verify_eks_token",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
