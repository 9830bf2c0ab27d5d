"""Desktop actions as they travel: one JSON object per action, checked the same way by the
client (before anything is sent) and by the daemon (before anything reaches X).

A batch is ``{"actions": [...], "screenshot": null | {"region": [x, y, w, h] | null,
"fit": [w, h] | null}, "settle": null | {"timeout": s, "quiet": s}}``.  Each action has
``"do"``, one of:

``move`` ``x`` ``y``; ``click`` [``x`` ``y``] ``button`` ``count`` ``keys``; ``down`` /
``up`` [``x`` ``y``] ``button``; ``drag`` ``path`` (at least two points) ``button``
``keys``; ``scroll`` [``x`` ``y``] ``dx`` ``dy`` (wheel clicks: down and right are
positive) ``keys``; ``press`` ``keys`` (a combination, pressed in order and released in
reverse); ``key_down`` / ``key_up`` ``key``; ``type`` ``text``; ``clipboard_set``
``text``; ``clipboard_get``; ``cursor``; ``windows``; ``wait`` ``seconds``.

Key names are canonical (``keys.parse_keys``); coordinates are screen pixels and must
lie on the screen.  Standard library only, Python >= 3.9.
"""

from __future__ import annotations

from .keys import KeyNameError, parse_keys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BUTTONS = {"left": 1, "middle": 2, "right": 3, "back": 8, "forward": 9}
MAX_ACTIONS = 1000  # in one batch
MAX_TEXT = 1_000_000  # characters typed by one action
MAX_CLIPBOARD = 1024 * 1024  # bytes (UTF-8) of clipboard text
MAX_PATH_POINTS = 10_000  # of one drag
MAX_CLICKS = 10  # one click's count
MAX_SCROLL = 1000  # wheel clicks of one scroll, each way
MAX_WAIT = 60.0  # seconds of one wait, and of a settle's timeout
MAX_BATCH_BODY = 8 * 1024 * 1024  # bytes of a batch request


class ActionError(ValueError):
    """An action (or a batch) that cannot run: said before anything is sent."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"action {index}: {message}")
        self.index = index


def _int(action: dict[str, Any], name: str, low: int, high: int) -> int:
    value = action.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ActionError(f"{name!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ActionError(f"{name!r} must be between {low} and {high}, got {value}")
    return value


def _number(value: object, name: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ActionError(f"{name!r} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ActionError(f"{name!r} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _point(x: object, y: object, width: int, height: int) -> list[int]:
    for name, value, size in (("x", x, width), ("y", y, height)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ActionError(f"{name!r} must be an integer, got {value!r}")
        if not 0 <= value < size:
            raise ActionError(
                f"({x}, {y}) is off the screen ({width}x{height}: x in 0..{width - 1}, "
                f"y in 0..{height - 1})"
            )
    return [x, y]  # type: ignore[list-item]  # checked above


def _optional_point(action: dict[str, Any], width: int, height: int) -> None:
    if "x" in action or "y" in action:
        action["x"], action["y"] = _point(action.get("x"), action.get("y"), width, height)


def _keys(value: object) -> list[str]:
    if not isinstance(value, (str, list)):
        raise ActionError(f"keys must be a string or a list of strings, got {value!r}")
    if isinstance(value, list) and not value:
        return []
    try:
        return list(parse_keys(value))
    except KeyNameError as exc:
        raise ActionError(str(exc)) from None


def _button(action: dict[str, Any]) -> str:
    button = action.get("button", "left")
    if button not in BUTTONS:
        raise ActionError(f"unknown button {button!r} (one of {', '.join(BUTTONS)})")
    return str(button)


def _text(action: dict[str, Any], limit: int) -> str:
    text = action.get("text")
    if not isinstance(text, str):
        raise ActionError(f"'text' must be a string, got {type(text).__name__}")
    if len(text) > limit:
        raise ActionError(f"'text' is {len(text)} characters, more than {limit}")
    return text


def check_action(raw: object, width: int, height: int) -> dict[str, Any]:
    """One action, checked and in canonical form (a new dict)."""
    if not isinstance(raw, dict):
        raise ActionError(f"an action must be an object, got {type(raw).__name__}")
    action: dict[str, Any] = dict(raw)
    do = action.get("do")
    known = _FIELDS.get(do) if isinstance(do, str) else None
    if known is None:
        raise ActionError(f"unknown action {do!r} (one of {', '.join(_FIELDS)})")
    extra = set(action) - known - {"do"}
    if extra:
        raise ActionError(f"{do} takes no {', '.join(sorted(map(repr, extra)))}")
    if do == "move":
        action["x"], action["y"] = _point(action.get("x"), action.get("y"), width, height)
    elif do in ("click", "down", "up", "scroll"):
        _optional_point(action, width, height)
        if do == "scroll":
            action["dx"] = _int(action, "dx", -MAX_SCROLL, MAX_SCROLL) if "dx" in action else 0
            action["dy"] = _int(action, "dy", -MAX_SCROLL, MAX_SCROLL) if "dy" in action else 0
            if not action["dx"] and not action["dy"]:
                raise ActionError("scroll needs a non-zero 'dx' or 'dy'")
        else:
            action["button"] = _button(action)
        if do == "click":
            action["count"] = _int(action, "count", 1, MAX_CLICKS) if "count" in action else 1
        if do in ("click", "scroll"):
            action["keys"] = _keys(action.get("keys", []))
    elif do == "drag":
        path = action.get("path")
        if not isinstance(path, list) or len(path) < 2:
            raise ActionError("a drag needs a 'path' of at least two [x, y] points")
        if len(path) > MAX_PATH_POINTS:
            raise ActionError(f"a drag's path has more than {MAX_PATH_POINTS} points")
        points = []
        for point in path:
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise ActionError(f"a path point must be [x, y], got {point!r}")
            points.append(_point(point[0], point[1], width, height))
        if all(point == points[0] for point in points):
            raise ActionError("a drag's path must move: every point is the same")
        action["path"] = points
        action["button"] = _button(action)
        action["keys"] = _keys(action.get("keys", []))
    elif do == "press":
        action["keys"] = _keys(action.get("keys"))
        if not action["keys"]:
            raise ActionError("press needs at least one key")
    elif do in ("key_down", "key_up"):
        key = action.get("key")
        names = _keys(key if isinstance(key, str) else [key] if key is not None else [])
        if len(names) != 1:
            raise ActionError(f"{do} takes one key, got {key!r}")
        action["key"] = names[0]
    elif do == "type":
        action["text"] = _text(action, MAX_TEXT)
    elif do == "clipboard_set":
        text = _text(action, MAX_CLIPBOARD)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_CLIPBOARD:
            raise ActionError(f"clipboard text is more than {MAX_CLIPBOARD} bytes")
        action["text"] = text
    elif do == "wait":
        action["seconds"] = _number(action.get("seconds"), "seconds", 0, MAX_WAIT)
    return action


def check_region(value: object, width: int, height: int) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ActionError(f"a region is [x, y, width, height], got {value!r}")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ActionError(f"a region is four integers, got {value!r}")
    x, y, w, h = value
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ActionError(f"region {list(value)} is not within the screen ({width}x{height})")
    return [x, y, w, h]


def check_fit(value: object) -> list[int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16384 for v in value
        )
    ):
        raise ActionError(f"fit is [max_width, max_height] of positive integers, got {value!r}")
    return [value[0], value[1]]


def check_batch(raw: object, width: int, height: int) -> dict[str, Any]:
    """A whole batch, checked and in canonical form (see the module's docstring)."""
    if not isinstance(raw, dict):
        raise ActionError("a batch must be a JSON object")
    extra = set(raw) - {"actions", "screenshot", "settle"}
    if extra:
        raise ActionError(f"a batch takes no {', '.join(sorted(map(repr, extra)))}")
    actions = raw.get("actions", [])
    if not isinstance(actions, list):
        raise ActionError("'actions' must be a list")
    if len(actions) > MAX_ACTIONS:
        raise ActionError(f"a batch holds at most {MAX_ACTIONS} actions, got {len(actions)}")
    checked = []
    for index, action in enumerate(actions):
        try:
            checked.append(check_action(action, width, height))
        except ActionError as exc:
            raise ActionError(str(exc), index) from None
    shot = raw.get("screenshot")
    if shot is not None:
        if not isinstance(shot, dict) or set(shot) - {"region", "fit"}:
            raise ActionError('\'screenshot\' is null or {"region": ..., "fit": ...}')
        shot = {
            "region": check_region(shot.get("region"), width, height),
            "fit": check_fit(shot.get("fit")),
        }
    settle = raw.get("settle")
    if settle is not None:
        if not isinstance(settle, dict) or set(settle) - {"timeout", "quiet"}:
            raise ActionError('\'settle\' is null or {"timeout": s, "quiet": s}')
        settle = {
            "timeout": _number(settle.get("timeout", 2.0), "timeout", 0, MAX_WAIT),
            "quiet": _number(settle.get("quiet", 0.1), "quiet", 0.01, MAX_WAIT),
        }
    return {"actions": checked, "screenshot": shot, "settle": settle}


_POINT = {"x", "y"}
_FIELDS: dict[str, set[str]] = {
    "move": _POINT,
    "click": _POINT | {"button", "count", "keys"},
    "down": _POINT | {"button"},
    "up": _POINT | {"button"},
    "drag": {"path", "button", "keys"},
    "scroll": _POINT | {"dx", "dy", "keys"},
    "press": {"keys"},
    "key_down": {"key"},
    "key_up": {"key"},
    "type": {"text"},
    "clipboard_set": {"text"},
    "clipboard_get": set(),
    "cursor": set(),
    "windows": set(),
    "wait": {"seconds"},
}
