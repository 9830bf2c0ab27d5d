"""Cloud Run without a cloud: specs refused before any call, labels, ID-token caching."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as google_errors
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no py.typed

from commandlab_async import BackendError, CloudRunOptions, SpecError
from commandlab_async._lifecycle.identity import SESSION_ID, new_identity
from commandlab_async.emulators.cloud_run import CloudRunEmulator
from commandlab_async.platforms.gcp_cloud_run.driver import CloudRunDriver, gcp_labels
from commandlab_async.platforms.gcp_cloud_run.id_tokens import IdTokens
from commandlab_async.platforms.gcp_cloud_run.options import LABEL_KEY, LABEL_VALUE
from tests.platforms.gcp_support import cloud_run_spec

pytestmark = pytest.mark.unit


# -- specs: refused before any call -----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cpu": 0.5}, "cpu"),
        ({"cpu": 3}, "cpu"),
        ({"memory": 256}, "memory"),
        ({"memory": 8192}, "memory"),  # 1 vCPU takes at most 4 GiB
        ({"labels": {"Team": "a"}}, "labels"),
        ({"labels": {"team": "A.B"}}, "labels"),
        ({"env": {"PORT": "1"}}, "env"),
        ({"run_as_root": True}, "run_as_root"),
        ({"pids_limit": 10}, "pids_limit"),
        ({"project_id": None}, "project_id"),
        ({"region": None}, "region"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        cloud_run_spec(**changes)
    assert info.value.field == field


def test_good_sizes_pass() -> None:
    assert cloud_run_spec(cpu=2, memory=8192).memory == 8192
    assert cloud_run_spec(cpu=8, memory=32768).cpu == 8


def test_our_labels_fit_google_rules_and_keep_user_labels() -> None:
    identity = new_identity(cloud_run_spec(labels={"team": "evals"}))
    labels = {**identity.labels, "commandlab.host": "Build-Box.Example.COM"}
    fitted = gcp_labels(labels)
    assert fitted["team"] == "evals"
    assert fitted["commandlab-session"] == SESSION_ID
    assert fitted["commandlab-host"] == "build-box-example-com"
    assert gcp_labels({"commandlab.host": "Zürich-1"}) == {"commandlab-host": "z-rich-1"}
    for key, value in fitted.items():
        assert LABEL_KEY.fullmatch(key), key
        assert LABEL_VALUE.fullmatch(value), value


# -- quotas: retried when a rate, a note when a count ------------------------------------

_READ_RATE = (  # as Cloud Run words it, with no ErrorInfo
    "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per "
    "region' of service 'run.googleapis.com' for consumer 'project_number:123'. To see usage, "
    "go to https://console.cloud.google.com/iam-admin/quotas?metric=run.googleapis.com/"
    "read_regional&limit=ReadPerMinutePerProjectRegion&qs_error_code=INSUFFICIENT_TOKENS"
)
_CPU_QUOTA = (
    "Max instances must be set to 2 or fewer to set the requested total CPU. "
    "Quota violated: CpuAllocPerProjectRegion requested: 60000 allowed: 20000"
)
_SERVICES_COUNT = "Quota exceeded for total allowable count of services per project per region."
_SERVICES = "1,000 services per region"
_429 = google_errors.ResourceExhausted


def _info(reason: str, **metadata: str) -> Any:
    return error_details_pb2.ErrorInfo(reason=reason, domain="googleapis.com", metadata=metadata)


def _violation(**fields: str) -> Any:
    violation = error_details_pb2.QuotaFailure.Violation(**fields)
    return error_details_pb2.QuotaFailure(violations=[violation])


def _error(kind: type[google_errors.GoogleAPICallError], message: str, *details: Any) -> Any:
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    return kind(message, details=list(details), error_info=infos[0] if infos else None)


@pytest.mark.parametrize(
    ("error", "transient", "note"),
    [
        # Rates refill within a minute: retried, whatever the reason says or lacks.
        pytest.param(_error(_429, _READ_RATE), True, None, id="rate-message"),
        pytest.param(
            _error(_429, "Quota exceeded.", _info("RATE_LIMIT_EXCEEDED")),
            True,
            None,
            id="rate-reason",
        ),
        pytest.param(
            _error(_429, "Quota exceeded.", _info("X", quota_limit="WritesPerMinutePerRegion")),
            True,
            None,
            id="rate-limit-metadata",
        ),
        pytest.param(
            _error(_429, "Quota exceeded for quota metric 'Write requests'."),
            True,
            None,
            id="rate-metric",
        ),
        pytest.param(
            _error(google_errors.PermissionDenied, _READ_RATE), True, None, id="rate-as-403"
        ),
        # Not said to be a count: a 429 stays retried, as it always was.
        pytest.param(
            _error(_429, "Resource has been exhausted (e.g. check quota)."),
            True,
            None,
            id="unknown-429",
        ),
        # Counts, and windows longer than a retry: asked once, with a note naming them.
        pytest.param(
            _error(_429, "Quota exceeded.", _info("X", quota_limit="ServicesPerProjectRegion")),
            False,
            _SERVICES,
            id="services-limit-metadata",
        ),
        pytest.param(
            _error(_429, "Quota exceeded for quota metric 'Services'."),
            False,
            _SERVICES,
            id="services-metric",
        ),
        pytest.param(
            _error(_429, _SERVICES_COUNT, _info("RESOURCE_QUOTA_EXCEEDED")),
            False,
            _SERVICES,
            id="services-reason",
        ),
        pytest.param(
            _error(_429, "Quota exceeded.", _info("RESOURCE_QUOTA_EXCEEDED")),
            False,
            "A Cloud Run quota is used up",
            id="unnamed-count",
        ),
        pytest.param(
            _error(_429, "Quota exceeded.", _violation(quota_id="MaxInstancesPerProjectRegion")),
            False,
            "quota 'MaxInstancesPerProjectRegion' is used up",
            id="instances-quota-failure",
        ),
        pytest.param(
            _error(google_errors.InvalidArgument, _CPU_QUOTA),
            False,
            "quota 'CpuAllocPerProjectRegion' is used up",
            id="cpu-as-400",
        ),
        pytest.param(
            _error(_429, "Quota exceeded.", _violation(description="Daily Limit for writes")),
            False,
            "A Cloud Run quota is used up",
            id="daily",
        ),
        # Not quotas at all.
        pytest.param(
            _error(google_errors.PermissionDenied, "Permission 'run.services.create' denied"),
            False,
            None,
            id="permission",
        ),
        pytest.param(
            _error(google_errors.ServiceUnavailable, "connection reset"), True, None, id="503"
        ),
    ],
)
def test_quota_errors_are_retried_only_when_a_rate(
    error: google_errors.GoogleAPICallError, transient: bool, note: str | None
) -> None:
    failure = CloudRunDriver.classify(error)
    assert failure is not None
    assert failure.transient is transient
    driver = CloudRunDriver(cloud_run_spec().target())  # type: ignore[arg-type]
    translated = driver.translate(error, "create_service", "sbx")
    assert isinstance(translated, BackendError)
    assert translated.transient is transient
    notes = getattr(translated, "__notes__", [])
    if note is None:
        assert notes == []
    else:
        (text,) = notes
        assert note in text


# -- ID tokens -----------------------------------------------------------------------------


def _jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp})}.sig"


async def test_id_tokens_are_fetched_once_per_audience_and_refreshed_near_expiry() -> None:
    fetched: list[str] = []
    lifetime = [3600.0]

    def fetch(audience: str) -> str:
        time.sleep(0.05)  # a blocking fetch: it must run in a thread
        fetched.append(audience)
        return _jwt(time.time() + lifetime[0])

    tokens = IdTokens(fetch)
    first = await asyncio.gather(*(tokens.token("https://a") for _ in range(20)))
    assert fetched == ["https://a"]
    assert len(set(first)) == 1
    await tokens.token("https://b")
    assert fetched == ["https://a", "https://b"]
    lifetime[0] = 60.0  # the next one expires within the refresh margin
    tokens = IdTokens(fetch)
    await tokens.token("https://a")
    await tokens.token("https://a")
    assert fetched.count("https://a") == 3


async def test_a_failed_id_token_fetch_reaches_every_waiter_and_is_retried() -> None:
    calls = 0

    def fetch(audience: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("token endpoint down")
        return _jwt(time.time() + 3600)

    tokens = IdTokens(fetch)
    results = await asyncio.gather(*(tokens.token("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert await tokens.token("x")
    assert calls == 2


def test_gc_scope_needs_project_and_region() -> None:
    with pytest.raises(SpecError, match="project_id"):
        CloudRunOptions.target_from({"region": "us-central1"})
    target = CloudRunOptions.target_from({"project_id": "p", "region": "r"})
    assert str(target) == "gcp-cloud-run[project_id=p, region=r]"


async def test_without_an_emulator_the_client_goes_to_google_with_default_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built, never called: a gRPC channel connects on its first call only."""
    key = CloudRunEmulator().write_service_account(tmp_path / "key.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv("CLOUD_RUN_EMULATOR_HOST", raising=False)
    target = cloud_run_spec().target()
    driver = CloudRunDriver(target)  # type: ignore[arg-type]
    try:
        client = await driver._client()
        channel = client.transport.grpc_channel
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
        assert channel._channel.target == b"run.googleapis.com:443"
    finally:
        await driver.close()


def test_without_the_gcp_extra_choosing_the_platform_names_it() -> None:
    code = (
        "import sys; sys.modules['google.cloud.run_v2'] = None\n"
        "from commandlab_async import *\n"
        "try: DockerSpec(platform=DockerPlatform.GCP_CLOUD_RUN, project_id='p', region='r')\n"
        "except MissingExtraError as e: print(e)\n"
        "else: print('no error')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'commandlab-async[gcp]'" in out
