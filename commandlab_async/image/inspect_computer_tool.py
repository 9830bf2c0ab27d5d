"""Inspect's ``computer()`` tool in a commandlab desktop image, driven by the daemon's own
in-process X code (``commandlab_daemon.desktop``) instead of xdotool, scrot and convert.

The desktop images install this file where Inspect looks for its tool, and Inspect runs
it once per action, as the sandbox's default user::

    python3 /opt/inspect/tool/computer_tool.py ACTION [--coordinate X Y] [--text TEXT] ...

It prints one JSON object, ``{"output": str | null, "error": str | null,
"base64_image": str | null}``: ``error`` (bad input, e.g. an unknown key or a point off
the screen) reaches the model as a tool error; a desktop that cannot be reached exits 1.
After an input action it waits for the screen to settle (no change for ``SETTLE_QUIET``
seconds, at most ``SETTLE_TIMEOUT``) and sends a PNG of the screen, as Inspect's own tool
does after sleeping 2 s.  Like Inspect's tool, a screen larger than (and of the aspect
ratio of) one of ``SCALING_TARGETS`` is shown scaled down to it, and coordinates are in
the screenshot's pixels.

Standard library only, Python >= 3.9, runnable as ``python3 -I -S``: the daemon's modules
come from its zipapp.  The desktop is up before the daemon runs any command, so there is
no readiness file to wait for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time

DAEMON_ZIPAPP = "/opt/commandlab/daemon.pyz"
sys.path.insert(0, DAEMON_ZIPAPP)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from commandlab_async.daemon import actions, desktop, errors, keys, png, x11
else:
    from commandlab_daemon import actions, desktop, errors, keys, png, x11

DEFAULT_DISPLAY = 1
# An action's screenshot waits until the screen has not changed for SETTLE_QUIET seconds
# (at most SETTLE_TIMEOUT).  Under a blinking caret's half period (~0.5 s), so a text field
# with the focus still settles.
SETTLE_TIMEOUT = 2.0
SETTLE_QUIET = 0.25
# A browser's window and pages take longer to draw.
BROWSER_START_TIMEOUT = 30.0
BROWSER_SETTLE_TIMEOUT = 5.0
BROWSER_SETTLE_QUIET = 0.4
# Inspect's tool shows a larger screen scaled down to the first of these whose aspect
# ratio is the screen's (within 0.02), and the model's coordinates are in that size.
SCALING_TARGETS = ((1024, 768), (1280, 800), (1366, 768))
BUTTON_CLICKS = {
    "left_click": ("left", 1),
    "right_click": ("right", 1),
    "middle_click": ("middle", 1),
    "back_click": ("back", 1),
    "forward_click": ("forward", 1),
    "double_click": ("left", 2),
    "triple_click": ("left", 3),
}
SCROLL_DIRECTIONS = {"up": ("dy", -1), "down": ("dy", 1), "left": ("dx", -1), "right": ("dx", 1)}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "firefox-esr", "firefox")
BROWSER_CLASSES = ("chromium", "chrome", "firefox", "navigator")
# Chromium in a container: as root it needs --no-sandbox (--test-type drops the warning
# about it), no GPU, a small /dev/shm; and no first-run questions.
CHROMIUM_OPTIONS = [
    "--no-sandbox",
    "--test-type",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--password-store=basic",
    "--start-maximized",
    "about:blank",
]
_SEND_EVENT = 25
_CLIENT_MESSAGE = 33
_SUBSTRUCTURE_MASKS = 0x180000  # SubstructureNotify | SubstructureRedirect: to the WM


class ToolFailure(Exception):
    """Input the tool cannot act on: the model is told (``error``) and may try again."""


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Inspect's argv: ``ACTION`` and its options (those of Inspect's own tool)."""
    parser = argparse.ArgumentParser(prog="computer_tool", allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("screenshot", aliases=["cursor_position", "left_mouse_down", "left_mouse_up"])
    sub.add_parser("open_web_browser")
    sub.add_parser("navigate").add_argument("--text", required=True)
    sub.add_parser("type", aliases=["key"]).add_argument("--text", required=True)
    hold = sub.add_parser("hold_key")
    hold.add_argument("--text", required=True)
    hold.add_argument("--duration", type=int, required=True)
    sub.add_parser("mouse_move").add_argument("--coordinate", type=int, nargs=2, required=True)
    click = sub.add_parser("left_click", aliases=[a for a in BUTTON_CLICKS if a != "left_click"])
    click.add_argument("--coordinate", type=int, nargs=2)
    click.add_argument("--text")  # keys held during the click
    drag = sub.add_parser("left_click_drag")
    drag.add_argument("--start_coordinate", type=int, nargs=2, required=True)
    drag.add_argument("--coordinate", type=int, nargs=2, required=True)
    drag.add_argument("--text")
    scroll = sub.add_parser("scroll")
    scroll.add_argument("--scroll_direction", choices=list(SCROLL_DIRECTIONS), required=True)
    scroll.add_argument("--scroll_amount", type=int, required=True)
    scroll.add_argument("--coordinate", type=int, nargs=2)
    scroll.add_argument("--text")
    sub.add_parser("wait").add_argument("--duration", type=int, required=True)
    sub.add_parser("zoom").add_argument("--region", type=int, nargs=4, required=True)
    # "--text VALUE" as "--text=VALUE": a value may start with "-" ("-" or "--help" typed).
    joined: list[str] = []
    items = iter(argv)
    for item in items:
        joined.append(item if item != "--text" else f"--text={next(items, '')}")
    return parser.parse_args(joined)


def display_number(value: str | None) -> int:
    """The display of ``DISPLAY`` (``:1``, ``:1.0``, ``unix:1``); ``DEFAULT_DISPLAY`` else."""
    number = (value or "").rpartition(":")[2].partition(".")[0]
    return int(number) if number.isdigit() else DEFAULT_DISPLAY


def scaling_target(width: int, height: int) -> tuple[int, int] | None:
    """The size Inspect's tool scales a ``width`` x ``height`` screen down to fit, if any."""
    for target_width, target_height in SCALING_TARGETS:
        if abs(target_width / target_height - width / height) < 0.02:
            return (target_width, target_height) if target_width < width else None
    return None


def key_combinations(text: str | None) -> list[list[str]]:
    """xdotool's key syntax (combinations like ``ctrl+s``, separated by spaces) as the
    canonical names of each combination's keys, in press order."""
    try:
        return [list(keys.parse_keys(combo)) for combo in (text or "").split()]
    except keys.KeyNameError as exc:
        raise ToolFailure(str(exc)) from None


def held_keys(text: str | None) -> list[str]:
    """Every key of every combination of ``text`` (keys held during a click, a scroll)."""
    return [name for combo in key_combinations(text) for name in combo]


def waits(seconds: float) -> list[dict[str, Any]]:
    """``wait`` actions that take ``seconds`` (each at most ``actions.MAX_WAIT``)."""
    if seconds < 0:
        raise ToolFailure(f"duration must not be negative, got {seconds:g}")
    steps = []
    while seconds > 0:
        step = min(seconds, actions.MAX_WAIT)
        steps.append({"do": "wait", "seconds": step})
        seconds -= step
    return steps


class ComputerTool:
    """One action of Inspect's protocol on one session of the desktop."""

    def __init__(self, session: desktop.Session) -> None:
        self.session = session
        self.width: int = session.width
        self.height: int = session.height
        self.fit = scaling_target(self.width, self.height)
        # The screenshots' size, in which the model's coordinates are.
        shown = png.fit_size(self.width, self.height, *self.fit) if self.fit else None
        self.shown_width: int = shown[0] if shown else self.width
        self.shown_height: int = shown[1] if shown else self.height

    # ------------------------------------------------------------ coordinates

    def point(self, coordinate: Sequence[int], name: str = "coordinate") -> list[int]:
        """A point of the screenshot as a point of the screen."""
        x, y = coordinate
        if not (0 <= x < self.shown_width and 0 <= y < self.shown_height):
            raise ToolFailure(
                f"{name} ({x}, {y}) is off the screen: x must be in 0..{self.shown_width - 1}"
                f" and y in 0..{self.shown_height - 1}"
            )
        return [
            min(self.width - 1, round(x * self.width / self.shown_width)),
            min(self.height - 1, round(y * self.height / self.shown_height)),
        ]

    def shown_point(self, x: int, y: int) -> tuple[int, int]:
        """A point of the screen as a point of the screenshot."""
        return (
            min(self.shown_width - 1, round(x * self.shown_width / self.width)),
            min(self.shown_height - 1, round(y * self.shown_height / self.height)),
        )

    def at(self, coordinate: Sequence[int] | None) -> dict[str, int]:
        if coordinate is None:
            return {}
        x, y = self.point(coordinate)
        return {"x": x, "y": y}

    # ------------------------------------------------------------ running

    def run(
        self,
        steps: list[dict[str, Any]],
        *,
        screenshot: bool = True,
        settle: tuple[float, float] | None = (SETTLE_TIMEOUT, SETTLE_QUIET),
        region: list[int] | None = None,
    ) -> dict[str, Any]:
        """Run ``steps`` as one batch (checked as the daemon checks its own); its reply."""
        fit = list(self.fit) if self.fit and region is None else None
        raw = {
            "actions": steps,
            "screenshot": {"region": region, "fit": fit} if screenshot else None,
            "settle": {"timeout": settle[0], "quiet": settle[1]} if settle else None,
        }
        try:
            batch = actions.check_batch(raw, self.width, self.height)
        except actions.ActionError as exc:
            raise ToolFailure(str(exc)) from None
        return self.session.run_batch(batch, lambda: None)

    def image(self, steps: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """Run ``steps``; Inspect's result: the screenshot that follows."""
        reply = self.run(steps, **options)
        return {"output": None, "error": None, "base64_image": reply["screenshot"]["png"]}

    # ------------------------------------------------------------ actions

    def execute(self, args: argparse.Namespace) -> dict[str, Any]:
        action = args.action
        if action == "key":
            combos = key_combinations(args.text)
            if not combos:
                raise ToolFailure("text must name a key, e.g. 'Return' or 'ctrl+s'")
            return self.image([{"do": "press", "keys": combo} for combo in combos])
        if action == "hold_key":
            names = held_keys(args.text)
            if not names:
                raise ToolFailure("text must name a key, e.g. 'shift' or 'ctrl+alt'")
            return self.image(
                [{"do": "key_down", "key": name} for name in names]
                + waits(args.duration)
                + [{"do": "key_up", "key": name} for name in reversed(names)]
            )
        if action == "type":
            return self.image([{"do": "type", "text": args.text}])
        if action == "cursor_position":
            reply = self.run([{"do": "cursor"}], screenshot=False, settle=None)
            x, y = self.shown_point(*reply["results"][0]["cursor"])
            return {"output": f"X={x},Y={y}", "error": None, "base64_image": None}
        if action == "mouse_move":
            return self.image([{"do": "move", **self.at(args.coordinate)}])
        if action in ("left_mouse_down", "left_mouse_up"):
            return self.image([{"do": action[11:], "button": "left"}])
        if action in BUTTON_CLICKS:
            button, count = BUTTON_CLICKS[action]
            click = {"button": button, "count": count, "keys": held_keys(args.text)}
            return self.image([{"do": "click", **self.at(args.coordinate), **click}])
        if action == "left_click_drag":
            start = self.point(args.start_coordinate, "start_coordinate")
            end = self.point(args.coordinate)
            names = held_keys(args.text)
            if start != end:
                return self.image([{"do": "drag", "path": [start, end], "keys": names}])
            x, y = start  # no motion: a press and a release where it starts
            return self.image(
                [{"do": "key_down", "key": name} for name in names]
                + [{"do": "down", "x": x, "y": y}, {"do": "up", "x": x, "y": y}]
                + [{"do": "key_up", "key": name} for name in reversed(names)]
            )
        if action == "scroll":
            if args.scroll_amount < 0:
                raise ToolFailure(f"scroll_amount must not be negative, got {args.scroll_amount}")
            axis, sign = SCROLL_DIRECTIONS[args.scroll_direction]
            if args.scroll_amount == 0:
                steps = [{"do": "move", **self.at(args.coordinate)}] if args.coordinate else []
            else:
                scroll = {axis: sign * args.scroll_amount, "keys": held_keys(args.text)}
                steps = [{"do": "scroll", **self.at(args.coordinate), **scroll}]
            return self.image(steps)
        if action == "wait":
            return self.image(waits(args.duration), settle=None)
        if action == "screenshot":
            return self.image([], settle=None)
        if action == "zoom":
            return self.image([], settle=None, region=self.zoom_region(args.region))
        if action == "open_web_browser":
            self.open_browser()
            return self.image([], settle=(BROWSER_SETTLE_TIMEOUT, BROWSER_SETTLE_QUIET))
        if action == "navigate":
            self.activate(self.browser_window() or self.open_browser())
            return self.image(
                [
                    {"do": "wait", "seconds": 0.2},  # the window manager gives it the focus
                    {"do": "press", "keys": "ctrl+l"},
                    {"do": "wait", "seconds": 0.3},  # the address bar takes the focus
                    {"do": "type", "text": args.text},
                    {"do": "press", "keys": "Return"},
                ],
                settle=(BROWSER_SETTLE_TIMEOUT, BROWSER_SETTLE_QUIET),
            )
        raise ToolFailure(f"Invalid action: {action}")

    def zoom_region(self, region: Sequence[int]) -> list[int]:
        """[x0, y0, x1, y1] of the screenshot as [x, y, width, height] of the screen."""
        x0, y0, x1, y1 = region
        if min(region) < 0 or x1 <= x0 or y1 <= y0:
            raise ToolFailure(
                f"Invalid region {list(region)}: [x0, y0, x1, y1] with x0 < x1, y0 < y1"
            )
        left = min(self.width, round(x0 * self.width / self.shown_width))
        top = min(self.height, round(y0 * self.height / self.shown_height))
        right = min(self.width, round(x1 * self.width / self.shown_width))
        bottom = min(self.height, round(y1 * self.height / self.shown_height))
        if right <= left or bottom <= top:
            raise ToolFailure(
                f"Invalid region {list(region)}: it is off the screen"
                f" ({self.shown_width}x{self.shown_height})"
            )
        return [left, top, right - left, bottom - top]

    # ------------------------------------------------------------ the browser

    def browser_window(self) -> int | None:
        """The newest browser window on the screen (by its ``WM_CLASS``), if any."""
        conn = self.session.conn
        wm_class = conn.intern_atom("WM_CLASS")
        found = None
        for window in self.session.windows():
            try:
                names = conn.get_property(window["id"], wm_class, 256, False)[2]
            except x11.XError:
                continue  # it went away meanwhile
            if any(name in names.decode("latin-1").lower() for name in BROWSER_CLASSES):
                found = window["id"]
        return found

    def open_browser(self) -> int:
        """Start the image's web browser in a new window (maximized); that window."""
        path = next((p for p in map(shutil.which, BROWSERS) if p is not None), None)
        if path is None:
            raise ToolFailure(
                f"there is no web browser in this image (none of {', '.join(BROWSERS)})"
            )
        argv = [path, "--new-window"]
        if not os.path.basename(path).startswith("firefox"):
            argv += CHROMIUM_OPTIONS
        before = {window["id"] for window in self.session.windows()}
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # it outlives this command
        )
        deadline = time.monotonic() + BROWSER_START_TIMEOUT
        while time.monotonic() < deadline:
            window = self.browser_window()
            if window is not None and window not in before:
                return window
            time.sleep(0.1)
        raise ToolFailure(f"the web browser showed no window within {BROWSER_START_TIMEOUT:g}s")

    def activate(self, window: int) -> None:
        """Ask the window manager to raise ``window`` and give it the focus."""
        conn = self.session.conn
        atom = conn.intern_atom("_NET_ACTIVE_WINDOW")
        # A ClientMessage (format 32): source 2, a pager (always obeyed), no timestamp.
        message = struct.pack("<BBHII5I", _CLIENT_MESSAGE, 32, 0, window, atom, 2, 0, 0, 0, 0)
        header = struct.pack("<BBHII", _SEND_EVENT, 0, 11, conn.root, _SUBSTRUCTURE_MASKS)
        conn.send([header + message])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        session = desktop.open_session(display_number(os.environ.get("DISPLAY")))
    except (x11.XConnectionError, x11.XError, OSError) as exc:
        print(f"computer_tool: cannot reach the desktop: {exc}", file=sys.stderr)
        return 1
    try:
        result = ComputerTool(session).execute(args)
    except ToolFailure as exc:
        result = {"output": None, "error": str(exc), "base64_image": None}
    except x11.XError as exc:
        result = {"output": None, "error": f"the X server refused it: {exc}", "base64_image": None}
    except x11.XConnectionError as exc:
        print(f"computer_tool: lost the desktop: {exc}", file=sys.stderr)
        return 1
    except errors.RequestError as exc:  # the desktop's own refusal (e.g. no spare keycode)
        result = {"output": None, "error": exc.message, "base64_image": None}
    finally:
        with contextlib.suppress(x11.XConnectionError, x11.XError, OSError):
            session.detach()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
