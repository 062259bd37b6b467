"""The same engine on a real PostgreSQL server (FACESEARCH_TEST_POSTGRES_URL; .ci/run starts one)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from facesearch.facade import FaceSearch
from facesearch.config import Settings

URL = os.environ.get("FACESEARCH_TEST_POSTGRES_URL")
pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not URL, reason="set FACESEARCH_TEST_POSTGRES_URL to a PostgreSQL server")]


@pytest.fixture()
def pg_url() -> str:
    """A fresh database on the test server, dropped afterwards."""
    import psycopg

    name = f"fs_test_{uuid.uuid4().hex[:10]}"
    admin = URL
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # name is generated above, not user input
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_ingest_search_delete_on_postgresql(tmp_path: Path, pg_url: str, dev_labels) -> None:  # noqa: ANN001
    photos = tmp_path / "p"
    for ident in ("dlib_John_Simm", "dlib_John_Salley"):
        (photos / ident).mkdir(parents=True)
        for p in dev_labels[ident][:3]:
            (photos / ident / p.name).write_bytes(p.read_bytes())
    settings = Settings(home=tmp_path / "h", database_url=pg_url, workers=1)
    with FaceSearch(settings=settings) as fs:
        s = fs.ingest(photos, gallery="pg", legal_basis="test", subject_from_folder=True)
        assert (s.ingested, s.faces) == (6, 6)
        again = fs.ingest(photos, gallery="pg", legal_basis="test", subject_from_folder=True)
        assert again.duplicates == 6
        r = fs.search(dev_labels["dlib_John_Simm"][4], gallery="pg", case_number="PG-1", purpose="test")
        assert r.faces[0].candidates[0].subject == "dlib_John_Simm"
        stats = fs.gallery_stats("pg")
        assert (stats.images, stats.faces, stats.subjects) == (6, 6, 2)
        victim = r.faces[0].candidates[0].image_id
        fs.delete_image(victim)
        r2 = fs.search(dev_labels["dlib_John_Simm"][4], gallery="pg", case_number="PG-1", purpose="test")
        assert victim not in {c.image_id for c in r2.faces[0].candidates}
        with fs.ctx.repo() as repo:
            assert [x.case_number for x in repo.searches()] == ["PG-1", "PG-1"]
