"""The face pipeline: detect -> landmarks -> align -> quality -> embed, in batches.

``FacePipeline`` is built once (from settings) and holds the model objects, which load their
weights lazily on first use.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.models.base import Detector, Embedder
from facesearch.models.dlib_models import DlibLandmarks
from facesearch.pipeline.align import DLIB5, FIVE, OPENCV, align
from facesearch.pipeline.quality import QualityPolicy, assess
from facesearch.types import BBox, DetectedFace, Face


@dataclass(frozen=True)
class PipelineOptions:
    flip: bool = True
    quality: QualityPolicy = QualityPolicy()
    landmarks: str = "auto"  # "auto": the detector's own 5 points for ArcFace alignment; "dlib": always dlib's
    align_backend: str = OPENCV  # who computes dlib's chip: "opencv" (default) or "dlib" (reference)


class FacePipeline:
    """Built once with its models (see ``pipeline.build``); the models load lazily."""

    def __init__(self, detector: Detector, landmarks: DlibLandmarks, embedder: Embedder,
                 options: PipelineOptions, pack: str = "", device: str = "cpu") -> None:
        self.detector = detector
        self.device = device  # where detection and embedding run: "cpu" or "cuda"
        self.landmarks = landmarks
        self.embedder = embedder
        self.options = options
        self.pack = pack

    @property
    def model_id(self) -> str:
        return self.embedder.id

    # -- stages -----------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return self.detector.detect(image)

    def _landmarks_for(self, image: np.ndarray, det: DetectedFace) -> tuple[tuple[tuple[float, float], ...], str]:
        """The face's 5 landmarks and their scheme (see ``align``)."""
        manifest = self.embedder.manifest
        if (self.options.landmarks == "auto" and (manifest.alignment or "").startswith("arcface")
                and len(det.landmarks) == 5):
            return det.landmarks, FIVE  # the detector's own eye/nose/mouth points
        return self.landmarks.predict(image, det.bbox), DLIB5

    def chips(self, image: np.ndarray, dets: Sequence[DetectedFace]) -> tuple[list[tuple], np.ndarray]:
        """Landmarks and aligned chips for each detection: ([(det, landmarks)], chips)."""
        m = self.embedder.manifest
        size = m.input_size or (150, 150)
        alignment = m.alignment or "dlib-chip-150-0.25"
        metas, chips = [], []
        for d in dets:
            lm, scheme = self._landmarks_for(image, d)
            metas.append((d, lm, scheme))
            chips.append(align(image, d.bbox, lm, alignment, size, scheme, self.options.align_backend))
        arr = np.stack(chips) if chips else np.zeros((0, size[1], size[0], 3), dtype=np.uint8)
        return metas, arr

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        if not self.options.flip:
            return self.embedder.embed(chips)
        both = np.concatenate([chips, chips[:, :, ::-1, :]])
        e = self.embedder.embed(np.ascontiguousarray(both))
        n = len(chips)
        x = e[:n] + e[n:]
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        return x.astype(np.float32)

    # -- whole pipeline -----------------------------------------------------------------------
    def analyze(self, image: np.ndarray, dets: Sequence[DetectedFace] | None = None) -> list[Face]:
        return self.analyze_batch([image], [dets] if dets is not None else None)[0]

    def analyze_batch(
        self, images: Sequence[np.ndarray], dets: Sequence[Sequence[DetectedFace]] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[Face]]:
        """Every face of every image. ``timings`` (if given) accumulates seconds per stage."""
        t = timings if timings is not None else {}
        t0 = time.perf_counter()
        if dets is None:
            dets = self.detector.detect_batch(images)
        t1 = time.perf_counter()
        prepared = self.prepare(images, dets)
        t2 = time.perf_counter()
        t["detect"] = t.get("detect", 0.0) + (t1 - t0)
        t["landmarks"] = t.get("landmarks", 0.0) + (t2 - t1)
        emb = self.embed_prepared(prepared)
        t["embed"] = t.get("embed", 0.0) + (time.perf_counter() - t2)
        return self.faces(prepared, emb)

    # The three steps of analyze_batch after detection, separable so that the ingest stages
    # (pipeline/stages.py) can run them in different threads and batch chips across images.
    def prepare(self, images: Sequence[np.ndarray],
                dets: Sequence[Sequence[DetectedFace]]) -> list[tuple[list[tuple], np.ndarray]]:
        """Per image: its landmarks and aligned chips, ``([(det, landmarks, scheme)], chips)``."""
        return [self.chips(image, ds) for image, ds in zip(images, dets)]

    def embed_prepared(self, prepared: Sequence[tuple[list[tuple], np.ndarray]]) -> np.ndarray:
        """One embedding per chip of every image, in one batched call."""
        parts = [c for _, c in prepared if len(c)]
        if not parts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return self.embed_chips(np.concatenate(parts))

    def faces(self, prepared: Sequence[tuple[list[tuple], np.ndarray]], emb: np.ndarray) -> list[list[Face]]:
        """Quality-assessed faces of each image from its prepared chips and their embeddings."""
        out: list[list[Face]] = []
        i = 0
        for metas, cs in prepared:
            faces = []
            for j, (d, lm, scheme) in enumerate(metas):
                q = assess(d.bbox, lm, cs[j], self.options.quality, scheme)
                faces.append(
                    Face(bbox=d.bbox, score=d.score, landmarks=lm, quality=q, embedding=emb[i],
                         model_id=self.model_id)
                )
                i += 1
            out.append(faces)
        return out

    def centered_detection(self, image: np.ndarray) -> DetectedFace:
        """The central region of an LFW-style crop, for evaluation's ``--assume-centered``."""
        h, w = image.shape[:2]
        side = int(min(h, w) * 0.5)
        return DetectedFace(
            bbox=BBox((w - side) // 2, (h - side) // 2 + side // 12, side, side), score=0.0,
            detector="centered",
        )
