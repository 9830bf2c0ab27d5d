"""The labels (tags) every sandbox carries, set before it is created, and what they mean.

Every sandbox of ours carries ``commandlab.managed=true``; filter by any of these with
:func:`~commandlab_async.list_sandboxes`, ``commandlab ls -l KEY=VALUE`` or the backend's
own tools. Keys under ``commandlab.`` are reserved: a spec's ``labels`` may not set them
(:func:`~commandlab_async.labelled` may, for our own tools and frameworks built on us).
"""

from __future__ import annotations

__all__ = [
    "CREATED_AT",
    "DETACHED",
    "EXPIRES_AT",
    "HOST",
    "LABEL_PREFIX",
    "MANAGED",
    "NEVER",
    "OWNER_NS",
    "PID",
    "PID_START",
    "POOL",
    "SESSION",
    "TEST_RUN",
    "WORKER",
]

LABEL_PREFIX = "commandlab."
MANAGED = LABEL_PREFIX + "managed"
"""``true`` on every sandbox we create: what listings and the reaper look for."""
SESSION = LABEL_PREFIX + "session"
"""A random id of the Python process that created it."""
PID = LABEL_PREFIX + "pid"
"""The owner process's pid (absent on detached sandboxes)."""
HOST = LABEL_PREFIX + "host"
"""The owner's host name, for humans only."""
OWNER_NS = LABEL_PREFIX + "owner-ns"
"""A digest of the owner's boot id and PID and time namespaces: where its pid means it."""
PID_START = LABEL_PREFIX + "pid-start"
"""The owner's start time in clock ticks since boot: with the pid, one process."""
CREATED_AT = LABEL_PREFIX + "created-at"
"""Epoch seconds."""
EXPIRES_AT = LABEL_PREFIX + "expires-at"
"""Epoch seconds when its TTL ends, or :data:`NEVER`."""
DETACHED = LABEL_PREFIX + "detached"
"""``true`` when it belongs to no process (``commandlab up``): judged by its TTL alone."""
TEST_RUN = LABEL_PREFIX + "test-run"
"""The pytest plugin's run id."""
WORKER = LABEL_PREFIX + "worker"
"""The pytest-xdist worker (``main`` without xdist)."""
POOL = LABEL_PREFIX + "pool"
"""The warm pool it was made for."""
NEVER = "never"
"""The value of :data:`EXPIRES_AT` for a sandbox without a TTL."""
