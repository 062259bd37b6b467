"""The ``VectorIndex`` protocol, in faiss's vocabulary.

Vectors are float32 rows, L2-normalised by the caller; scores are inner products
(cosine similarity), higher is better. ``search`` returns ``(D, I)`` of shape ``(nq, k)``
with ``-1`` in ``I`` (and ``-inf`` in ``D``) for empty slots, like faiss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorIndex(Protocol):
    @property
    def d(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def kind(self) -> str:
        """Short description of the backend and its parameters, e.g. ``flat`` or ``ivf1024,sq8``."""
        ...

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None: ...

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def remove_ids(self, ids: np.ndarray) -> int: ...

    def save(self, path: Path) -> None: ...
