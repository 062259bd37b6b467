"""The application context: everything built once at start-up and handed to the services."""
from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from facesearch.audit import AuditLog
from facesearch.config import Settings
from facesearch.index.base import VectorIndex
from facesearch.index.factory import milvus_from_settings
from facesearch.index.manager import IndexKey, IndexManager
from facesearch.index.router import IndexRouter
from facesearch.models.loader import registry_for
from facesearch.pipeline.build import build_pipeline, packs_for
from facesearch.pipeline.pipeline import FacePipeline
from facesearch.store.crypto import Keyring
from facesearch.store.db import make_engine, migrate, session_factory
from facesearch.store.repository import Repository
from facesearch.types import Threshold

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "models" / "calibration"


@dataclass(frozen=True)
class Calibration:
    model_id: str
    threshold: float
    fpir: float
    gallery_size: int
    source: str

    def as_threshold(self) -> Threshold:
        return Threshold(
            self.threshold,
            f"about 1 in {round(1 / self.fpir)} non-mated searches returns a candidate above this "
            f"(calibrated on {self.source}, gallery of {self.gallery_size} subjects; larger galleries raise the false-alarm rate)",
        )


def load_calibration(model_id: str) -> Calibration | None:
    p = CALIBRATION_DIR / f"{model_id}.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return Calibration(model_id, float(d["threshold"]), float(d["fpir"]), int(d["gallery_size"]), d["source"])


class AppContext:
    """Settings, database, model registry, pipeline (lazy) and indexes of one installation."""

    def __init__(self, settings: Settings) -> None:
        from facesearch.services.keys import check_production, encrypt_plaintext, key_source

        # FACESEARCH_ENV=production: a missing, exposed or development key stops every entry
        # point (server, CLI, facade) here, before the home or the database is touched
        check_production(settings)
        self.settings = settings
        settings.ensure_home()
        self.engine = make_engine(settings.db_url)
        from facesearch.store.fields import attach_keyring

        self.keyring = Keyring(key_source(settings))  # loaded on first use; follows keys rotate
        attach_keyring(self.engine, self.keyring)
        migrate(self.engine)
        encrypt_plaintext(self.engine, self.keyring)  # clear values of older schemas, once
        self._sessions = session_factory(self.engine)
        self.registry = registry_for(settings.home, settings.model_dir)
        self.packs = packs_for(settings, self.registry)
        self.audit = AuditLog(self.engine)
        # each gallery's index on faiss or Milvus (index/router.py); same calls as IndexManager
        self.indexes = IndexRouter(IndexManager(settings.index_dir, settings.exact_max, settings.ann_target_recall,
                                                sq_max=settings.sq_max,
                                                ram_budget=int(settings.index_ram_gib * 2**30),
                                                rerank_store=settings.index_rerank_store),
                                   settings.index, milvus_from_settings(settings))
        self._pipelines: dict[str, FacePipeline] = {}
        self._lock = threading.Lock()
        from facesearch.services.erasure import resume_pending

        resume_pending(self)  # an interrupted erasure completes before anything else reads the index

    @property
    def pipeline(self) -> FacePipeline:
        """The pipeline of the configured model pack (``settings.model``): what ingest uses."""
        return self.pipeline_for_pack(self.settings.model)

    def pipeline_for_pack(self, pack_id: str) -> FacePipeline:
        with self._lock:
            if pack_id not in self._pipelines:
                self._pipelines[pack_id] = build_pipeline(self.settings, self.registry,
                                                          self.packs.get(pack_id))
            return self._pipelines[pack_id]

    def pipeline_for_model(self, embedder_id: str) -> FacePipeline:
        """The pipeline whose embedder made a gallery's faces (a search uses the gallery's model)."""
        return self.pipeline_for_pack(self.packs.for_embedder(embedder_id).id)

    @property
    def cipher(self) -> Keyring:
        """The field encryption keyring (store/crypto.py); its key is loaded on first use."""
        return self.keyring

    def dim_of(self, embedder_id: str) -> int:
        return int(self.registry.get(embedder_id).embedding_dim or 0)

    def index_for(self, repo: Repository, gallery_id: int, model_id: str) -> tuple[IndexKey, VectorIndex]:
        key = IndexKey(gallery_id, model_id)
        return key, self.indexes.get(repo, key, self.dim_of(model_id))

    @contextmanager
    def reading_index(self, repo: Repository, gallery_id: int, model_id: str) -> Iterator[VectorIndex]:
        """The gallery's index held for a search: no add, remove or swap changes it meanwhile."""
        with self.indexes.reading(repo, IndexKey(gallery_id, model_id), self.dim_of(model_id)) as index:
            yield index

    @contextmanager
    def repo(self) -> Iterator[Repository]:
        """A unit of work: commits on success, rolls back on error."""
        session: Session = self._sessions()
        try:
            yield Repository(session)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def threshold_for(self, model_id: str) -> Threshold:
        if self.settings.threshold is not None:
            return Threshold(self.settings.threshold, "set by the operator (FACESEARCH_THRESHOLD); not calibrated")
        cal = load_calibration(model_id)
        if cal is None:
            return Threshold(0.0, f"no calibration for model {model_id!r}: scores are uncalibrated")
        return cal.as_threshold()

    def close(self) -> None:
        if self.indexes.milvus is not None:
            self.indexes.milvus.close()
        self.engine.dispose()
