"""One persisted index per gallery, kept in step with the database.

The database is the source of truth. Each index file has a sidecar recording how many faces
it holds and the highest face id; when either disagrees with the database (a killed ingest,
a deleted or corrupt file), the index is rebuilt from the stored embeddings.

The kind of index follows the gallery's size (``factory.choose_kind``). A compressed
(IVF-PQ) index also keeps files next to its header file, under a prefix unique to each build
(``gallery-<id>-<model>.<token>.vec16`` or ``.vec8`` / ``.ivfdata``), so a rebuild never overwrites the
files of the index still being served; the old build's files are deleted once the new one is
saved. Galleries large enough for IVF-PQ are read from the database into a temporary float16
file rather than into memory.

An index file written by another process (``facesearch index tune`` while the server runs) is
picked up by the next ``get``: when its sidecar agrees with the index held in memory (same
faces), the saved one replaces it, so its new search settings take effect and are not
overwritten by this process's next save. When it disagrees (the other process added or removed
faces this one has not seen), the copy in memory is kept and a warning logged; the usual count
check settles it on the next start.

Locking is per index, so one gallery's hours-long rebuild never holds up another's searches.
Each index has a mutex that orders its changes (adds, removes, builds, saves) and a
readers-writer lock (``rwlock.py``): searches (``reading``) share the index, and take it again
only between changes; an add or a remove takes it alone for the moment it changes the arrays,
and a rebuild builds its new copy while searches go on with the old one, then swaps it in.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.compressed import PQIndex
from facesearch.index.factory import RAM_BUDGET, SQ_MAX, build_index, choose_kind, needs_rebuild, new_index
from facesearch.index.faiss_backend import load_index
from facesearch.index.rwlock import ReadWriteLock

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
    def __init__(self, index_dir: Path, exact_max: int, target_recall: float, *,
                 sq_max: int = SQ_MAX, ram_budget: int = RAM_BUDGET,
                 rerank_store: str = "float16") -> None:
        self.dir = index_dir
        self.exact_max = exact_max
        self.target_recall = target_recall
        self.sq_max = sq_max
        self.ram_budget = ram_budget
        self.rerank_store = rerank_store  # IVF-PQ re-ranking vectors: float16 or int8
        self._open: dict[IndexKey, VectorIndex] = {}
        self._max_id: dict[IndexKey, int] = {}
        self._stamp: dict[IndexKey, tuple[tuple[int, int, int], ...]] = {}  # files as last seen
        self._guard = threading.Lock()  # only around creating a key's locks
        self._locks: dict[IndexKey, tuple[threading.RLock, ReadWriteLock]] = {}

    def _mutex(self, key: IndexKey) -> threading.RLock:
        """Orders the changes to one index (held for a whole build, not by searches)."""
        return self._key_locks(key)[0]

    def _rw(self, key: IndexKey) -> ReadWriteLock:
        """Searches share it; an in-place change or a swap takes it alone."""
        return self._key_locks(key)[1]

    def _key_locks(self, key: IndexKey) -> tuple[threading.RLock, ReadWriteLock]:
        with self._guard:
            locks = self._locks.get(key)
            if locks is None:
                locks = self._locks[key] = (threading.RLock(), ReadWriteLock())
            return locks

    def _swap(self, key: IndexKey, index: VectorIndex, max_id: int) -> None:
        with self._rw(key).write():
            self._open[key] = index
            self._max_id[key] = max_id

    @contextmanager
    def reading(self, repo, key: IndexKey, dim: int) -> Iterator[VectorIndex]:  # noqa: ANN001
        """The gallery's index, held for searching: no add, remove or swap happens to it until
        the block ends (other searches go on at the same time)."""
        while True:
            self.get(repo, key, dim)  # opens or builds it first, holding no read side
            with self._rw(key).read():
                idx = self._open.get(key)
                if idx is not None:
                    yield idx
                    return
            # dropped between the two steps: open it again

    def _paths(self, key: IndexKey) -> tuple[Path, Path]:
        return self.dir / f"{key.stem}.faiss", self.dir / f"{key.stem}.json"

    def get(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001 - Repository
        """The gallery's index, loaded from disk if it agrees with the database, else rebuilt.

        Searching it needs ``reading``: what ``get`` returns may be changed by another thread."""
        idx = self._open.get(key)
        if idx is not None:
            stamp = self._files_stamp(key)
            if stamp != self._stamp.get(key):
                mutex = self._mutex(key)
                if mutex.acquire(blocking=False):  # busy with a change: look again next time
                    try:
                        self._adopt_saved(key, stamp)
                    finally:
                        mutex.release()
            return self._open.get(key, idx)
        with self._mutex(key):
            if key in self._open:  # opened by another thread meanwhile
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
                self._swap(key, index, max_id)
                self.save(key)
                self._remove_stale_files(key)
            else:
                self._swap(key, index, max_id)
            self._stamp[key] = self._files_stamp(key)
            return index

    def _files_stamp(self, key: IndexKey) -> tuple[tuple[int, int, int], ...]:
        """(inode, size, mtime) of the index file and its sidecar; zeros for a missing one."""
        out = []
        for p in self._paths(key):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append((0, 0, 0))
        return tuple(out)

    def _adopt_saved(self, key: IndexKey, stamp: tuple[tuple[int, int, int], ...]) -> None:
        """The files changed (now ``stamp``) since this process last read or wrote them: take the
        saved index when it holds the same faces as the one in memory (see module docstring)."""
        self._stamp[key] = stamp  # one attempt per change, not one per call
        path, meta = self._paths(key)
        current = self._open[key]
        try:
            m = json.loads(meta.read_text())
            same = (m.get("count"), m.get("max_id")) == (current.ntotal, self._max_id.get(key, 0))
            loaded = load_index(path) if same else None
        except (IndexError_, ValueError, OSError) as e:  # half written, or removed meanwhile
            log.debug("index files of gallery %s changed but are not readable yet (%s)", key, e)
            return
        if loaded is None or loaded.ntotal != current.ntotal or loaded.d != current.d:
            log.warning("index of gallery %s was saved by another process with other faces; "
                        "keeping the one in memory", key)
            return
        log.info("index of gallery %s was saved by another process (%s); using it", key, loaded.kind)
        self._swap(key, loaded, self._max_id.get(key, 0))

    def _build(self, repo, key: IndexKey, dim: int, count: int) -> VectorIndex:  # noqa: ANN001
        if count == 0:
            return new_index(dim)
        storage = self.dir / f"{key.stem}.{uuid.uuid4().hex[:12]}"
        if choose_kind(count, dim, self.exact_max, self.sq_max, self.ram_budget).startswith("ivfpq"):
            return self._build_streamed(repo, key, dim, count, storage)
        ids, vecs = [], []
        for i, v in repo.iter_embeddings(key.gallery_id, key.model_id):
            ids.append(i)
            vecs.append(v)
        return build_index(np.concatenate(vecs), np.concatenate(ids), dim, self.exact_max,
                           self.target_recall, sq_max=self.sq_max, ram_budget=self.ram_budget,
                           storage=storage, rerank_store=self.rerank_store)

    def _build_streamed(self, repo, key: IndexKey, dim: int, count: int,  # noqa: ANN001
                        storage: Path) -> VectorIndex:
        """Copy the gallery's embeddings into a temporary float16 file (2 x dim bytes per
        face), then build from it without holding every vector in memory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = storage.with_name(storage.name + ".build.tmp")
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, dim))
            ids = np.empty(count, dtype=np.int64)
            n = 0
            for i, v in repo.iter_embeddings(key.gallery_id, key.model_id):
                m = min(len(i), count - n)
                mm[n:n + m] = v[:m]
                ids[n:n + m] = i[:m]
                n += m
            mm.flush()

            def progress(done: int, total: int) -> None:
                log.info("index of gallery %s: %d/%d faces added", key, done, total)

            return build_index(mm[:n], ids[:n], dim, self.exact_max, self.target_recall,
                               sq_max=self.sq_max, ram_budget=self.ram_budget, storage=storage,
                               progress=progress, rerank_store=self.rerank_store)
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale_files(self, key: IndexKey) -> None:
        """Delete on-disk files of earlier builds of this gallery's index."""
        idx = self._open.get(key)
        keep = {p.name for p in idx.storage_files()} if isinstance(idx, PQIndex) else set()
        own = re.compile(rf"{re.escape(key.stem)}\.[0-9a-f]{{12}}(\.vec16|\.vec8|\.ivfdata|\.build\.tmp)")
        for p in self.dir.glob(f"{key.stem}.*"):
            if own.fullmatch(p.name) and p.name not in keep:
                p.unlink(missing_ok=True)

    def rebuild(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        """Build the index again from the database; searches use the old one until the new
        one is swapped in (adds and removes of this gallery wait)."""
        with self._mutex(key):
            count, max_id = repo.face_watermark(key.gallery_id, key.model_id)
            self._swap(key, self._build(repo, key, dim, count), max_id)
            self.save(key)
            self._remove_stale_files(key)
            return self._open[key]

    def resync(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001 - Repository
        """Record that the index is in step with the database again after faces left both (an
        erasure removes them from the index first, then deletes their rows).

        When the index holds as many faces as the database, only the watermark is saved: a
        rebuild of a 100M-face gallery takes hours, and an erasure must not cause one (nor hold
        this gallery's changes for that long). When they disagree, or the gallery shrank so much
        that its index no longer fits its size, the index is rebuilt from the database."""
        with self._mutex(key):
            count, max_id = repo.face_watermark(key.gallery_id, key.model_id)
            idx = self._open.get(key)
            if idx is None or idx.ntotal != count:
                if idx is not None:
                    log.warning("index of gallery %s holds %d faces, the database %d; rebuilding",
                                key, idx.ntotal, count)
                return self.rebuild(repo, key, dim)
            self._max_id[key] = max_id
            self.save(key)
            return self.maybe_upgrade(repo, key, dim)

    def add(self, key: IndexKey, vecs: np.ndarray, ids: np.ndarray) -> None:
        with self._mutex(key), self._rw(key).write():
            if len(ids) == 0:
                return
            self._open[key].add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32),
                                                np.asarray(ids, dtype=np.int64))
            self._max_id[key] = max(self._max_id.get(key, 0), int(np.max(ids)))

    def remove(self, key: IndexKey, ids: np.ndarray, max_id_after: int) -> int:
        """Remove faces from the index and persist at once: a deleted face is never returned."""
        with self._mutex(key):
            with self._rw(key).write():
                idx = self._open.get(key)
                if idx is None:
                    return 0
                n = idx.remove_ids(np.asarray(ids, dtype=np.int64))
                self._max_id[key] = max_id_after
            self.save(key)  # searches go on while it is written: they no longer see the faces
            return n

    def maybe_upgrade(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        """Rebuild when the index no longer fits its size: an exact index past ``exact_max``
        becomes a compressed ANN index; an ANN index that doubled (or shrank) is re-trained."""
        with self._mutex(key):
            idx = self._open[key]
            if needs_rebuild(idx, self.exact_max, self.sq_max, self.ram_budget):
                log.info("gallery %s has %d faces: rebuilding its index", key, idx.ntotal)
                return self.rebuild(repo, key, dim)
            return idx

    def tune(self, repo, key: IndexKey, dim: int, target_recall: float,  # noqa: ANN001
             queries: int = 1000) -> tuple[VectorIndex, tuple[int, int, float] | None]:
        """Re-tune the gallery's compressed index for ``target_recall`` and save it; returns the
        index and (nprobe, rerank depth, recall@1), or None when it is not an IVF-PQ index (exact
        search has nothing to tune; an fp16 IVF index is tuned when it is built).

        It changes the search settings while it measures, so this gallery's searches in this
        process wait for it; ``facesearch index tune`` runs it in its own process instead, and a
        running server picks the saved result up."""
        with self._mutex(key):
            idx = self.get(repo, key, dim)
            if not isinstance(idx, PQIndex):
                return idx, None
            with self._rw(key).write():
                result = idx.retune(target_recall, queries=queries)
            self.save(key)
            return idx, result

    def save(self, key: IndexKey) -> None:
        with self._mutex(key), self._rw(key).read():
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
            self._stamp[key] = self._files_stamp(key)

    def drop(self, key: IndexKey) -> None:
        """Forget an index and delete its files (a gallery that moved to another model)."""
        with self._mutex(key):
            with self._rw(key).write():
                self._open.pop(key, None)
                self._max_id.pop(key, None)
            self._stamp.pop(key, None)
            for p in self._paths(key):
                p.unlink(missing_ok=True)
            self._remove_stale_files(key)
