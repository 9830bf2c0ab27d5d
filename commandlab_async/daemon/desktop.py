"""The desktop: an X server the daemon starts and supervises, and ``/desktop``, which
drives its screen, keyboard and mouse in-process over one X connection (``x11``).

A desktop image sets ``COMMANDLAB_DESKTOP=xvfb``; the client sets ``COMMANDLAB_SCREEN``.
The daemon then clears stale X locks, starts ``Xvfb`` (no TCP, no screen saver, no
DPMS) and a window manager when the image has one, all before it listens, so a ready
daemon has a ready desktop.  If the X server dies, ``/desktop`` answers
``desktop_unavailable`` with its exit status; commands and files go on working.

``GET /desktop``  ``{"width", "height", "depth", "display", "capture", "cursor"}``.
``POST /desktop``  a batch (``actions``): ``{"results", "screenshot", "settled",
    "cursor"}``; ``screenshot`` is ``{"png": <base64>, "width", "height", "region",
    "scale_x", "scale_y", "capture"}``.  Batches run one at a time.  A batch that fails,
    or whose client goes away, releases every key and button it pressed; one that
    completes leaves held only what ``down``/``key_down`` asked to hold.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib

from . import png
from .actions import BUTTONS, MAX_BATCH_BODY, MAX_CLIPBOARD, ActionError, check_batch
from .connections import peek_client
from .errors import ClientGone, RequestError
from .http import log
from .keys import keysym_for_char, keysym_for_name
from .protocol import (
    BAD_ACTION,
    BAD_JSON,
    DEFAULT_SCREEN,
    DESKTOP_ENV,
    DESKTOP_UNAVAILABLE,
    NO_DESKTOP,
    PAYLOAD_TOO_LARGE,
    SCREEN_ENV,
)
from .x11 import (
    BUTTON_PRESS,
    BUTTON_RELEASE,
    KEY_PRESS,
    KEY_RELEASE,
    MOTION_NOTIFY,
    PROPERTY_NOTIFY,
    SELECTION_CLEAR,
    SELECTION_NOTIFY,
    SELECTION_REQUEST,
    Connection,
    ShmCapture,
    XConnectionError,
    XError,
    XTest,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from typing import Any

    from .connections import Exchange

START_TIMEOUT = 10.0  # seconds for the X server to accept connections
WM_TIMEOUT = 3.0  # seconds for the window manager to announce itself
WM_ANSWER = 1.0  # seconds for it to answer a request (see Session.wm_barrier)
SETTLE_POLL = 0.02  # seconds between frames compared while waiting for the screen to settle
TYPE_CHUNK = 256  # characters whose events go in one write (then: is the client there?)
# Characters off the keymap go through spare keycodes remapped for them, two per keycode
# (plain and shifted).  X clients read a changed mapping lazily, when they next look a
# key up, so a keycode is not remapped again until the clients have had REMAP_GAP to
# look its last characters up, and the map is restored RESTORE_DELAY after the last use
# (at once when the daemon stops).
REMAP_GAP = 0.1
RESTORE_DELAY = 0.5
DRAG_STEP = 4  # ms between a drag's motion events (the first MAX_SPACED_STEPS of them)
MAX_SPACED_STEPS = 250
SCROLL_BUTTONS = {"up": 4, "down": 5, "left": 6, "right": 7}
MAX_CLIPBOARD_WAIT = 2.0
_MAPPING_NOTIFY = 34
_MODIFIERS = ("shift", "lock", "control", "mod1", "mod2", "mod3", "mod4", "mod5")


def parse_screen(text: str | None) -> tuple[int, int, int]:
    if not text:
        return DEFAULT_SCREEN
    parts = text.split("x")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"screen {text!r} is not <width>x<height>x<depth>")
    width, height, depth = (int(p) for p in parts)
    if not (16 <= width <= 8192 and 16 <= height <= 8192 and depth in (16, 24)):
        raise ValueError(f"screen {text!r}: sizes 16..8192, depth 16 or 24")
    return width, height, depth


def _clear_stale_lock(display: int) -> bool:
    """Remove display ``display``'s lock and socket when no live process holds them;
    whether the display is free."""
    lock = f"/tmp/.X{display}-lock"
    try:
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
    except FileNotFoundError:
        pid = 0
    except (OSError, ValueError):
        pid = -1
    if pid > 0:
        try:
            os.kill(pid, 0)
            return False  # a live X server (or another process) has it
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
    for path in (lock, f"/tmp/.X11-unix/X{display}"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


class Desktop:
    """The X server, its window manager, and the one connection that drives them."""

    def __init__(self, kind: str, screen: tuple[int, int, int]) -> None:
        self.kind = kind
        self.screen = screen
        self.display = 0
        self.failure: str | None = None
        self.xserver: subprocess.Popen[bytes] | None = None
        self.wm: subprocess.Popen[bytes] | None = None
        self.session: Session | None = None

    def start(self, env: MutableMapping[str, str]) -> None:
        """Start the X server and the window manager; on failure remember why."""
        try:
            self._start(env)
        except (OSError, XConnectionError, XError, ValueError) as exc:
            self.failure = f"the desktop did not start: {exc}"
            log(self.failure)
            self.stop()

    def _start(self, env: MutableMapping[str, str]) -> None:
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            raise OSError("Xvfb is not installed in this image")
        if not os.path.isdir("/tmp/.X11-unix"):  # the image makes it; a fresh /tmp lacks it
            os.mkdir("/tmp/.X11-unix", 0o700)
            os.chmod("/tmp/.X11-unix", 0o1777)
        self.display = next((n for n in range(1, 64) if _clear_stale_lock(n)), 0)
        if not self.display:
            raise OSError("no free X display between :1 and :63")
        width, height, depth = self.screen
        argv = [xvfb, f":{self.display}", "-screen", "0", f"{width}x{height}x{depth}"]
        argv += ["-nolisten", "tcp", "-s", "0", "-dpms", "-noreset"]
        self.xserver = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        socket_path = f"/tmp/.X11-unix/X{self.display}"
        while not os.path.exists(socket_path):
            if self.xserver.poll() is not None:
                raise OSError(f"Xvfb exited with status {self.xserver.returncode}: {self._xlog()}")
            if time.monotonic() > deadline:
                raise OSError(f"Xvfb did not start within {START_TIMEOUT:g}s")
            time.sleep(0.005)
        self.session = Session(Connection(self.display))
        env["DISPLAY"] = f":{self.display}"
        threading.Thread(target=self._supervise, name="x-supervisor", daemon=True).start()
        wm = shutil.which("openbox")
        if wm is not None:
            self.wm = subprocess.Popen(
                [wm],
                env={**env, "DISPLAY": f":{self.display}"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.session.wait_for_wm(WM_TIMEOUT)

    def _xlog(self) -> str:
        assert self.xserver is not None
        assert self.xserver.stderr is not None
        try:
            text = self.xserver.stderr.read(65536).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-500:]

    def _supervise(self) -> None:
        assert self.xserver is not None
        status = self.xserver.wait()
        if self.failure is None:
            self.failure = f"the X server exited (status {status})"
            log(self.failure)
        if self.session is not None:
            self.session.conn.close()

    def stop(self) -> None:
        """Restore the keymap, then stop the window manager and the X server."""
        if self.session is not None:
            self.session.close()
        for proc in (self.wm, self.xserver):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, 9)

    def summary(self) -> dict[str, Any]:
        """What ``/health`` says of the desktop (no X request)."""
        width, height, depth = self.screen
        return {
            "width": width,
            "height": height,
            "depth": depth,
            "display": f":{self.display}" if self.display else None,
            "failure": self.failure,
        }

    def usable(self) -> Session:
        if self.failure is not None or self.session is None:
            raise RequestError(DESKTOP_UNAVAILABLE, self.failure or "the desktop is not running")
        if self.session.conn.broken is not None:
            raise RequestError(DESKTOP_UNAVAILABLE, self.session.conn.broken)
        return self.session

    def info(self) -> dict[str, Any]:
        session = self.usable()
        # Not under the batch lock: the connection takes concurrent requests, and this
        # shows what a running batch holds.
        x, y, mask = session.run_x(session.conn.query_pointer)
        return {
            "width": session.conn.width,
            "height": session.conn.height,
            "depth": session.conn.depth,
            "display": f":{self.display}",
            "capture": session.capture_kind,
            # Clicks wait for it to let each press through (Session.wm_barrier).
            "window_manager": session.wm_answers,
            "cursor": [x, y],
            # What the X server has down (not what we think we pressed): stuck input shows.
            "pressed": {
                "buttons": [n for n in range(1, 6) if mask & (1 << (7 + n))],
                "modifiers": [name for bit, name in enumerate(_MODIFIERS) if mask & (1 << bit)],
            },
        }


class Session:
    """One X connection and what it knows: keymap, capture, clipboard, what is held."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.xtest = XTest(conn)
        self.width, self.height = conn.width, conn.height
        self.shm: ShmCapture | None = None
        try:
            self.shm = ShmCapture(conn)
        except (XConnectionError, XError, OSError):
            self.shm = None  # e.g. no MIT-SHM 1.2, or no memfd: the core path works anyway
        if conn.broken is not None:  # an SHM failure can break nothing, but check
            raise XConnectionError(conn.broken)
        self.capture_kind = "shm" if self.shm is not None else "core"
        self.bands = png.Bands()  # the last screenshot's compressed rows
        self.keymap_stale = True
        self.per = 0
        self.keysyms: list[int] = []
        self.codes: dict[int, tuple[int, bool]] = {}  # keysym -> (keycode, needs shift)
        self.spare: list[int] = []
        self.remapped: dict[int, tuple[int, int]] = {}  # spare keycode -> its two keysyms
        self.off_map: dict[int, tuple[int, bool]] = {}  # keysym -> spare keycode, shifted
        self.remap_used: dict[int, float] = {}  # spare keycode -> when it was last pressed
        self.restore_timer: threading.Timer | None = None
        self.held_keys: set[int] = set()
        self.held_buttons: set[int] = set()
        self.atoms: dict[str, int] = {}
        self.window = conn.create_input_window()
        self.clipboard: bytes | None = None  # what we own, UTF-8
        self.selection_arrived = threading.Event()
        self.wm_answered = threading.Event()
        self.wm_answers = False  # a window manager that answers ``wm_barrier``
        self.lock = threading.Lock()  # one batch at a time; the keymap's restore too
        conn.on_event = self.on_event
        conn.set_screen_saver_off()
        for name in (
            "CLIPBOARD",
            "PRIMARY",
            "TARGETS",
            "UTF8_STRING",
            "STRING",
            "TEXT",
            "INCR",
            "COMMANDLAB_SELECTION",
            "_NET_SUPPORTING_WM_CHECK",
            "_NET_CLIENT_LIST",
            "_NET_WM_NAME",
            "WM_NAME",
            "_NET_WM_PID",
            "_NET_REQUEST_FRAME_EXTENTS",
            "_NET_FRAME_EXTENTS",
            "text/plain;charset=utf-8",
        ):
            self.atoms[name] = conn.intern_atom(name)

    # ------------------------------------------------------------ plumbing

    def run_x(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except XConnectionError as exc:
            raise RequestError(DESKTOP_UNAVAILABLE, str(exc)) from None

    def wait_for_wm(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        atom = self.atoms["_NET_SUPPORTING_WM_CHECK"]
        while time.monotonic() < deadline:
            kind, _fmt, value, _after = self.conn.get_property(self.conn.root, atom, 4, False)
            if kind and value:
                # It announces itself before it reads events, and may drop what came
                # before: ask again until it answers.
                while not self.wm_answers and time.monotonic() < deadline:
                    self.wm_answers = self.wm_barrier(0.1)
                if not self.wm_answers:
                    log("the window manager does not answer; clicks do not wait for it")
                return
            time.sleep(0.01)
        log("the window manager did not announce itself; going on without waiting")

    def wm_barrier(self, timeout: float = WM_ANSWER) -> bool:
        """Wait until the window manager has handled every event it was sent so far.

        A window manager that focuses windows on click grabs the button: the X server
        holds the pointer's events until the manager lets the press through, and motion
        that arrives meanwhile can move where the press lands.  The manager answers EWMH
        requests in order with the events it gets, so once it answered one sent after a
        press (``_NET_REQUEST_FRAME_EXTENTS``: it sets a property on our window), it has
        let that press through.  Whether it answered within ``WM_ANSWER`` seconds.
        """
        self.wm_answered.clear()
        request = self.atoms["_NET_REQUEST_FRAME_EXTENTS"]
        self.conn.send([self.conn.client_message_to_root(self.window, request)])
        return self.wm_answered.wait(timeout)

    def on_event(self, event: bytes) -> None:
        code = event[0] & 0x7F
        if code == SELECTION_REQUEST:
            self.answer_selection(event)
        elif code == SELECTION_CLEAR:
            (selection,) = struct.unpack_from("<I", event, 12)
            if selection == self.atoms.get("CLIPBOARD"):
                self.clipboard = None
        elif code == SELECTION_NOTIFY:
            self.selection_arrived.set()
        elif code == _MAPPING_NOTIFY:
            self.keymap_stale = True
        elif code == PROPERTY_NOTIFY:
            window, atom = struct.unpack_from("<II", event, 4)
            if window == self.window and atom == self.atoms.get("_NET_FRAME_EXTENTS"):
                self.wm_answered.set()

    # ------------------------------------------------------------ keyboard

    def load_keymap(self) -> None:
        if not self.keymap_stale:
            return
        self.keymap_stale = False
        per, keysyms = self.conn.keyboard_mapping()
        self.per, self.keysyms = per, keysyms
        codes: dict[int, tuple[int, bool]] = {}
        spare = []
        for index in range(len(keysyms) // per):
            code = self.conn.min_keycode + index
            row = keysyms[index * per : (index + 1) * per]
            if code in self.remapped:
                spare.append(code)
                continue
            if not any(row):
                spare.append(code)
                continue
            for level in (0, 1):
                if level < per and row[level] and row[level] not in codes:
                    codes[row[level]] = (code, level == 1)
        # Prefer level 0 everywhere (a keysym on level 1 of one key and 0 of another).
        for index in range(len(keysyms) // per):
            code = self.conn.min_keycode + index
            first = keysyms[index * per]
            if first and code not in self.remapped:
                codes[first] = (code, False) if codes.get(first, (0, True))[1] else codes[first]
        self.codes, self.spare = codes, spare
        shift = codes.get(0xFFE1)
        self.shift_code = shift[0] if shift else 0

    def key_events(self, keysym: int, events: list[tuple[int, int]]) -> None:
        """Append the press and release of the key that types ``keysym``."""
        code, shift = self.code_for(keysym)
        if shift and self.shift_code:
            events.append((KEY_PRESS, self.shift_code))
        events += [(KEY_PRESS, code), (KEY_RELEASE, code)]
        if shift and self.shift_code:
            events.append((KEY_RELEASE, self.shift_code))

    def code_for(self, keysym: int) -> tuple[int, bool]:
        """(keycode, whether shift is needed) of the key that types ``keysym``."""
        found = self.codes.get(keysym) or self.off_map.get(keysym)
        if found is None:
            raise LookupError(keysym)
        return found

    def codes_needed(self, keysyms: list[int]) -> int:
        """How many spare keycodes typing ``keysyms`` (distinct, off the keymap) takes."""
        kept = {self.off_map[ks][0] for ks in keysyms if ks in self.off_map}
        wanted = sum(1 for ks in keysyms if ks not in self.off_map)
        return len(kept) + (wanted + 1) // 2

    def remap(self, keysyms: list[int]) -> None:
        """Put each of ``keysyms`` (distinct, off the keymap; ``codes_needed`` of them at
        most ``len(self.spare)``) on a spare keycode."""
        wanted = [ks for ks in keysyms if ks not in self.off_map]
        if not wanted:
            return
        if self.restore_timer is not None:
            self.restore_timer.cancel()
            self.restore_timer = None
        kept = {self.off_map[ks][0] for ks in keysyms if ks in self.off_map}
        free = sorted(
            (code for code in self.spare if code not in kept),
            key=lambda code: self.remap_used.get(code, 0.0),
        )
        pairs = [wanted[i : i + 2] for i in range(0, len(wanted), 2)]
        chosen = free[: len(pairs)]
        newest = max((self.remap_used.get(code, 0.0) for code in chosen), default=0.0)
        wait = newest + REMAP_GAP - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the clients may not have looked the old characters up yet
        requests = []
        for code, pair in zip(chosen, pairs):  # noqa: B905  # Python 3.9: no strict=
            for old in self.remapped.get(code, ()):
                self.off_map.pop(old, None)
            plain, shifted = pair[0], pair[-1]
            self.remapped[code] = (plain, shifted)
            self.off_map[plain] = (code, False)
            if shifted != plain:
                self.off_map[shifted] = (code, True)
            row = [plain, shifted] + [0] * (self.per - 2)
            requests.append(self.conn.change_keyboard_mapping_request(code, self.per, row))
        self.conn.send(requests)

    def schedule_restore(self) -> None:
        if not self.remapped:
            return
        if self.restore_timer is not None:
            self.restore_timer.cancel()
        self.restore_timer = threading.Timer(RESTORE_DELAY, self.restore_keymap)
        self.restore_timer.daemon = True
        self.restore_timer.start()

    def restore_keymap(self, wait: float = 0.0) -> None:
        acquired = self.lock.acquire(timeout=wait) if wait else self.lock.acquire(blocking=False)
        if not acquired:
            return  # a batch runs: it schedules the restore again when it ends
        try:
            if not self.remapped:
                return
            requests = [
                self.conn.change_keyboard_mapping_request(code, self.per, [0] * self.per)
                for code in self.remapped
            ]
            self.remapped.clear()
            self.off_map.clear()
            with contextlib.suppress(XConnectionError):
                self.conn.send(requests)
        finally:
            self.lock.release()

    # ------------------------------------------------------------ input

    def fake(self, events: list[tuple[int, int]], x: int = 0, y: int = 0) -> None:
        self.conn.send([self.xtest.fake(kind, detail, x, y) for kind, detail in events])

    def move(self, x: int, y: int) -> None:
        self.conn.send([self.xtest.fake(MOTION_NOTIFY, 0, x, y)])

    def press_keys(self, names: list[str], pressed: list[tuple[str, int]]) -> None:
        codes = [self.named_code(name) for name in names]
        events: list[tuple[int, int]] = []
        for code in codes:
            events.append((KEY_PRESS, code))
            pressed.append(("key", code))
        self.fake(events)
        self.held_keys.update(codes)

    def release_keys(self, names: list[str]) -> None:
        codes = [self.named_code(name) for name in names]
        self.fake([(KEY_RELEASE, code) for code in reversed(codes)])
        self.held_keys.difference_update(codes)

    def named_code(self, name: str) -> int:
        keysym = keysym_for_name(name)
        try:
            return self.code_for(keysym)[0]
        except LookupError:
            self.remap([keysym])
            return self.code_for(keysym)[0]

    def button(self, button: int, down: bool, pressed: list[tuple[str, int]]) -> None:
        self.fake([(BUTTON_PRESS if down else BUTTON_RELEASE, button)])
        if down:
            self.held_buttons.add(button)
            pressed.append(("button", button))
            if self.wm_answers and not self.wm_barrier():
                self.wm_answers = False
                log("the window manager stopped answering; clicks no longer wait for it")
        else:
            self.held_buttons.discard(button)

    def release(self, pressed: list[tuple[str, int]]) -> None:
        """Release what ``pressed`` lists and is still held (newest first)."""
        events = []
        for kind, detail in reversed(pressed):
            if kind == "key" and detail in self.held_keys:
                events.append((KEY_RELEASE, detail))
                self.held_keys.discard(detail)
            elif kind == "button" and detail in self.held_buttons:
                events.append((BUTTON_RELEASE, detail))
                self.held_buttons.discard(detail)
        if events:
            with contextlib.suppress(XConnectionError):
                self.fake(events)

    def type_text(self, text: str, alive: Any, pressed: list[tuple[str, int]]) -> None:
        """Type ``text`` exactly: characters on the keymap through their keys, others
        through spare keycodes remapped for them, a round of distinct ones at a time."""
        keysyms = [keysym_for_char(ch) for ch in text]
        index = 0
        while index < len(keysyms):
            alive()
            self.load_keymap()
            end = index
            off_map: list[int] = []
            while end < len(keysyms) and end - index < TYPE_CHUNK:
                keysym = keysyms[end]
                if keysym not in self.codes and keysym not in off_map:
                    if self.codes_needed([*off_map, keysym]) > len(self.spare):
                        break
                    off_map.append(keysym)
                end += 1
            if off_map and not self.spare:
                raise RequestError(
                    DESKTOP_UNAVAILABLE, "the keymap has no spare keycode for this character"
                )
            self.remap(off_map)
            events: list[tuple[int, int]] = []
            for keysym in keysyms[index:end]:
                self.key_events(keysym, events)
            # Should the write fail half-way, shift must not stay down.
            if self.shift_code:
                pressed.append(("key", self.shift_code))
                self.held_keys.add(self.shift_code)
            self.fake(events)
            self.held_keys.discard(self.shift_code)
            now = time.monotonic()
            for keysym in off_map:
                self.remap_used[self.code_for(keysym)[0]] = now
            index = end

    # ------------------------------------------------------------ screen

    def grab(self, region: list[int] | None) -> tuple[Any, int, int]:
        """(ZPixmap rows, width, height) of the region (default: the whole screen)."""
        x, y, w, h = region or [0, 0, self.width, self.height]
        if self.shm is not None:
            return self.shm.grab(x, y, w, h), w, h
        return self.conn.get_image(x, y, w, h), w, h

    def screenshot(self, region: list[int] | None, fit: list[int] | None) -> dict[str, Any]:
        pixels, w, h = self.grab(region)
        if fit is None or (fit[0] >= w and fit[1] >= h):
            data, out_w, out_h = png.encode_unchanged(self.bands, pixels, w, h, w * 4), w, h
        else:
            data, out_w, out_h = png.encode(pixels, w, h, w * 4, fit=(fit[0], fit[1]))
        return {
            "png": base64.b64encode(data).decode("ascii"),
            "width": out_w,
            "height": out_h,
            "region": region or [0, 0, self.width, self.height],
            "scale_x": w / out_w,
            "scale_y": h / out_h,
            "capture": self.capture_kind,
        }

    def settle(self, timeout: float, quiet: float, alive: Any) -> bool:
        """Wait until the screen has not changed for ``quiet`` seconds (at most
        ``timeout``); whether it settled."""
        start = time.monotonic()
        last = -1
        since = start
        while True:
            alive()
            pixels, _w, _h = self.grab(None)
            crc = zlib.crc32(pixels)
            now = time.monotonic()
            if crc != last:
                last, since = crc, now
            elif now - since >= quiet:
                return True
            if now - start >= timeout:
                return False
            time.sleep(min(SETTLE_POLL, max(0.0, start + timeout - now)))

    # ------------------------------------------------------------ clipboard

    def set_clipboard(self, text: str) -> None:
        self.clipboard = text.encode("utf-8", "surrogatepass")
        for name in ("CLIPBOARD", "PRIMARY"):
            self.conn.set_selection_owner(self.window, self.atoms[name])

    def answer_selection(self, event: bytes) -> None:
        """Serve our clipboard to an app that pastes (runs on the reader thread)."""
        (when, _owner, requestor, selection, target, prop) = struct.unpack_from("<IIIIII", event, 4)
        prop = prop or target
        data = self.clipboard
        atoms = self.atoms
        requests = []
        if data is None:
            prop = 0
        elif target == atoms["TARGETS"]:
            offered = [
                atoms["TARGETS"],
                atoms["UTF8_STRING"],
                atoms["STRING"],
                atoms["TEXT"],
                atoms["text/plain;charset=utf-8"],
            ]
            requests.append(
                self.conn.change_property(
                    requestor, prop, 4, 32, struct.pack(f"<{len(offered)}I", *offered)
                )
            )
        elif target in (
            atoms["UTF8_STRING"],
            atoms["TEXT"],
            atoms["STRING"],
            atoms["text/plain;charset=utf-8"],
        ):
            if target == atoms["STRING"]:
                kind = atoms["STRING"]
                data = data.decode("utf-8", "replace").encode("latin-1", "replace")
            else:
                kind = atoms["UTF8_STRING"] if target == atoms["TEXT"] else target
            step = max(4, (self.conn.max_request - 8) * 4)
            for offset in range(0, max(len(data), 1), step):
                requests.append(
                    self.conn.change_property(
                        requestor, prop, kind, 8, data[offset : offset + step], append=offset > 0
                    )
                )
        else:
            prop = 0
        notify = struct.pack(
            "<BxHIIIII", SELECTION_NOTIFY, 0, when, requestor, selection, target, prop
        )
        requests.append(
            self.conn.send_event_request(requestor, notify + b"\0" * (32 - len(notify)))
        )
        with contextlib.suppress(XConnectionError):
            self.conn.send(requests)

    def get_clipboard(self) -> str:
        if self.clipboard is not None:
            return self.clipboard.decode("utf-8", "replace")
        self.selection_arrived.clear()
        prop = self.atoms["COMMANDLAB_SELECTION"]
        self.conn.convert_selection(
            self.window, self.atoms["CLIPBOARD"], self.atoms["UTF8_STRING"], prop
        )
        if not self.selection_arrived.wait(MAX_CLIPBOARD_WAIT):
            return ""  # nobody owns the clipboard, or its owner did not answer
        kind, _fmt, value, after = self.conn.get_property(self.window, prop, MAX_CLIPBOARD, True)
        if kind == self.atoms["INCR"] or after:
            raise RequestError(
                BAD_ACTION, f"the clipboard holds more than {MAX_CLIPBOARD} bytes", index=None
            )
        return value.decode("utf-8", "replace")

    def windows(self) -> list[dict[str, Any]]:
        atoms = self.atoms
        _kind, _fmt, value, _after = self.conn.get_property(
            self.conn.root, atoms["_NET_CLIENT_LIST"], 4096, False
        )
        found = []
        for (window,) in struct.iter_unpack("<I", value[: len(value) // 4 * 4]):
            try:
                title = self.conn.get_property(window, atoms["_NET_WM_NAME"], 1024, False)[2]
                if not title:
                    title = self.conn.get_property(window, atoms["WM_NAME"], 1024, False)[2]
                pid_value = self.conn.get_property(window, atoms["_NET_WM_PID"], 4, False)[2]
                x, y, w, h = self.conn.geometry(window)
            except XError:
                continue  # it went away meanwhile
            found.append(
                {
                    "id": window,
                    "title": title.decode("utf-8", "replace"),
                    "pid": struct.unpack("<I", pid_value)[0] if len(pid_value) == 4 else None,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                }
            )
        return found

    # ------------------------------------------------------------ batches

    def run_batch(self, batch: dict[str, Any], alive: Any) -> dict[str, Any]:
        pressed: list[tuple[str, int]] = []
        results: list[Any] = []
        try:
            self.load_keymap()
            for action in batch["actions"]:
                alive()
                results.append(self.run_action(action, pressed, alive))
            if any(kind == "key" for kind, _ in pressed) or self.remapped:
                self.conn.sync()  # everything reached the server (and errors came back)
        except BaseException:
            self.release(pressed)
            raise
        finally:
            self.schedule_restore()
        reply: dict[str, Any] = {"results": results, "settled": None, "screenshot": None}
        if batch["settle"] is not None:
            reply["settled"] = self.settle(
                batch["settle"]["timeout"], batch["settle"]["quiet"], alive
            )
        if batch["screenshot"] is not None:
            reply["screenshot"] = self.screenshot(
                batch["screenshot"]["region"], batch["screenshot"]["fit"]
            )
        reply["cursor"] = list(self.conn.query_pointer()[:2])
        return reply

    def run_action(self, action: dict[str, Any], pressed: list[tuple[str, int]], alive: Any) -> Any:
        do = action["do"]
        if "x" in action and do != "move":
            self.move(action["x"], action["y"])
        if do == "move":
            self.move(action["x"], action["y"])
        elif do == "click":
            self.press_keys(action["keys"], pressed)
            button = BUTTONS[action["button"]]
            for _ in range(action["count"]):
                self.button(button, True, pressed)
                self.button(button, False, pressed)
            self.release_keys(action["keys"])
        elif do in ("down", "up"):
            self.button(BUTTONS[action["button"]], do == "down", pressed)
        elif do == "drag":
            self.drag(action, pressed)
        elif do == "scroll":
            self.press_keys(action["keys"], pressed)
            for delta, (minus, plus) in (
                (action["dy"], ("up", "down")),
                (action["dx"], ("left", "right")),
            ):
                button = SCROLL_BUTTONS[plus if delta > 0 else minus]
                self.fake([(BUTTON_PRESS, button), (BUTTON_RELEASE, button)] * abs(delta))
            self.release_keys(action["keys"])
        elif do == "press":
            self.press_keys(action["keys"], pressed)
            self.release_keys(action["keys"])
        elif do == "key_down":
            self.press_keys([action["key"]], pressed)
        elif do == "key_up":
            self.release_keys([action["key"]])
        elif do == "type":
            self.type_text(action["text"], alive, pressed)
        elif do == "clipboard_set":
            self.set_clipboard(action["text"])
        elif do == "clipboard_get":
            return {"text": self.get_clipboard()}
        elif do == "cursor":
            x, y, _mask = self.conn.query_pointer()
            return {"cursor": [x, y]}
        elif do == "windows":
            return {"windows": self.windows()}
        elif do == "wait":
            deadline = time.monotonic() + action["seconds"]
            while True:
                alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.05))
        return None

    def drag(self, action: dict[str, Any], pressed: list[tuple[str, int]]) -> None:
        path = action["path"]
        button = BUTTONS[action["button"]]
        self.press_keys(action["keys"], pressed)
        self.move(*path[0])
        self.button(button, True, pressed)
        moves: list[bytes] = []
        for index in range(1, len(path)):  # not itertools.pairwise: Python 3.9
            (x0, y0), (x1, y1) = path[index - 1], path[index]
            steps = max(1, min(20, max(abs(x1 - x0), abs(y1 - y0)) // 16))
            for step in range(1, steps + 1):
                x = x0 + (x1 - x0) * step // steps
                y = y0 + (y1 - y0) * step // steps
                # Spaced in time (the X server holds each back DRAG_STEP ms, for this
                # client only), so apps that merge queued motion still see the path.
                delay = DRAG_STEP if len(moves) < MAX_SPACED_STEPS else 0
                moves.append(self.xtest.fake(MOTION_NOTIFY, 0, x, y, delay=delay))
        self.conn.send(moves)
        self.button(button, False, pressed)
        self.release_keys(action["keys"])

    def close(self) -> None:
        if self.restore_timer is not None:
            self.restore_timer.cancel()
        self.release(
            [("key", code) for code in self.held_keys] + [("button", b) for b in self.held_buttons]
        )
        self.restore_keymap(wait=1.0)
        with contextlib.suppress(XConnectionError, XError):
            self.conn.sync()

    def detach(self) -> None:
        """End a session that ``open_session`` opened: what its batches left held stays
        held (a later process may release it, as a separate mouse-up does), the keymap is
        restored once the apps have had ``RESTORE_DELAY`` to read the remapped keys, and
        the connection closes."""
        if self.restore_timer is not None:
            self.restore_timer.join()  # it restores the keymap when its delay is up
        self.restore_keymap(wait=1.0)
        with contextlib.suppress(XConnectionError, XError):
            self.conn.sync()
        self.conn.close()


def open_session(display: int) -> Session:
    """A session of its own on the running desktop's display ``:display``, for a process
    other than the daemon that drives the same screen (Inspect's computer tool in a
    desktop image); end it with ``Session.detach``.  Raises ``XConnectionError``."""
    return Session(Connection(display))


def start_desktop(env: Mapping[str, str], command_env: MutableMapping[str, str]) -> Desktop | None:
    """The desktop the image asks for (``COMMANDLAB_DESKTOP``), started; None without one."""
    kind = env.get(DESKTOP_ENV, "")
    if not kind:
        return None
    try:
        screen = parse_screen(env.get(SCREEN_ENV))
    except ValueError as exc:
        desktop = Desktop(kind, DEFAULT_SCREEN)
        desktop.failure = str(exc)
        return desktop
    desktop = Desktop(kind, screen)
    if kind != "xvfb":
        desktop.failure = f"unknown desktop kind {kind!r} (this daemon runs 'xvfb')"
        return desktop
    desktop.start(command_env)
    return desktop


def read_batch(ex: Exchange) -> object:
    parts = []
    size = 0
    while True:
        data = ex.body.read()
        if not data:
            break
        size += len(data)
        if size > MAX_BATCH_BODY:
            raise RequestError(PAYLOAD_TOO_LARGE, f"a batch is at most {MAX_BATCH_BODY} bytes")
        parts.append(data)
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise RequestError(BAD_JSON, "the batch is not valid JSON") from None


def handle_desktop(ex: Exchange) -> None:
    desktop = ex.server.desktop
    if desktop is None:
        raise RequestError(NO_DESKTOP, "this sandbox's image has no desktop")
    if ex.request.method == "GET":
        ex.send_json(200, desktop.info())
        return
    raw = read_batch(ex)
    session = desktop.usable()
    try:
        batch = check_batch(raw, session.width, session.height)
    except ActionError as exc:
        raise RequestError(BAD_ACTION, str(exc), index=exc.index) from None

    def alive() -> None:
        if peek_client(ex.conn) == "gone":
            raise ClientGone()

    with session.lock:
        try:
            reply = session.run_batch(batch, alive)
        except XConnectionError as exc:
            raise RequestError(DESKTOP_UNAVAILABLE, str(exc)) from None
        except XError as exc:
            raise RequestError(BAD_ACTION, f"the X server refused it: {exc}", index=None) from None
    ex.send_json(200, reply)
