"""Searches and reviews as an agency's users do them: the safeguards (case number pattern,
purpose list, gallery access), dual review, and reading back searches, all scoped to the
caller's agency and all audited. The API and the web UI call these; no route holds logic."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import or_, select

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth.permissions import Perm, Principal, require
from facesearch.errors import (CaseNumberRejected, FaceSearchError, GalleryNotFound, InvalidInput,
                               PurposeRejected, SearchNotFound)
from facesearch.pipeline.decode import decode_image
from facesearch.services.accounts import Accounts, public_id
from facesearch.services.context import AppContext
from facesearch.services.search import SearchRequest, SearchService, require_case_info
from facesearch.store.tables import (Face, Gallery, GalleryGrant, Image, Review, Search, SearchCandidate,
                                     User)
from facesearch.types import SearchResult

NOTICE = ("Candidates are investigative leads, not identifications. A candidate counts as a match "
          "only after two different people of the agency confirm it.")


@dataclass(frozen=True)
class CandidateView:
    candidate_id: str
    rank: int
    subject: str | None
    score: float
    source_uri: str | None
    legal_basis: str | None
    collector: str | None = None
    warrant_ref: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"candidate_id": self.candidate_id, "rank": self.rank, "subject": self.subject,
                "score": round(self.score, 4), "thumbnail_url": f"/api/v1/candidates/{self.candidate_id}/thumbnail",
                "source_uri": self.source_uri, "legal_basis": self.legal_basis, "collector": self.collector,
                "warrant_ref": self.warrant_ref}


@dataclass(frozen=True)
class ReviewView:
    review_id: str
    candidate_id: str
    reviewer: str
    decision: str
    note: str
    at: datetime

    def to_json(self) -> dict[str, object]:
        return {"review_id": self.review_id, "candidate_id": self.candidate_id, "reviewer": self.reviewer,
                "decision": self.decision, "note": self.note, "at": self.at.isoformat()}


@dataclass(frozen=True)
class SearchView:
    search_id: str
    case_number: str
    purpose: str
    authorization_ref: str | None
    gallery: str | None
    searched_by: str | None
    at: datetime
    threshold: float
    threshold_meaning: str
    candidates: tuple[CandidateView, ...]
    reviews: tuple[ReviewView, ...] = ()
    status: str = "unreviewed"

    def to_json(self, with_reviews: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "search_id": self.search_id, "notice": NOTICE,
            "threshold": round(self.threshold, 4), "threshold_meaning": self.threshold_meaning,
            "case_number": self.case_number, "purpose": self.purpose,
            "authorization_ref": self.authorization_ref, "gallery": self.gallery,
            "searched_by": self.searched_by, "at": self.at.isoformat(),
            "candidates": [c.to_json() for c in self.candidates],
        }
        if with_reviews:
            out["status"] = self.status
            out["reviews"] = [r.to_json() for r in self.reviews]
        return out


def review_status(candidate_ids: list[str], reviews: list[ReviewView]) -> str:
    """``match_confirmed`` once two distinct users confirmed the same candidate; ``no_match``
    once every candidate was rejected (or there were none to review); else ``unreviewed``."""
    confirmers: dict[str, set[str]] = {}
    rejected: set[str] = set()
    for r in reviews:
        if r.decision == "confirm":
            confirmers.setdefault(r.candidate_id, set()).add(r.reviewer)
        else:
            rejected.add(r.candidate_id)
    if any(len(users) >= 2 for users in confirmers.values()):
        return "match_confirmed"
    if reviews and set(candidate_ids) <= rejected:
        return "no_match"
    return "unreviewed"


class Casework:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.accounts = Accounts(ctx)

    # safeguards --------------------------------------------------------------------------------
    def _check_case(self, p: Principal, case_number: str | None, purpose: str | None) -> tuple[str, str]:
        case, why = require_case_info(case_number, purpose)
        agency = self.accounts.agency_by_id(p.agency_id)
        if not re.fullmatch(agency.case_pattern, case):
            raise CaseNumberRejected(f"the case number does not match the agency's pattern {agency.case_pattern}")
        if why not in agency.purposes:
            raise PurposeRejected(f"purpose must be one of the agency's purposes: {', '.join(agency.purposes)}")
        return case, why

    def _gallery_for(self, p: Principal, name: str) -> Gallery:
        """A gallery the caller's agency owns or was granted; any other answers 'not found'."""
        with self.ctx.repo() as repo:
            g = repo.s.scalar(select(Gallery).where(Gallery.name == name))
            if g is not None and g.agency_id != p.agency_id:
                granted = repo.s.get(GalleryGrant, (g.id, p.agency_id)) if p.agency_id else None
                if granted is None:
                    g = None
            if g is None:
                raise GalleryNotFound(f"gallery {name!r} does not exist")
            return g

    def galleries(self, p: Principal) -> list[dict[str, object]]:
        require(p, Perm.GALLERY_LIST)
        with self.ctx.repo() as repo:
            q = select(Gallery).order_by(Gallery.name)
            if p.agency_id is not None:
                q = q.where(or_(Gallery.agency_id == p.agency_id, Gallery.id.in_(
                    select(GalleryGrant.gallery_id).where(GalleryGrant.agency_id == p.agency_id))))
            return [{"name": g.name, "model": g.model_id, "own": g.agency_id == p.agency_id}
                    for g in repo.s.scalars(q)]

    # search ------------------------------------------------------------------------------------
    def search(self, p: Principal, image: bytes, gallery: str, case_number: str | None, purpose: str | None,
               authorization_ref: str | None = None, face_index: int | None = None,
               request_id: str | None = None) -> SearchView:
        require(p, Perm.SEARCH_CREATE)
        target = f"gallery:{gallery}"
        try:
            case, why = self._check_case(p, case_number, purpose)
            if len(image) > self.ctx.settings.max_upload_bytes:
                from facesearch.errors import ImageTooLarge

                raise ImageTooLarge(f"the upload is larger than {self.ctx.settings.max_upload_bytes} bytes")
            g = self._gallery_for(p, gallery)
            s = self.ctx.settings
            decoded = decode_image(image, max_pixels=s.max_pixels, max_bytes=s.max_upload_bytes)
            result = SearchService(self.ctx).search_image(
                decoded, SearchRequest(gallery=g.name, case_number=case, purpose=why, top_k=10,
                                       face_index=face_index),
                agency_id=p.agency_id, user_id=p.user_id, authorization_ref=(authorization_ref or None),
                record_no_face=False)
            self._store_probe(result.search_id, decoded.rgb)
        except FaceSearchError as e:
            self.ctx.audit.append(AuditAction.SEARCH, actor=p.audit_actor, agency=p.audit_agency, target=target,
                                  outcome=AuditOutcome.FAILURE, request_id=request_id,
                                  details={"error": e.code})
            raise
        self.ctx.audit.append(AuditAction.SEARCH, actor=p.audit_actor, agency=p.audit_agency,
                              target=f"search:{result.public_id}", outcome=AuditOutcome.SUCCESS,
                              request_id=request_id,
                              details={"gallery": g.name, "candidates": len(result.faces[0].candidates)})
        return self._view_of_result(result, p)

    def _store_probe(self, search_pk: int, rgb) -> None:  # noqa: ANN001
        """Keep the probe for review and the case export: re-encoded as JPEG (which drops all
        metadata) and encrypted with the field key; never written as a plain file."""
        import io

        from PIL import Image as PILImage

        from facesearch.store.tables import ProbeImage

        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
        blob = self.ctx.cipher.encrypt(buf.getvalue(), aad=f"probe:{search_pk}")
        with self.ctx.repo() as repo:
            repo.s.add(ProbeImage(search_id=search_pk, ciphertext=blob, created_at=self.accounts.clock()))

    def probe_jpeg(self, p: Principal, search_id: str) -> bytes | None:
        """The decrypted probe of one of the agency's searches (None when not kept)."""
        from facesearch.store.tables import ProbeImage

        require(p, Perm.SEARCH_READ)
        with self.ctx.repo() as repo:
            s = self._search_row(repo, p, search_id)
            row = repo.s.get(ProbeImage, s.id)
            if row is None:
                return None
            return self.ctx.cipher.decrypt(row.ciphertext, aad=f"probe:{s.id}")

    def _view_of_result(self, r: SearchResult, p: Principal) -> SearchView:
        face = r.faces[0]
        cands = tuple(CandidateView(c.candidate_id or "", i, c.subject, c.score, c.source_uri, c.legal_basis,
                                    c.collector, c.warrant_ref)
                      for i, c in enumerate(face.candidates, 1))
        return SearchView(r.public_id, r.case_number, r.purpose, None, r.gallery, p.username, r.created_at,
                          r.threshold.value, r.threshold.meaning, cands)

    # reading -----------------------------------------------------------------------------------
    def _search_row(self, repo, p: Principal, search_id: str) -> Search:  # noqa: ANN001
        s = repo.s.scalar(select(Search).where(Search.public_id == search_id))
        if s is None or s.agency_id is None or s.agency_id != p.agency_id:
            raise SearchNotFound(f"search {search_id} does not exist")
        return s

    def get(self, p: Principal, search_id: str, request_id: str | None = None) -> SearchView:
        require(p, Perm.SEARCH_READ)
        with self.ctx.repo() as repo:
            view = self._view(repo, self._search_row(repo, p, search_id))
        return view

    def list(self, p: Principal, case_number: str | None = None, limit: int = 200) -> list[SearchView]:
        require(p, Perm.SEARCH_READ)
        with self.ctx.repo() as repo:
            q = select(Search).where(Search.agency_id == p.agency_id).order_by(Search.id.desc()).limit(limit)
            if case_number:
                q = q.where(repo.searches_of_case(case_number))
            return [self._view(repo, s) for s in repo.s.scalars(q)]

    def _view(self, repo, s: Search) -> SearchView:  # noqa: ANN001
        rows = repo.s.execute(
            select(SearchCandidate, Image.subject, Image.source_uri, Image.legal_basis, Image.collector,
                   Image.warrant_ref)
            .outerjoin(Image, Image.id == SearchCandidate.image_id)
            .where(SearchCandidate.search_id == s.id).order_by(SearchCandidate.probe_face, SearchCandidate.rank)
        ).all()
        cands = tuple(CandidateView(c.public_id, c.rank, subj, c.score, src, basis, coll, wr)
                      for c, subj, src, basis, coll, wr in rows)
        by_pk = {c.id: c.public_id for c, *_ in rows}
        reviews = tuple(
            ReviewView(r.public_id, by_pk.get(r.candidate_id, ""), name or "(deleted user)", r.decision, r.note,
                       r.created_at)
            for r, name in repo.s.execute(
                select(Review, User.username_key).outerjoin(User, User.id == Review.user_id)
                .where(Review.search_id == s.id).order_by(Review.id)).all())
        user = repo.s.get(User, s.user_id) if s.user_id else None
        gallery = repo.s.get(Gallery, s.gallery_id) if s.gallery_id else None
        meaning = self.ctx.threshold_for(s.model_id).meaning
        return SearchView(s.public_id, s.case_number, s.purpose, s.authorization_ref,
                          gallery.name if gallery else None, user.username_key if user else None, s.created_at,
                          s.threshold, meaning, cands, reviews,
                          review_status([c.candidate_id for c in cands], list(reviews)))

    # review ------------------------------------------------------------------------------------
    def review(self, p: Principal, search_id: str, candidate_id: str, decision: str, note: str,
               request_id: str | None = None) -> SearchView:
        require(p, Perm.REVIEW_CREATE)
        if decision not in ("confirm", "reject"):
            raise InvalidInput("decision must be 'confirm' or 'reject'")
        with self.ctx.repo() as repo:
            s = self._search_row(repo, p, search_id)
            c = repo.s.scalar(select(SearchCandidate).where(SearchCandidate.public_id == candidate_id,
                                                            SearchCandidate.search_id == s.id))
            if c is None:
                raise SearchNotFound(f"candidate {candidate_id} is not part of search {search_id}")
            repo.s.add(Review(public_id=public_id(), search_id=s.id, candidate_id=c.id, user_id=p.user_id,
                              decision=decision, note=(note or "")[:4000], created_at=self.accounts.clock()))
            repo.s.flush()
            view = self._view(repo, s)
        self.ctx.audit.append(AuditAction.REVIEW, actor=p.audit_actor, agency=p.audit_agency,
                              target=f"search:{search_id}/candidate:{candidate_id}", outcome=AuditOutcome.SUCCESS,
                              request_id=request_id, details={"decision": decision, "status": view.status})
        return view

    # candidate thumbnails ----------------------------------------------------------------------
    def thumbnail(self, p: Principal, candidate_id: str, request_id: str | None = None) -> bytes:
        """The candidate's face, cropped from the stored image, as JPEG (audited as a view)."""
        require(p, Perm.CANDIDATE_VIEW)
        with self.ctx.repo() as repo:
            row = repo.s.execute(
                select(SearchCandidate, Search.agency_id, Face, Image.original_path)
                .join(Search, Search.id == SearchCandidate.search_id)
                .outerjoin(Face, Face.id == SearchCandidate.face_id)
                .outerjoin(Image, Image.id == SearchCandidate.image_id)
                .where(SearchCandidate.public_id == candidate_id)).first()
            if row is None or row[1] != p.agency_id or row[2] is None:
                raise SearchNotFound(f"candidate {candidate_id} does not exist")
            _, _, face, path = row
            box = (face.x, face.y, face.w, face.h)
        from facesearch.pipeline.decode import read_image
        from facesearch.pipeline.thumbnails import face_thumbnail

        s = self.ctx.settings
        img = read_image(path, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes)
        jpeg = face_thumbnail(img.rgb, box)
        self.ctx.audit.append(AuditAction.CANDIDATE_VIEW, actor=p.audit_actor, agency=p.audit_agency,
                              target=f"candidate:{candidate_id}", outcome=AuditOutcome.SUCCESS,
                              request_id=request_id)
        return jpeg


class Oversight:
    """What supervisors see: the agency's searches counted and flagged, and case exports."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.casework = Casework(ctx)

    def report(self, p: Principal, request_id: str | None = None) -> dict[str, object]:
        from facesearch.services.oversight import SearchFact, oversee

        require(p, Perm.OVERSIGHT_READ)
        views = self.casework.list(p, limit=5000)
        with self.ctx.repo() as repo:
            hashes = dict(repo.s.execute(select(Search.public_id, Search.probe_sha256)
                                         .where(Search.agency_id == p.agency_id)).all())
        facts = [SearchFact(search_id=v.search_id, user=v.searched_by or "(deleted user)", case_number=v.case_number,
                            at=v.at if v.at.tzinfo else v.at.replace(tzinfo=timezone.utc),
                            probe_sha256=hashes.get(v.search_id, ""), probe_embedding=None,
                            reviewed=bool(v.reviews), candidates=len(v.candidates)) for v in views]
        report = oversee(facts, None, self.casework.accounts.clock())
        self.ctx.audit.append(AuditAction.AUDIT_READ, actor=p.audit_actor, agency=p.audit_agency, target="oversight",
                              outcome=AuditOutcome.SUCCESS, request_id=request_id,
                              details={"searches": len(facts)})
        return report.to_json()

    def _actor_names(self, actors: set[str]) -> dict[str, str]:
        """The user names behind audit actors (``user:<public id>``), decrypted for the export."""
        ids = [a.split(":", 1)[1] for a in actors if a.startswith("user:")]
        if not ids:
            return {}
        with self.ctx.repo() as repo:
            return {f"user:{pid}": name for pid, name in repo.s.execute(
                select(User.public_id, User.username_key).where(User.public_id.in_(ids))).all()}

    def _pack_notice(self, gallery: str | None) -> str | None:
        """The licence notice of the model pack a gallery is bound to (None when unrestricted)."""
        if not gallery:
            return None
        with self.ctx.repo() as repo:
            g = repo.find_gallery(gallery)
        return self.ctx.packs.for_embedder(g.model_id).notice() if g else None

    def case_pdf(self, p: Principal, case_number: str, request_id: str | None = None) -> bytes:
        from facesearch.services.case_export import CaseAuditLine, CaseCandidate, CaseReview, CaseSearch, case_pdf

        require(p, Perm.CASE_EXPORT)
        views = [v for v in self.casework.list(p, case_number=case_number, limit=5000)]
        if not views:
            raise SearchNotFound("no searches of this case number")
        searches = []
        for v in reversed(views):
            cands = []
            for c in v.candidates:
                try:
                    thumb = self.casework.thumbnail(p, c.candidate_id, request_id=request_id)
                except FaceSearchError:
                    thumb = None  # erased since, or the stored file is gone
                cands.append(CaseCandidate(c.candidate_id, c.rank, c.subject, c.score, c.source_uri, c.legal_basis,
                                           thumb))
            searches.append(CaseSearch(
                search_id=v.search_id, at=v.at, user=v.searched_by or "", gallery=v.gallery or "",
                purpose=v.purpose, authorization_ref=v.authorization_ref,
                probe_jpeg=self.casework.probe_jpeg(p, v.search_id),
                threshold=v.threshold, threshold_meaning=v.threshold_meaning, candidates=cands,
                reviews=[CaseReview(r.candidate_id, r.reviewer, r.decision, r.note, r.at) for r in v.reviews],
                status=v.status))
        targets = {f"search:{v.search_id}" for v in views}
        records = [r for r in self.ctx.audit.records(agency=p.audit_agency, limit=100_000)
                   if (r.target or "").split("/")[0] in targets]
        names = self._actor_names({r.actor for r in records})
        audit = [CaseAuditLine(r.at, names.get(r.actor, r.actor), r.action, r.target or "", r.outcome)
                 for r in records]
        terms = sorted({n for n in (self._pack_notice(v.gallery) for v in views) if n})
        pdf = case_pdf(case_number, p.agency_name or "", searches, audit, generated_by=p.username,
                       generated_at=self.casework.accounts.clock(), model_terms=" ".join(terms) or None)
        self.ctx.audit.append(AuditAction.EXPORT, actor=p.audit_actor, agency=p.audit_agency,
                              target=f"case:{len(case_number)}-chars", outcome=AuditOutcome.SUCCESS,
                              request_id=request_id, details={"searches": len(searches)})
        return pdf


def grant_gallery(ctx: AppContext, gallery: str, agency: str, actor: str, request_id: str | None = None) -> None:
    """Let another agency search a gallery (system administrators only, through the API)."""
    from facesearch.store.repository import utcnow

    target = Accounts(ctx).agency(agency)
    with ctx.repo() as repo:
        g = repo.get_gallery(gallery)
        if repo.s.get(GalleryGrant, (g.id, target.id)) is None:
            repo.s.add(GalleryGrant(gallery_id=g.id, agency_id=target.id, granted_at=utcnow()))
    ctx.audit.append(AuditAction.GALLERY_GRANT, actor=actor, agency=target.public_id, target=f"gallery:{gallery}",
                     outcome=AuditOutcome.SUCCESS, request_id=request_id)


def model_notices(ctx: AppContext, p: Principal) -> tuple[str, ...]:
    """The licence notices of restricted model packs behind the galleries this user can reach
    (and of the configured pack): shown in the web UI's footer."""
    with ctx.repo() as repo:
        q = select(Gallery.model_id).distinct()
        if p.agency_id is not None:
            q = q.where(or_(Gallery.agency_id == p.agency_id, Gallery.id.in_(
                select(GalleryGrant.gallery_id).where(GalleryGrant.agency_id == p.agency_id))))
        models = set(repo.s.scalars(q))
    packs = {ctx.packs.for_embedder(m).id: ctx.packs.for_embedder(m) for m in models}
    packs.setdefault(ctx.settings.model, ctx.packs.get(ctx.settings.model))
    return tuple(sorted(n for n in (pk.notice() for pk in packs.values()) if n))
