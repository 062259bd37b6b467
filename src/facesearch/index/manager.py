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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.factory import build_index, needs_rebuild, new_index
from facesearch.index.faiss_backend import load_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexKey:
    """One index per gallery and embedding model (a gallery being re-embedded has two)."""

    gallery_id: int
    model_id: str

    @property
    def stem(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_id)
        return f"gallery-{self.gallery_id}-{safe}"


class IndexManager:
    def __init__(self, index_dir: Path, exact_max: int, target_recall: float) -> None:
        self.dir = index_dir
        self.exact_max = exact_max
        self.target_recall = target_recall
        self._open: dict[IndexKey, VectorIndex] = {}
        self._max_id: dict[IndexKey, int] = {}
        self._lock = threading.RLock()

    def _paths(self, key: IndexKey) -> tuple[Path, Path]:
        return self.dir / f"{key.stem}.faiss", self.dir / f"{key.stem}.json"

    def get(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001 - Repository
        """The gallery's index, loaded from disk if it agrees with the database, else rebuilt."""
        with self._lock:
            if key in self._open:
                return self._open[key]
            count, max_id = repo.face_watermark(key.gallery_id, key.model_id)
            path, meta = self._paths(key)
            index: VectorIndex | None = None
            if path.exists() and meta.exists():
                try:
                    m = json.loads(meta.read_text())
                    loaded = load_index(path)
                    if (m.get("count"), m.get("max_id")) == (count, max_id) and loaded.ntotal == count:
                        index = loaded
                    else:
                        log.warning("index of gallery %s is out of step with the database; rebuilding", key)
                except (IndexError_, ValueError, OSError) as e:
                    log.warning("index of gallery %s unreadable (%s); rebuilding", key, e)
            elif count:
                log.warning("index of gallery %s missing; rebuilding from the database", key)
            if index is None:
                index = self._build(repo, key, dim, count)
                self._open[key] = index
                self._max_id[key] = max_id
                self.save(key)
            self._open[key] = index
            self._max_id[key] = max_id
            return index

    def _build(self, repo, key: IndexKey, dim: int, count: int) -> VectorIndex:  # noqa: ANN001
        if count == 0:
            return new_index(dim)
        ids, vecs = [], []
        for i, v in repo.iter_embeddings(key.gallery_id, key.model_id):
            ids.append(i)
            vecs.append(v)
        return build_index(np.concatenate(vecs), np.concatenate(ids), dim, self.exact_max, self.target_recall)

    def rebuild(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        with self._lock:
            count, max_id = repo.face_watermark(key.gallery_id, key.model_id)
            self._open[key] = self._build(repo, key, dim, count)
            self._max_id[key] = max_id
            self.save(key)
            return self._open[key]

    def add(self, key: IndexKey, vecs: np.ndarray, ids: np.ndarray) -> None:
        with self._lock:
            if len(ids) == 0:
                return
            self._open[key].add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32),
                                                np.asarray(ids, dtype=np.int64))
            self._max_id[key] = max(self._max_id.get(key, 0), int(np.max(ids)))

    def remove(self, key: IndexKey, ids: np.ndarray, max_id_after: int) -> int:
        """Remove faces from the index and persist at once: a deleted face is never returned."""
        with self._lock:
            idx = self._open.get(key)
            if idx is None:
                return 0
            n = idx.remove_ids(np.asarray(ids, dtype=np.int64))
            self._max_id[key] = max_id_after
            self.save(key)
            return n

    def maybe_upgrade(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        """Rebuild when the index no longer fits its size: an exact index past ``exact_max``
        becomes a compressed ANN index; an ANN index that doubled (or shrank) is re-trained."""
        with self._lock:
            idx = self._open[key]
            if needs_rebuild(idx, self.exact_max):
                log.info("gallery %s has %d faces: rebuilding its index", key, idx.ntotal)
                return self.rebuild(repo, key, dim)
            return idx

    def save(self, key: IndexKey) -> None:
        with self._lock:
            idx = self._open[key]
            path, meta = self._paths(key)
            self.dir.mkdir(parents=True, exist_ok=True)
            # The sidecar is written first as "unknown" so a crash between the two writes
            # forces a rebuild rather than trusting a stale pair.
            meta.unlink(missing_ok=True)
            idx.save(path)
            tmp = meta.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"count": idx.ntotal, "max_id": self._max_id.get(key, 0),
                                       "kind": idx.kind, "d": idx.d}))
            os.replace(tmp, meta)

    def drop(self, key: IndexKey) -> None:
        """Forget an index and delete its files (a gallery that moved to another model)."""
        with self._lock:
            self._open.pop(key, None)
            self._max_id.pop(key, None)
            for p in self._paths(key):
                p.unlink(missing_ok=True)
