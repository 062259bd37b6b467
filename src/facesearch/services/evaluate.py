"""Evaluation wiring: the protocols in ``facesearch.eval`` fed by the real face pipeline."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from facesearch.config import Settings
from facesearch.errors import FaceSearchError
from facesearch.pipeline.decode import read_image
from facesearch.pipeline.pipeline import FacePipeline


def path_embedder(pipeline: FacePipeline, settings: Settings, assume_centered: bool = False
                  ) -> Callable[[Path], np.ndarray | None]:
    """One embedding per image: its largest face; with ``assume_centered``, the central region
    when no face is found (LFW-style crops only). Unreadable images count as no face."""

    def embed(path: Path) -> np.ndarray | None:
        try:
            img = read_image(path, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes)
        except FaceSearchError:
            return None
        faces = pipeline.analyze(img.rgb)
        if faces:
            return faces[0].embedding
        if assume_centered:
            faces = pipeline.analyze(img.rgb, [pipeline.centered_detection(img.rgb)])
            return faces[0].embedding if faces else None
        return None

    return embed
