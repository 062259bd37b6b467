"""Face alignment: turn a detected face and its landmarks into the chip an embedder expects."""
from __future__ import annotations

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


def align(image: np.ndarray, bbox: BBox, landmarks: tuple[Point, ...], alignment: str,
          size: tuple[int, int], scheme: str = DLIB5) -> np.ndarray:
    if alignment.startswith("dlib-chip"):
        if scheme != DLIB5:
            raise ValueError("dlib's chip needs dlib's 5 landmarks")
        return dlib_chip(image, bbox, landmarks, size=size[0])
    if alignment.startswith("arcface"):
        return arcface_chip(image, landmarks, size=size[0], scheme=scheme)
    raise ValueError(f"unknown alignment {alignment!r}")
