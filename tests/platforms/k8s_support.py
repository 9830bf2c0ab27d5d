"""The Kubernetes emulator wired in as a user's cluster would be, for one test at a time.

The library finds it the way a user's process finds a cluster: ``KUBECONFIG`` names a
kubeconfig whose server is the emulator (HTTPS with its test CA inside the file). EKS, AKS
and GKE find it through their clouds' APIs, played by :class:`ClusterFakes` (``fakes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from commandlab_async import KubeconfigOptions, KubernetesSpec
from commandlab_async._lifecycle.identity import SESSION_ID
from commandlab_async.emulators.clusters import ClusterFakes
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.labels import SESSION
from tests.platforms.azure_support import AZURE_ENV

NAMESPACE = "sandboxes"
REGION = "us-east-1"

_AWS_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)  # fmt: skip


def kube_spec(options: dict[str, Any] | None = None, **kwargs: Any) -> KubernetesSpec:
    """A spec on the emulator's cluster (through ``KUBECONFIG``); ``options`` sets
    KubeconfigOptions fields."""
    fields: dict[str, Any] = {
        "namespace": NAMESPACE,
        "options": KubeconfigOptions(**(options or {})),
        "ready_timeout": 60,
    }
    return KubernetesSpec(**{**fields, **kwargs})


def our_pods(emulator: KubeEmulator, *, terminating: bool = False) -> list[str]:
    """Names of this process's pods on the emulator (not those being deleted, unless asked)."""
    names = []
    for entry in emulator.live():
        kind, _, where = entry.partition(" ")
        ns, _, name = where.partition("/")
        pod = emulator.get("pods", ns, name) if kind == "pod" else None
        if pod is None or pod["metadata"].get("labels", {}).get(SESSION) != SESSION_ID:
            continue
        if terminating or not pod["metadata"].get("deletionTimestamp"):
            names.append(name)
    return sorted(names)


async def start_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> KubeEmulator:
    """Start an emulator and point this process's kubeconfig at it."""
    emulator = KubeEmulator(**settings)
    await emulator.start()
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return emulator


async def stop_emulator(emulator: KubeEmulator) -> list[str]:
    """Stop the emulator once deletes under way have finished; return what was left."""
    for _ in range(100):  # a deleted pod's container gets its grace period (5 s at most)
        if not emulator.live():
            break
        await asyncio.sleep(0.1)
    left = emulator.live()
    left += [f"container {cid}" for cid in await emulator.containers()]
    await emulator.aclose()
    return left


@pytest.fixture
async def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ClusterFakes]:
    """The clouds, found the way a user's process finds them (environment only)."""
    async with ClusterFakes() as clouds:
        ca = str(clouds.write_ca(tmp_path / "clouds-ca.pem"))
        for name in (*AZURE_ENV, *_AWS_ENV):
            monkeypatch.delenv(name, raising=False)
        env = {
            # TLS to the fakes: aiohttp (ARM, GKE), botocore (EKS), requests (google-auth).
            "SSL_CERT_FILE": ca,
            "AWS_CA_BUNDLE": ca,
            "REQUESTS_CA_BUNDLE": ca,
            # AWS: keys for moto, EKS at the fakes, nothing from the host, no IMDS.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_EKS": clouds.url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            # Azure: a service principal whose authority is the fakes.
            "AZURE_AUTHORITY_HOST": clouds.url,
            "AZURE_TENANT_ID": clouds.tenant_id,
            "AZURE_CLIENT_ID": clouds.client_id,
            "AZURE_CLIENT_SECRET": clouds.client_secret,
            "AZURE_SUBSCRIPTION_ID": clouds.subscription_id,
            # Google: a key file whose token endpoint is the fakes; no metadata server.
            "GOOGLE_APPLICATION_CREDENTIALS": str(
                clouds.write_service_account(tmp_path / "sa.json")
            ),
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield clouds


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEmulator]:
    """A fresh emulator per test; the test fails if it leaves an object or a container."""
    emulator = await start_emulator(tmp_path, monkeypatch)
    try:
        yield emulator
    finally:
        left = await stop_emulator(emulator)
    assert left == [], f"left behind: {left}"
