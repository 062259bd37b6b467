"""An operator-registered ONNX embedder, end to end: manifest in $FACESEARCH_HOME/models,
ingest and search with it, and a gallery bound to one model refuses another."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from onnx import TensorProto, helper, numpy_helper

from facesearch.facade import FaceSearch
from facesearch.errors import ModelMismatch

BASIS = "Test: statute 12-3"


def tiny_embedder(home: Path) -> str:
    """A 150x150 RGB -> 32-d ONNX network with fixed random weights, and its manifest."""
    rng = np.random.default_rng(7)
    w_conv = rng.normal(0, 0.1, (8, 3, 5, 5)).astype(np.float32)
    w_fc = rng.normal(0, 0.5, (8 * 4 * 4, 32)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_conv"], ["c"], kernel_shape=[5, 5], strides=[2, 2]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[18, 18], strides=[18, 18]),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("MatMul", ["f", "w_fc"], ["embedding"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 150, 150])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w_conv, "w_conv"), numpy_helper.from_array(w_fc, "w_fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    models = home / "models"
    models.mkdir(parents=True)
    (models / "tiny.onnx").write_bytes(model.SerializeToString())
    manifest = {
        "id": "tiny-embedder", "family": "embedder", "runtime": "onnx",
        "files": [{"path": "tiny.onnx",
                   "sha256": hashlib.sha256((models / "tiny.onnx").read_bytes()).hexdigest()}],
        "input_size": [150, 150], "alignment": "dlib-chip-150-0.25", "embedding_dim": 32,
        "mean": 127.5, "std": 128.0, "color": "RGB", "layout": "NCHW",
        "license": "test weights", "commercial_use": True,
    }
    (models / "tiny.json").write_text(json.dumps(manifest))
    return "tiny-embedder"


def test_registered_onnx_embedder_ingests_and_searches(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    model = tiny_embedder(home)
    photos = tmp_path / "p"
    for ident in ("dlib_John_Simm", "dlib_John_Salley"):
        (photos / ident).mkdir(parents=True)
        for p in dev_labels[ident][:2]:
            (photos / ident / p.name).write_bytes(p.read_bytes())
    with FaceSearch(home=home, model=model, workers=1) as fs:
        s = fs.ingest(photos, gallery="custom", legal_basis=BASIS, subject_from_folder=True)
        assert s.faces == 4
        r = fs.search(dev_labels["dlib_John_Simm"][0], gallery="custom", case_number="C", purpose="p", top_k=2)
        assert r.model_id == model
        assert len(r.faces[0].candidates) == 2
        # the probe is one of the gallery photos: its own face scores 1, fused with the
        # subject template (two photos) the subject still scores near 1
        assert r.faces[0].candidates[0].subject == "dlib_John_Simm"
        assert r.faces[0].candidates[0].score > 0.99
        assert fs.gallery_stats("custom").model_id == model
    # the same home configured for the default pack: the gallery stays bound to the tiny model
    with FaceSearch(home=home, workers=1) as fs:
        # a search with a photo uses the gallery's model ...
        r = fs.search(dev_labels["dlib_John_Simm"][0], gallery="custom", case_number="C", purpose="p")
        assert r.model_id == model
        # ... and a probe embedded by another model is refused, as is ingesting with another model
        dlib_faces = fs.ctx.pipeline.analyze(
            np.asarray(Image.open(dev_labels["dlib_John_Simm"][0]).convert("RGB")))
        assert dlib_faces[0].model_id == "dlib-resnet-v1"
        from facesearch.services.search import SearchRequest, SearchService

        with pytest.raises(ModelMismatch, match="tiny-embedder"):
            SearchService(fs.ctx).search_faces(dlib_faces, SearchRequest("custom", "C", "p"), probe_sha256="0" * 64)
        with pytest.raises(ModelMismatch):
            fs.ingest(photos, gallery="custom", legal_basis=BASIS)
