"""Our own frozen dataclasses: what crosses every boundary of the package.

Boxes are ``(x, y, w, h)`` in pixels of the decoded, EXIF-rotated image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class BBox:
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def iou(self, other: "BBox") -> float:
        x1, y1 = max(self.x, other.x), max(self.y, other.y)
        x2 = min(self.x + self.w, other.x + other.w)
        y2 = min(self.y + self.h, other.y + other.h)
        inter = max(0, x2 - x1) * max(0, y2 - y1)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


Point = tuple[float, float]


@dataclass(frozen=True)
class Quality:
    """Quality of one detected face. ``reasons`` is empty when the face is acceptable."""

    score: float  # 0..1, higher is better; used to weight templates
    sharpness: float  # variance of the Laplacian on the aligned grey chip
    pose: float  # 0 = frontal; grows with yaw
    size: int  # shorter side of the box in pixels
    reasons: tuple[str, ...] = ()

    @property
    def acceptable(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class DetectedFace:
    """A face found by a detector: box, confidence and 5 landmarks (if the detector has them)."""

    bbox: BBox
    score: float
    landmarks: tuple[Point, ...] = ()
    detector: str = ""


@dataclass(frozen=True, eq=False)
class Face:
    """A face that went through the whole pipeline: detection, quality, alignment, embedding."""

    bbox: BBox
    score: float
    landmarks: tuple[Point, ...]
    quality: Quality
    embedding: np.ndarray  # float32, L2-normalised
    model_id: str


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    mode: str
    sha256: str


@dataclass(frozen=True)
class Candidate:
    subject: str | None
    score: float
    image_id: int
    face_id: int
    path: str | None
    source_uri: str | None
    legal_basis: str
    bbox: BBox
    gallery: str
    candidate_id: str | None = None  # random public id, once the search is recorded
    collector: str | None = None
    collected_at: datetime | None = None
    warrant_ref: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "candidate_id": self.candidate_id,
            "subject": self.subject,
            "score": round(float(self.score), 4),
            "image_id": self.image_id,
            "face_id": self.face_id,
            "path": self.path,
            "source_uri": self.source_uri,
            "legal_basis": self.legal_basis,
            "box": self.bbox.as_list(),
            "gallery": self.gallery,
            "collector": self.collector,
            "collected_at": self.collected_at.isoformat() if self.collected_at else None,
            "warrant_ref": self.warrant_ref,
        }


@dataclass(frozen=True)
class ProbeFaceResult:
    bbox: BBox
    quality: Quality
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Threshold:
    value: float
    meaning: str


@dataclass(frozen=True)
class SearchResult:
    search_id: int
    gallery: str
    case_number: str
    purpose: str
    threshold: Threshold
    faces: tuple[ProbeFaceResult, ...]
    model_id: str
    created_at: datetime
    model_terms: dict[str, object] = field(default_factory=dict)
    public_id: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "search_id": self.search_id,
            "search_ref": self.public_id,
            "gallery": self.gallery,
            "case_number": self.case_number,
            "purpose": self.purpose,
            "model": self.model_id,
            "threshold": round(self.threshold.value, 4),
            "threshold_meaning": self.threshold.meaning,
            "notice": "Candidates are investigative leads, not identifications; "
            "each needs confirmation by a person.",
            "model_terms": self.model_terms,
            "faces": [
                {
                    "box": f.bbox.as_list(),
                    "quality": {"score": round(f.quality.score, 3), "reasons": list(f.quality.reasons)},
                    "candidates": [c.to_json() for c in f.candidates],
                }
                for f in self.faces
            ],
        }


@dataclass(frozen=True)
class IngestItem:
    """One row to ingest: a file and its provenance."""

    path: str
    subject: str | None = None
    source_uri: str | None = None
    legal_basis: str | None = None
    collected_at: datetime | None = None
    collector: str | None = None


@dataclass
class IngestSummary:
    images: int = 0  # files looked at
    ingested: int = 0  # new images stored
    duplicates: int = 0  # already in the gallery (same content hash)
    faces: int = 0
    no_face: int = 0
    rejected_quality: int = 0  # faces not stored because of quality
    suppressed: int = 0  # images skipped: they show an erased person (suppression list)
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    error_details: list[dict[str, str]] = field(default_factory=list)
    # images per second each ingest stage sustains (decode, detect, landmarks, embed, store)
    stage_rates: dict[str, float] = field(default_factory=dict)

    def add_reason(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def to_json(self) -> dict[str, object]:
        return {
            "images": self.images,
            "ingested": self.ingested,
            "duplicates": self.duplicates,
            "faces": self.faces,
            "no_face": self.no_face,
            "rejected_quality": self.rejected_quality,
            "suppressed": self.suppressed,
            "errors": self.errors,
            "reasons": dict(sorted(self.reasons.items())),
            "error_details": self.error_details,
        }
