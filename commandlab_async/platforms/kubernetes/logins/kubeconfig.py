"""Logging in as a kubeconfig says (``kubernetes``), or as the pod's service account.

The kubeconfig's context gives the API server, its CA and how to authenticate: a token,
a token file, a client certificate, an exec plugin or an OIDC/gcp auth-provider. Without
a kubeconfig, a process that runs in a pod uses its service account. kubernetes_asyncio
does the reading; here it is split so that nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from ....errors import SpecError
from ..._clouds import jwt_expiry
from ...base import KubernetesPlatform
from ..options import KubernetesTarget
from .base import ClusterLogin, error, missing
from .tokens import REREAD_EVERY, Token, Tokens, make_token, seconds_until

__all__ = ["log_in"]


async def log_in(target: KubernetesTarget, result: ClusterLogin) -> None:
    try:
        from kubernetes_asyncio.config import incluster_config, kube_config
    except ImportError as exc:
        raise missing(KubernetesPlatform.LOCAL) from exc

    # Read now, not when kubernetes_asyncio was imported (it reads KUBECONFIG then).
    paths = target.kubeconfig or os.environ.get("KUBECONFIG") or None
    if paths is None:
        default = Path.home() / ".kube" / "config"
        if await asyncio.to_thread(default.is_file):
            paths = str(default)
        elif os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME):
            await _in_cluster(target, result)
            return
        else:
            raise SpecError(
                "kubeconfig",
                "no cluster to log in to: set KUBECONFIG or KubeconfigOptions(kubeconfig=...) "
                f"({default} does not exist, and this process does not run in a pod)",
            )
    loader = await asyncio.to_thread(_kubeconfig_loader, kube_config, paths, target.cluster)
    config, lifetime = await _load_kubeconfig(loader, target)
    first = _kubeconfig_token(loader, config, lifetime)
    if first is not None:  # else the client certificate authenticates (kind, minikube)

        async def fetch() -> Token:
            again, lifetime = await _load_kubeconfig(loader, target)
            token = _kubeconfig_token(loader, again, lifetime)
            if token is None:
                raise error(target, "the kubeconfig's user gave no token", code="NoToken")
            return token

        result._tokens = Tokens(fetch, first)
    result.host = str(config.host)
    result.ca_file = config.ssl_ca_cert
    result.verify_ssl = bool(config.verify_ssl)
    result.cert_file = config.cert_file
    result.key_file = config.key_file
    result.tls_server_name = config.tls_server_name
    result.proxy = config.proxy


def _kubeconfig_loader(kube_config: Any, paths: str, context: str | None) -> Any:
    """Read and merge the kubeconfig file(s), pick the context (a worker thread)."""
    import yaml  # kubernetes_asyncio's dependency

    names = [p for p in paths.split(kube_config.ENV_KUBECONFIG_PATH_SEPARATOR) if p]
    if not any(os.path.isfile(os.path.expanduser(p)) for p in names):
        raise SpecError("kubeconfig", f"{paths} does not exist")
    try:
        merged = kube_config.KubeConfigMerger(paths).config
    except (yaml.YAMLError, OSError, AttributeError, TypeError) as exc:
        raise SpecError("kubeconfig", f"{paths} is not a valid kubeconfig: {exc}") from exc
    contexts = [str(c["name"]) for c in (merged.value.get("contexts") or [])]
    wanted = context or merged.value.get("current-context")
    if not wanted:
        raise SpecError("context", f"{paths} names no current-context: choose one of {contexts}")
    if wanted not in contexts:
        raise SpecError("context", f"{wanted!r} is not a context of {paths} (it has {contexts})")
    try:
        # No config_persister: refreshed tokens are never written back to the user's file.
        return kube_config.KubeConfigLoader(
            config_dict=merged, config_base_path=None, active_context=wanted
        )
    except (kube_config.ConfigException, KeyError, AssertionError) as exc:
        raise SpecError("kubeconfig", f"context {wanted!r} of {paths}: {exc}") from exc


async def _load_kubeconfig(loader: Any, target: KubernetesTarget) -> tuple[Any, float | None]:
    """Authenticate as the kubeconfig's user says: (configuration, seconds an exec
    plugin's token is valid or None).

    What ``KubeConfigLoader.load_and_set`` does, split so that nothing blocks the loop:
    an exec plugin runs here (kubernetes_asyncio's runner: a subprocess, awaited), and
    the rest, which reads token files and writes the CA and key data to temporary
    files, in a thread.
    """
    from kubernetes_asyncio.config import ConfigException
    from kubernetes_asyncio.config.exec_provider import ExecProvider

    user = loader._user  # the context's user section (a ConfigNode), None without one
    status = None
    # The loader's own order: auth-provider (oidc, gcp) first, then exec, then tokens.
    if user is not None and "exec" in user and loader.provider is None:
        try:
            status = await ExecProvider(user["exec"]).run()
        except (ConfigException, OSError) as exc:
            command = user["exec"].safe_get("command")
            raise error(
                target,
                f"the kubeconfig's exec plugin ({command}) failed: {exc}",
                code="ExecPluginFailed",
            ) from exc
    return await asyncio.to_thread(_load_kubeconfig_files, loader, status, target)


def _load_kubeconfig_files(
    loader: Any, status: Any, target: KubernetesTarget
) -> tuple[Any, float | None]:
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException
    from kubernetes_asyncio.config.dateutil import parse_rfc3339
    from kubernetes_asyncio.config.kube_config import FileOrData

    config = Configuration()
    lifetime = None
    try:
        if status is not None:
            if "token" in status:
                loader.token = f"Bearer {status['token']}"
                if status.get("expirationTimestamp"):
                    lifetime = seconds_until(parse_rfc3339(status["expirationTimestamp"]))
            elif "clientCertificateData" in status and "clientKeyData" in status:
                for attr, key in (
                    ("cert_file", "clientCertificateData"),
                    ("key_file", "clientKeyData"),
                ):
                    data = FileOrData(status, None, data_key_name=key, base64_file_content=False)
                    setattr(loader, attr, data.as_file())
            else:
                raise error(
                    target,
                    "the kubeconfig's exec plugin gave neither a token nor a client certificate",
                    code="ExecPluginFailed",
                )
        elif loader.provider in ("oidc", "gcp"):
            # Rare (gcp is gone since Kubernetes 1.26): their refreshes await aiohttp and
            # write temporary files, so they get this thread's own event loop.
            asyncio.run(loader._load_authentication())
        elif loader._user is not None and not loader._load_user_token():
            loader._load_user_pass_token()
        loader._load_cluster_info()
        loader._set_config(config)
    except ConfigException as exc:
        raise SpecError("kubeconfig", str(exc)) from exc
    except OSError as exc:
        raise SpecError("kubeconfig", str(exc)) from exc
    return config, lifetime


def _kubeconfig_token(loader: Any, config: Any, lifetime: float | None) -> Token | None:
    value = config.api_key.get("BearerToken")
    if not value:
        return None
    scheme, _, credential = str(value).partition(" ")
    reread = None
    user = loader._user
    if lifetime is not None:
        pass  # an exec plugin said when its token expires
    elif user is None:
        pass
    elif "exec" in user and loader.provider is None:
        reread = 10 * REREAD_EVERY  # no expiry given: fetched again now and then
    elif loader.provider in ("oidc", "gcp"):
        exp = jwt_expiry(credential)
        lifetime, reread = (exp - time.time() if exp else None), REREAD_EVERY
    elif "tokenFile" in user and "token" not in user:
        reread = REREAD_EVERY  # a projected token the kubelet rotates
    return make_token(credential, lifetime=lifetime, reread=reread, scheme=scheme)


async def _in_cluster(target: KubernetesTarget, result: ClusterLogin) -> None:
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException, incluster_config

    # Read when called, so a test (or a sidecar layout) can point them elsewhere.
    loader = incluster_config.InClusterConfigLoader(
        token_filename=incluster_config.SERVICE_TOKEN_FILENAME,
        cert_filename=incluster_config.SERVICE_CERT_FILENAME,
        try_refresh_token=False,
    )

    def load() -> Any:
        config = Configuration()
        loader.load_and_set(config)
        return config

    async def fetch() -> Token:
        try:
            config = await asyncio.to_thread(load)
        except ConfigException as exc:
            raise SpecError("kubeconfig", f"in-cluster service account: {exc}") from exc
        result.host, result.ca_file = str(config.host), config.ssl_ca_cert
        scheme, _, value = str(config.api_key["BearerToken"]).partition(" ")
        # The kubelet rotates the projected token file: read it again every minute.
        return make_token(value, lifetime=None, reread=REREAD_EVERY, scheme=scheme)

    await result._use_tokens(fetch)
