"""What a sandbox looks like to Kubernetes, and what a pod's status says about it.

Manifests are plain JSON-ready dicts (the API server's own field names), so nothing is
lost in a model layer and tests can read them as the wire shows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..._client.tls import SandboxTls
from ...labels import LABEL_PREFIX
from ...specs import Spec
from ..driver import SandboxIdentity, daemon_env
from .options import _KubernetesOptions

__all__ = [
    "CONTAINER",
    "SANDBOX",
    "WORKLOAD",
    "deployment_manifest",
    "failure_of",
    "is_ready",
    "pending_reason",
    "pod_manifest",
    "service_manifest",
    "state_of",
]

CONTAINER = "computer"
SANDBOX = LABEL_PREFIX + "sandbox"
"""Label naming the sandbox a pod or Service belongs to (its selector)."""
WORKLOAD = LABEL_PREFIX + "workload"
"""Label on a Deployment that is a sandbox (a bare pod carries none)."""
_PORT_NAME = "daemon"
# A daemon that is PID 1 and busy finishing a request should not hold a delete for the
# default 30 s: its work is disposable.
_GRACE_SECONDS = 5
# Waiting reasons that will not fix themselves while we wait (the kubelet keeps retrying
# them, but a wrong image name or a crashing daemon needs a new spec, not patience).
_FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
}


def _options(spec: Spec) -> _KubernetesOptions:
    assert isinstance(spec.options, _KubernetesOptions)  # the registry guarantees it
    return spec.options


def _labels(identity: SandboxIdentity) -> dict[str, str]:
    return {**identity.labels, SANDBOX: identity.name}


def _quantities(spec: Spec) -> dict[str, str]:
    quantities = {"cpu": f"{max(1, round(spec.cpu * 1000))}m", "memory": f"{spec.memory}Mi"}
    if spec.disk is not None:  # the kubelet evicts a pod that writes past it
        quantities["ephemeral-storage"] = f"{spec.disk}Mi"
    return quantities


def _security(spec: Spec) -> dict[str, Any]:
    if spec.run_as_root:
        return {"runAsUser": 0, "runAsNonRoot": False}
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    spec: Spec, identity: SandboxIdentity, tls: SandboxTls | None, *, bare: bool
) -> dict[str, Any]:
    options = _options(spec)
    env = daemon_env(spec, identity)
    if tls is not None:
        env.update(tls.daemon_env())
    port = spec.daemon_port
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "ports": [{"name": _PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": _quantities(spec), "limits": _quantities(spec)},
        "securityContext": _security(spec),
        # The daemon needs a token to answer /health, the kubelet has none: a TCP probe
        # every second marks the pod Ready within a second of the daemon listening.
        "readinessProbe": {
            "tcpSocket": {"port": port},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    if options.image_pull_policy is not None:
        container["imagePullPolicy"] = options.image_pull_policy
    pod: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Never" if bare else "Always",
        "terminationGracePeriodSeconds": _GRACE_SECONDS,
        # Sandboxes run untrusted code: no cluster credentials and no other services'
        # addresses in their environment unless the user asks for a service account.
        "automountServiceAccountToken": options.service_account is not None,
        "enableServiceLinks": False,
    }
    if bare and identity.expires_at is not None and spec.ttl is not None:
        # The daemon exits at its TTL; the deadline is the kubelet's backstop for one
        # that hangs. (A Deployment's pod cannot have one: it would be replaced.)
        pod["activeDeadlineSeconds"] = math.ceil(spec.ttl) + 60
    if options.service_account is not None:
        pod["serviceAccountName"] = options.service_account
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod["tolerations"] = [dict(t) for t in options.tolerations]
    return pod


def _metadata(identity: SandboxIdentity, spec: Spec, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": identity.name, "labels": _labels(identity), **extra}
    annotations = dict(_options(spec).annotations)
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def pod_manifest(spec: Spec, identity: SandboxIdentity, tls: SandboxTls | None) -> dict[str, Any]:
    """The bare pod that is the sandbox (``restartPolicy: Never``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(identity, spec),
        "spec": _pod_spec(spec, identity, tls, bare=True),
    }


def deployment_manifest(
    spec: Spec, identity: SandboxIdentity, tls: SandboxTls | None
) -> dict[str, Any]:
    """A one-replica Deployment whose pod is the sandbox."""
    template = {
        "metadata": {k: v for k, v in _metadata(identity, spec).items() if k != "name"},
        "spec": _pod_spec(spec, identity, tls, bare=False),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": identity.name,
            "labels": {**_labels(identity), WORKLOAD: "deployment"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {SANDBOX: identity.name}},
            # One pod at a time: a sandbox has state, two would be two sandboxes.
            "strategy": {"type": "Recreate"},
            "template": template,
        },
    }


def service_manifest(
    spec: Spec, identity: SandboxIdentity, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """A Service exposing the daemon, owned by ``owner`` (the pod or Deployment) so the
    cluster's garbage collector deletes it with the sandbox."""
    options = _options(spec)
    owner_meta = owner["metadata"]
    reference = {
        "apiVersion": owner.get("apiVersion", "v1"),
        "kind": owner.get("kind", "Pod"),
        "name": owner_meta["name"],
        "uid": owner_meta["uid"],
    }
    port = spec.daemon_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": identity.name,
            "labels": _labels(identity),
            "ownerReferences": [reference],
        },
        "spec": {
            "type": options.service,
            "selector": {SANDBOX: identity.name},
            "ports": [{"name": _PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status  # type: ignore[no-any-return]
    return None


def failure_of(pod: Mapping[str, Any]) -> str | None:
    """Why the pod will never serve, in Kubernetes' words; None while it still may."""
    status = pod.get("status", {})
    phase = status.get("phase")
    container = _container_status(pod)
    state = (container or {}).get("state") or {}
    if (waiting := state.get("waiting")) and waiting.get("reason") in _FATAL_WAITING:
        return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    if terminated := state.get("terminated"):
        return (
            f"container {CONTAINER} exited with code {terminated.get('exitCode')} "
            f"({terminated.get('reason') or 'no reason'})"
        )
    if phase in ("Failed", "Succeeded"):
        why = status.get("reason") or phase
        return f"pod {phase.lower()}: {why}: {status.get('message') or 'no message'}"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "pod is being deleted"
    return None


def pending_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pod is still pending (e.g. not schedulable) in the scheduler's words."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message') or 'no message'}"
    container = _container_status(pod)
    waiting = ((container or {}).get("state") or {}).get("waiting")
    if waiting:
        return str(waiting.get("reason"))
    return None


def is_ready(pod: Mapping[str, Any]) -> bool:
    """The kubelet says the daemon takes connections (its readiness probe passed)."""
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def state_of(pod: Mapping[str, Any]) -> str:
    """The pod's state in a few words."""
    failure = failure_of(pod)
    if failure is not None:
        return f"failed: {failure}"
    phase = pod.get("status", {}).get("phase") or "Pending"
    reason = pending_reason(pod) if phase == "Pending" else None
    ready = " (ready)" if is_ready(pod) else ""
    return f"{phase}{': ' + reason if reason else ''}{ready}"
