"""The CUDA path on a real GPU (marked `gpu`: skipped unless FACESEARCH_DEVICE=cuda, and without
a CUDA device): detection and embedding on the GPU give the CPU path's faces and embeddings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.config import Settings
from facesearch.pipeline.build import build_pipeline
from facesearch.pipeline.decode import read_image

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from facesearch.models.torch_onnx import cuda_available

    if not cuda_available():
        pytest.skip("no CUDA device")
    home = tmp_path_factory.mktemp("home")
    gpu = build_pipeline(Settings(home=home, device="cuda"))
    cpu = build_pipeline(Settings(home=home, device="cpu", detector="mtcnn"))
    assert gpu.device == "cuda" and type(gpu.detector).__name__ == "TorchMtcnnDetector"
    return gpu, cpu


def test_gpu_batch_gives_the_cpu_faces_and_embeddings(pipelines, dev_data: Path) -> None:  # noqa: ANN001
    gpu, cpu = pipelines
    photos = sorted(dev_data.rglob("*.jpg"))[::9][:12]
    imgs = [read_image(p, max_pixels=80_000_000, max_bytes=60_000_000).rgb for p in photos]
    a, b = cpu.analyze_batch(imgs), gpu.analyze_batch(imgs)
    assert sum(len(f) for f in a) >= len(imgs) // 2
    for fa, fb in zip(a, b):
        assert len(fa) == len(fb)
        for x, y in zip(fa, fb):
            assert x.bbox.iou(y.bbox) > 0.95
            assert float(np.dot(x.embedding, y.embedding)) >= 0.999
