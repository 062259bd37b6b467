"""The public transparency notice: what the operator holds, on which legal bases, how long it
is kept, and how a person asks for access or erasure. Generated from the live configuration
and database, never written by hand; it names no agency, user or search."""
from __future__ import annotations

from sqlalchemy import func, select

from facesearch.services.context import AppContext
from facesearch.store.tables import Face, Gallery, Image


def transparency_notice(ctx: AppContext) -> dict[str, object]:
    s = ctx.settings
    with ctx.repo() as repo:
        rows = repo.s.execute(
            select(Gallery.id, Gallery.retention_days, Gallery.model_id).order_by(Gallery.id)).all()
        galleries = []
        for gid, days, model in rows:
            images = repo.s.scalar(select(func.count()).select_from(Image).where(Image.gallery_id == gid)) or 0
            faces = repo.s.scalar(select(func.count()).select_from(Face).where(Face.gallery_id == gid)) or 0
            bases = sorted(set(repo.s.scalars(select(Image.legal_basis).where(Image.gallery_id == gid).distinct())))
            pack = ctx.packs.for_embedder(model)
            galleries.append({"images": images, "faces": faces, "legal_bases": bases,
                              "retention_days": days, "model_pack": pack.id, "model_license": pack.license})
    return {
        "operator": s.operator_name,
        "holdings": {"galleries": len(galleries), "images": sum(g["images"] for g in galleries),
                     "faces": sum(g["faces"] for g in galleries), "by_gallery": galleries},
        "retention": {"probe_images_days": s.probe_retention_days, "search_records_days": s.search_retention_days,
                      "audit_records": "kept for at least one year; never deleted by the retention schedule",
                      "gallery_images": "as set per gallery above (none: until erased)"},
        "safeguards": ["Only galleries the operator lawfully holds; no images scraped from social networks or "
                       "web pages unless a court order or warrant covers them.",
                       "Every search needs a case number and a purpose and is recorded in an audit trail.",
                       "Candidates are investigative leads, not identifications; a match needs two reviewers.",
                       "No public or anonymous search, no live video identification."],
        "your_rights": {"contact": s.privacy_contact,
                        "access": "You may ask what is held about you: send a photo of yourself to the contact "
                                  "above; you receive a report of the images held, their sources and legal bases.",
                        "erasure": "You may ask for erasure: matching faces are found by your photo, confirmed "
                                   "by a person and deleted, and you stay on a suppression list.",
                        "how_requests_are_handled": "The operator's privacy officer files your request in the "
                                                    "service (the privacy requests pages, or the API under "
                                                    "/api/v1/privacy/); your photo is used only to find you and "
                                                    "is not stored."},
    }
