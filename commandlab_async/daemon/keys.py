"""Key names for the desktop's keyboard: what an agent may call a key, and its X keysym.

Shared by the client (``commandlab_async.daemon.keys``, to refuse a bad name before
anything is sent) and the daemon (``.keys``).  Standard library only, Python >= 3.9, and
nothing imported at import time (``difflib`` only when a name is unknown).

Canonical names are X keysym names (``KEYSYMS``: ``Return``, ``Page_Up``, ``Control_L``,
``XF86AudioMute``, ``a``, ``A``, ``exclam``...) and, for a character without one there,
``U+XXXX`` (its code point in upper-case hex, at least 4 digits: ``U+00E9``).

What agents write (``ALIASES``; every name matches case-insensitively)
---------------------------------------------------------------------
* X keysym names themselves: ``Return``, ``return``, ``BACKSPACE``, ``page_up``,
  ``KP_Enter``, ``XF86AudioMute``, ``F13``; and X's synonyms ``Prior``/``Next``
  (Page_Up/Page_Down), ``quoteright``/``quoteleft`` (apostrophe/grave).
* OpenAI computer use: ``ENTER``, ``CTRL``, ``ALT``, ``OPTION``, ``CMD``, ``WIN``,
  ``ESC``, ``DEL``, ``INS``, ``PGUP``, ``PGDN``, ``ARROWLEFT``, ``CAPSLOCK``, ``F1``...
* Playwright's ``KeyboardEvent.key`` (``Enter``, ``ArrowLeft``, ``Control``, ``Meta``,
  ``Backspace``, ``PageUp``, ``PrintScreen``, ``ContextMenu``, ``AudioVolumeUp``,
  ``MediaPlayPause``, ``BrowserBack``, ``ControlOrMeta``, ``" "``...) and the
  ``KeyboardEvent.code`` names it also takes (``KeyA``, ``Digit1``, ``Numpad5``,
  ``NumpadEnter``, ``ShiftLeft``, ``MetaRight``, ``Quote``, ``Backquote``...).
* xdotool (Anthropic): ``ctrl``, ``alt``, ``shift``, ``super``, ``cmd``, ``ctrl_l``,
  ``ctrl_r``, ``alt_l``... and Gemini's lower case of all of these.

Decisions: ``CTRL``/``CONTROL`` (and Playwright's ``ControlOrMeta``) are ``Control_L``,
``SHIFT`` is ``Shift_L``, ``ALT`` and ``OPTION`` are ``Alt_L``; ``CMD``, ``COMMAND``,
``META``, ``WIN``, ``WINDOWS`` and ``SUPER`` are all ``Super_L``: Linux desktops (and
browsers on Linux, whose ``Meta`` is the Windows key) treat the command key as Super.
xdotool's own ``meta`` means ``Meta_L``; here only the X names ``Meta_L``/``Meta_R``
do.

Combinations (``parse_keys``)
-----------------------------
A string is split on ``+`` (``ctrl+shift+t``, ``Control+Shift+T``); a ``+`` where a key
is expected is the plus key itself (``+``, ``ctrl++``, ``ctrl+++a``), and ``ctrl+`` is
an error.  A list or tuple has one key per element (``["CTRL", "A"]``); an element may
be ``+`` but no combination.  ``U+XXXX`` (4 to 6 hex digits, any case) names a
character by its code point, in either form.  Surrounding whitespace of a name is
ignored, but a name that is exactly one space is the space bar.

A single character is that character's key: alone, ``A`` is the capital A (keysym
``A``, which a keyboard types with Shift) and ``é`` is eacute (``U+00E9``); within a
combination of several keys an ASCII letter is its lower-case key, since agents write
``["CTRL", "A"]`` and ``Control+Shift+T`` for ctrl+a and ctrl+shift+t (name Shift to get
it).  Other characters are kept as given.  Whitespace other than a single space and
control characters are no key.

At most ``MAX_KEYS`` keys in a combination, names of at most ``MAX_NAME_LENGTH``
characters.  Every refusal is a ``KeyNameError`` (a ``ValueError``), non-string input
included.
"""

from __future__ import annotations

MAX_KEYS = 16  # keys in one combination
MAX_NAME_LENGTH = 64  # characters of one key name
MAX_SUGGESTIONS = 3

UNICODE_KEYSYM = 0x01000000  # a character's keysym beyond Latin-1: this plus its code point
_UNICODE_PREFIX = "U+"
_HEX = frozenset("0123456789abcdefABCDEF")
_UPPER_HEX = frozenset("0123456789ABCDEF")

# Canonical X keysym names (X11/keysymdef.h, XF86keysym.h) and their values.
KEYSYMS: dict[str, int] = {
    "BackSpace": 0xFF08,
    "Tab": 0xFF09,
    "Return": 0xFF0D,
    "Pause": 0xFF13,
    "Scroll_Lock": 0xFF14,
    "Escape": 0xFF1B,
    "Home": 0xFF50,
    "Left": 0xFF51,
    "Up": 0xFF52,
    "Right": 0xFF53,
    "Down": 0xFF54,
    "Page_Up": 0xFF55,
    "Page_Down": 0xFF56,
    "End": 0xFF57,
    "Print": 0xFF61,
    "Insert": 0xFF63,
    "Menu": 0xFF67,
    "Num_Lock": 0xFF7F,
    "KP_Enter": 0xFF8D,
    "KP_Home": 0xFF95,
    "KP_Left": 0xFF96,
    "KP_Up": 0xFF97,
    "KP_Right": 0xFF98,
    "KP_Down": 0xFF99,
    "KP_Page_Up": 0xFF9A,
    "KP_Page_Down": 0xFF9B,
    "KP_End": 0xFF9C,
    "KP_Begin": 0xFF9D,
    "KP_Insert": 0xFF9E,
    "KP_Delete": 0xFF9F,
    "KP_Multiply": 0xFFAA,
    "KP_Add": 0xFFAB,
    "KP_Subtract": 0xFFAD,
    "KP_Decimal": 0xFFAE,
    "KP_Divide": 0xFFAF,
    **{f"KP_{digit}": 0xFFB0 + digit for digit in range(10)},
    "KP_Equal": 0xFFBD,
    **{f"F{number}": 0xFFBE + number - 1 for number in range(1, 25)},
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
    "Hyper_R": 0xFFEE,
    "Delete": 0xFFFF,
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
    **{chr(code): code for code in range(0x30, 0x3A)},  # 0-9
    "colon": 0x3A,
    "semicolon": 0x3B,
    "less": 0x3C,
    "equal": 0x3D,
    "greater": 0x3E,
    "question": 0x3F,
    "at": 0x40,
    **{chr(code): code for code in range(0x41, 0x5B)},  # A-Z
    "bracketleft": 0x5B,
    "backslash": 0x5C,
    "bracketright": 0x5D,
    "asciicircum": 0x5E,
    "underscore": 0x5F,
    "grave": 0x60,
    **{chr(code): code for code in range(0x61, 0x7B)},  # a-z
    "braceleft": 0x7B,
    "bar": 0x7C,
    "braceright": 0x7D,
    "asciitilde": 0x7E,
    "XF86AudioLowerVolume": 0x1008FF11,
    "XF86AudioMute": 0x1008FF12,
    "XF86AudioRaiseVolume": 0x1008FF13,
    "XF86AudioPlay": 0x1008FF14,
    "XF86AudioStop": 0x1008FF15,
    "XF86AudioPrev": 0x1008FF16,
    "XF86AudioNext": 0x1008FF17,
    "XF86HomePage": 0x1008FF18,
    "XF86Search": 0x1008FF1B,
    "XF86Back": 0x1008FF26,
    "XF86Forward": 0x1008FF27,
    "XF86Refresh": 0x1008FF29,
}

# Names agents use besides the X names, spelled as their convention does (that spelling
# is what a suggestion shows), and the canonical name each stands for.
_ALIAS_SPELLINGS: tuple[tuple[str, str], ...] = (
    # Playwright: KeyboardEvent.key
    ("Enter", "Return"),
    ("ArrowLeft", "Left"),
    ("ArrowRight", "Right"),
    ("ArrowUp", "Up"),
    ("ArrowDown", "Down"),
    ("Control", "Control_L"),
    ("ControlOrMeta", "Control_L"),  # Meta on macOS only
    ("Meta", "Super_L"),
    ("Alt", "Alt_L"),
    ("Shift", "Shift_L"),
    ("Backspace", "BackSpace"),
    ("PageUp", "Page_Up"),
    ("PageDown", "Page_Down"),
    ("CapsLock", "Caps_Lock"),
    ("NumLock", "Num_Lock"),
    ("ScrollLock", "Scroll_Lock"),
    ("PrintScreen", "Print"),
    ("ContextMenu", "Menu"),
    ("AudioVolumeMute", "XF86AudioMute"),
    ("AudioVolumeDown", "XF86AudioLowerVolume"),
    ("AudioVolumeUp", "XF86AudioRaiseVolume"),
    ("MediaPlayPause", "XF86AudioPlay"),
    ("MediaStop", "XF86AudioStop"),
    ("MediaTrackNext", "XF86AudioNext"),
    ("MediaTrackPrevious", "XF86AudioPrev"),
    ("BrowserBack", "XF86Back"),
    ("BrowserForward", "XF86Forward"),
    ("BrowserRefresh", "XF86Refresh"),
    ("BrowserSearch", "XF86Search"),
    ("BrowserHome", "XF86HomePage"),
    # Playwright: KeyboardEvent.code
    *((f"Key{chr(code)}", chr(code).lower()) for code in range(0x41, 0x5B)),
    *((f"Digit{digit}", str(digit)) for digit in range(10)),
    *((f"Numpad{digit}", f"KP_{digit}") for digit in range(10)),
    ("NumpadEnter", "KP_Enter"),
    ("NumpadAdd", "KP_Add"),
    ("NumpadSubtract", "KP_Subtract"),
    ("NumpadMultiply", "KP_Multiply"),
    ("NumpadDivide", "KP_Divide"),
    ("NumpadDecimal", "KP_Decimal"),
    ("NumpadEqual", "KP_Equal"),
    ("ShiftLeft", "Shift_L"),
    ("ShiftRight", "Shift_R"),
    ("ControlLeft", "Control_L"),
    ("ControlRight", "Control_R"),
    ("AltLeft", "Alt_L"),
    ("AltRight", "Alt_R"),
    ("MetaLeft", "Super_L"),
    ("MetaRight", "Super_R"),
    ("Quote", "apostrophe"),
    ("Backquote", "grave"),
    ("Space", "space"),
    # xdotool, Anthropic (Gemini: the same in lower case)
    ("ctrl", "Control_L"),
    ("ctrl_l", "Control_L"),
    ("ctrl_r", "Control_R"),
    ("alt_l", "Alt_L"),
    ("alt_r", "Alt_R"),
    ("shift_l", "Shift_L"),
    ("shift_r", "Shift_R"),
    ("super", "Super_L"),
    ("super_l", "Super_L"),
    ("super_r", "Super_R"),
    ("cmd", "Super_L"),
    ("hyper", "Hyper_L"),
    # OpenAI computer use
    ("COMMAND", "Super_L"),
    ("WIN", "Super_L"),
    ("WINDOWS", "Super_L"),
    ("OPTION", "Alt_L"),
    ("ESC", "Escape"),
    ("DEL", "Delete"),
    ("INS", "Insert"),
    ("PGUP", "Page_Up"),
    ("PGDN", "Page_Down"),
    ("PGDOWN", "Page_Down"),
    # X's own synonyms (keysymdef.h)
    ("Prior", "Page_Up"),
    ("Next", "Page_Down"),
    ("KP_Prior", "KP_Page_Up"),
    ("KP_Next", "KP_Page_Down"),
    ("quoteright", "apostrophe"),
    ("quoteleft", "grave"),
)

# Every multi-character name (lower case) and the canonical name it stands for: the X
# names first, so an alias never shadows one.
ALIASES: dict[str, str] = {
    **{spelling.lower(): canonical for spelling, canonical in reversed(_ALIAS_SPELLINGS)},
    **{name.lower(): name for name in KEYSYMS if len(name) > 1},
}

# The canonical name of each character that has one (printable ASCII).
_CHAR_NAMES: dict[str, str] = {chr(value): name for name, value in KEYSYMS.items() if value < 0x7F}


class KeyNameError(ValueError):
    """A key name, combination or character that names no key.

    ``name`` is what was given (for a whole combination: the string, or its elements
    joined with ``+``), ``suggestions`` up to ``MAX_SUGGESTIONS`` close names an agent
    could write instead (canonical or alias spellings), best first.
    """

    def __init__(
        self, name: str, message: str | None = None, suggestions: tuple[str, ...] = ()
    ) -> None:
        if message is None:
            message = f"unknown key {_shown(name)}"
            if suggestions:
                message += f" (did you mean {', '.join(map(repr, suggestions))}?)"
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


def _shown(name: str) -> str:
    """``name`` quoted for a message, cut short when it is long."""
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:MAX_NAME_LENGTH]!r}... ({len(name)} characters)"
    return repr(name)


def _suggestions(name: str) -> tuple[str, ...]:
    """Up to ``MAX_SUGGESTIONS`` names close to ``name``, best first, each alias followed
    by the canonical name it stands for."""
    if len(name) > MAX_NAME_LENGTH:
        return ()
    import difflib  # only on this error path: it costs milliseconds to import

    spellings = _spellings()
    found = difflib.get_close_matches(
        name.strip().lower(), spellings, n=MAX_SUGGESTIONS, cutoff=0.6
    )
    suggestions: list[str] = []
    for match in found:
        for suggestion in (spellings[match], ALIASES[match]):
            if suggestion not in suggestions:
                suggestions.append(suggestion)
    return tuple(suggestions[:MAX_SUGGESTIONS])


_SPELLINGS: list[dict[str, str]] = []  # built on the first unknown name


def _spellings() -> dict[str, str]:
    """Lower case -> how to write it, for every multi-character name."""
    if not _SPELLINGS:
        spellings = {name.lower(): name for name in KEYSYMS if len(name) > 1}
        for spelling, _ in _ALIAS_SPELLINGS:
            spellings.setdefault(spelling.lower(), spelling)
        _SPELLINGS.append(spellings)  # whole, or not at all
    return _SPELLINGS[0]


def keysym_for_char(ch: str) -> int:
    """The X keysym that types the one character ``ch``.

    ``\\n`` and ``\\r`` are Return, ``\\t`` Tab; printable Latin-1 (0x20-0x7e, 0xa0-0xff)
    is its code point; any other character (CJK, emoji beyond the BMP...) is
    ``UNICODE_KEYSYM`` plus its code point.  Other control characters (C0, DEL, C1),
    lone surrogates and anything but one character raise ``KeyNameError``.
    """
    if not isinstance(ch, str) or len(ch) != 1:
        shown = ch if isinstance(ch, str) else repr(ch)
        raise KeyNameError(shown, f"not one character: {_shown(shown)}")
    code = ord(ch)
    if ch in "\n\r":
        return KEYSYMS["Return"]
    if ch == "\t":
        return KEYSYMS["Tab"]
    if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000:
        raise KeyNameError(ch, f"no key types U+{code:04X} (a control character or surrogate)")
    if code <= 0xFF:
        return code
    return UNICODE_KEYSYM + code


def keysym_for_name(canonical: str) -> int:
    """The keysym of a canonical name as ``parse_keys`` returns them (``U+XXXX`` too).

    Other spellings (aliases, lower case) raise ``KeyNameError``: canonicalize with
    ``parse_keys`` first.
    """
    if not isinstance(canonical, str):
        raise KeyNameError(repr(canonical), "a key name must be a string")
    value = KEYSYMS.get(canonical)
    if value is not None:
        return value
    code = _code_point(canonical, _UPPER_HEX) if canonical[:2] == _UNICODE_PREFIX else None
    if code is None:
        raise KeyNameError(canonical, suggestions=_suggestions(canonical))
    return keysym_for_char(chr(code))


def _code_point(name: str, digits: frozenset[str]) -> int | None:
    """The code point of ``U+XXXX`` (4 to 6 of ``digits``; at most 0x10FFFF), else None."""
    hex_digits = name[2:]
    if (
        name[:2] not in ("U+", "u+")
        or not 4 <= len(hex_digits) <= 6
        or not all(digit in digits for digit in hex_digits)
    ):
        return None
    code = int(hex_digits, 16)
    return code if code <= 0x10FFFF else None


def _char_name(ch: str) -> str:
    """The canonical name of the key of character ``ch``: ``KEYSYMS``' or ``U+XXXX``."""
    keysym_for_char(ch)  # refuses what no key types
    return _CHAR_NAMES.get(ch) or f"{_UNICODE_PREFIX}{ord(ch):04X}"


def _split(keys: str) -> list[str]:
    """The key names of a string combination: split on ``+``, where a ``+`` in a key's
    place is the plus key and ``U+XXXX`` is one name."""
    names = []
    i, end = 0, len(keys)
    while True:
        if i == end:  # nothing after the last separator (or nothing at all)
            raise KeyNameError(
                keys,
                f"empty key name in {_shown(keys)} (the plus key is '+', as in 'ctrl++')"
                if keys
                else "no key given",
            )
        if keys[i] == "+":
            names.append("+")
            i += 1
        else:
            stop = keys.find("+", i)
            stop = end if stop < 0 else stop
            if keys[i : stop + 1] in ("U+", "u+"):  # U+XXXX: one name, whatever follows
                after = keys.find("+", stop + 1)
                after = end if after < 0 else after
                if _code_point(keys[i:after], _HEX) is not None:
                    stop = after
            names.append(keys[i:stop])
            i = stop
        if i == end:
            return names
        if keys[i] != "+":  # a plus key not followed by a separator: '+a', 'ctrl++a'
            raise KeyNameError(
                keys,
                f"malformed key combination {_shown(keys)}: keys are separated by '+' "
                "(the plus key is '+', as in 'ctrl+++a')",
            )
        i += 1


def _resolve(name: str, combination: bool) -> str:
    """The canonical name of one key name."""
    if not isinstance(name, str):
        raise KeyNameError(repr(name), f"a key name must be a string, not {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH:
        raise KeyNameError(
            name, f"key name too long: {_shown(name)} (at most {MAX_NAME_LENGTH} characters)"
        )
    if name != " ":
        stripped = name.strip()
        if not stripped:
            raise KeyNameError(
                name,
                f"empty key name {name!r}" if not name else f"no key is named {name!r}",
            )
        name = stripped
    if len(name) == 1:
        if combination and "A" <= name <= "Z":
            name = name.lower()
        return _char_name(name)
    canonical = ALIASES.get(name.lower())
    if canonical is not None:
        return canonical
    code = _code_point(name, _HEX)
    if code is not None:
        return _resolve(chr(code), combination)
    raise KeyNameError(name, suggestions=_suggestions(name))


def parse_keys(keys: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """One key or a combination, as canonical names in press order (see the module's
    docstring for what may be written).  Raises ``KeyNameError``."""
    names: list[str] | tuple[str, ...]
    if isinstance(keys, str):
        if len(keys) > MAX_KEYS * (MAX_NAME_LENGTH + 1):
            raise KeyNameError(keys, f"key combination too long ({len(keys)} characters)")
        names = _split(keys)
    elif isinstance(keys, (list, tuple)):
        if not keys:
            raise KeyNameError("", "no key given")
        names = keys
        for name in names[: MAX_KEYS + 1]:
            if (
                isinstance(name, str)
                and "+" in name
                and name != "+"
                and _code_point(name.strip(), _HEX) is None
            ):
                raise KeyNameError(
                    name,
                    f"one key per element, not a combination: {_shown(name)} (the plus key is '+')",
                )
    else:
        raise KeyNameError(
            repr(keys), f"keys must be a string or a list, not {type(keys).__name__}"
        )
    if len(names) > MAX_KEYS:
        given = keys if isinstance(keys, str) else "+".join(map(str, keys[:MAX_KEYS])) + "+..."
        raise KeyNameError(given, f"too many keys in one combination (at most {MAX_KEYS})")
    combination = len(names) > 1
    return tuple(_resolve(name, combination) for name in names)
