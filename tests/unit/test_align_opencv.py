"""dlib's 150x150 face chip computed with OpenCV (the default) against dlib's own chip.

On the dev faces: mean absolute pixel difference below 0.01 grey levels (of 255; measured 3e-5),
and the embeddings of the two chips agree (cosine >= 0.99999; the ONNX conversion's bar is
0.9999), so galleries embedded with either chip are interchangeable."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib")

from facesearch.config import Settings  # noqa: E402
from facesearch.pipeline.align import (  # noqa: E402
    DLIB5_TEMPLATE, OPENCV, align, chip_transform, dlib_chip, opencv_dlib_chip,
)
from facesearch.pipeline.build import build_pipeline  # noqa: E402
from facesearch.pipeline.decode import read_image  # noqa: E402
from facesearch.types import BBox  # noqa: E402

N_PHOTOS = 16


def test_chip_transform_maps_the_padded_template_onto_the_landmarks() -> None:
    rng = np.random.default_rng(3)
    a, s, t = 0.3, 2.2, np.array([140.0, 90.0])
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    tpl = (0.25 + DLIB5_TEMPLATE) / 1.5 * 150
    lm = (s * (r @ tpl.T)).T + t + rng.normal(0, 1e-9, (5, 2))
    m = chip_transform(lm, 150, 0.25)
    np.testing.assert_allclose(m[:, :2] @ tpl.T + m[:, 2:], lm.T, atol=1e-6)


def test_a_face_outside_the_image_gives_black_not_garbage() -> None:
    img = np.full((100, 100, 3), 200, np.uint8)
    lm = ((380.0, 300.0), (360.0, 300.0), (300.0, 300.0), (320.0, 300.0), (340.0, 340.0))
    chip = opencv_dlib_chip(img, lm)
    assert chip.shape == (150, 150, 3) and chip.max() == 0


@pytest.fixture(scope="module")
def faces(dev_data: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    pl = build_pipeline(settings)
    photos = sorted(p for p in dev_data.rglob("*.jpg"))[::7][:N_PHOTOS]
    out = []
    for p in photos:
        img = read_image(p, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes).rgb
        for d in pl.detect(img):
            out.append((img, d.bbox, pl.landmarks.predict(img, d.bbox)))
    assert len(out) >= N_PHOTOS // 2
    return pl, out


def test_opencv_chip_is_dlibs_chip(faces) -> None:  # noqa: ANN001
    _, items = faces
    mads, big = [], 0
    for img, box, lm in items:
        ref = dlib_chip(img, box, lm)
        ours = opencv_dlib_chip(img, lm)
        assert ours.shape == ref.shape == (150, 150, 3) and ours.dtype == np.uint8
        mads.append(np.abs(ref.astype(np.int16) - ours).mean())
        big += box.w > 300  # faces more than twice the chip: dlib's pyramid path
    assert big >= 1, "no face large enough to exercise the pyramid"
    assert np.mean(mads) < 0.01 and max(mads) < 0.05, mads


def test_embeddings_of_the_two_chips_agree(faces) -> None:  # noqa: ANN001
    pl, items = faces
    ref = np.stack([dlib_chip(img, box, lm) for img, box, lm in items])
    ours = np.stack([align(img, box, lm, "dlib-chip-150-0.25", (150, 150), backend=OPENCV) for img, box, lm in items])
    cos = (pl.embed_chips(ref) * pl.embed_chips(ours)).sum(axis=1)
    assert cos.min() >= 0.99999, cos.min()


def test_the_pipeline_uses_the_opencv_chip_by_default_and_dlibs_on_request(tmp_path: Path) -> None:
    assert build_pipeline(Settings(home=tmp_path)).options.align_backend == "opencv"
    assert build_pipeline(Settings(home=tmp_path, align_backend="dlib")).options.align_backend == "dlib"


def test_dlib_and_opencv_backends_differ_only_in_who_computes_the_chip() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    lm = ((250.0, 160.0), (225.0, 161.0), (150.0, 160.0), (175.0, 161.0), (200.0, 230.0))
    box = BBox(120, 110, 160, 160)
    a = align(img, box, lm, "dlib-chip-150-0.25", (150, 150), backend="dlib")
    b = align(img, box, lm, "dlib-chip-150-0.25", (150, 150), backend=OPENCV)
    assert np.abs(a.astype(np.int16) - b).mean() < 0.05
