"""Queries of the engine's tables. Every read and write of galleries, images, faces and
searches goes through here; no SQL is written anywhere else, and all of it is parameterised."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from facesearch.errors import GalleryNotFound
from facesearch.auth.lockout import normalise_user_name
from facesearch.store.crypto import Keyring
from facesearch.store.fields import keyring_of
from facesearch.store.tables import (Agency, Face, Gallery, Image, Lockout, ReembedImage, Search, SearchCandidate,
                                     User)
from facesearch.types import Face as PipelineFace


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class GalleryInfo:
    id: int
    name: str
    model_id: str
    legal_basis: str | None
    created_at: datetime
    agency_id: int | None = None


@dataclass(frozen=True)
class GalleryStats:
    name: str
    model_id: str
    images: int
    faces: int
    subjects: int
    no_face_images: int

    def to_json(self) -> dict[str, object]:
        return {"gallery": self.name, "model": self.model_id, "images": self.images,
                "faces": self.faces, "subjects": self.subjects, "no_face_images": self.no_face_images}


@dataclass(frozen=True)
class FaceRecord:
    """A stored face joined with its image's provenance (what a candidate shows)."""

    face_id: int
    image_id: int
    subject: str | None
    path: str | None
    source_uri: str | None
    legal_basis: str
    box: tuple[int, int, int, int]
    quality: float
    collector: str | None = None
    collected_at: datetime | None = None
    warrant_ref: str | None = None


def _info(g: Gallery) -> GalleryInfo:
    return GalleryInfo(g.id, g.name, g.model_id, g.legal_basis, g.created_at, g.agency_id)


class Repository:
    def __init__(self, session: Session) -> None:
        self.s = session

    # galleries ----------------------------------------------------------------------------
    def get_gallery(self, name: str) -> GalleryInfo:
        g = self.s.scalar(select(Gallery).where(Gallery.name == name))
        if g is None:
            raise GalleryNotFound(f"gallery {name!r} does not exist")
        return _info(g)

    def gallery_by_id(self, gallery_id: int) -> GalleryInfo:
        g = self.s.get(Gallery, gallery_id)
        if g is None:
            raise GalleryNotFound(f"gallery {gallery_id} does not exist")
        return _info(g)

    def find_gallery(self, name: str) -> GalleryInfo | None:
        g = self.s.scalar(select(Gallery).where(Gallery.name == name))
        return _info(g) if g else None

    def create_gallery(self, name: str, model_id: str, legal_basis: str | None,
                       agency_id: int | None = None) -> GalleryInfo:
        g = Gallery(name=name, model_id=model_id, legal_basis=legal_basis, created_at=utcnow(), agency_id=agency_id)
        self.s.add(g)
        self.s.flush()
        return _info(g)

    def list_galleries(self) -> list[GalleryInfo]:
        return [_info(g) for g in self.s.scalars(select(Gallery).order_by(Gallery.name))]

    def gallery_stats(self, gallery: GalleryInfo) -> GalleryStats:
        images = self.s.scalar(select(func.count()).select_from(Image).where(Image.gallery_id == gallery.id))
        faces = self.s.scalar(select(func.count()).select_from(Face).where(
            Face.gallery_id == gallery.id, Face.model_id == gallery.model_id))
        subjects = self.s.scalar(
            select(func.count(func.distinct(Image.subject_bi))).where(
                Image.gallery_id == gallery.id, Image.subject_bi.is_not(None)
            )
        )
        no_face = self.s.scalar(
            select(func.count()).select_from(Image).where(
                Image.gallery_id == gallery.id, Image.status != "faces"
            )
        )
        return GalleryStats(gallery.name, gallery.model_id, images or 0, faces or 0, subjects or 0, no_face or 0)

    # images and faces ---------------------------------------------------------------------
    def known_hashes(self, gallery_id: int, hashes: list[str]) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i: i + 500]
            out.update(self.s.scalars(
                select(Image.sha256).where(Image.gallery_id == gallery_id, Image.sha256.in_(chunk))
            ))
        return out

    def add_image(
        self, *, gallery_id: int, sha256: str, original_path: str | None, source_uri: str | None,
        legal_basis: str, subject: str | None, collected_at: datetime | None, width: int, height: int,
        faces: list[PipelineFace], status: str, collector: str | None = None, warrant_ref: str | None = None,
    ) -> tuple[int, list[int]]:
        img = Image(
            gallery_id=gallery_id, sha256=sha256, original_path=original_path, source_uri=source_uri,
            legal_basis=legal_basis, subject=subject, collected_at=collected_at, ingested_at=utcnow(),
            width=width, height=height, status=status, collector=collector, warrant_ref=warrant_ref,
        )
        self.s.add(img)
        self.s.flush()
        rows = []
        for f in faces:
            row = Face(
                image_id=img.id, gallery_id=gallery_id, x=f.bbox.x, y=f.bbox.y, w=f.bbox.w, h=f.bbox.h,
                det_score=float(f.score), quality=float(f.quality.score),
                sharpness=float(f.quality.sharpness), pose=float(f.quality.pose),
                quality_reasons=",".join(f.quality.reasons), model_id=f.model_id,
                embedding=np.asarray(f.embedding, dtype=np.float32).tobytes(),
            )
            self.s.add(row)
            rows.append(row)
        self.s.flush()
        return img.id, [r.id for r in rows]

    def face_watermark(self, gallery_id: int, model_id: str) -> tuple[int, int]:
        """(count, max id) of the gallery's faces of one model: what its index must agree with."""
        row = self.s.execute(
            select(func.count(), func.max(Face.id)).where(Face.gallery_id == gallery_id,
                                                          Face.model_id == model_id)
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

    def iter_embeddings(self, gallery_id: int, model_id: str, batch: int = 50_000, after_id: int = 0
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every face of a gallery embedded by one model, in id order, in batches
        (from the first id above ``after_id``: a resumed copy)."""
        last = int(after_id)
        while True:
            rows = self.s.execute(
                select(Face.id, Face.embedding).where(Face.gallery_id == gallery_id, Face.model_id == model_id,
                                                      Face.id > last)
                .order_by(Face.id).limit(batch)
            ).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vecs
            last = int(ids[-1])

    def face_records(self, face_ids: list[int]) -> dict[int, FaceRecord]:
        if not face_ids:
            return {}
        rows = self.s.execute(
            select(Face.id, Face.image_id, Image.subject, Image.original_path, Image.source_uri,
                   Image.legal_basis, Face.x, Face.y, Face.w, Face.h, Face.quality, Image.collector,
                   Image.collected_at, Image.warrant_ref)
            .join(Image, Image.id == Face.image_id).where(Face.id.in_(face_ids))
        ).all()
        return {
            r[0]: FaceRecord(r[0], r[1], r[2], r[3], r[4], r[5], (r[6], r[7], r[8], r[9]), r[10], r[11], r[12], r[13])
            for r in rows
        }

    def subject_embeddings(self, gallery_id: int, model_id: str, subjects: list[str]
                           ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """subject -> (face ids, embeddings) for template scoring."""
        out: dict[str, tuple[list[int], list[np.ndarray], list[float]]] = {}
        if not subjects:
            return {}
        rows = self.s.execute(
            select(Image.subject, Face.id, Face.embedding, Face.quality)
            .join(Image, Image.id == Face.image_id)
            .where(Face.gallery_id == gallery_id, Face.model_id == model_id,
                   Image.subject_bi.in_([bi for s in subjects for bi in self.keyring.blind_indexes("subject", s)]))
        ).all()
        for subj, fid, emb, q in rows:
            ids, vecs, qs = out.setdefault(subj, ([], [], []))
            ids.append(fid)
            vecs.append(np.frombuffer(emb, dtype=np.float32))
            qs.append(q)
        return {k: (np.asarray(v[0]), np.stack(v[1]), np.asarray(v[2])) for k, v in out.items()}

    def image_gallery(self, image_id: int) -> int:
        gid = self.s.scalar(select(Image.gallery_id).where(Image.id == image_id))
        if gid is None:
            from facesearch.errors import NotFound

            raise NotFound(f"image {image_id} does not exist")
        return int(gid)

    def delete_image(self, image_id: int) -> list[int]:
        face_ids = list(self.s.scalars(select(Face.id).where(Face.image_id == image_id)))
        self.s.execute(delete(Face).where(Face.image_id == image_id))
        self.s.execute(delete(Image).where(Image.id == image_id))
        return face_ids

    def add_faces(self, image_id: int, gallery_id: int, faces: list[PipelineFace]) -> list[int]:
        rows = []
        for f in faces:
            row = Face(
                image_id=image_id, gallery_id=gallery_id, x=f.bbox.x, y=f.bbox.y, w=f.bbox.w, h=f.bbox.h,
                det_score=float(f.score), quality=float(f.quality.score),
                sharpness=float(f.quality.sharpness), pose=float(f.quality.pose),
                quality_reasons=",".join(f.quality.reasons), model_id=f.model_id,
                embedding=np.asarray(f.embedding, dtype=np.float32).tobytes(),
            )
            self.s.add(row)
            rows.append(row)
        self.s.flush()
        return [r.id for r in rows]

    # re-embedding ---------------------------------------------------------------------------
    def images_to_reembed(self, gallery_id: int, model_id: str, after_id: int, limit: int = 200
                          ) -> list[tuple[int, str | None]]:
        """(image id, original path) of images not yet done under ``model_id``, in id order."""
        done = select(ReembedImage.image_id).where(
            ReembedImage.model_id == model_id, ReembedImage.status != "error")
        return [(r[0], r[1]) for r in self.s.execute(
            select(Image.id, Image.original_path).where(
                Image.gallery_id == gallery_id, Image.id > after_id, Image.id.not_in(done))
            .order_by(Image.id).limit(limit))]

    def mark_reembedded(self, image_id: int, gallery_id: int, model_id: str, status: str) -> None:
        row = self.s.get(ReembedImage, (image_id, model_id))
        if row is None:
            self.s.add(ReembedImage(image_id=image_id, model_id=model_id, gallery_id=gallery_id, status=status))
        else:
            row.status = status
        self.s.flush()

    def drop_faces_of_model(self, image_id: int, model_id: str) -> None:
        self.s.execute(delete(Face).where(Face.image_id == image_id, Face.model_id == model_id))

    def reembed_counts(self, gallery_id: int, model_id: str) -> tuple[int, int]:
        """(images done, images with errors) under ``model_id``."""
        rows = dict(self.s.execute(
            select(ReembedImage.status == "error", func.count()).where(
                ReembedImage.gallery_id == gallery_id, ReembedImage.model_id == model_id)
            .group_by(ReembedImage.status == "error")).all())
        return int(rows.get(False, 0)), int(rows.get(True, 0))

    def switch_gallery_model(self, gallery_id: int, old_model: str, new_model: str) -> None:
        """Make the re-embedded faces the gallery's faces, in one transaction."""
        self.s.execute(delete(Face).where(Face.gallery_id == gallery_id, Face.model_id != new_model))
        for image_id, status in self.s.execute(
                select(ReembedImage.image_id, ReembedImage.status).where(
                    ReembedImage.gallery_id == gallery_id, ReembedImage.model_id == new_model)).all():
            self.s.execute(Image.__table__.update().where(Image.id == image_id).values(status=status))
        self.s.execute(Gallery.__table__.update().where(Gallery.id == gallery_id).values(model_id=new_model))
        self.s.execute(delete(ReembedImage).where(ReembedImage.gallery_id == gallery_id))

    def image_count(self, gallery_id: int) -> int:
        return self.s.scalar(select(func.count()).select_from(Image).where(Image.gallery_id == gallery_id)) or 0

    # searches -----------------------------------------------------------------------------
    def record_search(
        self, *, case_number: str, purpose: str, gallery_id: int, model_id: str, probe_sha256: str,
        probe_faces: int, top_k: int, threshold: float, candidates: list[tuple[int, int, int | None, int | None, float]],
        agency_id: int | None = None, user_id: int | None = None, authorization_ref: str | None = None,
    ) -> tuple[int, datetime, str, list[str]]:
        """Record a search and its candidates; returns (id, time, public id, candidate public ids)."""
        import secrets

        now = utcnow()
        s = Search(
            created_at=now, case_number=case_number, purpose=purpose, gallery_id=gallery_id,
            model_id=model_id, probe_sha256=probe_sha256, probe_faces=probe_faces, top_k=top_k,
            threshold=threshold, public_id=secrets.token_hex(16), agency_id=agency_id, user_id=user_id,
            authorization_ref=authorization_ref,
        )
        self.s.add(s)
        self.s.flush()
        ids = []
        for probe_face, rank, face_id, image_id, score in candidates:
            pid = secrets.token_hex(16)
            ids.append(pid)
            self.s.add(SearchCandidate(search_id=s.id, probe_face=probe_face, rank=rank, face_id=face_id,
                                       image_id=image_id, score=score, public_id=pid))
        self.s.flush()
        return s.id, now, s.public_id, ids

    def searches(self, case_number: str | None = None) -> list[Search]:
        q = select(Search).order_by(Search.id)
        if case_number is not None:
            q = q.where(self.searches_of_case(case_number))
        return list(self.s.scalars(q))

    # encrypted names: looked up by their blind index under every key version ----------------
    @property
    def keyring(self) -> Keyring:
        return keyring_of(self.s.get_bind().dialect)

    def user_by_name(self, key: str) -> User | None:
        """The user whose normalised user name is ``key``."""
        return self.s.scalar(select(User).where(User.username_bi.in_(self.keyring.blind_indexes("user", key))))

    def agency_by_name(self, name: str) -> Agency | None:
        """The agency of this name (compared case-insensitively, like user names)."""
        bis = self.keyring.blind_indexes("agency", normalise_user_name(name))
        return self.s.scalar(select(Agency).where(Agency.name_bi.in_(bis)))

    def name_ref(self, key: str) -> str:
        """A pseudonym of a user name for the audit trail: the first 64 bits of its blind index."""
        return self.keyring.blind_index("user", key)[:16]

    def lockout(self, key: str) -> Lockout | None:
        """The lockout counters of a normalised user name (stored under its blind index)."""
        return self.s.scalar(select(Lockout).where(Lockout.key.in_(self.keyring.blind_indexes("user", key)))
                             .order_by(Lockout.locked_until.desc().nulls_last()).limit(1))

    def lockout_for_update(self, key: str) -> Lockout:
        row = self.lockout(key)
        if row is None:
            row = Lockout(key=self.keyring.blind_index("user", key), failures=0)
            self.s.add(row)
        return row

    def searches_of_case(self, case_number: str):  # noqa: ANN201 - a select on Search
        """A select of the searches of one case number (by its blind index)."""
        return Search.case_bi.in_(self.keyring.blind_indexes("case", case_number.strip()))

    def subject_is(self, subject: str):  # noqa: ANN201 - a where clause on Image
        """Images labelled ``subject`` (by its blind index: the label itself is encrypted)."""
        return Image.subject_bi.in_(self.keyring.blind_indexes("subject", subject))
