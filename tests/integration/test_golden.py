"""Golden detections and embeddings: the default pipeline gives the same boxes and vectors
as when they were recorded (tests/golden/make_golden.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch import detect_faces
from facesearch.types import BBox

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "dlib-resnet-v1.json").read_text())


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from facesearch.config import Settings
    from facesearch.pipeline.build import build_pipeline

    home = tmp_path_factory.mktemp("home")
    return {b: build_pipeline(Settings(home=home, embed_backend=b)) for b in ("onnx", "dlib")}


@pytest.mark.parametrize("backend", ["onnx", "dlib"])
@pytest.mark.parametrize("rel", sorted(GOLDEN))
def test_golden_box_and_embedding(dev_data: Path, rel: str, backend: str, pipelines) -> None:  # noqa: ANN001
    """Both backends of dlib's ResNet (our ONNX conversion and dlib itself) give the recorded vectors."""
    from facesearch.pipeline.decode import read_image

    g = GOLDEN[rel]
    faces = pipelines[backend].analyze(read_image(dev_data / rel, max_pixels=10**8).rgb)
    assert len(faces) == g["faces"]
    assert faces[0].bbox.iou(BBox(*g["box"])) > 0.95
    e = faces[0].embedding
    assert e.dtype == np.float32 and e.shape == (128,)
    assert abs(float(np.linalg.norm(e)) - 1) < 1e-5
    assert float(e @ np.asarray(g["embedding"], dtype=np.float32)) > 0.9999


def test_detect_faces_facade_returns_boxes_largest_first(dev_data: Path) -> None:
    faces = detect_faces(dev_data / "fr_obama/1.jpg")
    assert faces and faces[0].bbox.w > 100
    assert all(a.bbox.area >= b.bbox.area for a, b in zip(faces, faces[1:]))
