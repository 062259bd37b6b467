"""The Python facade that the CLI (and later the web service) calls."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from facesearch.config import Settings
from facesearch.pipeline.decode import read_image
from facesearch.pipeline.pipeline import FacePipeline
from facesearch.pipeline.build import build_pipeline
from facesearch.services.context import AppContext
from facesearch.services.galleries import delete_image, gallery_stats, list_galleries
from facesearch.services.ingest import IngestService, ProgressFn, items_from
from facesearch.services.search import SearchRequest, SearchService
from facesearch.store.repository import GalleryInfo, GalleryStats
from facesearch.types import DetectedFace, Face, IngestItem, IngestSummary, SearchResult


@lru_cache(maxsize=1)
def _default_pipeline() -> FacePipeline:
    return build_pipeline(Settings())


def _rgb(image: str | Path, settings: Settings):  # noqa: ANN202
    return read_image(Path(image), max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes).rgb


def detect_faces(image: str | Path) -> list[DetectedFace]:
    """Every face in a photo, largest first (default detector)."""
    p = _default_pipeline()
    return p.detect(_rgb(image, Settings()))


def embed_faces(image: str | Path) -> list[Face]:
    """Every face in a photo with its quality and L2-normalised embedding, largest first."""
    p = _default_pipeline()
    return p.analyze(_rgb(image, Settings()))


class FaceSearch:
    """One installation: a home folder with its database and indexes."""

    def __init__(self, home: str | Path | None = None, settings: Settings | None = None, **overrides) -> None:
        if settings is None:
            kw = dict(overrides)
            if home is not None:
                kw["home"] = Path(home).expanduser()
            settings = Settings(**kw)
        self.settings = settings
        self.ctx = AppContext(settings)

    def ingest(self, source: str | Path | list[IngestItem], *, gallery: str, legal_basis: str | None = None,
               subject_from_folder: bool = False, progress: ProgressFn | None = None,
               workers: int | None = None, collector: str | None = None,
               agency: str | None = None) -> IngestSummary:
        items = source if isinstance(source, list) else items_from(Path(source), subject_from_folder)
        return IngestService(self.ctx).ingest(items, gallery=gallery, legal_basis=legal_basis,
                                              progress=progress, workers=workers, collector=collector,
                                              agency=agency)

    def search(self, probe: str | Path | bytes, *, gallery: str, case_number: str, purpose: str,
               top_k: int = 10, all_faces: bool = False, face_index: int | None = None) -> SearchResult:
        req = SearchRequest(gallery=gallery, case_number=case_number, purpose=purpose, top_k=top_k,
                            all_faces=all_faces, face_index=face_index)
        svc = SearchService(self.ctx)
        if isinstance(probe, bytes):
            return svc.search_bytes(probe, req)
        return svc.search_path(Path(probe), req)

    def galleries(self) -> list[tuple[GalleryInfo, GalleryStats]]:
        return list_galleries(self.ctx)

    def gallery_stats(self, name: str) -> GalleryStats:
        return gallery_stats(self.ctx, name)

    def delete_image(self, image_id: int) -> int:
        """Delete an image and its faces; they are never returned by a search after this."""
        return delete_image(self.ctx, image_id)

    def close(self) -> None:
        self.ctx.close()

    def __enter__(self) -> "FaceSearch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
