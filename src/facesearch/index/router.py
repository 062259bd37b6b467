"""Where each gallery's index lives: the embedded faiss index or Milvus.

``IndexRouter`` is what the services use as ``ctx.indexes``: the same calls as
``IndexManager`` (``get``, ``reading``, ``add``, ``remove``, ``save``, ``maybe_upgrade``, ``rebuild``,
``resync``, ``drop``), each sent to the backend of that gallery and model.

The backend of a gallery (all its models: a gallery being re-embedded stays where it is) is its
placement record, a small JSON file beside the faiss files (``<index dir>/gallery-<id>.placement.json``,
written atomically by ``services/index_migrate.py`` once a migration is verified); without one it
is ``FACESEARCH_INDEX``. The placement is re-read on every ``get`` (one small file), so a server
that is running when a migration switches a gallery follows it at its next search.

For Milvus the database stays the source of truth as for faiss, but there is no file to
rebuild: when a gallery's row count in Milvus disagrees with the database (a killed ingest, an
erasure interrupted between the engine and the database), ``get`` reconciles it, inserting the
missing faces from the stored embeddings and deleting the rows the database no longer has.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.manager import IndexKey, IndexManager

if TYPE_CHECKING:
    from facesearch.index.milvus_backend import MilvusIndex, MilvusIndexes

log = logging.getLogger(__name__)

__all__ = ["IndexRouter", "Placement", "read_placement", "write_placement", "placement_path"]

BACKENDS = ("faiss", "milvus")


@dataclass(frozen=True)
class Placement:
    backend: str
    since: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    verified: dict[str, Any] = field(default_factory=dict)  # what the migration checked


def placement_path(index_dir: Path, key: IndexKey) -> Path:
    return index_dir / f"gallery-{key.gallery_id}.placement.json"


def read_placement(index_dir: Path, key: IndexKey) -> Placement | None:
    p = placement_path(index_dir, key)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise IndexError_(f"placement record {p} is unreadable ({e}); fix or delete it") from None
    if d.get("backend") not in BACKENDS:
        raise IndexError_(f"placement record {p} names an unknown backend {d.get('backend')!r}")
    return Placement(d["backend"], d.get("since", ""), dict(d.get("verified") or {}))


def write_placement(index_dir: Path, key: IndexKey, placement: Placement) -> None:
    p = placement_path(index_dir, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(placement), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


class IndexRouter:
    """``ctx.indexes``: per (gallery, model), the faiss ``IndexManager`` or Milvus views."""

    def __init__(self, faiss: IndexManager, default_backend: str, milvus: MilvusIndexes | None) -> None:
        if default_backend not in BACKENDS:
            raise IndexError_(f"unknown index backend {default_backend!r}")
        self.faiss = faiss
        self.default_backend = default_backend
        self.milvus = milvus
        self._views: dict[IndexKey, MilvusIndex] = {}
        self._lock = threading.RLock()

    # routing -----------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.faiss.dir

    def backend_of(self, key: IndexKey) -> str:
        p = read_placement(self.faiss.dir, key)
        return p.backend if p else self.default_backend

    def _need_milvus(self) -> MilvusIndexes:
        if self.milvus is None:
            raise IndexError_("this gallery's index is on Milvus but FACESEARCH_MILVUS_URI is not set")
        return self.milvus

    def milvus_view(self, repo, key: IndexKey, dim: int) -> MilvusIndex:  # noqa: ANN001 - Repository
        """The gallery's Milvus view (not reconciled: what a migration writes into)."""
        with self._lock:
            view = self._views.get(key)
            if view is None:
                g = repo.gallery_by_id(key.gallery_id)
                view = self._need_milvus().index(key.model_id, dim, g.id, g.agency_id)
                self._views[key] = view
            return view

    def get(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        if self.backend_of(key) == "faiss":
            with self._lock:
                self._views.pop(key, None)
            return self.faiss.get(repo, key, dim)
        with self._lock:
            fresh = key not in self._views
            view = self.milvus_view(repo, key, dim)
            if fresh:
                reconcile(repo, key, view)
            return view

    @contextmanager
    def reading(self, repo, key: IndexKey, dim: int) -> Iterator[VectorIndex]:  # noqa: ANN001
        """The gallery's index held for searching (faiss: its read lock; Milvus orders a search
        and a delete itself, with the consistency level of ``milvus_backend``)."""
        if self.backend_of(key) == "faiss":
            with self.faiss.reading(repo, key, dim) as idx:
                yield idx
        else:
            yield self.get(repo, key, dim)

    def _view(self, key: IndexKey) -> MilvusIndex | None:
        with self._lock:
            return self._views.get(key)

    # IndexManager's calls ---------------------------------------------------------------
    def add(self, key: IndexKey, vecs: np.ndarray, ids: np.ndarray) -> None:
        view = self._view(key)
        if view is None:
            self.faiss.add(key, vecs, ids)
        elif len(ids):
            view.add_with_ids(np.asarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, key: IndexKey, ids: np.ndarray, max_id_after: int) -> int:
        view = self._view(key)
        if view is None:
            return self.faiss.remove(key, ids, max_id_after)
        return view.remove_ids(np.asarray(ids, dtype=np.int64))

    def save(self, key: IndexKey) -> None:
        if self._view(key) is None:
            self.faiss.save(key)

    def maybe_upgrade(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        view = self._view(key)
        return self.faiss.maybe_upgrade(repo, key, dim) if view is None else view

    def rebuild(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        if self.backend_of(key) == "faiss":
            return self.faiss.rebuild(repo, key, dim)
        view = self.milvus_view(repo, key, dim)
        reconcile(repo, key, view)  # the count check, as the faiss side's watermark
        return view

    def resync(self, repo, key: IndexKey, dim: int) -> VectorIndex:  # noqa: ANN001
        if self.backend_of(key) == "faiss":
            return self.faiss.resync(repo, key, dim)
        return self.rebuild(repo, key, dim)  # Milvus: the count check (and repair) only

    def drop(self, key: IndexKey) -> None:
        """Forget a (gallery, model) index: its faiss files, and its Milvus rows if it has any
        (a gallery re-embedded with another model)."""
        with self._lock:
            view = self._views.pop(key, None)
        if view is not None:
            view.clear()
        elif self.milvus is not None and self.backend_of(key) == "milvus":
            self.milvus.drop_gallery(key.model_id, key.gallery_id)
        self.faiss.drop(key)

    def __getattr__(self, name: str) -> Any:  # exact_max, target_recall, ... of the faiss manager
        return getattr(self.faiss, name)


def reconcile(repo, key: IndexKey, view: MilvusIndex, *, force: bool = False) -> tuple[int, int]:  # noqa: ANN001
    """Make the gallery's Milvus rows equal to its database faces; returns (added, removed).

    Cheap when in step (one count); otherwise compares ids and fixes the difference.
    """
    count, _ = repo.face_watermark(key.gallery_id, key.model_id)
    if not force and view.ntotal == count:
        return 0, 0
    have = view.all_ids()
    want_parts: list[np.ndarray] = []
    added = 0
    for ids, vecs in repo.iter_embeddings(key.gallery_id, key.model_id):
        want_parts.append(ids)
        missing = ~np.isin(ids, have)
        if missing.any():
            view.add_with_ids(vecs[missing], ids[missing])
            added += int(missing.sum())
    want = np.concatenate(want_parts) if want_parts else np.zeros(0, dtype=np.int64)
    extra = have[~np.isin(have, want)]
    removed = view.remove_ids(extra) if len(extra) else 0
    if added or removed:
        log.warning("Milvus rows of gallery %s were out of step with the database: %d added, %d removed",
                    key, added, removed)
    return added, removed
