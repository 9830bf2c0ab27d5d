"""EKS, AKS and GKE end to end: the cluster is found through the cloud's API (the fakes),
the API server (the emulator) accepts only that cloud's tokens, and a fleet really runs.

Each cloud's verifier is the check its real API server makes: EKS replays the presigned STS
request (to moto), AKS accepts only Entra tokens for the AKS server application, GKE only
the access tokens Google's token endpoint issued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from commandlab_async import (
    AksOptions,
    GkeOptions,
    KubernetesPlatform,
    KubernetesSpec,
    provision,
    provision_many,
)
from commandlab_async.emulators.clusters import ClusterFakes, verify_eks_token
from commandlab_async.emulators.faults import Rule
from commandlab_async.emulators.kubernetes import KubeEmulator
from tests.platforms.k8s_support import NAMESPACE, REGION, our_pods

pytestmark = [pytest.mark.docker, pytest.mark.aws]

CLUSTER = "evals"
Verify = Callable[[str], Awaitable[str | None]]


def _spec(platform: KubernetesPlatform, fakes: ClusterFakes) -> KubernetesSpec:
    common = {"namespace": NAMESPACE, "cluster_name": CLUSTER, "ready_timeout": 120}
    if platform is KubernetesPlatform.AWS_EKS:
        return KubernetesSpec(platform=platform, region=REGION, **common)  # type: ignore[arg-type]
    if platform is KubernetesPlatform.AZURE_AKS:
        options = AksOptions(arm_endpoint=fakes.url)
        return KubernetesSpec(platform=platform, resource_group="rg", options=options, **common)  # type: ignore[arg-type]
    options_gke = GkeOptions(api_endpoint=fakes.url)
    return KubernetesSpec(
        platform=platform,
        project_id="sbx-test",
        region=REGION,
        options=options_gke,
        **common,  # type: ignore[arg-type]
    )


class Verified:
    """The cloud's verifier, remembering what it accepted (as a real front end caches)."""

    def __init__(self, verify: Verify) -> None:
        self._verify = verify
        self.users: dict[str, str] = {}
        self.refused = 0

    async def __call__(self, token: str) -> str | None:
        if token not in self.users:
            user = await self._verify(token)
            if user is None:
                self.refused += 1
                return None
            self.users[token] = user
        return self.users[token]


def _verifier(platform: KubernetesPlatform, fakes: ClusterFakes, moto_url: str) -> Verified:
    if platform is KubernetesPlatform.AWS_EKS:
        return Verified(verify_eks_token(moto_url, CLUSTER, secret_keys={"testing": "testing"}))
    if platform is KubernetesPlatform.AZURE_AKS:
        return Verified(fakes.verify_aks_token())
    return Verified(fakes.verify_gke_token())


CLOUDS = [KubernetesPlatform.AWS_EKS, KubernetesPlatform.AZURE_AKS, KubernetesPlatform.GCP_GKE]


@pytest.mark.parametrize("platform", CLOUDS, ids=lambda p: p.value)
async def test_a_cloud_cluster_runs_a_fleet_with_its_own_tokens(
    kube: KubeEmulator,
    fakes: ClusterFakes,
    moto_url: str,
    tmp_path: Path,
    platform: KubernetesPlatform,
) -> None:
    fakes.register(CLUSTER, kube.url, kube.write_ca(tmp_path / "ca.pem").read_bytes())
    verified = _verifier(platform, fakes, moto_url)
    kube.tokens = set()  # the kubeconfig's token is no good here
    kube.authenticate = verified
    spec = _spec(platform, fakes)
    async with provision(spec) as computer:
        assert (await computer.run("echo one")).stdout == "one\n"
    described = "GET eks cluster|POST aks credentials|GET gke cluster"
    assert len(fakes.calls(described)) == 1
    # Ten sandboxes share one token as a hundred would (the scale is the benchmarks').
    async with provision_many(spec, count=10) as fleet:
        outputs = await asyncio.gather(*(c.run("echo many") for c in fleet))
        assert {r.stdout for r in outputs} == {"many\n"}
        assert len(our_pods(kube)) == 10
    assert verified.refused == 0
    # Each fleet found the cluster once and one token served all its requests.
    assert len(fakes.calls(described)) == 2
    assert len(verified.users) == 2
    if platform is not KubernetesPlatform.GCP_GKE:  # Google's access tokens are opaque
        prefix = "k8s-aws-v1." if platform is KubernetesPlatform.AWS_EKS else "ey"  # a JWT
        assert all(token.startswith(prefix) for token in verified.users)


async def test_a_token_the_api_server_refuses_is_a_clear_error(
    kube: KubeEmulator, fakes: ClusterFakes, moto_url: str, tmp_path: Path
) -> None:
    fakes.register(CLUSTER, kube.url, kube.write_ca(tmp_path / "ca.pem").read_bytes())
    kube.tokens = set()
    # An API server that trusts another cluster's tokens only.
    kube.authenticate = verify_eks_token(moto_url, "other", secret_keys={"testing": "testing"})
    with pytest.raises(Exception, match="401") as info:
        async with provision(_spec(KubernetesPlatform.AWS_EKS, fakes)):
            pytest.fail("the body must not run")
    assert "Unauthorized" in str(info.value)
    assert our_pods(kube) == []


async def test_a_cloud_api_that_fails_once_is_asked_again(
    kube: KubeEmulator, fakes: ClusterFakes, moto_url: str, tmp_path: Path
) -> None:
    fakes.register(CLUSTER, kube.url, kube.write_ca(tmp_path / "ca.pem").read_bytes())
    kube.tokens = set()
    kube.authenticate = _verifier(KubernetesPlatform.AWS_EKS, fakes, moto_url)
    fakes.add(Rule("GET eks cluster", status=503, times=1))
    async with provision(_spec(KubernetesPlatform.AWS_EKS, fakes)) as computer:
        assert (await computer.run("echo again")).stdout == "again\n"
    assert len(fakes.calls("GET eks cluster")) == 2
