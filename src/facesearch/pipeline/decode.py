"""Safe decoding of untrusted image bytes.

Everything that turns bytes from outside (an upload, a file in a folder being ingested) into
pixels goes through :func:`decode_image` / :func:`read_image`. The rules:

* only JPEG, PNG, WebP and BMP are accepted, checked first by magic bytes and then by the format
  Pillow itself detects (Pillow is only allowed to try the one matching plugin);
* the pixel count is checked from the header, before any pixel is decoded, so a
  decompression bomb is refused fast and without allocating its pixels;
* a truncated or corrupt file is an error (:class:`CorruptImage`), never grey filler pixels,
  whatever Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` says;
* EXIF orientation is applied, and every mode is converted to 8-bit RGB (alpha is flattened
  on white, 16-bit samples are scaled to 8 bits, not clipped);
* animated images give their first frame.

Every failure is a subclass of :class:`facesearch.errors.InvalidInput` with a one-line message
that never echoes more than a few printable bytes of the input.
"""
from __future__ import annotations

import hashlib
import io
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from facesearch.errors import (
    CorruptImage,
    FaceSearchError,
    ImageTooLarge,
    InvalidInput,
    NotAnImage,
    PathNotFound,
)
from facesearch.types import ImageInfo

__all__ = ["ALLOWED_FORMATS", "DecodedImage", "decode_image", "image_sha256", "read_image"]

#: The formats we accept, with Pillow's names for them.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")

# Pillow reports multi-picture JPEGs (many camera files) as "MPO"; they are JPEGs to us.
_PILLOW_FORMAT_ALIASES = {"MPO": "JPEG"}

_FLATTEN_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded, upright image: ``rgb`` is HxWx3 uint8, C-contiguous."""

    rgb: np.ndarray
    info: ImageInfo


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the raw bytes (the content hash used for de-duplication)."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# format sniffing


def _sniff_allowed(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


# Recognised but refused formats, for a helpful message.
_KNOWN_OTHERS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"8BPS", 0, "a Photoshop file"),
    (b"\x00\x00\x01\x00", 0, "an ICO icon"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"\x7fELF", 0, "an executable"),
    (b"MZ", 0, "an executable"),
)

_FTYP_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF",
}

_ALLOWED_TEXT = "allowed: JPEG, PNG, WebP, BMP"


def _safe_preview(data: bytes, limit: int = 8) -> str:
    """At most ``limit`` leading bytes, printable ASCII only, as a quoted one-liner."""
    out = []
    for b in data[:limit]:
        if 0x20 <= b < 0x7F and b not in (0x22, 0x27, 0x5C):  # no quotes / backslash
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    more = "..." if len(data) > limit else ""
    return f'"{"".join(out)}{more}"'


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character may be cut at the end of the sample
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(1 for b in head if b >= 0x20 or b in (0x09, 0x0A, 0x0D))
    return printable / len(head) > 0.95


def _refuse_unknown(data: bytes) -> NotAnImage:
    for magic, offset, name in _KNOWN_OTHERS:
        if data[offset:offset + len(magic)] == magic:
            return NotAnImage(f"not an accepted image: this looks like {name} ({_ALLOWED_TEXT})")
    if len(data) >= 12 and data[4:8] == b"ftyp":
        name = _FTYP_BRANDS.get(data[8:12])
        if name:
            return NotAnImage(f"not an accepted image: this looks like {name} ({_ALLOWED_TEXT})")
        return NotAnImage(f"not an accepted image: this looks like a video/ISO media file ({_ALLOWED_TEXT})")
    if _looks_like_text(data):
        return NotAnImage(f"not an image (a text file? the content starts with {_safe_preview(data)})")
    return NotAnImage(f"not an image (unknown content starting with {_safe_preview(data, 4)}; {_ALLOWED_TEXT})")


# --------------------------------------------------------------------------------------------
# strict loading

_TRUNCATION_LOCK = threading.Lock()


@contextmanager
def _no_truncated_images() -> Iterator[None]:
    """Make sure Pillow refuses truncated files while we load one.

    Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide switch (off by default) that,
    when on, fills a truncated image with grey instead of raising. We never set it, but other
    code in the process might; if it is on, it is switched off for the duration of our load
    (under a lock, so concurrent decodes restore it correctly) and put back afterwards.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _jpeg_incomplete(data: bytes) -> str | None:
    """Why a JPEG is structurally incomplete, or None when it looks complete.

    An independent check that does not rely on Pillow's global switch: the marker segments are
    walked up to the first scan (SOS), so an EXIF thumbnail inside APP1 (which has its own
    end-of-image marker) is skipped, and an end-of-image marker (EOI) must follow the scan.
    Oddities before the scan are left to Pillow to judge.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without length
            i += 2
            continue
        if marker == 0xD9:
            return None
        seglen = int.from_bytes(data[i + 2:i + 4], "big")
        if seglen < 2:
            return None
        if marker == 0xDA:
            if data.find(b"\xff\xd9", i + 2 + seglen) == -1:
                return "truncated image (JPEG has no end-of-image marker)"
            return None
        i += 2 + seglen
    return "truncated or corrupt image (JPEG ends before its image data)"


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe_pillow_error(exc: BaseException) -> str:
    text = _one_line(str(exc)) or type(exc).__name__
    low = text.lower()
    if "truncat" in low or isinstance(exc, EOFError):
        return f"truncated image ({text})"
    return f"corrupt image ({text})"


# --------------------------------------------------------------------------------------------
# mode conversion


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _FLATTEN_BACKGROUND + (255,))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _grey_to_rgb(grey8: np.ndarray) -> np.ndarray:
    return np.repeat(grey8[:, :, None], 3, axis=2)


def _scale_int(values: np.ndarray) -> np.ndarray:
    """Integer samples (16-bit, or 32-bit 'I' mode) to uint8 without clipping."""
    v = values.astype(np.int64, copy=False)
    if v.size == 0:
        return np.zeros(v.shape, dtype=np.uint8)
    lo, hi = int(v.min()), int(v.max())
    if lo >= 0 and hi <= 65535:
        # full 16-bit range -> 8 bits: round(v * 255 / 65535)
        return ((v * 255 + 32767) // 65535).astype(np.uint8)
    # anything else: stretch the actual range
    span = max(hi - lo, 1)
    return ((v - lo) * 255 // span).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(values.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if v.size == 0:
        return np.zeros(v.shape, dtype=np.uint8)
    lo, hi = float(v.min()), float(v.max())
    if lo >= 0.0 and hi <= 1.0:
        v = v * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        v = (v - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = _grey_to_rgb(_scale_int(np.asarray(img)))
    elif mode == "F":
        arr = _grey_to_rgb(_scale_float(np.asarray(img)))
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    ):
        arr = np.asarray(_flatten_alpha(img))
    else:  # L, P, 1, CMYK, YCbCr, LAB, HSV, RGBX, ...
        arr = np.asarray(img.convert("RGB"))
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CorruptImage(f"could not convert colour mode {mode} to RGB")
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr


# --------------------------------------------------------------------------------------------
# public API


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB array.

    Raises :class:`NotAnImage` (empty, not an image, not an accepted format),
    :class:`ImageTooLarge` (more than ``max_bytes`` bytes or ``max_pixels`` pixels, the latter
    checked from the header before decoding) or :class:`CorruptImage` (truncated or damaged).
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    if len(data) == 0:
        raise NotAnImage("empty file")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"file is too large ({len(data):,} bytes; the limit is {max_bytes:,})")

    fmt = _sniff_allowed(data)
    if fmt is None:
        raise _refuse_unknown(data)
    if fmt == "JPEG":
        problem = _jpeg_incomplete(data)
        if problem:
            raise CorruptImage(problem)

    sha = image_sha256(data)
    try:
        # (Pillow's warnings, e.g. on odd EXIF, are left to the caller's warning filters:
        # warnings.catch_warnings() is not thread-safe.)
        with _no_truncated_images():
            return _decode(data, fmt, sha, max_pixels)
    except FaceSearchError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own global guard (about 179 M pixels by default) fired at open, from the
        # header, before our check could; report it in our terms.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,}" if found else "too many"
        raise ImageTooLarge(
            f"image has too many pixels ({count}; the limit is {max_pixels:,})"
        ) from None
    except MemoryError:
        raise ImageTooLarge("image is too large to decode in memory") from None
    except Image.UnidentifiedImageError:
        raise CorruptImage(f"corrupt image (starts like {fmt} but cannot be read as one)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes
        raise CorruptImage(_describe_pillow_error(exc)) from None


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block means "no rotation", not an error."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken metadata must not reject good pixels
        return img
    return img if upright is None else upright


def _decode(data: bytes, fmt: str, sha: str, max_pixels: int) -> DecodedImage:
    # Only the plugin matching the magic bytes may try; Image.open reads the header only.
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        detected = _PILLOW_FORMAT_ALIASES.get(img.format or "", img.format)
        if detected not in ALLOWED_FORMATS or detected != fmt:
            raise NotAnImage(f"not an accepted image (detected {detected}; {_ALLOWED_TEXT})")
        width, height = img.size
        if width <= 0 or height <= 0:
            raise CorruptImage(f"corrupt image (size {width}x{height})")
        pixels = width * height
        if pixels > max_pixels:
            raise ImageTooLarge(
                f"image has too many pixels ({width}x{height} = {pixels:,}; the limit is {max_pixels:,})"
            )
        mode = img.mode
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        rgb = _to_rgb_array(_apply_orientation(img))

    h, w = rgb.shape[:2]
    info = ImageInfo(width=int(w), height=int(h), format=fmt, mode=mode, sha256=sha)
    return DecodedImage(rgb=rgb, info=info)


def read_image(path: Path | str, *, max_pixels: int, max_bytes: int | None = None) -> DecodedImage:
    """Read and decode an image file. :class:`PathNotFound` for a missing path or a directory."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise PathNotFound(f"no such file: {p}") from None
    except NotADirectoryError:
        raise PathNotFound(f"no such file: {p}") from None
    except PermissionError:
        raise InvalidInput(f"cannot read {p}: permission denied") from None
    except OSError as exc:
        raise PathNotFound(f"cannot access {p}: {_one_line(exc.strerror or str(exc))}") from None
    if stat.S_ISDIR(st.st_mode):
        raise PathNotFound(f"is a directory, not an image file: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise PathNotFound(f"not a regular file: {p}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageTooLarge(f"file is too large ({st.st_size:,} bytes; the limit is {max_bytes:,}): {p}")
    try:
        with open(p, "rb") as fh:
            # read at most one byte past the limit, in case the file grew since stat()
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise PathNotFound(f"no such file: {p}") from None
    except PermissionError:
        raise InvalidInput(f"cannot read {p}: permission denied") from None
    except IsADirectoryError:
        raise PathNotFound(f"is a directory, not an image file: {p}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {p}: {_one_line(exc.strerror or str(exc))}") from None
    return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)

