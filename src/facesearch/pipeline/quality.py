"""Quality assessment of one face: size, sharpness and pose, with reasons."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.pipeline.align import DLIB5, eye_centres
from facesearch.types import BBox, Point, Quality

TOO_SMALL = "too_small"
BLURRED = "blurred"
STRONG_POSE = "strong_pose"


@dataclass(frozen=True)
class QualityPolicy:
    min_face_px: int = 40
    min_sharpness: float = 15.0
    max_pose: float = 0.35


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip's central region (higher = sharper)."""
    import cv2

    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip
    h, w = grey.shape
    centre = grey[h // 5: h - h // 5, w // 5: w - w // 5]
    return float(cv2.Laplacian(centre, cv2.CV_64F).var())


def pose(landmarks: tuple[Point, ...], scheme: str = DLIB5) -> float:
    """Horizontal offset of the nose from the midpoint of the eyes, in interocular distances.

    About 0 for a frontal face; grows towards 0.5 and beyond as the head turns to profile.
    """
    if len(landmarks) < 3:
        return 0.0
    left, right, nose = eye_centres(landmarks, scheme)
    axis = right - left
    iod = float(np.linalg.norm(axis))
    if iod < 1e-6:
        return 1.0
    mid = (left + right) / 2
    return abs(float(np.dot(nose - mid, axis / iod))) / iod


def assess(bbox: BBox, landmarks: tuple[Point, ...], chip: np.ndarray, policy: QualityPolicy,
           scheme: str = DLIB5) -> Quality:
    size = min(bbox.w, bbox.h)
    sharp = sharpness(chip)
    yaw = pose(landmarks, scheme)
    reasons = []
    if size < policy.min_face_px:
        reasons.append(TOO_SMALL)
    if sharp < policy.min_sharpness:
        reasons.append(BLURRED)
    if yaw > policy.max_pose:
        reasons.append(STRONG_POSE)
    # A smooth score in 0..1 used to weight templates: each factor saturates at "good".
    f_size = min(1.0, size / (2.5 * policy.min_face_px))
    f_sharp = min(1.0, sharp / (4 * policy.min_sharpness))
    f_pose = max(0.0, 1.0 - yaw / (2 * policy.max_pose))
    score = float(f_size * f_sharp * f_pose) ** (1 / 3)
    return Quality(score=score, sharpness=sharp, pose=yaw, size=size, reasons=tuple(reasons))
