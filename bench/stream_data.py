"""Synthetic face-like embeddings generated chunk by chunk from seeds, never stored.

For galleries too large for a file of their vectors on this machine (512-d at 100M faces is
102 GB as float16): every chunk of ``chunk`` faces is re-created on demand from
``(seed, chunk number)``, so a run needs no input file, and the exact ground truth is
accumulated in the same pass that adds the chunk to the indexes.

The shape is that of ``bench/index.py``'s file-based data (identity centres around a common
direction and one of 64 group directions, ~5 noisy faces per identity, unit rows), with one
difference: a chunk's faces are drawn from that chunk's own identities (``chunk /
faces_per_id`` of them), so no table of every identity's centre is needed (20M centres at
512-d would be another 20 GB). Queries are fresh samples of enrolled identities, spread over
the chunks like the gallery. Rows of this generator are labelled ``data=stream``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

_NOISE = 0.5  # per-face noise, divided by sqrt(d), as in index.py's make_data


def _unit(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


@dataclass(frozen=True)
class StreamData:
    """``n`` faces of dimension ``d`` in chunks of ``chunk`` (the last one shorter)."""

    n: int
    d: int
    seed: int = 0
    chunk: int = 500_000
    faces_per_id: int = 5

    @property
    def chunks(self) -> int:
        return -(-self.n // self.chunk)

    def _base(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0])
        mu = rng.standard_normal(self.d).astype(np.float32)
        mu /= np.linalg.norm(mu)
        groups = _unit(rng.standard_normal((64, self.d), dtype=np.float32))
        return mu, groups

    def _centres(self, c: int, base: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mu, groups = base
        k = max(1, self._size(c) // self.faces_per_id)
        rng = np.random.default_rng([self.seed, 1, c])
        g = groups[rng.integers(0, len(groups), k)]
        return _unit(0.8 * mu + 0.6 * g + rng.standard_normal((k, self.d), dtype=np.float32)
                     / np.sqrt(self.d))

    def _size(self, c: int) -> int:
        return min(self.chunk, self.n - c * self.chunk)

    def _identities(self, c: int, k: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, c]).integers(0, k, self._size(c))

    def ids(self) -> np.ndarray:
        """Database-like ids (a permutation, not insertion order), one per face."""
        return np.random.default_rng([self.seed, 5]).permutation(self.n).astype(np.int64) * 3 + 17

    def vectors(self, c: int, base: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Chunk ``c`` (rows ``c * chunk`` onwards) as float32 unit rows."""
        centres = self._centres(c, base or self._base())
        ident = self._identities(c, len(centres))
        rng = np.random.default_rng([self.seed, 3, c])
        x = centres[ident]
        x += (_NOISE / np.sqrt(self.d)) * rng.standard_normal(x.shape, dtype=np.float32)
        return _unit(x)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) of every chunk in order."""
        base = self._base()
        for c in range(self.chunks):
            yield c * self.chunk, self.vectors(c, base)

    def queries(self, nq: int) -> np.ndarray:
        """``nq`` fresh noisy samples of enrolled identities (each chunk's share of them from
        the identities its faces were drawn from)."""
        base = self._base()
        out = []
        for c in range(self.chunks):
            take = round(nq * (c * self.chunk + self._size(c)) / self.n) - round(nq * c * self.chunk / self.n)
            if take <= 0:
                continue
            centres = self._centres(c, base)
            ident = self._identities(c, len(centres))
            rng = np.random.default_rng([self.seed, 4, c])
            pick = ident[rng.integers(0, len(ident), take)]
            out.append(_unit(centres[pick] + (_NOISE / np.sqrt(self.d))
                             * rng.standard_normal((take, self.d), dtype=np.float32)))
        return np.concatenate(out)[:nq]


class TopK:
    """Exact top-k rows (inner product) of each query, merged chunk by chunk."""

    def __init__(self, q: np.ndarray, k: int) -> None:
        self.q = np.ascontiguousarray(q, dtype=np.float32)
        self.k = k
        self.score = np.full((len(q), k), -np.inf, dtype=np.float32)
        self.row = np.full((len(q), k), -1, dtype=np.int64)

    def update(self, x: np.ndarray, first_row: int) -> None:
        D, I = faiss.knn(self.q, x, min(self.k, len(x)), faiss.METRIC_INNER_PRODUCT)
        allD = np.concatenate([self.score, D], axis=1)
        allR = np.concatenate([self.row, I + first_row], axis=1)
        top = np.argsort(-allD, axis=1, kind="stable")[:, :self.k]
        self.score = np.take_along_axis(allD, top, axis=1)
        self.row = np.take_along_axis(allR, top, axis=1)
