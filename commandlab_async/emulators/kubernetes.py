"""An emulator of the Kubernetes API server whose pods really run on the local Docker Engine.

``kubernetes_asyncio`` (``ApiClient``, ``CoreV1Api``, ``AppsV1Api``, ``watch.Watch``) talks to
:class:`KubeEmulator` unmodified over HTTPS on 127.0.0.1 (a ``trustme`` CA: see
:meth:`KubeEmulator.write_ca` and :meth:`KubeEmulator.write_kubeconfig`).  The emulator keeps
state with one global resourceVersion and a bounded watch history, records every request,
injects faults, and plays a stand-in scheduler, kubelet, deployment controller and garbage
collector: each pod's containers run on the engine with their ports published on 127.0.0.1,
and the pod proxy subresource streams to them.  Reported addresses are never connected to --
pod IPs 10.244.x.y, the node 192.0.2.10, cluster IPs 10.96.x.y, load balancers 203.0.113.x --
and :meth:`KubeEmulator.resolver` maps them to the published ports.

Routes ("what" strings; ``{ns}`` scoped unless noted; anything else is a 404 Status, a known
path with another method a 405)::

    GET    /version                                          "GET version"
    GET    /api/v1/namespaces/{ns}                           "GET namespace"
    POST   /api/v1/namespaces/{ns}/pods                      "POST pods"
    GET    /api/v1[/namespaces/{ns}]/pods                    "LIST pods" / "WATCH pods"
    DELETE /api/v1/namespaces/{ns}/pods                      "DELETE pods" (deletecollection)
    GET    /api/v1/namespaces/{ns}/pods/{name}               "GET pod"
    DELETE /api/v1/namespaces/{ns}/pods/{name}               "DELETE pod"
    GET    /api/v1/namespaces/{ns}/pods/{name}/log           "GET log"
    *      /api/v1/namespaces/{ns}/pods/{name}[:{port}]/proxy[/{path}]      "PROXY pod"
    POST   /api/v1/namespaces/{ns}/services                  "POST services"
    GET    /api/v1[/namespaces/{ns}]/services                "LIST services" / "WATCH services"
    GET    /api/v1/namespaces/{ns}/services/{name}           "GET service"
    DELETE /api/v1/namespaces/{ns}/services/{name}           "DELETE service"
    *      /api/v1/namespaces/{ns}/services/{name}[:{port}]/proxy[/{path}]  "PROXY service"
    POST   /apis/apps/v1/namespaces/{ns}/deployments         "POST deployments"
    GET    /apis/apps/v1[/namespaces/{ns}]/deployments       "LIST deployments"
                                                             / "WATCH deployments"
    GET    /apis/apps/v1/namespaces/{ns}/deployments/{name}  "GET deployment"
    DELETE /apis/apps/v1/namespaces/{ns}/deployments/{name}  "DELETE deployment"
    GET    /api/v1[/namespaces/{ns}]/events                  "LIST events" / "WATCH events"
    GET    /api/v1/namespaces/{ns}/events/{name}             "GET event"

A request the emulator does not serve is described as ``"<METHOD> <path>"``.  Every request is
authenticated first (a bearer token in ``tokens`` or accepted by the ``authenticate`` hook, or a
client certificate issued by the test CA), else 401; then the first
:class:`~commandlab_async.emulators.faults.Rule` whose pattern fullmatches its "what" applies:
``status`` answers that status with the Status body the real server would send (``Rule.body``
merged over it; a 429 carries ``Retry-After`` from ``Rule.body["retryAfterSeconds"]``, default
1), ``drop`` closes the connection unanswered, with ``forward`` the emulator acts first and the
answer is what is lost.  Every request is recorded in
:attr:`KubeEmulator.requests` (status 0: dropped or not answered yet; a watch or proxy records
its status when its stream starts, and neither its bodies).

How a pod lives: ``Pending``; after ``schedule_latency`` it is bound to ``node-1`` (or stays
Unschedulable, see :meth:`KubeEmulator.never_schedule`); the kubelet gives it an IP and looks the
images up on the engine (nothing is pulled: a missing image alternates ``ErrImagePull`` and
``ImagePullBackOff`` forever); after ``start_latency`` the containers are created and started,
Ready once running or once their ``tcpSocket``/``httpGet`` readiness probe passes.  An exit ends
the pod (``restartPolicy: Never``: ``Succeeded``/``Failed``) or restarts the container after a
``CrashLoopBackOff``.  A delete of a running pod marks it terminating, stops its containers with
the grace period, then removes it.  Events are emitted as the scheduler and kubelet would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import hashlib
import json
import math
import re
import secrets
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiodocker
import aiohttp
from aiohttp import web

from ._containers import ENGINE_URL, LocalEngine
from ._https import Emulator, Listener, LocalCA
from .faults import Recording, Rule, faulted

LABEL = "commandlab.k8s-emulator"
NODE = "node-1"
NODE_IP = "192.0.2.10"
NODE_PORTS = range(30000, 32768)
MAX_BODY = 3 * 1024 * 1024  # the real server refuses bigger request bodies
UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.1",
    "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
    "gitTreeState": "clean",
    "buildDate": "2025-05-15T08:19:08Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "AlreadyExists", 410: "Expired", 413: "RequestEntityTooLarge",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
    504: "Timeout",
}  # fmt: skip
_HOP_HEADERS = {
    "expect", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
# What the generateName suffix and the pod-template-hash are drawn from (no vowels).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = rf"({_QUALIFIED_NAME})?"
_ENV_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
_QUANTITY = re.compile(r"([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)")
_QUANTITY_RE = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_SUFFIXES = {
    "": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "P": 1e15, "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
    "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip
_IMAGE_REF = re.compile(
    r"((?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?"  # registry host
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*:[0-9a-fA-F]{32,})?"
)


def _regex_message(what: str, regex: str, *examples: str) -> str:
    """The message of apimachinery's RegexError, double spaces and all."""
    shown = ",  or ".join(f"'{e}'" for e in examples)
    return f"{what} (e.g. {shown}, regex used for validation is '{regex}')"


DNS1123_LABEL_MSG = _regex_message(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character",
    _DNS1123_LABEL, "my-name", "123-abc",
)  # fmt: skip
DNS1123_SUBDOMAIN_MSG = _regex_message(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character",
    _DNS1123_SUBDOMAIN, "example.com",
)  # fmt: skip
DNS1035_LABEL_MSG = _regex_message(
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character",
    _DNS1035_LABEL, "my-name", "abc-123",
)  # fmt: skip
QUALIFIED_NAME_MSG = _regex_message(
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character",
    _QUALIFIED_NAME, "MyName", "my.name", "123-abc",
)  # fmt: skip
LABEL_VALUE_MSG = _regex_message(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character",
    _LABEL_VALUE, "MyValue", "my_value", "12345",
)  # fmt: skip
ENV_NAME_MSG = _regex_message(
    "a valid environment variable name must consist of alphabetic characters, digits, '_', "
    "'-', or '.', and must not start with a digit",
    _ENV_NAME, "my.env-name", "MY_ENV.NAME", "MyEnvName1",
)  # fmt: skip


@dataclass(frozen=True)
class _Kind:
    plural: str
    kind: str
    api_version: str
    singular: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


KINDS = {
    "pods": _Kind("pods", "Pod", "v1", "pod"),
    "services": _Kind("services", "Service", "v1", "service"),
    "deployments": _Kind("deployments", "Deployment", "apps/v1", "deployment"),
    "events": _Kind("events", "Event", "v1", "event"),
}
# The field selectors each kind supports (every kind: metadata.name and metadata.namespace).
FIELDS = {
    "pods": {
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
    },
    "services": set(),
    "deployments": set(),
    "events": {
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    },
}  # fmt: skip

_NS = r"/namespaces/(?P<ns>[^/]+)"
ROUTES = [
    ("version", re.compile(r"/version/?")),
    ("namespace", re.compile(rf"/api/v1{_NS}")),
    ("collection", re.compile(rf"/api/v1(?:{_NS})?/(?P<plural>pods|services|events)")),
    ("collection", re.compile(rf"/apis/apps/v1(?:{_NS})?/(?P<plural>deployments)")),
    ("item", re.compile(rf"/api/v1{_NS}/(?P<plural>pods|services|events)/(?P<name>[^/]+)")),
    ("item", re.compile(rf"/apis/apps/v1{_NS}/(?P<plural>deployments)/(?P<name>[^/]+)")),
    ("log", re.compile(rf"/api/v1{_NS}/(?P<plural>pods)/(?P<name>[^/]+)/log")),
]
PROXY = re.compile(
    rf"/api/v1{_NS}/(?P<plural>pods|services)/(?P<name>[^/]+)/proxy(?P<tail>/.*)?", re.S
)
VERBS = {
    ("collection", "POST"): ("POST", "create"),
    ("collection", "GET"): ("LIST", "list"),
    ("collection", "DELETE"): ("DELETE", "deletecollection"),
    ("item", "GET"): ("GET", "get"),
    ("item", "DELETE"): ("DELETE", "delete"),
    ("item", "PATCH"): ("PATCH", "patch"),
}
SERVED = {
    "pods": {"POST", "LIST", "WATCH", "GET", "DELETE", "PATCH"},
    "services": {"POST", "LIST", "WATCH", "GET", "DELETE", "PATCH"},
    "deployments": {"POST", "LIST", "WATCH", "GET", "DELETE", "PATCH"},
    "events": {"LIST", "WATCH", "GET"},
}


@dataclass
class Recorded:
    """One HTTP request as the emulator received it, and its answer."""

    what: str
    """What rules match against, e.g. ``POST pods`` (see the module docstring)."""
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    """The answer's status; 0 while unanswered, or when the connection was dropped."""
    body: bytes = b""
    """The request body (not kept for the proxy, which streams it)."""
    response: str = ""
    """The answer's body as sent (empty for a watch or proxy stream)."""
    at: float = 0.0
    """When it arrived (``time.monotonic()``)."""

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class KubeError(Exception):
    """Ends a request with a Status body."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason if reason is not None else REASONS.get(code, "")
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _not_found(kind: _Kind | str, name: str) -> KubeError:
    plural = kind.plural if isinstance(kind, _Kind) else kind
    details: dict[str, Any] = {"name": name, "kind": plural}
    if isinstance(kind, _Kind) and kind.group:
        details["group"] = kind.group
    return KubeError(404, f'{plural} "{name}" not found', "NotFound", details)


def _bad_request(message: str) -> KubeError:
    return KubeError(400, message, "BadRequest")


@dataclass
class _FieldError:
    field: str
    kind: str  # Required, Invalid, NotSupported, TooLong, Duplicate
    value: Any = None
    detail: str = ""

    @property
    def reason(self) -> str:
        return {
            "Required": "FieldValueRequired",
            "Invalid": "FieldValueInvalid",
            "NotSupported": "FieldValueNotSupported",
            "TooLong": "FieldValueTooLong",
            "Duplicate": "FieldValueDuplicate",
            "Forbidden": "FieldValueForbidden",
        }[self.kind]

    @property
    def message(self) -> str:
        """The cause's message (without the field), as apimachinery's field.Error has it."""
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "TooLong":
            return f"Too long: {self.detail}"
        if self.kind == "Forbidden":
            return f"Forbidden: {self.detail}"
        shown = json.dumps(self.value) if not isinstance(self.value, dict) else _go_map(self.value)
        if self.kind == "Duplicate":
            return f"Duplicate value: {shown}"
        if self.kind == "NotSupported":
            return f"Unsupported value: {shown}: supported values: {self.detail}"
        return f"Invalid value: {shown}: {self.detail}"


def _go_map(value: dict[str, Any]) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(value.items()))
    return f"map[string]string{{{inner}}}"


def _invalid(kind: _Kind, name: str, errors: list[_FieldError]) -> KubeError:
    parts = [f"{e.field}: {e.message}" for e in errors]
    text = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {"name": name}
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.kind
    details["causes"] = [
        {"reason": e.reason, "message": e.message, "field": e.field} for e in errors
    ]
    return KubeError(422, f'{kind.kind} "{name}" is invalid: {text}', "Invalid", details)


@dataclass
class _Change:
    """One entry of the watch history."""

    rv: int
    type: str
    plural: str
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(eq=False)
class _Watcher:
    plural: str
    namespace: str | None
    labels: list[tuple[str, str, list[str]]]
    fields: list[tuple[str, str, str]]
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return _labels_match(self.labels, meta.get("labels") or {}) and _fields_match(
            self.fields, obj
        )

    def translate(self, change: _Change) -> str | None:
        """The event this watcher sees for a change, if any (selectors move objects in/out)."""
        if change.plural != self.plural:
            return None
        now = self.matches(change.new)
        if change.type == "ADDED":
            return "ADDED" if now else None
        if change.type == "DELETED":
            return "DELETED" if now else None
        before = self.matches(change.old)
        if before and now:
            return "MODIFIED"
        if before:
            return "DELETED"
        return "ADDED" if now else None


@dataclass
class _Container:
    """The kubelet's bookkeeping for one container of a pod."""

    index: int
    name: str
    id: str | None = None
    ids: list[str] = field(default_factory=list)
    published: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port
    exit_override: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Pod:
    """The kubelet's bookkeeping for one pod (its object is ``obj``)."""

    namespace: str
    name: str
    obj: dict[str, Any]
    containers: list[_Container]
    ip: str | None = None
    task: asyncio.Task[None] | None = None
    deadline: asyncio.Task[None] | None = None
    starting: set[asyncio.Future[Any]] = field(default_factory=set)
    bound: bool = False
    terminating: bool = False
    gone: bool = False

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])

    @property
    def ports(self) -> dict[int, int]:
        """Every published container port of the pod (they share one network namespace)."""
        found: dict[int, int] = {}
        for container in self.containers:
            found.update(container.published)
        return found


class _Located(Protocol):
    """What :meth:`KubeEmulator.resolver` reads of a ``RunningSandbox``."""

    @property
    def url(self) -> str | None: ...


class KubeEmulator(Emulator, Recording[Recorded]):
    """A Kubernetes API server over HTTPS on 127.0.0.1, its pods run on the local engine."""

    pull_backoff = 2.0
    """Seconds between ``ErrImagePull`` and ``ImagePullBackOff`` (and between retries)."""
    crash_backoff = 1.0
    """Seconds of ``CrashLoopBackOff`` before the first restart, doubled each restart up to
    ``crash_backoff_max`` (the kubelet's are 10 s and 300 s)."""
    crash_backoff_max = 10.0
    registry = True
    """Whether ``imagePullPolicy: Always`` pulls succeed for images present on the engine (a
    registry that has them); False: they fail as on a cluster with no registry access."""
    load_balancers = True
    """Whether LoadBalancer services get an address; False: never, as on a cluster with no
    cloud controller (kind, minikube without a tunnel)."""

    def __init__(
        self,
        *,
        schedule_latency: float = 0.0,
        start_latency: float = 0.0,
        bookmark_interval: float = 1.0,
        history: int = 10_000,
        tokens: set[str] | None = None,
        authenticate: Callable[[str], Awaitable[str | None]] | None = None,
        engine_url: str = ENGINE_URL,
    ) -> None:
        self.schedule_latency = schedule_latency
        self.start_latency = start_latency
        self.bookmark_interval = bookmark_interval
        self.tokens = {"test-token"} if tokens is None else set(tokens)
        self.authenticate = authenticate
        self.engine_url = engine_url
        self.url = ""
        self.requests: list[Recorded] = []
        self.rules: list[Rule] = []
        self.watches_opened = 0
        self._history: deque[_Change] = deque(maxlen=history)
        self._rv = 1
        self._compacted = 0  # watches from below this resourceVersion get 410
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in KINDS}
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._watchers: dict[_Watcher, web.Request] = {}
        self._unschedulable: list[str] = []
        self._engine = LocalEngine(LABEL, engine_url)
        self._reconciling: set[tuple[str, str]] = set()
        self._ip_turn = 0
        self._lb_turn = 0
        self._cluster_ip_turn = 0
        self.ca = LocalCA()
        self._listener: Listener | None = None
        self._client: aiohttp.ClientSession | None = None
        self._closing = False

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Serve over HTTPS on 127.0.0.1; client certificates of the test CA are accepted."""
        self._engine.open()
        self._client = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=5),
        )
        # Cancelled handlers: a watch or proxy stream ends when its client goes away.
        self._listener, self.url = await self._serve_https(
            self._handle, client_certs=True, client_max_size=1 << 40, handler_cancellation=True
        )

    async def aclose(self) -> None:
        """Stop serving, end every watch and remove every container the emulator made."""
        self._closing = True
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("close", None))
        if self._listener is not None:
            await self._listener.close()
        self._engine.cancel()
        await self._engine.close()
        if self._client is not None:
            await self._client.close()

    # ----------------------------------------------------------------------- test interface

    def write_kubeconfig(
        self,
        path: Path,
        *,
        namespace: str = "default",
        context: str = "emulator",
        auth: str = "token",
    ) -> Path:
        """Write a kubeconfig for :attr:`url`: user ``token: test-token`` or, with
        ``auth="client-cert"``, a client certificate issued by the test CA."""
        user: dict[str, str]
        if auth == "token":
            user = {"token": next(iter(sorted(self.tokens)), "test-token")}
        elif auth == "client-cert":
            cert, key = self.ca.client_cert("kubernetes-admin", "kubeadm")
            user = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
        else:
            raise ValueError(f"auth must be 'token' or 'client-cert', not {auth!r}")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": _b64(self.ca.pem),
                    },
                }
            ],
            "users": [{"name": f"{context}-user", "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": context,
                        "user": f"{context}-user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def live(self) -> list[str]:
        """``"pod ns/name"``, ``"service ns/name"``, ``"deployment ns/name"`` that exist now."""
        return sorted(
            f"{KINDS[plural].singular} {ns}/{name}"
            for plural in ("pods", "services", "deployments")
            for ns, name in self._objects[plural]
        )

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (live: do not modify), or None."""
        return self._objects[plural].get((namespace, name))

    async def containers(self) -> list[str]:
        """Ids of the engine's containers made by this emulator that still exist (removals
        already under way are waited for first)."""
        return await self._engine.containers()

    async def resolver(self, running: _Located) -> str:
        """An ``EndpointResolver``: ``running.url`` moved to the published 127.0.0.1 port.

        Pod IP + container port, node IP + nodePort, and load-balancer or cluster IP + service
        port all lead to the pod's published container port (a service: its first ready pod).
        """
        url = running.url
        assert url, f"the driver offered no URL for {getattr(running, 'name', running)!r}"
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        published = self._resolve(str(host), port)
        assert published is not None, f"{url!r} leads to no running pod port of the emulator"
        netloc = f"127.0.0.1:{published}"
        return str(
            urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        )

    async def exit_container(self, namespace: str, name: str, code: int = 1) -> None:
        """Kill pod ``namespace/name``'s running containers, reported as exiting with ``code``;
        returns once the pod's status shows it."""
        pod = self._pods.get((namespace, name))
        assert pod is not None, f"no pod {namespace}/{name}"
        waits = []
        for container in pod.containers:
            if container.id is None:
                continue
            container.exit_override = code
            container.exited.clear()
            waits.append(container.exited.wait())
            await self._engine.kill(container.id)
        assert waits, f"pod {namespace}/{name} has no running container"
        async with asyncio.timeout(15):
            await asyncio.gather(*waits)

    def never_schedule(self, pattern: str) -> None:
        """Pods whose name fullmatches ``pattern`` stay Pending, Unschedulable."""
        self._unschedulable.append(pattern)

    async def drop_watches(self) -> None:
        """Cut every open watch stream mid-body, as a load balancer would."""
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.queue.put_nowait(("drop", None))
        await self._watchers_gone(watchers)

    async def expire_watches(self) -> None:
        """Send every open watch a 410 Expired ERROR event and end it; forget the history, so
        resuming from any resourceVersion seen so far is refused with 410 too."""
        old = self._rv
        self._rv += 1
        self._compacted = self._rv
        self._history.clear()
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.queue.put_nowait(("expire", _expired(old, self._compacted)))
        await self._watchers_gone(watchers)

    def open_watches(self) -> int:
        return len(self._watchers)

    # -------------------------------------------------------------------------- HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route, match, what = _route(request)
        record = Recorded(what, request.method, request.path, dict(request.query))
        record.at = time.monotonic()
        self.requests.append(record)
        try:
            if what not in ("PROXY pod", "PROXY service"):
                if request.content_length is not None and request.content_length > MAX_BODY:
                    raise KubeError(413, "Request entity too large: limit is 3145728")
                record.body = await request.read()
            user = await self._user(request)
            if user is None:
                raise KubeError(401, "Unauthorized")
        except KubeError as error:
            return self._answer(record, _status_response(error))

        async def act() -> web.StreamResponse:
            try:
                return await self._serve(request, route, match, what, record)
            except KubeError as error:
                return _status_response(error)

        response = await faulted(
            self._rule_for(what), act, lambda rule: self._fail(request, record, rule, match, user)
        )
        return self._answer(record, response)

    @staticmethod
    def _answer(record: Recorded, response: web.StreamResponse) -> web.StreamResponse:
        if not record.status:
            record.status = response.status
        if isinstance(response, web.Response) and isinstance(response.text, str):
            record.response = response.text
        return response

    async def _user(self, request: web.Request) -> str | None:
        """Who the request is from (the real server's union of authenticators: a verified
        client certificate, then the bearer token)."""
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if cert:
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        if token in self.tokens:
            return "kubernetes-admin"
        if self.authenticate is not None:
            return await self.authenticate(token)
        return None

    def _fail(
        self,
        request: web.Request,
        record: Recorded,
        rule: Rule,
        match: re.Match[str] | None,
        user: str,
    ) -> web.StreamResponse:
        if rule.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp's way to abandon a dropped request
        error = _injected(rule.status or 500, record, match, user, request.method)
        if rule.body:
            for key, value in rule.body.items():
                if key == "retryAfterSeconds":
                    error.details = {**(error.details or {}), key: value}
                elif key == "details" and isinstance(value, dict):
                    error.details = {**(error.details or {}), **value}
                elif key == "message":
                    error.message = str(value)
                elif key == "reason":
                    error.reason = str(value)
        if error.code == 429:
            seconds = (rule.body or {}).get("retryAfterSeconds", 1)
            error.headers["Retry-After"] = str(seconds)
            error.details = {**(error.details or {}), "retryAfterSeconds": seconds}
        record.status = 0  # a stream may have recorded its start: the fault is the answer
        return _status_response(error)

    async def _serve(
        self,
        request: web.Request,
        route: str,
        match: re.Match[str] | None,
        what: str,
        record: Recorded,
    ) -> web.StreamResponse:
        if route == "version":
            if request.method != "GET":
                raise _method_not_allowed()
            return _json(VERSION)
        if match is None:
            raise KubeError(404, "the server could not find the requested resource", "NotFound", {})
        ns = match.groupdict().get("ns")
        if ns == "missing" and request.method == "POST":
            raise _not_found("namespaces", ns)
        if route == "namespace":
            if request.method != "GET":
                raise _method_not_allowed()
            return _json(_namespace(ns or ""))
        plural = match["plural"]
        if route == "proxy":
            return await self._proxy(request, match, record)
        if route == "log":
            if request.method != "GET":
                raise _method_not_allowed()
            return await self._log(request, ns or "", match["name"])
        verb = what.split(" ")[0]
        if verb not in SERVED[plural] or what == "DELETE deployments":
            raise _method_not_allowed()
        if route == "collection":
            if (ns is None and verb not in ("LIST", "WATCH")) or what == "DELETE services":
                raise _method_not_allowed()
            if verb == "WATCH":
                return await self._watch(request, plural, ns, record)
            if verb == "LIST":
                return _json(self._list(plural, ns, request.query))
            if verb == "POST":
                return self._post(plural, ns or "", record.body, request.query)
            return _json(await self._delete_collection(plural, ns or "", request.query))
        name = match["name"]
        if verb == "GET":
            obj = self._objects[plural].get((ns or "", name))
            if obj is None:
                raise _not_found(KINDS[plural], name)
            return _json(_typed(plural, obj))
        if verb == "PATCH":
            return self._patch(plural, ns or "", name, record.body, request.content_type)
        return await self._delete(plural, ns or "", name, record.body, request.query)

    # ------------------------------------------------------------------------ state and history

    def _commit(
        self, kind: str, plural: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        """Record a change: bump the resourceVersion, keep it in the history, tell watchers."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        change = _Change(self._rv, kind, plural, old, _typed(plural, obj))
        self._history.append(change)
        for watcher in self._watchers:
            watcher.queue.put_nowait(("change", change))
        if plural == "pods":
            for owner in obj["metadata"].get("ownerReferences") or []:
                if owner.get("kind") == "Deployment":
                    self._poke_deployment(obj["metadata"]["namespace"], owner["name"])

    @contextlib.contextmanager
    def _changing(self, plural: str, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Modify ``obj`` in the block; a MODIFIED change is committed if it changed."""
        old = _typed(plural, obj)
        yield obj
        if plural == "pods":
            _derive_pod_status(obj)
        if _typed(plural, obj) != old and self._stored(plural, obj):
            self._commit("MODIFIED", plural, obj, old)

    def _stored(self, plural: str, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        return self._objects[plural].get((meta.get("namespace", ""), meta["name"])) is obj

    def _create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if plural in ("pods", "deployments"):
            meta["generation"] = 1
        self._objects[plural][(meta["namespace"], meta["name"])] = obj
        self._commit("ADDED", plural, obj, None)
        return obj

    def _remove(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if self._objects[plural].pop((meta["namespace"], meta["name"]), None) is None:
            return
        self._commit("DELETED", plural, obj, _typed(plural, obj))
        self._collect(meta["uid"], "Background")

    def _collect(self, uid: str, propagation: str) -> None:
        """The garbage collector: delete (or orphan) what ``uid`` owned."""
        for plural in ("pods", "services", "deployments"):
            for obj in list(self._objects[plural].values()):
                owners = obj["metadata"].get("ownerReferences") or []
                if not any(o.get("uid") == uid for o in owners):
                    continue
                if propagation == "Orphan":
                    with self._changing(plural, obj):
                        obj["metadata"]["ownerReferences"] = [
                            o for o in owners if o.get("uid") != uid
                        ] or None
                        if obj["metadata"]["ownerReferences"] is None:
                            del obj["metadata"]["ownerReferences"]
                elif plural == "pods":
                    pod = self._pods.get((obj["metadata"]["namespace"], obj["metadata"]["name"]))
                    if pod is not None:
                        self._delete_pod(pod, None)
                else:
                    self._remove(plural, obj)

    # --------------------------------------------------------------------------------- lists

    def _select(
        self, plural: str, ns: str | None, query: Any
    ) -> tuple[list[dict[str, Any]], _Watcher]:
        try:
            labels = _parse_labels(query.get("labelSelector", ""))
        except ValueError as error:
            raise _bad_request(str(error)) from None
        fields = _parse_fields(plural, query.get("fieldSelector", ""))
        watcher = _Watcher(plural, ns, labels, fields)
        items = [obj for key, obj in sorted(self._objects[plural].items()) if watcher.matches(obj)]
        return items, watcher

    def _list(self, plural: str, ns: str | None, query: Any) -> dict[str, Any]:
        items, _ = self._select(plural, ns, query)
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                start = int(token["start"])
            except (ValueError, KeyError, TypeError):
                raise _bad_request("continue key is not valid: illegal base64 data") from None
        limit = int(query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        if end < len(items):
            token = json.dumps({"rv": self._rv, "start": end}).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - end
        kind = KINDS[plural]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": [copy.deepcopy(o) for o in items[start:end]],
        }

    # --------------------------------------------------------------------------------- watch

    async def _watch(
        self, request: web.Request, plural: str, ns: str | None, record: Recorded
    ) -> web.StreamResponse:
        query = request.query
        items, watcher = self._select(plural, ns, query)
        since = query.get("resourceVersion", "")
        first: list[dict[str, Any]] = []
        expired: dict[str, Any] | None = None
        if since in ("", "0"):
            first = [{"type": "ADDED", "object": _typed(plural, o)} for o in items]
        else:
            try:
                start = int(since)
            except ValueError:
                raise _bad_request(f'invalid resource version: "{since}"') from None
            if start < self._compacted:
                expired = _expired(start, self._compacted)
            else:
                for change in self._history:
                    seen = watcher.translate(change) if change.rv > start else None
                    if seen is not None:
                        first.append({"type": seen, "object": change.new})
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        self._watchers[watcher] = request  # registered before any await: nothing is missed
        self.watches_opened += 1
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            record.status = 200
            if expired is not None:
                await _send(response, {"type": "ERROR", "object": expired})
                await response.write_eof()
                return response
            for event in first:
                await _send(response, event)
            loop = asyncio.get_running_loop()
            ends = loop.time() + timeout if timeout is not None else math.inf
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                now = loop.time()
                if now >= ends:
                    break
                wake = min(ends, next_bookmark if bookmarks else math.inf)
                try:
                    async with asyncio.timeout(None if wake == math.inf else wake - now):
                        what, item = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks and loop.time() >= next_bookmark:
                        next_bookmark = loop.time() + self.bookmark_interval
                        await _send(response, _bookmark(plural, self._rv))
                    continue
                if what == "change":
                    seen = watcher.translate(item)
                    if seen is not None:
                        await _send(response, {"type": seen, "object": item.new})
                elif what == "expire":
                    await _send(response, {"type": "ERROR", "object": item})
                    break
                elif what == "drop":
                    assert request.transport is not None
                    request.transport.abort()
                    raise asyncio.CancelledError  # abandoned, as a cut connection would be
                else:
                    break
            await response.write_eof()
            return response
        finally:
            self._watchers.pop(watcher, None)

    async def _watchers_gone(self, watchers: list[_Watcher]) -> None:
        async with asyncio.timeout(10):
            # Each stream ends in its own handler, which no event marks: polled.
            while any(w in self._watchers for w in watchers):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    # ---------------------------------------------------------------------------- creating

    def _post(self, plural: str, ns: str, body: bytes, query: Any) -> web.Response:
        kind = KINDS[plural]
        try:
            obj = json.loads(body or b"null")
        except ValueError as error:
            raise _bad_request(f"the object provided is unrecognized (json: {error})") from None
        if not isinstance(obj, dict):
            raise _bad_request("the object provided is unrecognized")
        if obj.get("kind") not in (None, kind.kind) or obj.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise _bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({kind.api_version})"
            )
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if meta.get("namespace") not in (None, ns):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = ns
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(key, None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(
                secrets.choice(_SAFE) for _ in range(5)
            )
        _check_quantities(kind, obj)
        if plural == "pods":
            _default_pod_spec(obj.setdefault("spec", {}))
            errors = _validate_pod(obj)
        elif plural == "services":
            errors = self._validate_service(obj)
        elif plural == "deployments":
            errors = _validate_deployment(obj)
        else:
            raise _method_not_allowed()
        name = str(meta.get("name") or "")
        if errors:
            raise _invalid(kind, name, errors)
        if (ns, name) in self._objects[plural]:
            raise KubeError(
                409, f'{plural} "{name}" already exists', "AlreadyExists",
                {"name": name, **({"group": kind.group} if kind.group else {}), "kind": plural},
            )  # fmt: skip
        if query.get("dryRun") == "All":
            return _json(_typed(plural, obj), 201)
        if plural == "pods":
            self._create_pod(obj)
        elif plural == "services":
            self._create_service(obj)
        else:
            self._create_deployment(obj)
        return _json(_typed(plural, obj), 201)

    # ---------------------------------------------------------------------------- patching

    def _patch(
        self, plural: str, ns: str, name: str, body: bytes, content_type: str
    ) -> web.Response:
        """JSON patch, or JSON merge patch (a strategic merge patch is taken as one: lists are
        replaced whole).  Only metadata labels/annotations/ownerReferences change on pods and
        services; a deployment's spec too (a new generation)."""
        kind = KINDS[plural]
        obj = self._objects[plural].get((ns, name))
        if obj is None:
            raise _not_found(kind, name)
        try:
            patch = json.loads(body or b"null")
        except ValueError as error:
            raise _bad_request(f"error decoding patch: {error}") from None
        current = _typed(plural, obj)
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _bad_request(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                )
            patched = _json_patch(current, patch)
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            if not isinstance(patch, dict):
                raise _bad_request("patch must be a JSON object")
            patched = _merge_patch(current, patch)
        else:
            raise KubeError(
                415, "the body of the request was in an unknown format - accepted media types "
                "include: application/json-patch+json, application/merge-patch+json, "
                "application/strategic-merge-patch+json", "UnsupportedMediaType",
            )  # fmt: skip
        meta, new_meta = obj["metadata"], patched.get("metadata") or {}
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            if new_meta.get(key) != meta.get(key):
                immutable = _FieldError(
                    f"metadata.{key}", "Invalid", new_meta.get(key), "field is immutable"
                )
                raise _invalid(kind, name, [immutable])
        errors = _validate_labels(new_meta.get("labels") or {}, "metadata.labels")
        spec_changed = patched.get("spec") != obj.get("spec")
        if spec_changed and plural == "deployments":
            spec = patched.get("spec") or {}
            errors += _validate_deployment({"metadata": new_meta, "spec": spec})
        elif spec_changed:
            errors.append(
                _FieldError("spec", "Forbidden", detail=(
                    "pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                    "`spec.tolerations` (only additions to existing tolerations),"
                    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                    "previously negative)"
                ) if plural == "pods" else "may not be changed by the emulator")
            )  # fmt: skip
        if errors:
            raise _invalid(kind, name, errors)
        with self._changing(plural, obj):
            for key in ("labels", "annotations", "ownerReferences"):
                if new_meta.get(key):
                    meta[key] = new_meta[key]
                else:
                    meta.pop(key, None)
            if spec_changed:
                obj["spec"] = patched["spec"]
                meta["generation"] = int(meta.get("generation", 1)) + 1
        if plural == "deployments":
            self._poke_deployment(ns, name)
        return _json(_typed(plural, obj))

    # ---------------------------------------------------------------------------- deleting

    async def _delete(
        self, plural: str, ns: str, name: str, body: bytes, query: Any
    ) -> web.Response:
        kind = KINDS[plural]
        obj = self._objects[plural].get((ns, name))
        if obj is None:
            raise _not_found(kind, name)
        grace, propagation = _delete_options(body, query)
        if plural == "pods":
            pod = self._pods[(ns, name)]
            answer = _typed(plural, obj)
            self._delete_pod(pod, grace, propagation)
            return _json(_typed(plural, pod.obj) if not pod.gone else answer)
        self._objects[plural].pop((ns, name))
        self._commit("DELETED", plural, obj, _typed(plural, obj))
        self._collect(obj["metadata"]["uid"], propagation)
        if plural == "services":
            return _json(_typed(plural, obj))
        details: dict[str, Any] = {"name": name}
        if kind.group:
            details["group"] = kind.group
        details.update({"kind": plural, "uid": obj["metadata"]["uid"]})
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )

    async def _delete_collection(self, plural: str, ns: str, query: Any) -> dict[str, Any]:
        items, _ = self._select(plural, ns, query)
        grace, propagation = _delete_options(b"", query)
        answer = self._list(plural, ns, query)
        for obj in items:
            pod = self._pods.get((ns, obj["metadata"]["name"]))
            if pod is not None:
                self._delete_pod(pod, grace, propagation)
        return answer

    # ------------------------------------------------------------------------------- pods

    def _create_pod(self, obj: dict[str, Any]) -> _Pod:
        meta = obj["metadata"]
        obj["status"] = {"phase": "Pending", "qosClass": _qos(obj["spec"])}
        containers = [
            _Container(i, str(c["name"])) for i, c in enumerate(obj["spec"]["containers"])
        ]
        pod = _Pod(meta["namespace"], meta["name"], obj, containers)
        self._pods[(pod.namespace, pod.name)] = pod
        self._create("pods", obj)
        pod.task = self._engine.spawn(self._kubelet(pod))
        return pod

    def _delete_pod(self, pod: _Pod, grace: int | None, propagation: str = "Background") -> None:
        if pod.terminating or pod.gone:
            return
        spec = pod.obj["spec"]
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
        started = any(c.ids for c in pod.containers) or bool(pod.starting)
        pod.terminating = True
        if grace == 0 or not started:
            self._cancel_pod(pod)
            self._forget_pod(pod, propagation)
            self._engine.spawn(self._teardown(pod), removal=True)
            return
        with self._changing("pods", pod.obj):
            meta = pod.obj["metadata"]
            deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=grace)
            meta["deletionTimestamp"] = _iso(deadline)
            meta["deletionGracePeriodSeconds"] = grace
        self._engine.spawn(self._terminate(pod, grace, propagation), removal=True)

    def _cancel_pod(self, pod: _Pod) -> None:
        for task in (pod.task, pod.deadline):
            if task is not None:
                task.cancel()

    def _forget_pod(self, pod: _Pod, propagation: str) -> None:
        pod.gone = True
        self._pods.pop((pod.namespace, pod.name), None)
        obj = pod.obj
        if self._objects["pods"].pop((pod.namespace, pod.name), None) is not None:
            self._commit("DELETED", "pods", obj, _typed("pods", obj))
            self._collect(obj["metadata"]["uid"], propagation)

    async def _terminate(self, pod: _Pod, grace: int, propagation: str) -> None:
        """A graceful delete: stop the containers within ``grace``, then remove the pod."""
        self._cancel_pod(pod)
        for task in (pod.task, pod.deadline):
            if task is not None:
                await asyncio.wait([task])
        if pod.starting:
            await asyncio.wait(list(pod.starting))
        running = [c for c in pod.containers if c.id is not None]
        for container in running:
            self._event(pod.obj, "Normal", "Killing", f"Stopping container {container.name}")

        async def stop(container: _Container) -> None:
            assert container.id is not None
            engine = self._engine.docker.containers.container(container.id)
            with contextlib.suppress(aiodocker.DockerError):
                await engine.stop(t=grace, timeout=grace + 30)
            state = await self._engine.state(container.id)
            code = state.get("ExitCode", 137)
            with self._changing("pods", pod.obj):
                status = _container_status(pod.obj, container.index)
                status["state"] = _terminated(code, status, state)
                status["ready"] = False
                status["started"] = False

        await asyncio.gather(*(stop(c) for c in running))
        self._forget_pod(pod, propagation)
        await self._teardown(pod)

    async def _teardown(self, pod: _Pod) -> None:
        if pod.task is not None:
            await asyncio.wait([pod.task])
        if pod.starting:
            await asyncio.wait(list(pod.starting))
        for container in pod.containers:
            for container_id in container.ids:
                await self._engine.remove(container_id)  # nothing once closed: all removed

    # ---------------------------------------------------------------------------- the kubelet

    async def _kubelet(self, pod: _Pod) -> None:
        """Schedule the pod, then run it as the node's kubelet would."""
        obj, spec = pod.obj, pod.obj["spec"]
        await asyncio.sleep(self.schedule_latency)
        if any(re.fullmatch(p, pod.name) for p in self._unschedulable):
            with self._changing("pods", obj):
                _set_condition(obj, "PodScheduled", "False", "Unschedulable", UNSCHEDULABLE)
            self._event(obj, "Warning", "FailedScheduling", UNSCHEDULABLE, "default-scheduler")
            return
        with self._changing("pods", obj):
            spec["nodeName"] = NODE
            _set_condition(obj, "PodScheduled", "True")
        pod.bound = True
        self._event(
            obj, "Normal", "Scheduled",
            f"Successfully assigned {pod.namespace}/{pod.name} to {NODE}", "default-scheduler",
        )  # fmt: skip
        pod.ip = self._next_pod_ip()
        with self._changing("pods", obj):
            status = obj["status"]
            status.update(
                hostIP=NODE_IP, hostIPs=[{"ip": NODE_IP}], podIP=pod.ip,
                podIPs=[{"ip": pod.ip}], startTime=_now(),
            )  # fmt: skip
            _set_condition(obj, "PodReadyToStartContainers", "True")
            _set_condition(obj, "Initialized", "True")
            status["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
                for c in spec["containers"]
            ]
        if spec.get("activeDeadlineSeconds"):
            pod.deadline = self._engine.spawn(
                self._deadline(pod, float(spec["activeDeadlineSeconds"]))
            )
        image_ids = await self._pull(pod)
        await asyncio.sleep(self.start_latency)
        async with asyncio.TaskGroup() as group:
            for container in pod.containers:
                group.create_task(self._run_container(pod, container, image_ids))

    async def _pull(self, pod: _Pod) -> list[str]:
        """Find every image on the engine; report what a kubelet with containerd would until
        all are there.  Returns their ids."""
        obj = pod.obj
        containers = obj["spec"]["containers"]
        ids: list[str] = [""] * len(containers)
        attempt = 0
        while True:
            missing = False
            for index, spec in enumerate(containers):
                if ids[index]:
                    continue
                image, policy = str(spec["image"]), spec.get("imagePullPolicy", "IfNotPresent")
                field_path = f"spec.containers{{{spec['name']}}}"
                if not _IMAGE_REF.fullmatch(image):
                    message = (
                        f'Failed to apply default image tag "{image}": couldn\'t parse image name '
                        f'"{image}": invalid reference format'
                    )
                    if attempt == 0:
                        self._event(obj, "Warning", "InspectFailed", message, field=field_path)
                        self._event(obj, "Warning", "Failed", "Error: InvalidImageName",
                                    field=field_path)  # fmt: skip
                    self._waiting(pod, index, "InvalidImageName", message)
                    missing = True
                    continue
                found = await self._image_id(image)
                if found is not None and (policy != "Always" or self.registry):
                    if policy == "Always":
                        self._event(obj, "Normal", "Pulling", f'Pulling image "{image}"',
                                    field=field_path)  # fmt: skip
                        self._event(
                            obj, "Normal", "Pulled",
                            f'Successfully pulled image "{image}" in 12ms (12ms including '
                            "waiting). Image size: 0 bytes.", field=field_path,
                        )  # fmt: skip
                    else:
                        self._event(
                            obj, "Normal", "Pulled",
                            f'Container image "{image}" already present on machine',
                            field=field_path,
                        )  # fmt: skip
                    ids[index] = found
                    continue
                missing = True
                if policy == "Never":
                    message = f'Container image "{image}" is not present with pull policy of Never'
                    self._event(obj, "Warning", "ErrImageNeverPull", message, field=field_path)
                    self._waiting(pod, index, "ErrImageNeverPull", message)
                    continue
                ref = _full_ref(image)
                if found is not None:
                    desc = (
                        f'failed to pull and unpack image "{ref}": failed to resolve reference '
                        f'"{ref}": failed to do request: Head "https://registry.invalid/": dial '
                        "tcp: lookup registry.invalid: no such host"
                    )
                    code = "Unknown"
                else:
                    desc = (
                        f'failed to pull and unpack image "{ref}": failed to resolve reference '
                        f'"{ref}": {ref}: not found'
                    )
                    code = "NotFound"
                message = f"rpc error: code = {code} desc = {desc}"
                self._event(obj, "Normal", "Pulling", f'Pulling image "{image}"', field=field_path)
                self._event(obj, "Warning", "Failed", f'Failed to pull image "{image}": {message}',
                            field=field_path)  # fmt: skip
                self._event(obj, "Warning", "Failed", "Error: ErrImagePull", field=field_path)
                self._waiting(pod, index, "ErrImagePull", message)
            if not missing:
                return ids
            attempt += 1
            await asyncio.sleep(self.pull_backoff)
            for index, spec in enumerate(containers):
                state = _container_status(obj, index)["state"].get("waiting", {})
                if state.get("reason") == "ErrImagePull":
                    image = spec["image"]
                    field_path = f"spec.containers{{{spec['name']}}}"
                    self._event(obj, "Normal", "BackOff", f'Back-off pulling image "{image}"',
                                field=field_path)  # fmt: skip
                    self._event(obj, "Warning", "Failed", "Error: ImagePullBackOff",
                                field=field_path)  # fmt: skip
                    self._waiting(
                        pod, index, "ImagePullBackOff", f'Back-off pulling image "{image}"'
                    )
            await asyncio.sleep(self.pull_backoff)

    async def _image_id(self, image: str) -> str | None:
        info = await self._engine.image(image, missing=(400, 404))
        return None if info is None else str(info["Id"])

    def _waiting(self, pod: _Pod, index: int, reason: str, message: str) -> None:
        with self._changing("pods", pod.obj):
            status = _container_status(pod.obj, index)
            status["state"] = {"waiting": {"reason": reason, "message": message}}
            status["ready"] = False
            status["started"] = False

    async def _run_container(self, pod: _Pod, container: _Container, image_ids: list[str]) -> None:
        """Start, wait, restart (per restartPolicy) one container of the pod."""
        obj = pod.obj
        spec = obj["spec"]["containers"][container.index]
        field_path = f"spec.containers{{{container.name}}}"
        restarts = 0
        while True:
            problem = await self._config_problem(pod, spec)
            if problem is not None:
                self._event(obj, "Warning", "Failed", f"Error: {problem}", field=field_path)
                self._waiting(pod, container.index, "CreateContainerConfigError", problem)
                await asyncio.sleep(self.pull_backoff)
                continue
            # Later containers join the first one's network: polled, as a kubelet would.
            while container.index > 0 and pod.containers[0].id is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            future = self._engine.atomic(self._engine_start(pod, container, spec))
            pod.starting.add(future)
            future.add_done_callback(pod.starting.discard)
            try:
                await asyncio.shield(future)
            except aiodocker.DockerError as error:
                message = str(error.message)
                self._event(obj, "Warning", "Failed", f"Error: {message}", field=field_path)
                self._waiting(pod, container.index, "CreateContainerError", message)
                await asyncio.sleep(self.pull_backoff)
                continue
            assert container.id is not None
            self._event(obj, "Normal", "Created", f"Created container: {container.name}",
                        field=field_path)  # fmt: skip
            self._event(obj, "Normal", "Started", f"Started container {container.name}",
                        field=field_path)  # fmt: skip
            started_at = await self._started_at(container.id)
            with self._changing("pods", obj):
                status = _container_status(obj, container.index)
                status.update(
                    imageID=f"docker-pullable://{spec['image']}@{image_ids[container.index]}",
                    containerID=f"docker://{container.id}",
                    started=True,
                    ready=spec.get("readinessProbe") is None,
                    state={"running": {"startedAt": started_at}},
                )
            probe: asyncio.Future[Any] | None = None
            if spec.get("readinessProbe") is not None:
                probe = self._engine.spawn(self._probe(pod, container, spec["readinessProbe"]))
            try:
                result = await self._engine.docker.containers.container(container.id).wait()
            finally:
                if probe is not None:
                    probe.cancel()
            code = container.exit_override
            if code is None:
                code = int(result.get("StatusCode", 0))
            container.exit_override = None
            state = await self._engine.state(container.id)
            policy = obj["spec"].get("restartPolicy", "Always")
            with self._changing("pods", obj):
                status = _container_status(obj, container.index)
                status["state"] = _terminated(code, status, state)
                status["ready"] = False
                status["started"] = False
            container.id = None
            container.exited.set()
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            backoff = min(self.crash_backoff * 2**restarts, self.crash_backoff_max)
            restarts += 1
            uid = obj["metadata"]["uid"]
            where = f"{pod.name}_{pod.namespace}({uid})"
            self._event(
                obj, "Warning", "BackOff",
                f"Back-off restarting failed container {container.name} in pod {where}",
                field=field_path,
            )  # fmt: skip
            with self._changing("pods", obj):
                status = _container_status(obj, container.index)
                status["lastState"] = status["state"]
                status["restartCount"] = restarts
                status["state"] = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {backoff:g}s restarting failed "
                        f"container={container.name} pod={where}",
                    }
                }
            await asyncio.sleep(backoff)

    async def _config_problem(self, pod: _Pod, spec: dict[str, Any]) -> str | None:
        """What the kubelet refuses before creating a container (CreateContainerConfigError)."""
        pod_ctx = pod.obj["spec"].get("securityContext") or {}
        ctx = {**pod_ctx, **(spec.get("securityContext") or {})}
        where = f'(pod: "{pod.name}_{pod.namespace}({pod.uid})", container: {spec["name"]})'
        for variable in spec.get("env") or []:
            source = variable.get("valueFrom")
            if source is not None and "fieldRef" not in source:
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                what = "secret" if "secretKeyRef" in source else "configmap"
                return f'{what} "{ref.get("name", "")}" not found'
        if not ctx.get("runAsNonRoot"):
            return None
        if ctx.get("runAsUser") is not None:
            if int(ctx["runAsUser"]) == 0:
                return f"container's runAsUser breaks non-root policy {where}"
            return None
        image = await self._engine.docker.images.inspect(spec["image"])
        user = str(image["Config"].get("User") or "")
        uid = user.split(":")[0]
        if uid in ("", "0", "root"):
            return f"container has runAsNonRoot and image will run as root {where}"
        if not uid.isdigit():
            return (
                f"container has runAsNonRoot and image has non-numeric user ({uid}), cannot "
                f"verify user is non-root {where}"
            )
        return None

    async def _engine_start(self, pod: _Pod, container: _Container, spec: dict[str, Any]) -> None:
        """Create and start one container on the engine (never cancelled half-way); the first
        publishes every container port of the pod (they share its network namespace)."""
        config = self._container_config(pod, container, spec)
        name = f"k8s-{self._engine.instance[:8]}_{container.name}_{pod.name}_{pod.namespace}"
        name += f"_{secrets.token_hex(3)}"
        publish = None
        if container.index == 0:
            publish = {
                int(p["containerPort"])
                for c in pod.obj["spec"]["containers"]
                for p in c.get("ports") or []
            }
        created = await self._engine.create(config, name=name, publish=publish)
        container.ids.append(created.id)
        # Keep the last exited container (for ``previous`` logs); remove older ones.
        for old in container.ids[:-2]:
            await self._engine.remove(old)
            container.ids.remove(old)
        await created.start()
        container.id = created.id
        if container.index == 0:
            container.published = await self._engine.published(created)

    def _container_config(
        self, pod: _Pod, container: _Container, spec: dict[str, Any]
    ) -> dict[str, Any]:
        pod_spec = pod.obj["spec"]
        env = [
            "KUBERNETES_SERVICE_HOST=10.96.0.1",
            "KUBERNETES_SERVICE_PORT=443",
        ]
        for variable in spec.get("env") or []:
            value = variable.get("value", "")
            ref = (variable.get("valueFrom") or {}).get("fieldRef")
            if ref is not None:
                value = {
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.namespace,
                    "metadata.uid": pod.uid,
                    "spec.nodeName": NODE,
                    "status.podIP": pod.ip or "",
                    "status.hostIP": NODE_IP,
                }.get(ref.get("fieldPath", ""), "")
            env.append(f"{variable['name']}={value}")
        host: dict[str, Any] = {}
        config: dict[str, Any] = {
            "Image": spec["image"],
            "Env": env,
            "Labels": {
                "io.kubernetes.pod.name": pod.name,
                "io.kubernetes.pod.namespace": pod.namespace,
                "io.kubernetes.pod.uid": pod.uid,
                "io.kubernetes.container.name": container.name,
            },
            "HostConfig": host,
        }
        if container.index == 0:
            config["Hostname"] = pod.name[:63]
        else:
            first = pod.containers[0].id
            if first is not None:
                host["NetworkMode"] = f"container:{first}"
        if spec.get("command"):
            config["Entrypoint"] = list(spec["command"])
            config["Cmd"] = list(spec.get("args") or [])
        elif spec.get("args"):
            config["Cmd"] = list(spec["args"])
        if spec.get("workingDir"):
            config["WorkingDir"] = spec["workingDir"]
        ctx = {**(pod_spec.get("securityContext") or {}), **(spec.get("securityContext") or {})}
        if ctx.get("runAsUser") is not None:
            user = str(ctx["runAsUser"])
            if ctx.get("runAsGroup") is not None:
                user += f":{ctx['runAsGroup']}"
            config["User"] = user
        caps = ctx.get("capabilities") or {}
        if caps.get("drop"):
            host["CapDrop"] = list(caps["drop"])
        if caps.get("add"):
            host["CapAdd"] = list(caps["add"])
        if ctx.get("allowPrivilegeEscalation") is False:
            host["SecurityOpt"] = ["no-new-privileges"]
        if ctx.get("readOnlyRootFilesystem"):
            host["ReadonlyRootfs"] = True
        limits = (spec.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            memory = int(_quantity(str(limits["memory"])))
            host["Memory"] = memory
            host["MemorySwap"] = memory
        if "cpu" in limits:
            host["NanoCpus"] = int(_quantity(str(limits["cpu"])) * 1e9)
        return config

    async def _started_at(self, container_id: str) -> str:
        state = await self._engine.state(container_id)
        return _docker_time(state.get("StartedAt")) or _now()

    async def _probe(self, pod: _Pod, container: _Container, probe: dict[str, Any]) -> None:
        """A readiness probe against the published port, flipping the container's Ready."""
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        success_threshold = int(probe.get("successThreshold", 1))
        successes = failures = 0
        while True:
            ok = await self._probe_once(pod, probe, timeout)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            status = _container_status(pod.obj, container.index)
            if ok and successes >= success_threshold and not status["ready"]:
                with self._changing("pods", pod.obj):
                    status["ready"] = True
            elif not ok and failures >= failure_threshold and status["ready"]:
                with self._changing("pods", pod.obj):
                    status["ready"] = False
            if not ok and failures == 1:
                self._event(
                    pod.obj, "Warning", "Unhealthy", "Readiness probe failed: connection refused",
                    field=f"spec.containers{{{container.name}}}",
                )  # fmt: skip
            await asyncio.sleep(period)

    async def _probe_once(self, pod: _Pod, probe: dict[str, Any], timeout: float) -> bool:
        action = probe.get("tcpSocket") or probe.get("httpGet")
        if action is None:
            return True  # exec and grpc probes are not run: taken as passing
        port = self._port_number(pod, action.get("port"))
        published = pod.ports.get(port) if port is not None else None
        if published is None:
            return False
        if "tcpSocket" in probe:
            return await _listening(published, timeout)
        assert self._client is not None
        scheme = str(action.get("scheme", "HTTP")).lower()
        headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
        url = f"{scheme}://127.0.0.1:{published}{action.get('path', '/')}"
        try:
            async with self._client.get(
                url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return False

    @staticmethod
    def _port_number(pod: _Pod, port: Any) -> int | None:
        """A container port given by number or by name."""
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for spec in pod.obj["spec"]["containers"]:
            for entry in spec.get("ports") or []:
                if entry.get("name") == port:
                    return int(entry["containerPort"])
        return None

    async def _deadline(self, pod: _Pod, seconds: float) -> None:
        """activeDeadlineSeconds: kill the pod's containers and fail it."""
        await asyncio.sleep(seconds)
        if pod.terminating or pod.gone:
            return
        if pod.task is not None:
            pod.task.cancel()
            await asyncio.wait([pod.task])
        if pod.starting:
            await asyncio.wait(list(pod.starting))
        for container in pod.containers:
            if container.id is not None:
                await self._engine.kill(container.id)
        with self._changing("pods", pod.obj):
            status = pod.obj["status"]
            for index, container in enumerate(pod.containers):
                entry = _container_status(pod.obj, index)
                if "terminated" in entry.get("state", {}):
                    continue
                engine = await self._engine.state(container.id) if container.id else {}
                entry["state"] = _terminated(137, entry, engine)
                entry["ready"] = False
                entry["started"] = False
                container.id = None
            status["phase"] = "Failed"
            status["reason"] = "DeadlineExceeded"
            status["message"] = DEADLINE_MESSAGE
        self._event(pod.obj, "Warning", "DeadlineExceeded", DEADLINE_MESSAGE)

    def _next_pod_ip(self) -> str:
        taken = {p.ip for p in self._pods.values()}
        while True:
            turn, self._ip_turn = self._ip_turn, self._ip_turn + 1
            ip = f"10.244.{turn // 250 % 256}.{turn % 250 + 2}"
            if ip not in taken:
                return ip

    # ---------------------------------------------------------------------------------- events

    def _event(
        self,
        obj: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str = "kubelet",
        *,
        field: str | None = None,
        kind: str = "Pod",
        api_version: str = "v1",
    ) -> None:
        meta = obj["metadata"]
        ns = meta["namespace"]
        if self._closing:
            return
        for known in self._objects["events"].values():
            if (
                known["involvedObject"].get("uid") == meta["uid"]
                and known["reason"] == reason
                and known["message"] == message
            ):
                with self._changing("events", known):
                    known["count"] += 1
                    known["lastTimestamp"] = _now()
                return
        involved = {
            "kind": kind,
            "namespace": ns,
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": api_version,
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field is not None:
            involved["fieldPath"] = field
        now = _now()
        event: dict[str, Any] = {
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {
                "component": component,
                **({"host": NODE} if component == "kubelet" else {}),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE if component == "kubelet" else "",
        }
        self._create("events", event)

    # ---------------------------------------------------------------------------------- logs

    async def _log(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        pod = self._pods.get((ns, name))
        if pod is None:
            raise _not_found(KINDS["pods"], name)
        names = [c.name for c in pod.containers]
        wanted = request.query.get("container")
        if wanted is None:
            if len(names) > 1:
                raise _bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(names)}]"
                )
            wanted = names[0]
        if wanted not in names:
            raise _bad_request(f"container {wanted} is not valid for pod {name}")
        container = pod.containers[names.index(wanted)]
        previous = request.query.get("previous", "").lower() in ("true", "1")
        ids = container.ids
        if previous:
            target = ids[-2] if len(ids) >= 2 else None
            if target is None:
                raise _bad_request(
                    f'previous terminated container "{wanted}" in pod "{name}" not found'
                )
        else:
            target = ids[-1] if ids else None
        if target is None:
            state = _container_status(pod.obj, container.index).get("state", {})
            reason = state.get("waiting", {}).get("reason", "ContainerCreating")
            raise _bad_request(
                f'container "{wanted}" in pod "{name}" is waiting to start: {reason}'
            )
        params: dict[str, Any] = {}
        if request.query.get("tailLines"):
            params["tail"] = request.query["tailLines"]
        if request.query.get("timestamps", "").lower() in ("true", "1"):
            params["timestamps"] = True
        if request.query.get("follow", "").lower() in ("true", "1"):
            # Streamed as it comes, until the container stops or the client goes.
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
            await response.prepare(request)
            async for line in self._engine.follow_logs(target, **params):
                await response.write(line.encode())
            await response.write_eof()
            return response
        text = await self._engine.logs(target, **params)
        if request.query.get("limitBytes"):
            text = text.encode()[: int(request.query["limitBytes"])].decode(errors="replace")
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # ------------------------------------------------------------------------------- proxy

    async def _proxy(
        self, request: web.Request, match: re.Match[str], record: Recorded
    ) -> web.StreamResponse:
        ns, plural = match["ns"], match["plural"]
        target = urllib.parse.unquote(match["name"])
        parts = target.split(":")
        if len(parts) == 3:
            _, name, port_text = parts  # scheme:name:port
        elif len(parts) == 2:
            name, port_text = parts
        else:
            name, port_text = parts[0], ""
        if plural == "pods":
            pod = self._pods.get((ns, name))
            if pod is None:
                raise _not_found(KINDS["pods"], name)
            if pod.ip is None:
                raise _bad_request("address not allowed")  # no IP yet, as the real check says
            port = self._port_number(pod, port_text) if port_text else self._first_port(pod)
            shown_ip = pod.ip
        else:
            service = self._objects["services"].get((ns, name))
            if service is None:
                raise _not_found(KINDS["services"], name)
            pod, port = self._endpoint(service, port_text or None)
            if pod is None:
                raise KubeError(503, f'no endpoints available for service "{name}"')
            shown_ip = pod.ip or ""
        if port is None:
            raise KubeError(
                503, f"error trying to reach service: dial tcp {shown_ip}: missing port"
            )
        published = pod.ports.get(port) if not pod.gone else None
        refused = KubeError(
            503, f"error trying to reach service: dial tcp {shown_ip}:{port}: connect: "
            "connection refused",
        )  # fmt: skip
        if published is None or not any(c.id for c in pod.containers):
            raise refused
        tail = match["tail"] or "/"
        url = f"http://127.0.0.1:{published}{tail}"
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP_HEADERS and k.lower() != "authorization"
        }
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        data = _stream(request.content) if request.body_exists else None
        assert self._client is not None
        try:
            upstream = await self._client.request(
                request.method, url, headers=headers, data=data, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )  # fmt: skip
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            raise refused from None
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:
                    response.headers.add(key, value)
            if upstream.content_length is not None and "chunked" not in upstream.headers.get(
                "Transfer-Encoding", ""
            ):
                response.content_length = upstream.content_length
            await response.prepare(request)
            record.status = upstream.status
            try:
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionError):
                upstream.close()
                assert request.transport is not None
                request.transport.abort()  # the pod went away mid-answer: so does the answer
                raise asyncio.CancelledError from None
            await response.write_eof()
            return response
        finally:
            upstream.release()

    @staticmethod
    def _first_port(pod: _Pod) -> int:
        for spec in pod.obj["spec"]["containers"]:
            for entry in spec.get("ports") or []:
                return int(entry["containerPort"])
        return 80

    # ---------------------------------------------------------------------------- services

    def _validate_service(self, obj: dict[str, Any]) -> list[_FieldError]:
        errors = _validate_meta(obj, dns1035=True)
        spec = obj.setdefault("spec", {})
        kind = spec.setdefault("type", "ClusterIP")
        if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            errors.append(
                _FieldError("spec.type", "NotSupported", kind,
                            '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"')
            )  # fmt: skip
        ports = spec.get("ports") or []
        if not ports and kind != "ExternalName" and spec.get("clusterIP") != "None":
            errors.append(_FieldError("spec.ports", "Required"))
        taken = {
            p.get("nodePort")
            for s in self._objects["services"].values()
            for p in s["spec"].get("ports") or []
        }
        names: set[str] = set()
        for i, port in enumerate(ports):
            where = f"spec.ports[{i}]"
            port.setdefault("protocol", "TCP")
            if len(ports) > 1 and not port.get("name"):
                errors.append(_FieldError(f"{where}.name", "Required"))
            elif port.get("name") in names:
                errors.append(_FieldError(f"{where}.name", "Duplicate", port["name"]))
            names.add(port.get("name", ""))
            number = port.get("port")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                errors.append(
                    _FieldError(f"{where}.port", "Invalid", number,
                                "must be between 1 and 65535, inclusive")
                )  # fmt: skip
            port.setdefault("targetPort", number)
            node_port = port.get("nodePort")
            if node_port is not None:
                if kind not in ("NodePort", "LoadBalancer"):
                    errors.append(
                        _FieldError(f"{where}.nodePort", "Forbidden", node_port,
                                    "may not be used when `type` is 'ClusterIP'")
                    )  # fmt: skip
                elif node_port not in NODE_PORTS:
                    errors.append(
                        _FieldError(
                            f"{where}.nodePort", "Invalid", node_port,
                            "provided port is not in the valid range. The range of valid ports "
                            "is 30000-32767",
                        )
                    )  # fmt: skip
                elif node_port in taken:
                    errors.append(
                        _FieldError(f"{where}.nodePort", "Invalid", node_port,
                                    "provided port is already allocated")
                    )  # fmt: skip
        selector = spec.get("selector") or {}
        errors += _validate_labels(selector, "spec.selector")
        return errors

    def _create_service(self, obj: dict[str, Any]) -> None:
        spec = obj["spec"]
        kind = spec["type"]
        spec.setdefault("sessionAffinity", "None")
        if kind != "ExternalName":
            if not spec.get("clusterIP"):
                spec["clusterIP"] = self._next_cluster_ip()
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if kind in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
            taken = {
                p.get("nodePort")
                for s in self._objects["services"].values()
                for p in s["spec"].get("ports") or []
            }
            for port in spec["ports"]:
                if port.get("nodePort") is None:
                    port["nodePort"] = next(p for p in NODE_PORTS if p not in taken)
                taken.add(port["nodePort"])
        if kind == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        obj["status"] = {"loadBalancer": {}}
        self._create("services", obj)
        if kind == "LoadBalancer":
            self._engine.spawn(self._provision_lb(obj))

    async def _provision_lb(self, obj: dict[str, Any]) -> None:
        await asyncio.sleep(self.schedule_latency)
        if not self.load_balancers or not self._stored("services", obj):
            return
        self._lb_turn += 1
        with self._changing("services", obj):
            ip = f"203.0.113.{(self._lb_turn - 1) % 254 + 1}"
            obj["status"]["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "VIP"}]}

    def _next_cluster_ip(self) -> str:
        taken = {s["spec"].get("clusterIP") for s in self._objects["services"].values()}
        while True:
            self._cluster_ip_turn += 1
            turn = self._cluster_ip_turn
            ip = f"10.96.{turn // 254 % 256}.{turn % 254 + 1}"
            if ip not in taken and ip != "10.96.0.1":
                return ip

    def _endpoint(
        self, service: dict[str, Any], port_text: str | None
    ) -> tuple[_Pod | None, int | None]:
        """The service's first ready pod and the container port ``port_text`` leads to."""
        spec = service["spec"]
        ports = spec.get("ports") or []
        entry = None
        for candidate in ports:
            if port_text is None or port_text in (
                str(candidate.get("port")),
                candidate.get("name"),
            ):
                entry = candidate
                break
        selector = spec.get("selector") or {}
        if not selector or entry is None:
            return None, None
        for (ns, _), pod in sorted(self._pods.items()):
            if ns != service["metadata"]["namespace"] or pod.terminating or pod.gone:
                continue
            labels = pod.obj["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if _condition(pod.obj, "Ready") != "True":
                continue
            return pod, self._port_number(pod, entry.get("targetPort", entry.get("port")))
        return None, None

    def _resolve(self, host: str, port: int) -> int | None:
        """The published 127.0.0.1 port behind a reported address."""
        for pod in self._pods.values():
            if pod.ip == host and not pod.gone:
                return pod.ports.get(port)
        for service in self._objects["services"].values():
            spec = service["spec"]
            ingress = [i.get("ip") for i in service["status"].get("loadBalancer", {}).get(
                "ingress", []
            )]  # fmt: skip
            for entry in spec.get("ports") or []:
                if (
                    (host == NODE_IP and entry.get("nodePort") == port)
                    or (host in ingress and entry.get("port") == port)
                    or (host == spec.get("clusterIP") and entry.get("port") == port)
                ):
                    found, target = self._endpoint(service, str(entry["port"]))
                    if found is not None and target is not None:
                        return found.ports.get(target)
        return None

    # ------------------------------------------------------------------------- deployments

    def _create_deployment(self, obj: dict[str, Any]) -> None:
        obj["status"] = {}
        self._create("deployments", obj)
        self._poke_deployment(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def _poke_deployment(self, ns: str, name: str) -> None:
        """Reconcile the deployment soon (once however many changes poke it meanwhile)."""
        if (ns, name) in self._reconciling or self._closing:
            return
        self._reconciling.add((ns, name))
        asyncio.get_running_loop().call_soon(self._reconcile, ns, name)

    def _reconcile(self, ns: str, name: str) -> None:
        self._reconciling.discard((ns, name))
        deployment = self._objects["deployments"].get((ns, name))
        if deployment is None or self._closing:
            return
        uid = deployment["metadata"]["uid"]
        spec = deployment["spec"]
        owned = [
            pod
            for pod in self._pods.values()
            if not pod.terminating
            and not pod.gone
            and any(o.get("uid") == uid for o in pod.obj["metadata"].get("ownerReferences") or [])
        ]
        wanted = int(spec.get("replicas", 1))
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        for pod in owned[wanted:]:
            self._delete_pod(pod, None)
        owned = owned[:wanted]
        while len(owned) < wanted:
            pod_obj = copy.deepcopy(template)
            meta = pod_obj.setdefault("metadata", {})
            meta["name"] = f"{name}-{digest}-" + "".join(secrets.choice(_SAFE) for _ in range(5))
            meta["namespace"] = ns
            meta["labels"] = {**(meta.get("labels") or {}), "pod-template-hash": digest}
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            _default_pod_spec(pod_obj.setdefault("spec", {}))
            owned.append(self._create_pod(pod_obj))
        ready = sum(_condition(p.obj, "Ready") == "True" for p in owned)
        with self._changing("deployments", deployment):
            status = deployment["status"]
            status["observedGeneration"] = deployment["metadata"]["generation"]
            for key, value in (
                ("replicas", len(owned)),
                ("updatedReplicas", len(owned)),
                ("readyReplicas", ready),
                ("availableReplicas", ready),
                ("unavailableReplicas", len(owned) - ready),
            ):
                if value:
                    status[key] = value
                else:
                    status.pop(key, None)
            available = ready >= wanted
            _set_condition(
                deployment, "Available", "True" if available else "False",
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability." if available
                else "Deployment does not have minimum availability.",
            )  # fmt: skip
            _set_condition(
                deployment, "Progressing", "True",
                "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                f'ReplicaSet "{name}-{digest}" has successfully progressed.' if available
                else f'ReplicaSet "{name}-{digest}" is progressing.',
            )  # fmt: skip


# ------------------------------------------------------------------------------------ helpers


def _route(request: web.Request) -> tuple[str, re.Match[str] | None, str]:
    """(route, match, what) of a request."""
    method = request.method
    proxy = PROXY.fullmatch(request.rel_url.raw_path)
    if proxy is not None:
        return "proxy", proxy, f"PROXY {KINDS[proxy['plural']].singular}"
    path = request.path
    for name, pattern in ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if name == "version":
            return name, match, "GET version" if method == "GET" else f"{method} {path}"
        if name == "namespace":
            return name, match, "GET namespace" if method == "GET" else f"{method} {path}"
        plural = match["plural"]
        if name == "log":
            return name, match, "GET log" if method == "GET" else f"{method} {path}"
        verb = VERBS.get((name, method))
        if verb is None:
            return name, match, f"{method} {path}"
        word = verb[0]
        if word == "LIST" and request.query.get("watch", "").lower() in ("true", "1"):
            word = "WATCH"
        noun = KINDS[plural].singular if name == "item" else plural
        return name, match, f"{word} {noun}"
    return "", None, f"{method} {path}"


def _method_not_allowed() -> KubeError:
    return KubeError(
        405, "the server does not allow this method on the requested resource",
        "MethodNotAllowed", {},
    )  # fmt: skip


def _injected(
    code: int, record: Recorded, match: re.Match[str] | None, user: str, method: str
) -> KubeError:
    """The Status the real server would send with ``code`` for this request."""
    groups = match.groupdict() if match is not None else {}
    plural = groups.get("plural") or ""
    kind = KINDS.get(plural)
    name = groups.get("name") or ""
    if not name and record.what.startswith("POST") and record.body:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            name = str(json.loads(record.body)["metadata"]["name"])
    ns = groups.get("ns")
    if code == 401:
        return KubeError(401, "Unauthorized")
    if code == 403:
        verb = {"POST": "create", "LIST": "list", "WATCH": "watch", "GET": "get"}.get(
            record.what.split(" ")[0], "delete"
        )
        resource = plural
        if record.what.startswith("PROXY"):
            verb = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(
                method, "get"
            )
            resource = f"{plural}/proxy"
        elif record.what == "DELETE pods":
            verb = "deletecollection"
        elif record.what == "GET log":
            verb, resource = "get", "pods/log"
        group = kind.group if kind is not None else ""
        subject = f'{plural} "{name}"' if name and verb != "create" else plural
        where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
        details: dict[str, Any] = {"kind": plural}
        if name and verb != "create":
            details = {"name": name, "kind": plural}
        return KubeError(
            403,
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API '
            f'group "{group}"{where}',
            "Forbidden",
            details,
        )
    if code == 404:
        if kind is not None and name:
            return _not_found(kind, name)
        return KubeError(404, "the server could not find the requested resource", "NotFound", {})
    if code == 409:
        if kind is not None and record.what.startswith("POST"):
            return KubeError(
                409, f'{plural} "{name}" already exists', "AlreadyExists",
                {"name": name, "kind": plural},
            )  # fmt: skip
        return KubeError(
            409,
            f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            "Conflict",
            {"name": name, "kind": plural},
        )
    if code == 410:
        return KubeError(410, "too old resource version: 1 (2)", "Expired")
    if code == 422 and kind is not None:
        return _invalid(kind, name, [_FieldError("metadata.name", "Invalid", name, "injected")])
    if code == 429:
        return KubeError(429, "Too many requests, please try again later.", "TooManyRequests", {})
    if code == 500:
        return KubeError(
            500, "Internal error occurred: injected fault", "InternalError",
            {"causes": [{"message": "injected fault"}]},
        )  # fmt: skip
    if code == 503:
        return KubeError(503, "the server is currently unable to handle the request")
    if code == 504:
        return KubeError(
            504,
            "the server was unable to return a response in the time allotted, but may still be "
            "processing the request",
            "Timeout",
            {},
        )
    return KubeError(
        code, f"the server responded with the status code {code}", REASONS.get(code, "")
    )


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(target: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 add/replace/remove/test on object members and list indices."""
    doc = copy.deepcopy(target)
    for op in operations:
        path = [
            p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]
        ]
        if not path:
            raise _bad_request("the server rejected our request due to an error in our request")
        parent: Any = doc
        for part in path[:-1]:
            try:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            except (KeyError, IndexError, ValueError):
                raise KubeError(
                    422, f"the server rejected our request due to an error in our request: "
                    f"missing path: {op.get('path')}", "Invalid",
                ) from None  # fmt: skip
        last, kind = path[-1], op.get("op")
        if kind in ("add", "replace") and isinstance(parent, dict):
            parent[last] = op.get("value")
        elif kind in ("add", "replace") and isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op.get("value"))
            else:
                parent[index] = op.get("value")
        elif kind == "remove":
            with contextlib.suppress(KeyError, IndexError, ValueError):
                del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            value = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if value != op.get("value"):
                raise KubeError(422, f"testing value {op.get('path')} failed", "Invalid")
        else:
            raise _bad_request(f"Unexpected kind: {kind}")
    return doc


def _expired(start: int, oldest: int) -> dict[str, Any]:
    return KubeError(410, f"too old resource version: {start} ({oldest})", "Expired").status()


def _bookmark(plural: str, rv: int) -> dict[str, Any]:
    kind = KINDS[plural]
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": kind.kind,
            "apiVersion": kind.api_version,
            "metadata": {
                "resourceVersion": str(rv),
                "creationTimestamp": None,
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        },
    }


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


async def _stream(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(1 << 16):
        yield chunk


async def _listening(port: int, timeout: float) -> bool:
    """A tcpSocket probe through Docker's userland proxy, which accepts every connection and
    closes it at once when nothing listens inside: an accepted connection must also stay open
    (or answer) for a moment."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        return bool(await asyncio.wait_for(reader.read(1), min(timeout, 0.2)))
    except TimeoutError:
        return True  # held open: something listens
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        headers={"Audit-Id": str(uuid.uuid4()), **(headers or {})},
        content_type="application/json",
    )


def _status_response(error: KubeError) -> web.Response:
    return _json(error.status(), error.code, error.headers)


def _typed(plural: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored object with its kind and apiVersion, as single answers carry them."""
    kind = KINDS[plural]
    return {"kind": kind.kind, "apiVersion": kind.api_version, **copy.deepcopy(obj)}


def _namespace(name: str) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _now() -> str:
    return _iso(datetime.datetime.now(datetime.UTC))


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _docker_time(text: str | None) -> str | None:
    if not text or text.startswith("0001-"):
        return None
    return text[:19] + "Z"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _full_ref(image: str) -> str:
    """containerd's fully qualified reference of an image name."""
    name, tag = image, ""
    if "@" not in image and ":" in image.rsplit("/", 1)[-1]:
        name, _, tag = image.rpartition(":")
    first = name.split("/")[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if "@" in image:
        return name
    return f"{name}:{tag or 'latest'}"


def _delete_options(body: bytes, query: Any) -> tuple[int | None, str]:
    options: dict[str, Any] = {}
    if body:
        try:
            options = json.loads(body) or {}
        except ValueError:
            raise _bad_request("the body of the request was in an unknown format") from None
    grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
    propagation = options.get("propagationPolicy", query.get("propagationPolicy"))
    if propagation not in (None, "Orphan", "Background", "Foreground"):
        raise _bad_request(f"propagationPolicy {propagation} is not supported")
    return (int(grace) if grace is not None else None), str(propagation or "Background")


def _container_status(obj: dict[str, Any], index: int) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = obj["status"]["containerStatuses"]
    return statuses[index]


def _terminated(code: int, status: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    running = status.get("state", {}).get("running") or {}
    started = running.get("startedAt") or _docker_time(engine.get("StartedAt")) or _now()
    terminated: dict[str, Any] = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": _docker_time(engine.get("FinishedAt")) or _now(),
    }
    if status.get("containerID"):
        terminated["containerID"] = status["containerID"]
    return {"terminated": terminated}


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition["type"] == kind:
            return str(condition["status"])
    return None


def _set_condition(
    obj: dict[str, Any],
    kind: str,
    status: str,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    conditions = obj["status"].setdefault("conditions", [])
    now = _now()
    for condition in conditions:
        if condition["type"] == kind:
            if condition["status"] != status:
                condition["lastTransitionTime"] = now
            condition["status"] = status
            break
    else:
        condition = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        if "template" in obj.get("spec", {}):
            condition.pop("lastProbeTime")
            condition["lastUpdateTime"] = now
        conditions.append(condition)
    for key, value in (("reason", reason), ("message", message)):
        if value is None:
            condition.pop(key, None)
        else:
            condition[key] = value


def _derive_pod_status(obj: dict[str, Any]) -> None:
    """Phase and Ready conditions from the container statuses, as the kubelet computes them."""
    status = obj["status"]
    statuses = status.get("containerStatuses")
    if not statuses or status.get("reason") == "DeadlineExceeded":
        if status.get("reason") == "DeadlineExceeded":
            _set_condition(obj, "ContainersReady", "False", "PodFailed")
            _set_condition(obj, "Ready", "False", "PodFailed")
        return
    policy = obj["spec"].get("restartPolicy", "Always")
    states = [s["state"] for s in statuses]
    codes = [s["terminated"]["exitCode"] for s in states if "terminated" in s]
    ever_ran = any("running" in s or "terminated" in s or c.get("restartCount") for s, c in
                   zip(states, statuses, strict=True))  # fmt: skip
    all_done = len(codes) == len(states)
    if all_done and policy == "Never":
        status["phase"] = "Failed" if any(codes) else "Succeeded"
    elif all_done and policy == "OnFailure" and not any(codes):
        status["phase"] = "Succeeded"
    elif ever_ran:
        status["phase"] = "Running"
    else:
        status["phase"] = "Pending"
    if status["phase"] in ("Succeeded", "Failed"):
        _set_condition(obj, "ContainersReady", "False", "PodCompleted")
        _set_condition(obj, "Ready", "False", "PodCompleted")
        _set_condition(obj, "PodReadyToStartContainers", "False")
        return
    unready = [s["name"] for s in statuses if not s["ready"]]
    if unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        _set_condition(obj, "ContainersReady", "False", "ContainersNotReady", message)
        _set_condition(obj, "Ready", "False", "ContainersNotReady", message)
    else:
        _set_condition(obj, "ContainersReady", "True")
        _set_condition(obj, "Ready", "True")


def _qos(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        {"cpu", "memory"} <= set(r.get("limits") or {})
        and all(
            (r.get("requests") or {}).get(k, (r.get("limits") or {})[k])
            == (r.get("limits") or {})[k]
            for k in ("cpu", "memory")
        )
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _default_pod_spec(spec: dict[str, Any]) -> None:
    """What the API server's defaulting adds to a pod spec."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault(
        "tolerations",
        [
            {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300}
            for taint in ("not-ready", "unreachable")
        ],
    )  # fmt: skip
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image") or "")
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = not tagged or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
        resources = container["resources"]
        if (
            isinstance(resources, dict)
            and resources.get("limits")
            and not resources.get("requests")
        ):
            resources["requests"] = dict(resources["limits"])


def _validate_meta(obj: dict[str, Any], *, dns1035: bool = False) -> list[_FieldError]:
    meta = obj["metadata"]
    errors: list[_FieldError] = []
    name = meta.get("name")
    if not name:
        errors.append(
            _FieldError("metadata.name", "Required", detail="name or generateName is required")
        )
    elif dns1035:
        if len(name) > 63:
            errors.append(_FieldError("metadata.name", "Invalid", name,
                                      "must be no more than 63 characters"))  # fmt: skip
        elif not re.fullmatch(_DNS1035_LABEL, name):
            errors.append(_FieldError("metadata.name", "Invalid", name, DNS1035_LABEL_MSG))
    elif len(name) > 253:
        errors.append(_FieldError("metadata.name", "Invalid", name,
                                  "must be no more than 253 characters"))  # fmt: skip
    elif not re.fullmatch(_DNS1123_SUBDOMAIN, name):
        errors.append(_FieldError("metadata.name", "Invalid", name, DNS1123_SUBDOMAIN_MSG))
    errors += _validate_labels(meta.get("labels") or {}, "metadata.labels")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errors += _validate_key(key, "metadata.annotations")
    size = sum(len(k) + len(str(v)) for k, v in annotations.items())
    if size > 256 * 1024:
        errors.append(_FieldError("metadata.annotations", "TooLong",
                                  detail="must have at most 262144 bytes"))  # fmt: skip
    return errors


def _validate_key(key: str, where: str) -> list[_FieldError]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not re.fullmatch(_DNS1123_SUBDOMAIN, prefix)):
        errors.append(_FieldError(where, "Invalid", key, "prefix part " + DNS1123_SUBDOMAIN_MSG))
    if not name:
        errors.append(_FieldError(where, "Invalid", key, "name part must be non-empty"))
    elif len(name) > 63:
        errors.append(_FieldError(where, "Invalid", key,
                                  "name part must be no more than 63 characters"))  # fmt: skip
    elif not re.fullmatch(_QUALIFIED_NAME, name):
        errors.append(_FieldError(where, "Invalid", key, QUALIFIED_NAME_MSG))
    return errors


def _validate_labels(labels: Any, where: str) -> list[_FieldError]:
    errors: list[_FieldError] = []
    if not isinstance(labels, dict):
        return [_FieldError(where, "Invalid", str(labels), "must be a map of strings")]
    for key, value in labels.items():
        errors += _validate_key(key, where)
        if not isinstance(value, str):
            errors.append(_FieldError(where, "Invalid", str(value), "must be a string"))
        elif len(value) > 63:
            errors.append(_FieldError(where, "Invalid", value,
                                      "must be no more than 63 characters"))  # fmt: skip
        elif not re.fullmatch(_LABEL_VALUE, value):
            errors.append(_FieldError(where, "Invalid", value, LABEL_VALUE_MSG))
    return errors


def _validate_pod(obj: dict[str, Any]) -> list[_FieldError]:
    errors = _validate_meta(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*errors, _FieldError("spec", "Required")]
    return errors + _validate_pod_spec(spec, "spec")


def _validate_pod_spec(spec: dict[str, Any], where: str) -> list[_FieldError]:
    errors: list[_FieldError] = []
    containers = spec.get("containers") or []
    if not containers:
        errors.append(_FieldError(f"{where}.containers", "Required"))
    names: set[str] = set()
    for i, container in enumerate(containers):
        at = f"{where}.containers[{i}]"
        name = container.get("name")
        if not name:
            errors.append(_FieldError(f"{at}.name", "Required"))
        elif name in names:
            errors.append(_FieldError(f"{at}.name", "Duplicate", name))
        elif len(name) > 63 or not re.fullmatch(_DNS1123_LABEL, name):
            errors.append(_FieldError(f"{at}.name", "Invalid", name, DNS1123_LABEL_MSG))
        names.add(str(name))
        if not container.get("image"):
            errors.append(_FieldError(f"{at}.image", "Required"))
        policy = container.get("imagePullPolicy")
        if policy not in (None, "Always", "IfNotPresent", "Never"):
            errors.append(_FieldError(f"{at}.imagePullPolicy", "NotSupported", policy,
                                      '"Always", "IfNotPresent", "Never"'))  # fmt: skip
        for j, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                errors.append(
                    _FieldError(f"{at}.ports[{j}].containerPort", "Invalid", number,
                                "must be between 1 and 65535, inclusive")
                )  # fmt: skip
        for j, variable in enumerate(container.get("env") or []):
            env_name = variable.get("name")
            if not env_name:
                errors.append(_FieldError(f"{at}.env[{j}].name", "Required"))
            elif not re.fullmatch(_ENV_NAME, env_name):
                errors.append(_FieldError(f"{at}.env[{j}].name", "Invalid", env_name, ENV_NAME_MSG))
            if "value" in variable and not isinstance(variable["value"], str):
                errors.append(_FieldError(f"{at}.env[{j}].value", "Invalid", variable["value"],
                                          "must be a string"))  # fmt: skip
        errors += _validate_resources(container.get("resources") or {}, f"{at}.resources")
    restart = spec.get("restartPolicy", "Always")
    if restart not in ("Always", "OnFailure", "Never"):
        errors.append(_FieldError(f"{where}.restartPolicy", "NotSupported", restart,
                                  '"Always", "OnFailure", "Never"'))  # fmt: skip
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and not (isinstance(deadline, int) and 1 <= deadline <= 2**31 - 1):
        errors.append(
            _FieldError(f"{where}.activeDeadlineSeconds", "Invalid", deadline,
                        "must be between 1 and 2147483647, inclusive")
        )  # fmt: skip
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        errors.append(
            _FieldError(f"{where}.terminationGracePeriodSeconds", "Invalid", grace,
                        "must be greater than or equal to 0")
        )  # fmt: skip
    return errors


def _validate_resources(resources: dict[str, Any], where: str) -> list[_FieldError]:
    errors: list[_FieldError] = []
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    for name, value in requests.items():
        if (
            name in limits
            and _QUANTITY.fullmatch(str(value))
            and _QUANTITY.fullmatch(str(limits[name]))
        ):
            with contextlib.suppress(ValueError):
                if _quantity(str(value)) > _quantity(str(limits[name])):
                    errors.append(
                        _FieldError(f"{where}.requests[{name}]", "Invalid", str(value),
                                    f"must be less than or equal to {name} limit of "
                                    f"{limits[name]}")
                    )  # fmt: skip
    return errors


def _check_quantities(kind: _Kind, obj: dict[str, Any]) -> None:
    """Quantities are parsed when the body is decoded: a bad one is a 400, not a 422."""
    spec = obj.get("spec") or {}
    specs = [spec, (spec.get("template") or {}).get("spec") or {}]
    for pod_spec in specs:
        for container in pod_spec.get("containers") or []:
            resources = container.get("resources") or {}
            for section in ("limits", "requests"):
                for value in (resources.get(section) or {}).values():
                    try:
                        _quantity(str(value))
                    except ValueError:
                        raise _bad_request(
                            f'{kind.kind} in version "{kind.api_version.rpartition("/")[2]}" '
                            f"cannot be handled as a {kind.kind}: quantities must match the "
                            f"regular expression '{_QUANTITY_RE}'"
                        ) from None


def _quantity(text: str) -> float:
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    number, suffix = match.groups()
    value = float(number)
    if suffix in _SUFFIXES:
        return value * _SUFFIXES[suffix]
    exponent = re.fullmatch(r"[eE]([-+]?[0-9]+)", suffix)
    if exponent is None:
        raise ValueError(text)
    return value * 10.0 ** int(exponent[1])


def _validate_deployment(obj: dict[str, Any]) -> list[_FieldError]:
    errors = _validate_meta(obj)
    spec = obj.setdefault("spec", {})
    replicas = spec.setdefault("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        errors.append(_FieldError("spec.replicas", "Invalid", replicas,
                                  "must be greater than or equal to 0"))  # fmt: skip
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy",
        {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
    )
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector:
        errors.append(_FieldError("spec.selector", "Required"))
    else:
        wanted = selector.get("matchLabels") or {}
        if not wanted and not selector.get("matchExpressions"):
            errors.append(_FieldError("spec.selector", "Invalid", selector,
                                      "empty selector is invalid for deployment"))  # fmt: skip
        elif any(labels.get(k) != v for k, v in wanted.items()):
            errors.append(_FieldError("spec.template.metadata.labels", "Invalid", labels,
                                      "`selector` does not match template `labels`"))  # fmt: skip
    template_spec = template.get("spec")
    if not isinstance(template_spec, dict):
        errors.append(_FieldError("spec.template.spec", "Required"))
    else:
        _default_pod_spec(template_spec)
        errors += _validate_labels(labels, "spec.template.metadata.labels")
        errors += _validate_pod_spec(template_spec, "spec.template.spec")
        if template_spec.get("restartPolicy") != "Always":
            errors.append(
                _FieldError("spec.template.spec.restartPolicy", "NotSupported",
                            template_spec.get("restartPolicy"), '"Always"')
            )  # fmt: skip
    return errors


def _parse_labels(text: str) -> list[tuple[str, str, list[str]]]:
    """A label selector: [(key, operator, values)], operators = == != in notin exists !."""
    requirements: list[tuple[str, str, list[str]]] = []
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    key = r"([A-Za-z0-9][-A-Za-z0-9_./]*)"
    for raw in parts:
        part = raw.strip()
        if not part:
            if text.strip():
                raise ValueError(f"found '', expected: identifier (selector {text!r})")
            continue
        if m := re.fullmatch(rf"!\s*{key}", part):
            requirements.append((m[1], "!", []))
        elif m := re.fullmatch(rf"{key}\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", part):
            requirements.append((m[1], "!=" if m[2] == "!=" else "=", [m[3]]))
        elif m := re.fullmatch(rf"{key}\s+(in|notin)\s*\(([^()]*)\)", part):
            values = [v.strip() for v in m[3].split(",")]
            requirements.append((m[1], m[2], values))
        elif m := re.fullmatch(rf"{key}\s*(<|>)\s*([0-9]+)", part):
            requirements.append((m[1], m[2], [m[3]]))
        elif m := re.fullmatch(key, part):
            requirements.append((m[1], "exists", []))
        else:
            raise ValueError(f"unable to parse requirement: found '{part}', expected: in, notin, "
                             "=, ==, !=, gt, lt")  # fmt: skip
    return requirements


def _labels_match(requirements: list[tuple[str, str, list[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        value = labels.get(key)
        ok = {
            "=": present and value == values[0] if values else False,
            "!=": not present or value != values[0] if values else True,
            "in": present and value in values,
            "notin": not present or value not in values,
            "exists": present,
            "!": not present,
        }.get(op)
        if op in ("<", ">"):
            try:
                number = int(value or "")
            except ValueError:
                return False
            ok = number < int(values[0]) if op == "<" else number > int(values[0])
        if not ok:
            return False
    return True


def _parse_fields(plural: str, text: str) -> list[tuple[str, str, str]]:
    requirements = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        match = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", part)
        if match is None:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = match.groups()
        if key not in FIELDS[plural] | {"metadata.name", "metadata.namespace"}:
            raise _bad_request(f"field label not supported: {key}")
        requirements.append((key, "!=" if op == "!=" else "=", value))
    return requirements


def _fields_match(requirements: list[tuple[str, str, str]], obj: dict[str, Any]) -> bool:
    for key, op, value in requirements:
        found: Any = obj
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if isinstance(found, dict):  # ``source`` on events: its component
            found = found.get("component")
        text = (
            "" if found is None else (str(found).lower() if isinstance(found, bool) else str(found))
        )
        if (text == value) != (op == "="):
            return False
    return True
