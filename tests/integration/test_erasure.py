"""Erasure by face: a person with 3 images across 2 galleries is gone from search, database,
index and disk, stays suppressed on re-ingest, and an erasure killed midway completes on restart."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from facesearch.facade import FaceSearch
from facesearch.store.tables import Face, Image
from tests.integration.conftest import write_manifest

PERSON = "dlib_John_Simm"


def _setup(home: Path, tmp: Path, dev_labels) -> dict[str, list[Path]]:  # noqa: ANN001
    simm = dev_labels[PERSON]
    plan = {"g1": [(PERSON, simm[0]), (PERSON, simm[1]), ("salley", dev_labels["dlib_John_Salley"][0]),
                   ("salley", dev_labels["dlib_John_Salley"][1])],
            "g2": [(PERSON, simm[2]), ("savage", dev_labels["dlib_John_Savage"][0]),
                   ("savage", dev_labels["dlib_John_Savage"][1])]}
    with FaceSearch(home=home, workers=1) as fs:
        for g, rows in plan.items():
            m = write_manifest(tmp / f"{g}.csv", [{"path": str(p), "subject": s, "source_uri": "",
                                                   "legal_basis": "statute 12-3", "collected_at": ""}
                                                  for s, p in rows])
            from facesearch.services.ingest import manifest_items

            fs.ingest(manifest_items(m), gallery=g)
    return {g: [p for _, p in rows] for g, rows in plan.items()}


def _person_vectors(home: Path) -> list[bytes]:
    with FaceSearch(home=home) as fs, fs.ctx.repo() as repo:
        return [bytes(e) for e in repo.s.scalars(select(Face.embedding).join(Image).where(repo.subject_is(PERSON)))]


def _assert_erased(home: Path, vectors: list[bytes], dev_labels, plan) -> None:  # noqa: ANN001
    with FaceSearch(home=home, workers=1) as fs:
        with fs.ctx.repo() as repo:
            assert not list(repo.s.scalars(select(Image.id).where(repo.subject_is(PERSON))))  # not in the database
        for g in ("g1", "g2"):
            r = fs.search(dev_labels[PERSON][5], gallery=g, case_number="C", purpose="p")
            assert all(c.subject != PERSON for c in r.faces[0].candidates)  # not found by search
            with fs.ctx.repo() as repo:
                gal = repo.get_gallery(g)
                _, index = fs.ctx.index_for(repo, gal.id, gal.model_id)
                _, ids = index.search(np.frombuffer(vectors[0], dtype=np.float32)[None], index.ntotal)
                stored = {int(i) for i, _ in [(x, 0) for x in np.concatenate(
                    [a for a, _ in repo.iter_embeddings(gal.id, gal.model_id)])]}
                assert {int(i) for i in ids[0] if i >= 0} == stored  # the index holds exactly the remaining faces
        # re-ingest of the same photos: reported as suppressed, nothing stored
        from facesearch.services.ingest import IngestItem

        items = [IngestItem(path=str(p), subject=PERSON, legal_basis="statute 12-3") for p in dev_labels[PERSON][:3]]
        s = fs.ingest(items, gallery="g1")
        assert s.suppressed == 3 and s.ingested == 0 and s.reasons["suppressed"] == 3
    # not on disk: neither the vectors nor the label survive in the database, its log or the indexes
    blobs = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file() and p.suffix in (".db", ".db-wal", ".faiss")
                     or p.name.endswith(("-wal", ".db")))
    for v in vectors:
        assert v[:64] not in blobs
    assert PERSON.encode() not in blobs


def test_erase_a_person_across_two_galleries(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    home = tmp_path / "h"
    plan = _setup(home, tmp_path, dev_labels)
    vectors = _person_vectors(home)
    assert len(vectors) == 3
    photos = [str(dev_labels[PERSON][3]), str(dev_labels[PERSON][4])]
    r = subprocess.run([sys.executable, "-m", "facesearch.cli", "erase", "--photo", photos[0], "--photo", photos[1],
                        "--yes", "--json", "--home", str(home)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["erased"] == 3 and {m["subject"] for m in out["matches"]} == {PERSON}
    _assert_erased(home, vectors, dev_labels, plan)


def test_an_erasure_killed_midway_completes_on_restart(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    home = tmp_path / "h"
    plan = _setup(home, tmp_path, dev_labels)
    vectors = _person_vectors(home)
    env = {**os.environ, "FACESEARCH_TEST_CRASH": "after_index"}
    r = subprocess.run([sys.executable, "-m", "facesearch.cli", "erase", "--photo", str(dev_labels[PERSON][3]),
                        "--yes", "--home", str(home)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 75, r.stderr  # killed after the index entries went, before the rows
    _assert_erased(home, vectors, dev_labels, plan)  # the next start completes it


def test_without_confirmation_nothing_is_erased(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from facesearch.cli import main

    home = tmp_path / "h"
    _setup(home, tmp_path, dev_labels)
    r = CliRunner().invoke(main, ["erase", "--photo", str(dev_labels[PERSON][3]), "--home", str(home)], input="n\n")
    assert r.exit_code == 0 and "nothing erased" in r.output and "3 image(s) match" in r.output
    assert len(_person_vectors(home)) == 3


def test_access_request_report_and_lifting_a_suppression(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from facesearch.cli import main

    home = tmp_path / "h"
    _setup(home, tmp_path, dev_labels)
    with FaceSearch(home=home) as fs:  # one search returns the person
        fs.search(dev_labels[PERSON][5], gallery="g1", case_number="C", purpose="p")
    pdf = tmp_path / "report.pdf"
    r = CliRunner().invoke(main, ["access-request", "--photo", str(dev_labels[PERSON][3]), "--pdf", str(pdf),
                                  "--home", str(home)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["total_images"] == 3 and rep["suppressed"] is False
    assert {i["legal_basis"] for i in rep["images"]} == {"statute 12-3"}
    assert sum(i["searches_returned"] for i in rep["images"]) >= 1
    assert "searcher" not in r.output and "case" not in json.dumps(rep["images"])
    assert pdf.read_bytes().startswith(b"%PDF")
    # erase, then lift the suppression: the photos may be ingested again
    CliRunner().invoke(main, ["erase", "--photo", str(dev_labels[PERSON][3]), "--yes", "--home", str(home)])
    sup = json.loads(CliRunner().invoke(main, ["suppression", "list", "--home", str(home)]).output)
    assert len(sup) == 1 and sup[0]["lifted_at"] is None
    r = CliRunner().invoke(main, ["suppression", "lift", sup[0]["id"], "--home", str(home)])
    assert r.exit_code == 0
    with FaceSearch(home=home, workers=1) as fs:
        from facesearch.services.ingest import IngestItem

        s = fs.ingest([IngestItem(path=str(dev_labels[PERSON][0]), subject=PERSON, legal_basis="x")], gallery="g1")
        assert s.suppressed == 0 and s.ingested == 1
        actions = [r.details.get("change") for r in fs.ctx.audit.records(action="erasure")]
        assert "suppression_lifted" in actions
