"""Search: probe photo + case number + purpose -> ranked candidate subjects with provenance.

Faces of the same subject are ranked as one candidate. The index returns the nearest faces;
their subjects' scores are fused (see ``fuse``) and the best ``top_k`` subjects are returned,
each shown through its best-matching image. Every search is recorded with its case number,
purpose, probe hash and candidates, including searches that found no face.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from facesearch.errors import FaceIndexOutOfRange, MissingCaseInfo, ModelMismatch, NoFaceFound
from facesearch.index.base import VectorIndex
from facesearch.pipeline.decode import DecodedImage, decode_image, read_image
from facesearch.pipeline.pipeline import FacePipeline
from facesearch.services.context import AppContext
from facesearch.store.repository import FaceRecord, Repository
from facesearch.types import BBox, Candidate, Face, ProbeFaceResult, SearchResult

FUSION_MODES = ("max", "template", "max+template")


@dataclass(frozen=True)
class SearchRequest:
    gallery: str
    case_number: str
    purpose: str
    top_k: int = 10
    all_faces: bool = False
    face_index: int | None = None  # pick one face by index (largest first); default the largest


def require_case_info(case_number: str | None, purpose: str | None) -> tuple[str, str]:
    case = (case_number or "").strip()
    why = (purpose or "").strip()
    if not case:
        raise MissingCaseInfo("a case number is required for every search")
    if not why:
        raise MissingCaseInfo("a purpose is required for every search")
    return case, why


def fuse(
    probe: np.ndarray, hits: list[tuple[int, float]], records: dict[int, FaceRecord],
    templates: dict[str, np.ndarray], mode: str,
) -> list[tuple[str, float, int]]:
    """Group face hits by subject: [(subject key, fused score, best face id)], best first.

    ``max``: the best face's score. ``template``: similarity to the subject's quality-weighted
    mean embedding. ``max+template``: the mean of the two. Faces without a subject label are
    their own candidates.
    """
    best: dict[str, tuple[float, int]] = {}
    for fid, score in hits:
        rec = records.get(fid)
        if rec is None:
            continue
        key = rec.subject if rec.subject is not None else f"\0image:{rec.image_id}"
        if key not in best or score > best[key][0]:
            best[key] = (score, fid)
    out = []
    for key, (score, fid) in best.items():
        t = templates.get(key)
        if mode != "max" and t is not None:
            ts = float(probe @ t)
            score = ts if mode == "template" else (score + ts) / 2
        out.append((key, float(score), fid))
    out.sort(key=lambda r: -r[1])
    return out


def subject_templates(repo: Repository, gallery_id: int, model_id: str, subjects: list[str]
                      ) -> dict[str, np.ndarray]:
    out = {}
    for subj, (_ids, vecs, quality) in repo.subject_embeddings(gallery_id, model_id, subjects).items():
        w = np.clip(quality, 0.05, None)[:, None]
        t = (vecs * w).sum(axis=0)
        out[subj] = (t / (np.linalg.norm(t) + 1e-12)).astype(np.float32)
    return out


class SearchService:
    def __init__(self, ctx: AppContext, fusion: str = "max+template") -> None:
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}")
        self.ctx = ctx
        self.fusion = fusion

    def search_path(self, path: Path, req: SearchRequest) -> SearchResult:
        require_case_info(req.case_number, req.purpose)
        s = self.ctx.settings
        return self.search_image(read_image(path, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes), req)

    def search_bytes(self, data: bytes, req: SearchRequest) -> SearchResult:
        require_case_info(req.case_number, req.purpose)
        s = self.ctx.settings
        return self.search_image(decode_image(data, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes), req)

    def probe_faces(self, image: DecodedImage, req: SearchRequest, pipeline: FacePipeline) -> list[Face]:
        faces = pipeline.analyze(image.rgb)  # largest first
        if not faces:
            return []
        if req.all_faces:
            return faces
        i = req.face_index or 0
        if not 0 <= i < len(faces):
            raise FaceIndexOutOfRange(f"face index {i} is out of range: the probe has {len(faces)} face(s)")
        return [faces[i]]

    def search_image(self, image: DecodedImage, req: SearchRequest, *, agency_id: int | None = None,
                     user_id: int | None = None, authorization_ref: str | None = None,
                     record_no_face: bool = True) -> SearchResult:
        """Search with a probe photo, embedded by the model the gallery is bound to."""
        require_case_info(req.case_number, req.purpose)
        with self.ctx.repo() as repo:
            g = repo.get_gallery(req.gallery)
        pipeline = self.ctx.pipeline_for_model(g.model_id)  # refuses a pack whose licence is not accepted
        probes = self.probe_faces(image, req, pipeline)
        if not probes and not record_no_face:
            raise NoFaceFound("no face found in the probe image")
        return self.search_faces(probes, req, probe_sha256=image.info.sha256, agency_id=agency_id,
                                 user_id=user_id, authorization_ref=authorization_ref)

    def search_faces(self, probes: list[Face], req: SearchRequest, probe_sha256: str, *,
                     agency_id: int | None = None, user_id: int | None = None,
                     authorization_ref: str | None = None) -> SearchResult:
        """Search with faces already embedded; each must come from the gallery's model."""
        case, purpose = require_case_info(req.case_number, req.purpose)
        ctx = self.ctx
        with ctx.repo() as repo:
            g = repo.get_gallery(req.gallery)
        for f in probes:
            if f.model_id != g.model_id:
                raise ModelMismatch(
                    f"gallery {g.name!r} holds faces of model {g.model_id!r}; the probe was embedded with "
                    f"{f.model_id!r}; mixing models is refused"
                )
        threshold = ctx.threshold_for(g.model_id)
        pack = ctx.packs.for_embedder(g.model_id)
        results: list[ProbeFaceResult] = []
        recorded: list[tuple[int, int, int | None, int | None, float]] = []
        with ctx.repo() as repo:
            for pi, face in enumerate(probes):
                with ctx.reading_index(repo, g.id, g.model_id) as index:  # only for the search itself
                    hits = self._hits(index, face, req.top_k)
                cands = self._candidates(repo, hits, g.id, g.model_id, g.name, face, req.top_k)
                results.append(ProbeFaceResult(bbox=face.bbox, quality=face.quality, candidates=tuple(cands)))
                recorded += [(pi, r, c.face_id, c.image_id, c.score) for r, c in enumerate(cands, 1)]
            search_id, when, public_id, cand_ids = repo.record_search(
                case_number=case, purpose=purpose, gallery_id=g.id, model_id=g.model_id,
                probe_sha256=probe_sha256, probe_faces=len(probes), top_k=req.top_k,
                threshold=threshold.value, candidates=recorded, agency_id=agency_id, user_id=user_id,
                authorization_ref=authorization_ref,
            )
        if not probes:
            raise NoFaceFound(f"no face found in the probe image (search {search_id} recorded)")
        ids = iter(cand_ids)
        results = [replace(r, candidates=tuple(replace(c, candidate_id=next(ids)) for c in r.candidates))
                   for r in results]
        return SearchResult(
            search_id=search_id, gallery=g.name, case_number=case, purpose=purpose, threshold=threshold,
            faces=tuple(results), model_id=g.model_id, created_at=when, model_terms=pack.terms(),
            public_id=public_id,
        )

    @staticmethod
    def _hits(index: VectorIndex, face: Face, top_k: int) -> list[tuple[int, float]]:
        """The index's nearest faces (id, score), more than ``top_k`` so that fusion can reorder."""
        if index.ntotal == 0:
            return []
        k = min(index.ntotal, max(100, top_k * 10))
        d, i = index.search(face.embedding[None, :].astype(np.float32), k)
        return [(int(fid), float(s)) for fid, s in zip(i[0], d[0]) if fid >= 0]

    def _candidates(self, repo: Repository, hits: list[tuple[int, float]], gallery_id: int, model_id: str,
                    gallery: str, face: Face, top_k: int) -> list[Candidate]:
        if not hits:
            return []
        records = repo.face_records([fid for fid, _ in hits])
        subjects = sorted({r.subject for r in records.values() if r.subject is not None})
        templates = subject_templates(repo, gallery_id, model_id, subjects) if self.fusion != "max" else {}
        fused = fuse(face.embedding, hits, records, templates, self.fusion)[:top_k]
        out = []
        for _key, score, fid in fused:
            rec = records[fid]
            out.append(Candidate(
                subject=rec.subject, score=score, image_id=rec.image_id, face_id=fid, path=rec.path,
                source_uri=rec.source_uri, legal_basis=rec.legal_basis, bbox=BBox(*rec.box), gallery=gallery,
                collector=rec.collector, collected_at=rec.collected_at, warrant_ref=rec.warrant_ref,
            ))
        return out
