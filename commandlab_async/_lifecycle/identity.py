"""Who a sandbox is, decided before the backend is asked to create it.

Because the name and labels exist before the create call, a create that is interrupted
after the backend accepted it can still be found and deleted, and the reaper can tell which
process owns a sandbox. A pid means something only on one boot of one machine and in one
PID namespace, so the owner labels carry ``owner-ns`` (a digest of the boot id and the PID
and time namespaces) and ``pid-start`` (the process's start time in clock ticks since
boot) beside the pid: together they name one process, even after its pid is reused.
Where /proc cannot tell them, both labels are left out. ``host`` is for humans only.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..labels import (
    CREATED_AT,
    DETACHED,
    EXPIRES_AT,
    HOST,
    MANAGED,
    NEVER,
    OWNER_NS,
    PID,
    PID_START,
    SESSION,
)
from ..platforms.driver import SESSION_ID, SandboxIdentity

if TYPE_CHECKING:
    from ..specs import Spec

__all__ = [
    "SESSION_ID",
    "SandboxIdentity",
    "labelled",
    "new_identity",
    "owner_labels",
    "owner_namespace",
    "process_start_ticks",
]


@dataclass(frozen=True)
class _Owner:
    pid: int
    namespace: str | None
    start: str | None


def _read_owner() -> _Owner:
    pid = os.getpid()
    return _Owner(pid, _read_namespace(pid), process_start_ticks(pid))


def _read_namespace(pid: int) -> str | None:
    try:
        if os.readlink("/proc/self") != str(pid):
            return None  # this /proc shows another PID namespace: its pids are not ours
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    try:  # start times are offset per time namespace (Linux 5.6+)
        time_ns = os.readlink("/proc/self/ns/time")
    except OSError:
        time_ns = ""
    return hashlib.sha256(f"{boot} {pid_ns} {time_ns}".encode()).hexdigest()[:16]


def process_start_ticks(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot, per /proc; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command in field 2 may hold spaces and ")", so count from
    # the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else None


_owner = _read_owner()


def _this_owner() -> _Owner:
    global _owner
    if _owner.pid != os.getpid():  # a forked child: another process, maybe another namespace
        _owner = _read_owner()
    return _owner


def owner_namespace() -> str | None:
    """The ``owner-ns`` label value of this process: where its pids mean something."""
    return _this_owner().namespace


def owner_labels() -> dict[str, str]:
    """Labels that identify this process as the owner of a sandbox."""
    owner = _this_owner()
    labels = {
        MANAGED: "true",
        SESSION: SESSION_ID,
        PID: str(owner.pid),
        HOST: socket.gethostname()[:63],
    }
    if owner.namespace is not None and owner.start is not None:
        labels[OWNER_NS] = owner.namespace
        labels[PID_START] = owner.start
    return labels


@dataclass(frozen=True)
class _Provenance:
    labels: Mapping[str, str]
    owned: bool


_OWNED = _Provenance(MappingProxyType({}), owned=True)
_provenance: ContextVar[_Provenance] = ContextVar("commandlab_provenance", default=_OWNED)


@contextmanager
def labelled(labels: Mapping[str, str], *, owned: bool = True) -> Iterator[None]:
    """Sandboxes created in this context carry ``labels`` (reserved keys allowed) too.

    For our own tools: the pytest plugin's test run and worker, the CLI's ``up``. With
    ``owned=False`` they belong to no process: no owner labels (so the reaper judges
    them by their TTL alone), ``commandlab.detached=true``, and left running when their
    block ends without an error.
    """
    outer = _provenance.get()
    merged = MappingProxyType({**outer.labels, **labels})
    token = _provenance.set(_Provenance(merged, owned=outer.owned and owned))
    try:
        yield
    finally:
        _provenance.reset(token)


def is_detached(labels: Mapping[str, str]) -> bool:
    """Whether a sandbox with these labels belongs to no process (see :func:`labelled`)."""
    return labels.get(DETACHED) == "true"


def new_identity(spec: Spec) -> SandboxIdentity:
    """Choose the name, labels and token of a new sandbox."""
    now = time.time()
    expires_at = None if spec.ttl is None else now + spec.ttl
    provenance = _provenance.get()
    labels = dict(spec.labels)
    labels.update(provenance.labels)
    owner = owner_labels()
    if not provenance.owned:  # no pid, no namespace: nothing for the reaper to judge by
        owner = {k: v for k, v in owner.items() if k in (MANAGED, SESSION, HOST)}
        owner[DETACHED] = "true"
    labels.update(owner)
    labels[CREATED_AT] = str(int(now))
    labels[EXPIRES_AT] = NEVER if expires_at is None else str(int(expires_at) + 1)
    return SandboxIdentity(
        name=f"{spec.name_prefix}-{secrets.token_hex(6)}",
        labels=labels,
        created_at=now,
        expires_at=expires_at,
        token=secrets.token_urlsafe(32),
    )
