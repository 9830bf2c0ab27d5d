"""A fleet of pods on the Kubernetes emulator: ready in about one scheduling + start latency?

The emulator (``commandlab_async.emulators.kubernetes``) is a Kubernetes API server whose pods
run on the local Docker Engine; it waits ``--latency``/2 seconds before scheduling each pod
and as long again before starting its container, as a busy cluster would. It runs in its own
thread with its own event loop, so the CPU time of the benchmark's main thread is the
client's alone.

In the same run, a hand-written baseline does the same work with raw kubernetes_asyncio, as
most code does it: every pod created at once (the same manifest, readiness probe included),
each pod's status polled every 0.5 s until Ready, the daemon's ``/health`` polled through
the API server's pod proxy every 50 ms, every pod deleted. It has no rate limit, no retries
and no fail-fast checks.

Prints, for the library and the baseline: time until every daemon answered, that time over
the latency, the library/baseline ratio, the API requests per sandbox by kind (one shared
watch against per-pod polling), and the client's CPU time per sandbox.

Run:  .venv/bin/python benchmarks/fleet_kubernetes.py [--count 100] [--latency 2]
(needs the dev extras and the local images, like the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from _report import fleet_report  # benchmarks/ is on sys.path when a script runs
from kubernetes_asyncio import client, config

from commandlab_async import KubernetesSpec, provision_many
from commandlab_async._lifecycle.identity import new_identity
from commandlab_async.emulators.kubernetes import KubeEmulator
from commandlab_async.platforms.kubernetes.manifests import pod_manifest

NAMESPACE = "bench"
T = TypeVar("T")


class EmulatorThread:
    """The emulator on an event loop of its own thread."""

    def __init__(self, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emulator = KubeEmulator(**settings)

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work(), self.loop)  # type: ignore[arg-type]
        return future.result()

    def close(self) -> None:
        self.run(self.emulator.aclose)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def library(count: int) -> tuple[float, float]:
    spec = KubernetesSpec(namespace=NAMESPACE, ready_timeout=600)
    cpu, started = time.thread_time(), time.perf_counter()
    async with provision_many(spec, count=count) as fleet:
        ready = time.perf_counter() - started
        assert len(fleet) == count
    return ready, time.thread_time() - cpu


async def baseline(count: int, kubeconfig: str) -> tuple[float, float]:
    cpu = time.thread_time()
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    spec = KubernetesSpec(namespace=NAMESPACE)
    names: list[str] = []
    async with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        auth = {"Authorization": cfg.api_key["BearerToken"]}  # "Bearer <token>"

        async def one(http: aiohttp.ClientSession) -> None:
            identity = new_identity(spec)
            name = f"baseline-{secrets.token_hex(6)}"
            names.append(name)
            pod = pod_manifest(spec, identity, None)
            pod["metadata"]["name"] = name
            await core.create_namespaced_pod(NAMESPACE, pod)
            while True:
                status = (await core.read_namespaced_pod(name, NAMESPACE)).status
                ready = [c for c in status.conditions or [] if c.type == "Ready"]
                if ready and ready[0].status == "True":
                    break
                await asyncio.sleep(0.5)
            url = f"{cfg.host}/api/v1/namespaces/{NAMESPACE}/pods/{name}:8000/proxy/health"
            headers = {**auth, "X-CommandLab-Token": identity.token}
            while True:
                async with http.get(url, headers=headers) as response:
                    if response.status == 200:
                        return
                await asyncio.sleep(0.05)

        trust = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
                started = time.perf_counter()
                await asyncio.gather(*(one(http) for _ in range(count)))
                ready = time.perf_counter() - started
        finally:
            await asyncio.gather(*(core.delete_namespaced_pod(n, NAMESPACE) for n in names))
    return ready, time.thread_time() - cpu


def _settle(emulator: EmulatorThread) -> None:
    deadline = time.monotonic() + 60
    while emulator.emulator.live() and time.monotonic() < deadline:
        time.sleep(0.2)


def run(count: int, latency: float) -> None:
    half = latency / 2
    emulator = EmulatorThread(schedule_latency=half, start_latency=half)
    try:
        emulator.run(emulator.emulator.start)
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = str(emulator.emulator.write_kubeconfig(Path(tmp) / "kubeconfig"))
            os.environ["KUBECONFIG"] = kubeconfig
            ours, our_cpu = asyncio.run(library(count))
            _settle(emulator)
            library_calls = Counter(r.what for r in emulator.emulator.requests)
            emulator.emulator.requests.clear()
            theirs, their_cpu = asyncio.run(baseline(count, kubeconfig))
            _settle(emulator)
            baseline_calls = Counter(r.what for r in emulator.emulator.requests)
            left = emulator.emulator.live()
    finally:
        emulator.close()
    assert left == [], f"objects left: {left}"

    print(
        f"{count} pods, emulated latency {latency:g} s (scheduling {half:g} s + start {half:g} s)"
    )
    print(
        fleet_report(
            count=count,
            latency=latency,
            timings=[
                ("library (shared watch, limits, retries)", ours),
                ("raw kubernetes_asyncio (polling)", theirs),
            ],
            calls={"library": library_calls, "baseline": baseline_calls},
            calls_title="API requests per sandbox",
        )
    )
    print(
        f"client CPU per sandbox: library {our_cpu / count * 1000:.1f} ms, "
        f"baseline {their_cpu / count * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--latency", type=float, default=2.0)
    args = parser.parse_args()
    run(args.count, args.latency)


if __name__ == "__main__":
    main()
