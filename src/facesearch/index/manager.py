"""One persisted index per gallery, kept in step with the database.

The database is the source of truth. Each index file has a sidecar recording how many faces
it holds and the highest face id; when either disagrees with the database (a killed ingest,
a deleted or corrupt file), the index is rebuilt from the stored embeddings.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.factory import build_index, needs_rebuild, new_index
from facesearch.index.faiss_backend import load_index

log = logging.getLogger(__name__)


class IndexManager:
    def __init__(self, index_dir: Path, exact_max: int, target_recall: float) -> None:
        self.dir = index_dir
        self.exact_max = exact_max
        self.target_recall = target_recall
        self._open: dict[int, VectorIndex] = {}
        self._max_id: dict[int, int] = {}
        self._lock = threading.RLock()

    def _paths(self, gallery_id: int) -> tuple[Path, Path]:
        return self.dir / f"gallery-{gallery_id}.faiss", self.dir / f"gallery-{gallery_id}.json"

    def get(self, repo, gallery_id: int, dim: int) -> VectorIndex:  # noqa: ANN001 - Repository
        """The gallery's index, loaded from disk if it agrees with the database, else rebuilt."""
        with self._lock:
            if gallery_id in self._open:
                return self._open[gallery_id]
            count, max_id = repo.face_watermark(gallery_id)
            path, meta = self._paths(gallery_id)
            index: VectorIndex | None = None
            if path.exists() and meta.exists():
                try:
                    m = json.loads(meta.read_text())
                    loaded = load_index(path)
                    if (m.get("count"), m.get("max_id")) == (count, max_id) and loaded.ntotal == count:
                        index = loaded
                    else:
                        log.warning("index of gallery %s is out of step with the database; rebuilding", gallery_id)
                except (IndexError_, ValueError, OSError) as e:
                    log.warning("index of gallery %s unreadable (%s); rebuilding", gallery_id, e)
            elif count:
                log.warning("index of gallery %s missing; rebuilding from the database", gallery_id)
            if index is None:
                index = self._build(repo, gallery_id, dim, count)
                self._open[gallery_id] = index
                self._max_id[gallery_id] = max_id
                self.save(gallery_id)
            self._open[gallery_id] = index
            self._max_id[gallery_id] = max_id
            return index

    def _build(self, repo, gallery_id: int, dim: int, count: int) -> VectorIndex:  # noqa: ANN001
        if count == 0:
            return new_index(dim)
        ids, vecs = [], []
        for i, v in repo.iter_embeddings(gallery_id):
            ids.append(i)
            vecs.append(v)
        return build_index(np.concatenate(vecs), np.concatenate(ids), dim, self.exact_max, self.target_recall)

    def rebuild(self, repo, gallery_id: int, dim: int) -> VectorIndex:  # noqa: ANN001
        with self._lock:
            count, max_id = repo.face_watermark(gallery_id)
            self._open[gallery_id] = self._build(repo, gallery_id, dim, count)
            self._max_id[gallery_id] = max_id
            self.save(gallery_id)
            return self._open[gallery_id]

    def add(self, gallery_id: int, vecs: np.ndarray, ids: np.ndarray) -> None:
        with self._lock:
            if len(ids) == 0:
                return
            self._open[gallery_id].add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32),
                                                np.asarray(ids, dtype=np.int64))
            self._max_id[gallery_id] = max(self._max_id.get(gallery_id, 0), int(np.max(ids)))

    def remove(self, gallery_id: int, ids: np.ndarray, max_id_after: int) -> int:
        """Remove faces from the index and persist at once: a deleted face is never returned."""
        with self._lock:
            idx = self._open.get(gallery_id)
            if idx is None:
                return 0
            n = idx.remove_ids(np.asarray(ids, dtype=np.int64))
            self._max_id[gallery_id] = max_id_after
            self.save(gallery_id)
            return n

    def maybe_upgrade(self, repo, gallery_id: int, dim: int) -> VectorIndex:  # noqa: ANN001
        """Rebuild when the index no longer fits its size: an exact index past ``exact_max``
        becomes a compressed ANN index; an ANN index that doubled (or shrank) is re-trained."""
        with self._lock:
            idx = self._open[gallery_id]
            if needs_rebuild(idx, self.exact_max):
                log.info("gallery %s has %d faces: rebuilding its index", gallery_id, idx.ntotal)
                return self.rebuild(repo, gallery_id, dim)
            return idx

    def save(self, gallery_id: int) -> None:
        with self._lock:
            idx = self._open[gallery_id]
            path, meta = self._paths(gallery_id)
            self.dir.mkdir(parents=True, exist_ok=True)
            # The sidecar is written first as "unknown" so a crash between the two writes
            # forces a rebuild rather than trusting a stale pair.
            meta.unlink(missing_ok=True)
            idx.save(path)
            tmp = meta.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"count": idx.ntotal, "max_id": self._max_id.get(gallery_id, 0),
                                       "kind": idx.kind, "d": idx.d}))
            os.replace(tmp, meta)

    def forget(self, gallery_id: int) -> None:
        with self._lock:
            self._open.pop(gallery_id, None)
