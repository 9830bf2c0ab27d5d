"""A small X11 client that speaks the wire protocol itself (standard library only).

Why not libX11 through ctypes: libX11 calls ``exit()`` when its connection breaks (the
X server dying would take the daemon with it) and blocks without a timeout when the
server stops answering; its threading needs care.  The few requests a desktop needs —
images, synthetic input (XTEST), the keyboard map, the pointer, selections — take a few
hundred lines here, with a timeout on every reply and errors as exceptions.

Screenshots use MIT-SHM when the server offers version 1.2 (``ShmAttachFd``: a memfd
passed over the socket, no System V ids), else the core ``GetImage`` (the image crosses
the socket); ``capture`` says which one runs.  One reader thread takes every packet off
the socket: replies and errors go to the request that waits for them, selection events
to the clipboard owner.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

REPLY_TIMEOUT = 5.0  # seconds a reply may take before the connection is declared broken

# Core request opcodes.
_CREATE_WINDOW = 1
_INTERN_ATOM = 16
_CHANGE_PROPERTY = 18
_GET_PROPERTY = 20
_SET_SELECTION_OWNER = 22
_CONVERT_SELECTION = 24
_SEND_EVENT = 25
_QUERY_POINTER = 38
_TRANSLATE_COORDINATES = 40
_GET_INPUT_FOCUS = 43
_GET_GEOMETRY = 14
_GET_IMAGE = 73
_QUERY_EXTENSION = 98
_CHANGE_KEYBOARD_MAPPING = 100
_GET_KEYBOARD_MAPPING = 101
_SET_SCREEN_SAVER = 107

# Events and XTEST input types.
SELECTION_CLEAR = 29
SELECTION_REQUEST = 30
SELECTION_NOTIFY = 31
KEY_PRESS = 2
KEY_RELEASE = 3
BUTTON_PRESS = 4
BUTTON_RELEASE = 5
MOTION_NOTIFY = 6

_Z_PIXMAP = 2
_ALL_PLANES = 0xFFFFFFFF
_PROP_REPLACE = 0
_PROP_APPEND = 2
_ATOM_TYPE = 4  # the predefined atom ATOM
_PROPERTY_CHANGE_MASK = 0x400000
_SUBSTRUCTURE_MASKS = 0x180000  # SubstructureNotify | SubstructureRedirect
PROPERTY_NOTIFY = 28
CLIENT_MESSAGE = 33


class XError(Exception):
    """The X server refused a request (an X protocol error)."""

    def __init__(self, code: int, major: int, minor: int, value: int) -> None:
        super().__init__(f"X error {code} on request {major}.{minor} (value {value:#x})")
        self.code = code


class XConnectionError(Exception):
    """The connection to the X server broke, or it stopped answering."""


class _Waiter:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: bytes | None = None
        self.error: BaseException | None = None


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class Connection:
    """One connection to an X server's display on its Unix socket."""

    def __init__(self, display: int, timeout: float = REPLY_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(f"/tmp/.X11-unix/X{display}")
            self._setup()
        except (OSError, struct.error) as exc:
            self.sock.close()
            raise XConnectionError(f"cannot connect to display :{display}: {exc}") from exc
        # The timeout stays: a write to a server that stopped reading fails (and breaks
        # the connection) instead of holding the desktop forever; the reader waits on.
        self._send_lock = threading.Lock()
        self._seq = 0  # the last request's sequence number (full count, not 16 bits)
        self._waiters: dict[int, _Waiter] = {}
        self._state_lock = threading.Lock()
        self.broken: str | None = None
        self.on_event: Callable[[bytes], None] | None = None
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_loop, name="x11-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ setup

    def _recv_exact(self, n: int, patient: bool = False) -> bytes:
        """``n`` bytes; ``patient``: however long they take (the reader), else within the
        socket's timeout."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except socket.timeout:  # noqa: UP041  # Python 3.9: not yet TimeoutError
                if patient:
                    continue
                raise
            if not k:
                raise XConnectionError("the X server closed the connection")
            got += k
        return bytes(buf)

    def _setup(self) -> None:
        self.sock.sendall(struct.pack("<BxHHHHxx", 0x6C, 11, 0, 0, 0))
        head = self._recv_exact(8)
        status, reason_len, _major, _minor, length = struct.unpack("<BBHHH", head)
        data = self._recv_exact(length * 4)
        if status != 1:
            reason = data[:reason_len].decode("latin-1", "replace")
            raise XConnectionError(f"the X server refused the connection: {reason}")
        (
            _release,
            self.id_base,
            self.id_mask,
            _motion,
            vendor_len,
            self.max_request,
            screens,
            formats,
            _byte_order,
            _bit_order,
            _unit,
            _pad_bits,
            self.min_keycode,
            self.max_keycode,
        ) = struct.unpack_from("<IIIIHHBBBBBBBB", data, 0)
        offset = 32 + vendor_len + _pad(vendor_len)
        self.bits_per_pixel: dict[int, int] = {}
        for _ in range(formats):
            depth, bpp, _scanline_pad = struct.unpack_from("<BBB", data, offset)
            self.bits_per_pixel[depth] = bpp
            offset += 8
        if screens < 1:
            raise XConnectionError("the X server has no screen")
        (self.root, _colormap, _white, _black, _masks, self.width, self.height) = (
            struct.unpack_from("<IIIIIHH", data, offset)
        )
        self.depth = data[offset + 38]

    def new_id(self) -> int:
        """A fresh resource id (window, SHM segment) of this connection."""
        step = self.id_mask & -self.id_mask
        self._next_id += step
        if self._next_id > self.id_mask:
            raise XConnectionError("out of resource ids")
        return int(self.id_base | self._next_id)

    # ------------------------------------------------------------ requests

    def _fail(self, reason: str) -> None:
        with self._state_lock:
            if self.broken is None:
                self.broken = reason
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.error = XConnectionError(reason)
            waiter.done.set()

    def _write(self, data: bytes, fds: list[int] | None) -> None:
        """Write requests (with ``fds`` passed alongside); a failure breaks the connection."""
        try:
            if fds:
                data = data[socket.send_fds(self.sock, [data], fds) :]
            if data:
                self.sock.sendall(data)
        except OSError as exc:  # a timeout too: a server that stopped reading
            self._fail(f"cannot write to the X server: {exc}")
            raise XConnectionError(self.broken or str(exc)) from exc

    def send(self, requests: list[bytes], fds: list[int] | None = None) -> int:
        """Send requests that expect no reply; the last one's sequence number."""
        with self._send_lock:
            if self.broken is not None:
                raise XConnectionError(self.broken)
            self._write(b"".join(requests), fds)
            self._seq += len(requests)
            return self._seq

    def call(self, request: bytes) -> bytes:
        """Send one request that has a reply and wait for the reply (32 bytes + data)."""
        waiter = _Waiter()
        with self._send_lock:
            if self.broken is not None:
                raise XConnectionError(self.broken)
            seq = self._seq + 1
            with self._state_lock:
                self._waiters[seq & 0xFFFF] = waiter
            self._write(request, None)
            self._seq = seq
        if not waiter.done.wait(self.timeout):
            self._fail(f"the X server did not answer within {self.timeout:g}s")
            self.close()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        return waiter.reply

    def sync(self) -> None:
        """Round trip: every request sent before has been processed (errors included)."""
        self.call(struct.pack("<BxH", _GET_INPUT_FOCUS, 1))

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._recv_exact(32, patient=True)
                kind = head[0]
                if kind == 1:  # a reply, maybe with more data
                    (length,) = struct.unpack_from("<I", head, 4)
                    packet = head + self._recv_exact(length * 4, True) if length else head
                    self._deliver(head, packet, None)
                elif kind == 0:  # an error
                    code, _seq, value, minor, major = struct.unpack_from("<BHIHB", head, 1)
                    self._deliver(head, None, XError(code, major, minor, value))
                elif kind == 35:  # a generic event: we select none, but skip its data
                    (length,) = struct.unpack_from("<I", head, 4)
                    if length:
                        self._recv_exact(length * 4, True)
                elif self.on_event is not None:
                    self.on_event(head)
        except (OSError, XConnectionError) as exc:
            self._fail(f"lost the connection to the X server: {exc}")

    def _deliver(self, head: bytes, packet: bytes | None, error: XError | None) -> None:
        (seq,) = struct.unpack_from("<H", head, 2)
        with self._state_lock:
            waiter = self._waiters.pop(seq, None)
        if waiter is None:
            return  # an error of a request nobody waits for: seen at the next sync
        waiter.reply = packet
        waiter.error = error
        waiter.done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # ------------------------------------------------------------ core requests

    def query_extension(self, name: str) -> int | None:
        raw = name.encode()
        body = raw + b"\0" * _pad(len(raw))
        reply = self.call(
            struct.pack("<BxHHxx", _QUERY_EXTENSION, 2 + len(body) // 4, len(raw)) + body
        )
        present, major = reply[8], reply[9]
        return major if present else None

    def intern_atom(self, name: str) -> int:
        raw = name.encode()
        body = raw + b"\0" * _pad(len(raw))
        reply = self.call(
            struct.pack("<BBHHxx", _INTERN_ATOM, 0, 2 + len(body) // 4, len(raw)) + body
        )
        return int(struct.unpack_from("<I", reply, 8)[0])

    def query_pointer(self) -> tuple[int, int, int]:
        """(x, y, mask): where the pointer is, and which buttons and modifiers are down."""
        reply = self.call(struct.pack("<BxHI", _QUERY_POINTER, 2, self.root))
        x, y, _wx, _wy, mask = struct.unpack_from("<hhhhH", reply, 16)
        return x, y, mask

    def get_image(self, x: int, y: int, width: int, height: int) -> bytes:
        """Core GetImage of the root window: ZPixmap rows (the image crosses the socket)."""
        reply = self.call(
            struct.pack(
                "<BBHIhhHHI", _GET_IMAGE, _Z_PIXMAP, 5, self.root, x, y, width, height, _ALL_PLANES
            )
        )
        return reply[32:]

    def keyboard_mapping(self) -> tuple[int, list[int]]:
        """(keysyms per keycode, keysyms of every keycode from ``min_keycode`` on)."""
        count = self.max_keycode - self.min_keycode + 1
        reply = self.call(
            struct.pack("<BxHBBxx", _GET_KEYBOARD_MAPPING, 2, self.min_keycode, count)
        )
        per = reply[1]
        (length,) = struct.unpack_from("<I", reply, 4)
        return per, list(struct.unpack_from(f"<{length}I", reply, 32))

    def change_keyboard_mapping_request(self, first: int, per: int, keysyms: list[int]) -> bytes:
        count = len(keysyms) // per
        return struct.pack(
            f"<BBHBBxx{len(keysyms)}I",
            _CHANGE_KEYBOARD_MAPPING,
            count,
            2 + len(keysyms),
            first,
            per,
            *keysyms,
        )

    def set_screen_saver_off(self) -> None:
        # timeout 0 and interval 0: no screen saver; prefer-blanking 0, allow-exposures 2.
        self.send([struct.pack("<BxHhhBBxx", _SET_SCREEN_SAVER, 3, 0, 0, 0, 2)])

    def create_input_window(self) -> int:
        wid = self.new_id()
        # 1x1 at -10,-10, never mapped: a selection owner, and where the window manager
        # answers (its PropertyNotify events: event-mask 0x800).  InputOutput (class 1):
        # openbox answers nothing about an InputOnly window.
        self.send(
            [
                struct.pack(
                    "<BBHIIhhHHHHIII",
                    _CREATE_WINDOW,
                    0,
                    9,
                    wid,
                    self.root,
                    -10,
                    -10,
                    1,
                    1,
                    0,
                    1,
                    0,
                    0x800,
                    _PROPERTY_CHANGE_MASK,
                )
            ]
        )
        return wid

    def change_property(
        self, window: int, prop: int, kind: int, fmt: int, data: bytes, append: bool = False
    ) -> bytes:
        units = len(data) // (fmt // 8)
        body = data + b"\0" * _pad(len(data))
        return (
            struct.pack(
                "<BBHIIIBxxxI",
                _CHANGE_PROPERTY,
                _PROP_APPEND if append else _PROP_REPLACE,
                6 + len(body) // 4,
                window,
                prop,
                kind,
                fmt,
                units,
            )
            + body
        )

    def get_property(
        self, window: int, prop: int, max_bytes: int, delete: bool
    ) -> tuple[int, int, bytes, int]:
        """(type, format, value, bytes left after) of a window's property."""
        reply = self.call(
            struct.pack(
                "<BBHIIIII", _GET_PROPERTY, int(delete), 6, window, prop, 0, 0, (max_bytes + 3) // 4
            )
        )
        fmt = reply[1]
        kind, after, n = struct.unpack_from("<III", reply, 8)
        size = n * (fmt // 8) if fmt else 0
        return kind, fmt, reply[32 : 32 + size], after

    def set_selection_owner(self, window: int, selection: int) -> None:
        self.send([struct.pack("<BxHIII", _SET_SELECTION_OWNER, 4, window, selection, 0)])

    def convert_selection(self, window: int, selection: int, target: int, prop: int) -> None:
        self.send(
            [struct.pack("<BxHIIIII", _CONVERT_SELECTION, 6, window, selection, target, prop, 0)]
        )

    def send_event_request(self, destination: int, event: bytes, mask: int = 0) -> bytes:
        return struct.pack("<BBHII", _SEND_EVENT, 0, 11, destination, mask) + event

    def client_message_to_root(self, window: int, kind: int) -> bytes:
        """A ClientMessage about ``window`` to the window manager (EWMH requests)."""
        event = struct.pack("<BBHII20x", CLIENT_MESSAGE, 32, 0, window, kind)
        return self.send_event_request(self.root, event, _SUBSTRUCTURE_MASKS)

    def geometry(self, window: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a window, x and y on the root window."""
        reply = self.call(struct.pack("<BxHI", _GET_GEOMETRY, 2, window))
        width, height = struct.unpack_from("<HH", reply, 16)
        reply = self.call(
            struct.pack("<BxHIIhh", _TRANSLATE_COORDINATES, 4, window, self.root, 0, 0)
        )
        x, y = struct.unpack_from("<hh", reply, 12)
        return x, y, width, height


class XTest:
    """Synthetic input through the XTEST extension: requests to send, built here."""

    def __init__(self, conn: Connection) -> None:
        major = conn.query_extension("XTEST")
        if major is None:
            raise XConnectionError("the X server has no XTEST extension (no synthetic input)")
        self.major = major
        self.root = conn.root

    def fake(self, kind: int, detail: int, x: int = 0, y: int = 0, delay: int = 0) -> bytes:
        # FakeInput (minor 2): type, detail, time (a delay in ms: 0, now), root, rootX,
        # rootY, deviceid 0.
        return struct.pack(
            "<BBHBBxxIIIIhhIHBB",
            self.major,
            2,
            9,
            kind,
            detail,
            delay,
            self.root,
            0,
            0,
            x,
            y,
            0,
            0,
            0,
            0,
        )


class ShmCapture:
    """Screen images through MIT-SHM 1.2: the server writes into a memfd we map."""

    def __init__(self, conn: Connection) -> None:
        major = conn.query_extension("MIT-SHM")
        if major is None:
            raise XConnectionError("no MIT-SHM extension")
        reply = conn.call(struct.pack("<BBH", major, 0, 1))
        version = struct.unpack_from("<HH", reply, 8)
        if version < (1, 2):
            raise XConnectionError(
                f"MIT-SHM {version[0]}.{version[1]} cannot take a file descriptor"
            )
        self.conn = conn
        self.major = major
        self.size = conn.width * conn.height * 4
        fd = os.memfd_create("commandlab-screen")
        try:
            os.ftruncate(fd, self.size)
            self.buffer = mmap.mmap(fd, self.size)
            self.segment = conn.new_id()
            # AttachFd (minor 6): segment, read-only false; the fd travels with the request.
            conn.send([struct.pack("<BBHIBxxx", major, 6, 3, self.segment, 0)], fds=[fd])
            conn.sync()  # an error here (e.g. no SHM in this sandbox) surfaces now
        finally:
            os.close(fd)

    def grab(self, x: int, y: int, width: int, height: int) -> memoryview:
        """The region's ZPixmap rows (``width * 4`` bytes each), valid until the next grab."""
        # GetImage (minor 4): drawable, x, y, w, h, planes, format, segment, offset 0.
        self.conn.call(
            struct.pack(
                "<BBHIhhHHIBxxxII",
                self.major,
                4,
                8,
                self.conn.root,
                x,
                y,
                width,
                height,
                _ALL_PLANES,
                _Z_PIXMAP,
                self.segment,
                0,
            )
        )
        return memoryview(self.buffer)[: width * height * 4]
