"""Face alignment: turn a detected face and its landmarks into the chip an embedder expects."""
from __future__ import annotations

import functools

import numpy as np

from facesearch.types import BBox, Point

# The ArcFace 112x112 template: left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def dlib_chip(image: np.ndarray, bbox: BBox, landmarks: tuple[Point, ...], size: int = 150,
              padding: float = 0.25) -> np.ndarray:
    """dlib's own face chip (``get_face_chip``) from its 5-point landmarks."""
    import dlib

    rect = dlib.rectangle(bbox.x, bbox.y, bbox.x + bbox.w - 1, bbox.y + bbox.h - 1)
    pts = dlib.points()
    for x, y in landmarks:
        pts.append(dlib.point(round(x), round(y)))
    shape = dlib.full_object_detection(rect, pts)
    return np.asarray(dlib.get_face_chip(image, shape, size=size, padding=padding))


# dlib's 5-point template on the unit square (get_face_chip_details in dlib's
# image_transforms/interpolation.h), in the order of its 5-point predictor's parts.
DLIB5_TEMPLATE = np.array(
    [[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
     [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
     [0.4901123135679, 0.6277975316475]],
    dtype=np.float64,
)


def _rect_down(r: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """dlib's pyramid_down<2> mapping of a rectangle into the next pyramid level."""
    return (r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75)


def _rect_area(r: tuple[float, float, float, float]) -> float:
    w, h = r[2] - r[0] + 1, r[3] - r[1] + 1
    return 0.0 if r[0] > r[2] or r[1] > r[3] else w * h


def _pyramid_down(img: np.ndarray) -> np.ndarray:
    """One level of a 2:1 pyramid with the [1 4 6 4 1] filter (OpenCV's pyrDown), output pixel
    q taken at input 2q + 2 and (h - 3) // 2 rows, as dlib's pyramid_down<2>."""
    import cv2

    h, w = img.shape[:2]
    rows, cols = (h - 3) // 2, (w - 3) // 2
    if rows < 1 or cols < 1:
        return np.zeros((0, 0, 3), img.dtype)
    # dlib keeps each level in uint8, truncated: with the pixels scaled by 256, pyrDown's
    # rounded weighted mean is the exact weighted sum (<= 255 * 256), and >> 8 truncates it
    x = img[2:, 2:].astype(np.uint16)
    x <<= 8
    down = cv2.pyrDown(x)[:rows, :cols]
    return (down >> 8).astype(np.uint8)


def chip_transform(landmarks: tuple[Point, ...] | np.ndarray, size: int = 150,
                   padding: float = 0.25) -> np.ndarray:
    """The 2x3 similarity (chip -> image) of dlib's face chip: dlib's 5-point template, padded
    by ``padding`` on every side and scaled to ``size``, fitted to the 5 landmarks."""
    tpl = (padding + DLIB5_TEMPLATE) / (2 * padding + 1) * size
    return similarity_transform(tpl, np.asarray(landmarks, dtype=np.float64))


def opencv_dlib_chip(image: np.ndarray, landmarks: tuple[Point, ...] | np.ndarray, size: int = 150,
                     padding: float = 0.25) -> np.ndarray:
    """dlib's ``get_face_chip`` computed with OpenCV: the same chip geometry (dlib's chip
    rectangle around the fitted similarity), the same 2:1 pyramid (truncated to uint8 at each
    level) when the face is more than twice the chip's size, bilinear sampling, black where a
    sample's neighbours leave the image, truncation to uint8. On the dev faces it equals dlib's
    chip to 1e-4 grey levels on average; the reference stays :func:`dlib_chip`
    (tests/unit/test_align_opencv.py compares them)."""
    import cv2

    m = chip_transform(landmarks, size, padding)
    a = m[:, :2]
    scale = float(np.hypot(a[0, 0], a[1, 0]))
    angle = float(np.arctan2(a[1, 0], a[0, 0]))
    centre = a @ np.array([size / 2.0, size / 2.0]) + m[:, 2]
    half = (size * scale - 1) / 2
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    # how many 2:1 pyramid levels dlib would descend, and the region it would crop
    depth, grow, r = 0, 2.0, _rect_down(rect)
    while _rect_area(r) > size * size:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    c, s = np.cos(angle), np.sin(angle)
    ext = half * (abs(c) + abs(s)) + grow
    h_img, w_img = image.shape[:2]
    x0 = int(np.floor(max(centre[0] - ext, 0.0) + 0.5))
    y0 = int(np.floor(max(centre[1] - ext, 0.0) + 0.5))
    x1 = int(np.floor(min(centre[0] + ext, w_img - 1.0) + 0.5))
    y1 = int(np.floor(min(centre[1] + ext, h_img - 1.0) + 0.5))
    if x1 < x0 or y1 < y0:
        return np.zeros((size, size, 3), np.uint8)
    src: np.ndarray = image[y0:y1 + 1, x0:x1 + 1]
    local = (rect[0] - x0, rect[1] - y0, rect[2] - x0, rect[3] - y0)
    levels = 0
    while _rect_area(_rect_down(local)) > size * size and levels <= depth:
        local = _rect_down(local)
        levels += 1
    for _ in range(levels):
        src = _pyramid_down(src)
        if src.size == 0:
            return np.zeros((size, size, 3), np.uint8)
    src = src.astype(np.float32)  # sampled in float, then truncated like dlib
    # chip pixel (u, v) -> the rotated local rectangle, corner to corner
    lc = np.array([(local[0] + local[2]) / 2, (local[1] + local[3]) / 2])
    step = (local[2] - local[0]) / (size - 1)
    rot = np.array([[c, -s], [s, c]]) * step
    off = lc - rot @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    fwd = np.hstack([rot, off[:, None]])
    out = cv2.warpAffine(src, fwd, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    # dlib leaves a pixel black unless all 4 of its bilinear neighbours are inside the image
    grid = _chip_grid(size)
    xs = fwd[0, 0] * grid[0] + fwd[0, 1] * grid[1] + fwd[0, 2]
    ys = fwd[1, 0] * grid[0] + fwd[1, 1] * grid[1] + fwd[1, 2]
    h_src, w_src = src.shape[:2]
    outside = (xs < 0) | (ys < 0) | (xs >= w_src - 1) | (ys >= h_src - 1)
    if outside.any():
        out[outside] = 0
    return np.clip(out, 0, 255).astype(np.uint8)  # truncating, as dlib's pixel assignment


@functools.lru_cache(maxsize=4)
def _chip_grid(size: int) -> np.ndarray:
    """(u, v) of every chip pixel, read-only: shape (2, size, size)."""
    g = np.stack(np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64)))
    g.setflags(write=False)
    return g


# Where 5 landmarks come from decides what they mean:
DLIB5 = "dlib5"  # dlib's shape predictor: two corners of one eye, two of the other, nose base
FIVE = "5pt"  # a detector's (MTCNN, SCRFD): left eye, right eye, nose tip, mouth corners


def eye_centres(landmarks: tuple[Point, ...], scheme: str = DLIB5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left eye, right eye, nose) in image coordinates. "Left" is the eye with the smaller x."""
    p = np.asarray(landmarks, dtype=np.float64)
    if scheme == DLIB5:
        a, b, nose = p[0:2].mean(axis=0), p[2:4].mean(axis=0), p[4]
    else:
        a, b, nose = p[0], p[1], p[2]
    left, right = (a, b) if a[0] <= b[0] else (b, a)
    return left, right, nose


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    ``src`` points onto ``dst``. Returns a 2x3 matrix for ``cv2.warpAffine``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # reflection guard
        e[1, 1] = -1
    r = u @ e @ vt
    var_s = (s0**2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ e) / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def arcface_chip(image: np.ndarray, landmarks: tuple[Point, ...], size: int = 112,
                 scheme: str = FIVE) -> np.ndarray:
    """Similarity alignment onto the ArcFace template: all 5 points of a detector, or with
    dlib's landmarks the two eye centres (from the corner pairs) and the nose."""
    import cv2

    left, right, nose = eye_centres(landmarks, scheme)
    p = np.asarray(landmarks, dtype=np.float64)
    if scheme == FIVE and len(p) == 5:
        src, dst = p, ARCFACE_112
    else:
        src, dst = np.stack([left, right, nose]), ARCFACE_112[:3]
    m = similarity_transform(src, dst * (size / 112.0))
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


OPENCV = "opencv"  # dlib's chip computed with OpenCV (the default)
DLIB = "dlib"  # dlib's own get_face_chip (the reference)


def align(image: np.ndarray, bbox: BBox, landmarks: tuple[Point, ...], alignment: str,
          size: tuple[int, int], scheme: str = DLIB5, backend: str = OPENCV) -> np.ndarray:
    """The chip ``alignment`` names; ``backend`` picks who computes dlib's chip."""
    if alignment.startswith("dlib-chip"):
        if scheme != DLIB5:
            raise ValueError("dlib's chip needs dlib's 5 landmarks")
        if backend == DLIB:
            return dlib_chip(image, bbox, landmarks, size=size[0])
        return opencv_dlib_chip(image, landmarks, size=size[0])
    if alignment.startswith("arcface"):
        return arcface_chip(image, landmarks, size=size[0], scheme=scheme)
    raise ValueError(f"unknown alignment {alignment!r}")
