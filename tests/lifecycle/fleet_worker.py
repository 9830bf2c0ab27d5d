"""A fleet in a process of its own: ``python -m tests.lifecycle.fleet_worker COUNT READY DESTROY``.

Run by test_fleet against an engine that stops answering: once it has exited, ``gc`` may
judge what it left as orphaned. Creates are paced (two in flight, one a second) so that
the engine's hang finds members up, members creating and members queued. Prints one JSON
line: its session id, the ``time.monotonic()`` of each lifecycle event and of its start and
end, and the error the fleet raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from commandlab_async import (
    DockerSpec,
    FleetError,
    LifecycleEvent,
    Limits,
    provision_many,
    set_limits,
)
from commandlab_async._lifecycle.identity import SESSION_ID


async def main(count: int, ready: float, destroy: float) -> None:
    set_limits("docker", Limits(creates_in_flight=2, creates_per_second=1, create_burst=1))
    events: list[tuple[str, str, float]] = []

    def on_event(event: LifecycleEvent) -> None:
        events.append((event.kind.value, event.sandbox, time.monotonic()))

    spec = DockerSpec(ready_timeout=ready, destroy_timeout=destroy)
    started = time.monotonic()
    error = None
    try:
        async with provision_many(spec, count=count, on_event=on_event):
            pass
    except FleetError as exc:
        error = {"type": type(exc).__name__, "failed": [type(e).__name__ for e in exc.exceptions]}
    result = {
        "session": SESSION_ID,
        "started": started,
        "ended": time.monotonic(),
        "error": error,
        "events": events,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
