"""Kubernetes driver (kubernetes_asyncio): one pod per sandbox, on any of four clusters.

The sandbox is a bare pod (or, as an opt-in, a one-replica Deployment), optionally
exposed by a Service the pod owns, so the cluster deletes both together. The daemon is
reached through the API server's pod proxy by default: the credentials we already hold
are enough, from anywhere. Readiness comes from one watch per namespace for the whole
process (:mod:`.watch`), not one poller per pod.

Every request to the API server takes a token from one bucket per cluster
(``requests_per_second`` / ``request_burst``); 429 is retried as ``Retry-After`` asks, 5xx
and dropped connections with jitter, and 403 (RBAC, quota) is raised at once in the API
server's words. Answers are read as plain JSON (``_preload_content=False``): the model
layer would validate and convert every watch event for nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..._client.tls import make_sandbox_tls
from ...daemon.protocol import TLS_KEY_ENV
from ...errors import BackendError, SandboxExitedError, SandboxNotFoundError
from ...labels import CREATED_AT, SESSION
from ...specs import Spec
from ..base import KubernetesPlatform, Limits, Platform, RunningSandbox
from ..driver import (
    SESSION_ID,
    TRANSIENT_STATUS,
    Driver,
    Failure,
    Reach,
    SandboxIdentity,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    TokenBucket,
    retry_after_seconds,
)
from .logins import ClusterLogin, login
from .manifests import (
    CONTAINER,
    SANDBOX,
    WORKLOAD,
    deployment_manifest,
    failure_of,
    is_ready,
    pod_manifest,
    service_manifest,
    state_of,
)
from .options import KubernetesTarget, _KubernetesOptions
from .watch import PodWatch, WatchExpired

__all__ = ["AksDriver", "EksDriver", "GkeDriver", "KubernetesDriver"]

_TRANSIENT_STATUS = {0, *TRANSIENT_STATUS}  # 0: no answer at all
# What aiohttp raises when it had no connection to send a request on: nothing was sent.
_NEVER_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# A watch ends by itself after this long (client-go picks 5..10 minutes) and resumes.
_WATCH_SECONDS = 300
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
_WATCH_TIMEOUT = aiohttp.ClientTimeout(sock_connect=10, sock_read=_WATCH_SECONDS + 30)
# Reading a pod's log: no total (a followed log runs as long as the pod, idle or not);
# a plain read may sit idle a minute between chunks.
_FOLLOW_TIMEOUT = aiohttp.ClientTimeout(sock_connect=10)
_LOG_TIMEOUT = aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
_LOG_CHUNK = 64 * 1024  # the most of a log held at once: it is passed on as it comes
# Waiting for a LoadBalancer's address: it takes a cloud tens of seconds.
_FIRST_POLL = 0.25
_MAX_POLL = 2.0
# The path of a daemon reached through the API server's pod proxy (see _running).
_PROXY_PATH = re.compile(
    r"/api/v1/namespaces/([a-z0-9-]{1,63})/pods/([a-z0-9.-]{1,253}):(\d{1,5})/proxy"
)
# Request buckets per cluster (not per namespace) and event loop.
_buckets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, TokenBucket]] = (
    weakref.WeakKeyDictionary()
)


def _options(spec: Spec) -> _KubernetesOptions:
    assert isinstance(spec.options, _KubernetesOptions)  # the registry guarantees it
    return spec.options


def _status_body(exc: ApiException) -> Mapping[str, Any]:
    try:
        body = json.loads(exc.body or b"{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _bucket(target: KubernetesTarget, options: _KubernetesOptions | None) -> TokenBucket:
    """The cluster's request bucket in this event loop, at the rate the latest spec named
    (a driver with no spec yet, as in ``gc``, takes the defaults)."""
    per_loop = _buckets.setdefault(asyncio.get_running_loop(), {})
    cluster = replace(target, namespace="")
    bucket = per_loop.get(cluster)
    if bucket is None:
        chosen = options or _KubernetesOptions()
        bucket = per_loop[cluster] = TokenBucket(chosen.requests_per_second, chosen.request_burst)
    elif options is not None:
        bucket.rate, bucket.burst = options.requests_per_second, options.request_burst
    return bucket


class KubernetesDriver(Driver[KubernetesTarget]):
    """Driver for a kubeconfig (or in-cluster) cluster: one pod (or Deployment) each.

    EKS, AKS and GKE differ only in how :mod:`.logins` finds and authenticates to the
    cluster; each has a subclass naming its platform.
    """

    platform: ClassVar[Platform] = KubernetesPlatform.LOCAL
    # Creates are bounded apart from deletes (teardown never waits behind a fleet coming
    # up); the request bucket below them is what protects the API server.
    default_limits = Limits(
        creates_in_flight=32,
        creates_per_second=50,
        create_burst=100,
        probes_in_flight=64,
        destroys_in_flight=32,
    )
    # No machine-wide quotas (Driver.machine_quotas): a cluster documents no rate quota
    # per user to share. Its API server queues and sheds load itself (priority and
    # fairness, answering 429 with a Retry-After we honour), every request counts there,
    # not creates alone, and a cluster is often this machine's own (kind, minikube),
    # where sharing would only slow tests down. set_machine_quotas can add them.
    probe_interval = 0.25
    attempts = 5
    first_wait = 0.1
    max_wait = 4.0

    def __init__(self, target: KubernetesTarget) -> None:
        super().__init__(target)
        self._lock = asyncio.Lock()
        self._login: ClusterLogin | None = None
        self._api: ApiClient | None = None
        self._core: Any = None
        self._apps: Any = None
        self._bucket: TokenBucket | None = None
        self._watch: PodWatch | None = None
        self._workloads: dict[str, str] = {}  # name -> "deployment" for those that are
        self._awaiting_address: set[str] = set()  # ready pods whose LoadBalancer has none

    # -- errors ------------------------------------------------------------------------

    @classmethod
    def classify(cls, exc: BaseException) -> Failure | None:
        if isinstance(exc, ApiException):
            status = int(exc.status or 0)
            reason = _status_body(exc).get("reason")
            return Failure(
                reason or status or None,
                transient=status in _TRANSIENT_STATUS,
                not_found=status == 404,
            )
        if isinstance(exc, aiohttp.ClientError | TimeoutError):
            return Failure(None, transient=True)
        if isinstance(exc, BackendError):  # from the login: the cloud's API, already ours
            return Failure(exc.code, transient=exc.transient)
        return None

    @classmethod
    def retry_after(cls, exc: BaseException) -> float | None:
        if not isinstance(exc, ApiException) or exc.headers is None:
            return None
        return retry_after_seconds(exc.headers.get("Retry-After"))

    def translate(self, exc: Exception, what: str, sandbox: str | None) -> Exception:
        if isinstance(exc, BackendError):
            return exc
        if not isinstance(exc, ApiException):
            return super().translate(exc, what, sandbox)
        failure = self.classify(exc)
        assert failure is not None
        body = _status_body(exc)
        message = body.get("message") or exc.reason or "no message"
        return BackendError(
            f"{what} failed: {exc.status} {body.get('reason') or exc.reason}: {message}",
            sandbox=sandbox,
            platform=str(self.platform),
            transient=failure.transient,
            code=failure.code,
        )

    # -- the client --------------------------------------------------------------------

    async def _apis(self) -> tuple[Any, Any]:
        # Any, not CoreV1Api/AppsV1Api: with ``_preload_content=False`` their methods
        # return the aiohttp response, not the models their annotations promise.
        async with self._lock:
            if self._core is None or self._apps is None:
                # The cloud may throttle or fail describing the cluster: retried like
                # any call.
                self._login = await self.call("log in to the cluster", None, self._log_in)
                self._api = ApiClient(await self._login.configuration())
                self._core, self._apps = CoreV1Api(self._api), AppsV1Api(self._api)
                if self._bucket is None:  # gc, before any spec named its own rate
                    self._bucket = _bucket(self.target, None)
            return self._core, self._apps

    async def _log_in(self) -> ClusterLogin:
        return await login(self.target)

    async def close(self) -> None:
        async with self._lock:
            if self._watch is not None:
                await self._watch.close()
                self._watch = None
            if self._api is not None:
                await self._api.close()
                self._api = self._core = self._apps = None
            if self._login is not None:
                await self._login.close()
                self._login = None

    async def _request(
        self,
        what: str,
        sandbox: str | None,
        send: Callable[[], Awaitable[aiohttp.ClientResponse]],
    ) -> Any:
        """One API call as plain JSON: rate-limited, retried, errors translated."""

        async def once() -> Any:
            if self._bucket is not None:
                await self._bucket.take()
            response = await send()
            async with response:
                body = await response.read()
            if not 200 <= response.status <= 299:
                raise _api_error(response, body)
            return json.loads(body) if body else {}

        return await self.call(what, sandbox, once)

    async def _request_or_missing(
        self, what: str, sandbox: str | None, send: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            return await self._request(what, sandbox, send)
        except BackendError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise

    # -- create ------------------------------------------------------------------------

    async def create(self, spec: Spec, identity: SandboxIdentity) -> None:
        options = _options(spec)
        self._bucket = _bucket(self.target, options)
        name, ns = identity.name, self.target.namespace
        try:
            core, apps = await self._apis()
        except BaseException:
            # Nothing was asked of the cluster: deleting would only log in and fail again.
            self.mark_not_created(name)
            raise
        tls = None
        if options.reach != "proxy":
            self._tls[name] = tls = await make_sandbox_tls(name)
        sent = _Sent()
        try:
            if options.workload == "deployment":
                self._workloads[name] = "deployment"
                what = "create deployment"
                manifest = deployment_manifest(spec, identity, tls)
                create = partial(apps.create_namespaced_deployment, ns, manifest)
                read = partial(apps.read_namespaced_deployment, name, ns)
            else:
                what, manifest = "create pod", pod_manifest(spec, identity, tls)
                create = partial(core.create_namespaced_pod, ns, manifest)
                read = partial(core.read_namespaced_pod, name, ns)
            owner = await self._create_or_adopt(
                what,
                identity,
                sent.track(lambda: create(_preload_content=False)),
                lambda: read(_preload_content=False),
            )
        except BackendError as exc:
            if sent.reached:
                raise
            # No attempt reached the API server: nothing to delete.
            self.mark_not_created(name)
            self._tls.pop(name, None)
            self._workloads.pop(name, None)
            cause = exc.__cause__
            if not isinstance(cause, _NEVER_CONNECTED):
                raise
            assert self._login is not None  # _apis() logged in
            raise BackendError(
                f"could not reach the API server at {self._login.host}, so nothing was "
                f"created: {cause}",
                sandbox=name,
                platform=str(self.platform),
                transient=exc.transient,
                code=exc.code,
            ) from cause
        if options.service is not None:
            await self._create_or_adopt(
                "create service",
                identity,
                lambda: core.create_namespaced_service(
                    ns, service_manifest(spec, identity, owner), _preload_content=False
                ),
                lambda: core.read_namespaced_service(name, ns, _preload_content=False),
            )

    async def _create_or_adopt(
        self,
        what: str,
        identity: SandboxIdentity,
        post: Callable[[], Awaitable[aiohttp.ClientResponse]],
        read: Callable[[], Awaitable[aiohttp.ClientResponse]],
    ) -> Mapping[str, Any]:
        """POST the object; a 409 for one carrying our session and time is ours (a retried
        POST whose first answer was lost) and is adopted, anything else is raised."""
        try:
            created: Mapping[str, Any] = await self._request(what, identity.name, post)
            return created
        except BackendError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ApiException) and cause.status == 409):
                raise
            found = await self._request_or_missing(what, identity.name, read)
            labels = (found or {}).get("metadata", {}).get("labels") or {}
            if any(labels.get(k) != identity.labels[k] for k in (SESSION, CREATED_AT)):
                raise
            return found  # type: ignore[no-any-return]

    # -- running -----------------------------------------------------------------------

    def _pods(self) -> PodWatch:
        if self._watch is None:
            core, ns = self._core, self.target.namespace
            assert core is not None
            # Only this process's pods: a namespace shared with others costs us nothing.
            selector = f"{SESSION}={SESSION_ID},{SANDBOX}"

            async def list_pods() -> Mapping[str, Any]:
                listed: Mapping[str, Any] = await self._request(
                    "list pods",
                    None,
                    lambda: core.list_namespaced_pod(
                        ns, label_selector=selector, _preload_content=False
                    ),
                )
                return listed

            async def open_watch(version: str) -> aiohttp.ClientResponse:
                if self._bucket is not None:
                    await self._bucket.take()
                response: aiohttp.ClientResponse = await core.list_namespaced_pod(
                    ns,
                    label_selector=selector,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=_WATCH_SECONDS,
                    _preload_content=False,
                    _request_timeout=_WATCH_TIMEOUT,
                )
                if response.status == 410:
                    response.release()
                    raise WatchExpired(version)
                if response.status != 200:
                    async with response:
                        body = await response.read()
                    raise self.translate(_api_error(response, body), "watch pods", None)
                return response

            self._watch = PodWatch(SANDBOX, list_pods, open_watch)
        return self._watch

    async def running(self, spec: Spec, identity: SandboxIdentity) -> RunningSandbox:
        name = identity.name

        def check(pod: Mapping[str, Any] | None, seen: bool) -> Mapping[str, Any] | None:
            if pod is None:
                if seen and self._workloads.get(name) != "deployment":
                    raise SandboxExitedError(
                        "pod is gone", sandbox=name, platform=self.platform, state="gone"
                    )
                return None
            if (failure := failure_of(pod)) is not None:
                raise SandboxExitedError(
                    f"Kubernetes cannot run it: {failure}",
                    sandbox=name,
                    platform=self.platform,
                    state=f"failed: {failure}",
                )
            return pod if is_ready(pod) and pod.get("status", {}).get("podIP") else None

        pod = await self._pods().wait(name, check)
        return await self._running(spec, name, pod)

    async def _running(self, spec: Spec, name: str, pod: Mapping[str, Any]) -> RunningSandbox:
        options = _options(spec)
        assert self._login is not None
        status = pod["status"]
        pod_name = pod["metadata"]["name"]
        port = spec.daemon_port
        addresses = {"pod": status["podIP"]}
        if status.get("hostIP"):
            addresses["node"] = status["hostIP"]
        tls = self._tls.get(name)
        raw: dict[str, Any] = {"pod": _without_secrets(pod)}
        if options.service is not None:
            service = await self._service_address(spec, name)
            raw["service"] = service
            addresses.update(_service_addresses(service))
        if options.reach == "proxy":
            ns = self.target.namespace
            url = f"{self._login.host}/api/v1/namespaces/{ns}/pods/{pod_name}:{port}/proxy"
            return RunningSandbox(
                name=name,
                platform=self.platform,
                port=port,
                addresses=addresses,
                url=url,
                raw=raw,
                ssl=self._login.ssl_context(),
                headers=self._login.headers,
            )
        assert tls is not None
        if options.reach == "pod-ip":
            host, exposed = status["podIP"], port
        else:
            host, exposed = _service_endpoint(raw["service"], status, options.service)
        return RunningSandbox(
            name=name,
            platform=self.platform,
            port=exposed,
            addresses=addresses,
            url=f"https://{_host(host)}:{exposed}",
            raw=raw,
            ssl=tls.client_context(),
        )

    async def reach(self, sandbox: SandboxRef, url: str, pin: str | None) -> Reach | None:
        if pin is not None:  # its Service or pod IP, over its own pinned TLS
            return await super().reach(sandbox, url, pin)
        # Through the pod proxy: the cluster's credentials go only to the API server this
        # login names, whatever host the handle says.
        await self._apis()
        assert self._login is not None
        path = urlsplit(url).path
        match = _PROXY_PATH.fullmatch(path)
        if match is None or match[1] != self.target.namespace:
            raise SandboxNotFoundError(
                f"its saved handle's URL is not a pod proxy in namespace {self.target.namespace}",
                sandbox=sandbox.name,
            )
        return Reach(self._login.host + path, self._login.ssl_context(), self._login.headers)

    async def _service_address(self, spec: Spec, name: str) -> Mapping[str, Any]:
        """The sandbox's Service, once it has the address its type promises."""
        core, ns = self._core, self.target.namespace
        assert core is not None
        delay = _FIRST_POLL
        while True:
            service: Mapping[str, Any] | None = await self._request_or_missing(
                "get service",
                name,
                lambda: core.read_namespaced_service(name, ns, _preload_content=False),
            )
            if service is None:
                raise SandboxExitedError(
                    "its service is gone", sandbox=name, platform=self.platform, state="gone"
                )
            ingress = (service.get("status", {}).get("loadBalancer") or {}).get("ingress")
            if _options(spec).service != "LoadBalancer" or ingress:
                self._awaiting_address.discard(name)
                return service
            self._awaiting_address.add(name)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _MAX_POLL)

    def waiting_on(self, sandbox: SandboxRef) -> str | None:
        if sandbox.name in self._awaiting_address:
            return "its LoadBalancer service has no address yet"
        if self._watch is None:
            return None
        pod, _ = self._watch.get(sandbox.name)
        return state_of(pod) if pod is not None else None

    # -- logs --------------------------------------------------------------------------

    async def logs(self, sandbox: SandboxRef, *, follow: bool = False) -> AsyncIterator[bytes]:
        """The daemon container's log, from the pod of the sandbox (its Deployment's
        newest pod for a Deployment); with ``follow``, as it comes until the container
        stops. Passed on in chunks of at most 64 KiB, never held whole."""
        name, ns = sandbox.name, self.target.namespace
        core, _ = await self._apis()
        # Found by its label, which a bare pod and a Deployment's pods both carry: the
        # caller may know only the name, not which workload it is.
        pods = await self._pods_of(name)
        if not pods:
            raise SandboxNotFoundError(f"no pod of it in namespace {ns}", sandbox=name)
        newest = max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")
        pod_name = str(newest["metadata"]["name"])
        timeout = _FOLLOW_TIMEOUT if follow else _LOG_TIMEOUT

        async def open_log() -> aiohttp.ClientResponse:
            if self._bucket is not None:
                await self._bucket.take()
            response: aiohttp.ClientResponse = await core.read_namespaced_pod_log(
                pod_name,
                ns,
                container=CONTAINER,
                follow=follow,
                _preload_content=False,
                _request_timeout=timeout,
            )
            if not 200 <= response.status <= 299:
                async with response:
                    body = await response.content.read(_LOG_CHUNK)
                raise _api_error(response, body)
            return response

        response = await self.call("read pod log", name, open_log)
        try:
            async for chunk in response.content.iter_chunked(_LOG_CHUNK):
                yield chunk
        finally:
            response.close()  # a followed log may never end: drop the connection

    # -- state, destroy, list ------------------------------------------------------------

    async def state(self, sandbox: SandboxRef) -> SandboxState:
        name = sandbox.name
        if self._watch is not None and self._watch.synced:
            pod, seen = self._watch.get(name)  # the watch knows: no request
            if pod is not None or seen:
                return _state(pod)
        if self._workload(sandbox) == "deployment":
            return await self._deployment_state(name)
        core, _ = await self._apis()
        ns = self.target.namespace
        pod = await self._request_or_missing(
            "get pod", name, lambda: core.read_namespaced_pod(name, ns, _preload_content=False)
        )
        return _state(pod)

    async def _deployment_state(self, name: str) -> SandboxState:
        items = await self._pods_of(name)
        return _state(items[0] if items else None)

    async def _pods_of(self, name: str) -> list[dict[str, Any]]:
        """The pods carrying the sandbox's label (a bare pod, or a Deployment's)."""
        core, _ = await self._apis()
        ns = self.target.namespace
        pods = await self._request(
            "list pods",
            name,
            lambda: core.list_namespaced_pod(
                ns, label_selector=f"{SANDBOX}={name}", _preload_content=False
            ),
        )
        items: list[dict[str, Any]] = pods.get("items") or []
        return items

    def _workload(self, sandbox: SandboxRef) -> str:
        return self._workloads.get(sandbox.name) or sandbox.labels.get(WORKLOAD) or "pod"

    async def destroy(self, sandbox: SandboxRef) -> None:
        name, ns = sandbox.name, self.target.namespace
        self._tls.pop(name, None)
        self._awaiting_address.discard(name)
        core, apps = await self._apis()
        # Background propagation: the cluster's garbage collector deletes what the
        # sandbox owns (its Service; a Deployment's ReplicaSet and pod). Not polled.
        if self._workload(sandbox) == "deployment":
            await self._request_or_missing(
                "delete deployment",
                name,
                lambda: apps.delete_namespaced_deployment(
                    name, ns, propagation_policy="Background", _preload_content=False
                ),
            )
        else:
            await self._request_or_missing(
                "delete pod",
                name,
                lambda: core.delete_namespaced_pod(
                    name, ns, propagation_policy="Background", _preload_content=False
                ),
            )
        self._workloads.pop(name, None)
        if self._watch is not None:
            self._watch.forget(name)

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        core, apps = await self._apis()
        ns = self.target.namespace
        selector = ",".join([*(f"{k}={v}" for k, v in labels.items()), SANDBOX])
        pods = await self._request(
            "list pods",
            None,
            lambda: core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False),
        )
        records = []
        for pod in pods.get("items") or []:
            metadata = pod.get("metadata", {})
            if metadata.get("ownerReferences"):
                continue  # a Deployment's: listed as the Deployment
            state = _state(pod)
            records.append(
                SandboxRecord(
                    metadata["name"], metadata.get("labels") or {}, state.detail, state.terminal
                )
            )
        deployments = await self._request(
            "list deployments",
            None,
            lambda: apps.list_namespaced_deployment(
                ns, label_selector=selector, _preload_content=False
            ),
        )
        for deployment in deployments.get("items") or []:
            metadata = deployment.get("metadata", {})
            ready = (deployment.get("status") or {}).get("readyReplicas") or 0
            records.append(
                SandboxRecord(
                    metadata["name"],
                    metadata.get("labels") or {},
                    f"deployment ({ready} ready)",
                )
            )
        return records


class _Sent:
    """Whether any attempt of a retried request may have reached the API server."""

    def __init__(self) -> None:
        self.reached = False

    def track(
        self, send: Callable[[], Awaitable[aiohttp.ClientResponse]]
    ) -> Callable[[], Awaitable[aiohttp.ClientResponse]]:
        async def once() -> aiohttp.ClientResponse:
            try:
                response = await send()
            except _NEVER_CONNECTED:
                raise  # this attempt never reached the API server
            except BaseException:
                self.reached = True  # sent, perhaps acted on: only a delete can tell
                raise
            self.reached = True
            return response

        return once


def _api_error(response: aiohttp.ClientResponse, body: bytes) -> ApiException:
    """The error kubernetes_asyncio raises for an answer it preloaded, for one we read."""
    error = ApiException(status=response.status, reason=response.reason)
    error.body, error.headers = body, response.headers
    return error


def _state(pod: Mapping[str, Any] | None) -> SandboxState:
    if pod is None:
        return SandboxState("gone", terminal=True)
    return SandboxState(state_of(pod), terminal=failure_of(pod) is not None)


def _without_secrets(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod as the API server describes it, minus the daemon's TLS key."""
    pod = json.loads(json.dumps(pod))
    for container in pod.get("spec", {}).get("containers") or []:
        for variable in container.get("env") or []:
            if variable.get("name") == TLS_KEY_ENV:
                variable["value"] = "<hidden>"
    return pod


def _service_addresses(service: Mapping[str, Any]) -> dict[str, str]:
    addresses = {}
    if ip := service.get("spec", {}).get("clusterIP"):
        addresses["cluster"] = str(ip)
    for ingress in (service.get("status", {}).get("loadBalancer") or {}).get("ingress") or []:
        if address := ingress.get("ip") or ingress.get("hostname"):
            addresses["load-balancer"] = str(address)
            break
    return addresses


def _service_endpoint(
    service: Mapping[str, Any], pod_status: Mapping[str, Any], kind: str | None
) -> tuple[str, int]:
    (port,) = service["spec"]["ports"]
    if kind == "LoadBalancer":
        return _service_addresses(service)["load-balancer"], int(port["port"])
    return str(pod_status["hostIP"]), int(port["nodePort"])


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class EksDriver(KubernetesDriver):
    """Driver for :attr:`KubernetesPlatform.AWS_EKS`."""

    platform = KubernetesPlatform.AWS_EKS


class AksDriver(KubernetesDriver):
    """Driver for :attr:`KubernetesPlatform.AZURE_AKS`."""

    platform = KubernetesPlatform.AZURE_AKS


class GkeDriver(KubernetesDriver):
    """Driver for :attr:`KubernetesPlatform.GCP_GKE`."""

    platform = KubernetesPlatform.GCP_GKE
