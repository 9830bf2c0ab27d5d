"""Screenshots as PNG (commandlab_async/daemon/png.py): exact pixels through a round trip,
crops, sizes and sampling when scaled down, valid chunks, and refused input."""

from __future__ import annotations

import math
import os
import random
import struct
import time
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commandlab_async.daemon import png

pytestmark = pytest.mark.unit


def bgrx(colour: tuple[int, int, int], unused: int = 0) -> bytes:
    red, green, blue = colour
    return bytes((blue, green, red, unused))


def image(
    width: int, height: int, stride: int, colour_at: Callable[[int, int], tuple[int, int, int]]
) -> bytes:
    """A BGRX image whose pixel (x, y) is ``colour_at(x, y)``; the padding after each row
    and the unused byte of each pixel are junk that must never show."""
    rows = []
    for y in range(height):
        row = b"".join(bgrx(colour_at(x, y), unused=0xA5) for x in range(width))
        rows.append(row + b"\xee" * (stride - 4 * width))
    return b"".join(rows)


def coordinates(x: int, y: int) -> tuple[int, int, int]:
    """A colour that says where it comes from (for images up to 4096 x 4096)."""
    return x & 0xFF, y & 0xFF, (x >> 8) | ((y >> 8) << 4)


def where(colour: tuple[int, int, int]) -> tuple[int, int]:
    red, green, blue = colour
    return red | ((blue & 0x0F) << 8), green | ((blue >> 4) << 8)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, body) of every chunk, each CRC checked here with zlib.crc32."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        found.append((kind, body))
        offset += 12 + length
    assert offset == len(data)
    return found


def ihdr(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)


def make_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(
    width: int, height: int, rows: list[bytes], filters: list[int], header: bytes | None = None
) -> bytes:
    """A PNG written here, each row with its own filter byte (rows already filtered)."""
    raw = b"".join(bytes((kind,)) + row for kind, row in zip(filters, rows, strict=True))
    if header is None:
        header = ihdr(width, height)
    return (
        png.SIGNATURE
        + make_chunk(b"IHDR", header)
        + make_chunk(b"IDAT", zlib.compress(raw))
        + make_chunk(b"IEND", b"")
    )


KNOWN = {
    (0, 0): (255, 0, 0),
    (1, 0): (0, 255, 0),
    (2, 0): (0, 0, 255),
    (6, 4): (255, 255, 255),
    (0, 4): (1, 2, 3),
    (3, 2): (254, 128, 7),
}


def known(x: int, y: int) -> tuple[int, int, int]:
    return KNOWN.get((x, y), (10, 20, 30))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_round_trip_keeps_every_pixel_and_ignores_padding(kind: type) -> None:
    width, height, stride = 7, 5, 7 * 4 + 12
    pixels = kind(image(width, height, stride, known))
    data, out_w, out_h = png.encode(pixels, width, height, stride)
    assert (out_w, out_h) == (width, height)
    decoded_w, decoded_h, rgb = png.decode(data)
    assert (decoded_w, decoded_h, len(rgb)) == (width, height, 3 * width * height)
    for y in range(height):
        for x in range(width):
            assert png.pixel(rgb, width, x, y) == known(x, y), (x, y)


def test_the_png_is_8_bit_rgb_filter_none_one_idat_with_valid_crcs() -> None:
    width, height, stride = 5, 3, 5 * 4 + 4
    data, _, _ = png.encode(image(width, height, stride, coordinates), width, height, stride)
    found = chunks(data)
    assert [kind for kind, _ in found] == [b"IHDR", b"IDAT", b"IEND"]
    assert found[0][1] == struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    assert found[2][1] == b""
    raw = zlib.decompress(found[1][1])
    assert len(raw) == height * (3 * width + 1)
    assert [raw[r * (3 * width + 1)] for r in range(height)] == [0] * height
    assert raw[1:4] == bytes(coordinates(0, 0))
    last = (height - 1) * (3 * width + 1) + 1 + 3 * (width - 1)
    assert raw[last : last + 3] == bytes(coordinates(width - 1, height - 1))


def test_the_last_row_may_stop_after_its_pixels() -> None:
    width, height, stride = 3, 2, 20
    pixels = image(width, height, stride, coordinates)[: stride + 4 * width]
    _, _, rgb = png.decode(png.encode(pixels, width, height, stride)[0])
    assert png.pixel(rgb, width, 2, 1) == coordinates(2, 1)
    with pytest.raises(ValueError, match="cannot hold"):
        png.encode(pixels[:-1], width, height, stride)


@pytest.mark.parametrize("level", [-1, 0, 1, 6, 9])
def test_every_compression_level(level: int) -> None:
    pixels = image(9, 4, 36, coordinates)
    data, _, _ = png.encode(pixels, 9, 4, 36, level=level)
    _, _, rgb = png.decode(data)
    assert png.pixel(rgb, 9, 8, 3) == coordinates(8, 3)


def test_a_region_is_cropped_exactly() -> None:
    width, height, stride = 40, 30, 40 * 4 + 8
    pixels = image(width, height, stride, coordinates)
    for region in [(0, 0, 40, 30), (5, 7, 10, 4), (39, 29, 1, 1), (0, 29, 40, 1), (13, 0, 1, 30)]:
        x, y, w, h = region
        data, out_w, out_h = png.encode(pixels, width, height, stride, region=region)
        assert (out_w, out_h) == (w, h)
        decoded_w, decoded_h, rgb = png.decode(data)
        assert (decoded_w, decoded_h) == (w, h)
        for j in range(h):
            for i in range(w):
                assert png.pixel(rgb, w, i, j) == coordinates(x + i, y + j)


@pytest.mark.parametrize(
    ("size", "fit", "expected"),
    [
        ((1280, 800), (1024, 768), (1024, 640)),
        ((1920, 1080), (1280, 800), (1280, 720)),
        ((1280, 800), (1024, 640), (1024, 640)),
        ((1280, 800), (4000, 4000), (1280, 800)),  # never upscaled
        ((1280, 800), (1280, 800), (1280, 800)),
        ((1, 1), (1, 1), (1, 1)),
        ((1, 1), (5, 5), (1, 1)),
        ((1000, 1), (10, 10), (10, 1)),  # at least one pixel
        ((1, 1000), (10, 10), (1, 10)),
        ((3000, 2), (100, 100), (100, 1)),
        ((800, 1280), (1024, 768), (480, 768)),  # the height limits
        ((1366, 768), (1024, 768), (1024, 575)),  # floor(768 * 1024 / 1366) = 575.7...
        ((1279, 801), (640, 1000), (640, 400)),
    ],
)
def test_fit_sizes(size: tuple[int, int], fit: tuple[int, int], expected: tuple[int, int]) -> None:
    assert png.fit_size(*size, *fit) == expected


@pytest.mark.parametrize("args", [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, -1)])
def test_fit_size_takes_positive_sizes_only(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        png.fit_size(*args)


def test_scaling_down_to_1024x640_samples_the_right_pixels() -> None:
    width, height = 1280, 800
    stride = 4 * width + 64
    pixels = image(width, height, stride, coordinates)
    data, out_w, out_h = png.encode(pixels, width, height, stride, fit=(1024, 768))
    assert (out_w, out_h) == (1024, 640)
    assert_sampled(data, 0, 0, width, height, out_w, out_h)


def assert_sampled(data: bytes, x: int, y: int, w: int, h: int, out_w: int, out_h: int) -> None:
    """Every output pixel shows source pixel floor((i + 0.5) * w / out_w) (rows alike)."""
    decoded_w, decoded_h, rgb = png.decode(data)
    assert (decoded_w, decoded_h) == (out_w, out_h)
    for j in range(out_h):
        source_y = math.floor((j + 0.5) * h / out_h)  # floats are exact enough at these sizes
        for i in range(out_w):
            source_x = math.floor((i + 0.5) * w / out_w)
            assert where(png.pixel(rgb, out_w, i, j)) == (x + source_x, y + source_y), (i, j)


@pytest.mark.parametrize(
    ("width", "height", "region", "fit"),
    [
        (64, 40, None, (32, 32)),  # 2:1, the short period
        (60, 40, None, (45, 100)),  # 4:3
        (97, 61, None, (50, 50)),  # no short period: per column
        (100, 70, (3, 5, 91, 61), (40, 40)),
        (100, 70, (10, 10, 80, 60), (80, 30)),  # 2:1 from a crop
        (100, 70, (10, 10, 80, 60), (33, 70)),  # per column from a crop
        (97, 1, None, (50, 50)),  # per column, straight from the rows given
        (1, 70, None, (5, 30)),  # only the height shrinks
        (50, 50, (7, 9, 1, 40), (1, 7)),
        (50, 50, (7, 9, 40, 1), (9, 1)),
        (20, 20, (19, 19, 1, 1), (1, 1)),
    ],
)
def test_cropped_and_scaled_pixels_come_from_the_right_source_pixels(
    width: int,
    height: int,
    region: tuple[int, int, int, int] | None,
    fit: tuple[int, int],
) -> None:
    for stride in (4 * width, 4 * width + 4, 4 * width + 13):
        pixels = image(width, height, stride, coordinates)
        data, out_w, out_h = png.encode(pixels, width, height, stride, region=region, fit=fit)
        x, y, w, h = region or (0, 0, width, height)
        assert (out_w, out_h) == png.fit_size(w, h, *fit)
        assert_sampled(data, x, y, w, h, out_w, out_h)
        # A memoryview takes the copying path: the same bytes.
        again = png.encode(memoryview(pixels), width, height, stride, region=region, fit=fit)
        assert again == (data, out_w, out_h)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 9),
    st.data(),
)
def test_any_crop_and_fit_samples_the_right_pixels(
    width: int, height: int, padding: int, data: st.DataObject
) -> None:
    x = data.draw(st.integers(0, width - 1))
    y = data.draw(st.integers(0, height - 1))
    w = data.draw(st.integers(1, width - x))
    h = data.draw(st.integers(1, height - y))
    fit = (data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50)))
    stride = 4 * width + padding
    pixels = image(width, height, stride, coordinates)
    encoded, out_w, out_h = png.encode(pixels, width, height, stride, region=(x, y, w, h), fit=fit)
    assert (out_w, out_h) == png.fit_size(w, h, *fit)
    assert 1 <= out_w <= min(w, fit[0])
    assert 1 <= out_h <= min(h, fit[1])
    assert_sampled(encoded, x, y, w, h, out_w, out_h)


@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 5000))
def test_fit_size_is_the_exact_formula(w: int, h: int, max_w: int, max_h: int) -> None:
    from fractions import Fraction

    scale = min(Fraction(max_w, w), Fraction(max_h, h), Fraction(1))
    expected = (max(1, int(w * scale)), max(1, int(h * scale)))
    assert png.fit_size(w, h, max_w, max_h) == expected


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        ((b"\0" * 16, 0, 1, 16), {}, "width"),
        ((b"\0" * 16, 2, 0, 16), {}, "height"),
        ((b"\0" * 16, 2, 2, 7), {}, "stride"),
        ((b"\0" * 16, 2.0, 2, 8), {}, "width"),
        ((b"\0" * 16, True, 2, 8), {}, "width"),
        ((b"\0" * 15, 2, 2, 8), {}, "cannot hold"),
        ((b"\0" * 16, 2, 2, 8), {"region": (1, 0, 2, 1)}, "not within"),
        ((b"\0" * 16, 2, 2, 8), {"region": (0, 1, 1, 2)}, "not within"),
        ((b"\0" * 16, 2, 2, 8), {"region": (0, 0, 0, 1)}, "region width"),
        ((b"\0" * 16, 2, 2, 8), {"region": (0, 0, 1, 0)}, "region height"),
        ((b"\0" * 16, 2, 2, 8), {"region": (-1, 0, 1, 1)}, "region x"),
        ((b"\0" * 16, 2, 2, 8), {"region": (0, 0, 1)}, "region"),
        ((b"\0" * 16, 2, 2, 8), {"region": "0,0,1,1"}, "region"),
        ((b"\0" * 16, 2, 2, 8), {"fit": (0, 5)}, "fit width"),
        ((b"\0" * 16, 2, 2, 8), {"fit": (5, 0)}, "fit height"),
        ((b"\0" * 16, 2, 2, 8), {"fit": (5,)}, "fit"),
        ((b"\0" * 16, 2, 2, 8), {"level": 10}, "level"),
        ((b"\0" * 16, 2, 2, 8), {"level": -2}, "level"),
    ],
)
def test_bad_encode_arguments_are_value_errors(
    args: tuple[object, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        png.encode(*args, **options)  # type: ignore[arg-type]


def test_a_strided_byte_view_is_read_as_its_bytes() -> None:
    pixels = image(3, 2, 12, coordinates)
    doubled = bytes(byte for value in pixels for byte in (value, 0x77))
    strided = memoryview(doubled)[::2]
    assert png.encode(strided, 3, 2, 12) == png.encode(pixels, 3, 2, 12)
    # Items of several bytes, not contiguous: no bytes to read.
    with pytest.raises(ValueError, match="pixels"):
        png.encode(memoryview(doubled).cast("I")[::2], 3, 1, 12)


def test_a_buffer_of_other_items_is_taken_as_its_bytes() -> None:
    pixels = image(3, 2, 12, coordinates)
    words = memoryview(pixels).cast("I")
    assert png.encode(words, 3, 2, 12) == png.encode(pixels, 3, 2, 12)


def paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    distances = [abs(estimate - left), abs(estimate - up), abs(estimate - corner)]
    return (left, up, corner)[distances.index(min(distances))]


def filtered(rows: list[bytes], kinds: list[int]) -> list[bytes]:
    """``rows`` filtered as a PNG encoder would, row r with filter ``kinds[r]``."""
    out, previous = [], bytes(len(rows[0]))
    for row, kind in zip(rows, kinds, strict=True):
        line = bytearray(len(row))
        for i, value in enumerate(row):
            left = row[i - 3] if i >= 3 else 0
            up = previous[i]
            corner = previous[i - 3] if i >= 3 else 0
            predicted = [0, left, up, (left + up) // 2, paeth(left, up, corner)][kind]
            line[i] = (value - predicted) & 0xFF
        out.append(bytes(line))
        previous = row
    return out


def test_decode_undoes_all_five_filters() -> None:
    width, height = 6, 10
    rows = [os.urandom(3 * width) for _ in range(height)]
    kinds = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    data = make_png(width, height, filtered(rows, kinds), kinds)
    assert png.decode(data) == (width, height, b"".join(rows))


@given(st.integers(1, 12), st.integers(1, 6), st.data())
def test_decode_undoes_any_filters(width: int, height: int, data: st.DataObject) -> None:
    rows = [data.draw(st.binary(min_size=3 * width, max_size=3 * width)) for _ in range(height)]
    kinds = [data.draw(st.integers(0, 4)) for _ in range(height)]
    encoded = make_png(width, height, filtered(rows, kinds), kinds)
    assert png.decode(encoded) == (width, height, b"".join(rows))


def test_decode_skips_ancillary_chunks_and_joins_idats() -> None:
    data, _, _ = png.encode(image(4, 3, 16, coordinates), 4, 3, 16)
    found = chunks(data)
    idat = found[1][1]

    rebuilt = (
        png.SIGNATURE
        + make_chunk(b"IHDR", found[0][1])
        + make_chunk(b"tEXt", b"Comment\0hello")
        + make_chunk(b"IDAT", idat[:5])
        + make_chunk(b"IDAT", idat[5:])
        + make_chunk(b"IEND", b"")
    )
    assert png.decode(rebuilt) == png.decode(data)


def corrupt(data: bytes, at: int) -> bytes:
    return data[:at] + bytes((data[at] ^ 0xFF,)) + data[at + 1 :]


def test_decode_refuses_what_it_cannot_read() -> None:
    good, _, _ = png.encode(image(4, 3, 16, coordinates), 4, 3, 16)
    rows = [bytes(12)] * 3
    bad = {
        b"GIF89a" + good[6:]: "signature",
        good[:-5]: "truncated",
        b"": "signature",
        png.SIGNATURE: "truncated",
        corrupt(good, len(good) - 1): "bad CRC",
        corrupt(good, 20): "bad CRC",
        make_png(4, 3, rows, [0, 0, 0], ihdr(4, 3, colour=6)): "colour type 6",
        make_png(4, 3, rows, [0, 0, 0], ihdr(4, 3, depth=16)): "bit depth 16",
        make_png(4, 3, rows, [0, 0, 0], ihdr(4, 3, interlace=1)): "interlace 1",
        make_png(4, 3, rows, [0, 0, 0], ihdr(16385, 3)): "unsupported size",
        make_png(4, 3, rows, [0, 0, 0], ihdr(4, 16385)): "unsupported size",
        make_png(4, 3, rows, [0, 0, 0], ihdr(0, 3)): "unsupported size",
        make_png(4, 3, rows[:2], [0, 0], ihdr(4, 3)): "image data of 26 bytes",
        make_png(4, 3, rows * 2, [0] * 6, ihdr(4, 3)): "more image data",
        make_png(4, 3, rows, [0, 5, 0], ihdr(4, 3)): "unknown filter type 5",
        good[:8] + good[33:]: "not IHDR",  # IHDR left out
        good[:33] + make_chunk(b"ABCD", b"") + good[33:]: "critical chunk",
        good[:33] + make_chunk(b"IHDR", good[16:29]) + good[33:]: "critical chunk",
        good[:33] + good[-12:]: "no IDAT",
        good[:33] + make_chunk(b"IDAT", b"not zlib") + good[-12:]: "bad image data",
    }
    for data, message in bad.items():
        with pytest.raises(ValueError, match=message):
            png.decode(data)


def test_decode_is_bounded_against_a_zip_bomb() -> None:
    # Says 16 x 16 but inflates to 16 MiB: refused after inflating no more than it needs.
    header = ihdr(16, 16)

    bomb = (
        png.SIGNATURE
        + make_chunk(b"IHDR", header)
        + make_chunk(b"IDAT", zlib.compress(bytes(16 * 1024 * 1024), 9))
        + make_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match="more image data"):
        png.decode(bomb)
    # A cut stream is refused too.
    raw = zlib.compress(bytes(16 * 49), 9)
    cut = (
        png.SIGNATURE
        + make_chunk(b"IHDR", header)
        + make_chunk(b"IDAT", raw[:-4])
        + make_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match="cut short"):
        png.decode(cut)


def test_pixel() -> None:
    rgb = bytes(range(18))  # 3 x 2
    assert png.pixel(rgb, 3, 0, 0) == (0, 1, 2)
    assert png.pixel(rgb, 3, 2, 1) == (15, 16, 17)
    for x, y in [(3, 0), (-1, 0), (0, 2), (0, -1)]:
        with pytest.raises(IndexError):
            png.pixel(rgb, 3, x, y)


def test_a_full_screen_encodes_fast() -> None:
    """1280 x 800: a flat desktop well under the budget of a slow machine (~30 ms; generous
    here so that a busy test runner does not fail it), noise bounded by zlib alone."""
    width, height = 1280, 800
    flat = bgrx((0x30, 0x40, 0x50)) * (width * height)

    def best(**options: object) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            png.encode(flat, width, height, 4 * width, **options)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        return min(times)

    assert best() < 0.25
    assert best(fit=(1024, 768)) < 0.25
    data, out_w, out_h = png.encode(flat, width, height, 4 * width, fit=(1024, 768))
    assert (out_w, out_h) == (1024, 640)
    assert len(data) < 64 * 1024


@given(
    width=st.integers(1, 70),
    height=st.integers(1, 70),
    pad=st.integers(0, 3),
    changes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=5),
)
@settings(max_examples=60, deadline=None)
def test_encode_unchanged_gives_the_pixels_encode_gives(
    width: int, height: int, pad: int, changes: list[tuple[int, int]]
) -> None:
    """Frame after frame, with a few bytes changed between them: the banded encoder's
    PNG decodes (zlib checks the combined Adler-32) to what ``encode`` gives."""
    stride = 4 * width + 4 * pad
    pixels = bytearray(random.Random(width * 1000 + height).randbytes(stride * height))
    bands = png.Bands()
    for frame in range(3):
        for offset, value in changes if frame else []:
            pixels[offset % len(pixels)] = value
        banded = png.encode_unchanged(bands, pixels, width, height, stride)
        assert png.decode(banded) == png.decode(png.encode(bytes(pixels), width, height, stride)[0])


def test_encode_unchanged_compresses_only_the_bands_that_changed() -> None:
    width, height = 64, 5 * png.BAND_ROWS
    pixels = bytearray(4 * width * height)
    bands = png.Bands()
    png.encode_unchanged(bands, pixels, width, height, 4 * width)
    before = list(bands.bands)
    pixels[4 * width * (2 * png.BAND_ROWS) + 7] = 200  # a byte in the third band
    png.encode_unchanged(bands, pixels, width, height, 4 * width)
    same = [a is b for a, b in zip(before, bands.bands, strict=True)]
    assert same == [True, True, False, True, True]
