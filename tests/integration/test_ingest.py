"""Ingest: bad inputs each give a clear reason, nothing is lost, re-runs are idempotent,
and a killed ingest resumes with no lost and no duplicated faces."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facesearch.facade import FaceSearch
from facesearch.cli import main
from facesearch.errors import MissingLegalBasis, PathNotFound
from tests.fixtures import badimages as bad
from tests.integration.conftest import write_manifest

BASIS = "Test: statute 12-3"


def collage(photos: list[Path], cols: int, out: Path, cell: int = 150) -> Path:
    rows = (len(photos) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for i, p in enumerate(photos):
        im = Image.open(p).convert("RGB").resize((cell, cell))
        canvas.paste(im, ((i % cols) * cell, (i // cols) * cell))
    canvas.save(out, quality=95)
    return out


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("bad")
    obama = dev_labels["fr_obama"][0]
    bad.truncated_jpeg(d, obama)
    bad.text_as_jpg(d)
    bad.zero_bytes(d)
    bad.huge_png(d)
    bad.grayscale_jpeg(d, obama)
    bad.cmyk_jpeg(d, dev_labels["fr_biden"][0])
    grey = np.asarray(Image.open(dev_labels["fr_kit_harington"][0]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(d / "face16.png")  # a 16-bit greyscale PNG of a face
    bad.exif_rotated_jpeg(d, dev_labels["openface_John_Lennon"][0])
    Image.new("RGB", (640, 480), (120, 160, 200)).save(d / "sky.jpg")  # no face
    johns = [p for k, v in dev_labels.items() if k.startswith(("dlib_", "faceapi_")) for p in v][:30]
    collage(johns, 6, d / "thirty_faces.jpg")
    return d


def test_bad_inputs_get_one_line_reasons_and_good_ones_are_ingested(bad_folder: Path, tmp_path: Path) -> None:
    with FaceSearch(home=tmp_path, workers=1) as fs:
        s = fs.ingest(bad_folder, gallery="g", legal_basis=BASIS)
        by_name = {Path(d["path"]).name: d for d in s.error_details}
        assert by_name.keys() == {"truncated.jpg", "text.jpg", "empty.jpg", "huge.png"} or len(by_name) == 4, by_name
        for d in s.error_details:
            assert "\n" not in d["reason"] and d["reason"]
        codes = {d["code"] for d in s.error_details}
        assert {"corrupt_image", "not_an_image", "image_too_large"} <= codes
        assert s.no_face == 1 and s.reasons["no_face"] == 1
        # grayscale, CMYK, 16-bit, EXIF-rotated, 30-face collage, blank: 6 stored images
        assert s.ingested == 6
        with fs.ctx.repo() as repo:
            from sqlalchemy import select
            from facesearch.store.tables import Face, Image as Img

            rows = {Path(r.original_path).name: r for r in repo.s.scalars(select(Img))}
            nfaces = {name: repo.s.query(Face).filter(Face.image_id == r.id).count() for name, r in rows.items()}
        assert nfaces["thirty_faces.jpg"] >= 25, nfaces
        for name in rows:
            if name not in ("sky.jpg", "thirty_faces.jpg"):
                assert nfaces[name] >= 1, (name, nfaces)
        rot = rows[next(n for n in rows if "exif" in n)]
        stored = Image.open(rot.original_path)
        assert (rot.width, rot.height) == (stored.height, stored.width)  # EXIF applied
        # a second run changes nothing and loses nothing
        s2 = fs.ingest(bad_folder, gallery="g", legal_basis=BASIS)
        assert s2.ingested == 0 and s2.duplicates == 6 and s2.errors == 4
        assert fs.gallery_stats("g").images == 6


def test_missing_paths_and_missing_legal_basis_are_refused(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    with FaceSearch(home=tmp_path, workers=1) as fs:
        with pytest.raises(PathNotFound):
            fs.ingest(tmp_path / "nope", gallery="g", legal_basis=BASIS)
        folder = tmp_path / "photos"
        folder.mkdir()
        (folder / "a.jpg").write_bytes(dev_labels["fr_obama"][0].read_bytes())
        with pytest.raises(MissingLegalBasis):
            fs.ingest(folder, gallery="g")
    r = CliRunner().invoke(main, ["ingest", str(folder), "--gallery", "g", "--home", str(tmp_path)])
    assert r.exit_code == 1 and "missing_legal_basis" in r.output


def test_manifest_row_without_legal_basis_is_refused_the_others_ingested(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    a, b = dev_labels["fr_biden"][:2]
    m = write_manifest(tmp_path / "m.csv", [
        {"path": str(a), "subject": "biden", "source_uri": "file://x/a", "legal_basis": BASIS,
         "collected_at": "2025-03-01T10:00:00"},
        {"path": str(b), "subject": "biden", "source_uri": "file://x/b", "legal_basis": "", "collected_at": ""},
    ])
    r = CliRunner().invoke(main, ["ingest", str(m), "--gallery", "g", "--json", "--home", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["ingested"] == 1 and s["errors"] == 1 and s["reasons"]["missing_legal_basis"] == 1


def test_duplicate_image_is_reported_not_stored_twice(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    folder = tmp_path / "p"
    folder.mkdir()
    src = dev_labels["fr_obama"][0].read_bytes()
    (folder / "one.jpg").write_bytes(src)
    (folder / "copy.jpg").write_bytes(src)
    with FaceSearch(home=tmp_path / "h", workers=1) as fs:
        s = fs.ingest(folder, gallery="g", legal_basis=BASIS)
        assert (s.ingested, s.duplicates) == (1, 1)
        assert fs.gallery_stats("g").images == 1


def test_subject_from_folder_labels_and_deleted_image_is_never_returned(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    root = tmp_path / "people"
    for ident in ("fr_obama", "fr_biden"):
        (root / ident).mkdir(parents=True)
        for p in dev_labels[ident][:2]:
            (root / ident / p.name).write_bytes(p.read_bytes())
    with FaceSearch(home=tmp_path / "h", workers=1) as fs:
        fs.ingest(root, gallery="g", legal_basis=BASIS, subject_from_folder=True)
        assert fs.gallery_stats("g").subjects == 2
        probe = dev_labels["fr_obama"][2]
        r = fs.search(probe, gallery="g", case_number="C", purpose="p")
        top = r.faces[0].candidates[0]
        assert top.subject == "fr_obama"
        with fs.ctx.repo() as repo:
            from sqlalchemy import select
            from facesearch.store.tables import Image as Img

            obama_images = list(repo.s.scalars(select(Img.id).where(repo.subject_is("fr_obama"))))
        for image_id in obama_images:
            fs.delete_image(image_id)
        left = fs.search(probe, gallery="g", case_number="C", purpose="p").faces[0].candidates
        assert all(c.subject != "fr_obama" for c in left)


def test_corrupt_or_missing_index_is_rebuilt_from_the_database(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    folder = tmp_path / "p"
    folder.mkdir()
    for p in dev_labels["dlib_John_Simm"][:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    home = tmp_path / "h"
    with FaceSearch(home=home, workers=1) as fs:
        fs.ingest(folder, gallery="g", legal_basis=BASIS)
        before = fs.search(folder / "1.jpg", gallery="g", case_number="C", purpose="p").faces[0].candidates
    idx_file = next((home / "index").glob("*.faiss"))
    idx_file.write_bytes(b"garbage")
    with FaceSearch(home=home) as fs:
        after = fs.search(folder / "1.jpg", gallery="g", case_number="C", purpose="p").faces[0].candidates
    assert [c.face_id for c in after] == [c.face_id for c in before]
    idx_file.unlink()
    with FaceSearch(home=home) as fs:
        again = fs.search(folder / "1.jpg", gallery="g", case_number="C", purpose="p").faces[0].candidates
    assert [c.face_id for c in again] == [c.face_id for c in before]


def _db_images(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("select count(*) from images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killed_ingest_resumes_without_loss_or_duplicates(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    folder = tmp_path / "photos"
    folder.mkdir()
    files = [p for k in ("dlib_John_Salley", "dlib_John_Savage", "dlib_John_Simm") for p in dev_labels[k]][:24]
    for i, p in enumerate(files):
        (folder / f"{i:03d}.jpg").write_bytes(p.read_bytes())
    home = tmp_path / "killed"
    cmd = [sys.executable, "-m", "facesearch.cli", "ingest", str(folder), "--gallery", "g",
           "--legal-basis", BASIS, "--workers", "1", "--home", str(home)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = home / "facesearch.db"
    deadline = time.time() + 120
    while time.time() < deadline and _db_images(db) < 6 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _db_images(db)
    assert 0 < partial < len(files), partial  # killed midway
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    assert resumed["duplicates"] == partial
    # a clean run for comparison
    clean_home = tmp_path / "clean"
    with FaceSearch(home=clean_home, workers=1) as fs:
        clean = fs.ingest(folder, gallery="g", legal_basis=BASIS)
    with FaceSearch(home=home) as fs:
        stats = fs.gallery_stats("g")
        with fs.ctx.repo() as repo:
            from sqlalchemy import func, select
            from facesearch.store.tables import Image as Img

            distinct = repo.s.scalar(select(func.count(func.distinct(Img.sha256))))
            g = repo.get_gallery("g")
            _, index = fs.ctx.index_for(repo, g.id, g.model_id)
            ids = {int(i) for i in index.search(np.eye(128, dtype=np.float32)[:1], 10_000)[1][0] if i >= 0}
            face_ids = {int(x) for ids_, _ in repo.iter_embeddings(g.id, g.model_id) for x in ids_}
    assert stats.images == len(files) == distinct
    assert stats.faces == clean.faces
    assert ids == face_ids and len(ids) == stats.faces


def test_provenance_guard_refuses_social_sources_unless_a_warrant_covers_them(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    a, b = dev_labels["fr_biden"][:2]
    m = tmp_path / "m.csv"
    m.write_text(
        "path,subject,source_uri,legal_basis,collected_at,collector\n"
        f"{a},biden,https://www.facebook.com/photo?fbid=1,State booking records,2025-03-01,Det. Smith\n"
        f"{b},biden,https://www.facebook.com/photo?fbid=2,Search warrant 2026-W-0042 (District Court),"
        "2025-03-02,Det. Smith\n")
    with FaceSearch(home=tmp_path / "h", workers=1) as fs:
        from facesearch.services.ingest import manifest_items

        s = fs.ingest(manifest_items(m), gallery="g")
        assert (s.ingested, s.errors) == (1, 1)
        assert s.error_details[0]["code"] == "social_network_source" and "court order or warrant" in \
            s.error_details[0]["reason"]
        r = fs.search(dev_labels["fr_biden"][0], gallery="g", case_number="C", purpose="p")
        c = r.faces[0].candidates[0].to_json()
        assert c["warrant_ref"] == "Search warrant 2026-W-0042"
        assert c["collector"] == "Det. Smith" and c["collected_at"].startswith("2025-03-02")
        assert c["source_uri"] == "https://www.facebook.com/photo?fbid=2"
