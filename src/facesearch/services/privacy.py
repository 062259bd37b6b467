"""The privacy officer's desk: erasure and access requests of the public, filed by photo through
the API and the web UI, and the suppression list. Every method checks the caller's permission
(``auth.permissions``) and writes the audit trail; the routes only translate HTTP.

An erasure request is two steps, so that a person confirms what a face comparison found:

1. :meth:`PrivacyDesk.file` decodes the uploaded photos in memory, finds every matching face in
   every gallery (:func:`erasure.find_matches_rgb`) and stores the request as
   ``pending_confirmation``. **The photos are never stored**: what is kept until confirmation is
   the person's probe embeddings, encrypted with the field key (AES-GCM, bound to the request's
   id), and the list of matches shown for review.
2. :meth:`PrivacyDesk.confirm` turns the request into ``pending`` and writes the suppression
   entries (the encrypted embeddings move there and leave the request) in one transaction, then
   :func:`erasure.complete` deletes; an interruption is completed at the next start
   (:func:`erasure.resume_pending`), and a finished request keeps only counts (``done``).

:meth:`PrivacyDesk.cancel` ends a request without erasing (``cancelled``) and drops its
embeddings and matches.
"""
from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import select, update

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth.permissions import Perm, Principal, require
from facesearch.errors import (ErasureNotPending, ErasureRequestNotFound, FaceSearchError, ImageTooLarge,
                               InvalidInput)
from facesearch.pipeline.decode import decode_image
from facesearch.services import erasure
from facesearch.services.context import AppContext
from facesearch.store.tables import ErasureRequest, Face, Image, Suppression, User

MAX_PHOTOS = 10
PENDING = "pending_confirmation"
#: A request neither confirmed nor cancelled within this time expires: the person's encrypted
#: embeddings and the matches are dropped (:func:`expire_pending`, run by the retention schedule).
PENDING_TTL = timedelta(days=30)
NOTICE = ("Matches were found by face similarity above a conservative threshold; a person must check "
          "every one before confirming. Confirming deletes the images, their faces and index entries in "
          "every gallery, and keeps only the person's face template, encrypted, on the suppression list.")


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _iso(dt: datetime | None) -> str | None:
    dt = _aware(dt)
    return dt.isoformat() if dt else None


@dataclass(frozen=True)
class MatchView:
    """One image of the person shown for confirmation; ``image_id`` is random and valid only
    within its request (stored images have no public id)."""

    request_id: str
    image_id: str
    gallery: str
    subject: str | None
    source_uri: str | None
    legal_basis: str | None
    score: float

    @property
    def thumbnail_url(self) -> str:
        return f"/api/v1/privacy/erasure-requests/{self.request_id}/images/{self.image_id}/thumbnail"

    def to_json(self) -> dict[str, object]:
        return {"image_id": self.image_id, "gallery": self.gallery, "subject": self.subject,
                "source_uri": self.source_uri, "legal_basis": self.legal_basis, "score": round(self.score, 4),
                "thumbnail_url": self.thumbnail_url}


@dataclass(frozen=True)
class ErasureRequestView:
    request_id: str
    status: str  # pending_confirmation | pending (erasing) | done | cancelled | expired
    created_at: datetime
    filed_by: str
    confirmed_by: str | None
    confirmed_at: datetime | None
    matches: tuple[MatchView, ...]
    images: int  # images listed (pending_confirmation) or erased (pending, done)
    galleries: int

    def to_json(self) -> dict[str, object]:
        return {"request_id": self.request_id, "status": self.status, "created_at": _iso(self.created_at),
                "filed_by": self.filed_by, "confirmed_by": self.confirmed_by,
                "confirmed_at": _iso(self.confirmed_at), "images": self.images, "galleries": self.galleries,
                "matches": [m.to_json() for m in self.matches], "notice": NOTICE}


@dataclass(frozen=True)
class ErasureOutcome:
    request_id: str
    status: str
    erased_images: int
    galleries: int
    suppressions: int

    def to_json(self) -> dict[str, object]:
        return {"request_id": self.request_id, "status": self.status, "erased_images": self.erased_images,
                "galleries": self.galleries, "suppressions": self.suppressions}


@dataclass(frozen=True)
class SuppressionView:
    suppression_id: str
    model: str
    created_at: datetime
    request_id: str | None
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None

    def to_json(self) -> dict[str, object]:
        return {"suppression_id": self.suppression_id, "model": self.model, "created_at": _iso(self.created_at),
                "request_id": self.request_id, "active": self.lifted_at is None,
                "lifted_at": _iso(self.lifted_at), "lifted_by": self.lifted_by, "lift_reason": self.lift_reason}


def _seal(ctx: AppContext, purpose: str, rid: str, plain: bytes) -> str:
    """Encrypted (field key, bound to the request and purpose), as text for a Text column."""
    return base64.b64encode(ctx.cipher.encrypt(plain, aad=f"{purpose}:{rid}")).decode("ascii")


def _unseal(ctx: AppContext, purpose: str, rid: str, sealed: str) -> bytes:
    return ctx.cipher.decrypt(base64.b64decode(sealed), aad=f"{purpose}:{rid}")


def _pack_probes(probes: dict[str, np.ndarray]) -> bytes:
    return json.dumps({m: {"shape": list(e.shape), "data": base64.b64encode(
        np.ascontiguousarray(e, dtype=np.float32).tobytes()).decode("ascii")} for m, e in probes.items()}).encode()


def _unpack_probes(raw: bytes) -> dict[str, np.ndarray]:
    return {m: np.frombuffer(base64.b64decode(v["data"]), dtype=np.float32).reshape(v["shape"])
            for m, v in json.loads(raw).items()}


class PrivacyDesk:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # helpers -----------------------------------------------------------------------------------
    def _decode(self, photos: list[bytes]) -> list[np.ndarray]:
        if not photos:
            raise InvalidInput("give at least one photo of the person")
        if len(photos) > MAX_PHOTOS:
            raise InvalidInput(f"give at most {MAX_PHOTOS} photos")
        s = self.ctx.settings
        out = []
        for i, data in enumerate(photos, 1):
            if len(data) > s.max_upload_bytes:
                raise ImageTooLarge(f"photo {i} is larger than {s.max_upload_bytes} bytes")
            out.append(decode_image(data, max_pixels=s.max_pixels, max_bytes=s.max_upload_bytes).rgb)
        return out

    def _audit(self, p: Principal, target: str, outcome: AuditOutcome, request_id: str | None,
               action: AuditAction = AuditAction.ERASURE, **details: object) -> None:
        self.ctx.audit.append(action, actor=p.audit_actor, agency=None, target=target, outcome=outcome,
                              request_id=request_id, details=details)

    def _row(self, repo, rid: str) -> ErasureRequest:  # noqa: ANN001
        row = repo.s.scalar(select(ErasureRequest).where(ErasureRequest.public_id == rid))
        if row is None:
            raise ErasureRequestNotFound(f"erasure request {rid} does not exist")
        return row

    def _matches(self, row: ErasureRequest) -> list[dict[str, object]]:
        """What was shown for confirmation (encrypted at rest: it names people)."""
        return json.loads(_unseal(self.ctx, "erasure-matches", row.public_id, row.matches)) if row.matches else []

    def _who(self, actor: str | None) -> str | None:
        """The user name behind a stored ``user:<public id>`` actor, for display only: staff names
        are stored encrypted in ``users`` and nowhere else (a stolen database names nobody)."""
        if not actor or not actor.startswith("user:"):
            return actor
        with self.ctx.repo() as repo:
            name = repo.s.scalar(select(User.username_key).where(User.public_id == actor.removeprefix("user:")))
        return name or actor

    def _view(self, row: ErasureRequest) -> ErasureRequestView:
        stored = self._matches(row)
        matches = tuple(MatchView(row.public_id, m["image_id"], m["gallery"], m["subject"], m["source_uri"],
                                  m["legal_basis"], m["score"]) for m in stored)
        items = json.loads(row.images)
        return ErasureRequestView(row.public_id, row.status, row.created_at, self._who(row.actor),
                                  self._who(row.confirmed_by), row.confirmed_at, matches, len(items),
                                  len({i[0] for i in items}))

    def _suppression(self, r: Suppression) -> SuppressionView:
        return SuppressionView(r.public_id, r.model_id, r.created_at, r.request_id, r.lifted_at,
                               self._who(r.lifted_by), r.lift_reason)

    # erasure -----------------------------------------------------------------------------------
    def file(self, p: Principal, photos: list[bytes], request_id: str | None = None) -> ErasureRequestView:
        """Find the person everywhere and keep the request for confirmation (nothing is deleted)."""
        require(p, Perm.ERASURE_REQUEST)
        require(p, Perm.ERASURE_MATCHES)
        try:
            rgbs = self._decode(photos)
            matches, probes = erasure.find_matches_rgb(self.ctx, rgbs)
        except FaceSearchError as e:
            self._audit(p, "erasure:new", AuditOutcome.FAILURE, request_id, step="filed", error=e.code,
                        photos=len(photos))
            raise
        rid = secrets.token_hex(16)
        shown = []
        with self.ctx.repo() as repo:
            for m in matches:
                img = repo.s.get(Image, m.image_id)
                shown.append({"image_id": secrets.token_hex(16), "gallery": m.gallery, "gallery_id": m.gallery_id,
                              "model_id": m.model_id, "image": m.image_id, "face": m.face_id,
                              "subject": m.subject, "source_uri": img.source_uri if img else None,
                              "legal_basis": img.legal_basis if img else None, "score": round(m.score, 4)})
            row = ErasureRequest(public_id=rid, created_at=datetime.now(timezone.utc), status=PENDING,
                                 actor=p.audit_actor, images=erasure.image_items(matches),
                                 matches=_seal(self.ctx, "erasure-matches", rid, json.dumps(shown).encode()),
                                 probes=self.ctx.cipher.encrypt(_pack_probes(probes), aad=f"erasure-probes:{rid}"))
            repo.s.add(row)
            repo.s.flush()
            view = self._view(row)
        self._audit(p, f"erasure:{rid}", AuditOutcome.SUCCESS, request_id, step="filed", photos=len(photos),
                    images=view.images, galleries=view.galleries)
        return view

    def get(self, p: Principal, rid: str, request_id: str | None = None) -> ErasureRequestView:
        require(p, Perm.ERASURE_MATCHES)
        with self.ctx.repo() as repo:
            view = self._view(self._row(repo, rid))
        self._audit(p, f"erasure:{rid}", AuditOutcome.SUCCESS, request_id, step="viewed")
        return view

    def recent(self, p: Principal, limit: int = 50) -> list[ErasureRequestView]:
        require(p, Perm.ERASURE_MATCHES)
        with self.ctx.repo() as repo:
            rows = repo.s.scalars(select(ErasureRequest).order_by(ErasureRequest.id.desc()).limit(limit))
            return [self._view(r) for r in rows]

    def thumbnail(self, p: Principal, rid: str, image_id: str, request_id: str | None = None) -> bytes:
        """The matching face of one listed image, while the request awaits confirmation."""
        from facesearch.pipeline.decode import read_image
        from facesearch.pipeline.thumbnails import face_thumbnail

        require(p, Perm.ERASURE_MATCHES)
        with self.ctx.repo() as repo:
            row = self._row(repo, rid)
            m = next((m for m in self._matches(row) if m["image_id"] == image_id), None)
            face = repo.s.get(Face, m["face"]) if m and m.get("face") else None
            img = repo.s.get(Image, m["image"]) if m else None
            if face is None or img is None or not img.original_path:
                raise ErasureRequestNotFound(f"image {image_id} is not part of erasure request {rid}")
            box, path = (face.x, face.y, face.w, face.h), img.original_path
        s = self.ctx.settings
        jpeg = face_thumbnail(read_image(path, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes).rgb, box)
        self._audit(p, f"erasure:{rid}/image:{image_id}", AuditOutcome.SUCCESS, request_id,
                    action=AuditAction.CANDIDATE_VIEW)
        return jpeg

    def _refused(self, p: Principal, rid: str, status: str, step: str, request_id: str | None) -> ErasureNotPending:
        self._audit(p, f"erasure:{rid}", AuditOutcome.FAILURE, request_id, step=step, error=ErasureNotPending.code)
        return ErasureNotPending(f"erasure request {rid} is {status}, not awaiting confirmation")

    def confirm(self, p: Principal, rid: str, request_id: str | None = None) -> ErasureOutcome:
        """Suppress the person and delete every listed image that still exists. The request
        leaves ``pending_confirmation`` exactly once: a second confirm, or one racing a cancel,
        is refused."""
        require(p, Perm.ERASURE_CONFIRM)
        now = datetime.now(timezone.utc)
        refused: str | None = None
        with self.ctx.repo() as repo:
            row = self._row(repo, rid)
            pk, status = row.id, row.status
            if status == PENDING:
                probes = _unpack_probes(self.ctx.cipher.decrypt(row.probes, aad=f"erasure-probes:{rid}"))
                items = json.loads(row.images)
                present = set(repo.s.scalars(select(Image.id).where(Image.id.in_([i[2] for i in items] or [-1]))))
                items = [i for i in items if i[2] in present]  # gone since (retention, another erasure)
                claimed = repo.s.execute(update(ErasureRequest).where(
                    ErasureRequest.id == pk, ErasureRequest.status == PENDING).values(
                    status="pending", images=json.dumps(items), probes=None, confirmed_by=p.audit_actor,
                    confirmed_at=now)).rowcount == 1
                if claimed:
                    suppressions = erasure.add_suppressions(self.ctx, repo, probes, now, rid)
                else:
                    refused = "no longer pending"
                    repo.s.rollback()
            else:
                refused = status
        if refused is not None:
            raise self._refused(p, rid, refused, "erased", request_id)
        erasure.complete(self.ctx, pk)
        outcome = ErasureOutcome(rid, "done", len(items), len({i[0] for i in items}), suppressions)
        self._audit(p, f"erasure:{rid}", AuditOutcome.SUCCESS, request_id, step="erased",
                    images=outcome.erased_images, galleries=outcome.galleries, suppressions=suppressions)
        return outcome

    def cancel(self, p: Principal, rid: str, request_id: str | None = None) -> ErasureRequestView:
        """End a request without erasing; its encrypted embeddings and matches are dropped."""
        require(p, Perm.ERASURE_REQUEST)
        with self.ctx.repo() as repo:
            row = self._row(repo, rid)
            status = row.status
            claimed = repo.s.execute(update(ErasureRequest).where(
                ErasureRequest.id == row.id, ErasureRequest.status == PENDING).values(
                status="cancelled", probes=None, matches=None)).rowcount == 1
        if not claimed:
            raise self._refused(p, rid, status, "cancelled", request_id)
        self._audit(p, f"erasure:{rid}", AuditOutcome.SUCCESS, request_id, step="cancelled")
        with self.ctx.repo() as repo:
            return self._view(self._row(repo, rid))

    # access requests ---------------------------------------------------------------------------
    def access_report(self, p: Principal, photos: list[bytes], request_id: str | None = None,
                      fmt: str = "json") -> erasure.AccessReport:
        require(p, Perm.ACCESS_REPORT)
        try:
            rgbs = self._decode(photos)
            return erasure.access_report_rgb(self.ctx, rgbs, actor=p.audit_actor, request_id=request_id, fmt=fmt)
        except FaceSearchError as e:
            self._audit(p, "access_request", AuditOutcome.FAILURE, request_id, action=AuditAction.AUDIT_READ,
                        error=e.code, photos=len(photos))
            raise

    def access_report_pdf(self, p: Principal, photos: list[bytes], request_id: str | None = None) -> bytes:
        return erasure.access_report_pdf(self.access_report(p, photos, request_id, fmt="pdf"))

    # suppression list --------------------------------------------------------------------------
    def suppressions(self, p: Principal, request_id: str | None = None) -> list[SuppressionView]:
        require(p, Perm.SUPPRESSION_LIST)
        with self.ctx.repo() as repo:
            stored = list(repo.s.scalars(select(Suppression).order_by(Suppression.id.desc())))
        rows = [self._suppression(r) for r in stored]
        self._audit(p, "suppressions", AuditOutcome.SUCCESS, request_id, step="suppressions_listed",
                    entries=len(rows))
        return rows

    def lift(self, p: Principal, suppression_id: str, reason: str, request_id: str | None = None) -> SuppressionView:
        """An administrator's decision, with its reason in the audit trail."""
        require(p, Perm.SUPPRESSION_LIFT)
        if not (reason or "").strip():
            raise InvalidInput("lifting a suppression needs a reason")
        erasure.lift(self.ctx, suppression_id, actor=p.audit_actor, reason=reason, request_id=request_id)
        with self.ctx.repo() as repo:
            r = repo.s.scalar(select(Suppression).where(Suppression.public_id == suppression_id))
        return self._suppression(r)


def expire_pending(ctx: AppContext, now: datetime | None = None, max_age: timedelta = PENDING_TTL) -> int:
    """Expire requests left awaiting confirmation longer than ``max_age`` (status ``expired``):
    nothing is deleted from the galleries, and nothing of the person stays with the request."""
    now = now or datetime.now(timezone.utc)
    with ctx.repo() as repo:
        rows = [(r.id, r.public_id, _aware(r.created_at)) for r in repo.s.scalars(
            select(ErasureRequest).where(ErasureRequest.status == PENDING))]
        stale = [(pk, rid) for pk, rid, at in rows if at is not None and now - at > max_age]
        for pk, _ in stale:
            repo.s.execute(update(ErasureRequest).where(ErasureRequest.id == pk, ErasureRequest.status == PENDING)
                           .values(status="expired", probes=None, matches=None))
    for _, rid in stale:
        ctx.audit.append(AuditAction.ERASURE, actor="retention", agency=None, target=f"erasure:{rid}",
                         outcome=AuditOutcome.SUCCESS, request_id=None, details={"step": "expired"})
    return len(stale)


__all__ = ["ErasureOutcome", "PENDING_TTL", "expire_pending", "ErasureRequestView", "MatchView", "NOTICE", "PrivacyDesk", "SuppressionView"]
