"""A user program that holds a fleet until killed: ``python -m tests.holder COUNT [IMAGE]``.

Prints ``ready`` once the fleet is up. Signal and crash tests run it as a subprocess.
"""

from __future__ import annotations

import asyncio
import sys

from commandlab_async import DEFAULT_IMAGE, DockerSpec, provision_many


async def main(count: int, image: str) -> None:
    async with provision_many(DockerSpec(image=image, ready_timeout=600), count=count):
        print("ready", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else DEFAULT_IMAGE))
