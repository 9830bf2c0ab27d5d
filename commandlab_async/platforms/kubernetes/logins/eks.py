"""Logging in to an EKS cluster (``aws-eks``) with botocore, no aws CLI and no exec plugin.

``DescribeCluster`` gives the endpoint and CA; the token is a presigned STS
``GetCallerIdentity`` URL, as ``aws eks get-token`` makes it, signed again before it
expires. botocore's credential chain runs in threads.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from ....errors import BackendError, SpecError
from ..._clouds import aws
from ...base import KubernetesPlatform
from ...driver import TRANSIENT_STATUS
from ..options import KubernetesTarget
from .base import ClusterLogin, b64, error, missing, required
from .tokens import Token, make_token

__all__ = ["log_in"]

#: EKS accepts a presigned STS URL for 15 minutes after it was signed; like ``aws eks
#: get-token`` we count 14, so it is refreshed after about 10.
EKS_TOKEN_LIFETIME = 14 * 60.0


async def log_in(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        import aioboto3  # noqa: F401  (the aws extra: _clouds.aws makes the client with it)
        import botocore.session
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise missing(KubernetesPlatform.AWS_EKS) from exc
    cluster = required(target.cluster, "cluster", target)
    # botocore's credential chain reads files and may call IMDS, SSO or STS: all of it in
    # a thread, with the plain (sync) botocore session. The same credentials sign the
    # tokens and describe the cluster.
    core = await asyncio.to_thread(botocore.session.Session)
    try:
        region = target.region or await asyncio.to_thread(core.get_config_variable, "region")
        credentials = await asyncio.to_thread(core.get_credentials)
    except BotoCoreError as exc:
        raise error(target, f"AWS configuration: {exc}", code=type(exc).__name__) from exc
    if not region:
        raise SpecError("region", "is required on EKS: set spec.region or AWS_DEFAULT_REGION")
    if credentials is None:
        raise error(
            target,
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run with an IAM role (instance profile, task role, "
            "EKS pod identity)",
            code="NoCredentials",
        )

    async def fetch() -> Token:
        try:
            value = await asyncio.to_thread(_eks_token, credentials, region, cluster)
        except BotoCoreError as exc:
            raise error(target, f"AWS credentials: {exc}", code=type(exc).__name__) from exc
        return make_token(value, lifetime=EKS_TOKEN_LIFETIME)

    await result._use_tokens(fetch)

    frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
    session = await aws.session()
    try:
        async with aws.client(session, "eks", region=region, credentials=frozen) as eks:
            described = (await eks.describe_cluster(name=cluster))["cluster"]
    except ClientError as exc:
        raise _eks_error(target, exc, cluster, region) from exc
    except BotoCoreError as exc:
        # Connection failures, timeouts: worth another try.
        raise error(target, f"EKS DescribeCluster: {exc}", transient=True) from exc
    status = described.get("status")
    endpoint = described.get("endpoint")
    ca = (described.get("certificateAuthority") or {}).get("data")
    if not endpoint or not ca:
        raise error(
            target,
            f"EKS cluster {cluster!r} has no endpoint yet (status {status})",
            code=str(status),
            transient=status in ("CREATING", "UPDATING"),
        )
    result.host = str(endpoint).rstrip("/")
    await result._use_ca(b64(ca, "certificateAuthority.data", target))


def _sts_url(region: str) -> str:
    # What EKS verifies: the regional STS endpoint of the cluster's partition, whatever
    # AWS_ENDPOINT_URL_STS says (that one is for this process's own STS calls).
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}/?Action=GetCallerIdentity&Version=2011-06-15"


def _eks_token(credentials: Any, region: str, cluster: str) -> str:
    """``k8s-aws-v1.`` + the presigned GetCallerIdentity URL, base64url without padding."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    frozen = credentials.get_frozen_credentials()  # refreshes expiring role credentials
    request = AWSRequest(method="GET", url=_sts_url(region), headers={"x-k8s-aws-id": cluster})
    SigV4QueryAuth(frozen, "sts", region, expires=60).add_auth(request)
    url = request.prepare().url
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    return f"k8s-aws-v1.{encoded}"


def _eks_error(target: KubernetesTarget, exc: Any, cluster: str, region: str) -> BackendError:
    details = exc.response.get("Error", {})
    code = details.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = details.get("Message") or str(exc)
    if code == "ResourceNotFoundException" or status == 404:
        text = (
            f"EKS cluster {cluster!r} not found in {region}: check the name and region "
            f"(aws eks list-clusters --region {region}) [{message}]"
        )
    elif status in (401, 403):
        text = (
            f"not allowed to describe EKS cluster {cluster!r}: the AWS identity needs "
            f"eks:DescribeCluster on it [{message}]"
        )
    else:
        text = f"EKS DescribeCluster {cluster!r} failed: {message}"
    throttled = code in ("ThrottlingException", "TooManyRequestsException")
    return error(target, text, code=code, transient=throttled or status in TRANSIENT_STATUS)
