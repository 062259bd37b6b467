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
- an ANN index has shrunk (deletes) to half of ``exact_max`` or less -> back to exact;
- an fp16 IVF index has grown past ``sq_max`` (or the memory budget) -> IVF-PQ.

Selection rule (``choose_kind``), for ``n`` faces of dimension ``d``:

- ``flat`` (exact) when ``n <= exact_max`` (FACESEARCH_EXACT_MAX);
- ``ivf`` (IVF, fp16 codes, 2d+8 bytes per face) when ``n <= sq_max`` (FACESEARCH_SQ_MAX)
  and ``n * (2d+8)`` fits ``ram_budget`` (FACESEARCH_INDEX_RAM_GIB);
- ``ivfpq`` (IVF-PQ with 4-bit fast-scan codes, ``pq_bytes_per_face(d)`` bytes per face
  resident, re-ranked with float16 vectors on disk) when its lists fit ``ram_budget``;
- ``ivfpq-ondisk`` (8-bit PQ codes, the inverted lists memory-mapped from disk) otherwise:
  faiss keeps fast-scan codes only in its in-memory block lists.

``ivfpq`` needs a ``storage`` prefix for its on-disk files (the manager gives one).

The rebuild reads every vector, trains, fills and tunes; at 1M 128-d faces that is of the
order of a minute on 2 cores, so callers may prefer running it in the background and
swapping the reference under the lock (re-applying adds/removes made meanwhile, or simply
calling ``maybe_upgrade`` again).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.compressed import PQIndex, Progress, pq_bytes_per_face
from facesearch.index.faiss_backend import FlatIndex, IVFIndex

if TYPE_CHECKING:
    from facesearch.config import Settings
    from facesearch.index.milvus_backend import MilvusIndexes

__all__ = ["REBUILD_GROWTH", "build_index", "new_index", "needs_rebuild", "maybe_upgrade",
           "milvus_from_settings", "choose_kind", "SQ_MAX", "RAM_BUDGET"]

REBUILD_GROWTH = 2.0  # rebuild an ANN index once it holds this many times its build size
SQ_MAX = 2_000_000  # default: fp16 IVF up to this many faces, IVF-PQ above
RAM_BUDGET = 4 * 2**30  # default: resident index bytes beyond which lists go to disk

VectorsFn = Callable[[], tuple[np.ndarray, np.ndarray]]


def new_index(d: int) -> VectorIndex:
    """An empty exact index for a new gallery."""
    return FlatIndex(d)


def choose_kind(n: int, d: int, exact_max: int, sq_max: int = SQ_MAX,
                ram_budget: int = RAM_BUDGET) -> str:
    """``flat``, ``ivf``, ``ivfpq`` or ``ivfpq-ondisk`` for ``n`` faces (module docstring)."""
    if n <= exact_max:
        return "flat"
    if n <= sq_max and n * (2 * d + 8) <= ram_budget:
        return "ivf"
    if n * pq_bytes_per_face(d) <= ram_budget:
        return "ivfpq"
    return "ivfpq-ondisk"


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    d: int,
    exact_max: int,
    target_recall: float,
    *,
    seed: int = 0,
    sq_max: int = SQ_MAX,
    ram_budget: int = RAM_BUDGET,
    storage: Path | None = None,
    progress: Progress | None = None,
    rerank_store: str = "float16",
) -> VectorIndex:
    """The index ``choose_kind`` picks for ``len(ids)`` faces, built over ``vectors`` (an
    array or ``np.memmap``) and tuned to ``target_recall`` recall@1; an IVF-PQ index keeps
    its re-ranking vectors as ``rerank_store`` (``float16`` or ``int8``)."""
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != d:
        shape = x.shape if x.ndim != 2 else f"(n, {x.shape[1]})"
        raise IndexError_(f"vectors have shape {shape} but the index dimension is {d}")
    n = len(np.asarray(ids))
    if n != len(x):
        raise IndexError_(f"got {len(x)} vectors but {n} ids")
    kind = choose_kind(n, d, exact_max, sq_max, ram_budget)
    if kind == "flat":
        index = FlatIndex(d)
        index.add_with_ids(x, ids)
        return index
    if kind == "ivf":
        return IVFIndex.build(x, ids, target_recall=target_recall, seed=seed)
    if storage is None:
        raise IndexError_(f"a compressed index for {n} faces needs a storage folder for its vectors")
    return PQIndex.build(x, ids, storage=storage, target_recall=target_recall,
                         on_disk=kind == "ivfpq-ondisk", rerank=True, store_dtype=rerank_store,
                         seed=seed, progress=progress)


def needs_rebuild(index: VectorIndex, exact_max: int, sq_max: int = SQ_MAX,
                  ram_budget: int = RAM_BUDGET) -> bool:
    """True when ``maybe_upgrade`` would rebuild ``index`` (see module docstring)."""
    n = index.ntotal
    if isinstance(index, (IVFIndex, PQIndex)):
        if n > REBUILD_GROWTH * index.trained_n or 2 * n <= exact_max:
            return True
        return isinstance(index, IVFIndex) and choose_kind(n, index.d, exact_max, sq_max,
                                                           ram_budget) != "ivf"
    return n > exact_max


def maybe_upgrade(
    index: VectorIndex,
    all_vectors_fn: VectorsFn,
    exact_max: int,
    target_recall: float,
    *,
    sq_max: int = SQ_MAX,
    ram_budget: int = RAM_BUDGET,
    storage: Path | None = None,
    rerank_store: str = "float16",
) -> VectorIndex:
    """Return ``index`` unchanged, or a rebuilt index of the right kind for its size."""
    if not needs_rebuild(index, exact_max, sq_max, ram_budget):
        return index
    vectors, ids = all_vectors_fn()
    return build_index(vectors, ids, index.d, exact_max, target_recall, sq_max=sq_max,
                       ram_budget=ram_budget, storage=storage, rerank_store=rerank_store)


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
