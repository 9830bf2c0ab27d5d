"""The ``commandlab`` sandbox's configuration: a pydantic model mapped onto our specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ... import DEFAULT_IMAGE, DockerSpec, KubernetesSpec, SpecError, spec_for

__all__ = ["CommandLabSandboxConfig", "load_config"]


class CommandLabSandboxConfig(BaseModel):
    """Where and how each sample's sandbox runs (every field is optional).

    ``platform`` is one of ``docker`` (local Docker), ``aws-ecs``, ``azure-aci``,
    ``gcp-cloud-run``, ``kubernetes``, ``aws-eks``, ``azure-aks``, ``gcp-gke``;
    ``options`` holds that platform's own options (the fields of ``EcsOptions``,
    ``KubeconfigOptions``...). The other fields are those of :class:`DockerSpec` /
    :class:`KubernetesSpec`, plus ``user``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    platform: str = "docker"
    image: str = DEFAULT_IMAGE
    screen: tuple[int, int] | tuple[int, int, int] | None = None
    """A desktop image's screen (width, height[, depth]); None: the spec's default
    (1280x800). Inspect tells models with native computer use of a 1366x768 screen: for its
    ``computer()`` tool use (1366, 768), or (1920, 1080), which the tool shows scaled down
    to fit 1366x768 as Inspect's own tool does."""
    user: str | None = None
    """Who commands and files run as when Inspect names no user. None: the daemon's own
    user (root with ``run_as_root``). With ``run_as_root`` and an unprivileged ``user``
    (``computer`` in the default image), permissions apply as for that user while
    ``user="root"`` still works."""
    run_as_root: bool = True
    """Run the daemon as root, so commands may run as any user (Inspect's tools and
    ``exec(user=...)`` need it)."""
    env: dict[str, str] = {}
    cpu: float = 1.0
    memory: int | None = None
    pids_limit: int | None = None
    disk: int | None = None
    ttl: float | None = 3600.0
    ready_timeout: float = 120.0
    destroy_timeout: float = 60.0
    labels: dict[str, str] = {}
    options: dict[str, Any] = {}
    region: str | None = None
    resource_group: str | None = None
    project_id: str | None = None
    namespace: str | None = None
    cluster_name: str | None = None

    def __hash__(self) -> int:  # Inspect keys caches by config; dict fields don't hash
        return hash(self.model_dump_json())

    def to_spec(self) -> DockerSpec | KubernetesSpec:
        """The spec each sample's sandbox is provisioned from (:class:`SpecError` if invalid)."""
        fields: dict[str, Any] = {
            "image": self.image,
            "env": self.env,
            "cpu": self.cpu,
            "memory": self.memory,
            "pids_limit": self.pids_limit,
            "disk": self.disk,
            "run_as_root": self.run_as_root,
            "ttl": self.ttl,
            "ready_timeout": self.ready_timeout,
            "destroy_timeout": self.destroy_timeout,
            "name_prefix": "inspect",
            "labels": self.labels,
            "region": self.region,
            "resource_group": self.resource_group,
            "project_id": self.project_id,
        }
        if self.screen is not None:
            fields["screen"] = self.screen
        # Set only: a Kubernetes field on another platform is an error, not a default.
        for name in ("namespace", "cluster_name"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return spec_for(self.platform, options=self.options, **fields)


def load_config(config: object) -> CommandLabSandboxConfig:
    """Inspect's ``config`` as ours: None, our model, a dict, or a YAML/JSON file's path."""
    if config is None:
        return CommandLabSandboxConfig()
    if isinstance(config, CommandLabSandboxConfig):
        return config
    data: object = config
    if isinstance(config, str):
        data = _read_file(Path(config))
    elif isinstance(config, BaseModel):
        raise SpecError("config", f"must be a CommandLabSandboxConfig, got {type(config).__name__}")
    if not isinstance(data, dict):
        raise SpecError("config", f"must be a mapping of options, got {type(data).__name__}")
    try:
        return CommandLabSandboxConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise SpecError("config", problems) from None


def _read_file(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError("config", f"{path} is not valid JSON: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml  # Inspect depends on PyYAML

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError("config", f"{path} is not valid YAML: {exc}") from None
    raise SpecError("config", f"{path}: a commandlab config is a .yaml, .yml or .json file")
