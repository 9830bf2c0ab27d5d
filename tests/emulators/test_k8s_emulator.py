"""The Kubernetes API server emulator, driven only through kubernetes_asyncio (and aiohttp for
the pod proxy)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from commandlab_async.emulators.faults import Rule
from commandlab_async.emulators.kubernetes import KubeEmulator
from tests.conftest import EXITS_IMAGE

pytestmark = pytest.mark.docker

COMPUTER = "commandlab/computer:latest"
MISSING = "commandlab-test/no-such-image:latest"
NS = "sandboxes"
TOKEN = "test-token"  # the daemon's token too: a forwarded Authorization header would pass


def pod(
    name: str,
    image: str = COMPUTER,
    *,
    labels: dict[str, str] | None = None,
    restart: str = "Never",
    **spec: Any,
) -> dict[str, Any]:
    """A pod as a driver would ask for one: the daemon's token hash, a fast readiness probe."""
    container: dict[str, Any] = {
        "name": "computer",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "COMMANDLAB_TOKEN_SHA256", "value": hashlib.sha256(TOKEN.encode()).hexdigest()}
        ],
        "ports": [{"containerPort": 8000, "name": "daemon"}],
        "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "sandbox"}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def cfg_for(emulator: KubeEmulator, ca: Path, token: str | None = TOKEN) -> client.Configuration:
    cfg = client.Configuration(host=emulator.url)
    cfg.ssl_ca_cert = str(ca)
    if token is not None:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    emulator = KubeEmulator(bookmark_interval=0.2)
    emulator.pull_backoff = 0.3
    emulator.crash_backoff = 0.3
    async with emulator:
        yield emulator
    assert await emulator.containers() == []


@pytest.fixture
def ca(emulator: KubeEmulator, tmp_path: Path) -> Path:
    return emulator.write_ca(tmp_path / "ca.pem")


@pytest.fixture
async def api(emulator: KubeEmulator, ca: Path) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(cfg_for(emulator, ca)) as api:
        yield api


@pytest.fixture
async def http(ca: Path) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def read(api: client.ApiClient, name: str) -> dict[str, Any]:
    """The pod as the server sent it (camelCase JSON)."""
    response = await client.CoreV1Api(api).read_namespaced_pod(name, NS, _preload_content=False)
    body: dict[str, Any] = json.loads(await response.read())
    return body


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def model_ready(obj: client.V1Pod) -> bool:
    conditions = obj.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def ready(body: dict[str, Any]) -> bool:
    conditions = body["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def test_pod_runs_watch_proxy_and_delete(
    emulator: KubeEmulator, api: client.ApiClient, http: aiohttp.ClientSession
) -> None:
    core = client.CoreV1Api(api)
    events: list[tuple[str, Any]] = []

    async def watching() -> None:
        async with watch.Watch() as w:
            async for event in w.stream(
                core.list_namespaced_pod, NS, label_selector="app=sandbox", timeout_seconds=30
            ):
                events.append((event["type"], event["object"]))
                if event["type"] == "DELETED":
                    return

    watcher = asyncio.create_task(watching())
    await until(lambda: asyncio.sleep(0, emulator.open_watches() == 1))
    created = await core.create_namespaced_pod(NS, pod("box-1"))
    assert created.status.phase == "Pending"
    await until(lambda: asyncio.sleep(0, any(model_ready(o) for _, o in events)))
    types = [t for t, _ in events]
    assert types[0] == "ADDED"
    assert set(types[1:]) == {"MODIFIED"}
    running = await core.read_namespaced_pod("box-1", NS)
    status = running.status.container_statuses[0]
    assert running.status.phase == "Running"
    assert running.status.pod_ip.startswith("10.244.")
    assert running.status.host_ip == "192.0.2.10"
    assert running.spec.node_name == "node-1"
    assert status.container_id.startswith("docker://")
    assert status.ready
    assert status.started
    assert status.state.running.started_at is not None
    versions = [int(o.metadata.resource_version) for _, o in events]
    assert versions == sorted(versions)

    base = f"{emulator.url}/api/v1/namespaces/{NS}/pods/box-1:8000/proxy"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{base}/health", headers={**auth, "X-CommandLab-Token": TOKEN}) as r:
        assert r.status == 200, await r.text()
        assert "uptime" in await r.json()
    # The API server keeps the Authorization header to itself: the daemon sees no token.
    async with http.get(f"{base}/health", headers=auth) as r:
        assert r.status == 401
    async with http.get(f"{base}/health", headers={"X-CommandLab-Token": TOKEN}) as r:
        assert r.status == 401  # the API server wants its own credentials
        assert (await r.json())["reason"] == "Unauthorized"
    proxied = emulator.calls("PROXY pod")
    assert [r.status for r in proxied] == [200, 401, 401]

    # 64 MiB up and down through the proxy, streamed both ways.
    blob = os.urandom(1 << 20) * 64
    headers = {**auth, "X-CommandLab-Token": TOKEN}

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(blob), 1 << 20):
            yield blob[start : start + (1 << 20)]

    async with http.put(
        f"{base}/files", params={"path": "/tmp/big"}, data=chunks(), headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["size"] == len(blob)
    digest = hashlib.sha256()
    async with http.get(f"{base}/files", params={"path": "/tmp/big"}, headers=headers) as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(blob).hexdigest()

    # The pod IP is never connected to: the resolver maps it to the published port.
    url = f"http://{running.status.pod_ip}:8000"
    local = await emulator.resolver(SimpleNamespace(url=url))
    assert local.startswith("http://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as plain,
        plain.get(f"{local}/health", headers={"X-CommandLab-Token": TOKEN}) as r,
    ):
        assert r.status == 200

    log = await core.read_namespaced_pod_log("box-1", NS)
    assert "listening" in log

    answer = await core.delete_namespaced_pod("box-1", NS, grace_period_seconds=1)
    assert answer.metadata.deletion_timestamp is not None
    await asyncio.wait_for(watcher, 15)
    assert events[-1][0] == "DELETED"
    assert any(o.metadata.deletion_timestamp for t, o in events if t == "MODIFIED")
    assert emulator.live() == []
    assert await emulator.containers() == []
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_pod("box-1", NS)
    assert caught.value.status == 404
    assert [r.what for r in emulator.requests][:2] == ["WATCH pods", "POST pods"]


async def test_status_bodies(
    emulator: KubeEmulator, api: client.ApiClient, http: aiohttp.ClientSession
) -> None:
    core = client.CoreV1Api(api)
    emulator.never_schedule("held-.*")
    await core.create_namespaced_pod(NS, pod("held-1"))
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, pod("held-1"))
    assert caught.value.status == 409
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "held-1" already exists', "reason": "AlreadyExists",
        "details": {"name": "held-1", "kind": "pods"}, "code": 409,
    }  # fmt: skip
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_pod("nope", NS)
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"}, "code": 404,
    }  # fmt: skip
    bad = pod("bad-1", labels={"created": "2026-11-27T10:00:00Z"})
    del bad["spec"]["containers"][0]["image"]
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, bad)
    body = status_of(caught.value)
    assert caught.value.status == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(
        'Pod "bad-1" is invalid: [metadata.labels: Invalid value: "2026-11-27T10:00:00Z": a valid '
        "label must be an empty string"
    )
    assert body["message"].endswith(", spec.containers[0].image: Required value]")
    assert body["details"]["kind"] == "Pod"
    assert body["details"]["causes"][1] == {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.containers[0].image",
    }
    bad = pod("bad-2", restart="Sometimes", activeDeadlineSeconds=0)
    bad["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, bad)
    fields = [c["field"] for c in status_of(caught.value)["details"]["causes"]]
    assert fields == [
        "spec.containers[0].resources.requests[cpu]",
        "spec.restartPolicy",
        "spec.activeDeadlineSeconds",
    ]
    bad = pod("bad-3")
    bad["spec"]["containers"][0]["resources"] = {"limits": {"memory": "lots"}}
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, bad)
    assert caught.value.status == 400
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod("missing", pod("x"))
    assert status_of(caught.value)["message"] == 'namespaces "missing" not found'
    nodes = f"{emulator.url}/api/v1/nodes/x"
    async with http.get(nodes, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 404
        assert (await response.json())["message"] == (
            "the server could not find the requested resource"
        )
    proxy = f"{emulator.url}/api/v1/namespaces/{NS}/pods/held-1/proxy/health"
    async with http.get(proxy, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 400  # no pod IP yet
        assert (await response.json())["message"] == "address not allowed"
    assert emulator.live() == ["pod sandboxes/held-1"]
    assert [r.status for r in emulator.calls("POST pods")] == [201, 409, 422, 422, 400, 404]


async def test_authentication(emulator: KubeEmulator, ca: Path, tmp_path: Path) -> None:
    async def hook(token: str) -> str | None:
        return "eks-user" if token.startswith("k8s-aws-v1.") else None

    emulator.authenticate = hook
    async with client.ApiClient(cfg_for(emulator, ca, token=None)) as anonymous:
        with pytest.raises(ApiException) as caught:
            await client.CoreV1Api(anonymous).list_namespaced_pod(NS)
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    }  # fmt: skip
    async with client.ApiClient(cfg_for(emulator, ca, token="k8s-aws-v1.abc")) as eks:
        version = await client.VersionApi(eks).get_code()
        assert version.git_version.startswith("v1.")
    async with client.ApiClient(cfg_for(emulator, ca, token="wrong")) as wrong:
        with pytest.raises(ApiException) as caught:
            await client.VersionApi(wrong).get_code()
    assert caught.value.status == 401
    for auth in ("token", "client-cert"):
        cfg = client.Configuration()
        path = emulator.write_kubeconfig(tmp_path / f"{auth}.yaml", namespace=NS, auth=auth)
        await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            listed = await client.CoreV1Api(api).list_namespaced_pod(NS)
            assert listed.items == []
    assert [r.status for r in emulator.calls("LIST pods")] == [401, 200, 200]


async def test_faults(emulator: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    emulator.never_schedule(".*")
    emulator.add(Rule("POST pods", status=429, times=1, body={"retryAfterSeconds": 2}))
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, pod("a"))
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "2"
    assert status_of(caught.value)["details"] == {"retryAfterSeconds": 2}
    assert emulator.live() == []
    # forward: the pod is created, the answer is a 500.
    emulator.add(Rule("POST pods", status=500, forward=True, times=1))
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(NS, pod("a"))
    assert status_of(caught.value)["reason"] == "InternalError"
    assert emulator.live() == ["pod sandboxes/a"]
    emulator.add(Rule("DELETE pod", status=403, times=1))
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_pod("a", NS)
    assert status_of(caught.value)["message"] == (
        'pods "a" is forbidden: User "kubernetes-admin" cannot delete resource "pods" in API '
        'group "" in the namespace "sandboxes"'
    )
    emulator.add(Rule("GET pod", drop=True, times=2))  # aiohttp resends once
    with pytest.raises(aiohttp.ClientError):
        await core.read_namespaced_pod("a", NS)
    emulator.add(Rule("LIST pods", delay_before=0.3, times=1))
    started = asyncio.get_running_loop().time()
    await core.list_namespaced_pod(NS)
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert [r.status for r in emulator.calls("GET pod")] == [0, 0]


async def test_selectors_and_resource_versions(
    emulator: KubeEmulator, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    emulator.never_schedule(".*")
    for name, tier in (("p1", "web"), ("p2", "db"), ("p3", "cache")):
        await core.create_namespaced_pod(NS, pod(name, labels={"app": "x", "tier": tier}))
    await core.create_namespaced_pod(NS, pod("p4", labels={"other": "y"}))

    async def names(selector: str = "", fields: str = "") -> list[str]:
        listed = await core.list_namespaced_pod(NS, label_selector=selector, field_selector=fields)
        return [p.metadata.name for p in listed.items]

    assert await names("tier!=web") == ["p2", "p3", "p4"]
    assert await names("tier notin (web,db)") == ["p3", "p4"]
    assert await names("tier in (web, db),app=x") == ["p1", "p2"]
    assert await names("!tier") == ["p4"]
    assert await names("tier") == ["p1", "p2", "p3"]
    assert await names(fields="metadata.name=p2") == ["p2"]
    assert await names(fields="status.phase=Pending") == ["p1", "p2", "p3", "p4"]
    with pytest.raises(ApiException) as caught:
        await names(fields="spec.bogus=1")
    assert caught.value.status == 400
    page = await core.list_namespaced_pod(NS, limit=3)
    assert len(page.items) == 3
    rest = await core.list_namespaced_pod(NS, limit=3, _continue=page.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p4"]

    # A watch with a selector: an object patched out of it is DELETED for that watcher.
    seen_web: list[tuple[str, str]] = []

    async def watch_web() -> None:
        async with watch.Watch() as w:
            async for event in w.stream(
                core.list_namespaced_pod, NS, label_selector="tier=web", timeout_seconds=5
            ):
                seen_web.append((event["type"], event["object"].metadata.name))
                if event["type"] == "DELETED":
                    return

    task = asyncio.create_task(watch_web())
    await until(lambda: asyncio.sleep(0, seen_web == [("ADDED", "p1")]))
    patched = await core.patch_namespaced_pod("p2", NS, {"metadata": {"labels": {"tier": "web"}}})
    assert patched.metadata.labels == {"app": "x", "tier": "web"}
    await core.patch_namespaced_pod(
        "p1", NS, [{"op": "replace", "path": "/metadata/labels/tier", "value": "old"}]
    )
    await asyncio.wait_for(task, 5)
    assert seen_web == [("ADDED", "p1"), ("ADDED", "p2"), ("DELETED", "p1")]
    with pytest.raises(ApiException) as caught:
        await core.patch_namespaced_pod("p2", NS, {"spec": {"restartPolicy": "Always"}})
    assert status_of(caught.value)["details"]["causes"][0]["reason"] == "FieldValueForbidden"
    await core.patch_namespaced_pod("p1", NS, {"metadata": {"labels": {"tier": "web"}}})
    await core.patch_namespaced_pod("p2", NS, {"metadata": {"labels": {"tier": "db"}}})

    # A watch from the list's version sees only what comes after.
    listed = await core.list_namespaced_pod(NS)
    await core.delete_namespaced_pod("p4", NS)
    seen = []
    async with watch.Watch() as w:
        async for event in w.stream(
            core.list_namespaced_pod, NS, resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True, timeout_seconds=1,
        ):  # fmt: skip
            seen.append(event["type"])
    assert seen[0] == "DELETED"
    assert "BOOKMARK" in seen
    # Expired: a stale version, then a live watch cut by expire_watches.
    old = int(listed.metadata.resource_version)
    await emulator.expire_watches()
    with pytest.raises(ApiException) as caught:
        async with watch.Watch() as w:
            async for _ in w.stream(
                core.list_namespaced_pod, NS, resource_version=str(old), timeout_seconds=5
            ):
                pass
    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value.reason)

    async def open_watch() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_namespaced_pod, NS, timeout_seconds=30):
                pass

    task = asyncio.create_task(open_watch())
    await until(lambda: asyncio.sleep(0, emulator.open_watches() == 1))
    await emulator.expire_watches()
    with pytest.raises(ApiException) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value.status == 410
    # A cut stream: the client's watch raises ClientPayloadError.
    task = asyncio.create_task(open_watch())
    await until(lambda: asyncio.sleep(0, emulator.open_watches() == 1))
    await emulator.drop_watches()
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(task, 5)
    assert emulator.watches_opened == 5


async def test_image_pull_and_scheduling_failures(
    emulator: KubeEmulator, api: client.ApiClient, http: aiohttp.ClientSession
) -> None:
    core = client.CoreV1Api(api)
    emulator.never_schedule("stuck")
    await core.create_namespaced_pod(NS, pod("pull", MISSING))
    await core.create_namespaced_pod(NS, pod("stuck"))

    async def waiting_reasons() -> set[str]:
        body = await read(api, "pull")
        statuses = body["status"].get("containerStatuses") or [{"state": {}}]
        reason = statuses[0]["state"].get("waiting", {}).get("reason")
        reasons.add(reason)
        return reasons

    reasons: set[str] = set()

    async def both() -> bool:
        return {"ErrImagePull", "ImagePullBackOff"} <= await waiting_reasons()

    await until(both)
    body = await read(api, "pull")
    assert body["status"]["phase"] == "Pending"
    message = body["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert message in (
        'Back-off pulling image "commandlab-test/no-such-image:latest"',
        "rpc error: code = NotFound desc = failed to pull and unpack image "
        '"docker.io/commandlab-test/no-such-image:latest": failed to resolve reference '
        '"docker.io/commandlab-test/no-such-image:latest": '
        "docker.io/commandlab-test/no-such-image:latest: not found",
    )
    proxy = f"{emulator.url}/api/v1/namespaces/{NS}/pods/pull/proxy/health"
    async with http.get(proxy, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 503
        assert await response.json() == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"error trying to reach service: dial tcp {body['status']['podIP']}:8000: "
            "connect: connection refused", "reason": "ServiceUnavailable", "code": 503,
        }  # fmt: skip
    events = await core.list_namespaced_event(
        NS, field_selector="involvedObject.name=pull,involvedObject.kind=Pod"
    )
    assert {e.reason for e in events.items} >= {"Scheduled", "Pulling", "Failed", "BackOff"}
    stuck = await read(api, "stuck")
    assert stuck["status"]["conditions"][0] == {
        "type": "PodScheduled",
        "status": "False",
        "lastProbeTime": None,
        "lastTransitionTime": stuck["status"]["conditions"][0]["lastTransitionTime"],
        "reason": "Unschedulable",
        "message": (
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod."
        ),
    }
    events = await core.list_namespaced_event(NS, field_selector="involvedObject.name=stuck")
    assert [(e.type, e.reason) for e in events.items] == [("Warning", "FailedScheduling")]
    deleted = await client.CoreV1Api(api).delete_collection_namespaced_pod(
        NS, label_selector="app=sandbox", _preload_content=False
    )
    assert sorted(p["metadata"]["name"] for p in json.loads(await deleted.read())["items"]) == [
        "pull",
        "stuck",
    ]
    assert emulator.live() == []


async def test_exits_deadline_and_restarts(
    emulator: KubeEmulator, api: client.ApiClient, test_images: None
) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(NS, pod("exit"))
    await core.create_namespaced_pod(NS, pod("late", activeDeadlineSeconds=2))
    crash = pod("crash", EXITS_IMAGE, restart="Always")
    del crash["spec"]["containers"][0]["readinessProbe"]
    # The image runs as root: runAsNonRoot refuses it unless a user is given.
    await core.create_namespaced_pod(NS, crash)
    crash["metadata"]["name"] = "crash-2"
    crash["spec"]["containers"][0]["securityContext"]["runAsUser"] = 1000
    await core.create_namespaced_pod(NS, crash)

    async def is_ready(name: str) -> bool:
        return ready(await read(api, name))

    await until(lambda: is_ready("exit"))
    await emulator.exit_container(NS, "exit", code=3)
    body = await read(api, "exit")
    terminated = body["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert body["status"]["phase"] == "Failed"

    async def failed(name: str) -> bool:
        return bool((await read(api, name))["status"]["phase"] == "Failed")

    await until(lambda: failed("late"))
    late = (await read(api, "late"))["status"]
    assert (late["reason"], late["message"]) == (
        "DeadlineExceeded",
        "Pod was active on the node longer than the specified deadline",
    )

    waiting = (await read(api, "crash"))["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert waiting["message"].startswith("container has runAsNonRoot and image will run as root")

    async def restarted() -> bool:
        status = (await read(api, "crash-2"))["status"]["containerStatuses"][0]
        return bool(status["restartCount"] >= 1 and "waiting" in status["state"])

    await until(restarted)
    status = (await read(api, "crash-2"))["status"]
    assert status["phase"] == "Running"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 3
    assert "boom" in await core.read_namespaced_pod_log("crash-2", NS, previous=True)
    events = await core.list_namespaced_event(NS, field_selector="involvedObject.name=late")
    assert "DeadlineExceeded" in {e.reason for e in events.items}
    for name in ("exit", "late", "crash", "crash-2"):
        await core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    assert await emulator.containers() == []


async def test_deployment_service_and_garbage_collection(
    emulator: KubeEmulator, api: client.ApiClient, http: aiohttp.ClientSession
) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    template = pod("unused", labels={"app": "web"})
    template["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {
            "path": "/health",
            "port": "daemon",
            "httpHeaders": [{"name": "X-CommandLab-Token", "value": TOKEN}],
        },
        "periodSeconds": 1,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": template["spec"]},
        },
    }
    deployment["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["selector"]["matchLabels"] = {"app": "other"}
    with pytest.raises(ApiException) as caught:
        await apps.create_namespaced_deployment(NS, bad)
    assert status_of(caught.value)["details"]["causes"][0]["field"] == (
        "spec.template.metadata.labels"
    )
    await apps.create_namespaced_deployment(NS, deployment)

    async def available() -> bool:
        got = await apps.read_namespaced_deployment("web", NS)
        return bool(got.status.available_replicas == 1)

    await until(available)
    pods = (await core.list_namespaced_pod(NS, label_selector="app=web")).items
    assert len(pods) == 1
    first = pods[0]
    assert first.metadata.owner_references[0].kind == "Deployment"
    assert first.metadata.owner_references[0].controller
    assert first.metadata.labels["pod-template-hash"]
    # A LoadBalancer service owned by the pod, as a driver might make one per sandbox.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web-lb",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": first.metadata.name,
                    "uid": first.metadata.uid,
                }
            ],
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"port": 443, "targetPort": "daemon"}],
        },
    }
    created = await core.create_namespaced_service(NS, service)
    assert created.spec.cluster_ip.startswith("10.96.")
    assert 30000 <= created.spec.ports[0].node_port <= 32767

    def ingress_now() -> Any:
        found = emulator.get("services", NS, "web-lb")
        return found and found["status"]["loadBalancer"].get("ingress")

    async def ingress() -> str | None:
        got = await core.read_namespaced_service("web-lb", NS)
        found = got.status.load_balancer.ingress
        return str(found[0].ip) if found else None

    await until(lambda: asyncio.sleep(0, bool(emulator.get("services", NS, "web-lb"))))
    await until(lambda: asyncio.sleep(0, bool(ingress_now())))
    lb = await ingress()
    assert lb is not None
    assert lb.startswith("203.0.113.")
    for url in (f"http://{lb}:443", f"http://192.0.2.10:{created.spec.ports[0].node_port}"):
        local = await emulator.resolver(SimpleNamespace(url=url))
        async with (
            aiohttp.ClientSession() as plain,
            plain.get(f"{local}/health", headers={"X-CommandLab-Token": TOKEN}) as r,
        ):
            assert r.status == 200
    proxy = f"{emulator.url}/api/v1/namespaces/{NS}/services/web-lb:443/proxy/health"
    headers = {"Authorization": f"Bearer {TOKEN}", "X-CommandLab-Token": TOKEN}
    async with http.get(proxy, headers=headers) as r:
        assert r.status == 200
    assert [r.status for r in emulator.calls("PROXY service")] == [200]
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_service(
            NS, {"metadata": {"name": "clash"}, "spec": {"type": "NodePort", "ports": [
                {"port": 80, "nodePort": created.spec.ports[0].node_port}]}},
        )  # fmt: skip
    assert status_of(caught.value)["details"]["causes"][0]["message"].endswith(
        "provided port is already allocated"
    )

    # Scaled to 0 and back.
    await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 0}})
    await until(lambda: asyncio.sleep(0, not [x for x in emulator.live() if x.startswith("pod")]))
    assert "service sandboxes/web-lb" not in emulator.live()  # its owner pod is gone
    await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 1}})
    await until(available)
    got = await apps.read_namespaced_deployment("web", NS)
    assert got.metadata.generation == got.status.observed_generation == 3
    first = (await core.list_namespaced_pod(NS, label_selector="app=web")).items[0]

    # The controller replaces a deleted pod.
    await core.delete_namespaced_pod(first.metadata.name, NS, grace_period_seconds=1)

    async def replaced() -> bool:
        items = (await core.list_namespaced_pod(NS, label_selector="app=web")).items
        return [p.metadata.name for p in items] != [first.metadata.name] and len(items) == 1

    await until(replaced)
    await apps.delete_namespaced_deployment("web", NS)
    await until(lambda: asyncio.sleep(0, emulator.live() == []))
    assert await emulator.containers() == []
