"""Desktop actions are checked the same way on both sides: what is refused, and the
canonical form of what is accepted."""

from __future__ import annotations

from typing import Any

import pytest

from commandlab_async import Actions, InvalidActionError, Screenshot
from commandlab_async._client.desktop import PIXELS_PER_CLICK, _reply_limit
from commandlab_async.daemon.actions import MAX_ACTIONS, ActionError, check_action, check_batch

pytestmark = pytest.mark.unit

W, H = 1280, 800


def test_actions_come_out_canonical() -> None:
    assert check_action({"do": "click", "x": 1, "y": 2}, W, H) == {
        "do": "click",
        "x": 1,
        "y": 2,
        "button": "left",
        "count": 1,
        "keys": [],
    }
    assert check_action({"do": "press", "keys": "ctrl+shift+t"}, W, H)["keys"] == [
        "Control_L",
        "Shift_L",
        "t",
    ]
    assert check_action({"do": "press", "keys": ["CTRL", "A"]}, W, H)["keys"] == ["Control_L", "a"]
    assert check_action({"do": "key_down", "key": "CMD"}, W, H)["key"] == "Super_L"
    assert check_action({"do": "scroll", "dy": 3}, W, H) == {
        "do": "scroll",
        "dx": 0,
        "dy": 3,
        "keys": [],
    }


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ({"do": "fly"}, "unknown action"),
        ({"do": "click", "x": 1280, "y": 0}, "off the screen"),
        ({"do": "click", "x": -1, "y": 0}, "off the screen"),
        ({"do": "click", "x": 1.5, "y": 0}, "integer"),
        ({"do": "click", "x": True, "y": 0}, "integer"),
        ({"do": "click", "x": 1, "y": 1, "button": "thumb"}, "unknown button"),
        ({"do": "click", "x": 1, "y": 1, "count": 0}, "between 1 and 10"),
        ({"do": "click", "x": 1, "y": 1, "speed": 3}, "takes no 'speed'"),
        ({"do": "drag", "path": [[1, 1]]}, "at least two"),
        ({"do": "drag", "path": [[1, 1], [1, 1]]}, "must move"),
        ({"do": "drag", "path": [[1, 1], [1]]}, "[x, y]"),
        ({"do": "scroll", "dx": 0, "dy": 0}, "non-zero"),
        ({"do": "press", "keys": []}, "at least one key"),
        ({"do": "press", "keys": "ctrl+Entr"}, "did you mean"),
        ({"do": "key_down", "key": "ctrl+a"}, "one key"),
        ({"do": "type", "text": 5}, "string"),
        ({"do": "wait", "seconds": 61}, "between 0 and 60"),
        ({"do": "wait", "seconds": float("nan")}, "number"),
        ("click", "an object"),
    ],
)
def test_bad_actions_are_refused_with_a_reason(action: Any, words: str) -> None:
    with pytest.raises(ActionError, match=words.replace("[", r"\[")):
        check_action(action, W, H)


def test_a_batch_says_which_action_is_wrong_and_keeps_its_bounds() -> None:
    with pytest.raises(ActionError, match="action 2") as caught:
        check_batch({"actions": [{"do": "cursor"}, {"do": "cursor"}, {"do": "no"}]}, W, H)
    assert caught.value.index == 2
    with pytest.raises(ActionError, match="at most"):
        check_batch({"actions": [{"do": "cursor"}] * (MAX_ACTIONS + 1)}, W, H)
    with pytest.raises(ActionError, match="not within the screen"):
        check_batch({"screenshot": {"region": [1200, 0, 100, 10]}}, W, H)
    with pytest.raises(ActionError, match="fit"):
        check_batch({"screenshot": {"fit": [0, 10]}}, W, H)
    with pytest.raises(ActionError, match="takes no"):
        check_batch({"actions": [], "extra": 1}, W, H)
    assert check_batch({"settle": {}}, W, H)["settle"] == {"timeout": 2.0, "quiet": 0.1}


def test_the_client_converts_pixels_to_wheel_clicks() -> None:
    def dy(pixels: int) -> int:
        return Actions().scroll(1, 1, dy=pixels, unit="pixel").items[0]["dy"]  # type: ignore[no-any-return]

    assert dy(PIXELS_PER_CLICK * 3) == 3
    assert dy(1) == 1  # any movement scrolls at least one click
    assert dy(-1) == -1
    assert dy(-PIXELS_PER_CLICK * 2) == -2
    with pytest.raises(InvalidActionError):
        Actions().scroll(dy=1, unit="line")  # type: ignore[arg-type]


def test_a_screenshot_maps_its_points_back_to_the_screen() -> None:
    shot = Screenshot(
        png=b"",
        width=640,
        height=400,
        region=(100, 50, 1280, 800),
        scale_x=2.0,
        scale_y=2.0,
        capture="shm",
    )
    assert shot.to_screen(0, 0) == (101, 51)
    assert shot.to_screen(639, 399) == (100 + 1279, 50 + 799)
    assert shot.to_screen(5000, -3) == (100 + 1279, 50)  # clamped to the region


def test_a_reply_may_take_what_the_batch_asked_for_and_little_more() -> None:
    bare = check_batch({}, W, H)
    shot = check_batch({"screenshot": {}}, W, H)
    clip = check_batch({"actions": [{"do": "clipboard_get"}] * 3}, W, H)
    assert _reply_limit(bare, W, H) == 1024 * 1024
    assert W * H * 4 < _reply_limit(shot, W, H) < W * H * 4 + 2 * 1024 * 1024
    assert _reply_limit(clip, W, H) > 3 * 6 * 1024 * 1024
