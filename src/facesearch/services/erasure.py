"""Erasure by face, and the suppression list.

A person is found by their photo(s) in every gallery (an exact scan of each gallery's stored
embeddings, above the model's calibrated threshold), a person confirms the matches, and the
images, faces, embeddings and index entries are deleted. The request is written first (with
the person's suppression entry), so an erasure interrupted at any point is completed by the
next start; the index entries are removed before the rows, and an index that disagrees with
the database is only rebuilt after pending erasures are completed. The suppression list keeps
only the person's embedding, encrypted; later ingests skip matching faces.

Request states: ``pending_confirmation`` (filed through the service, awaiting a person's
confirmation: see :mod:`facesearch.services.privacy`), ``pending`` (confirmed, being erased;
completed at the next start if interrupted), ``done``, ``cancelled``, ``expired``. The CLI
confirms at the terminal and writes its requests directly as ``pending``.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.errors import FaceSearchError, NoFaceFound
from facesearch.index.manager import IndexKey
from facesearch.pipeline.decode import read_image
from facesearch.services.context import AppContext
from facesearch.store.tables import ErasureRequest, Face, Gallery, Image, Suppression
from facesearch.store.repository import utcnow


@dataclass(frozen=True)
class ErasureMatch:
    gallery: str
    gallery_id: int
    model_id: str
    image_id: int
    subject: str | None
    path: str | None
    score: float
    face_id: int | None = None  # the image's best-matching face (for its thumbnail)

    def to_json(self) -> dict[str, object]:
        return {"gallery": self.gallery, "image_id": self.image_id, "subject": self.subject, "path": self.path,
                "score": round(self.score, 4)}



def read_photos(ctx: AppContext, photos: list[Path]) -> list[np.ndarray]:
    s = ctx.settings
    return [read_image(p, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes).rgb for p in photos]


def _probe_embeddings(ctx: AppContext, rgbs: list[np.ndarray], model_id: str,
                      names: list[str] | None = None) -> np.ndarray:
    pipeline = ctx.pipeline_for_model(model_id)
    out = []
    for i, rgb in enumerate(rgbs):
        faces = pipeline.analyze(rgb)
        if not faces:
            raise NoFaceFound(f"no face found in {names[i] if names else f'photo {i + 1}'}")
        out.append(faces[0].embedding)
    return np.stack(out)


def find_matches(ctx: AppContext, photos: list[Path]) -> tuple[list[ErasureMatch], dict[str, np.ndarray]]:
    """Every stored face of the person across all galleries; also the probe embeddings per model."""
    return find_matches_rgb(ctx, read_photos(ctx, photos), names=[str(p) for p in photos])


def find_matches_rgb(ctx: AppContext, rgbs: list[np.ndarray], names: list[str] | None = None
                     ) -> tuple[list[ErasureMatch], dict[str, np.ndarray]]:
    """:func:`find_matches` for photos already decoded (uploads are never written to disk)."""
    with ctx.repo() as repo:
        galleries = [(g.id, g.name, g.model_id) for g in repo.s.scalars(select(Gallery).order_by(Gallery.id))]
    probes: dict[str, np.ndarray] = {}
    matches: list[ErasureMatch] = []
    for gid, name, model in galleries:
        if model not in probes:
            probes[model] = _probe_embeddings(ctx, rgbs, model, names)
        threshold = ctx.threshold_for(model).value
        best: dict[int, float] = {}
        with ctx.repo() as repo:
            for ids, vecs in repo.iter_embeddings(gid, model):
                scores = (vecs @ probes[model].T).max(axis=1)
                for fid, sc in zip(ids[scores > threshold], scores[scores > threshold]):
                    best[int(fid)] = float(sc)
            if best:
                rows = repo.s.execute(select(Face.id, Image.id, Image.subject, Image.original_path)
                                      .join(Image, Image.id == Face.image_id).where(Face.id.in_(list(best)))).all()
                per_image: dict[int, ErasureMatch] = {}
                for fid, iid, subj, path in rows:
                    m = ErasureMatch(name, gid, model, iid, subj, path, best[fid], fid)
                    if iid not in per_image or m.score > per_image[iid].score:
                        per_image[iid] = m
                matches += sorted(per_image.values(), key=lambda m: -m.score)
    return matches, probes


def image_items(matches: list[ErasureMatch]) -> str:
    """The ``erasure_requests.images`` column: what :func:`complete` deletes."""
    return json.dumps([[m.gallery_id, m.model_id, m.image_id] for m in matches])


def add_suppressions(ctx: AppContext, repo, probes: dict[str, np.ndarray], now: datetime,  # noqa: ANN001
                     request_public_id: str | None) -> int:
    """One suppression entry per model: the mean of the person's probe embeddings, encrypted."""
    for model, emb in probes.items():
        t = emb.mean(axis=0)
        t = (t / (np.linalg.norm(t) + 1e-12)).astype(np.float32)
        sid = secrets.token_hex(16)
        repo.s.add(Suppression(public_id=sid, model_id=model, created_at=now, request_id=request_public_id,
                               ciphertext=ctx.cipher.encrypt(t.tobytes(), aad=f"suppression:{sid}")))
    return len(probes)


def erase(ctx: AppContext, matches: list[ErasureMatch], probes: dict[str, np.ndarray], actor: str) -> str:
    """Record the request and the suppression entries, then delete; returns the request id."""
    rid = secrets.token_hex(16)
    now = utcnow()
    with ctx.repo() as repo:
        req = ErasureRequest(public_id=rid, created_at=now, status="pending", actor=actor,
                             images=image_items(matches), confirmed_by=actor, confirmed_at=now)
        repo.s.add(req)
        add_suppressions(ctx, repo, probes, now, rid)
        repo.s.flush()
        req_id = req.id
    complete(ctx, req_id)
    ctx.audit.append(AuditAction.ERASURE, actor=actor, agency=None, target=f"erasure:{rid}",
                     outcome=AuditOutcome.SUCCESS, request_id=None,
                     details={"images": len(matches), "galleries": len({m.gallery_id for m in matches})})
    return rid


def complete(ctx: AppContext, req_id: int) -> None:
    """Finish one erasure: index entries first (persisted), then the rows, then mark it done."""
    with ctx.repo() as repo:
        req = repo.s.get(ErasureRequest, req_id)
        items = json.loads(req.images)
    groups: dict[tuple[int, str], list[int]] = {}
    for gid, model, iid in items:
        groups.setdefault((gid, model), []).append(iid)
    for (gid, model), image_ids in groups.items():
        key = IndexKey(gid, model)
        with ctx.repo() as repo:
            face_ids = np.asarray(list(repo.s.scalars(select(Face.id).where(Face.image_id.in_(image_ids)))),
                                  dtype=np.int64)
            ctx.index_for(repo, gid, model)
        ctx.indexes.remove(key, face_ids, max_id_after=-1)  # out of step on purpose until the rows go
        _fault("after_index")
        with ctx.repo() as repo:
            for iid in image_ids:
                repo.delete_image(iid)
        with ctx.repo() as repo:
            ctx.indexes.resync(repo, key, ctx.dim_of(model))  # in step with the database again
    with ctx.repo() as repo:  # what was shown for confirmation goes with the images
        repo.s.execute(update(ErasureRequest).where(ErasureRequest.id == req_id).values(
            status="done", matches=None, probes=None))
    if ctx.engine.dialect.name == "sqlite":  # overwrite what the write-ahead log still holds
        with ctx.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def resume_pending(ctx: AppContext) -> int:
    with ctx.repo() as repo:
        pending = list(repo.s.scalars(select(ErasureRequest.id).where(ErasureRequest.status == "pending")))
    for req_id in pending:
        complete(ctx, req_id)
    return len(pending)


def _fault(point: str) -> None:
    """Fault injection for the crash test only (FACESEARCH_TEST_CRASH=<point>)."""
    if os.environ.get("FACESEARCH_TEST_CRASH") == point:
        os._exit(75)


class Suppressions:
    """The active suppression embeddings of one model, decrypted once per use."""

    def __init__(self, ctx: AppContext, model_id: str) -> None:
        with ctx.repo() as repo:
            rows = repo.s.execute(select(Suppression.public_id, Suppression.ciphertext).where(
                Suppression.model_id == model_id, Suppression.lifted_at.is_(None))).all()
        self.vectors = (np.stack([np.frombuffer(ctx.cipher.decrypt(c, aad=f"suppression:{p}"), dtype=np.float32)
                                  for p, c in rows]) if rows else None)
        self.threshold = ctx.threshold_for(model_id).value

    def matches(self, embedding: np.ndarray) -> bool:
        return self.vectors is not None and bool((self.vectors @ embedding).max() > self.threshold)


def lift(ctx: AppContext, suppression_id: str, actor: str, reason: str | None = None,
         request_id: str | None = None) -> None:
    """Lift a suppression entry: later ingests keep the person's photos again (audited)."""
    from facesearch.errors import SuppressionAlreadyLifted, SuppressionNotFound

    reason = (reason or "").strip()[:500] or None
    with ctx.repo() as repo:
        row = repo.s.scalar(select(Suppression).where(Suppression.public_id == suppression_id))
        if row is None:
            raise SuppressionNotFound(f"suppression {suppression_id} does not exist")
        if row.lifted_at is not None:
            raise SuppressionAlreadyLifted(f"suppression {suppression_id} was lifted already")
        row.lifted_at, row.lifted_by, row.lift_reason = utcnow(), actor, reason
    ctx.audit.append(AuditAction.ERASURE, actor=actor, agency=None, target=f"suppression:{suppression_id}",
                     outcome=AuditOutcome.SUCCESS, request_id=request_id,
                     details={"change": "suppression_lifted", "reason": reason})


__all__ = ["AccessReport", "ErasureMatch", "FaceSearchError", "Suppressions", "access_report", "access_report_pdf",
           "add_suppressions", "complete", "erase", "find_matches", "find_matches_rgb", "image_items", "lift",
           "read_photos", "resume_pending"]


@dataclass(frozen=True)
class AccessReport:
    """Everything held about a person found by their photo, for an access request. It says how
    many searches returned each image, never who searched (that stays with the agencies' audit)."""

    generated_at: datetime
    images: tuple[dict[str, object], ...]
    suppressed: bool

    def to_json(self) -> dict[str, object]:
        return {"generated_at": self.generated_at.isoformat(), "images": list(self.images),
                "total_images": len(self.images), "suppressed": self.suppressed,
                "notice": "Matches were found by face similarity and should be checked by a person."}


def access_report(ctx: AppContext, photos: list[Path], actor: str = "privacy") -> AccessReport:
    return access_report_rgb(ctx, read_photos(ctx, photos), actor=actor, names=[str(p) for p in photos])


def access_report_rgb(ctx: AppContext, rgbs: list[np.ndarray], actor: str, names: list[str] | None = None,
                      request_id: str | None = None, fmt: str = "json") -> AccessReport:
    from sqlalchemy import func

    from facesearch.store.tables import SearchCandidate

    matches, probes = find_matches_rgb(ctx, rgbs, names)
    images = []
    with ctx.repo() as repo:
        for m in matches:
            img = repo.s.get(Image, m.image_id)
            searches = repo.s.scalar(select(func.count(func.distinct(SearchCandidate.search_id)))
                                     .where(SearchCandidate.image_id == m.image_id)) or 0
            images.append({"gallery": m.gallery, "image_id": m.image_id, "subject": m.subject,
                           "source_uri": img.source_uri, "legal_basis": img.legal_basis,
                           "warrant_ref": img.warrant_ref, "collector": img.collector,
                           "collected_at": img.collected_at.isoformat() if img.collected_at else None,
                           "ingested_at": img.ingested_at.isoformat(), "score": round(m.score, 4),
                           "searches_returned": int(searches)})
    suppressed = any(Suppressions(ctx, model).matches(emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0)))
                     for model, emb in probes.items())
    ctx.audit.append(AuditAction.AUDIT_READ, actor=actor, agency=None, target="access_request",
                     outcome=AuditOutcome.SUCCESS, request_id=request_id,
                     details={"images": len(images), "photos": len(rgbs), "format": fmt})
    return AccessReport(utcnow(), tuple(images), suppressed)


def access_report_pdf(report: AccessReport) -> bytes:
    """The access report as a PDF (the same content as the JSON)."""
    from fpdf import FPDF

    from facesearch.services.case_export import _Fonts

    fonts = _Fonts.load(json.dumps(report.to_json(), ensure_ascii=False))
    pdf = FPDF(format="A4")
    fonts.register(pdf)
    family = fonts.family
    pdf.add_page()
    pdf.set_font(family, "B", size=15)
    pdf.multi_cell(0, 8, "Access request: what is held about you", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=10)
    pdf.multi_cell(0, 6, f"Generated {report.generated_at:%Y-%m-%d %H:%M} UTC. {len(report.images)} image(s) held. "
                         + ("You are on the suppression list. " if report.suppressed else "")
                         + "Matches were found by face similarity and should be checked by a person.",
                   new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    for i in report.images:
        pdf.ln(3)
        lines = [f"Gallery: {i['gallery']}   image {i['image_id']}   similarity {i['score']}",
                 f"Source: {i['source_uri'] or 'not recorded'}", f"Legal basis: {i['legal_basis']}",
                 f"Collected: {i['collected_at'] or 'unknown'} by {i['collector'] or 'unknown'}; "
                 f"ingested {i['ingested_at']}",
                 f"Returned by {i['searches_returned']} search(es) (who searched is not disclosed here)."]
        if i["warrant_ref"]:
            lines.append(f"Court order / warrant: {i['warrant_ref']}")
        pdf.multi_cell(0, 5, fonts.clean("\n".join(lines)), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
