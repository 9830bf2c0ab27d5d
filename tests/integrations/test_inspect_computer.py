"""Inspect's ``computer()`` tool in commandlab desktop sandboxes, through our tool script
(``commandlab_async/image/inspect_computer_tool.py``, installed where Inspect looks).

First a real Inspect eval: a scripted mock model clicks, presses keys and types into an
xterm through ``computer()``, and the scorer reads what the app received.  Then the
script itself, run in a desktop sandbox as Inspect runs it, for every action: the JSON it
prints and the effect (what an app received, what the screen shows).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest

from commandlab_async import DESKTOP_IMAGE, Computer, DockerSpec, SpecError, provision
from commandlab_async.daemon import png
from commandlab_async.integrations.inspect_sandbox.config import load_config
from tests.conftest import DESKTOP_APPS, docker
from tests.desktop.conftest import App, start_app

ROOT = Path(__file__).resolve().parents[2]
TOOL = "/opt/inspect/tool/computer_tool.py"  # where Inspect's computer() looks
BROWSER_IMAGE = "commandlab/desktop-browser:latest"
EVAL = Path(__file__).parent / "inspect_eval" / "computer_task.py"
SCRIPT = ROOT / "commandlab_async" / "image" / "inspect_computer_tool.py"

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


def build(*images: str) -> None:
    """Build (or rebuild for a changed daemon or tool) the desktop images named."""
    subprocess.run([str(ROOT / "scripts/build-images.sh"), *images], check=True, cwd=ROOT)


# -- Inspect's side of the protocol ------------------------------------------------------


def load_tool_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The tool script as a module here, its ``commandlab_daemon`` being our daemon package."""
    import commandlab_async.daemon
    from commandlab_async.daemon import actions, desktop, errors, keys, x11  # noqa: F401

    monkeypatch.setitem(sys.modules, "commandlab_daemon", commandlab_async.daemon)
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the zipapp's path first
    spec = importlib.util.spec_from_file_location("inspect_computer_tool", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
async def test_the_script_takes_every_command_inspects_computer_tool_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inspect's own computer() (its model-facing side), every action: the command lines it
    would run in the sandbox, parsed by the script (a guard against Inspect changing them)."""
    from inspect_ai.tool import computer
    from inspect_ai.tool._tools._computer import _common, _computer

    script = load_tool_script(monkeypatch)
    assert f'"{TOOL}"' in inspect.getsource(_common)  # where Inspect looks for its tool
    sent: list[list[str]] = []

    async def send(tail: list[str], timeout: int | None = None) -> str:
        sent.append(tail)
        return "OK"

    monkeypatch.setattr(_common, "_send_cmd", send)
    calls: dict[str, dict[str, Any]] = {
        "key": {"text": "ctrl+s Return", "repeat": 2},
        "hold_key": {"text": "shift", "duration": 1},
        "type": {"text": "--help -x", "coordinate": [5, 6], "press_enter": True},
        "cursor_position": {},
        "mouse_move": {"coordinate": [1, 2]},
        "left_mouse_down": {},
        "left_mouse_up": {},
        "left_click": {"coordinate": [3, 4]},
        "left_click_drag": {"start_coordinate": [1, 2], "coordinate": [3, 4]},
        "right_click": {},
        "middle_click": {"coordinate": [3, 4]},
        "back_click": {},
        "forward_click": {"coordinate": [3, 4]},
        "double_click": {},
        "triple_click": {"coordinate": [3, 4]},
        "scroll": {"scroll_amount": 3, "scroll_direction": "left", "coordinate": [7, 8]},
        "wait": {"duration": 2},
        "screenshot": {},
        "zoom": {"region": [1, 2, 30, 40]},
        "open_web_browser": {},
        "navigate": {"text": "file:///tmp/page.html"},
    }
    assert set(calls) == set(get_args(_computer.Action)), "Inspect has other actions now"
    parsed: dict[str, list[dict[str, Any]]] = {}
    for action, arguments in calls.items():
        sent.clear()
        await computer()(action=action, **arguments)
        parsed[action] = [vars(script.parse_arguments(tail)) for tail in sent]
    assert parsed["key"] == [{"action": "key", "text": "ctrl+s Return"}] * 2
    assert parsed["type"] == [
        {"action": "left_click", "coordinate": [5, 6], "text": None},
        {"action": "type", "text": "--help -x"},
        {"action": "key", "text": "Return"},
    ]
    assert parsed["left_click_drag"] == [
        {
            "action": "left_click_drag",
            "start_coordinate": [1, 2],
            "coordinate": [3, 4],
            "text": None,
        }
    ]
    assert parsed["scroll"] == [
        {
            "action": "scroll",
            "scroll_direction": "left",
            "scroll_amount": 3,
            "coordinate": [7, 8],
            "text": None,
        }
    ]
    assert parsed["zoom"] == [{"action": "zoom", "region": [1, 2, 30, 40]}]
    assert parsed["back_click"] == [{"action": "back_click", "coordinate": None, "text": None}]
    assert parsed["hold_key"] == [{"action": "hold_key", "text": "shift", "duration": 1}]
    assert all(len(commands) == 1 for a, commands in parsed.items() if a not in ("key", "type"))

    # Where the script finds the display, and how it scales a screen as Inspect's does.
    assert [script.display_number(v) for v in (":3", ":4.0", "unix:5", None, "")] == [3, 4, 5, 1, 1]
    targets = {
        (1920, 1080): (1366, 768),
        (2560, 1600): (1280, 800),
        (2048, 1536): (1024, 768),
        (1366, 768): None,
        (1280, 800): None,
        (1000, 1000): None,
    }
    assert {size: script.scaling_target(*size) for size in targets} == targets


@pytest.mark.unit
async def test_the_sandbox_config_sets_the_screen() -> None:
    assert load_config({"screen": [1366, 768]}).to_spec().screen == (1366, 768, 24)
    assert load_config({"image": DESKTOP_IMAGE}).to_spec().screen == (1280, 800, 24)
    with pytest.raises(SpecError, match="screen"):
        load_config({"screen": [1366, 768, 8]}).to_spec()


# -- an Inspect eval ---------------------------------------------------------------------


async def test_an_inspect_eval_drives_the_desktop_through_computer(
    desktop_image: str, tmp_path: Path
) -> None:
    """inspect_eval/computer_task.py, run as a user runs an eval: in a process of its own."""
    run = uuid.uuid4().hex[:12]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EVAL),
        run,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert (report["status"], report["error"], report["sample_error"]) == ("success", None, None)
    assert report["score"] == "C", f"the app received {report['answer']!r}"
    tools = report["tools"]
    assert [t["function"] for t in tools] == ["computer"] * 6
    assert [t["error"] for t in tools] == [None] * 6
    # A screenshot after each action (the size of the screen), a point for cursor_position.
    assert [t["images"] for t in tools] == [[[1366, 768]]] * 5 + [[]]
    assert tools[5]["text"] == "X=200,Y=100"
    assert docker("ps", "-aq", "--filter", f"label=computer-run={run}") == ""


# -- the tool script, action by action ---------------------------------------------------


def png_size(data: str) -> tuple[int, int]:
    width, height, _rgb = png.decode(base64.b64decode(data))
    return width, height


async def tool(computer: Computer, *argv: str) -> dict[str, Any]:
    """Run the tool script as Inspect does; the JSON it printed (of Inspect's shape)."""
    result = await computer.run(["python3", TOOL, *argv])
    assert result.exit_code == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply) == {"output", "error", "base64_image"}
    return reply  # type: ignore[no-any-return]


async def image(computer: Computer, *argv: str) -> tuple[int, int]:
    """Run an action that answers with a screenshot only; its size."""
    reply = await tool(computer, *argv)
    assert (reply["output"], reply["error"]) == (None, None)
    return png_size(reply["base64_image"])


async def error(computer: Computer, *argv: str) -> str:
    reply = await tool(computer, *argv)
    assert (reply["output"], reply["base64_image"]) == (None, None)
    assert isinstance(reply["error"], str)
    return reply["error"]


async def presses(app: App) -> list[tuple[int, int, int]]:
    return [(e["x"], e["y"], e["button"]) for e in await app.events() if e["kind"] == "press"]


async def nothing_held(computer: Computer) -> bool:
    return (await computer.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}


async def test_screenshot_cursor_position_mouse_move_zoom_and_wait(desktop: Computer) -> None:
    await start_app(desktop, "events")
    assert await image(desktop, "screenshot") == (1280, 800)
    assert await image(desktop, "mouse_move", "--coordinate", "123", "456") == (1280, 800)
    assert await tool(desktop, "cursor_position") == {
        "output": "X=123,Y=456",
        "error": None,
        "base64_image": None,
    }
    # zoom: [x0, y0, x1, y1] at the screen's own resolution: the red square, exactly.
    reply = await tool(desktop, "zoom", "--region", "100", "100", "150", "150")
    width, height, rgb = png.decode(base64.b64decode(reply["base64_image"]))
    assert (width, height) == (50, 50)
    assert png.pixel(rgb, width, 0, 0) == png.pixel(rgb, width, 49, 49) == (255, 0, 0)
    start = time.monotonic()
    assert await image(desktop, "wait", "--duration", "1") == (1280, 800)
    assert time.monotonic() - start >= 1.0
    # Inspect runs it with its site-packages; it runs without any, too.
    bare = await desktop.run(["python3", "-I", "-S", TOOL, "screenshot"])
    assert json.loads(bare.stdout)["base64_image"]


@pytest.mark.parametrize(
    ("action", "button", "count"),
    [
        ("left_click", 1, 1),
        ("right_click", 3, 1),
        ("middle_click", 2, 1),
        ("back_click", 8, 1),
        ("forward_click", 9, 1),
        ("double_click", 1, 2),
        ("triple_click", 1, 3),
    ],
)
async def test_clicks_land_where_asked_or_where_the_pointer_is(
    desktop: Computer, action: str, button: int, count: int
) -> None:
    app = await start_app(desktop, "events")
    assert await image(desktop, action, "--coordinate", "321", "234") == (1280, 800)
    assert await image(desktop, action) == (1280, 800)  # no coordinate: where the pointer is
    assert await presses(app) == [(321, 234, button)] * 2 * count
    assert await nothing_held(desktop)


async def test_a_click_with_keys_held(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    await image(desktop, "left_click", "--coordinate", "50", "60", "--text", "ctrl+shift")
    (press,) = [e for e in await app.events() if e["kind"] == "press"]
    assert press["state"] & 0x5 == 0x5  # ShiftMask | ControlMask
    assert await nothing_held(desktop)


async def test_mouse_down_move_and_up_as_three_calls_drag(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    await image(desktop, "mouse_move", "--coordinate", "100", "600")
    await image(desktop, "left_mouse_down")
    # Held by the X server between calls (each is a process of its own).
    assert (await desktop.desktop.info())["pressed"]["buttons"] == [1]
    await image(desktop, "mouse_move", "--coordinate", "700", "650")
    await image(desktop, "left_mouse_up")
    events = await app.events()
    assert [(e["kind"], e["x"], e["y"]) for e in events if e["kind"] != "drag"] == [
        ("press", 100, 600),
        ("release", 700, 650),
    ]
    assert (events[-2]["kind"], events[-2]["x"], events[-2]["y"]) == ("drag", 700, 650)
    assert await nothing_held(desktop)


async def test_left_click_drag_moves_along_the_way(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    argv = ["--start_coordinate", "100", "600", "--coordinate", "700", "650"]
    assert await image(desktop, "left_click_drag", *argv) == (1280, 800)
    events = await app.events()
    assert (events[0]["kind"], events[0]["x"], events[0]["y"]) == ("press", 100, 600)
    assert (events[-1]["kind"], events[-1]["x"], events[-1]["y"]) == ("release", 700, 650)
    assert any(e["kind"] == "drag" and 300 <= e["x"] <= 500 for e in events)
    assert await nothing_held(desktop)


async def test_scroll_each_way(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    for direction, amount in (("down", 3), ("up", 2), ("left", 1), ("right", 1)):
        argv = ["--scroll_direction", direction, "--scroll_amount", str(amount)]
        assert await image(desktop, "scroll", *argv, "--coordinate", "640", "400") == (1280, 800)
    # Tk reports the horizontal wheel (buttons 6 and 7) as 4 and 5 with Shift.
    wheel = [(e["button"], e["state"] & 1) for e in await app.events() if e["kind"] == "press"]
    assert wheel == [(5, 0)] * 3 + [(4, 0)] * 2 + [(4, 1), (5, 1)]


async def test_keys_combinations_and_hold_key(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    # Inspect sends xdotool's syntax: combinations separated by spaces.
    assert await image(desktop, "key", "--text", "ctrl+shift+t Return") == (1280, 800)
    start = time.monotonic()
    assert await image(desktop, "hold_key", "--text", "shift", "--duration", "1") == (1280, 800)
    assert time.monotonic() - start >= 1.0
    keys = [(e["kind"], e["keysym"], e["state"] & 0x5) for e in await app.events()]
    assert [k for k in keys if k[0] == "key"] == [
        ("key", "Control_L", 0),
        ("key", "Shift_L", 4),
        ("key", "T", 5),
        ("key", "Return", 0),
        ("key", "Shift_L", 0),
    ]
    assert keys[-1] == ("key_up", "Shift_L", 1)
    assert await nothing_held(desktop)


async def test_typed_text_arrives_exactly(desktop: Computer) -> None:
    app = await start_app(desktop, "typed")
    text = "Hello, World! ~`|\\ é ß 漢字かな 😀👍🏽\tTab\n--text=-x"
    assert await image(desktop, "type", f"--text={text}") == (1280, 800)
    assert await image(desktop, "type", "--text", "-") == (1280, 800)  # a value like an option
    assert await app.typed(text + "-") == text + "-"


async def test_bad_input_is_the_models_error_not_the_tools_failure(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    assert "did you mean" in await error(desktop, "key", "--text", "ctrl+Entr")
    assert "off the screen" in await error(desktop, "left_click", "--coordinate", "1280", "5")
    assert "off the screen" in await error(desktop, "mouse_move", "--coordinate", "-1", "5")
    assert "Invalid region" in await error(desktop, "zoom", "--region", "50", "50", "10", "60")
    assert "negative" in await error(desktop, "wait", "--duration", "-1")
    assert "no web browser" in await error(desktop, "open_web_browser")
    assert await app.events() == []  # nothing was sent
    # What Inspect never sends: argparse's usage error, a failed command.
    assert (await desktop.run(["python3", TOOL, "fly"])).exit_code == 2


async def test_a_larger_screen_is_shown_scaled_as_inspects_tool_does(desktop_image: str) -> None:
    spec = DockerSpec(image=desktop_image, screen=(1920, 1080), ready_timeout=60)
    async with provision(spec) as computer:
        await computer.write_file("/tmp/apps/events.py", (DESKTOP_APPS / "events.py").read_bytes())
        app = await start_app(computer, "events")
        reply = await tool(computer, "screenshot")
        width, height, rgb = png.decode(base64.b64decode(reply["base64_image"]))
        assert (width, height) == (1365, 768)  # 16:9 -> FWXGA (1366x768), aspect kept
        assert png.pixel(rgb, width, 80, 80) == (255, 0, 0)  # the square at (100, 100)
        await image(computer, "left_click", "--coordinate", "683", "384")
        assert await presses(app) == [(961, 540, 1)]
        assert (await tool(computer, "cursor_position"))["output"] == "X=683,Y=384"
        zoom = await tool(computer, "zoom", "--region", "0", "0", "683", "384")
        assert png_size(zoom["base64_image"]) == (961, 540)  # native pixels
        assert "off the screen" in await error(computer, "mouse_move", "--coordinate", "1365", "0")


async def test_open_web_browser_and_navigate() -> None:
    build("desktop-browser")
    page = "<html><head><title>commandlab-navigated</title></head><body>hi</body></html>"
    async with provision(DockerSpec(image=BROWSER_IMAGE, ready_timeout=60)) as computer:
        await computer.write_file("/tmp/page.html", page.encode())
        assert await image(computer, "open_web_browser") == (1280, 800)
        titles = [w.title for w in await computer.desktop.windows()]
        assert any("Chromium" in title for title in titles), titles
        assert await image(computer, "navigate", "--text", "file:///tmp/page.html") == (1280, 800)
        for _ in range(100):
            titles = [w.title for w in await computer.desktop.windows()]
            if any("commandlab-navigated" in title for title in titles):
                break
            await asyncio.sleep(0.1)
        assert any("commandlab-navigated" in title for title in titles), titles
