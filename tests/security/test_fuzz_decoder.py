"""Fuzzing the image decoder (``pipeline/decode.py``) with malformed files: mutated real JPEG, PNG,
WebP and BMP bytes (from the developer photo set), truncations, headers declaring huge
dimensions, spliced garbage and random bytes behind valid magic numbers.

Whatever the input, :func:`decode_image` either returns an upright 8-bit RGB image within the pixel
limit or raises one of our domain errors (:class:`InvalidInput` and its subclasses); never another
exception, never a crash, and each case in bounded time. Hypothesis runs derandomized with no
example database, so CI and a laptop run the same cases. Figures: ``decoder_fuzz_cases`` and
``decoder_fuzz_crashes`` (target 0)."""
from __future__ import annotations

import io
import struct
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facesearch.errors import InvalidInput
from facesearch.pipeline.decode import decode_image

MAX_PIXELS = 4_000_000
MAX_BYTES = 8 * 1024 * 1024
PER_CASE_S = 3.0  # one decode of a small, broken file; generous for a loaded CI machine
EXAMPLES = 2000


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds(dev_labels: dict[str, list[Path]]) -> dict[str, bytes]:
    """Real photos as each accepted format (small, so that a case decodes in milliseconds), and one
    original camera JPEG with its EXIF."""
    photos = [p for ps in dev_labels.values() for p in ps]
    originals = sorted((p for p in photos if p.suffix.lower() in (".jpg", ".jpeg")), key=lambda p: p.stat().st_size)
    out = {"jpeg-original": originals[0].read_bytes()}
    with Image.open(photos[len(photos) // 2]) as im:
        small = im.convert("RGB")
        small.thumbnail((160, 160))
    out["jpeg"] = _encode(small, "JPEG", quality=85)
    out["jpeg-progressive"] = _encode(small, "JPEG", quality=70, progressive=True)
    out["png"] = _encode(small, "PNG")
    out["png-rgba"] = _encode(small.convert("RGBA"), "PNG")
    out["webp"] = _encode(small, "WEBP", quality=80)
    out["webp-lossless"] = _encode(small, "WEBP", lossless=True)
    out["bmp"] = _encode(small, "BMP")
    return out


# -- mutations -------------------------------------------------------------------------------------------
def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b)


def _huge_dimensions(data: bytes, w: int, h: int) -> bytes:
    """Rewrite the dimensions the header declares, leaving the pixel data as it was."""
    b = bytearray(data)
    if data.startswith(b"\x89PNG"):
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)  # a valid CRC
    elif data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(b):
            if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2):
                b[i + 5:i + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
                break
            i += 2 + int.from_bytes(b[i + 2:i + 4], "big") if b[i] == 0xFF else 1
    elif data.startswith(b"BM"):
        b[18:26] = struct.pack("<ii", w & 0x7FFFFFFF, h & 0x7FFFFFFF)
    elif data[8:12] == b"WEBP":
        if data[12:16] == b"VP8 ":
            b[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
        elif data[12:16] == b"VP8L":
            bits = ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
            b[21:25] = struct.pack("<I", bits | (int.from_bytes(b[21:25], "little") & 0xF0000000))
    return bytes(b)


MAGIC = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
         b"RIFF\xff\xff\xff\x7fWEBPVP8L", b"BM", b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00"]


@st.composite
def malformed(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:  # noqa: ANN001
    names = sorted(seeds)
    kind = draw(st.sampled_from(["flip", "truncate", "huge", "splice", "magic+random", "random", "flip+truncate"]))
    seed = seeds[draw(st.sampled_from(names))]
    if kind == "random":
        return kind, draw(st.binary(min_size=0, max_size=4096))
    if kind == "magic+random":
        return kind, draw(st.sampled_from(MAGIC)) + draw(st.binary(min_size=0, max_size=4096))
    if kind == "huge":
        side = st.integers(min_value=0, max_value=0xFFFF) | st.sampled_from([0, 1, 65535, 40000, 2 ** 31 - 1])
        return kind, _huge_dimensions(seed, draw(side), draw(side))
    edits = draw(st.lists(st.tuples(st.integers(0, 10 ** 7), st.integers(0, 255)), min_size=1, max_size=12))
    if kind == "flip":
        # most of a format's structure sits in its first bytes: bias the positions there
        edits = [(p % min(len(seed), 1024) if p % 2 else p, v) for p, v in edits]
        return kind, _flip(seed, edits)
    if kind == "truncate":
        return kind, seed[: draw(st.integers(0, len(seed) - 1))]
    if kind == "splice":
        at = draw(st.integers(0, len(seed)))
        return kind, seed[:at] + draw(st.binary(min_size=1, max_size=512)) + seed[at:]
    cut = draw(st.integers(1, len(seed)))
    return kind, _flip(seed[:cut], edits)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # what is being tested
def test_decoder_gives_an_image_or_a_domain_error_on_malformed_files(seeds: dict[str, bytes], security_figure,
                                                                     fuzz_report) -> None:  # noqa: ANN001
    for name, data in seeds.items():  # the seeds themselves decode
        img = decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
        assert img.rgb.ndim == 3, name
    stats = {"cases": 0, "decoded": 0, "refused": 0, "slowest_s": 0.0}
    crashes: list[str] = []
    codes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=malformed(seeds))
    def run(case: tuple[str, bytes]) -> None:
        kind, data = case
        stats["cases"] += 1
        start = time.perf_counter()
        try:
            img = decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
        except InvalidInput as e:
            stats["refused"] += 1
            codes[e.code] = codes.get(e.code, 0) + 1
            assert e.message and "\n" not in e.message
        except Exception:  # noqa: BLE001 - anything else is a finding
            crashes.append(f"{kind} ({len(data)} bytes, starts {data[:12]!r}): {traceback.format_exc(limit=3)}")
        else:
            stats["decoded"] += 1
            rgb = img.rgb
            ok = (rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
                  and 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS)
            if not ok:
                crashes.append(f"{kind}: a decoded image breaks the contract: {rgb.shape} {rgb.dtype}")
        took = time.perf_counter() - start
        stats["slowest_s"] = max(stats["slowest_s"], took)
        if took > PER_CASE_S:
            crashes.append(f"{kind} ({len(data)} bytes): took {took:.1f} s")

    run()
    security_figure("decoder_fuzz_cases", stats["cases"])
    security_figure("decoder_fuzz_crashes", len(crashes))
    fuzz_report(f"decoder fuzzing: {stats['cases']} cases, {stats['decoded']} decoded, {stats['refused']} refused "
                f"({', '.join(f'{k} {v}' for k, v in sorted(codes.items()))}), {len(crashes)} crashes, "
                f"slowest {stats['slowest_s'] * 1000:.0f} ms")
    assert stats["cases"] >= EXAMPLES * 0.9
    assert stats["refused"] > 0 and stats["decoded"] > 0  # the cases reach both outcomes
    assert not crashes, "\n".join(crashes[:10])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_header_declaring_a_huge_image_is_refused_before_decoding(seeds: dict[str, bytes]) -> None:
    for name in ("png", "jpeg", "bmp", "webp-lossless"):
        data = _huge_dimensions(seeds[name], 16000, 16000)
        start = time.perf_counter()
        with pytest.raises(InvalidInput) as e:
            decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
        assert time.perf_counter() - start < 0.5, name  # from the header, no pixels allocated
        assert e.value.code in ("image_too_large", "corrupt_image"), (name, e.value.code)
    assert "image_too_large" == pytest.raises(
        InvalidInput, decode_image, _huge_dimensions(seeds["png"], 16000, 16000), max_pixels=MAX_PIXELS).value.code
