"""Key names (commandlab_async/daemon/keys.py): every convention agents write, combinations,
the plus key, case rules, errors with suggestions, and the keysyms X types them with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commandlab_async.daemon import keys
from commandlab_async.daemon.keys import (
    ALIASES,
    KEYSYMS,
    MAX_KEYS,
    MAX_NAME_LENGTH,
    KeyNameError,
    keysym_for_char,
    keysym_for_name,
    parse_keys,
)

pytestmark = pytest.mark.unit

# Values from X11/keysymdef.h and XF86keysym.h.
KNOWN_KEYSYMS = {
    "Return": 0xFF0D,
    "Tab": 0xFF09,
    "BackSpace": 0xFF08,
    "Escape": 0xFF1B,
    "Delete": 0xFFFF,
    "Insert": 0xFF63,
    "Home": 0xFF50,
    "End": 0xFF57,
    "Left": 0xFF51,
    "Up": 0xFF52,
    "Right": 0xFF53,
    "Down": 0xFF54,
    "Page_Up": 0xFF55,
    "Page_Down": 0xFF56,
    "F1": 0xFFBE,
    "F12": 0xFFC9,
    "F24": 0xFFD5,
    "Shift_L": 0xFFE1,
    "Shift_R": 0xFFE2,
    "Control_L": 0xFFE3,
    "Control_R": 0xFFE4,
    "Caps_Lock": 0xFFE5,
    "Meta_L": 0xFFE7,
    "Meta_R": 0xFFE8,
    "Alt_L": 0xFFE9,
    "Alt_R": 0xFFEA,
    "Super_L": 0xFFEB,
    "Super_R": 0xFFEC,
    "Hyper_L": 0xFFED,
    "Num_Lock": 0xFF7F,
    "Scroll_Lock": 0xFF14,
    "Print": 0xFF61,
    "Pause": 0xFF13,
    "Menu": 0xFF67,
    "KP_Enter": 0xFF8D,
    "KP_0": 0xFFB0,
    "KP_9": 0xFFB9,
    "KP_Multiply": 0xFFAA,
    "KP_Add": 0xFFAB,
    "KP_Subtract": 0xFFAD,
    "KP_Decimal": 0xFFAE,
    "KP_Divide": 0xFFAF,
    "KP_Equal": 0xFFBD,
    "space": 0x20,
    "exclam": 0x21,
    "quotedbl": 0x22,
    "numbersign": 0x23,
    "dollar": 0x24,
    "percent": 0x25,
    "ampersand": 0x26,
    "apostrophe": 0x27,
    "parenleft": 0x28,
    "parenright": 0x29,
    "asterisk": 0x2A,
    "plus": 0x2B,
    "comma": 0x2C,
    "minus": 0x2D,
    "period": 0x2E,
    "slash": 0x2F,
    "colon": 0x3A,
    "semicolon": 0x3B,
    "less": 0x3C,
    "equal": 0x3D,
    "greater": 0x3E,
    "question": 0x3F,
    "at": 0x40,
    "bracketleft": 0x5B,
    "backslash": 0x5C,
    "bracketright": 0x5D,
    "asciicircum": 0x5E,
    "underscore": 0x5F,
    "grave": 0x60,
    "braceleft": 0x7B,
    "bar": 0x7C,
    "braceright": 0x7D,
    "asciitilde": 0x7E,
    "a": 0x61,
    "z": 0x7A,
    "A": 0x41,
    "Z": 0x5A,
    "0": 0x30,
    "9": 0x39,
    "XF86AudioMute": 0x1008FF12,
    "XF86AudioLowerVolume": 0x1008FF11,
    "XF86AudioRaiseVolume": 0x1008FF13,
    "XF86AudioPlay": 0x1008FF14,
    "XF86AudioStop": 0x1008FF15,
    "XF86AudioPrev": 0x1008FF16,
    "XF86AudioNext": 0x1008FF17,
    "XF86Back": 0x1008FF26,
    "XF86Forward": 0x1008FF27,
    "XF86Refresh": 0x1008FF29,
    "XF86Search": 0x1008FF1B,
    "XF86HomePage": 0x1008FF18,
}


@pytest.mark.parametrize(("name", "value"), sorted(KNOWN_KEYSYMS.items()))
def test_keysyms_are_x11s(name: str, value: int) -> None:
    assert KEYSYMS[name] == value
    assert keysym_for_name(name) == value


def test_the_keysym_table_is_complete_and_consistent() -> None:
    for number in range(1, 25):
        assert KEYSYMS[f"F{number}"] == 0xFFBE + number - 1
    for digit in range(10):
        assert KEYSYMS[f"KP_{digit}"] == 0xFFB0 + digit
        assert KEYSYMS[str(digit)] == ord(str(digit))
    for code in range(ord("a"), ord("z") + 1):
        assert KEYSYMS[chr(code)] == code
        assert KEYSYMS[chr(code).upper()] == code - 0x20
    # Every printable ASCII character has a key of its own, and no two names share a value.
    printable = {value for value in KEYSYMS.values() if value < 0x7F}
    assert printable == set(range(0x20, 0x7F))
    assert len(set(KEYSYMS.values())) == len(KEYSYMS)
    # Names differ in more than case, but for the single letters.
    lowered = [name.lower() for name in KEYSYMS if len(name) > 1]
    assert len(set(lowered)) == len(lowered)


def test_aliases_never_redefine_an_x_name() -> None:
    for spelling, canonical in keys._ALIAS_SPELLINGS:
        assert canonical in KEYSYMS, (spelling, canonical)
        assert ALIASES[spelling.lower()] in (canonical, spelling), spelling
    for name in KEYSYMS:
        if len(name) > 1:
            assert ALIASES[name.lower()] == name
    assert all(name == name.lower() for name in ALIASES)


@pytest.mark.parametrize("name", sorted(name for name in KEYSYMS if len(name) > 1))
def test_x_names_match_in_any_case(name: str) -> None:
    assert parse_keys(name) == (name,)
    assert parse_keys(name.lower()) == (name,)
    assert parse_keys(name.upper()) == (name,)
    assert parse_keys([name.swapcase()]) == (name,)


OPENAI = {
    "ENTER": "Return",
    "RETURN": "Return",
    "CTRL": "Control_L",
    "CONTROL": "Control_L",
    "ALT": "Alt_L",
    "OPTION": "Alt_L",
    "SHIFT": "Shift_L",
    "CMD": "Super_L",
    "COMMAND": "Super_L",
    "META": "Super_L",
    "SUPER": "Super_L",
    "WIN": "Super_L",
    "WINDOWS": "Super_L",
    "ESC": "Escape",
    "ESCAPE": "Escape",
    "SPACE": "space",
    "BACKSPACE": "BackSpace",
    "TAB": "Tab",
    "DELETE": "Delete",
    "DEL": "Delete",
    "INSERT": "Insert",
    "INS": "Insert",
    "HOME": "Home",
    "END": "End",
    "PAGEUP": "Page_Up",
    "PAGEDOWN": "Page_Down",
    "PGUP": "Page_Up",
    "PGDN": "Page_Down",
    "ARROWLEFT": "Left",
    "ARROWRIGHT": "Right",
    "ARROWUP": "Up",
    "ARROWDOWN": "Down",
    "LEFT": "Left",
    "RIGHT": "Right",
    "UP": "Up",
    "DOWN": "Down",
    "CAPSLOCK": "Caps_Lock",
    **{f"F{number}": f"F{number}" for number in range(1, 25)},
}

PLAYWRIGHT = {
    "Enter": "Return",
    "ArrowLeft": "Left",
    "ArrowRight": "Right",
    "ArrowUp": "Up",
    "ArrowDown": "Down",
    "Control": "Control_L",
    "ControlOrMeta": "Control_L",
    "Meta": "Super_L",
    "Alt": "Alt_L",
    "Shift": "Shift_L",
    "Escape": "Escape",
    "Backspace": "BackSpace",
    "Delete": "Delete",
    "PageUp": "Page_Up",
    "PageDown": "Page_Down",
    "Home": "Home",
    "End": "End",
    "Insert": "Insert",
    "Tab": "Tab",
    "CapsLock": "Caps_Lock",
    "NumLock": "Num_Lock",
    "ScrollLock": "Scroll_Lock",
    "PrintScreen": "Print",
    "Pause": "Pause",
    "ContextMenu": "Menu",
    "AudioVolumeMute": "XF86AudioMute",
    "AudioVolumeDown": "XF86AudioLowerVolume",
    "AudioVolumeUp": "XF86AudioRaiseVolume",
    "MediaPlayPause": "XF86AudioPlay",
    "MediaStop": "XF86AudioStop",
    "MediaTrackNext": "XF86AudioNext",
    "MediaTrackPrevious": "XF86AudioPrev",
    "BrowserBack": "XF86Back",
    "BrowserForward": "XF86Forward",
    "BrowserRefresh": "XF86Refresh",
    "BrowserSearch": "XF86Search",
    "BrowserHome": "XF86HomePage",
    " ": "space",
    "Space": "space",
    "F5": "F5",
    # KeyboardEvent.code names, which Playwright's press takes too
    "KeyA": "a",
    "KeyZ": "z",
    "Digit7": "7",
    "Numpad3": "KP_3",
    "NumpadEnter": "KP_Enter",
    "NumpadAdd": "KP_Add",
    "ShiftLeft": "Shift_L",
    "ControlRight": "Control_R",
    "AltRight": "Alt_R",
    "MetaLeft": "Super_L",
    "Quote": "apostrophe",
    "Backquote": "grave",
    "Minus": "minus",
    "BracketLeft": "bracketleft",
}

XDOTOOL = {
    "ctrl": "Control_L",
    "control": "Control_L",
    "alt": "Alt_L",
    "shift": "Shift_L",
    "super": "Super_L",
    "cmd": "Super_L",
    "meta": "Super_L",  # xdotool's meta is Meta_L; here Meta is the command key
    "Return": "Return",
    "ctrl_l": "Control_L",
    "ctrl_r": "Control_R",
    "alt_l": "Alt_L",
    "alt_r": "Alt_R",
    "shift_l": "Shift_L",
    "shift_r": "Shift_R",
    "super_l": "Super_L",
    "super_r": "Super_R",
    "Meta_L": "Meta_L",
    "Page_Down": "Page_Down",
    "KP_Enter": "KP_Enter",
    "BackSpace": "BackSpace",
    "Prior": "Page_Up",
    "Next": "Page_Down",
    "hyper": "Hyper_L",
}


@pytest.mark.parametrize(
    ("name", "canonical"),
    sorted({**OPENAI, **PLAYWRIGHT, **XDOTOOL}.items()),
)
def test_every_conventions_names(name: str, canonical: str) -> None:
    assert parse_keys(name) == (canonical,)
    assert parse_keys([name]) == (canonical,)
    if name != " ":
        # Gemini writes them in lower case; any case does.
        assert parse_keys(name.lower()) == (canonical,)
        assert parse_keys(name.upper()) == (canonical,)
    assert keysym_for_name(canonical) == KEYSYMS[canonical]


@pytest.mark.parametrize(
    ("keys_", "expected"),
    [
        ("ctrl+shift+t", ("Control_L", "Shift_L", "t")),
        ("Control+Shift+T", ("Control_L", "Shift_L", "t")),
        ("ctrl+a", ("Control_L", "a")),
        ("ctrl+A", ("Control_L", "a")),
        ("shift+a", ("Shift_L", "a")),
        ("alt+Tab", ("Alt_L", "Tab")),
        ("super+l", ("Super_L", "l")),
        ("cmd+c", ("Super_L", "c")),
        ("Meta+KeyV", ("Super_L", "v")),
        ("CTRL+ALT+DELETE", ("Control_L", "Alt_L", "Delete")),
        ("ctrl+shift+Escape", ("Control_L", "Shift_L", "Escape")),
        ("ctrl+1", ("Control_L", "1")),
        ("ctrl+/", ("Control_L", "slash")),
        ("ctrl+ ", ("Control_L", "space")),
        ("shift+é", ("Shift_L", "U+00E9")),
        ("ctrl+É", ("Control_L", "U+00C9")),  # only ASCII letters are folded
        ("ctrl + shift + t", ("Control_L", "Shift_L", "t")),
        (["CTRL", "A"], ("Control_L", "a")),
        (["CTRL", "SHIFT", "T"], ("Control_L", "Shift_L", "t")),
        (("Control", "Shift", "ArrowLeft"), ("Control_L", "Shift_L", "Left")),
        (["ctrl", "+"], ("Control_L", "plus")),
        (["shift", " "], ("Shift_L", "space")),
        (["ctrl", "U+00e9"], ("Control_L", "U+00E9")),
    ],
)
def test_combinations(keys_: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_keys(keys_) == expected


@pytest.mark.parametrize(
    ("keys_", "expected"),
    [
        ("+", ("plus",)),
        (["+"], ("plus",)),
        ("plus", ("plus",)),
        ("ctrl++", ("Control_L", "plus")),
        ("Control++", ("Control_L", "plus")),
        ("ctrl+shift++", ("Control_L", "Shift_L", "plus")),
        ("ctrl+++a", ("Control_L", "plus", "a")),
        ("+++", ("plus", "plus")),
        ("A++", ("a", "plus")),
        ("ctrl+plus", ("Control_L", "plus")),
    ],
)
def test_the_plus_key(keys_: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_keys(keys_) == expected


@pytest.mark.parametrize("keys_", ["ctrl+", "ctrl++a", "+a", "++", "ctrl+a+", "ctrl++b+"])
def test_misplaced_pluses_are_errors(keys_: str) -> None:
    with pytest.raises(KeyNameError) as raised:
        parse_keys(keys_)
    assert raised.value.name == keys_
    assert "'+'" in str(raised.value)


def test_single_characters_and_their_case() -> None:
    # Alone, a character is its own key: A is the capital A.
    assert parse_keys("A") == ("A",)
    assert parse_keys("a") == ("a",)
    assert parse_keys(["A"]) == ("A",)
    assert parse_keys("!") == ("exclam",)
    assert parse_keys("~") == ("asciitilde",)
    assert parse_keys("7") == ("7",)
    assert parse_keys(" ") == ("space",)
    # Every printable ASCII character has its X name.
    for code in range(0x20, 0x7F):
        (name,) = parse_keys([chr(code)])
        assert KEYSYMS[name] == code
    # Beyond ASCII: its Latin-1 or Unicode keysym, named U+XXXX.
    assert parse_keys("é") == ("U+00E9",)
    assert keysym_for_name("U+00E9") == 0xE9
    assert parse_keys("中") == ("U+4E2D",)
    assert keysym_for_name("U+4E2D") == 0x01004E2D
    assert parse_keys("😀") == ("U+1F600",)
    assert keysym_for_name("U+1F600") == 0x0101F600
    # In a combination an ASCII letter is its (lower-case) key: Shift is named.
    assert parse_keys("shift+A") == ("Shift_L", "a")
    assert parse_keys(["A", "B"]) == ("a", "b")


def test_code_points_name_characters() -> None:
    assert parse_keys("U+00E9") == ("U+00E9",)
    assert parse_keys("u+00e9") == ("U+00E9",)
    assert parse_keys("U+0041") == ("A",)  # the character's canonical name
    assert parse_keys("ctrl+U+0041") == ("Control_L", "a")  # as the character itself
    assert parse_keys("U+10FFFF") == ("U+10FFFF",)
    assert parse_keys("ctrl+u+1") == ("Control_L", "u", "1")  # not a code point
    with pytest.raises(KeyNameError):
        parse_keys("U+0007")  # a control character
    with pytest.raises(KeyNameError):
        parse_keys("U+D800")  # a surrogate
    with pytest.raises(KeyNameError):
        parse_keys("U+110000")


@given(
    st.lists(
        st.sampled_from(sorted({*OPENAI, *PLAYWRIGHT, *XDOTOOL, *KEYSYMS, "é", "中", "+"})),
        min_size=1,
        max_size=MAX_KEYS,
    )
)
def test_parsing_canonical_names_gives_them_back(names: list[str]) -> None:
    canonical = parse_keys(names)
    assert len(canonical) == len(names)
    assert parse_keys(list(canonical)) == canonical
    assert parse_keys(canonical) == canonical
    for name in canonical:
        assert isinstance(keysym_for_name(name), int)
    # The same combination as a string, where no element is itself '+'-joined.
    assert parse_keys("+".join(names)) == canonical


def test_unknown_keys_come_with_suggestions() -> None:
    with pytest.raises(KeyNameError) as raised:
        parse_keys("Entr")
    error = raised.value
    assert isinstance(error, ValueError)
    assert error.name == "Entr"
    assert error.suggestions[:2] == ("Enter", "Return")
    assert 0 < len(error.suggestions) <= 3
    assert str(error).startswith("unknown key 'Entr' (did you mean 'Enter', 'Return'")
    # Every suggestion can be written as it is shown.
    for suggestion in error.suggestions:
        assert parse_keys(suggestion)
    with pytest.raises(KeyNameError) as raised:
        parse_keys("ctrl+shfit+t")
    assert raised.value.name == "shfit"
    assert raised.value.suggestions[0] == "Shift"
    with pytest.raises(KeyNameError) as raised:
        parse_keys(["CTRL", "PAGEUPP"])
    assert "PageUp" in raised.value.suggestions
    with pytest.raises(KeyNameError) as raised:
        parse_keys("qqqqqqqq")
    assert raised.value.suggestions == ()
    assert str(raised.value) == "unknown key 'qqqqqqqq'"


@pytest.mark.parametrize(
    "keys_",
    [
        "",
        [],
        (),
        [""],
        ["ctrl", ""],
        "  ",
        ["\t"],
        "\n",
        "ctrl+\t",
        ["ctrl+a"],  # one key per element
        ["ctrl", "shift+t"],
        "ctrl+\x07",
        "\x7f",
        "\x85",  # a C1 control
    ],
)
def test_empty_and_blank_names_are_errors(keys_: str | list[str]) -> None:
    with pytest.raises(KeyNameError) as raised:
        parse_keys(keys_)
    assert str(raised.value)


@pytest.mark.parametrize("empty", ["", [], ()])
def test_empty_input_says_so(empty: str | list[str] | tuple[str, ...]) -> None:
    with pytest.raises(KeyNameError, match="no key given") as raised:
        parse_keys(empty)
    assert raised.value.name == ""


def test_non_strings_are_key_name_errors() -> None:
    for bad in (None, 5, b"ctrl", ["ctrl", 5], [None], {"ctrl": 1}):
        with pytest.raises(KeyNameError):
            parse_keys(bad)  # type: ignore[arg-type]


def test_bounds() -> None:
    assert len(parse_keys(["a"] * MAX_KEYS)) == MAX_KEYS
    assert len(parse_keys("+".join(["ctrl"] * MAX_KEYS))) == MAX_KEYS
    with pytest.raises(KeyNameError, match="too many keys"):
        parse_keys(["a"] * (MAX_KEYS + 1))
    with pytest.raises(KeyNameError, match="too many keys"):
        parse_keys("+".join(["a"] * (MAX_KEYS + 1)))
    with pytest.raises(KeyNameError, match="too long"):
        parse_keys("a" * 100_000)
    with pytest.raises(KeyNameError, match="too many keys"):
        parse_keys(["a"] * 1_000_000)
    long_name = "x" * (MAX_NAME_LENGTH + 1)
    with pytest.raises(KeyNameError, match="too long") as raised:
        parse_keys([long_name])
    assert raised.value.name == long_name
    assert len(str(raised.value)) < 3 * MAX_NAME_LENGTH  # the message is cut short
    with pytest.raises(KeyNameError, match="too long"):
        parse_keys(f"ctrl+{long_name}")
    # The longest name that is not too long is simply unknown.
    with pytest.raises(KeyNameError, match="unknown key"):
        parse_keys("x" * MAX_NAME_LENGTH)


@pytest.mark.parametrize(
    ("ch", "keysym"),
    [
        ("a", 0x61),
        ("Z", 0x5A),
        (" ", 0x20),
        ("~", 0x7E),
        ("\n", 0xFF0D),
        ("\r", 0xFF0D),
        ("\t", 0xFF09),
        ("\xa0", 0xA0),  # no-break space: Latin-1
        ("é", 0xE9),
        ("ÿ", 0xFF),
        ("€", 0x010020AC),
        ("中", 0x01004E2D),
        ("ж", 0x01000436),
        ("😀", 0x0101F600),
        ("\U0010ffff", 0x0110FFFF),
    ],
)
def test_keysym_for_char(ch: str, keysym: int) -> None:
    assert keysym_for_char(ch) == keysym


@pytest.mark.parametrize("ch", ["\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\ud800"])
def test_control_characters_type_nothing(ch: str) -> None:
    with pytest.raises(KeyNameError) as raised:
        keysym_for_char(ch)
    assert raised.value.name == ch
    assert f"U+{ord(ch):04X}" in str(raised.value)


@pytest.mark.parametrize("text", ["", "ab", "\r\n"])
def test_keysym_for_char_takes_one_character(text: str) -> None:
    with pytest.raises(ValueError, match="not one character"):
        keysym_for_char(text)


@given(st.characters(blacklist_categories=("Cc", "Cs")))
def test_every_other_character_has_a_keysym(ch: str) -> None:
    keysym = keysym_for_char(ch)
    code = ord(ch)
    assert keysym == (code if code <= 0xFF else 0x01000000 + code)


def test_keysym_for_name_takes_canonical_names_only() -> None:
    assert keysym_for_name("Return") == 0xFF0D
    assert keysym_for_name("U+00E9") == 0xE9
    bad = ("return", "Enter", "ctrl", "u+00e9", "u+00E9", "U+E9", "U+0000041", "", "U+D800")
    for alias in bad:
        with pytest.raises(KeyNameError):
            keysym_for_name(alias)
    with pytest.raises(KeyNameError) as raised:
        keysym_for_name("Retrun")
    assert "Return" in raised.value.suggestions
    with pytest.raises(KeyNameError):
        keysym_for_name(["Return"])  # type: ignore[arg-type]


def test_key_name_errors_carry_name_and_suggestions() -> None:
    error = KeyNameError("Entr", suggestions=("Enter", "Return"))
    assert str(error) == "unknown key 'Entr' (did you mean 'Enter', 'Return'?)"
    assert (error.name, error.suggestions) == ("Entr", ("Enter", "Return"))
    assert str(KeyNameError("x")) == "unknown key 'x'"
    assert str(KeyNameError("x", "custom")) == "custom"
