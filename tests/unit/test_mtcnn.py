"""MTCNN detector on real photos: agreement with dlib's HOG detector, landmark geometry,
blank and multi-face images, batch == single-image results, manifest checks.

Photos are downscaled to at most 640 px on the longer side so the module stays fast.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facesearch.errors import ModelFileMismatch, ModelFileMissing
from facesearch.models.manifest import ModelRegistry, load_manifest
from facesearch.models.mtcnn import MtcnnDetector, nms
from facesearch.types import BBox, DetectedFace

MAX_SIDE = 640
SCENE_PREFIXES = ("deepface_", "fr_", "openface_")
N_SCENES = 15

# Measured on the 15 scene photos of _scene_photos() at <= 640 px (onnxruntime 1.32, OpenCV 5.0,
# dlib 20.0): dlib's HOG finds 15 faces and MTCNN finds all 15; the matched pairs have a mean
# IoU of 0.71 (range 0.64-0.75). The IoU is well below 1 by construction: dlib's boxes are
# squares from the eyebrows to the lower lip, MTCNN's are taller (forehead to chin). 0.6 leaves
# a margin for library/version differences while still catching real bugs: feeding the
# networks untransposed images, for instance, matched only 9 of 29 dlib faces (mean best IoU
# 0.20) on a 29-photo sample of the dev set.
MIN_RECALL_OF_DLIB = 0.9
MIN_MEAN_IOU = 0.6


def _dev_data() -> Path:
    env = os.environ.get("FACESEARCH_DEV_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "faces-dev").resolve()


DEV = _dev_data()
needs_dev = pytest.mark.skipif(
    not DEV.is_dir(), reason=f"dev photo set not found at {DEV} (set FACESEARCH_DEV_DATA)"
)


def _load(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return np.asarray(im).copy()


def _first_photos(prefixes: tuple[str, ...]) -> list[Path]:
    out = []
    for d in sorted(DEV.iterdir()):
        if d.is_dir() and d.name.startswith(prefixes):
            photos = sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
            if photos:
                out.append(photos[0])
    return out


def _scene_photos() -> list[Path]:
    """15 full-scene photos: the first photo of every fr_/openface_ identity (7) and of the
    first 8 deepface_ identities."""
    deepface = _first_photos(("deepface_",))
    others = _first_photos(tuple(p for p in SCENE_PREFIXES if p != "deepface_"))
    return (others + deepface)[:N_SCENES]


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector(ModelRegistry().get("mtcnn"))


@pytest.fixture(scope="module")
def scenes() -> list[tuple[str, np.ndarray]]:
    paths = _scene_photos()
    if len(paths) < 10:
        pytest.skip(f"too few scene photos in {DEV}")
    return [(f"{p.parent.name}/{p.name}", _load(p)) for p in paths]


@pytest.fixture(scope="module")
def scene_faces(detector, scenes) -> list[list[DetectedFace]]:
    return [detector.detect(img) for _, img in scenes]


@functools.cache
def _hog():  # type: ignore[no-untyped-def]
    dlib = pytest.importorskip("dlib")
    return dlib.get_frontal_face_detector()


def _dlib_boxes(img: np.ndarray) -> list[BBox]:
    det = _hog()
    return [BBox(r.left(), r.top(), r.width(), r.height()) for r in det(img, 1)]


def _centre_dist(a: BBox, b: BBox) -> float:
    return float(np.hypot(a.x + a.w / 2 - b.x - b.w / 2, a.y + a.h / 2 - b.y - b.h / 2))


def _matches(ref: BBox, faces: list[DetectedFace]) -> DetectedFace | None:
    """The MTCNN face that matches a dlib box: IoU > 0.3, or centre within half the dlib box."""
    cands = [f for f in faces if f.bbox.iou(ref) > 0.3 or _centre_dist(f.bbox, ref) < 0.5 * ref.w]
    return max(cands, key=lambda f: f.bbox.iou(ref), default=None)


def _assert_valid(faces: list[DetectedFace], img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for f in faces:
        b = f.bbox
        assert 0 <= b.x and 0 <= b.y and b.w > 0 and b.h > 0
        assert b.x + b.w <= w and b.y + b.h <= h
        assert 0.0 <= f.score <= 1.0
        assert len(f.landmarks) == 5
        assert f.detector == "mtcnn"
    areas = [f.bbox.area for f in faces]
    assert areas == sorted(areas, reverse=True)


@needs_dev
def test_agrees_with_dlib_hog(scenes, scene_faces):
    ious: list[float] = []
    total = 0
    missed = []
    for (name, img), faces in zip(scenes, scene_faces):
        _assert_valid(faces, img)
        for ref in _dlib_boxes(img):
            total += 1
            m = _matches(ref, faces)
            if m is None:
                missed.append(name)
            else:
                ious.append(m.bbox.iou(ref))
    assert total >= 10, "dlib found too few faces to compare"
    recall = len(ious) / total
    assert recall >= MIN_RECALL_OF_DLIB, f"MTCNN found {len(ious)}/{total} dlib faces; missed in {missed}"
    assert float(np.mean(ious)) >= MIN_MEAN_IOU, f"mean IoU {np.mean(ious):.3f}"


@needs_dev
def test_landmarks_geometry(scenes, scene_faces):
    checked = 0
    for (name, img), faces in zip(scenes, scene_faces):
        for f in faces:
            if f.score < 0.9 or min(f.bbox.w, f.bbox.h) < 40:
                continue  # small or doubtful detections have unreliable landmarks
            b = f.bbox
            pts = np.asarray(f.landmarks)
            assert np.all(pts[:, 0] >= b.x) and np.all(pts[:, 0] <= b.x + b.w), name
            assert np.all(pts[:, 1] >= b.y) and np.all(pts[:, 1] <= b.y + b.h), name
            le, re, nose, ml, mr = pts
            assert le[0] < re[0] and ml[0] < mr[0], name  # "left" = smaller x
            assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1]), name
            checked += 1
    assert checked >= len(scenes)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_image_has_no_faces(detector, value):
    img = np.full((480, 640, 3), value, dtype=np.uint8)
    assert detector.detect(img) == []


def test_tiny_and_grey_images(detector):
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []
    assert detector.detect(np.full((100, 120), 90, np.uint8)) == []


def _canvas(paths: list[Path], tile: int = 200, gap: int = 60) -> tuple[np.ndarray, list[BBox]]:
    n = len(paths)
    canvas = np.full((tile + 2 * gap, n * tile + (n + 1) * gap, 3), 110, np.uint8)
    tiles = []
    for i, p in enumerate(paths):
        x = gap + i * (tile + gap)
        face = np.asarray(Image.fromarray(_load(p)).resize((tile, tile), Image.Resampling.LANCZOS))
        canvas[gap : gap + tile, x : x + tile] = face
        tiles.append(BBox(x, gap, tile, tile))
    return canvas, tiles


@needs_dev
@pytest.mark.parametrize("n", [3, 4])
def test_multi_face_canvas(detector, n):
    paths = _first_photos(("dlib_",))[:n]
    if len(paths) < n:
        pytest.skip("not enough dlib_ face photos")
    canvas, tiles = _canvas(paths)
    faces = detector.detect(canvas)
    _assert_valid(faces, canvas)
    assert len(faces) == n
    for t in tiles:  # one face per pasted photo, centred in it
        inside = [f for f in faces if _centre_dist(f.bbox, t) < t.w / 4]
        assert len(inside) == 1


@needs_dev
def test_batch_equals_single(detector, scenes):
    imgs = [img for _, img in scenes[:4]]
    paths = _first_photos(("dlib_",))[:4]
    canvas, _ = _canvas(paths)
    imgs += [
        canvas,
        np.full((300, 400, 3), 128, np.uint8),
        imgs[0],  # same size as another: shares P-Net runs without padding
        np.ascontiguousarray(imgs[1][: imgs[1].shape[0] - 7, : imgs[1].shape[1] - 5]),  # padded
        _load(paths[0]),  # 150 x 150
    ]
    batch = detector.detect_batch(imgs)
    assert len(batch) == len(imgs)
    assert detector.detect_batch([]) == []
    for img, got in zip(imgs, batch):
        want = detector.detect(img)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert np.allclose(a.bbox.as_list(), b.bbox.as_list(), atol=1)
            assert abs(a.score - b.score) < 1e-3
            assert np.allclose(a.landmarks, b.landmarks, atol=0.5)


def test_nms_modes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 6, 6], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5, "union").tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, "min").tolist() == [0, 3]
    assert nms(np.empty((0, 4)), np.empty(0), 0.5).tolist() == []


def _copied_manifest(tmp_path: Path) -> dict:
    m = ModelRegistry().get("mtcnn")
    data = json.loads(m.source.read_text()) if m.source else {}
    for f in data["files"]:
        src = m.resolve(f["name"])
        shutil.copy(src, tmp_path / f["name"])
        f.pop("package", None)
        f["path"] = f["name"]  # relative to the copied manifest
    return data


def test_copied_manifest_works_and_sha_mismatch_raises(tmp_path):
    data = _copied_manifest(tmp_path)
    good = tmp_path / "mtcnn.json"
    good.write_text(json.dumps(data))
    det = MtcnnDetector(load_manifest(good))
    assert det.detect(np.zeros((64, 64, 3), np.uint8)) == []

    data["files"][1]["sha256"] = "0" * 64
    bad = tmp_path / "mtcnn-bad.json"
    bad.write_text(json.dumps(data))
    det = MtcnnDetector(load_manifest(bad))  # nothing is loaded or checked yet
    assert det._nets is None
    with pytest.raises(ModelFileMismatch):
        det.detect(np.zeros((64, 64, 3), np.uint8))


def test_changed_model_file_raises(tmp_path):
    data = _copied_manifest(tmp_path)
    with (tmp_path / "onet.onnx").open("ab") as fh:
        fh.write(b"\0")
    p = tmp_path / "mtcnn.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ModelFileMismatch):
        MtcnnDetector(load_manifest(p)).detect(np.zeros((64, 64, 3), np.uint8))


def test_missing_model_file_raises_on_first_use(tmp_path):
    data = _copied_manifest(tmp_path)
    (tmp_path / "pnet.onnx").unlink()
    p = tmp_path / "mtcnn.json"
    p.write_text(json.dumps(data))
    det = MtcnnDetector(load_manifest(p))
    with pytest.raises(ModelFileMissing):
        det.detect(np.zeros((64, 64, 3), np.uint8))
