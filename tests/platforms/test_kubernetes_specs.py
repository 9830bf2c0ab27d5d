"""Kubernetes specs and manifests: what is refused before any call, and what a pod looks like."""

from __future__ import annotations

import re
from typing import Any

import pytest

from commandlab_async import (
    AksOptions,
    EksOptions,
    GkeOptions,
    KubeconfigOptions,
    KubernetesPlatform,
    KubernetesSpec,
    SpecError,
)
from commandlab_async._lifecycle.identity import new_identity
from commandlab_async.labels import SESSION
from commandlab_async.platforms.driver import token_digest
from commandlab_async.platforms.kubernetes.manifests import (
    SANDBOX,
    deployment_manifest,
    failure_of,
    pod_manifest,
    service_manifest,
    state_of,
)

pytestmark = pytest.mark.unit

EKS = {"platform": KubernetesPlatform.AWS_EKS, "cluster_name": "evals", "region": "us-west-2"}

INVALID_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"workload": "statefulset"}, "workload"),
    ({"service": "ExternalName"}, "service"),
    ({"reach": "tunnel"}, "reach"),
    ({"reach": "service"}, "reach"),  # nothing exposed
    ({"reach": "service", "service": "ClusterIP"}, "reach"),  # not reachable from outside
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
    ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ({"image_pull_secrets": ("Not_A_Name",)}, "image_pull_secrets"),
    ({"service_account": "Bad Name"}, "service_account"),
    ({"node_selector": {"pool": "a:b"}}, "node_selector"),
    ({"node_selector": {"bad key!": "x"}}, "node_selector"),
    ({"node_selector": {"pool": 1}}, "node_selector"),
    ({"annotations": {"-bad": "x"}}, "annotations"),
    ({"tolerations": ({"key": "x", "colour": "red"},)}, "tolerations"),
    ({"tolerations": [{"key": "x"}]}, "tolerations"),
    ({"requests_per_second": 0}, "requests_per_second"),
    ({"request_burst": 0}, "request_burst"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID_OPTIONS)
def test_invalid_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        KubeconfigOptions(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"labels": {"team": "a:b"}}, "labels"),  # ISO times break label values
        ({"labels": {"team": "-a"}}, "labels"),
        ({"name_prefix": "sbx-"}, "name_prefix"),
        ({"options": AksOptions()}, "options"),
    ],
)
def test_invalid_kubernetes_fields(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        KubernetesSpec(**kwargs)
    assert info.value.field == field


def test_aks_needs_a_subscription_when_provisioning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    spec = KubernetesSpec(
        platform=KubernetesPlatform.AZURE_AKS, cluster_name="c", resource_group="rg"
    )
    with pytest.raises(SpecError) as info:
        spec.target()
    assert info.value.field == "subscription_id"
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "sub-1")
    assert spec.target().subscription_id == "sub-1"


def test_targets_name_the_cluster_and_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/tmp/kc")
    local = KubernetesSpec(namespace="evals", options=KubeconfigOptions(context="kind")).target()
    assert (local.namespace, local.cluster, local.kubeconfig) == ("evals", "kind", "/tmp/kc")
    eks = KubernetesSpec(**EKS).target()
    assert (eks.cluster, eks.region, eks.namespace) == ("evals", "us-west-2", "default")
    gke = KubernetesSpec(
        platform=KubernetesPlatform.GCP_GKE, cluster_name="c", project_id="p", region="r"
    ).target()
    assert gke.api_endpoint == "https://container.googleapis.com"
    # gc names targets flag by flag.
    assert EksOptions.target_from({"cluster": "evals", "region": "us-west-2"}) == eks
    with pytest.raises(SpecError, match="cluster"):
        GkeOptions.target_from({"project_id": "p", "region": "r"})
    with pytest.raises(SpecError):
        EksOptions.target_from({"cluster": "c", "region": "r", "project_id": "p"})
    aks = AksOptions.target_from({"cluster": "c", "resource_group": "rg", "subscription_id": "s"})
    assert aks.subscription_id == "s"


def test_pod_manifest_is_locked_down_and_holds_only_the_token_hash() -> None:
    spec = KubernetesSpec(cpu=0.5, memory=512, ttl=600, env={"MINE": "1"}, labels={"team": "a"})
    identity = new_identity(spec)
    pod = pod_manifest(spec, identity, None)
    (container,) = pod["spec"]["containers"]
    assert pod["metadata"]["labels"][SANDBOX] == identity.name
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 660
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert container["readinessProbe"]["periodSeconds"] == 1
    assert container["imagePullPolicy"] == "IfNotPresent"  # a local cluster's images
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["COMMANDLAB_TOKEN_SHA256"] == token_digest(identity.token)
    assert identity.token not in str(pod)
    assert env["MINE"] == "1"
    assert all(isinstance(v, str) for v in env.values())


def test_root_and_cluster_options_reach_the_pod() -> None:
    options = EksOptions(
        image_pull_secrets=("regcred",),
        service_account="sandbox",
        node_selector={"pool": "sandboxes"},
        tolerations=({"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"},),
        annotations={"example.com/owner": "evals"},
    )
    spec = KubernetesSpec(**EKS, options=options, run_as_root=True, ttl=None, disk=2048)
    pod = pod_manifest(spec, new_identity(spec), None)
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == {"runAsUser": 0, "runAsNonRoot": False}
    for bound in ("requests", "limits"):  # the kubelet evicts a pod past its limit
        assert container["resources"][bound]["ephemeral-storage"] == "2048Mi"
    assert "imagePullPolicy" not in container  # the cluster's default for a cloud
    assert "activeDeadlineSeconds" not in pod["spec"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["serviceAccountName"] == "sandbox"
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["nodeSelector"] == {"pool": "sandboxes"}
    assert pod["spec"]["tolerations"][0]["key"] == "sandbox"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "evals"}


def test_deployment_and_service_manifests() -> None:
    spec = KubernetesSpec(options=KubeconfigOptions(workload="deployment", service="NodePort"))
    identity = new_identity(spec)
    deployment = deployment_manifest(spec, identity, None)
    template = deployment["spec"]["template"]
    assert template["spec"]["restartPolicy"] == "Always"
    assert "activeDeadlineSeconds" not in template["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"][SESSION] == identity.labels[SESSION]
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "uid": "u"}}
    service = service_manifest(spec, identity, owner)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == {SANDBOX: identity.name}
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u"}
    ]


def _pod(phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status}}


def _waiting(reason: str, message: str = "m") -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}}
    return _pod(containerStatuses=[{"name": "computer", "state": state}])


@pytest.mark.parametrize(
    ("pod", "failure"),
    [
        (_pod(), None),
        (_waiting("ContainerCreating"), None),
        (_waiting("ImagePullBackOff", 'Back-off pulling image "x"'), "ImagePullBackOff: Back-off"),
        (_waiting("ErrImagePull"), "ErrImagePull"),
        (_waiting("InvalidImageName"), "InvalidImageName"),
        (_waiting("CreateContainerConfigError"), "CreateContainerConfigError"),
        (_waiting("CrashLoopBackOff"), "CrashLoopBackOff"),
        (
            _pod(
                "Failed",
                containerStatuses=[
                    {
                        "name": "computer",
                        "state": {"terminated": {"exitCode": 3, "reason": "Error"}},
                    }
                ],
            ),
            "exited with code 3 \\(Error\\)",
        ),
        (_pod("Failed", reason="DeadlineExceeded", message="too long"), "DeadlineExceeded"),
    ],
)
def test_failures_are_named_in_kubernetes_words(pod: dict[str, Any], failure: str | None) -> None:
    said = failure_of(pod)
    if failure is None:
        assert said is None
    else:
        assert said is not None
        assert re.search(failure, said), said


def test_unschedulable_is_a_state_not_a_failure() -> None:
    message = "0/3 nodes are available: 3 Insufficient cpu."
    pod = _pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ]
    )
    assert failure_of(pod) is None
    assert state_of(pod) == f"Pending: Unschedulable: {message}"
