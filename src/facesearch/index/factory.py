"""Choosing and (re)building a gallery's index.

Typical use by the gallery service (which owns the gallery's write lock)::

    index = load_index(path)            # IndexError_ -> rebuild:
    index = build_index(vecs, ids, d, settings.exact_max, settings.ann_target_recall)

    # a new gallery
    index = new_index(d)                # exact, empty

    # after every batch of adds (or removes) that has also been committed to the database
    index.add_with_ids(new_vecs, new_ids)
    index = maybe_upgrade(index, lambda: repo.all_embeddings(gallery_id),
                          settings.exact_max, settings.ann_target_recall)
    index.save(path)

``maybe_upgrade`` returns the same object when nothing needs doing (a cheap check), or a
freshly built index from ``all_vectors_fn()`` (the gallery's full ``(vectors, ids)`` from the
database, which must already include the new faces) when:

- an exact index has grown past ``exact_max`` -> build the ANN index;
- an ANN index has grown past ``REBUILD_GROWTH`` x the size it was built for -> rebuild so
  that ``nlist`` and ``nprobe`` fit the new size (doubling keeps total rebuild work linear);
- an ANN index has shrunk (deletes) to half of ``exact_max`` or less -> back to exact.

The rebuild reads every vector, trains, fills and tunes; at 1M 128-d faces that is of the
order of a minute on 2 cores, so callers may prefer running it in the background and
swapping the reference under the lock (re-applying adds/removes made meanwhile, or simply
calling ``maybe_upgrade`` again).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.faiss_backend import FlatIndex, IVFIndex

if TYPE_CHECKING:
    from facesearch.config import Settings
    from facesearch.index.milvus_backend import MilvusIndexes

__all__ = ["REBUILD_GROWTH", "build_index", "new_index", "needs_rebuild", "maybe_upgrade",
           "milvus_from_settings"]

REBUILD_GROWTH = 2.0  # rebuild an ANN index once it holds this many times its build size

VectorsFn = Callable[[], tuple[np.ndarray, np.ndarray]]


def new_index(d: int) -> VectorIndex:
    """An empty exact index for a new gallery."""
    return FlatIndex(d)


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    d: int,
    exact_max: int,
    target_recall: float,
    *,
    seed: int = 0,
) -> VectorIndex:
    """Exact index when ``len(ids) <= exact_max``, IVF ANN index (tuned to
    ``target_recall`` recall@1) otherwise."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != d:
        shape = x.shape if x.ndim != 2 else f"(n, {x.shape[1]})"
        raise IndexError_(f"vectors have shape {shape} but the index dimension is {d}")
    n = len(np.asarray(ids))
    if n != len(x):
        raise IndexError_(f"got {len(x)} vectors but {n} ids")
    if n <= exact_max:
        index = FlatIndex(d)
        index.add_with_ids(x, ids)
        return index
    return IVFIndex.build(x, ids, target_recall=target_recall, seed=seed)


def needs_rebuild(index: VectorIndex, exact_max: int) -> bool:
    """True when ``maybe_upgrade`` would rebuild ``index`` (see module docstring)."""
    n = index.ntotal
    if isinstance(index, IVFIndex):
        return n > REBUILD_GROWTH * index.trained_n or 2 * n <= exact_max
    return n > exact_max


def maybe_upgrade(
    index: VectorIndex,
    all_vectors_fn: VectorsFn,
    exact_max: int,
    target_recall: float,
) -> VectorIndex:
    """Return ``index`` unchanged, or a rebuilt index of the right kind for its size."""
    if not needs_rebuild(index, exact_max):
        return index
    vectors, ids = all_vectors_fn()
    return build_index(vectors, ids, index.d, exact_max, target_recall)


def milvus_from_settings(settings: Settings) -> MilvusIndexes | None:
    """The installation's Milvus connection when ``FACESEARCH_MILVUS_URI`` is set, else None
    (``FACESEARCH_INDEX=milvus`` without a URI is a configuration error)."""
    if not settings.milvus_uri:
        if settings.index == "milvus":
            raise IndexError_("FACESEARCH_INDEX=milvus needs FACESEARCH_MILVUS_URI (http://host:19530)")
        return None
    from facesearch.index.milvus_backend import MilvusConfig, MilvusIndexes

    return MilvusIndexes(MilvusConfig(
        uri=settings.milvus_uri, token=settings.milvus_token, prefix=settings.milvus_collection_prefix,
        index_type=settings.milvus_index_type, search_ef=settings.milvus_search_ef,
        nprobe=settings.milvus_nprobe))
