"""The computer image built from the packaged Dockerfile: ``build_image``, ``commandlab
image build`` and the automatic build of the missing default image, on the real engine.

Every build here goes to a throwaway tag, on the locally built base (no registry), and the
tag is removed afterwards; the automatic build is pointed at a throwaway default
(``images.DEFAULT_TAG``) so that the image other tests use is never deleted.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from commandlab_async import (
    BackendError,
    DockerSpec,
    EventKind,
    ImageBuildError,
    LifecycleEvent,
    build_image,
    provision,
    provision_many,
)
from commandlab_async.platforms.docker import images
from tests.conftest import BASE_IMAGE, ENGINE_ENV, NO_PYTHON_BASE_IMAGE, docker, run_cli

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def _label(image: str) -> str:
    return docker(
        "image", "inspect", "-f", '{{ index .Config.Labels "commandlab.daemon-sha" }}', image
    ).strip()


def _exists(image: str) -> bool:
    found = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, env=ENGINE_ENV
    )
    return found.returncode == 0


@pytest.fixture
def throwaway() -> Iterator[list[str]]:
    """Names for throwaway images (call ``new()``), each removed after the test."""
    names: list[str] = []
    yield names
    if names:
        subprocess.run(["docker", "rmi", "-f", *names], capture_output=True, env=ENGINE_ENV)


def _tag(names: list[str], what: str = "computer") -> str:
    name = f"commandlab-test/{what}:{uuid.uuid4().hex[:12]}"
    names.append(name)
    return name


async def test_the_cli_builds_an_image_that_provisions_and_is_not_rebuilt(
    throwaway: list[str],
) -> None:
    tag = _tag(throwaway)
    done = run_cli("image", "build", "--base", BASE_IMAGE, "--tag", tag)
    assert done.returncode == 0, done.stderr
    said = done.stderr.decode()
    assert f"building {tag} from {BASE_IMAGE}" in said
    assert "Step 1/" in said
    assert f"built {tag} in" in said
    assert " ---> " not in said  # the builder's bookkeeping is not progress
    assert done.stdout == b""
    sha = _label(tag)
    async with provision(DockerSpec(image=tag)) as computer:
        result = await computer.run("echo built; id -un")
        assert result.stdout == "built\ncomputer\n"

    lines: list[str] = []
    assert await build_image(base=BASE_IMAGE, tag=tag, progress=lines.append) is False
    assert lines == [f"{tag} is up to date (commandlab.daemon-sha={sha})"]


async def test_a_desktop_image_is_built_on_a_base_with_an_x_server(
    throwaway: list[str],
) -> None:
    base = "commandlab/desktop-base:bookworm"  # made by scripts/build-images.sh desktop
    if not _exists(base):
        pytest.skip(f"{base} is not on the engine")
    tag = _tag(throwaway, "desktop")
    assert await build_image(base=base, tag=tag, desktop=True) is True
    labels = docker("image", "inspect", "-f", "{{json .Config.Labels}}", tag)
    assert '"commandlab.desktop":"xvfb"' in labels
    assert await build_image(base=base, tag=tag, desktop=True) is False
    # The same base as a plain computer image: another image, built.
    assert await build_image(base=base, tag=tag) is True


async def test_a_base_the_engine_cannot_get_is_an_image_build_error(
    throwaway: list[str],
) -> None:
    tag = _tag(throwaway)
    with pytest.raises(ImageBuildError) as info:
        await build_image(base="commandlab-test/no-such-base:nope", tag=tag)
    error = info.value
    assert isinstance(error, BackendError)
    assert error.image == tag
    assert f"could not build {tag} from commandlab-test/no-such-base:nope" in str(error)
    assert any("FROM ${BASE}" in line for line in error.log)  # the build's last lines
    assert not _exists(tag)


async def test_a_failed_step_shows_the_last_lines_of_the_build(throwaway: list[str]) -> None:
    tag = _tag(throwaway)
    with pytest.raises(ImageBuildError) as info:
        await build_image(base=NO_PYTHON_BASE_IMAGE, tag=tag)
    assert "python3: not found" in "\n".join(info.value.log)
    assert "python3: not found" in str(info.value)
    assert not _exists(tag)


async def test_a_missing_default_image_is_built_once_for_a_fleet_before_its_deadline(
    throwaway: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    default = _tag(throwaway)
    monkeypatch.setattr(images, "DEFAULT_TAG", default)
    monkeypatch.setenv("COMMANDLAB_IMAGE_BASE", BASE_IMAGE)
    monkeypatch.delenv("COMMANDLAB_AUTO_BUILD", raising=False)
    caplog.set_level(logging.INFO, logger="commandlab_async")
    events: list[LifecycleEvent] = []
    async with provision_many(DockerSpec(image=default), count=3, on_event=events.append) as fleet:
        results = [await c.run("echo up") for c in fleet]
        assert [r.stdout for r in results] == ["up\n"] * 3
    said = [r for r in caplog.records if r.name == "commandlab_async"]
    starts = [r for r in said if "is not on the engine: building it" in r.getMessage()]
    assert len(starts) == 1, [r.getMessage() for r in said]
    assert BASE_IMAGE in starts[0].getMessage()
    (built,) = [r for r in said if r.getMessage().startswith(f"built {default} in")]
    assert any(r.levelno == logging.INFO and "Step 1/" in r.getMessage() for r in said)
    # The ready deadline starts with the create: after the build.
    creating = [e.at for e in events if e.kind is EventKind.CREATING]
    assert len(creating) == 3
    assert min(creating) >= built.created
    assert _label(default)  # it exists, labelled with its inputs' hash

    # Present now: the next provision builds nothing.
    caplog.clear()
    async with provision(DockerSpec(image=default)):
        pass
    assert not [r for r in caplog.records if "building" in r.getMessage()]


async def test_auto_build_can_be_turned_off(
    throwaway: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _tag(throwaway)
    monkeypatch.setattr(images, "DEFAULT_TAG", default)
    monkeypatch.setenv("COMMANDLAB_IMAGE_BASE", BASE_IMAGE)
    monkeypatch.setenv("COMMANDLAB_AUTO_BUILD", "0")
    with pytest.raises(BackendError, match="is not on the engine") as info:
        async with provision(DockerSpec(image=default)):
            pytest.fail("the body must not run")
    assert f"commandlab image build --tag {default}" in str(info.value)
    assert not _exists(default)


async def test_a_missing_image_of_theirs_says_how_to_get_it() -> None:
    image = "commandlab-test/theirs:nope"
    with pytest.raises(BackendError, match="is not on the engine") as info:
        async with provision(DockerSpec(image=image)):
            pytest.fail("the body must not run")
    assert f"docker pull {image}" in str(info.value)
    assert "scripts/" not in str(info.value)
    assert not isinstance(info.value, ImageBuildError)


@pytest.mark.unit
def test_the_hash_is_the_one_of_build_images_sh() -> None:
    """The label of the image scripts/build-images.sh builds: one is not rebuilt by the other."""
    script = (
        "export LC_ALL=C; { for f in commandlab_async/daemon/*.py "
        'commandlab_async/image/Dockerfile; do echo "$f"; cat "$f"; done; echo "$0"; } '
        "| sha256sum | cut -c1-16"
    )
    done = subprocess.run(
        ["bash", "-c", script, BASE_IMAGE], capture_output=True, text=True, cwd=REPO, check=True
    )
    files = images._package_files()
    assert images._inputs_sha(files, BASE_IMAGE, "", None) == done.stdout.strip()
