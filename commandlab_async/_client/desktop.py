"""``computer.desktop``: the screen, keyboard and mouse of a desktop sandbox.

Every call is one request to the daemon, which drives its X server in-process; a batch
runs many actions and returns one screenshot once the screen settled.  Input is checked
here, with the daemon's own rules (``daemon.actions``, ``daemon.keys``), before anything
is sent: a bad key or a point off the screen is an :class:`InvalidActionError`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from ..daemon import png
from ..daemon import protocol as wire
from ..daemon.actions import MAX_CLIPBOARD, MAX_WAIT, ActionError, check_batch
from ..errors import InvalidActionError
from .replies import ReplyError, expect_object

if TYPE_CHECKING:
    from .computer import Computer

Button = Literal["left", "middle", "right", "back", "forward"]
Keys = str | Sequence[str]
Point = tuple[int, int]

PIXELS_PER_CLICK = 50
"""What ``scroll(unit="pixel")`` takes one wheel click to be (browsers on X scroll about
50 pixels per click): pixel amounts are rounded to clicks, at least one when not zero."""

_REPLY_SLACK = 1024 * 1024  # a batch reply's bytes beyond what its parts may take
_JSON_ESCAPE = 6  # the most bytes JSON takes for one byte of text ("\u00XX")
_BASE_TIMEOUT = 30.0  # seconds a batch may take beyond its waits and typing
_TYPING_RATE = 500.0  # characters per second assumed for a batch's timeout (it is ~10x that)


@dataclass(frozen=True)
class Screenshot:
    """A PNG of the screen (or of a region), maybe downscaled to fit a size.

    ``scale_x`` and ``scale_y`` are screen pixels per image pixel: :meth:`to_screen`
    maps a point of the image (what a model clicks) back to the screen.
    """

    png: bytes
    width: int
    height: int
    region: tuple[int, int, int, int]
    """The part of the screen shown: x, y, width, height."""
    scale_x: float
    scale_y: float
    capture: str
    """How the daemon read the screen: ``shm`` (shared memory) or ``core`` (the socket)."""

    def base64(self) -> str:
        """The PNG as base64 text, as model APIs take images."""
        return base64.b64encode(self.png).decode("ascii")

    def to_screen(self, x: float, y: float) -> Point:
        """The screen pixel under the image's point ``(x, y)``."""
        rx, ry, rw, rh = self.region
        sx = rx + min(rw - 1, max(0, math.floor((x + 0.5) * self.scale_x)))
        sy = ry + min(rh - 1, max(0, math.floor((y + 0.5) * self.scale_y)))
        return sx, sy

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        """The (red, green, blue) of the image's pixel ``(x, y)``."""
        width, _height, rgb = self._rgb()
        return png.pixel(rgb, width, x, y)

    def _rgb(self) -> tuple[int, int, bytes]:
        cached = self.__dict__.get("_decoded")
        if cached is None:
            cached = png.decode(self.png)
            object.__setattr__(self, "_decoded", cached)
        return cached


@dataclass(frozen=True)
class Window:
    """A top-level window the window manager knows."""

    id: int
    title: str
    pid: int | None
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class BatchResult:
    """What a batch gave: each action's result (None for most; text for
    ``clipboard_get``, a point for ``cursor``), whether the screen settled, the
    screenshot, and where the pointer ended."""

    results: list[Any]
    screenshot: Screenshot | None
    settled: bool | None
    cursor: Point


@dataclass
class Actions:
    """A list of actions to run in one round trip (:meth:`Desktop.batch`).

    Each method appends one action and returns the list, so calls chain::

        shot = await desktop.batch(Actions().click(10, 20).type("hi").press("Return"))
    """

    items: list[dict[str, Any]] = field(default_factory=list)

    def _add(self, do: str, **fields: Any) -> Actions:
        self.items.append({"do": do, **{k: v for k, v in fields.items() if v is not None}})
        return self

    def move(self, x: int, y: int) -> Actions:
        return self._add("move", x=x, y=y)

    def click(
        self,
        x: int | None = None,
        y: int | None = None,
        *,
        button: Button = "left",
        count: int = 1,
        keys: Keys = (),
    ) -> Actions:
        return self._add("click", x=x, y=y, button=button, count=count, keys=_keys(keys))

    def mouse_down(
        self, x: int | None = None, y: int | None = None, *, button: Button = "left"
    ) -> Actions:
        return self._add("down", x=x, y=y, button=button)

    def mouse_up(
        self, x: int | None = None, y: int | None = None, *, button: Button = "left"
    ) -> Actions:
        return self._add("up", x=x, y=y, button=button)

    def drag(self, path: Sequence[Point], *, button: Button = "left", keys: Keys = ()) -> Actions:
        return self._add(
            "drag", path=[list(point) for point in path], button=button, keys=_keys(keys)
        )

    def scroll(
        self,
        x: int | None = None,
        y: int | None = None,
        *,
        dx: int = 0,
        dy: int = 0,
        unit: Literal["click", "pixel"] = "click",
        keys: Keys = (),
    ) -> Actions:
        if unit == "pixel":
            dx, dy = _clicks(dx), _clicks(dy)
        elif unit != "click":
            raise InvalidActionError(f"unit must be 'click' or 'pixel', got {unit!r}")
        return self._add("scroll", x=x, y=y, dx=dx, dy=dy, keys=_keys(keys))

    def press(self, keys: Keys) -> Actions:
        return self._add("press", keys=_keys(keys))

    def key_down(self, key: str) -> Actions:
        return self._add("key_down", key=key)

    def key_up(self, key: str) -> Actions:
        return self._add("key_up", key=key)

    def type(self, text: str) -> Actions:
        return self._add("type", text=text)

    def set_clipboard(self, text: str) -> Actions:
        return self._add("clipboard_set", text=text)

    def clipboard(self) -> Actions:
        return self._add("clipboard_get")

    def cursor(self) -> Actions:
        return self._add("cursor")

    def wait(self, seconds: float) -> Actions:
        return self._add("wait", seconds=seconds)


def _keys(keys: Keys) -> str | list[str]:
    return keys if isinstance(keys, str) else list(keys)


def _clicks(pixels: int) -> int:
    if not isinstance(pixels, int) or isinstance(pixels, bool):
        raise InvalidActionError(f"a scroll amount must be an integer, got {pixels!r}")
    if pixels == 0:
        return 0
    return int(math.copysign(max(1, round(abs(pixels) / PIXELS_PER_CLICK)), pixels))


class Desktop:
    """The desktop of one sandbox (``computer.desktop``).

    Coordinates are screen pixels, (0, 0) at the top left. Keys take any common naming:
    X keysyms (``Return``, ``Page_Up``), OpenAI's (``ENTER``, ``CTRL``), Playwright's
    (``Enter``, ``Control+A``), xdotool's (``ctrl+shift+t``); a combination is a
    ``+``-joined string or a list. Calls on one desktop run one at a time, in order;
    cancelling one releases every key and button it pressed.
    """

    def __init__(self, computer: Computer) -> None:
        self._computer = computer
        self._size: tuple[int, int] | None = None

    async def info(self) -> dict[str, Any]:
        """Screen size and depth, X display, capture path and pointer position."""
        reply = await self._computer._json(
            "GET", wire.DESKTOP_PATH, check=_info_reply, limit=64 * 1024
        )
        self._size = (reply["width"], reply["height"])
        return reply

    async def size(self) -> tuple[int, int]:
        """(width, height) of the screen in pixels."""
        if self._size is None:
            await self.info()
        assert self._size is not None
        return self._size

    async def batch(
        self,
        actions: Actions | Sequence[dict[str, Any]] = (),
        *,
        screenshot: bool = True,
        region: tuple[int, int, int, int] | None = None,
        fit: tuple[int, int] | None = None,
        settle: bool | float = True,
        quiet: float = 0.1,
    ) -> BatchResult:
        """Run ``actions`` in one round trip; then, by default, wait until the screen has
        not changed for ``quiet`` seconds (at most ``settle`` seconds, 2 when True) and
        take a screenshot (of ``region``, downscaled to fit ``fit``)."""
        items = actions.items if isinstance(actions, Actions) else list(actions)
        body: dict[str, Any] = {"actions": items, "screenshot": None, "settle": None}
        if screenshot:
            body["screenshot"] = {
                "region": list(region) if region is not None else None,
                "fit": list(fit) if fit is not None else None,
            }
        if settle is not False:
            timeout = 2.0 if settle is True else settle
            body["settle"] = {"timeout": timeout, "quiet": quiet}
        width, height = await self.size()
        try:
            checked = check_batch(body, width, height)
        except ActionError as exc:
            raise InvalidActionError(str(exc), index=exc.index) from None
        reply = await self._computer._json(
            "POST",
            wire.DESKTOP_PATH,
            check=_batch_reply,
            limit=_reply_limit(checked, width, height),
            timeout=aiohttp.ClientTimeout(total=_budget(checked), sock_connect=10.0),
            data=json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"),
            content_type="application/json",
        )
        return reply

    async def _one(self, actions: Actions) -> Any:
        result = await self.batch(actions, screenshot=False, settle=False)
        return result.results[0]

    async def screenshot(
        self,
        *,
        region: tuple[int, int, int, int] | None = None,
        fit: tuple[int, int] | None = None,
        settle: bool | float = False,
    ) -> Screenshot:
        """A PNG of the screen, or of ``region`` (x, y, width, height), downscaled to fit
        ``fit`` (max width, max height) when larger; ``settle``: first wait for the
        screen to stop changing."""
        result = await self.batch(region=region, fit=fit, settle=settle)
        assert result.screenshot is not None
        return result.screenshot

    async def cursor(self) -> Point:
        """Where the pointer is."""
        result = await self.batch(screenshot=False, settle=False)
        return result.cursor

    async def move(self, x: int, y: int) -> None:
        await self._one(Actions().move(x, y))

    async def click(
        self,
        x: int | None = None,
        y: int | None = None,
        *,
        button: Button = "left",
        count: int = 1,
        keys: Keys = (),
    ) -> None:
        """Click (``count`` times) at ``(x, y)`` (default: where the pointer is), with
        ``keys`` (modifiers) held."""
        await self._one(Actions().click(x, y, button=button, count=count, keys=keys))

    async def double_click(self, x: int | None = None, y: int | None = None) -> None:
        await self.click(x, y, count=2)

    async def mouse_down(
        self, x: int | None = None, y: int | None = None, *, button: Button = "left"
    ) -> None:
        """Press a button and keep it held (until :meth:`mouse_up`)."""
        await self._one(Actions().mouse_down(x, y, button=button))

    async def mouse_up(
        self, x: int | None = None, y: int | None = None, *, button: Button = "left"
    ) -> None:
        await self._one(Actions().mouse_up(x, y, button=button))

    async def drag(
        self, path: Sequence[Point], *, button: Button = "left", keys: Keys = ()
    ) -> None:
        """Press at the path's first point, move along it, release at its last."""
        await self._one(Actions().drag(path, button=button, keys=keys))

    async def scroll(
        self,
        x: int | None = None,
        y: int | None = None,
        *,
        dx: int = 0,
        dy: int = 0,
        unit: Literal["click", "pixel"] = "click",
        keys: Keys = (),
    ) -> None:
        """Scroll at ``(x, y)``: ``dy`` down (negative: up), ``dx`` right, in wheel
        clicks or, with ``unit="pixel"``, pixels (:data:`PIXELS_PER_CLICK` per click)."""
        await self._one(Actions().scroll(x, y, dx=dx, dy=dy, unit=unit, keys=keys))

    async def press(self, keys: Keys) -> None:
        """Press a key or a combination (``"ctrl+c"``, ``["CTRL", "C"]``, ``"Return"``)."""
        await self._one(Actions().press(keys))

    async def key_down(self, key: str) -> None:
        """Press a key and keep it held (until :meth:`key_up`)."""
        await self._one(Actions().key_down(key))

    async def key_up(self, key: str) -> None:
        await self._one(Actions().key_up(key))

    async def type(self, text: str) -> None:
        """Type ``text`` exactly, whatever its characters (newlines press Return)."""
        await self._one(Actions().type(text))

    async def clipboard(self) -> str:
        """The clipboard's text ("" when nothing holds any)."""
        result = await self._one(Actions().clipboard())
        return str(result["text"])

    async def set_clipboard(self, text: str) -> None:
        """Put ``text`` on the clipboard (and the primary selection)."""
        await self._one(Actions().set_clipboard(text))

    async def wait_until_settled(self, timeout: float = 2.0, *, quiet: float = 0.1) -> bool:
        """Wait until the screen has not changed for ``quiet`` seconds; False when it was
        still changing after ``timeout`` seconds."""
        result = await self.batch(screenshot=False, settle=timeout, quiet=quiet)
        return bool(result.settled)

    async def windows(self) -> list[Window]:
        """The top-level windows the window manager lists."""
        result = await self._one(Actions()._add("windows"))
        return [Window(**window) for window in result["windows"]]

    async def launch(
        self, command: str | Sequence[str], *, env: dict[str, str] | None = None
    ) -> str:
        """Start a program on the desktop (a shell command or an argv) in the background;
        its process id (see ``computer.processes()``)."""
        async with self._computer.start(command, env=env, background=True) as process:
            return process.id


def _reply_limit(batch: dict[str, Any], width: int, height: int) -> int:
    """The most bytes a batch's reply may take, from what it asked for: a PNG is at most
    a little over its raw pixels (base64: 4/3 of it), clipboard text 1 MiB, a window
    list 1,024 titles of 1 KiB; anything beyond is a daemon breaking the protocol."""
    limit = _REPLY_SLACK
    if batch["screenshot"] is not None:
        limit += (width * height * 3 + height) * 4 // 3 * 101 // 100 + 4096
    for action in batch["actions"]:
        if action["do"] == "clipboard_get":
            limit += MAX_CLIPBOARD * _JSON_ESCAPE
        elif action["do"] == "windows":
            limit += 1024 * (1024 * _JSON_ESCAPE + 256)
    return limit


def _budget(batch: dict[str, Any]) -> float:
    seconds = _BASE_TIMEOUT
    for action in batch["actions"]:
        if action["do"] == "wait":
            seconds += action["seconds"]
        elif action["do"] == "type":
            seconds += len(action["text"]) / _TYPING_RATE
    if batch["settle"] is not None:
        seconds += batch["settle"]["timeout"]
    return min(seconds, _BASE_TIMEOUT + MAX_WAIT * 1000)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReplyError(f"{what} is not an integer")
    return value


def _info_reply(reply: Any) -> dict[str, Any]:
    info = expect_object(reply, "the desktop's reply")
    for name in ("width", "height", "depth"):
        if not 0 < _int(info.get(name), f"the desktop's {name}") <= 65535:
            raise ReplyError(f"the desktop's {name} is out of range")
    return info


def _batch_reply(reply: Any) -> BatchResult:
    what = "the desktop's reply"
    data = expect_object(reply, what)
    results = data.get("results")
    cursor = data.get("cursor")
    if not isinstance(results, list) or not isinstance(cursor, list) or len(cursor) != 2:
        raise ReplyError(f"{what} lacks results or cursor")
    shot = data.get("screenshot")
    screenshot = None
    if shot is not None:
        shot = expect_object(shot, "a screenshot")
        try:
            image = base64.b64decode(shot["png"], validate=True)
            region = tuple(_int(v, "a region") for v in shot["region"])
            screenshot = Screenshot(
                png=image,
                width=_int(shot["width"], "a width"),
                height=_int(shot["height"], "a height"),
                region=region,  # type: ignore[arg-type]  # four, checked below
                scale_x=float(shot["scale_x"]),
                scale_y=float(shot["scale_y"]),
                capture=str(shot["capture"])[:16],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplyError(f"a malformed screenshot ({exc})") from None
        if len(region) != 4:
            raise ReplyError("a screenshot's region is not four numbers")
    settled = data.get("settled")
    return BatchResult(
        results=results,
        screenshot=screenshot,
        settled=bool(settled) if settled is not None else None,
        cursor=(_int(cursor[0], "the cursor"), _int(cursor[1], "the cursor")),
    )
