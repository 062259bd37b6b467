"""`facesearch index migrate --to milvus` on a real ingest of the dev photos, against a real
Milvus server: killed and resumed without duplicates, verified, switched, and then searched,
erased from and ingested into through Milvus with the same answers as before."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pymilvus", reason="Milvus tests need the milvus extra (pip install -e '.[milvus]')")

from facesearch.cli import main  # noqa: E402
from facesearch.config import Settings  # noqa: E402
from facesearch.facade import FaceSearch  # noqa: E402
from facesearch.index.manager import IndexKey  # noqa: E402
from facesearch.index.milvus_backend import MilvusConfig, MilvusIndex, MilvusIndexes  # noqa: E402
from facesearch.index.router import read_placement  # noqa: E402
from facesearch.services.index_migrate import migrate_index, progress_path  # noqa: E402

CASE = dict(case_number="2026-000123", purpose="robbery investigation")


class Killed(Exception):
    pass


def top_candidates(fs: FaceSearch, probes: list[tuple[str, Path]]) -> list[list[tuple[str | None, float]]]:
    out = []
    for _, p in probes:
        r = fs.search(p, gallery="dev", top_k=5, **CASE)
        out.append([(c.subject, round(c.score, 4)) for c in r.faces[0].candidates] if r.faces else [])
    return out


@pytest.fixture
def home(dev_home: Path, tmp_path: Path) -> Path:
    """A copy of the session's dev ingest (66 photos of 33 people), ours to migrate."""
    dst = tmp_path / "home"
    shutil.copytree(dev_home, dst)
    return dst


def test_migrate_to_milvus_resumes_verifies_and_switches(home: Path, milvus_uri: str, dev_split,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prefix = f"migrate_{home.parent.name[-8:]}".replace("-", "_")
    settings = Settings(home=home, milvus_uri=milvus_uri, milvus_collection_prefix=prefix, workers=1)
    _, probes = dev_split
    probes = probes[:8]
    with FaceSearch(settings=settings) as fs:
        before = top_candidates(fs, probes)
        assert any(before)
        with fs.ctx.repo() as repo:
            g = repo.get_gallery("dev")
            faces, _ = repo.face_watermark(g.id, g.model_id)
            db_ids = np.concatenate([i for i, _ in repo.iter_embeddings(g.id, g.model_id)])
        key = IndexKey(g.id, g.model_id)

        # a migration killed after its second batch of 10: nothing switched, progress kept
        def kill_after_two(done: int, total: int) -> None:
            if done >= 20:
                raise Killed

        with pytest.raises(Killed):
            migrate_index(fs.ctx, "dev", to="milvus", batch=10, on_batch=kill_after_two)
        assert read_placement(settings.index_dir, key) is None
        recorded = json.loads(progress_path(settings.index_dir, key).read_text())
        assert recorded["last_id"] == int(db_ids[19]) and recorded["copied"] == 20

    # the rerun (the CLI, another process's view of the same home) continues after that id
    monkeypatch.setenv("FACESEARCH_MILVUS_URI", milvus_uri)
    monkeypatch.setenv("FACESEARCH_MILVUS_COLLECTION_PREFIX", prefix)
    res = CliRunner().invoke(main, ["index", "migrate", "--to", "milvus", "--gallery", "dev", "--batch", "10",
                                    "--sample", "40", "--json", "--home", str(home)])
    assert res.exit_code == 0, res.output
    (report,) = json.loads(res.stdout)
    assert report["resumed_after_id"] == int(db_ids[19])
    assert report["copied"] == faces - 20
    assert report["target_count"] == report["faces"] == faces
    assert report["sample"] == 40 and report["sample_top1_agree"] == 40 and report["switched"] is True
    assert read_placement(settings.index_dir, key).backend == "milvus"
    assert not progress_path(settings.index_dir, key).exists()

    with FaceSearch(settings=settings) as fs:
        with fs.ctx.repo() as repo:
            _, idx = fs.ctx.index_for(repo, g.id, g.model_id)
        assert isinstance(idx, MilvusIndex)
        ids = idx.all_ids()
        assert len(ids) == len(np.unique(ids)) == faces, "no duplicates after the resumed copy"
        assert (ids == np.sort(db_ids)).all()
        # the same top candidates, now from Milvus
        after = top_candidates(fs, probes)
        assert [[s for s, _ in c] for c in after] == [[s for s, _ in c] for c in before]
        assert np.allclose([x for c in after for _, x in c], [x for c in before for _, x in c], atol=1e-3)

        # an erased photo's faces are gone from Milvus at once
        subject, photo = probes[0]
        top = fs.search(photo, gallery="dev", top_k=5, **CASE).faces[0].candidates[0]
        fs.delete_image(top.image_id)
        assert idx.existing(np.asarray([top.face_id])).size == 0
        again = fs.search(photo, gallery="dev", top_k=5, **CASE).faces[0].candidates
        assert top.face_id not in {c.face_id for c in again}

        # a new photo ingested after the switch lands in Milvus
        new = tmp_path / "new"
        new.mkdir()
        shutil.copy(photo, new / photo.name)
        summary = fs.ingest(new, gallery="dev", legal_basis="Test fixture: faces-dev photo")
        assert summary.faces >= 1
        best = fs.search(photo, gallery="dev", top_k=1, **CASE).faces[0].candidates[0]
        assert best.score > 0.99
        with fs.ctx.repo() as repo:
            now, _ = repo.face_watermark(g.id, g.model_id)
        assert idx.ntotal == now
        on_milvus = top_candidates(fs, probes)

    # and back to the embedded index: verified, switched, Milvus rows of the gallery removed
    res = CliRunner().invoke(main, ["index", "migrate", "--to", "faiss", "--gallery", "dev", "--json",
                                    "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert read_placement(settings.index_dir, key).backend == "faiss"
    fresh = MilvusIndexes(MilvusConfig(uri=milvus_uri, prefix=prefix))
    assert fresh.index(g.model_id, idx.d, g.id, g.agency_id).ntotal == 0
    fresh.close()
    with FaceSearch(settings=settings) as fs:
        back = top_candidates(fs, probes)
    assert [[s for s, _ in c] for c in back] == [[s for s, _ in c] for c in on_milvus]
    assert np.allclose([x for c in back for _, x in c], [x for c in on_milvus for _, x in c], atol=1e-3)


def test_migrate_without_a_milvus_uri_is_refused(home: Path) -> None:
    res = CliRunner().invoke(main, ["index", "migrate", "--to", "milvus", "--home", str(home)])
    assert res.exit_code == 1
    assert "FACESEARCH_MILVUS_URI" in res.output
