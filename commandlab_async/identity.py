"""Who a sandbox is, decided before the backend is asked to create it.

Because the name and labels exist before the create call, a create that is interrupted
after the backend accepted it can still be found and deleted, and the reaper can tell which
process on which host owns a sandbox.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .specs import Spec

__all__ = ["LABEL_PREFIX", "SESSION_ID", "SandboxIdentity", "new_identity", "owner_labels"]

LABEL_PREFIX = "commandlab."
MANAGED = LABEL_PREFIX + "managed"
SESSION = LABEL_PREFIX + "session"
PID = LABEL_PREFIX + "pid"
HOST = LABEL_PREFIX + "host"
CREATED_AT = LABEL_PREFIX + "created-at"
EXPIRES_AT = LABEL_PREFIX + "expires-at"
NEVER = "never"

#: Identifies this process's sandboxes (with the pid and host labels) for the reaper.
SESSION_ID = secrets.token_hex(8)


@dataclass(frozen=True)
class SandboxIdentity:
    """Name, labels and token of one sandbox. The token is kept out of ``repr``."""

    name: str
    labels: dict[str, str]
    created_at: float
    expires_at: float | None
    token: str = field(repr=False)


def owner_labels() -> dict[str, str]:
    """Labels that identify this process as the owner of a sandbox."""
    return {
        MANAGED: "true",
        SESSION: SESSION_ID,
        PID: str(os.getpid()),
        HOST: socket.gethostname()[:63],
    }


def new_identity(spec: Spec) -> SandboxIdentity:
    """Choose the name, labels and token of a new sandbox."""
    now = time.time()
    expires_at = None if spec.ttl is None else now + spec.ttl
    labels = dict(spec.labels)
    labels.update(owner_labels())
    labels[CREATED_AT] = str(int(now))
    labels[EXPIRES_AT] = NEVER if expires_at is None else str(int(expires_at) + 1)
    return SandboxIdentity(
        name=f"{spec.name_prefix}-{secrets.token_hex(6)}",
        labels=labels,
        created_at=now,
        expires_at=expires_at,
        token=secrets.token_urlsafe(32),
    )
