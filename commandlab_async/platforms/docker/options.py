"""Options and target of the local Docker Engine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from ...errors import SpecError
from ..base import DockerPlatform, PlatformOptions, Target, take_scope

if TYPE_CHECKING:
    from ...specs import Spec

__all__ = ["DockerOptions", "DockerTarget"]


@dataclass(frozen=True, kw_only=True)
class DockerTarget(Target):
    """One Docker Engine, as ``DOCKER_HOST`` names it (None: the local socket)."""

    host: str | None = None


Transport = Literal["auto", "unix", "tcp"]


@dataclass(frozen=True, kw_only=True)
class DockerOptions(PlatformOptions):
    """Options of :attr:`DockerPlatform.LOCAL`."""

    platform: ClassVar[DockerPlatform] = DockerPlatform.LOCAL
    target_class: ClassVar[type[DockerTarget]] = DockerTarget
    defaults: ClassVar[dict[str, object]] = {"pids_limit": 1024}

    transport: Transport = "auto"
    """How the client reaches the daemon. ``unix``: a Unix socket in a private host
    directory mounted into the sandbox (no published port, no port proxy, faster to
    delete; needed by ``network="none"``). ``tcp``: a port published on 127.0.0.1.
    ``auto``: ``unix`` for an engine on this machine, ``tcp`` for one that
    ``DOCKER_HOST=tcp://...`` names (it cannot mount our directories)."""

    def __post_init__(self) -> None:
        if self.transport not in ("auto", "unix", "tcp"):
            raise SpecError("transport", f"must be 'auto', 'unix' or 'tcp', got {self.transport!r}")

    def check(self, spec: Spec) -> None:
        if spec.network == "none" and self.transport == "tcp":
            raise SpecError(
                "network",
                "'none' leaves no network to reach a TCP port: use transport 'unix' or 'auto'",
            )

    def uses_unix_socket(self, spec: Spec, target: DockerTarget) -> bool:
        """Whether sandboxes of ``spec`` on ``target`` serve on a Unix socket.

        SpecError when the spec needs one and the engine is not on this machine.
        """
        if self.transport == "tcp":
            return False
        if (target.host or "unix://").startswith("unix://"):
            return True
        if self.transport == "unix" or spec.network == "none":
            field = "transport" if self.transport == "unix" else "network"
            raise SpecError(
                field,
                f"needs the daemon on a Unix socket, but the engine at {target.host} cannot"
                " mount this machine's directories",
            )
        return False

    def target(self, spec: Spec) -> DockerTarget:
        # Read at provisioning time, like aiodocker does: one driver per engine.
        return self.target_from({})

    @classmethod
    def target_from(cls, scope: Mapping[str, str | None]) -> DockerTarget:
        take_scope(scope)
        return DockerTarget(platform=cls.platform, host=os.environ.get("DOCKER_HOST") or None)
