"""Retention with a moved clock deletes exactly what the schedule says, and never the audit trail."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from facesearch.cli import main
from facesearch.facade import FaceSearch
from facesearch.services.ingest import manifest_items
from facesearch.services.retention import run_retention, set_gallery_retention
from facesearch.store.tables import Face, Image, ProbeImage, Search, SearchCandidate
from tests.integration.conftest import write_manifest


def _count(fs: FaceSearch, table) -> int:  # noqa: ANN001
    with fs.ctx.repo() as repo:
        return repo.s.scalar(select(func.count()).select_from(table))


def test_retention_schedule_with_a_moved_clock(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    old = dev_labels["dlib_John_Salley"][:2]
    new = dev_labels["dlib_John_Simm"][:2]
    m = write_manifest(tmp_path / "m.csv", [
        {"path": str(p), "subject": subj, "source_uri": "", "legal_basis": "statute 12-3", "collected_at": when}
        for subj, ps, when in (("salley", old, "2020-01-01"), ("simm", new, "2026-11-01")) for p in ps])
    now = datetime.now(timezone.utc)
    with FaceSearch(home=tmp_path / "h", workers=1) as fs:
        fs.ingest(manifest_items(m), gallery="g")
        r1 = fs.search(dev_labels["dlib_John_Simm"][3], gallery="g", case_number="C-1", purpose="p")
        with fs.ctx.repo() as repo:  # a probe kept for the service, as casework does
            repo.s.add(ProbeImage(search_id=r1.search_id, ciphertext=fs.ctx.cipher.encrypt(b"jpeg", "probe:1"),
                                  created_at=now))
        audit_before = fs.ctx.audit.head().seq

        # day 0: nothing has expired (no gallery retention set yet)
        rep = run_retention(fs.ctx, clock=lambda: now)
        assert (rep.probes_deleted, rep.searches_deleted, rep.images_deleted) == (0, 0, 0)

        # day 100: the probe (90 days) goes, the search record (365 days) stays
        rep = run_retention(fs.ctx, clock=lambda: now + timedelta(days=100))
        assert (rep.probes_deleted, rep.searches_deleted) == (1, 0)
        assert _count(fs, ProbeImage) == 0 and _count(fs, Search) == 1

        # a one-year retention on the gallery removes the photos collected in 2020, and only those
        set_gallery_retention(fs.ctx, "g", 365)
        rep = run_retention(fs.ctx, clock=lambda: now + timedelta(days=100))
        assert (rep.images_deleted, rep.faces_deleted) == (2, 2)
        with fs.ctx.repo() as repo:
            assert set(repo.s.scalars(select(Image.subject))) == {"simm"}
            assert repo.s.scalar(select(func.count()).select_from(Face)) == 2
        r2 = fs.search(dev_labels["dlib_John_Salley"][3], gallery="g", case_number="C-2", purpose="p")
        assert {c.subject for c in r2.faces[0].candidates} == {"simm"}  # gone from the index too

        # day 400: the search records (with their candidates) are past 365 days and expire
        rep = run_retention(fs.ctx, clock=lambda: now + timedelta(days=400))
        assert rep.searches_deleted == 2
        assert _count(fs, Search) == 0 and _count(fs, SearchCandidate) == 0

        # the audit trail was never purged: it only grew, and it verifies
        assert fs.ctx.audit.head().seq > audit_before
        assert fs.ctx.audit.verify().ok
    r = CliRunner().invoke(main, ["retention", "run", "--json", "--home", str(tmp_path / "h")])
    assert r.exit_code == 0 and '"images_deleted": 0' in r.output
