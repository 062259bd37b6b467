"""Model manifests: bundled models verify, and broken ones fail with a clear message."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from facesearch.errors import ManifestError, ModelFileMismatch, ModelFileMissing
from facesearch.models.manifest import ModelRegistry, load_manifest


def test_bundled_models_are_found_in_installed_packages_and_match_their_sha256() -> None:
    reg = ModelRegistry()
    ids = {m.id for m in reg.all()}
    assert {"dlib-hog", "dlib-5pt", "dlib-resnet-v1", "mtcnn"} <= ids
    for m in reg.all():
        if any(f.package and importlib.util.find_spec(f.package) is None for f in m.files):
            continue  # an optional pack whose package is not installed (see test_packs)
        paths = m.verify()
        assert all(p.is_file() for p in paths.values())
    emb = reg.get("dlib-resnet-v1")
    assert (emb.embedding_dim, emb.input_size, emb.commercial_use) == (128, (150, 150), True)


def _copy_manifest(tmp_path: Path, model: str, **changes: object) -> Path:
    reg = ModelRegistry()
    m = reg.get(model)
    src = json.loads(m.source.read_text())
    for f in src["files"]:
        f["path"] = str(m.resolve(f["name"]))
        f.pop("package", None)
    src.update(changes)
    p = tmp_path / f"{model}.json"
    p.write_text(json.dumps(src))
    return p


def test_sha256_mismatch_names_the_file(tmp_path: Path) -> None:
    p = _copy_manifest(tmp_path, "dlib-resnet-v1")
    data = json.loads(p.read_text())
    data["files"][0]["sha256"] = "0" * 64
    p.write_text(json.dumps(data))
    with pytest.raises(ModelFileMismatch, match="dlib_face_recognition_resnet_model_v1.dat"):
        load_manifest(p).verify()


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    p = _copy_manifest(tmp_path, "mtcnn")
    data = json.loads(p.read_text())
    data["files"][1]["path"] = str(tmp_path / "gone" / "rnet.onnx")
    p.write_text(json.dumps(data))
    with pytest.raises(ModelFileMissing, match="rnet.onnx"):
        load_manifest(p).verify()


def test_a_modified_model_file_is_detected(tmp_path: Path) -> None:
    p = _copy_manifest(tmp_path, "dlib-5pt")
    data = json.loads(p.read_text())
    copy = tmp_path / "sp5.dat"
    shutil.copy(data["files"][0]["path"], copy)
    with copy.open("ab") as fh:
        fh.write(b"\0")
    data["files"][0]["path"] = str(copy)
    p.write_text(json.dumps(data))
    with pytest.raises(ModelFileMismatch):
        load_manifest(p).verify()


@pytest.mark.parametrize("drop", ["id", "files", "family"])
def test_incomplete_manifest_is_refused(tmp_path: Path, drop: str) -> None:
    p = _copy_manifest(tmp_path, "dlib-resnet-v1")
    data = json.loads(p.read_text())
    del data[drop]
    p.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=drop):
        load_manifest(p)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ManifestError, match="dlib-resnet-v1"):
        ModelRegistry().get("no-such-model")
