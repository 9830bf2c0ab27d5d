"""Screenshots as PNG, from the pixels of an X image (and back, for tests and clients).

Standard library only (``zlib``, imported on first use), Python >= 3.9; nothing
X-specific beyond the pixel layout ``encode`` takes: 32 bits per pixel, little-endian BGRX
(byte 0 blue, 1 green, 2 red, 3 unused: X's ZPixmap at depth 24 or 32), rows of
``stride`` bytes.

``encode`` writes 8-bit RGB (colour type 2), not interlaced, every row with filter 0
(None), one IDAT of ``zlib.compress(raw, level)``.  No Python loop runs per pixel: the
channels are reordered and the columns picked by extended-slice copies between bytes
objects, a few per row (or per output column, when the scale has no short period).

Downscaling (``fit``) is nearest-neighbour: output column ``i`` of ``out_w`` shows source
column ``floor((i + 0.5) * w / out_w)`` of the ``w`` (cropped) columns, rows alike.
"""

from __future__ import annotations

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SIZE = 16384  # the largest width and height ``decode`` accepts
_RGB = 2  # colour type: truecolour
_ROW_PERIOD_MAX = 4  # use per-row copies up to this many distinct column phases
_CRITICAL_IGNORED = frozenset((b"PLTE",))  # allowed (a palette suggestion) and ignored


def _int(value: object, what: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{what} must be an integer >= {least}, not {value!r}")
    return value


def _pair(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{what} must be a tuple, not {type(value).__name__}")
    return tuple(value)


def fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image scaled down, its aspect ratio kept, to fit
    ``max_width`` x ``max_height``: ``(max(1, floor(width * s)), max(1, floor(height *
    s)))`` with ``s = min(max_width / width, max_height / height, 1)``, in exact integer
    arithmetic (never upscaled).  ``ValueError`` unless all four are integers >= 1."""
    for value, what in ((width, "width"), (height, "height")):
        _int(value, what, 1)
    for value, what in ((max_width, "fit width"), (max_height, "fit height")):
        _int(value, what, 1)
    if width <= max_width and height <= max_height:
        return width, height
    if max_width * height <= max_height * width:  # the width limits: s = max_width / width
        return max_width, max(1, height * max_width // width)
    return max(1, width * max_height // height), max_height


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return (
        len(data).to_bytes(4, "big")
        + kind
        + data
        + zlib.crc32(data, zlib.crc32(kind)).to_bytes(4, "big")
    )


def encode(
    pixels: bytes | bytearray | memoryview,
    width: int,
    height: int,
    stride: int,
    *,
    region: tuple[int, int, int, int] | None = None,
    fit: tuple[int, int] | None = None,
    level: int = 1,
) -> tuple[bytes, int, int]:
    """(PNG, its width, its height) of a BGRX image, cropped to ``region`` = (x, y, w, h)
    first, then scaled down to fit ``fit`` = (max_w, max_h) (see ``fit_size``).

    ``pixels`` holds ``height`` rows of ``stride`` bytes (the last may stop after its
    ``4 * width`` bytes).  ``level`` is zlib's (-1 to 9).  Raises ``ValueError`` on a
    region outside the image, a buffer too short or any other bad argument.
    """
    import zlib  # here: a daemon that never takes a screenshot never imports it

    _int(width, "width", 1)
    _int(height, "height", 1)
    _int(stride, "stride", 4 * width)
    _int(level, "level", -1)
    if level > 9:
        raise ValueError(f"level must be -1 to 9, not {level}")
    if region is None:
        x, y, w, h = 0, 0, width, height
    else:
        if len(_pair(region, "region")) != 4:
            raise ValueError(f"region must be (x, y, width, height), not {region!r}")
        x, y = _int(region[0], "region x", 0), _int(region[1], "region y", 0)
        w, h = _int(region[2], "region width", 1), _int(region[3], "region height", 1)
        if x + w > width or y + h > height:
            raise ValueError(f"region {tuple(region)!r} is not within {width}x{height}")
    if fit is None:
        out_w, out_h = w, h
    else:
        if len(_pair(fit, "fit")) != 2:
            raise ValueError(f"fit must be (max_width, max_height), not {fit!r}")
        out_w, out_h = fit_size(w, h, _int(fit[0], "fit width", 1), _int(fit[1], "fit height", 1))
    view = memoryview(pixels)
    if view.ndim != 1 or view.itemsize != 1:
        try:
            view = view.cast("B")
        except TypeError as error:  # not C-contiguous
            raise ValueError(f"pixels: {error}") from None
    if len(view) < stride * (height - 1) + 4 * width:
        raise ValueError(
            f"{len(view)} bytes cannot hold {height} rows of {stride} bytes "
            f"({4 * width} used in each)"
        )
    # Extended slices of bytes and bytearray copy at C speed, those of a memoryview take
    # a generic path several times slower: anything else gives a copy of the region's rows.
    start, stop = y * stride + 4 * x, (y + h - 1) * stride + 4 * (x + w)
    if isinstance(pixels, (bytes, bytearray)):
        source, first = pixels, start
    else:
        source, first = view[start:stop].tobytes(), 0
    raw = _raw_rows(source, first, stride, w, h, out_w, out_h)
    header = (
        out_w.to_bytes(4, "big")
        + out_h.to_bytes(4, "big")
        + bytes((8, _RGB, 0, 0, 0))  # bit depth, colour type, compression, filter, interlace
    )
    png = b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, level)),
            _chunk(b"IEND", b""),
        )
    )
    return png, out_w, out_h


BAND_ROWS = 16  # rows compressed together by ``Bands``


class Bands:
    """The last image ``encode_unchanged`` encoded, in bands of rows, each kept with its
    compressed form: a band whose pixels did not change is not converted or compressed
    again (a screen mostly changes in a few places between two screenshots)."""

    def __init__(self) -> None:
        self.key: tuple[int, ...] = ()
        self.bands: list[tuple[int, bytes, int, int] | None] = []


def encode_unchanged(
    bands: Bands,
    pixels: bytes | bytearray | memoryview,
    width: int,
    height: int,
    stride: int,
    *,
    level: int = 1,
) -> bytes:
    """The PNG of a whole BGRX image (no region, no scaling), the same pixels as
    ``encode`` gives, reusing the compressed bands of the last call's image that are the
    same.  Each band is deflated on its own, ended by a full flush (which resets the
    compressor, so its bytes depend on its rows alone); the zlib stream is the bands in
    order, an empty last block and the checksum of the whole, combined from the bands'."""
    import zlib

    _int(width, "width", 1)
    _int(height, "height", 1)
    _int(stride, "stride", 4 * width)
    view = memoryview(pixels).cast("B")
    if len(view) < stride * (height - 1) + 4 * width:
        raise ValueError(f"{len(view)} bytes cannot hold {height} rows of {stride} bytes")
    key = (width, height, stride, level)
    count = (height + BAND_ROWS - 1) // BAND_ROWS
    if bands.key != key:
        bands.key, bands.bands = key, [None] * count
    pieces = []
    adler = 1
    for index in range(count):
        top = index * BAND_ROWS
        rows = min(BAND_ROWS, height - top)
        chunk = view[top * stride : (top + rows - 1) * stride + 4 * width]
        # Two checksums of the band's pixels, 64 bits together (comparing the pixels
        # themselves costs 5x more): an accidental match is a stale band once in ~10^19.
        # A sandbox that forges one shows itself a stale band of a screen it draws anyway.
        seen = zlib.crc32(chunk) << 32 | zlib.adler32(chunk)
        entry = bands.bands[index]
        if entry is None or entry[0] != seen:
            raw = _raw_rows(chunk.tobytes(), 0, stride, width, rows, width, rows)
            deflate = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate, no header
            data = deflate.compress(raw) + deflate.flush(zlib.Z_FULL_FLUSH)
            entry = (seen, data, zlib.adler32(raw), len(raw))
            bands.bands[index] = entry
        pieces.append(entry[1])
        adler = _adler32_combine(adler, entry[2], entry[3])
    # 0x78 0x01: deflate, 32 KiB window, fastest; 0x03 0x00: an empty last (fixed) block.
    stream = b"".join((b"\x78\x01", *pieces, b"\x03\x00", adler.to_bytes(4, "big")))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, _RGB, 0, 0, 0))
    return b"".join(
        (SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", stream), _chunk(b"IEND", b""))
    )


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from theirs (zlib's adler32_combine)."""
    base = 65521
    rem = second_length % base
    sum1 = first & 0xFFFF
    sum2 = rem * sum1 % base
    sum1 = (sum1 + (second & 0xFFFF) + base - 1) % base
    sum2 = (sum2 + (first >> 16) + (second >> 16) + base - rem) % base
    return sum1 | (sum2 << 16)


def _raw_rows(
    source: bytes | bytearray, first: int, stride: int, w: int, h: int, out_w: int, out_h: int
) -> bytearray:
    """The PNG's uncompressed rows (a filter byte 0, then RGB) of the ``w`` x ``h`` BGRX
    pixels whose top left is byte ``first`` of ``source`` (rows ``stride`` bytes apart),
    sampled down to ``out_w`` x ``out_h``."""
    pitch = 3 * out_w + 1
    raw = bytearray(pitch * out_h)  # filter bytes already 0
    columns = [(2 * i + 1) * w // (2 * out_w) for i in range(out_w)]
    starts = [first + (2 * i + 1) * h // (2 * out_h) * stride for i in range(out_h)]
    # Output columns j, j + p, j + 2p... come from source columns c_j, c_j + q, c_j + 2q...
    # where p / q is out_w / w in lowest terms: one slice copy per phase j and channel.
    common = _gcd(w, out_w)
    period, source_period = out_w // common, w // common
    if period <= _ROW_PERIOD_MAX:
        copies = [
            (3 * j + channel, 4 * columns[j] + 2 - channel)  # R, G, B from bytes 2, 1, 0
            for j in range(period)
            for channel in range(3)
        ]
        step, source_step = 3 * period, 4 * source_period
        for r, source_begin in enumerate(starts):
            begin = r * pitch + 1
            end, source_end = begin + 3 * out_w, source_begin + 4 * w
            for offset, source_offset in copies:
                raw[begin + offset : end : step] = source[
                    source_begin + source_offset : source_end : source_step
                ]
        return raw
    # A long period: one copy per output column and channel, down all rows at once, from
    # the chosen rows gathered into one block (rows of 4 * w bytes, nothing after).
    size = 4 * w
    if first == 0 and stride == size and out_h == h and len(source) == size * h:
        block: bytes | bytearray = source
    else:
        view = memoryview(source)
        block = b"".join([view[start : start + size] for start in starts])
    for i, column in enumerate(columns):
        at = 4 * column
        raw[1 + 3 * i :: pitch] = block[at + 2 :: size]
        raw[2 + 3 * i :: pitch] = block[at + 1 :: size]
        raw[3 + 3 * i :: pitch] = block[at::size]
    return raw


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def decode(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes, rows top to bottom) of an 8-bit RGB PNG, not interlaced,
    any filter types (what ``encode`` writes, and more).  ``ValueError`` for anything else,
    a bad CRC, truncated data, or a size above ``MAX_SIZE`` x ``MAX_SIZE``."""
    import zlib

    data = memoryview(png)
    if bytes(data[:8]) != SIGNATURE:
        raise ValueError("not a PNG (bad signature)")
    offset, header, compressed = 8, b"", []
    while True:
        if offset + 12 > len(data):
            raise ValueError("truncated PNG")
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = bytes(data[offset + 4 : offset + 8])
        end = offset + 8 + length
        if length > 2**31 - 1 or end + 4 > len(data):
            raise ValueError(f"truncated PNG ({kind!r} chunk)")
        body = data[offset + 8 : end]
        crc = int.from_bytes(data[end : end + 4], "big")
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise ValueError(f"bad CRC in the {kind!r} chunk")
        offset = end + 4
        if not header:
            if kind != b"IHDR" or length != 13:
                raise ValueError("the first chunk is not IHDR")
            header = bytes(body)
            width = int.from_bytes(header[0:4], "big")
            height = int.from_bytes(header[4:8], "big")
            if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
                raise ValueError(f"unsupported size {width}x{height} (at most {MAX_SIZE})")
            if header[8:] != bytes((8, _RGB, 0, 0, 0)):
                depth, colour, method, filtering, interlace = header[8:]
                raise ValueError(
                    f"unsupported PNG: bit depth {depth}, colour type {colour}, compression "
                    f"{method}, filter method {filtering}, interlace {interlace} (only 8-bit "
                    "RGB, not interlaced)"
                )
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        elif kind == b"IHDR" or ((kind[0] & 0x20) == 0 and kind not in _CRITICAL_IGNORED):
            raise ValueError(f"unsupported critical chunk {kind!r}")
    if not compressed:
        raise ValueError("no IDAT chunk")
    pitch = 3 * width + 1
    expected = pitch * height
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(compressed), expected)  # never more: bounded
        if len(raw) == expected and inflater.decompress(inflater.unconsumed_tail, 1):
            raise ValueError("more image data than the image's size")
    except zlib.error as error:
        raise ValueError(f"bad image data: {error}") from None
    if len(raw) != expected:
        raise ValueError(f"image data of {len(raw)} bytes, not {expected}")
    if not inflater.eof:
        raise ValueError("image data cut short (no end of the zlib stream)")
    return width, height, _unfilter(raw, width, height)


def _unfilter(raw: bytes, width: int, height: int) -> bytes:
    """The RGB rows of ``raw``, each row's filter (PNG filter method 0) undone."""
    size = 3 * width
    rows: list[bytes] = []
    previous = bytes(size)
    for r in range(height):
        start = r * (size + 1)
        kind = raw[start]
        line = raw[start + 1 : start + 1 + size]
        if kind == 0:
            row = line
        elif kind == 2:  # Up
            row = bytes([(line[i] + previous[i]) & 0xFF for i in range(size)])
        elif kind in (1, 3, 4):  # Sub, Average, Paeth: byte by byte, left to right
            out = bytearray(line)
            for i in range(size):
                left = out[i - 3] if i >= 3 else 0
                up = previous[i]
                if kind == 1:
                    predicted = left
                elif kind == 3:
                    predicted = (left + up) >> 1
                else:
                    corner = previous[i - 3] if i >= 3 else 0
                    estimate = left + up - corner
                    distance_left = abs(estimate - left)
                    distance_up = abs(estimate - up)
                    distance_corner = abs(estimate - corner)
                    if distance_left <= distance_up and distance_left <= distance_corner:
                        predicted = left
                    elif distance_up <= distance_corner:
                        predicted = up
                    else:
                        predicted = corner
                out[i] = (out[i] + predicted) & 0xFF
            row = bytes(out)
        else:
            raise ValueError(f"unknown filter type {kind} in row {r}")
        rows.append(row)
        previous = row
    return b"".join(rows)


def pixel(rgb: bytes, width: int, x: int, y: int) -> tuple[int, int, int]:
    """The (red, green, blue) at ``x``, ``y`` of ``decode``'s RGB bytes of a ``width``
    pixels wide image.  ``IndexError`` outside it."""
    at = 3 * (y * width + x)
    if not (0 <= x < width and y >= 0 and at + 3 <= len(rgb)):
        raise IndexError(f"pixel ({x}, {y}) is outside the image")
    return rgb[at], rgb[at + 1], rgb[at + 2]
