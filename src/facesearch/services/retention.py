"""Retention: what expires, and when.

- service probe images after ``probe_retention_days`` (default 90);
- search records (with their candidates, reviews and probes) after ``search_retention_days``
  (default 365);
- gallery images (with their faces and index entries) ``retention_days`` after they were
  collected (or ingested, when the collection time is unknown), for galleries that set it;
- erasure requests left unconfirmed for 30 days (the person's encrypted embeddings with them).

The audit trail is never purged here: its records are kept (and the database refuses to
delete them). Every run is audited. The clock is injected so tests can move it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import delete, func, select

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.services.context import AppContext
from facesearch.services.privacy import expire_pending
from facesearch.store.tables import Face, Gallery, Image, ProbeImage, Search
from facesearch.store.repository import utcnow



@dataclass(frozen=True)
class RetentionReport:
    at: datetime
    probes_deleted: int
    searches_deleted: int
    images_deleted: int
    faces_deleted: int
    erasure_requests_expired: int = 0

    def to_json(self) -> dict[str, object]:
        return {"at": self.at.isoformat(), "probes_deleted": self.probes_deleted,
                "searches_deleted": self.searches_deleted, "images_deleted": self.images_deleted,
                "faces_deleted": self.faces_deleted,
                "erasure_requests_expired": self.erasure_requests_expired}


def set_gallery_retention(ctx: AppContext, gallery: str, days: int | None) -> None:
    with ctx.repo() as repo:
        g = repo.s.scalar(select(Gallery).where(Gallery.name == gallery))
        if g is None:
            from facesearch.errors import GalleryNotFound

            raise GalleryNotFound(f"gallery {gallery!r} does not exist")
        g.retention_days = days


def run_retention(ctx: AppContext, clock: Callable[[], datetime] = utcnow, actor: str = "retention") -> RetentionReport:
    now = clock()
    s = ctx.settings
    probe_cut = now - timedelta(days=s.probe_retention_days)
    search_cut = now - timedelta(days=s.search_retention_days)
    with ctx.repo() as repo:
        old_probes = select(ProbeImage.search_id).join(Search, Search.id == ProbeImage.search_id).where(
            Search.created_at < probe_cut)
        probes = repo.s.execute(delete(ProbeImage).where(ProbeImage.search_id.in_(old_probes))).rowcount or 0
        searches = repo.s.execute(delete(Search).where(Search.created_at < search_cut)).rowcount or 0
    images = faces = 0
    with ctx.repo() as repo:
        galleries = [(g.id, g.model_id, g.retention_days) for g in repo.s.scalars(
            select(Gallery).where(Gallery.retention_days.is_not(None)))]
    for gallery_id, model_id, days in galleries:
        cut = now - timedelta(days=days)
        with ctx.repo() as repo:
            expired = list(repo.s.scalars(select(Image.id).where(
                Image.gallery_id == gallery_id, func.coalesce(Image.collected_at, Image.ingested_at) < cut)))
        if not expired:
            continue
        with ctx.repo() as repo:
            key, _ = ctx.index_for(repo, gallery_id, model_id)
            face_ids = list(repo.s.scalars(select(Face.id).where(Face.image_id.in_(expired))))
            for image_id in expired:
                repo.delete_image(image_id)
        with ctx.repo() as repo:
            _, max_id = repo.face_watermark(gallery_id, model_id)
        ctx.indexes.remove(key, np.asarray(face_ids, dtype=np.int64), max_id)
        images += len(expired)
        faces += len(face_ids)
    # erasure requests never confirmed: the person's encrypted probe embeddings and match list go
    expired_requests = expire_pending(ctx, now)
    report = RetentionReport(now, int(probes), int(searches), images, faces, expired_requests)
    ctx.audit.append(AuditAction.ERASURE, actor=actor, agency=None, target="retention",
                     outcome=AuditOutcome.SUCCESS, request_id=None, details={"reason": "retention", **{
                         k: v for k, v in report.to_json().items() if k != "at"}})
    return report
