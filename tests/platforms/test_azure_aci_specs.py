"""ACI without a cloud: specs refused before any call, the group we ask for, fail-fast."""

from __future__ import annotations

from typing import Any

import pytest
from azure.mgmt.containerinstance import models

from commandlab_async import AciOptions, BackendError, DockerPlatform, DockerSpec, SpecError
from commandlab_async._client.tls import TLS_CERT_ENV, TLS_KEY_ENV, SandboxTls
from commandlab_async._lifecycle.identity import new_identity
from commandlab_async.platforms.azure_aci.driver import AciDriver, _failure, _group
from commandlab_async.platforms.azure_aci.options import AciTarget

pytestmark = pytest.mark.unit


def spec(options: dict[str, Any] | None = None, **changes: Any) -> DockerSpec:
    fields: dict[str, Any] = {
        "platform": DockerPlatform.AZURE_CONTAINER_INSTANCES,
        "resource_group": "rg",
        "region": "westeurope",
        "options": AciOptions(**{"subscription_id": "sub-1", **(options or {})}),
    }
    return DockerSpec(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cpu": 5}, "cpu"),
        ({"cpu": 0.333}, "cpu"),
        ({"memory": 1000}, "memory"),  # not a tenth of a GB
        ({"memory": 20480}, "memory"),
        ({"name_prefix": "a--b"}, "name_prefix"),
        ({"labels": {"team/x": "a"}}, "labels"),
        ({"labels": {"team": "x" * 257}}, "labels"),
        ({"run_as_root": True}, "run_as_root"),
        ({"pids_limit": 10}, "pids_limit"),
        ({"resource_group": None}, "resource_group"),
        ({"region": None}, "region"),
        ({"project_id": "p"}, "project_id"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**changes)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"dns_name_label": "Bad_Label"}, "dns_name_label"),
        (
            {"dns_name_label": "sbx-1", "subnet_ids": ("/subscriptions/s/subnets/a",)},
            "dns_name_label",
        ),
        ({"arm_endpoint": "http://management.azure.com"}, "arm_endpoint"),
        ({"credential": "a-secret"}, "credential"),
        ({"subnet_ids": "one-subnet"}, "subnet_ids"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        AciOptions(**options)
    assert info.value.field == field


def test_sizes_in_aci_units_pass() -> None:
    assert spec(cpu=0.5, memory=512).memory == 512
    assert spec(cpu=4, memory=16384).cpu == 4


def test_subscription_comes_from_options_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    with pytest.raises(SpecError, match="AZURE_SUBSCRIPTION_ID") as info:
        spec({"subscription_id": None}).target()
    assert info.value.field == "subscription_id"
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "from-env")
    target = spec({"subscription_id": None}).target()
    assert isinstance(target, AciTarget)
    assert (target.subscription_id, target.resource_group, target.region) == (
        "from-env",
        "rg",
        "westeurope",
    )
    assert isinstance(explicit := spec().target(), AciTarget)
    assert explicit.subscription_id == "sub-1"


def test_gc_names_a_target_by_its_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "from-env")
    target = AciOptions.target_from({"resource_group": "rg"})
    assert (target.subscription_id, target.region) == ("from-env", None)
    with pytest.raises(SpecError) as info:
        AciOptions.target_from({"region": "westeurope"})
    assert info.value.field == "resource_group"
    with pytest.raises(SpecError):
        AciOptions.target_from({"resource_group": "rg", "cluster": "c"})


def test_a_user_credential_scopes_its_own_driver() -> None:
    class Credential:
        async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...

    mine, theirs = Credential(), Credential()
    assert spec({"credential": mine}).target() == spec({"credential": mine}).target()
    assert spec({"credential": mine}).target() != spec({"credential": theirs}).target()
    assert "Credential" not in repr(spec({"credential": mine}).target())


def _tls() -> SandboxTls:
    return SandboxTls(name="x", cert_pem="CERT", key_pem="KEY")


def test_the_group_asked_for_hides_our_secrets_and_never_restarts() -> None:
    s = spec(env={"USER_VAR": "1"}, cpu=1.5, memory=1536, labels={"team": "evals"})
    identity = new_identity(s)
    group = _group(s, identity, _tls(), "westeurope")
    assert (group.os_type, group.restart_policy, group.location) == ("Linux", "Never", "westeurope")
    assert group.tags == dict(identity.labels)
    (container,) = group.containers
    requests = container.resources.requests
    assert (requests.cpu, requests.memory_in_gb) == (1.5, 1.5)
    variables = {v.name: v for v in container.environment_variables}
    assert variables["USER_VAR"].value == "1"
    for name in ("COMMANDLAB_TOKEN_SHA256", TLS_KEY_ENV, TLS_CERT_ENV):
        assert variables[name].value is None
        assert variables[name].secure_value
    assert variables[TLS_KEY_ENV].secure_value == "KEY"
    assert identity.token not in str(group.serialize())
    assert group.ip_address.type == "Public"
    assert [p.port for p in group.ip_address.ports] == [s.daemon_port]
    assert group.subnet_ids is None


def test_a_subnet_gives_a_private_group() -> None:
    subnet = (
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/a"
    )
    s = spec({"subnet_ids": (subnet,)})
    group = _group(s, new_identity(s), _tls(), "westeurope")
    assert group.ip_address.type == "Private"
    assert [g.id for g in group.subnet_ids] == [subnet]


def _group_as_arm_says(view: dict[str, Any], state: str = "Creating") -> Any:
    """A group deserialized from ARM's JSON, as the SDK builds it from the wire."""
    container = {"name": "computer", "properties": {"image": "i", "instanceView": view}}
    body = {"location": "x", "properties": {"provisioningState": state, "containers": [container]}}
    return models.ContainerGroup.deserialize(body)


def test_aci_words_decide_when_to_give_up() -> None:
    pulling = {"name": "Pulling", "message": 'pulling image "x"', "type": "Normal"}
    failed = {"name": "Failed", "message": 'Failed to pull image "x": not found', "type": "Warning"}
    assert _failure(_group_as_arm_says({"events": [pulling]})) is None
    assert _failure(_group_as_arm_says({"events": [pulling, failed]})) == (
        'Failed: Failed to pull image "x": not found'
    )
    exited = {"currentState": {"state": "Terminated", "exitCode": 3, "detailStatus": "Error"}}
    assert _failure(_group_as_arm_says(exited, "Succeeded")) == (
        "container computer exited with code 3 (Error)"
    )
    assert "restarted 1 time" in (_failure(_group_as_arm_says({"restartCount": 1})) or "")
    failed_group = _failure(_group_as_arm_says({"events": [failed]}, "Failed")) or ""
    assert failed_group.startswith("provisioning failed: Failed: Failed to pull")


class _Answer:
    """Just enough of an azure-core HTTP response for HttpResponseError."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        self.status_code = status
        self.reason = "Too Many Requests"
        self.headers = {"Retry-After": retry_after} if retry_after else {}
        self.request = None

    def text(self) -> str:
        return '{"error": {"code": "TooManyRequests", "message": "slow down"}}'


async def test_retry_after_is_honoured_up_to_a_minute_then_surfaced() -> None:
    from azure.core.exceptions import HttpResponseError

    driver = AciDriver(spec().target())  # type: ignore[arg-type]
    calls = 0

    async def throttled(retry_after: str) -> None:
        nonlocal calls
        calls += 1
        raise HttpResponseError(response=_Answer(429, retry_after))  # type: ignore[arg-type]

    assert AciDriver.retry_after(HttpResponseError(response=_Answer(429, "7"))) == 7.0  # type: ignore[arg-type]
    assert AciDriver.retry_after(HttpResponseError(response=_Answer(429, None))) is None  # type: ignore[arg-type]
    with pytest.raises(BackendError) as info:
        await driver.call("create", "x", lambda: throttled("3600"))  # an hourly quota
    assert calls == 1, "not waited for inside one call"
    assert info.value.transient is True
    assert info.value.code == "TooManyRequests"
