"""What the ONNX detectors share: non-maximum suppression, and turning raw boxes, scores and
5 landmarks into our ``DetectedFace`` objects (clipped, ordered, largest first)."""
from __future__ import annotations

import numpy as np

from facesearch.errors import InvalidInput
from facesearch.types import BBox, DetectedFace


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns the indices kept, best score first.

    ``mode="union"`` compares intersection over union, ``mode="min"`` intersection over the
    smaller of the two areas (which also removes a small box lying inside a bigger one).
    """
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        if mode == "min":
            denom = np.minimum(area[i], area[rest])
        else:
            denom = area[i] + area[rest] - inter
        overlap = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def to_faces(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, points: np.ndarray,
             detector: str) -> list[DetectedFace]:
    """``boxes`` as (x1, y1, x2, y2) rows, ``points`` as (5, 2) per face: left eye, right eye,
    nose, mouth corners. Boxes are clipped to the image; eyes and mouth corners are put in
    image order (smaller x first); the largest face comes first."""
    h_img, w_img = image.shape[:2]
    faces = []
    for b, s, pts in zip(boxes, scores, points):
        x1 = min(max(int(round(b[0])), 0), w_img)
        y1 = min(max(int(round(b[1])), 0), h_img)
        x2 = min(max(int(round(b[2])), 0), w_img)
        y2 = min(max(int(round(b[3])), 0), h_img)
        if x2 <= x1 or y2 <= y1:
            continue
        pts = np.array(pts, dtype=np.float64, copy=True)
        if pts[0, 0] > pts[1, 0]:
            pts[[0, 1]] = pts[[1, 0]]
        if pts[3, 0] > pts[4, 0]:
            pts[[3, 4]] = pts[[4, 3]]
        faces.append(DetectedFace(bbox=BBox(x1, y1, x2 - x1, y2 - y1), score=float(s),
                                  landmarks=tuple((float(x), float(y)) for x, y in pts), detector=detector))
    faces.sort(key=lambda f: (-f.bbox.area, -f.score))
    return faces


def as_rgb_image(image: np.ndarray) -> np.ndarray:
    """A detector's input: uint8 HxWx3 RGB, C-contiguous (grey is expanded, alpha dropped)."""
    if not isinstance(image, np.ndarray):
        raise InvalidInput("image must be a numpy array")
    if image.dtype != np.uint8:
        raise InvalidInput(f"image must be uint8, not {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput(f"image must be HxWx3 RGB, not shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInput(f"image is empty (shape {image.shape})")
    return np.ascontiguousarray(image)
