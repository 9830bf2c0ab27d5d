"""Invalid specs fail at construction with SpecError, before any backend call."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from commandlab_async import (
    DockerOptions,
    DockerPlatform,
    DockerSpec,
    EcsOptions,
    EksOptions,
    KubeconfigOptions,
    KubernetesPlatform,
    KubernetesSpec,
    MissingExtraError,
    SpecError,
    provision,
    spec_for,
)
from commandlab_async.emulators.faults import FaultyDockerProxy

pytestmark = pytest.mark.unit

INVALID_DOCKER: list[tuple[dict[str, Any], str]] = [
    ({"image": ""}, "image"),
    ({"image": "   "}, "image"),
    ({"image": None}, "image"),
    ({"daemon_port": 0}, "daemon_port"),
    ({"daemon_port": 65536}, "daemon_port"),
    ({"daemon_port": "8000"}, "daemon_port"),
    ({"daemon_port": True}, "daemon_port"),
    ({"memory": -1}, "memory"),
    ({"memory": 0}, "memory"),
    ({"memory": 1.5}, "memory"),
    ({"memory": 16}, "memory"),  # the daemon alone needs more
    ({"memory": 63}, "memory"),
    ({"memory": True}, "memory"),
    ({"cpu": 0}, "cpu"),
    ({"cpu": float("nan")}, "cpu"),
    ({"cpu": -2}, "cpu"),
    ({"ttl": 0}, "ttl"),
    ({"ttl": float("inf")}, "ttl"),
    ({"ready_timeout": -1}, "ready_timeout"),
    ({"destroy_timeout": 0}, "destroy_timeout"),
    ({"name_prefix": "Bad_Prefix"}, "name_prefix"),
    ({"name_prefix": "9lives"}, "name_prefix"),
    ({"name_prefix": "x" * 31}, "name_prefix"),
    ({"env": {"COMMANDLAB_TOKEN": "mine"}}, "env"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"OK": 1}}, "env"),
    ({"env": ["A=B"]}, "env"),
    ({"labels": {"commandlab.session": "spoof"}}, "labels"),
    ({"labels": {"ok": "v" * 64}}, "labels"),
    ({"labels": {"bad key": "v"}}, "labels"),
    ({"pids_limit": 0}, "pids_limit"),
    ({"pids_limit": 16}, "pids_limit"),  # 8 concurrent commands would not fit
    ({"pids_limit": 31}, "pids_limit"),
    ({"pids_limit": 64.0}, "pids_limit"),
    ({"platform": "docker"}, "platform"),
    ({"platform": KubernetesPlatform.LOCAL}, "platform"),
    ({"region": "eu-west-1"}, "region"),
    (
        {"platform": DockerPlatform.AZURE_CONTAINER_INSTANCES, "region": "westeurope"},
        "resource_group",
    ),
    ({"platform": DockerPlatform.GCP_CLOUD_RUN, "region": "europe-west1"}, "project_id"),
    ({"platform": DockerPlatform.GCP_CLOUD_RUN, "project_id": "p"}, "region"),
]

ECS_NETWORK = {"subnets": ("subnet-1",), "security_groups": ("sg-1",)}
ECS = {"platform": DockerPlatform.AWS_ECS, "options": EcsOptions(**ECS_NETWORK)}
INVALID_DOCKER += [
    ({"endpoint_resolver": "http://x"}, "endpoint_resolver"),
    ({"run_as_root": "yes"}, "run_as_root"),
    ({"options": EcsOptions(**ECS_NETWORK)}, "options"),  # ECS options on local Docker
    ({"platform": DockerPlatform.AWS_ECS}, "subnets"),  # the default options lack a network
    ({**ECS, "options": DockerOptions()}, "options"),
    ({**ECS, "cpu": 0.3}, "cpu"),
    ({**ECS, "cpu": 1, "memory": 1024}, "memory"),
    ({**ECS, "cpu": 4, "memory": 8000}, "memory"),
    ({**ECS, "pids_limit": 256}, "pids_limit"),  # Fargate cannot limit processes
    ({**ECS, "daemon_port": 80}, "daemon_port"),  # unprivileged, and no NET_BIND_SERVICE
    ({**ECS, "resource_group": "rg"}, "resource_group"),
    ({"disk": 63}, "disk"),
    ({"disk": 1.5}, "disk"),
    ({**ECS, "disk": 20 * 1024}, "disk"),  # Fargate's ephemeral storage is 21..200 GiB
    ({**ECS, "disk": 201 * 1024}, "disk"),
    (
        {
            "platform": DockerPlatform.AZURE_CONTAINER_INSTANCES,
            "region": "westeurope",
            "resource_group": "rg",
            "disk": 1024,
        },
        "disk",
    ),  # ACI cannot limit it
    (
        {
            "platform": DockerPlatform.GCP_CLOUD_RUN,
            "region": "europe-west1",
            "project_id": "p",
            "disk": 1024,
        },
        "disk",
    ),  # Cloud Run's filesystem is memory
]

INVALID_ECS_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({**ECS_NETWORK, "subnets": ()}, "subnets"),
    ({**ECS_NETWORK, "subnets": "subnet-1"}, "subnets"),
    ({**ECS_NETWORK, "security_groups": ("",)}, "security_groups"),
    ({**ECS_NETWORK, "assign_public_ip": "yes"}, "assign_public_ip"),
    ({**ECS_NETWORK, "log_configuration": ["awslogs"]}, "log_configuration"),
    ({**ECS_NETWORK, "cluster": ""}, "cluster"),
]

INVALID_KUBERNETES: list[tuple[dict[str, Any], str]] = [
    ({"platform": KubernetesPlatform.GCP_GKE, "cluster_name": "c", "region": "r"}, "project_id"),
    ({"platform": KubernetesPlatform.AWS_EKS, "cluster_name": "c"}, "region"),
    ({"platform": KubernetesPlatform.AWS_EKS, "region": "eu-west-1"}, "cluster_name"),
    ({"platform": KubernetesPlatform.AZURE_AKS, "cluster_name": "c"}, "resource_group"),
    ({"namespace": "Not_A_Label"}, "namespace"),
    (
        {
            "platform": KubernetesPlatform.AWS_EKS,
            "cluster_name": "c",
            "region": "r",
            "options": KubeconfigOptions(context="kind"),
        },
        "options",
    ),
    ({"options": EksOptions()}, "options"),
    ({"cluster_name": "c"}, "cluster_name"),  # a kubeconfig cluster is chosen by context
    ({"pids_limit": 100}, "pids_limit"),  # a node setting on Kubernetes
    ({"platform": DockerPlatform.LOCAL}, "platform"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID_DOCKER)
def test_invalid_docker_spec(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        DockerSpec(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(("kwargs", "field"), INVALID_ECS_OPTIONS)
def test_invalid_ecs_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        EcsOptions(**kwargs)
    assert info.value.field == field


def test_platform_defaults_fill_unset_portable_fields() -> None:
    local = DockerSpec()
    assert (local.memory, local.pids_limit) == (1024, 1024)
    assert isinstance(local.options, DockerOptions)
    ecs = DockerSpec(**ECS)
    assert (ecs.memory, ecs.pids_limit) == (2048, None)  # a Fargate pair; no pids limit there
    assert DockerSpec(memory=512, pids_limit=64).memory == 512


def test_minimum_memory_and_pids_fit_the_daemon_and_say_why() -> None:
    spec = DockerSpec(memory=64, pids_limit=32)
    assert (spec.memory, spec.pids_limit) == (64, 32)
    assert KubernetesSpec(memory=64).memory == 64
    with pytest.raises(SpecError, match=r"at least 64 MiB, got 63: the daemon .* needs ~32 MiB"):
        DockerSpec(memory=63)
    with pytest.raises(SpecError, match=r"at least 64 MiB, got 16"):
        KubernetesSpec(memory=16)
    with pytest.raises(SpecError, match=r"at least 32, got 16: it counts threads too"):
        DockerSpec(pids_limit=16)
    with pytest.raises(SpecError, match="must be an int"):  # the type is still checked first
        DockerSpec(memory=32.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "field"), INVALID_KUBERNETES)
def test_invalid_kubernetes_spec(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        KubernetesSpec(**kwargs)
    assert info.value.field == field


def test_specs_are_frozen_and_copy_their_mappings() -> None:
    env = {"A": "1"}
    spec = DockerSpec(env=env)
    env["A"] = "2"
    assert spec.env["A"] == "1"
    with pytest.raises(AttributeError):
        spec.image = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["B"] = "x"  # type: ignore[index]


def test_valid_cloud_specs_construct() -> None:
    KubernetesSpec(
        platform=KubernetesPlatform.GCP_GKE, cluster_name="c", region="r", project_id="p"
    )
    KubernetesSpec(options=KubeconfigOptions(context="kind"), namespace="evals")
    DockerSpec(
        platform=DockerPlatform.AWS_ECS,
        options=EcsOptions(subnets=("subnet-1",), security_groups=["sg-1"]),  # type: ignore[arg-type]
    )
    DockerSpec(**ECS, cpu=0.25, memory=512, run_as_root=True, daemon_port=80)


async def test_invalid_input_never_reaches_the_engine(docker_proxy: FaultyDockerProxy) -> None:
    for kwargs, _ in INVALID_DOCKER:
        with pytest.raises(SpecError):
            async with provision(DockerSpec(**kwargs)):
                pass
    with pytest.raises(SpecError):
        async with provision({"image": "x"}):  # type: ignore[arg-type]
            pass
    assert docker_proxy.requests == []


@pytest.mark.parametrize(
    ("hidden", "make", "extras"),
    [
        (
            "kubernetes_asyncio",
            lambda: KubernetesSpec(platform=KubernetesPlatform.LOCAL),
            "kubernetes",
        ),
        (
            "aioboto3",
            lambda: KubernetesSpec(
                platform=KubernetesPlatform.AWS_EKS, cluster_name="c", region="r"
            ),
            "kubernetes,aws",
        ),
        ("azure.mgmt.containerinstance", lambda: spec_for("azure-aci", options={}), "azure"),
    ],
)
def test_a_missing_extra_is_said_when_the_platform_is_chosen(
    monkeypatch: pytest.MonkeyPatch, hidden: str, make: Any, extras: str
) -> None:
    """Before any provision: the spec itself cannot be made without its SDK."""
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` now fails
    with pytest.raises(MissingExtraError) as error:
        make()
    assert f"pip install 'commandlab-async[{extras}]'" in str(error.value)
