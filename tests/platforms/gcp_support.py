"""The Cloud Run emulator wired in as Google's endpoints would be, for one test at a time.

The library finds it the way a user's process would find Google: ``CLOUD_RUN_EMULATOR_HOST``
for the Admin API, ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account key whose token
endpoint is the emulator's) for ID tokens, and ``SSL_CERT_FILE`` (the emulator's test CA)
for the services' HTTPS fronts. The metadata server is pointed at a closed loopback port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from commandlab_async import CloudRunOptions, DockerPlatform, DockerSpec
from commandlab_async.emulators.cloud_run import CloudRunEmulator

PROJECT = "sbx-test"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"


def cloud_run_spec(options: dict[str, Any] | None = None, **kwargs: Any) -> DockerSpec:
    """A Cloud Run spec on the emulator's project; ``options`` sets CloudRunOptions fields."""
    fields: dict[str, Any] = {
        "platform": DockerPlatform.GCP_CLOUD_RUN,
        "project_id": PROJECT,
        "region": REGION,
        "options": CloudRunOptions(**(options or {})),
        "ready_timeout": 60,
    }
    return DockerSpec(**{**fields, **kwargs})


async def start_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> CloudRunEmulator:
    """Start an emulator and point this process's Google clients at it."""
    emulator = CloudRunEmulator(**settings)
    await emulator.start()
    monkeypatch.setenv("CLOUD_RUN_EMULATOR_HOST", emulator.address)
    monkeypatch.setenv("SSL_CERT_FILE", str(emulator.write_ca(tmp_path / "ca.pem")))
    key = emulator.write_service_account(tmp_path / "sandboxes.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    # No metadata server probes: google-auth would ask 169.254.169.254 without these.
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    return emulator


async def stop_emulator(emulator: CloudRunEmulator) -> list[str]:
    """Stop the emulator; return what the test left: services and containers."""
    left = [f"service {name}" for name in emulator.live()]
    left += [f"container {cid}" for cid in await emulator.containers()]
    await emulator.aclose()
    return left


@pytest.fixture
async def cloud_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CloudRunEmulator]:
    """A fresh emulator per test; the test fails if it leaves a service or a container."""
    emulator = await start_emulator(tmp_path, monkeypatch)
    try:
        yield emulator
    finally:
        left = await stop_emulator(emulator)
    assert left == [], f"left behind: {left}"
