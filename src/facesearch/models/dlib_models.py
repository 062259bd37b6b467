"""dlib's models: HOG frontal detector, 5-point landmarks and the ResNet-128 embedder.

Each class loads its weights lazily on first use, from files located and sha256-checked
through its manifest.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from facesearch.models.manifest import ModelManifest
from facesearch.types import BBox, DetectedFace, Point


def _dlib():  # imported lazily: importing facesearch must not load native libraries
    import dlib

    return dlib


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector.

    Large photos are downscaled so that their long side is at most ``max_side`` before
    detection (boxes are mapped back to full resolution); small ones are upsampled
    ``upsample`` times so that faces down to about 40 px are found.
    """

    id = "dlib-hog"

    def __init__(self, upsample: int = 1, max_side: int = 1600, threshold: float = 0.0) -> None:
        self.upsample = upsample
        self.max_side = max_side
        self.threshold = threshold
        self._detector = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._detector is None:
                self._detector = _dlib().get_frontal_face_detector()
            return self._detector

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        import cv2

        det = self._get()
        h, w = image.shape[:2]
        scale = 1.0
        work = image
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            work = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        work = np.ascontiguousarray(work)
        rects, scores, _ = det.run(work, self.upsample, self.threshold)
        if len(rects) == 0 and max(work.shape[:2]) < 400:
            # A small photo whose face was not found may hold a face too small for the
            # detector's 80 px window at this upsampling: one more pass.
            rects, scores, _ = det.run(work, self.upsample + 1, self.threshold)
        out: list[DetectedFace] = []
        for r, s in zip(rects, scores):
            x0, y0 = max(0, r.left()), max(0, r.top())
            x1, y1 = min(work.shape[1], r.right() + 1), min(work.shape[0], r.bottom() + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            box = BBox(
                round(x0 / scale), round(y0 / scale), round((x1 - x0) / scale), round((y1 - y0) / scale)
            )
            out.append(DetectedFace(bbox=box, score=float(s), detector=self.id))
        out.sort(key=lambda f: f.bbox.area, reverse=True)
        return out

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        return [self.detect(im) for im in images]


class DlibLandmarks:
    """dlib's 5-point shape predictor: outer and inner corner of each eye, base of the nose."""

    id = "dlib-5pt"

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._predictor = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._predictor is None:
                paths = self.manifest.verify()
                self._predictor = _dlib().shape_predictor(str(next(iter(paths.values()))))
            return self._predictor

    def predict(self, image: np.ndarray, bbox: BBox) -> tuple[Point, ...]:
        dlib = _dlib()
        rect = dlib.rectangle(bbox.x, bbox.y, bbox.x + bbox.w - 1, bbox.y + bbox.h - 1)
        shape = self._get()(image, rect)
        return tuple((float(shape.part(i).x), float(shape.part(i).y)) for i in range(shape.num_parts))


class DlibEmbedder:
    """dlib's ResNet-29 embedder on 150x150 chips; 128-d, L2-normalised by us."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._net = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def dim(self) -> int:
        return int(self.manifest.embedding_dim or 128)

    def _get(self):
        with self._lock:
            if self._net is None:
                paths = self.manifest.verify()
                self._net = _dlib().face_recognition_model_v1(str(next(iter(paths.values()))))
            return self._net

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        net = self._get()
        descs = net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        x = np.asarray([np.asarray(d) for d in descs], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        return x
