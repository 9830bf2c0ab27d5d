"""The desktop on a real X server in the desktop image: each test checks the effect (what
an app received, what the screen shows), not the call."""

from __future__ import annotations

import asyncio

import pytest

from commandlab_async import (
    Computer,
    DesktopUnavailableError,
    DockerSpec,
    InvalidActionError,
    UnsupportedOperationError,
    provision,
)
from commandlab_async._client.desktop import Actions
from tests.desktop.conftest import start_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

SAMPLES = "ASCII: Hello, World! ~`|\\ é ß ø Ñ 漢字かな한국어 😀🎉👍🏽\tTab\nnew line\n"


async def test_typed_text_arrives_exactly(desktop: Computer) -> None:
    app = await start_app(desktop, "typed")
    await desktop.desktop.type(SAMPLES)
    assert await app.typed(SAMPLES) == SAMPLES


async def test_ten_thousand_characters_arrive_exactly(desktop: Computer) -> None:
    pool = "abcdefghijklmnopqrstuvwxyz ABC 0123456789 !?.,;:'\"()[]{}<>/\\@#$%^&*-_=+`~|" * 3
    pool += "é ß ø 漢字 かな 😀 \t\n"
    text = "".join(pool[(i * 7919) % len(pool)] for i in range(10_000))
    app = await start_app(desktop, "typed")
    await desktop.desktop.type(text)
    assert await app.typed(text, timeout=60) == text


@pytest.mark.parametrize(("button", "number"), [("left", 1), ("middle", 2), ("right", 3)])
async def test_clicks_land_on_the_pixel_asked_for(
    desktop: Computer, button: str, number: int
) -> None:
    app = await start_app(desktop, "events")
    for count, (x, y) in zip((1, 2, 3), ((123, 456), (1279, 0), (0, 799)), strict=False):
        await desktop.desktop.click(x, y, button=button, count=count)  # type: ignore[arg-type]
    presses = [(e["x"], e["y"], e["button"]) for e in await app.events() if e["kind"] == "press"]
    assert presses == [(123, 456, number)] + [(1279, 0, number)] * 2 + [(0, 799, number)] * 3


async def test_a_click_holds_the_modifiers_asked_for(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    await desktop.desktop.click(200, 200, keys=["CTRL", "shift"])
    presses = [e for e in await app.events() if e["kind"] == "press"]
    assert len(presses) == 1
    assert presses[0]["state"] & 0x5 == 0x5  # ShiftMask | ControlMask while it was pressed
    assert (await desktop.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}


async def test_drag_and_scroll_reach_the_app(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    await desktop.desktop.drag([(100, 600), (400, 620), (700, 650)])
    await desktop.desktop.scroll(640, 400, dy=3)
    await desktop.desktop.scroll(640, 400, dy=-2)
    await desktop.desktop.scroll(640, 400, dy=-100, unit="pixel")  # two wheel clicks up
    events = await app.events()
    presses = [(e["x"], e["y"], e["button"]) for e in events if e["kind"] == "press"]
    assert presses[0] == (100, 600, 1)
    drags = [(e["x"], e["y"]) for e in events if e["kind"] == "drag"]
    assert drags[-1] == (700, 650)
    assert any(350 <= x <= 450 for x, _y in drags)  # the app saw the path, not a jump
    assert all(100 <= x <= 700 and 600 <= y <= 650 for x, y in drags)
    release = next(e for e in events if e["kind"] == "release" and e["button"] == 1)
    assert (release["x"], release["y"]) == (700, 650)
    wheel = [b for _x, _y, b in presses[1:]]
    assert wheel == [5, 5, 5, 4, 4, 4, 4]


async def test_key_combinations_reach_the_app(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    await desktop.desktop.press("ctrl+shift+t")
    await desktop.desktop.press(["CTRL", "A"])
    await desktop.desktop.press("Enter")
    keys = [(e["keysym"], e["state"] & 0x5) for e in await app.events() if e["kind"] == "key"]
    assert keys == [
        ("Control_L", 0),
        ("Shift_L", 4),
        ("T", 5),
        ("Control_L", 0),
        ("a", 4),
        ("Return", 0),
    ]


async def test_clipboard_round_trips_through_other_apps(desktop: Computer) -> None:
    text = "héllo 漢字 😀\nsecond line"
    await desktop.desktop.set_clipboard(text)
    assert await desktop.desktop.clipboard() == text
    # Another X client pastes what the daemon holds...
    pasted = await desktop.run(["xclip", "-o", "-selection", "clipboard"])
    assert pasted.stdout == text
    # ... and the daemon reads what another client holds.
    await desktop.run(
        ["sh", "-c", "printf 'from xclip: ø' | xclip -i -selection clipboard >/dev/null 2>&1"]
    )
    await asyncio.sleep(0.2)
    assert await desktop.desktop.clipboard() == "from xclip: ø"


async def test_screenshots_read_known_colours_back_exactly(desktop: Computer) -> None:
    await start_app(desktop, "events")
    shot = await desktop.desktop.screenshot(settle=True)
    assert (shot.width, shot.height, shot.scale_x, shot.region) == (
        1280,
        800,
        1.0,
        (0, 0, 1280, 800),
    )
    assert shot.pixel(100, 100) == (255, 0, 0)
    assert shot.pixel(349, 149) == (0, 255, 0)
    assert shot.pixel(525, 125) == (0, 0, 255)
    assert shot.pixel(710, 340) == (0x12, 0x34, 0x56)
    assert shot.pixel(99, 99) == (255, 255, 255)
    assert shot.capture == "shm"

    region = await desktop.desktop.screenshot(region=(300, 100, 50, 50))
    assert (region.width, region.height) == (50, 50)
    assert region.pixel(0, 0) == region.pixel(49, 49) == (0, 255, 0)
    assert region.to_screen(10, 20) == (310, 120)

    small = await desktop.desktop.screenshot(fit=(640, 400))
    assert (small.width, small.height, small.scale_x, small.scale_y) == (640, 400, 2.0, 2.0)
    assert small.pixel(55, 55) == (255, 0, 0)  # screen (110, 110)
    assert small.to_screen(55, 55) == (111, 111)
    odd = await desktop.desktop.screenshot(fit=(1000, 1000))
    assert (odd.width, odd.height) == (1000, 625)
    assert odd.to_screen(999, 624) == (1279, 799)


async def test_a_batch_runs_in_one_round_trip_and_ends_with_the_settled_screen(
    desktop: Computer,
) -> None:
    app = await start_app(desktop, "events")
    result = await desktop.desktop.batch(
        Actions().move(10, 10).click(600, 500).press("c").cursor().set_clipboard("x").clipboard()
    )
    assert result.settled is True
    assert result.screenshot is not None
    assert result.screenshot.pixel(5, 5) == (0, 255, 255)
    assert result.results[3] == {"cursor": [600, 500]}
    assert result.results[5] == {"text": "x"}
    assert result.cursor == (600, 500)
    assert [e["kind"] for e in await app.events()].count("press") == 1


async def test_cancelling_a_batch_releases_what_it_pressed(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    batch = Actions().key_down("shift").mouse_down(300, 300).key_down("ctrl").wait(30)
    task = asyncio.create_task(desktop.desktop.batch(batch))
    await asyncio.sleep(1.0)
    info = await desktop.desktop.info()
    assert info["pressed"] == {"buttons": [1], "modifiers": ["shift", "control"]}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if (await desktop.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}:
            break
        await asyncio.sleep(0.05)
    assert (await desktop.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}
    kinds = [(e["kind"], e.get("keysym") or e.get("button")) for e in await app.events()]
    assert ("release", 1) in kinds
    assert ("key_up", "Shift_L") in kinds


async def test_held_keys_and_buttons_stay_held_until_asked(desktop: Computer) -> None:
    await desktop.desktop.key_down("shift")
    await desktop.desktop.mouse_down(100, 100, button="right")
    assert (await desktop.desktop.info())["pressed"] == {"buttons": [3], "modifiers": ["shift"]}
    await desktop.desktop.mouse_up(button="right")
    await desktop.desktop.key_up("Shift_L")
    assert (await desktop.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}


async def test_bad_input_fails_typed_before_anything_is_sent(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    with pytest.raises(InvalidActionError, match="did you mean") as caught:
        await desktop.desktop.press("ctrl+Entr")
    assert "Enter" in str(caught.value)
    with pytest.raises(InvalidActionError, match="off the screen"):
        await desktop.desktop.click(1280, 10)
    with pytest.raises(InvalidActionError, match="must move"):
        await desktop.desktop.drag([(5, 5), (5, 5)])
    with pytest.raises(InvalidActionError, match="at least two"):
        await desktop.desktop.drag([(5, 5)])
    with pytest.raises(InvalidActionError, match="action 1") as in_batch:
        await desktop.desktop.batch(Actions().click(1, 1).scroll(1, 1))
    assert in_batch.value.index == 1
    assert await app.events() == []  # not even the batch's valid first click was sent


async def test_windows_and_launch(desktop: Computer) -> None:
    await desktop.run("pkill xterm; true")
    await desktop.desktop.launch(["xterm", "-T", "launched-term", "-geometry", "40x10+50+60"])
    for _ in range(100):
        titles = [w.title for w in await desktop.desktop.windows()]
        if "launched-term" in titles:
            break
        await asyncio.sleep(0.05)
    window = next(w for w in await desktop.desktop.windows() if w.title == "launched-term")
    assert window.width > 100
    assert window.height > 50
    assert window.pid is not None


async def test_an_image_without_a_desktop_says_which_image_has_one() -> None:
    async with provision(DockerSpec()) as computer:
        with pytest.raises(UnsupportedOperationError, match="commandlab/desktop:latest"):
            await computer.desktop.screenshot()


async def test_a_dead_x_server_is_a_typed_error_and_the_sandbox_still_goes(
    desktop_image: str,
) -> None:
    async with provision(DockerSpec(image=desktop_image, screen=(800, 600))) as computer:
        assert (await computer.desktop.size()) == (800, 600)
        assert (await computer.run("pkill -KILL Xvfb")).ok
        await asyncio.sleep(0.3)
        with pytest.raises(DesktopUnavailableError, match="exited"):
            await computer.desktop.screenshot()
        health = await computer.health()
        assert "exited" in health["desktop"]["failure"]
        assert (await computer.run("echo still here")).stdout == "still here\n"


# Inside the sandbox: a second X server without MIT-SHM, driven by the daemon's own code.
_CORE_PATH = r"""
import subprocess, sys, time, os
sys.path.insert(0, "/opt/commandlab/daemon.pyz")
from commandlab_daemon.desktop import open_session
from commandlab_daemon import png
server = subprocess.Popen(["Xvfb", ":7", "-screen", "0", "320x200x24", "-nolisten", "tcp",
                           "-extension", "MIT-SHM"], stderr=subprocess.DEVNULL)
try:
    while not os.path.exists("/tmp/.X11-unix/X7"):
        time.sleep(0.01)
    session = open_session(7)
    shot = session.screenshot(None, None)
    width, height, _rgb = png.decode(__import__("base64").b64decode(shot["png"]))
    print(session.capture_kind, shot["capture"], width, height)
    session.detach()
finally:
    server.kill()
"""


async def test_without_shared_memory_the_core_path_captures_and_says_so(
    desktop: Computer,
) -> None:
    await desktop.write_file("/tmp/core_path.py", _CORE_PATH.encode())
    result = await desktop.run(["python3", "/tmp/core_path.py"], timeout=30)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["core", "core", "320", "200"]


async def test_a_stopped_x_server_is_a_typed_error_in_bounded_time(desktop_image: str) -> None:
    """An X server that stops reading and answering: the call fails within the X reply
    timeout (5 s) instead of holding the desktop, even with more to write than a socket
    holds (a long text's key events)."""
    async with provision(DockerSpec(image=desktop_image)) as computer:
        assert (await computer.run("pkill -STOP Xvfb")).ok
        start = asyncio.get_running_loop().time()
        with pytest.raises(DesktopUnavailableError):
            await computer.desktop.type("x" * 200_000)
        assert asyncio.get_running_loop().time() - start < 15
        with pytest.raises(DesktopUnavailableError):
            await computer.desktop.screenshot()
        await computer.run("pkill -CONT Xvfb")
