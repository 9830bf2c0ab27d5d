"""Anthropic's computer-use tool on a real desktop: every action of both tool versions,
checked by what the recorder apps received, and the coordinate scaling."""

from __future__ import annotations

import base64

import pytest

from commandlab_async import Computer, InvalidActionError
from commandlab_async.daemon import png
from commandlab_async.integrations.anthropic_computer import (
    ACTIONS_20250124,
    ACTIONS_20251124,
    AnthropicComputer,
)
from tests.desktop.conftest import start_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


def _png_size(blocks: list[dict]) -> tuple[int, int]:
    (image,) = [b for b in blocks if b["type"] == "image"]
    assert image["source"]["media_type"] == "image/png"
    width, height, _rgb = png.decode(base64.b64decode(image["source"]["data"]))
    return width, height


async def test_definitions_name_the_display(desktop: Computer) -> None:
    assert await AnthropicComputer(desktop.desktop).definition() == {
        "type": "computer_20250124",
        "name": "computer",
        "display_width_px": 1280,
        "display_height_px": 800,
    }
    newer = AnthropicComputer(desktop.desktop, version="computer_20251124", display=(640, 400))
    assert await newer.definition() == {
        "type": "computer_20251124",
        "name": "computer",
        "display_width_px": 640,
        "display_height_px": 400,
        "enable_zoom": True,
    }


async def test_every_mouse_action_lands_where_the_model_pointed(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    tool = AnthropicComputer(desktop.desktop, version="computer_20251124")
    inputs = [
        {"action": "mouse_move", "coordinate": [10, 20]},
        {"action": "left_click", "coordinate": [100, 110]},
        {"action": "right_click", "coordinate": [101, 111]},
        {"action": "middle_click", "coordinate": [102, 112]},
        {"action": "double_click", "coordinate": [103, 113]},
        {"action": "triple_click", "coordinate": [104, 114]},
        {"action": "left_click", "coordinate": [105, 115], "text": "shift"},
        {"action": "left_mouse_down", "coordinate": [200, 210]},
        {"action": "left_mouse_up", "coordinate": [300, 310]},
        {"action": "left_click_drag", "start_coordinate": [400, 410], "coordinate": [500, 510]},
        {
            "action": "scroll",
            "coordinate": [600, 610],
            "scroll_direction": "down",
            "scroll_amount": 2,
        },
        {
            "action": "scroll",
            "coordinate": [600, 610],
            "scroll_direction": "up",
            "scroll_amount": 1,
        },
    ]
    for tool_input in inputs:
        assert _png_size(await tool.run(tool_input)) == (1280, 800)
    assert await tool.run({"action": "cursor_position"}) == [
        {"type": "text", "text": "X=600,Y=610"}
    ]
    events = await app.events()
    presses = [(e["x"], e["y"], e["button"]) for e in events if e["kind"] == "press"]
    assert presses == [
        (100, 110, 1),
        (101, 111, 3),
        (102, 112, 2),
        *[(103, 113, 1)] * 2,
        *[(104, 114, 1)] * 3,
        (105, 115, 1),
        (200, 210, 1),
        (400, 410, 1),
        (600, 610, 5),
        (600, 610, 5),
        (600, 610, 4),
    ]
    shifted = [e for e in events if e["kind"] == "press" and (e["x"], e["y"]) == (105, 115)]
    assert shifted[0]["state"] & 1
    releases = [(e["x"], e["y"]) for e in events if e["kind"] == "release" and e["button"] == 1]
    assert (300, 310) in releases  # left_mouse_up after a move
    assert releases[-1] == (500, 510)  # the drag's end


async def test_keys_typing_waits_and_screenshots(desktop: Computer) -> None:
    app = await start_app(desktop, "typed")
    tool = AnthropicComputer(desktop.desktop)
    await tool.run({"action": "type", "text": "héllo 世界 😀"})
    await tool.run({"action": "key", "text": "Return"})
    await tool.run({"action": "key", "text": "a b Tab"})
    await tool.run({"action": "hold_key", "text": "shift", "duration": 0.2})
    await tool.run({"action": "wait", "duration": 0.1})
    assert _png_size(await tool.run({"action": "screenshot"})) == (1280, 800)
    assert await app.typed("héllo 世界 😀\nab\t") == "héllo 世界 😀\nab\t"
    assert (await desktop.desktop.info())["pressed"] == {"buttons": [], "modifiers": []}


async def test_scaled_display_maps_coordinates_back_exactly(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    tool = AnthropicComputer(desktop.desktop, version="computer_20251124", display=(640, 400))
    assert _png_size(await tool.run({"action": "screenshot"})) == (640, 400)
    assert _png_size(await tool.run({"action": "left_click", "coordinate": [50, 60]})) == (640, 400)
    await tool.run({"action": "left_click", "coordinate": [639, 399]})
    presses = [(e["x"], e["y"]) for e in await app.events() if e["kind"] == "press"]
    assert presses == [(101, 121), (1279, 799)]
    assert await tool.run({"action": "cursor_position"}) == [
        {"type": "text", "text": "X=639,Y=399"}
    ]
    # zoom: a region of the display, at full resolution (fitted to the display's size)
    blocks = await tool.run({"action": "zoom", "region": [50, 50, 75, 75]})  # screen 100..150
    (image,) = blocks
    width, height, rgb = png.decode(base64.b64decode(image["source"]["data"]))
    assert (width, height) == (50, 50)
    assert png.pixel(rgb, width, 5, 5) == (255, 0, 0)  # the red square at (100, 100)


async def test_bad_inputs_are_error_results_not_crashes(desktop: Computer) -> None:
    tool = AnthropicComputer(desktop.desktop)
    bad = [
        {"action": "fly"},
        {"action": "zoom", "region": [0, 0, 10, 10]},  # not in computer_20250124
        {"action": "left_click", "coordinate": [1280, 0]},
        {"action": "left_click", "coordinate": "10,10"},
        {"action": "key", "text": "ctrl+nosuchkey"},
        {"action": "key"},
        {"action": "scroll", "scroll_direction": "sideways", "scroll_amount": 1},
        {"action": "wait", "duration": 3600},
        {"action": "left_click_drag", "coordinate": [5, 5]},
    ]
    for tool_input in bad:
        with pytest.raises(InvalidActionError):
            await tool.run(tool_input)
        result = await tool.tool_result("toolu_1", tool_input)
        assert result["is_error"] is True
        assert result["tool_use_id"] == "toolu_1"
    assert {"zoom"} == ACTIONS_20251124 - ACTIONS_20250124
