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

from facesearch.config import Settings
from facesearch.index.manager import IndexManager
from facesearch.models.loader import registry_for
from facesearch.models.manifest import ModelRegistry
from facesearch.pipeline.build import build_pipeline
from facesearch.pipeline.pipeline import FacePipeline
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
        self.settings = settings
        settings.ensure_home()
        self.engine = make_engine(settings.db_url)
        migrate(self.engine)
        self._sessions = session_factory(self.engine)
        self.registry = registry_for(settings.home, settings.model_dir)
        self.indexes = IndexManager(settings.index_dir, settings.exact_max, settings.ann_target_recall)
        self._pipeline: FacePipeline | None = None
        self._lock = threading.Lock()

    @property
    def pipeline(self) -> FacePipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = build_pipeline(self.settings, self.registry)
            return self._pipeline

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
        self.engine.dispose()
