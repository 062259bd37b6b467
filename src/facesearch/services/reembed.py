"""Move a gallery to another model pack by re-embedding its stored images.

Each image is re-analysed from its original file with the new pack; its new faces and a
progress mark are committed together, so a killed run resumes where it stopped with no
duplicated faces. While it runs the gallery stays searchable with its old model. When every
image is done, one transaction makes the new faces the gallery's faces and drops the old
ones; the old index is deleted and the new one built from the database.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facesearch.errors import FaceSearchError
from facesearch.index.manager import IndexKey
from facesearch.pipeline.decode import read_image
from facesearch.services.context import AppContext


@dataclass
class ReembedSummary:
    gallery: str
    from_model: str
    to_model: str
    images: int = 0
    done_now: int = 0
    faces: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    switched: bool = False

    def to_json(self) -> dict[str, object]:
        return {"gallery": self.gallery, "from_model": self.from_model, "to_model": self.to_model,
                "images": self.images, "done_now": self.done_now, "faces": self.faces,
                "errors": self.errors, "switched": self.switched}


def reembed_gallery(ctx: AppContext, gallery: str, pack_id: str,
                    progress: Callable[[int, int], None] | None = None) -> ReembedSummary:
    pipeline = ctx.pipeline_for_pack(pack_id)  # refuses a pack whose licence is not accepted
    new_model = pipeline.model_id
    s = ctx.settings
    with ctx.repo() as repo:
        g = repo.get_gallery(gallery)
        total = repo.image_count(g.id)
        done_before, _ = repo.reembed_counts(g.id, new_model)
    summary = ReembedSummary(gallery=g.name, from_model=g.model_id, to_model=new_model, images=total)
    if g.model_id == new_model:
        summary.switched = True
        return summary
    done, after = done_before, 0
    while True:
        with ctx.repo() as repo:
            batch = repo.images_to_reembed(g.id, new_model, after)
        if not batch:
            break
        for image_id, path in batch:
            after = image_id
            try:
                img = read_image(Path(path or ""), max_pixels=s.max_pixels, max_bytes=s.max_file_bytes)
                faces = pipeline.analyze(img.rgb)
                status_err = None
            except FaceSearchError as e:
                faces, status_err = [], f"{e.code}: {e.message}"
            ok = [f for f in faces if f.quality.acceptable]
            status = "error" if status_err else ("faces" if ok else ("rejected_quality" if faces else "no_face"))
            with ctx.repo() as repo:
                repo.drop_faces_of_model(image_id, new_model)
                repo.add_faces(image_id, g.id, ok)
                repo.mark_reembedded(image_id, g.id, new_model, status)
            if status_err:
                summary.errors.append({"image_id": str(image_id), "path": path or "", "reason": status_err})
            else:
                done += 1
                summary.done_now += 1
                summary.faces += len(ok)
            if progress:
                progress(done, total)
    with ctx.repo() as repo:
        done, errors = repo.reembed_counts(g.id, new_model)
        if done == total and errors == 0:
            repo.switch_gallery_model(g.id, g.model_id, new_model)
            summary.switched = True
    if summary.switched:
        ctx.indexes.drop(IndexKey(g.id, g.model_id))
        with ctx.repo() as repo:
            ctx.index_for(repo, g.id, new_model)  # built from the database
            summary.faces = repo.face_watermark(g.id, new_model)[0]
    return summary
