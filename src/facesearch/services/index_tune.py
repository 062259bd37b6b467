"""Re-tuning galleries' compressed indexes for another target recall (``facesearch index tune``).

An IVF-PQ index chooses ``nprobe`` and its re-rank depth when it is built, for
``FACESEARCH_ANN_TARGET_RECALL``. A 100M-face build takes hours; changing the target should not.
``tune_indexes`` repeats the build's measurement (leave-one-out recall@1 against brute force
over the index's own float16 vectors, ``PQIndex.retune``) for a new target, keeps the fastest
setting that reaches it and saves it with the index. Exact and fp16 IVF indexes are reported as
not tuned (nothing to tune, or tuned at build time), Milvus galleries likewise (their search
settings are ``FACESEARCH_MILVUS_*``).

A running server picks the saved settings up on its next use of the gallery's index
(``IndexManager`` notices the file changed and adopts it when it holds the same faces); faces
the server ingested or erased while the tuning ran make it keep its own copy (tune again).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from facesearch.errors import IndexError_
from facesearch.index.manager import IndexKey

__all__ = ["TuneReport", "tune_indexes"]


@dataclass(frozen=True)
class TuneReport:
    gallery: str
    model: str
    backend: str  # faiss | milvus
    kind: str  # the index after tuning
    faces: int
    target_recall: float
    tuned: bool
    reason: str  # why not, when not tuned
    nprobe: int | None = None
    rerank_depth: int | None = None
    recall_at_1: float | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tune_indexes(ctx, gallery: str | None = None, *, target_recall: float | None = None,  # noqa: ANN001
                 queries: int = 1000) -> list[TuneReport]:
    """Re-tune one gallery's (or every gallery's) compressed index; one report per gallery.
    ``target_recall`` defaults to the installation's ``ann_target_recall``."""
    target = float(ctx.settings.ann_target_recall if target_recall is None else target_recall)
    if not 0.0 < target <= 1.0:
        raise IndexError_(f"target recall must be in (0, 1], got {target}")
    if queries < 10:
        raise IndexError_(f"at least 10 queries are needed to measure recall, got {queries}")
    router = ctx.indexes
    reports = []
    with ctx.repo() as repo:
        galleries = [repo.get_gallery(gallery)] if gallery else repo.list_galleries()
        for g in galleries:
            key = IndexKey(g.id, g.model_id)
            faces, _ = repo.face_watermark(g.id, g.model_id)
            base = dict(gallery=g.name, model=g.model_id, faces=faces, target_recall=target)
            if router.backend_of(key) == "milvus":
                reports.append(TuneReport(**base, backend="milvus", kind="milvus", tuned=False,
                                          reason="on Milvus: set FACESEARCH_MILVUS_SEARCH_EF or _NPROBE"))
                continue
            t = time.perf_counter()
            idx, result = router.faiss.tune(repo, key, ctx.dim_of(g.model_id), target, queries)
            if result is None:
                why = ("exact search: nothing to tune" if idx.kind == "flat" or not faces else
                       "fp16 IVF: tuned when built (FACESEARCH_ANN_TARGET_RECALL)")
                reports.append(TuneReport(**base, backend="faiss", kind=idx.kind, tuned=False, reason=why))
                continue
            nprobe, depth, recall = result
            reports.append(TuneReport(**base, backend="faiss", kind=idx.kind, tuned=True, reason="",
                                      nprobe=nprobe, rerank_depth=depth, recall_at_1=recall,
                                      seconds=round(time.perf_counter() - t, 2)))
    return reports
