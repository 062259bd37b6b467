"""The CUDA path's models on PyTorch's CPU: the same outputs as ONNX Runtime from the same
ONNX graphs (skipped without PyTorch, which is the optional `gpu` extra). The fallback to the
CPU when CUDA is asked for but missing is tested whether or not PyTorch is installed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from facesearch.config import Settings
from facesearch.errors import ModelError
from facesearch.pipeline.build import build_pipeline


def test_cuda_without_a_cuda_device_falls_back_to_the_cpu_with_one_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from facesearch.models.torch_onnx import cuda_available

    if cuda_available():
        pytest.skip("this machine has CUDA")
    with caplog.at_level(logging.WARNING, logger="facesearch.pipeline.build"):
        pl = build_pipeline(Settings(home=tmp_path, device="cuda"))
    assert pl.device == "cpu"
    lines = [r.getMessage() for r in caplog.records if "FACESEARCH_DEVICE=cuda" in r.getMessage()]
    assert len(lines) == 1 and "CPU" in lines[0], lines
    assert "Torch" not in type(pl.detector).__name__  # the CPU pipeline, as without the setting
    assert type(pl.embedder.inner).__name__ == "OnnxEmbedder"


torch = pytest.importorskip("torch")

from facesearch.models.dlib_onnx import ensure_onnx  # noqa: E402
from facesearch.models.manifest import ModelRegistry, load_manifest  # noqa: E402
from facesearch.models.mtcnn import MtcnnDetector  # noqa: E402
from facesearch.models.onnx_embedder import OnnxEmbedder  # noqa: E402
from facesearch.models.torch_models import TorchEmbedder, TorchMtcnnDetector  # noqa: E402
from facesearch.models.torch_onnx import TorchGraph  # noqa: E402
from facesearch.pipeline.decode import read_image  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_manifest(ensure_onnx(tmp_path_factory.mktemp("home")))


def test_resnet_on_torch_equals_onnx_runtime(converted) -> None:  # noqa: ANN001
    chips = np.random.default_rng(5).integers(0, 255, (9, 150, 150, 3), dtype=np.uint8)
    a = OnnxEmbedder(converted).embed(chips)
    b = TorchEmbedder(converted, device="cpu", batch_size=4).embed(chips)  # 3 batches, the last short
    assert b.shape == (9, 128) and b.dtype == np.float32
    assert (a * b).sum(axis=1).min() >= 0.99999


def test_mtcnn_on_torch_finds_the_same_faces_as_onnx_runtime(dev_data: Path) -> None:
    photos = sorted(dev_data.rglob("*.jpg"))[::11][:8]
    imgs = [read_image(p, max_pixels=80_000_000, max_bytes=60_000_000).rgb for p in photos]
    ref = MtcnnDetector().detect_batch(imgs)
    got = TorchMtcnnDetector(device="cpu").detect_batch(imgs)
    assert sum(len(r) for r in ref) >= len(imgs) // 2
    for r, g in zip(ref, got):
        assert len(r) == len(g)
        for a, b in zip(r, g):
            assert a.bbox.iou(b.bbox) > 0.98 and abs(a.score - b.score) < 1e-3
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1.0)


def test_every_mtcnn_network_output_matches(tmp_path: Path) -> None:
    import onnxruntime as ort

    paths = ModelRegistry().get("mtcnn").verify()
    rng = np.random.default_rng(2)
    for name, shape in (("pnet.onnx", (2, 37, 29, 3)), ("rnet.onnx", (5, 24, 24, 3)), ("onet.onnx", (5, 48, 48, 3))):
        x = rng.normal(0, 0.5, shape).astype(np.float32)
        sess = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})
        got = TorchGraph(paths[name]).run(x)
        for r, g in zip(ref, got):
            assert r.shape == g.shape, name
            np.testing.assert_allclose(r, g, atol=2e-4, rtol=1e-3, err_msg=name)


def test_a_graph_with_an_operator_we_do_not_replay_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    p = tmp_path / "sig.onnx"
    onnx.save(helper.make_model(g), str(p))
    with pytest.raises(ModelError, match="Sigmoid"):
        TorchGraph(p)


def test_network_inputs_made_on_the_device_equal_the_cpu_ones_bit_for_bit() -> None:
    """P-Net's padded group and the R-Net/O-Net crops are sent as bytes and normalised on the
    device; the values must be exactly those of the CPU path (padding included)."""
    rng = np.random.default_rng(3)
    levels = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((31, 40), (17, 12), (31, 29))]
    cpu, dev = MtcnnDetector(), TorchMtcnnDetector(device="cpu")
    a = cpu._pnet_batch(levels, 31, 40)
    b = dev._pnet_batch(levels, 31, 40).numpy()
    assert a.shape == b.shape == (3, 40, 31, 3)
    np.testing.assert_array_equal(a, b)
    assert (b[1, 12:] == 0).all() and (b[1, :, 17:] == 0).all()  # the padded cells
    crops = rng.integers(0, 256, (7, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cpu._crop_batch(crops), dev._crop_batch(crops).numpy())


def test_crops_resized_on_the_device_match_opencv_within_one_level() -> None:
    """R-Net/O-Net crops made by matrix products on the device against OpenCV's INTER_AREA on
    the CPU: boxes inside, across and beyond the image edges, shrunk, grown and mixed."""
    rng = np.random.default_rng(11)
    im = rng.integers(0, 256, (157, 211, 3), dtype=np.uint8)
    boxes = [[10, 12, 90, 92], [-20, -15, 40, 45], [180, 130, 260, 210], [50, 60, 62, 71],
             [0, 0, 211, 157], [100, 20, 115, 150], [30, 140, 150, 152], [5, 5, 6, 6]]
    boxes += [[int(x), int(y), int(x + s), int(y + s + d)] for x, y, s, d in zip(
        rng.integers(-30, 200, 40), rng.integers(-30, 150, 40), rng.integers(2, 120, 40), rng.integers(-1, 2, 40))]
    bs = np.array(boxes, dtype=np.float64)
    cpu, dev = MtcnnDetector(), TorchMtcnnDetector(device="cpu")
    for size in (24, 48):
        a = cpu._crops([im], [bs], size)
        b = dev._crops([im], [bs], size).numpy()
        assert a.shape == b.shape == (len(bs), size, size, 3)
        diff = np.abs(a - b) * 128  # in grey levels
        assert diff.max() <= 1.0001, (size, diff.max())
        assert (diff > 0.5).mean() < 0.03, (size, (diff > 0.5).mean())
        shrunk = [i for i, (x1, y1, x2, y2) in enumerate(boxes) if x2 - x1 >= size and y2 - y1 >= size]
        assert (diff[shrunk] > 0.5).mean() < 0.001  # the area path is OpenCV's own arithmetic
    tiny = dev  # an image over the device budget is cropped on the CPU, with the same result
    tiny.crop_budget = 0
    np.testing.assert_array_equal(cpu._crops([im], [bs], 24), tiny._crops([im], [bs], 24).numpy())
