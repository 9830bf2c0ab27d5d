"""Anthropic's computer-use tool (``computer_20250124``, ``computer_20251124``) on a
desktop sandbox: the tool definition to send, and the executor of one ``tool_use``.

```python
tool = AnthropicComputer(computer.desktop)
tools = [await tool.definition()]                    # what the Messages API takes
...
result = await tool.tool_result(block.id, block.input)  # for each tool_use block
```

Each action runs in one round trip, then the screen is awaited until it settles (not a
fixed sleep) and a screenshot comes back. With ``display`` smaller than the screen,
screenshots are downscaled to it and every coordinate the model gives is mapped back to
the screen, so a click lands where the model saw it. No Anthropic SDK is needed: inputs
and results are the plain JSON the API uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .. import Actions, Desktop, DesktopError, InvalidActionError, Screenshot

Version = Literal["computer_20250124", "computer_20251124"]
VERSIONS: tuple[Version, ...] = ("computer_20250124", "computer_20251124")
ACTIONS_20250124 = frozenset(
    {
        "key",
        "hold_key",
        "type",
        "cursor_position",
        "mouse_move",
        "left_mouse_down",
        "left_mouse_up",
        "left_click",
        "left_click_drag",
        "right_click",
        "middle_click",
        "double_click",
        "triple_click",
        "scroll",
        "wait",
        "screenshot",
    }
)
ACTIONS_20251124 = ACTIONS_20250124 | {"zoom"}
MAX_DURATION = 60.0  # seconds of a ``wait`` or ``hold_key``
_CLICKS = {
    "left_click": ("left", 1),
    "right_click": ("right", 1),
    "middle_click": ("middle", 1),
    "double_click": ("left", 2),
    "triple_click": ("left", 3),
}
_SCROLLS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


class AnthropicComputer:
    """Runs Anthropic computer-use actions on ``desktop``.

    ``display``: the (width, height) the model is told and sees; default the screen's
    own size (the desktop image's default, 1280x800, is one Anthropic recommends).
    """

    def __init__(
        self,
        desktop: Desktop,
        *,
        version: Version = "computer_20250124",
        display: tuple[int, int] | None = None,
        settle: float = 2.0,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.desktop = desktop
        self.version = version
        self._display = display
        self._settle = settle
        self._screen: tuple[int, int] | None = None

    async def definition(self) -> dict[str, Any]:
        """The tool as the Messages API takes it (in ``tools=``)."""
        width, height = await self.display()
        tool: dict[str, Any] = {
            "type": self.version,
            "name": "computer",
            "display_width_px": width,
            "display_height_px": height,
        }
        if self.version == "computer_20251124":
            tool["enable_zoom"] = True
        return tool

    async def display(self) -> tuple[int, int]:
        """The size the model sees: ``display``, or the screen's."""
        screen = await self._screen_size()
        return self._display or screen

    async def tool_result(self, tool_use_id: str, tool_input: Mapping[str, Any]) -> dict[str, Any]:
        """The ``tool_result`` block for one ``tool_use``: the action's output, or its error
        as ``is_error`` text (a bad input, an action the desktop refused)."""
        try:
            content = await self.run(tool_input)
        except (InvalidActionError, DesktopError) as exc:
            return {
                "type": "tool_result",
                "tool_use_id": tool_use_id,
                "content": [{"type": "text", "text": str(exc)}],
                "is_error": True,
            }
        return {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}

    async def run(self, tool_input: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one action; its result as content blocks (text, and a base64 PNG).
        Raises :class:`InvalidActionError` for an input the tool's schema does not allow."""
        action = tool_input.get("action")
        allowed = ACTIONS_20251124 if self.version == "computer_20251124" else ACTIONS_20250124
        if action not in allowed:
            known = ", ".join(sorted(allowed))
            raise InvalidActionError(
                f"unknown action {action!r} for {self.version} (one of {known})"
            )
        if action == "cursor_position":
            x, y = await self._from_screen(*await self.desktop.cursor())
            return [_text(f"X={x},Y={y}")]
        if action == "screenshot":
            return [_image(await self._screenshot())]
        if action == "zoom":
            return [_image(await self._zoom(tool_input))]
        actions = await self._actions(str(action), tool_input)
        return [_image(await self._screenshot(actions))]

    async def _actions(self, action: str, given: Mapping[str, Any]) -> Actions:
        point = given.get("coordinate")
        at = await self._point(point) if point is not None else (None, None)
        text = given.get("text")
        if action == "key":
            combos = _text_field(text, action).split()
            if not combos:
                raise InvalidActionError("key needs 'text': a key or combination, e.g. ctrl+s")
            batch = Actions()
            for combo in combos:  # xdotool's "ctrl+a Delete": one after the other
                batch.press(combo)
            return batch
        if action == "hold_key":
            key = _text_field(text, action)
            duration = _duration(given.get("duration"))
            names = key.split("+")
            batch = Actions()
            for name in names:
                batch.key_down(name)
            batch.wait(duration)
            for name in reversed(names):
                batch.key_up(name)
            return batch
        if action == "type":
            return Actions().type(_text_field(text, action))
        if action == "mouse_move":
            if point is None:
                raise InvalidActionError("mouse_move needs 'coordinate'")
            return Actions().move(*at)
        if action in ("left_mouse_down", "left_mouse_up"):
            batch = Actions()
            if point is not None:
                batch.move(*at)
            return batch.mouse_down() if action == "left_mouse_down" else batch.mouse_up()
        if action in _CLICKS:
            button, count = _CLICKS[action]
            keys = _modifiers(text)
            return Actions().click(*at, button=button, count=count, keys=keys)  # type: ignore[arg-type]
        if action == "left_click_drag":
            start = given.get("start_coordinate")
            if start is None or point is None:
                raise InvalidActionError(
                    "left_click_drag needs 'start_coordinate' and 'coordinate'"
                )
            return Actions().drag([await self._point(start), at])  # type: ignore[list-item]
        if action == "scroll":
            direction = given.get("scroll_direction")
            if direction not in _SCROLLS:
                raise InvalidActionError(
                    f"scroll_direction must be one of up, down, left, right, got {direction!r}"
                )
            amount = given.get("scroll_amount", 3)
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
                raise InvalidActionError(f"scroll_amount must be a whole number, got {amount!r}")
            dx, dy = _SCROLLS[direction]
            if amount == 0:
                return Actions()
            return Actions().scroll(*at, dx=dx * amount, dy=dy * amount, keys=_modifiers(text))
        # wait
        return Actions().wait(_duration(given.get("duration")))

    async def _screenshot(self, actions: Actions | None = None) -> Screenshot:
        fit = await self._fit()
        result = await self.desktop.batch(
            actions or Actions(), fit=fit, settle=self._settle if actions else False
        )
        assert result.screenshot is not None
        return result.screenshot

    async def _zoom(self, given: Mapping[str, Any]) -> Screenshot:
        region = given.get("region")
        if not isinstance(region, Sequence) or len(region) != 4:
            raise InvalidActionError(f"zoom needs 'region': [x0, y0, x1, y1], got {region!r}")
        x0, y0 = await self._point(region[:2], inclusive=True)
        x1, y1 = await self._point(region[2:], inclusive=True)
        if x1 <= x0 or y1 <= y0:
            raise InvalidActionError(f"zoom's region must have x1 > x0 and y1 > y0, got {region}")
        return await self.desktop.screenshot(
            region=(x0, y0, x1 - x0, y1 - y0), fit=await self.display()
        )

    async def _screen_size(self) -> tuple[int, int]:
        if self._screen is None:
            self._screen = await self.desktop.size()
        return self._screen

    async def _fit(self) -> tuple[int, int] | None:
        display, screen = await self.display(), await self._screen_size()
        return None if display == screen else display

    async def _point(self, value: object, *, inclusive: bool = False) -> tuple[int, int]:
        """A point the model gave (display pixels) as a screen pixel."""
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise InvalidActionError(f"a coordinate is [x, y] in pixels, got {value!r}")
        (width, height), (screen_w, screen_h) = await self.display(), await self._screen_size()
        x, y = value
        high_x, high_y = (width, height) if inclusive else (width - 1, height - 1)
        if not (0 <= x <= high_x and 0 <= y <= high_y):
            raise InvalidActionError(f"({x}, {y}) is off the display ({width}x{height})")
        if (width, height) == (screen_w, screen_h):
            return x, y
        if inclusive and (x, y) == (width, height):
            return screen_w, screen_h
        return _scale(x, screen_w, width, inclusive), _scale(y, screen_h, height, inclusive)

    async def _from_screen(self, x: int, y: int) -> tuple[int, int]:
        (width, height), (screen_w, screen_h) = await self.display(), await self._screen_size()
        return x * width // screen_w, y * height // screen_h


def _scale(value: int, screen: int, display: int, edge: bool) -> int:
    """A display pixel's screen pixel (its centre's), or for an edge, where it starts."""
    if edge:
        return min(screen, value * screen // display)
    return min(screen - 1, math.floor((value + 0.5) * screen / display))


def _text_field(value: object, action: str) -> str:
    if not isinstance(value, str):
        raise InvalidActionError(f"{action} needs 'text' (a string), got {value!r}")
    return value


def _modifiers(value: object) -> str | list[str]:
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise InvalidActionError(f"'text' (keys to hold) must be a string, got {value!r}")
    return value


def _duration(value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_DURATION
    ):
        raise InvalidActionError(
            f"'duration' must be seconds between 0 and {MAX_DURATION:g}, got {value!r}"
        )
    return float(value)


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image(shot: Screenshot) -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": shot.base64()},
    }
