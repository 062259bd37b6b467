"""The ``VectorIndex`` protocol, in faiss's vocabulary.

Vectors are float32 rows, L2-normalised by the caller; scores are inner products
(cosine similarity), higher is better. ``search`` returns ``(D, I)`` of shape ``(nq, k)``
with ``-1`` in ``I`` (and ``-inf`` in ``D``) for empty slots, like faiss.

What every backend promises (``tests/contract/test_vector_index.py`` runs it against faiss
exact, faiss IVF, faiss PQ and Milvus):

- ids are the caller's int64 face ids (>= 0); results are best first, ids distinct, empty slots
  only at the end;
- ``remove_ids`` returns how many of the ids it held, and a removed id is never returned by any
  later ``search`` (for Milvus: from any connection, once the call has returned);
- ``save`` makes the index survive a restart (faiss: a checksummed file at ``path``; Milvus:
  nothing to do, every write is persisted when its call returns, so ``path`` is unused);
- an index is scoped to one gallery: it never returns another gallery's (or agency's) faces.
  faiss keeps one index per gallery; Milvus shares one collection per model and filters every
  request on gallery and agency inside the engine (``index/milvus_backend.py``).

Backends: ``faiss_backend.FlatIndex`` / ``IVFIndex``, ``compressed.PQIndex`` and
``milvus_backend.MilvusIndex``; ``router.IndexRouter`` picks the one of each gallery.
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
