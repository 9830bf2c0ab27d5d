"""A desktop sandbox as the computer of the OpenAI Agents SDK's ``ComputerTool`` (install
the ``openai-agents`` extra).

```python
from agents import Agent, ComputerTool, Runner

async with provision(DockerSpec(image=DESKTOP_IMAGE)) as computer:
    screen = await DesktopComputer.create(computer, fit=(1024, 768))
    agent = Agent(name="operator", model="gpt-5.4", tools=[ComputerTool(computer=screen)])
    result = await Runner.run(agent, "Open the terminal and run uname -a")
```

The model sees screenshots downscaled to fit ``fit`` (when given); every point it sends
back is mapped to the screen with that screenshot's :meth:`Screenshot.to_screen`, so it
clicks the screen pixel under the image pixel it chose (a point off the image, the
nearest pixel of its edge).
"""

from __future__ import annotations

from typing import Literal

from ..errors import MissingExtraError

try:
    from agents import AsyncComputer
    from agents.computer import Button, Environment
except ImportError as exc:  # the extra is not installed
    raise MissingExtraError("openai-agents", ("openai-agents",)) from exc

from .. import Actions, Computer, Desktop, Screenshot

__all__ = ["DesktopComputer"]

_BUTTONS: dict[str, Literal["left", "middle", "right", "back", "forward"]] = {
    "left": "left",
    "right": "right",
    "wheel": "middle",
    "back": "back",
    "forward": "forward",
}


class DesktopComputer(AsyncComputer):
    """The SDK's ``AsyncComputer`` over ``computer.desktop``; make one with :meth:`create`.

    ``dimensions`` is the size of the screenshots the model sees: the screen's, or
    smaller with ``fit``.  Mouse actions take the modifiers the model holds (``keys``).
    Each screenshot first waits (at most ``settle`` seconds, 2 when True) for the screen
    to stop changing; ``wait`` waits until it has not changed for ``wait_quiet`` seconds,
    at most ``wait_timeout`` seconds.
    """

    def __init__(
        self,
        desktop: Desktop,
        screenshot: Screenshot,
        *,
        fit: tuple[int, int] | None = None,
        settle: bool | float = True,
        wait_timeout: float = 5.0,
        wait_quiet: float = 0.5,
    ) -> None:
        self.desktop = desktop
        self.last_screenshot = screenshot
        """The newest screenshot: the model's points are mapped to the screen with it."""
        self._fit = fit
        self._settle = settle
        self._wait_timeout = wait_timeout
        self._wait_quiet = wait_quiet

    @classmethod
    async def create(
        cls,
        computer: Computer,
        *,
        fit: tuple[int, int] | None = None,
        settle: bool | float = True,
        wait_timeout: float = 5.0,
        wait_quiet: float = 0.5,
    ) -> DesktopComputer:
        """The computer for ``computer``'s desktop, screenshots downscaled to fit ``fit``
        (max width, max height; the aspect ratio is kept).  Takes a first screenshot, which
        gives ``dimensions``."""
        shot = await computer.desktop.screenshot(fit=fit)
        return cls(
            computer.desktop,
            shot,
            fit=fit,
            settle=settle,
            wait_timeout=wait_timeout,
            wait_quiet=wait_quiet,
        )

    @property
    def environment(self) -> Environment:
        """``"ubuntu"``: the SDK's name for a Linux desktop."""
        return "ubuntu"

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of the screenshots the model sees."""
        return self.last_screenshot.width, self.last_screenshot.height

    def _screen(self, x: int, y: int) -> tuple[int, int]:
        return self.last_screenshot.to_screen(x, y)

    async def screenshot(self) -> str:
        """A base64 PNG of the screen, once it settled, downscaled to fit ``fit``."""
        self.last_screenshot = await self.desktop.screenshot(fit=self._fit, settle=self._settle)
        return self.last_screenshot.base64()

    async def click(self, x: int, y: int, button: Button, *, keys: list[str] | None = None) -> None:
        """Click ``button`` (``wheel`` is the middle one) at ``(x, y)``."""
        sx, sy = self._screen(x, y)
        await self.desktop.click(sx, sy, button=_BUTTONS[button], keys=keys or ())

    async def double_click(self, x: int, y: int, *, keys: list[str] | None = None) -> None:
        sx, sy = self._screen(x, y)
        await self.desktop.click(sx, sy, count=2, keys=keys or ())

    async def scroll(
        self, x: int, y: int, scroll_x: int, scroll_y: int, *, keys: list[str] | None = None
    ) -> None:
        """Scroll at ``(x, y)`` by ``scroll_x``/``scroll_y`` pixels of the screenshot
        (scaled to the screen like points, then rounded to wheel clicks)."""
        sx, sy = self._screen(x, y)
        shot = self.last_screenshot
        await self.desktop.scroll(
            sx,
            sy,
            dx=round(scroll_x * shot.scale_x),
            dy=round(scroll_y * shot.scale_y),
            unit="pixel",
            keys=keys or (),
        )

    async def type(self, text: str) -> None:
        await self.desktop.type(text)

    async def wait(self) -> None:
        """Wait until the screen stops changing (at most ``wait_timeout`` seconds)."""
        await self.desktop.wait_until_settled(self._wait_timeout, quiet=self._wait_quiet)

    async def move(self, x: int, y: int, *, keys: list[str] | None = None) -> None:
        sx, sy = self._screen(x, y)
        if not keys:
            await self.desktop.move(sx, sy)
            return
        actions = Actions()
        for key in keys:
            actions.key_down(key)
        actions.move(sx, sy)
        for key in reversed(keys):
            actions.key_up(key)
        await self.desktop.batch(actions, screenshot=False, settle=False)

    async def keypress(self, keys: list[str]) -> None:
        """Press ``keys`` together, as one combination (``["CTRL", "C"]``)."""
        await self.desktop.press(keys)

    async def drag(self, path: list[tuple[int, int]], *, keys: list[str] | None = None) -> None:
        """Press the left button at the path's first point, move along it, release at the
        last."""
        await self.desktop.drag([self._screen(x, y) for x, y in path], keys=keys or ())
