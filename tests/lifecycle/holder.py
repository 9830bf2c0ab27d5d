"""A user program holding a fleet until killed: ``python -m tests.lifecycle.holder COUNT [IMAGE]``.

Prints ``ready`` once the fleet is up. Signal and crash tests run it as a subprocess;
``HOLDER_PLATFORM=kubernetes`` makes it hold pods on the cluster ``KUBECONFIG`` names;
``HOLDER_OWN_SIGTERM=signal`` installs the program's own SIGTERM handler first (it prints
``own handler: N sandboxes left`` and exits 3), as a web server's graceful shutdown would;
``=loop`` gives SIGTERM to the event loop, whose callback cancels the program.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from types import FrameType

from commandlab_async import DEFAULT_IMAGE, DockerSpec, KubernetesSpec, provision_many
from commandlab_async.specs import Spec


async def main(count: int, image: str) -> None:
    if os.environ.get("HOLDER_OWN_SIGTERM") == "loop":  # an asyncio app's own shutdown
        task = asyncio.current_task()
        assert task is not None

        def shut_down() -> None:
            print("own loop handler", flush=True)
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, shut_down)
    spec: Spec = DockerSpec(image=image, ready_timeout=600)
    if os.environ.get("HOLDER_PLATFORM") == "kubernetes":  # the cluster KUBECONFIG names
        spec = KubernetesSpec(namespace="sandboxes", image=image, ready_timeout=600)
    async with provision_many(spec, count=count):
        print("ready", flush=True)
        await asyncio.sleep(3600)


def own_sigterm_handler(signum: int, frame: FrameType | None) -> None:
    label = f"label=commandlab.pid={os.getpid()}"
    names = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True
    ).stdout.split()
    print(f"own handler: {len(names)} sandboxes left", flush=True)
    os._exit(3)


if __name__ == "__main__":
    if os.environ.get("HOLDER_OWN_SIGTERM") == "signal":
        signal.signal(signal.SIGTERM, own_sigterm_handler)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else DEFAULT_IMAGE))
