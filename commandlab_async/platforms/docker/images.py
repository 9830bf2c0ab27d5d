"""Build the computer image from the Dockerfile this package carries: no clone needed.

The build context is made in memory from the installed package's own files (the daemon's
modules and ``image/``), sent to the engine with the base as a build argument. The image
is labelled with the hash of its inputs (``commandlab.daemon-sha``, the same hash as
``scripts/build-images.sh``'s for the computer image), so an image already built from the
same inputs is not built again.

On local Docker, a provision whose image is the default one (:data:`DEFAULT_TAG`) and
missing on the engine builds it first, once per driver (a fleet's members wait for the one
build): on ``$COMMANDLAB_IMAGE_BASE`` or ``python:3.12-slim``, unless
``COMMANDLAB_AUTO_BUILD=0``. It happens before the sandbox's ``ready_timeout`` starts and
before it takes a create slot: a first build (minutes with a pull) is not the sandbox's.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from ...errors import ImageBuildError
from ...specs import DEFAULT_IMAGE

if TYPE_CHECKING:
    import aiodocker

__all__ = [
    "AUTO_BUILD_ENV",
    "BASE_ENV",
    "DEFAULT_BASE",
    "DEFAULT_TAG",
    "auto_build",
    "build",
    "build_image",
    "missing_image_message",
]

log = logging.getLogger("commandlab_async")

DEFAULT_BASE = "python:3.12-slim"
"""The base a build uses when none is named: public, Debian-like, with python3."""
BASE_ENV = "COMMANDLAB_IMAGE_BASE"
AUTO_BUILD_ENV = "COMMANDLAB_AUTO_BUILD"
DEFAULT_TAG = DEFAULT_IMAGE
"""The image a local provision builds when it is missing. A module attribute so that tests
can point it at a throwaway name (and not delete the image other tests use)."""
SHA_LABEL = "commandlab.daemon-sha"
_DOCKERFILE = "image/Dockerfile"
_DESKTOP_FILES = ("image/inspect_computer_tool.py",)  # hashed for a desktop image only
_TAIL = 15  # lines of the build's output an error shows

Progress = Callable[[str], None]


def default_base() -> str:
    """The base to build on when none is named: ``$COMMANDLAB_IMAGE_BASE`` or python:3.12-slim."""
    return os.environ.get(BASE_ENV, "").strip() or DEFAULT_BASE


def auto_build_enabled() -> bool:
    """False when ``COMMANDLAB_AUTO_BUILD`` is 0 (or false/no/off)."""
    value = os.environ.get(AUTO_BUILD_ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


def missing_image_message(image: str) -> str:
    """Why ``image`` cannot be used, and the command that makes it (no clone needed)."""
    if image == DEFAULT_TAG:
        how = (
            f"build it: commandlab image build --tag {image} (automatic unless {AUTO_BUILD_ENV}=0)"
        )
    elif image.startswith("commandlab/desktop"):
        how = (
            "build it on a base that has Xvfb, openbox and python3: commandlab image build "
            f"--desktop --base BASE --tag {image}"
        )
    else:
        how = f"pull it (docker pull {image}) or build it (docker build -t {image} ...)"
    return f"image {image!r} is not on the engine; {how}"


def _package_files() -> list[tuple[str, bytes]]:
    """(path in the build context, content): the daemon's modules, then ``image/``'s files,
    each group in byte order (the order of scripts/build-images.sh's hash, LC_ALL=C)."""
    import importlib.resources  # here, not at import: only a build needs it (start-up)

    package = importlib.resources.files("commandlab_async")
    found: list[tuple[str, bytes]] = []
    for folder, keep in (("daemon", (".py",)), ("image", ("Dockerfile", ".py", ".packages"))):
        entries = [e for e in package.joinpath(folder).iterdir() if e.name.endswith(keep)]
        for entry in sorted(entries, key=lambda e: e.name.encode()):
            found.append((f"{folder}/{entry.name}", entry.read_bytes()))
    return found


def _inputs_sha(
    files: list[tuple[str, bytes]], base: str, desktop: str, base_id: str | None
) -> str:
    """The hash of what the image is built from, as scripts/build-images.sh computes it:
    each daemon module's path and content, the Dockerfile's, (a desktop image) the files
    it copies, the base's name; for a desktop image also DESKTOP and the base's id."""
    hashed = [(p, d) for p, d in files if p.startswith("daemon/")]
    hashed += [(p, d) for p, d in files if p == _DOCKERFILE]
    if desktop:
        hashed += [(p, d) for p, d in files if p in _DESKTOP_FILES]
    digest = hashlib.sha256()
    for path, data in hashed:
        digest.update(f"commandlab_async/{path}\n".encode())
        digest.update(data)
    digest.update(f"{base}\n".encode())
    if desktop:
        digest.update(f"{desktop}\n{base_id or ''}\n".encode())
    return digest.hexdigest()[:16]


def _context(files: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of ``files``, with fixed owners, modes and times."""
    import tarfile  # here, not at import: only a build needs it (start-up)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _lines(item: Mapping[str, Any]) -> list[str]:
    """The lines worth showing of one item of the engine's build stream (a pull's
    progress bars are not: only its statuses; nor the builder's bookkeeping)."""
    if isinstance(stream := item.get("stream"), str):
        return [line for line in stream.splitlines() if line.strip() and not _noise(line)]
    status = item.get("status")
    if isinstance(status, str) and "progress" not in item:
        layer = item.get("id")
        return [f"{layer}: {status}" if isinstance(layer, str) else status]
    return []


def _noise(line: str) -> bool:
    """The legacy builder's bookkeeping: layer ids, cache hits, removed containers."""
    return line.startswith((" ---> ", "Removing intermediate container"))


async def _inspect(docker: aiodocker.Docker, image: str) -> dict[str, Any] | None:
    """``image``'s inspect document; None when the engine does not have it."""
    import aiodocker

    try:
        info: dict[str, Any] = await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    return info


async def build(
    docker: aiodocker.Docker,
    *,
    base: str,
    tag: str,
    desktop: bool,
    progress: Progress | None,
    hint: str = "",
) -> bool:
    """Build ``tag`` on ``docker`` unless it was built from the same inputs; True if built.
    ``hint`` ends the message of the error, if one is raised."""
    import aiodocker

    say = progress or (lambda line: None)
    kind = "xvfb" if desktop else ""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
    try:
        files = await asyncio.to_thread(_package_files)
        base_id = None
        if desktop:  # a rebuilt base rebuilds a desktop image (its packages are the point)
            base_id = ((await _inspect(docker, base)) or {}).get("Id")
        sha = _inputs_sha(files, base, kind, base_id)
        labels = ((await _inspect(docker, tag)) or {}).get("Config", {}).get("Labels") or {}
        if labels.get(SHA_LABEL) == sha:
            say(f"{tag} is up to date ({SHA_LABEL}={sha})")
            return False
        say(f"building {tag} from {base}")
        stream = docker.images.build(
            fileobj=io.BytesIO(_context(files)),
            encoding="identity",
            path_dockerfile=_DOCKERFILE,
            tag=tag,
            buildargs={"BASE": base, "DAEMON_SHA": sha, **({"DESKTOP": kind} if kind else {})},
            forcerm=True,
            stream=True,
        )
        async for item in stream:
            for line in _lines(item):
                tail.append(line)
                say(line)
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        reason = exc.message if isinstance(exc, aiodocker.DockerError) else repr(exc)
        raise ImageBuildError(
            f"could not build {tag} from {base}: {reason}{hint}", image=tag, log=list(tail)
        ) from exc
    return True


async def auto_build(docker: aiodocker.Docker, image: str) -> None:
    """Build the missing default image, its progress said through the library's logger."""
    base = default_base()
    log.warning(
        "image %s is not on the engine: building it on %s (once; set %s to another base, "
        "or %s=0 to never build it)",
        image,
        base,
        BASE_ENV,
        AUTO_BUILD_ENV,
    )
    started = time.monotonic()
    await build(
        docker,
        base=base,
        tag=image,
        desktop=False,
        progress=lambda line: log.info("build: %s", line),
        hint=f" (built as it was missing: set {BASE_ENV} to a base the engine has or can "
        "pull, or build it yourself: commandlab image build --base BASE)",
    )
    log.warning("built %s in %.1fs", image, time.monotonic() - started)


async def build_image(
    *,
    base: str | None = None,
    tag: str = DEFAULT_IMAGE,
    desktop: bool = False,
    progress: Progress | None = None,
    docker_host: str | None = None,
) -> bool:
    """Build the computer image from the Dockerfile this package carries; True if built,
    False if ``tag`` was already built from the same inputs.

    ``base`` is the image to build ``FROM``: Debian-like, with python3 3.9 or later
    (default: ``$COMMANDLAB_IMAGE_BASE``, else ``python:3.12-slim``, which the engine pulls
    if it lacks it). ``desktop=True`` builds a desktop image (``computer.desktop``): the
    base must hold Xvfb, openbox and the fonts (see ``image/desktop.packages``).
    ``progress`` receives each line of the build's output. ``docker_host`` names the
    engine (default: ``$DOCKER_HOST``, else the local socket).

    Raises :class:`ImageBuildError` with the build's last lines when the engine cannot
    build it (a base it cannot pull, a failed step, no engine).
    """
    import aiodocker

    docker = aiodocker.Docker(url=docker_host or os.environ.get("DOCKER_HOST") or None)
    try:
        return await build(
            docker, base=base or default_base(), tag=tag, desktop=desktop, progress=progress
        )
    finally:
        await docker.close()
