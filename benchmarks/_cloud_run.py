"""The Cloud Run emulator, wired in as Google's endpoints would be, for a benchmark run."""

from __future__ import annotations

import os
from pathlib import Path

from commandlab_async.emulators.cloud_run import CloudRunEmulator

__all__ = ["CloudRunEmulator", "point_google_at"]


def point_google_at(emulator: CloudRunEmulator, directory: Path) -> None:
    """Point this process's Google clients at ``emulator`` (files go to ``directory``)."""
    os.environ["CLOUD_RUN_EMULATOR_HOST"] = emulator.address
    os.environ["SSL_CERT_FILE"] = str(emulator.write_ca(directory / "ca.pem"))
    key = emulator.write_service_account(directory / "sa.json")
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
    # No metadata server probes: google-auth would ask 169.254.169.254 without these.
    os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
