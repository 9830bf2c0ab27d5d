"""A process of the machine-wide quota tests: ``python -m tests.lifecycle.quota_worker MODE JSON``.

It imports everything first, prints ``ready``, and waits for a line on stdin, so that
every process starts at once; then it works and prints one JSON line.

- ``bucket``: takes ``takes`` create tokens from the buckets of ``quotas`` (keyword
  arguments of MachineQuota); prints the CLOCK_MONOTONIC time each was had (one clock
  for every process of the machine).
- ``cloud-run``: with the Cloud Run driver's own machine-wide quotas scaled to
  ``writes_per_second`` and ``write_burst``, brings up a fleet of ``count`` on the
  emulator the environment names, runs a command in each and deletes them; prints the
  error, if any.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from typing import Any

from commandlab_async import DockerPlatform, provision_many, set_machine_quotas
from commandlab_async._lifecycle.machine_quota import MachineBuckets, MachineQuota
from commandlab_async.platforms.gcp_cloud_run.driver import CloudRunDriver
from commandlab_async.platforms.gcp_cloud_run.options import CloudRunTarget
from tests.platforms.gcp_support import cloud_run_spec


async def take_tokens(quotas: list[dict[str, Any]], takes: int) -> dict[str, Any]:
    buckets = MachineBuckets([MachineQuota(**q) for q in quotas])
    stamps = []
    for _ in range(takes):
        await buckets.take_create()
        stamps.append(time.monotonic())
    return {"stamps": stamps, "fallbacks": buckets.fallbacks}


async def cloud_run_fleet(count: int, writes_per_second: float, write_burst: int) -> dict[str, Any]:
    spec = cloud_run_spec()
    target = spec.target()
    assert isinstance(target, CloudRunTarget)
    writes, creates = CloudRunDriver.machine_quotas(target)
    scale = writes_per_second / writes.per_second
    set_machine_quotas(
        DockerPlatform.GCP_CLOUD_RUN,
        [
            replace(writes, per_second=writes_per_second, burst=write_burst),
            # The creates' share keeps its proportion of the writes (half).
            replace(
                creates,
                per_second=creates.per_second * scale,
                burst=max(1, write_burst * creates.burst // writes.burst),
            ),
        ],
    )
    try:
        async with provision_many(spec, count=count) as fleet:
            results = await asyncio.gather(*(c.run("echo $((6*7))") for c in fleet))
            assert {r.stdout for r in results} == {"42\n"}, results
    except Exception as exc:
        return {"error": repr(exc)}
    return {"error": None}


def main() -> None:
    mode, arguments = sys.argv[1], json.loads(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "bucket":
        result = asyncio.run(take_tokens(**arguments))
    elif mode == "cloud-run":
        result = asyncio.run(cloud_run_fleet(**arguments))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
