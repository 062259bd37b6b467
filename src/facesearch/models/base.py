"""What every model family looks like to the pipeline.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``. Chips are aligned face crops,
``(N, H, W, 3)`` ``uint8`` RGB, of the size the embedder's manifest names. Embeddings are
``float32`` rows, L2-normalised.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from facesearch.models.manifest import ModelManifest
from facesearch.types import DetectedFace


class Detector(Protocol):
    id: str

    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]: ...


class Embedder(Protocol):
    manifest: ModelManifest

    @property
    def id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, chips: np.ndarray) -> np.ndarray: ...
