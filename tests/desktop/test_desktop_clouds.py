"""A desktop sandbox on a cloud emulator end to end: Azure Container Instances, whose
daemons serve pinned TLS off loopback (real containers on the local engine)."""

from __future__ import annotations

import pytest

from commandlab_async import Actions, provision
from commandlab_async.emulators.aci import AciEmulator
from tests.platforms.azure_support import aci_spec

pytestmark = pytest.mark.timeout(300)


async def test_a_desktop_on_aci_over_pinned_tls(aci: AciEmulator, desktop_image: str) -> None:
    spec = aci_spec(aci, image=desktop_image, screen=(1024, 768))
    async with provision(spec) as computer:
        assert computer.url.startswith("https://127.0.0.1:")
        desktop = computer.desktop
        assert await desktop.size() == (1024, 768)
        result = await desktop.batch(Actions().move(10, 20).click(500, 400).cursor())
        assert result.results[2] == {"cursor": [500, 400]}
        assert result.screenshot is not None
        assert (result.screenshot.width, result.screenshot.height) == (1024, 768)
        await desktop.set_clipboard("über TLS ✓")
        assert await desktop.clipboard() == "über TLS ✓"
        assert (await computer.health())["desktop"]["failure"] is None
