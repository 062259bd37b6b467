"""Face thumbnails: the box with a margin, as a small JPEG."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def face_thumbnail(rgb: np.ndarray, box: tuple[int, int, int, int], size: int = 160, margin: float = 0.3) -> bytes:
    x, y, w, h = box
    mx, my = int(w * margin), int(h * margin)
    H, W = rgb.shape[:2]
    crop = rgb[max(0, y - my): min(H, y + h + my), max(0, x - mx): min(W, x + w + mx)]
    im = Image.fromarray(np.ascontiguousarray(crop))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
