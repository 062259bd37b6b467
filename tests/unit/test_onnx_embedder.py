"""OnnxEmbedder + loader, against a tiny ONNX network built here and re-computed in numpy."""
from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facesearch.errors import ManifestError, ModelFileMismatch, ModelFileMissing  # noqa: E402
from facesearch.models.loader import load_embedder, registry_for  # noqa: E402
from facesearch.models.onnx_embedder import (  # noqa: E402
    OnnxEmbedder,
    available_providers,
    resize_chips,
    session_options,
)

SIZE = 32
CH = 8
DIM = 16
MEAN = 127.5
STD = 64.0

_rng = np.random.default_rng(1234)
W_CONV = _rng.normal(0, 0.3, size=(CH, 3, 3, 3)).astype(np.float32)
B_CONV = _rng.normal(0, 0.1, size=(CH,)).astype(np.float32)
W_FC = _rng.normal(0, 1.0, size=(CH, DIM)).astype(np.float32)
B_FC = _rng.normal(0, 0.1, size=(DIM,)).astype(np.float32)


def build_model(path: Path, *, batch: int | str = "N", layout: str = "NCHW",
                size: int = SIZE, out_dim: int = DIM) -> Path:
    """input -> [Transpose] -> Conv3x3 -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Add."""
    w_fc = W_FC if out_dim == DIM else np.ones((CH, out_dim), np.float32)
    b_fc = B_FC if out_dim == DIM else np.zeros((out_dim,), np.float32)
    if layout == "NCHW":
        in_shape = [batch, 3, size, size]
    else:
        in_shape = [batch, size, size, 3]
    nodes = []
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Conv", [x, "w_conv", "b_conv"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_fc"], ["mm"]),
        helper.make_node("Add", ["mm", "b_fc"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, out_dim])],
        initializer=[
            numpy_helper.from_array(W_CONV, "w_conv"),
            numpy_helper.from_array(B_CONV, "b_conv"),
            numpy_helper.from_array(w_fc, "w_fc"),
            numpy_helper.from_array(b_fc, "b_fc"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(chips: np.ndarray, *, color: str = "RGB", mean: float = MEAN,
              std: float = STD) -> np.ndarray:
    """The same network in numpy (float64), fed RGB uint8 chips."""
    x = chips.astype(np.float64)
    if color == "BGR":
        x = x[..., ::-1]
    x = (x - mean) / std
    x = x.transpose(0, 3, 1, 2)  # N,3,H,W
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # N,3,H-2,W-2,3,3
    conv = np.einsum("ncijkl,ockl->noij", win, W_CONV.astype(np.float64))
    conv += B_CONV[None, :, None, None]
    feat = np.maximum(conv, 0).mean(axis=(2, 3))
    y = feat @ W_FC.astype(np.float64) + B_FC
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_manifest(home: Path, model_id: str, model_path: Path | str, **over) -> Path:
    mdir = home / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    mp = Path(model_path)
    data = {
        "id": model_id,
        "family": "embedder",
        "runtime": "onnx",
        "files": [{
            "path": mp.name if mp.parent == mdir else str(mp),
            "sha256": sha256(mp) if mp.is_file() else "0" * 64,
        }],
        "input_size": [SIZE, SIZE],
        "embedding_dim": DIM,
        "mean": MEAN,
        "std": STD,
        "color": "RGB",
        "layout": "NCHW",
        "alignment": "arcface-112",
        "license": "test-only",
    }
    for k, v in over.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    out = mdir / f"{model_id}.json"
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def chips(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def model_path(home: Path, name: str) -> Path:
    (home / "models").mkdir(parents=True, exist_ok=True)
    return home / "models" / name


def embedder_for(home: Path, model_id: str = "tiny", *, build: dict | None = None, **over):
    mp = build_model(model_path(home, f"{model_id}.onnx"), **(build or {}))
    write_manifest(home, model_id, mp, **over)
    return load_embedder(registry_for(home, None).get(model_id))


def test_shape_dtype_unit_norm_and_matches_numpy(home: Path) -> None:
    emb = embedder_for(home)
    assert isinstance(emb, OnnxEmbedder)
    assert emb.id == "tiny" and emb.dim == DIM
    assert not emb.loaded  # lazy
    c = chips(5)
    out = emb.embed(c)
    assert emb.loaded
    assert out.shape == (5, DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, reference(c), atol=1e-5)


def test_bgr_and_rgb_differ_and_each_matches_numpy(home: Path) -> None:
    rgb = embedder_for(home, "tiny-rgb", color="RGB")
    bgr = embedder_for(home, "tiny-bgr", color="BGR")
    c = chips(4, seed=7)
    a, b = rgb.embed(c), bgr.embed(c)
    np.testing.assert_allclose(a, reference(c, color="RGB"), atol=1e-5)
    np.testing.assert_allclose(b, reference(c, color="BGR"), atol=1e-5)
    assert np.abs(a - b).max() > 1e-2


def test_normalisation_is_applied(home: Path) -> None:
    emb = embedder_for(home, "tiny-norm", mean=0.0, std=255.0)
    c = chips(3, seed=3)
    out = emb.embed(c)
    np.testing.assert_allclose(out, reference(c, mean=0.0, std=255.0), atol=1e-5)
    assert np.abs(out - reference(c)).max() > 1e-3


def test_nhwc_layout(home: Path) -> None:
    emb = embedder_for(home, "tiny-nhwc", build={"layout": "NHWC"}, layout="NHWC")
    c = chips(3, seed=5)
    np.testing.assert_allclose(emb.embed(c), reference(c), atol=1e-5)


def test_layout_mismatch_raises(home: Path) -> None:
    emb = embedder_for(home, "tiny-wrong-layout", layout="NHWC")  # graph is NCHW
    with pytest.raises(ManifestError, match="layout"):
        emb.embed(chips(1))


def test_resizes_chips_of_another_size(home: Path) -> None:
    emb = embedder_for(home)
    big = chips(2, size=40, seed=9)
    out = emb.embed(big)
    assert out.shape == (2, DIM)
    np.testing.assert_allclose(out, reference(resize_chips(big, (SIZE, SIZE))), atol=1e-5)


def test_chunks_match_single_run(home: Path) -> None:
    emb = embedder_for(home)
    small = OnnxEmbedder(emb.manifest, batch_size=2)
    c = chips(5, seed=11)
    np.testing.assert_allclose(small.embed(c), emb.embed(c), atol=1e-6)


def test_empty_batch(home: Path) -> None:
    emb = embedder_for(home)
    out = emb.embed(np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert out.shape == (0, DIM) and out.dtype == np.float32


def test_fixed_batch_one_embeds_many(home: Path) -> None:
    emb = embedder_for(home, "tiny-b1", build={"batch": 1})
    c = chips(5, seed=2)
    out = emb.embed(c)
    assert out.shape == (5, DIM)
    np.testing.assert_allclose(out, reference(c), atol=1e-5)


def test_fixed_batch_four_pads_last_chunk(home: Path) -> None:
    emb = embedder_for(home, "tiny-b4", build={"batch": 4})
    c = chips(5, seed=4)
    np.testing.assert_allclose(emb.embed(c), reference(c), atol=1e-5)


def test_wrong_sha256_raises_mismatch_naming_file(home: Path) -> None:
    mp = build_model(model_path(home, "tiny.onnx"))
    write_manifest(home, "tiny", mp, files=[{"path": "tiny.onnx", "sha256": "ab" * 32}])
    emb = load_embedder(registry_for(home, None).get("tiny"))  # lazy: no check yet
    with pytest.raises(ModelFileMismatch) as ei:
        emb.embed(chips(1))
    assert "tiny.onnx" in str(ei.value)


def test_missing_file_raises(home: Path) -> None:
    write_manifest(home, "ghost", model_path(home, "ghost.onnx"))
    emb = load_embedder(registry_for(home, None).get("ghost"))
    with pytest.raises(ModelFileMissing, match="ghost.onnx"):
        emb.embed(chips(1))


def test_manifest_without_embedding_dim(home: Path) -> None:
    mp = build_model(model_path(home, "tiny.onnx"))
    write_manifest(home, "tiny", mp, embedding_dim=None)
    with pytest.raises(ManifestError, match="embedding_dim"):
        registry_for(home, None)


def test_embedding_dim_mismatch(home: Path) -> None:
    emb = embedder_for(home, "tiny", embedding_dim=32)
    with pytest.raises(ManifestError, match="embedding_dim"):
        emb.embed(chips(1))


def test_input_size_mismatch(home: Path) -> None:
    emb = embedder_for(home, "tiny", input_size=[48, 48])
    with pytest.raises(ManifestError, match="input_size"):
        emb.embed(chips(1))


def test_unknown_alignment_rejected(home: Path) -> None:
    with pytest.raises(ManifestError, match="alignment"):
        embedder_for(home, "tiny", alignment="whatever")


def test_model_dir_and_absolute_path(tmp_path: Path, home: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    mp = build_model(other / "abs.onnx")
    # manifest in a separate model dir, pointing at the graph by absolute path
    mdir = tmp_path / "model_dir"
    write_manifest(tmp_path / "tmpl", "abs", mp)
    mdir.mkdir()
    (mdir / "abs.json").write_text((tmp_path / "tmpl" / "models" / "abs.json").read_text())
    reg = registry_for(home, mdir)
    emb = load_embedder(reg.get("abs"))
    c = chips(2)
    np.testing.assert_allclose(emb.embed(c), reference(c), atol=1e-5)
    assert reg.get("dlib-resnet-v1").runtime == "dlib"  # bundled manifests still there


def test_loader_rejects_non_embedder(home: Path) -> None:
    with pytest.raises(ManifestError):
        load_embedder(registry_for(home, None).get("mtcnn"))


def test_loader_dispatches_dlib_lazily(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("facesearch.models.dlib_models")

    class DlibEmbedder:
        def __init__(self, manifest):
            self.manifest = manifest

    fake.DlibEmbedder = DlibEmbedder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "facesearch.models.dlib_models", fake)
    emb = load_embedder(registry_for(home, None).get("dlib-resnet-v1"))
    assert isinstance(emb, DlibEmbedder)


def test_helpers() -> None:
    assert "CPUExecutionProvider" in available_providers()
    opts = session_options(2)
    assert opts.intra_op_num_threads == 2


def test_unavailable_provider_falls_back_to_cpu(home: Path) -> None:
    emb = embedder_for(home)
    gpu = OnnxEmbedder(emb.manifest, providers=["NoSuchExecutionProvider"])
    c = chips(2)
    np.testing.assert_allclose(gpu.embed(c), reference(c), atol=1e-5)
