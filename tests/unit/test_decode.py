"""Safe decoding of untrusted image bytes: facesearch.pipeline.decode."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from facesearch.errors import CorruptImage, ImageTooLarge, InvalidInput, NotAnImage, PathNotFound
from facesearch.pipeline.decode import DecodedImage, decode_image, image_sha256, read_image

try:
    from tests.fixtures import badimages as bad
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fixtures import badimages as bad

MAX_PIXELS = 80_000_000


@pytest.fixture(scope="module")
def photo() -> Path | None:
    """A real face photo from the dev set, or None (synthetic pixels) when it is absent."""
    p = bad.dev_photo()
    return p if p.is_file() else None


@pytest.fixture(scope="module")
def face_photo() -> Path:
    p = bad.dev_photo()
    if not p.is_file():
        pytest.skip(f"dev face set not found at {p}")
    return p


def _decode_path(p: Path, **kw: object) -> DecodedImage:
    kw.setdefault("max_pixels", MAX_PIXELS)
    return read_image(p, **kw)  # type: ignore[arg-type]


def _assert_one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg.strip(), "empty message"
    assert "\n" not in msg and "\r" not in msg, msg
    assert len(msg) <= 200, msg
    return msg


def _assert_valid(dec: DecodedImage) -> None:
    rgb = dec.rgb
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous
    assert (dec.info.height, dec.info.width) == rgb.shape[:2]


# ------------------------------------------------------------------------------------------
# refused inputs


@pytest.mark.parametrize(
    ("make", "error", "needle"),
    [
        (lambda d, ph: bad.truncated_jpeg(d, ph), CorruptImage, "truncated"),
        (lambda d, ph: bad.truncated_png(d), CorruptImage, "truncated"),
        (lambda d, ph: bad.truncated_jpeg_after_thumbnail(d), CorruptImage, "truncated"),
        (lambda d, ph: bad.jpeg_header_garbage(d), CorruptImage, ""),
        (lambda d, ph: bad.corrupt_bytes_jpg(d), NotAnImage, "not an image"),
        (lambda d, ph: bad.text_as_jpg(d), NotAnImage, "text file"),
        (lambda d, ph: bad.zero_bytes(d), NotAnImage, "empty file"),
        (lambda d, ph: bad.gif(d), NotAnImage, "GIF"),
        (lambda d, ph: bad.tiff(d), NotAnImage, "TIFF"),
    ],
    ids=["truncated_jpeg", "truncated_png", "truncated_jpeg_thumb", "jpeg_header_garbage",
         "corrupt_bytes_jpg", "text_as_jpg", "zero_bytes", "gif", "tiff"],
)
def test_refused(tmp_path, photo, make, error, needle):
    p = make(tmp_path, photo)
    with pytest.raises(error) as ei:
        _decode_path(p)
    msg = _assert_one_line(ei.value)
    assert needle in msg
    assert isinstance(ei.value, InvalidInput)


def test_text_message_echoes_only_a_few_safe_bytes(tmp_path):
    p = bad.text_as_jpg(tmp_path)
    with pytest.raises(NotAnImage) as ei:
        _decode_path(p)
    msg = _assert_one_line(ei.value)
    assert "Hello" in msg
    assert "Second line" not in msg and "not a photo" not in msg


def test_binary_garbage_message_is_escaped():
    data = b"\x00\x01\x1b[31m\x7f\xfe" + bytes(range(256)) * 4
    with pytest.raises(NotAnImage) as ei:
        decode_image(data, max_pixels=MAX_PIXELS)
    msg = _assert_one_line(ei.value)
    assert "\x1b" not in msg and "\x00" not in msg
    assert msg.isascii() and msg.isprintable()


@pytest.mark.parametrize("flag", [False, True])
def test_truncated_is_an_error_whatever_pillow_global_says(tmp_path, photo, monkeypatch, flag):
    """With LOAD_TRUNCATED_IMAGES on, Pillow would give grey filler pixels; we must not."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
    with pytest.raises(CorruptImage):
        _decode_path(bad.truncated_jpeg(tmp_path, photo))
    with pytest.raises(CorruptImage):
        _decode_path(bad.truncated_png(tmp_path))  # synthetic: PNG-encoding a photo is slow
    with pytest.raises(CorruptImage):
        _decode_path(bad.truncated_jpeg_after_thumbnail(tmp_path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag  # restored, not changed for good


def test_pillow_really_fills_truncated_jpeg_when_the_global_flag_is_on(tmp_path, photo, monkeypatch):
    """Documents why the guard above exists."""
    data = bad.truncated_jpeg(tmp_path, photo).read_bytes()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # no error: the missing part is filled in
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    with pytest.raises(OSError), Image.open(io.BytesIO(data)) as im:
        im.load()


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope" / "photo.jpg"
    with pytest.raises(PathNotFound) as ei:
        _decode_path(missing)
    assert str(missing) in _assert_one_line(ei.value)
    with pytest.raises(PathNotFound) as ei:
        _decode_path(tmp_path)
    assert str(tmp_path) in _assert_one_line(ei.value)


def test_max_bytes(tmp_path, photo):
    p = bad.bmp(tmp_path, photo)
    size = p.stat().st_size
    with pytest.raises(ImageTooLarge) as ei:
        _decode_path(p, max_bytes=size - 1)
    _assert_one_line(ei.value)
    with pytest.raises(ImageTooLarge):
        decode_image(p.read_bytes(), max_pixels=MAX_PIXELS, max_bytes=size - 1)
    _assert_valid(_decode_path(p, max_bytes=size))


def test_max_pixels_from_header(tmp_path):
    p = bad.bmp(tmp_path)  # 160 x 120
    with pytest.raises(ImageTooLarge) as ei:
        _decode_path(p, max_pixels=160 * 120 - 1)
    assert "160x120" in _assert_one_line(ei.value)
    _assert_valid(_decode_path(p, max_pixels=160 * 120))


def _refuse_fast_and_small(p: Path, max_pixels: int) -> str:
    data = p.read_bytes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as ei:
            decode_image(data, max_pixels=max_pixels)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_delta = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    assert elapsed < 0.5, f"took {elapsed:.2f}s"
    assert peak < 200 * 2**20, f"python heap peak {peak / 2**20:.0f} MiB"
    assert rss_delta < 200 * 2**20, f"RSS grew by {rss_delta / 2**20:.0f} MiB"
    return _assert_one_line(ei.value)


def test_huge_png_refused_fast_without_memory(tmp_path):
    t0 = time.perf_counter()
    p = bad.huge_png(tmp_path)
    assert time.perf_counter() - t0 < 3
    assert p.stat().st_size < 1_000_000
    msg = _refuse_fast_and_small(p, MAX_PIXELS)
    assert "400,000,000" in msg and "80,000,000" in msg
    # even with a very high limit of ours, Pillow's own header guard still refuses it
    _refuse_fast_and_small(p, 10**12)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_between_our_limit_and_pillows_refused_by_ours(tmp_path):
    # 10,000 x 9,000 = 90 M pixels: over our 80 M limit, under Pillow's 179 M error limit
    p = bad.write_png_raw(tmp_path / "big.png", 10_000, 9_000, 1, 0, zero_rows=True)
    msg = _refuse_fast_and_small(p, MAX_PIXELS)
    assert "10000x9000" in msg


# ------------------------------------------------------------------------------------------
# accepted inputs


def test_exif_rotation_gives_upright_image(tmp_path, face_photo):
    p = bad.exif_rotated_jpeg(tmp_path, face_photo)
    with Image.open(p) as raw:
        stored_w, stored_h = raw.size
    original = _decode_path(face_photo)
    dec = _decode_path(p)
    _assert_valid(dec)
    assert (dec.info.width, dec.info.height) == (stored_h, stored_w)  # swapped vs stored
    assert (dec.info.width, dec.info.height) == (original.info.width, original.info.height)
    assert dec.info.format == "JPEG"
    diff = np.abs(dec.rgb.astype(np.int16) - original.rgb.astype(np.int16)).mean()
    assert diff < 8, diff  # same picture, the right way up (only JPEG loss differs)
    flipped = np.abs(dec.rgb[::-1, ::-1].astype(np.int16) - original.rgb.astype(np.int16)).mean()
    assert flipped > 3 * diff


def test_png16_grey_scaled_not_clipped(tmp_path):
    dec = _decode_path(bad.png16(tmp_path))
    _assert_valid(dec)
    assert dec.info.mode.startswith("I")
    row = dec.rgb[0, :, 0].astype(int)
    assert row.min() == 0 and row.max() == 255
    assert np.all(np.diff(row) >= 0)
    assert np.abs(row - np.linspace(0, 255, row.size)).max() <= 1
    assert (dec.rgb[..., 0] == dec.rgb[..., 1]).all() and (dec.rgb[..., 1] == dec.rgb[..., 2]).all()


def test_png16_rgb(tmp_path):
    dec = _decode_path(bad.png16_rgb(tmp_path))
    _assert_valid(dec)
    red = dec.rgb[0, :, 0].astype(int)
    assert red.min() == 0 and red.max() == 255
    assert np.abs(red - np.linspace(0, 255, red.size)).max() <= 1
    assert (dec.rgb[..., 1] == 255).all() and (dec.rgb[..., 2] == 0).all()


def test_cmyk_jpeg_comes_out_rgb(tmp_path, photo):
    p = bad.cmyk_jpeg(tmp_path, photo)
    dec = _decode_path(p)
    _assert_valid(dec)
    assert dec.info.mode == "CMYK" and dec.info.format == "JPEG"
    ref = np.asarray(bad._source(photo)).astype(np.int16)
    assert np.abs(dec.rgb.astype(np.int16) - ref).mean() < 10


def test_grayscale_jpeg_comes_out_rgb(tmp_path, photo):
    dec = _decode_path(bad.grayscale_jpeg(tmp_path, photo))
    _assert_valid(dec)
    assert dec.info.mode == "L"
    assert (dec.rgb[..., 0] == dec.rgb[..., 1]).all() and (dec.rgb[..., 1] == dec.rgb[..., 2]).all()
    assert dec.rgb.std() > 10


@pytest.mark.parametrize(
    ("make", "mode", "left", "right"),
    [
        (bad.rgba_png, "RGBA", (255, 255, 255), (255, 0, 0)),
        (bad.palette_transparent_png, "P", (255, 255, 255), (0, 255, 0)),
        (bad.la_png, "LA", (255, 255, 255), (100, 100, 100)),
        (bad.one_bit_png, "1", (0, 0, 0), (255, 255, 255)),
    ],
    ids=["rgba", "palette_trns", "la", "1bit"],
)
def test_modes_and_alpha_flattened_on_white(tmp_path, make, mode, left, right):
    dec = _decode_path(make(tmp_path))
    _assert_valid(dec)
    assert dec.info.mode == mode
    h, w = dec.rgb.shape[:2]
    assert tuple(dec.rgb[h // 2, 2]) == left
    assert tuple(dec.rgb[h // 2, w - 3]) == right


@pytest.mark.parametrize(("make", "fmt"), [(bad.webp, "WEBP"), (bad.bmp, "BMP")])
def test_webp_and_bmp(tmp_path, photo, make, fmt):
    p = make(tmp_path, photo)
    dec = _decode_path(p)
    _assert_valid(dec)
    assert dec.info.format == fmt
    ref = np.asarray(bad._source(photo)).astype(np.int16)
    assert np.abs(dec.rgb.astype(np.int16) - ref).mean() < 10


@pytest.mark.parametrize("make", [bad.animated_webp, bad.animated_png], ids=["webp", "apng"])
def test_animated_gives_first_frame(tmp_path, make):
    dec = _decode_path(make(tmp_path))
    _assert_valid(dec)
    assert (dec.rgb[..., 0] > 200).all() and (dec.rgb[..., 2] < 50).all()


def test_info_sha_and_frozen(tmp_path, photo):
    p = bad.grayscale_jpeg(tmp_path, photo)
    data = p.read_bytes()
    dec = decode_image(data, max_pixels=MAX_PIXELS)
    assert dec.info.sha256 == hashlib.sha256(data).hexdigest() == image_sha256(data)
    assert read_image(p, max_pixels=MAX_PIXELS).info == dec.info
    with pytest.raises(dataclasses.FrozenInstanceError):
        dec.rgb = np.zeros((1, 1, 3), np.uint8)  # type: ignore[misc]


def test_accepts_bytearray_and_memoryview(tmp_path):
    data = bad.bmp(tmp_path).read_bytes()
    for buf in (bytearray(data), memoryview(data)):
        _assert_valid(decode_image(buf, max_pixels=MAX_PIXELS))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# fuzz

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _seed_files() -> list[bytes]:
    img = bad.synthetic_rgb(48, 32)
    out = []
    for fmt, kw in (("JPEG", {"quality": 80}), ("JPEG", {"progressive": True}), ("PNG", {}),
                    ("WEBP", {}), ("BMP", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:  # hit the header, where sizes and lengths live
            hpos = draw(st.integers(0, min(len(data), 64) - 1))
            data[hpos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_bytes_never_escape(data):
    try:
        dec = decode_image(data, max_pixels=2_000_000, max_bytes=1_000_000)
    except InvalidInput as exc:
        _assert_one_line(exc)
        return
    _assert_valid(dec)
