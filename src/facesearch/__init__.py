"""facesearch: self-hosted face search over lawfully held galleries.

The small facade::

    from facesearch import FaceSearch, detect_faces, embed_faces

    faces = detect_faces("photo.jpg")            # [DetectedFace(bbox, score, ...)]
    embs = embed_faces("photo.jpg")              # [Face(bbox, quality, embedding, ...)]
    fs = FaceSearch(home="~/.facesearch")
    fs.ingest("photos/", gallery="bookings", legal_basis="State booking records, statute 12-3")
    result = fs.search("probe.jpg", gallery="bookings", case_number="2026-000123",
                       purpose="robbery investigation")

Nothing heavy is imported or loaded at import time: the facade's names are resolved on first
use and models load when first needed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "FaceSearch", "detect_faces", "embed_faces",
    "BBox", "Candidate", "DetectedFace", "Face", "IngestSummary", "Quality", "SearchResult",
]

_FROM_API = {"FaceSearch", "detect_faces", "embed_faces"}

if TYPE_CHECKING:  # pragma: no cover
    from facesearch.facade import FaceSearch, detect_faces, embed_faces
    from facesearch.types import (BBox, Candidate, DetectedFace, Face, IngestSummary, Quality,
                                  SearchResult)


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        from facesearch import facade as api

        return getattr(api, name)
    if name in __all__:
        from facesearch import types

        return getattr(types, name)
    raise AttributeError(f"module 'facesearch' has no attribute {name!r}")
