"""The OpenAI Agents SDK drives a desktop sandbox through ``DesktopComputer``.

The SDK's own agent loop (``Runner.run``) runs against a scripted model: no network, no
API key. The model's computer calls must reach the recorder apps on the desktop (what
they saw is checked), and the screenshots must reach the model.
"""

from __future__ import annotations

import base64
import importlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import (
    Agent,
    AgentOutputSchemaBase,
    ComputerTool,
    Handoff,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Runner,
    Tool,
    TResponseInputItem,
    Usage,
    set_tracing_disabled,
)
from openai.types.responses import (
    ResponseComputerToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from commandlab_async import Computer, MissingExtraError
from commandlab_async.daemon import png
from commandlab_async.integrations.openai_agents import DesktopComputer
from tests.desktop.conftest import start_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

set_tracing_disabled(True)  # traces would go to OpenAI's API


class ScriptedModel(Model):
    """Answers each turn with the next scripted computer call (a list of actions), then
    with a final message; keeps every input the SDK gave it."""

    def __init__(self, turns: list[list[dict[str, Any]]]) -> None:
        self.turns = turns
        self.inputs: list[Any] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        self.inputs.append(input)
        turn = len(self.inputs)
        if turn <= len(self.turns):
            output: Any = ResponseComputerToolCall(
                id=f"cu_{turn}",
                call_id=f"call_{turn}",
                type="computer_call",
                status="completed",
                pending_safety_checks=[],
                actions=self.turns[turn - 1],  # type: ignore[arg-type]  # validated by pydantic
            )
        else:
            output = ResponseOutputMessage(
                id="msg",
                type="message",
                role="assistant",
                status="completed",
                content=[ResponseOutputText(type="output_text", text="done", annotations=[])],
            )
        return ModelResponse(output=[output], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


async def run_agent(screen: DesktopComputer, turns: list[list[dict[str, Any]]]) -> ScriptedModel:
    model = ScriptedModel(turns)
    agent = Agent(name="operator", model=model, tools=[ComputerTool(computer=screen)])
    result = await Runner.run(agent, "Use the computer.")
    assert result.final_output == "done"
    assert len(model.inputs) == len(turns) + 1
    return model


def screenshots_sent(model: ScriptedModel) -> list[tuple[int, int, bytes]]:
    """The screenshots the SDK sent back to the model, decoded: (width, height, rgb)."""
    outputs = [
        item
        for item in model.inputs[-1]
        if isinstance(item, dict) and item.get("type") == "computer_call_output"
    ]
    shots = []
    for item in outputs:
        assert item["output"]["type"] == "computer_screenshot"
        prefix, data = item["output"]["image_url"].split(",", 1)
        assert prefix == "data:image/png;base64"
        shots.append(png.decode(base64.b64decode(data)))
    return shots


def presses(events: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    return [(e["x"], e["y"], e["button"]) for e in events if e["kind"] == "press"]


async def test_an_agent_run_clicks_scrolls_drags_and_presses_keys(desktop: Computer) -> None:
    app = await start_app(desktop, "events")
    screen = await DesktopComputer.create(desktop)
    assert (screen.environment, screen.dimensions) == ("ubuntu", (1280, 800))
    model = await run_agent(
        screen,
        [
            [{"type": "screenshot"}],
            # One call per click: a click the pointer leaves at once (the next action of the
            # same call) can reach the app where the pointer went instead (the daemon's
            # race with the window manager's click grab, not this adapter's).
            [{"type": "click", "x": 123, "y": 456, "button": "left"}],
            [{"type": "click", "x": 200, "y": 210, "button": "wheel"}],
            [{"type": "click", "x": 300, "y": 310, "button": "right"}],
            [{"type": "click", "x": 400, "y": 410, "button": "back"}],
            [{"type": "click", "x": 500, "y": 510, "button": "forward"}],
            [{"type": "click", "x": 600, "y": 610, "button": "left", "keys": ["CTRL"]}],
            [{"type": "double_click", "x": 700, "y": 710, "keys": ["SHIFT"]}],
            [
                {"type": "scroll", "x": 640, "y": 400, "scroll_x": 0, "scroll_y": 150},
                {"type": "scroll", "x": 640, "y": 400, "scroll_x": 0, "scroll_y": -100},
                {"type": "drag", "path": [{"x": 100, "y": 600}, {"x": 700, "y": 650}]},
                {"type": "wait"},
                {"type": "keypress", "keys": ["CTRL", "A"]},
                {"type": "move", "x": 50, "y": 60, "keys": ["SHIFT"]},
            ],
        ],
    )
    events = await app.events()
    assert presses(events) == [
        (123, 456, 1),
        (200, 210, 2),
        (300, 310, 3),
        (400, 410, 8),
        (500, 510, 9),
        (600, 610, 1),
        (700, 710, 1),
        (700, 710, 1),
        (640, 400, 5),
        (640, 400, 5),
        (640, 400, 5),  # 150 pixels: three wheel clicks down
        (640, 400, 4),
        (640, 400, 4),  # 100 pixels: two up
        (100, 600, 1),
    ]
    held = {(e["x"], e["y"]): e["state"] & 0x5 for e in events if e["kind"] == "press"}
    assert (held[600, 610], held[700, 710], held[123, 456]) == (0x4, 0x1, 0)  # Control, Shift
    release = [e for e in events if e["kind"] == "release" and e["button"] == 1][-1]
    assert (release["x"], release["y"]) == (700, 650)
    assert any(e["kind"] == "drag" and 300 <= e["x"] <= 500 for e in events)
    keys = [(e["keysym"], e["state"] & 0x5) for e in events if e["kind"] == "key"]
    assert keys[-3:] == [("Control_L", 0), ("a", 0x4), ("Shift_L", 0)]
    assert await desktop.desktop.cursor() == (50, 60)

    # Each turn's screenshot reached the model: the whole screen, the app's squares on it.
    shots = screenshots_sent(model)
    assert len(shots) == 9
    for width, height, rgb in shots:
        assert (width, height) == (1280, 800)
        assert png.pixel(rgb, width, 110, 110) == (255, 0, 0)
        assert png.pixel(rgb, width, 710, 310) == (0x12, 0x34, 0x56)


async def test_an_agent_run_types_text(desktop: Computer) -> None:
    app = await start_app(desktop, "typed")
    screen = await DesktopComputer.create(desktop)
    await run_agent(
        screen,
        [
            [
                {"type": "type", "text": "héllo wörld 😀"},
                {"type": "keypress", "keys": ["CTRL", "A"]},
                {"type": "keypress", "keys": ["ENTER"]},
            ]
        ],
    )
    expected = "héllo wörld 😀\x01\n"
    assert await app.typed(expected) == expected


@pytest.mark.parametrize(
    ("fit", "dimensions", "point", "pixel"),
    [
        ((640, 400), (640, 400), (50, 60), (101, 121)),  # 2 screen pixels per image pixel
        ((1000, 1000), (1000, 625), (500, 300), (640, 384)),  # 1.28, the aspect ratio kept
        ((640, 400), (640, 400), (639, 399), (1279, 799)),  # the last pixel maps to the last
    ],
)
async def test_a_smaller_target_size_maps_points_back_to_the_screen(
    desktop: Computer,
    fit: tuple[int, int],
    dimensions: tuple[int, int],
    point: tuple[int, int],
    pixel: tuple[int, int],
) -> None:
    app = await start_app(desktop, "events")
    screen = await DesktopComputer.create(desktop, fit=fit)
    assert screen.dimensions == dimensions
    x, y = point
    model = await run_agent(
        screen,
        [
            [{"type": "click", "x": x, "y": y, "button": "left"}],
            [{"type": "double_click", "x": 0, "y": 0}],
            [
                {"type": "scroll", "x": 100, "y": 100, "scroll_x": 0, "scroll_y": 100},
                {"type": "drag", "path": [{"x": 10, "y": 300}, {"x": 300, "y": 320}]},
            ],
        ],
    )
    events = await app.events()
    scale = 1280 / dimensions[0]
    wheel = (int(100.5 * scale), int(100.5 * scale))
    clicks = round(100 * scale / 50)  # image pixels scrolled, in wheel clicks on the screen
    start = (int(10.5 * scale), int(300.5 * scale))
    end = (int(300.5 * scale), int(320.5 * scale))
    corner = (int(0.5 * scale), int(0.5 * scale))
    assert presses(events) == [
        (*pixel, 1),
        (*corner, 1),
        (*corner, 1),
        *[(*wheel, 5)] * clicks,
        (*start, 1),
    ]
    release = [e for e in events if e["kind"] == "release"][-1]
    assert (release["x"], release["y"]) == end
    for width, height, _rgb in screenshots_sent(model):
        assert (width, height) == dimensions


@pytest.mark.unit
async def test_without_the_sdk_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "agents", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "commandlab_async.integrations.openai_agents")
    with pytest.raises(MissingExtraError, match=r"pip install 'commandlab-async\[openai-agents\]'"):
        importlib.import_module("commandlab_async.integrations.openai_agents")
