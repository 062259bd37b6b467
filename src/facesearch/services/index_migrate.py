"""Moving a gallery's index from the embedded faiss index to Milvus (``facesearch index migrate``).

Steps, for each gallery (its current model):

1. **Copy** the stored embeddings (the database is the source of truth, and holds the exact
   vectors the faiss index was built from, where a compressed faiss index keeps only
   approximations) into the model's Milvus collection, in id order, in batches. After each
   batch the highest copied face id is written to a progress file
   (``<index dir>/gallery-<id>-<model>.migrate.json``, atomically). A killed migration run again
   continues after that id; the batch that was in flight is copied again, and re-adding an id
   replaces its row, so nothing is duplicated.
2. **Catch up**: faces ingested or erased while copying are added or deleted (the Milvus rows are
   made equal to the database's faces).
3. **Verify**: the Milvus count must equal the database's, and a seeded sample of the gallery's
   faces, searched in both the faiss index and Milvus, must give the same top candidate (or a
   tie in score); the top-10 overlap is reported.
4. **Switch**: only then the placement record says ``milvus`` (``index/router.py``), and from the
   next search on the gallery is served by Milvus. The faiss files stay (``--to faiss`` moves the
   gallery back at once) until the operator removes them.

A migration that fails verification switches nothing and says why; its progress stays, so a
rerun copies only what is missing and verifies again.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.manager import IndexKey
from facesearch.index.router import Placement, read_placement, reconcile, write_placement

log = logging.getLogger(__name__)

__all__ = ["MigrationReport", "migrate_index", "progress_path"]

OnBatch = Callable[[int, int], None]  # (faces copied so far, faces in the gallery)


@dataclass(frozen=True)
class MigrationReport:
    gallery: str
    model: str
    to: str
    faces: int  # in the database
    copied: int  # copied by this run
    resumed_after_id: int  # 0: a fresh start
    caught_up_added: int
    caught_up_removed: int
    target_count: int  # rows in the target after the copy
    sample: int
    sample_top1_agree: int
    sample_top10_overlap: float
    switched: bool
    seconds: float
    collection: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def progress_path(index_dir: Path, key: IndexKey) -> Path:
    return index_dir / f"{key.stem}.migrate.json"


def _read_progress(path: Path, to: str) -> int:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):
        log.warning("migration progress %s unreadable; starting the copy again", path)
        return 0
    return int(d.get("last_id", 0)) if d.get("to") == to else 0


def _write_progress(path: Path, to: str, last_id: int, copied: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({"to": to, "last_id": int(last_id), "copied": int(copied),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _compare(faiss_index, milvus_index, queries: np.ndarray, k: int = 10) -> tuple[int, float]:  # noqa: ANN001
    """(queries whose top candidate agrees or ties, mean top-k overlap)."""
    fd, fi = faiss_index.search(queries, k)
    md, mi = milvus_index.search(queries, k)
    agree = int(np.sum((fi[:, 0] == mi[:, 0]) | (np.abs(fd[:, 0] - md[:, 0]) <= 1e-4)))
    overlap = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((a >= 0).sum()))
               for a, b in zip(fi, mi)]
    return agree, float(np.mean(overlap)) if overlap else 1.0


def migrate_index(ctx, gallery: str | None = None, *, to: str = "milvus", sample: int = 50,  # noqa: ANN001
                  batch: int = 5_000, on_batch: OnBatch | None = None, seed: int = 0) -> list[MigrationReport]:
    """Migrate one gallery (or every gallery) to ``to``; returns one report per gallery.

    ``ctx`` is the ``AppContext``; its ``indexes`` router must have Milvus configured.
    """
    if to not in ("milvus", "faiss"):
        raise IndexError_(f"unknown index backend {to!r}; expected milvus or faiss")
    router = ctx.indexes
    if router.milvus is None:
        raise IndexError_("index migrate needs FACESEARCH_MILVUS_URI (the Milvus server to use)")
    with ctx.repo() as repo:
        galleries = [repo.get_gallery(gallery)] if gallery else repo.list_galleries()
    reports = []
    for g in galleries:
        key = IndexKey(g.id, g.model_id)
        if to == "milvus":
            reports.append(_to_milvus(ctx, g, key, sample, batch, on_batch, seed))
        else:
            reports.append(_to_faiss(ctx, g, key, sample, seed))
    return reports


def _sample_queries(repo, key: IndexKey, n: int, seed: int) -> np.ndarray:  # noqa: ANN001
    count, _ = repo.face_watermark(key.gallery_id, key.model_id)
    if count == 0 or n <= 0:
        return np.zeros((0, 0), dtype=np.float32)
    rng = np.random.default_rng(seed)
    want = set(rng.choice(count, min(n, count), replace=False).tolist())
    rows, seen = [], 0
    for _, vecs in repo.iter_embeddings(key.gallery_id, key.model_id):
        for j in range(len(vecs)):
            if seen + j in want:
                rows.append(vecs[j])
        seen += len(vecs)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _to_milvus(ctx, g, key: IndexKey, sample: int, batch: int, on_batch: OnBatch | None,  # noqa: ANN001
               seed: int) -> MigrationReport:
    t0 = time.perf_counter()
    router = ctx.indexes
    dim = ctx.dim_of(g.model_id)
    prog = progress_path(router.dir, key)
    current = read_placement(router.dir, key)
    with ctx.repo() as repo:
        view = router.milvus_view(repo, key, dim)
        count, _ = repo.face_watermark(g.id, g.model_id)
    if current is not None and current.backend == "milvus":
        log.info("gallery %s is already on Milvus", g.name)
    resumed = _read_progress(prog, "milvus")
    last, copied = resumed, 0
    # 1. copy in id order, recording progress after each batch
    with ctx.repo() as repo:
        for ids, vecs in repo.iter_embeddings(g.id, g.model_id, batch=batch, after_id=resumed):
            view.add_with_ids(vecs, ids)
            copied += len(ids)
            last = int(ids[-1])
            _write_progress(prog, "milvus", last, copied)
            if on_batch:
                on_batch(copied, count)
    # 2. catch up with ingests and erasures made meanwhile
    with ctx.repo() as repo:
        added, removed = reconcile(repo, key, view, force=True)
        count, _ = repo.face_watermark(g.id, g.model_id)
        queries = _sample_queries(repo, key, sample, seed)
        # 3. verify (the faiss side under its read lock: a server may be erasing meanwhile)
        target_count = view.ntotal
        agree, overlap = (0, 1.0)
        if len(queries):
            with router.faiss.reading(repo, key, dim) as faiss_index:
                agree, overlap = _compare(faiss_index, view, queries)
    ok = target_count == count and agree == len(queries)
    if ok:
        write_placement(router.dir, key, Placement("milvus", verified={
            "faces": count, "sample": len(queries), "top1_agree": agree, "top10_overlap": round(overlap, 4),
            "collection": view.collection}))
        prog.unlink(missing_ok=True)
    report = MigrationReport(g.name, g.model_id, "milvus", count, copied, resumed, added, removed, target_count,
                             len(queries), agree, round(overlap, 4), ok, round(time.perf_counter() - t0, 2),
                             view.collection)
    if not ok:
        raise IndexError_(
            f"migration of gallery {g.name!r} not verified, the gallery stays on faiss: Milvus holds "
            f"{target_count} faces, the database {count}; top candidate agrees on {agree} of "
            f"{len(queries)} sample searches. Run it again to retry.")
    log.info("gallery %s moved to Milvus (%s): %d faces, %d sample searches agree",
             g.name, view.collection, count, agree)
    return report


def _to_faiss(ctx, g, key: IndexKey, sample: int, seed: int) -> MigrationReport:  # noqa: ANN001
    """Back to the embedded index: rebuilt from the database if out of step, verified the same
    way, then the placement switched and the gallery's Milvus rows deleted."""
    t0 = time.perf_counter()
    router = ctx.indexes
    dim = ctx.dim_of(g.model_id)
    with ctx.repo() as repo:
        view = router.milvus_view(repo, key, dim)
        count, _ = repo.face_watermark(g.id, g.model_id)
        queries = _sample_queries(repo, key, sample, seed)
        with router.faiss.reading(repo, key, dim) as faiss_index:
            agree, overlap = (_compare(view, faiss_index, queries) if len(queries) and view.ntotal
                              else (len(queries), 1.0))
            faiss_total = faiss_index.ntotal
    ok = faiss_total == count
    if not ok:
        raise IndexError_(f"the faiss index of gallery {g.name!r} holds {faiss_total} faces, "
                          f"the database {count}; not switched")
    write_placement(router.dir, key, Placement("faiss", verified={"faces": count}))
    view.clear()
    return MigrationReport(g.name, g.model_id, "faiss", count, 0, 0, 0, 0, faiss_total, len(queries),
                           agree, round(overlap, 4), True, round(time.perf_counter() - t0, 2), None)
