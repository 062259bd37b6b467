"""What galleries exist and what they hold."""
from __future__ import annotations

import numpy as np

from facesearch.services.context import AppContext
from facesearch.store.repository import GalleryInfo, GalleryStats


def list_galleries(ctx: AppContext) -> list[tuple[GalleryInfo, GalleryStats]]:
    with ctx.repo() as repo:
        return [(g, repo.gallery_stats(g)) for g in repo.list_galleries()]


def gallery_stats(ctx: AppContext, name: str) -> GalleryStats:
    with ctx.repo() as repo:
        return repo.gallery_stats(repo.get_gallery(name))


def delete_image(ctx: AppContext, image_id: int) -> int:
    """Delete one image and its faces from the database and the index, at once.

    The database transaction commits first; the index entries are removed and the index
    persisted before this returns, so the faces are never returned by a later search. If the
    process dies in between, the index no longer agrees with the database and is rebuilt.
    """
    with ctx.repo() as repo:
        gallery_id = repo.image_gallery(image_id)
        model_id = repo.gallery_by_id(gallery_id).model_id
        key, _ = ctx.index_for(repo, gallery_id, model_id)
        face_ids = repo.delete_image(image_id)
    with ctx.repo() as repo:
        _, max_id = repo.face_watermark(gallery_id, model_id)
    ctx.indexes.remove(key, np.asarray(face_ids, dtype=np.int64), max_id)
    return len(face_ids)
