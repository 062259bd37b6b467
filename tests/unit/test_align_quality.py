"""Alignment geometry and quality reasons."""
from __future__ import annotations

import numpy as np

from facesearch.pipeline.align import ARCFACE_112, arcface_chip, eye_centres, similarity_transform
from facesearch.pipeline.quality import BLURRED, STRONG_POSE, TOO_SMALL, QualityPolicy, assess, pose
from facesearch.types import BBox


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    a, s, t = np.deg2rad(20), 1.7, np.array([12.0, -4.0])
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = (s * (r @ src.T)).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_112.copy()
    mirrored = src.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_eye_centres_from_dlib_five_points_put_the_left_eye_first() -> None:
    # dlib order: two corners of one eye, two of the other, nose base below
    lm = ((70.0, 40.0), (60.0, 40.0), (20.0, 41.0), (30.0, 41.0), (45.0, 65.0))
    left, right, nose = eye_centres(lm)
    assert left[0] < right[0]
    np.testing.assert_allclose(left, [25, 41])
    np.testing.assert_allclose(right, [65, 40])
    np.testing.assert_allclose(nose, [45, 65])


def test_arcface_chip_puts_the_eyes_on_the_template() -> None:
    img = np.zeros((300, 300, 3), np.uint8)
    eyes = [(100, 120), (180, 118)]
    for x, y in eyes:
        img[y - 2: y + 3, x - 2: x + 3] = 255
    lm = ((100.0, 120.0), (180.0, 118.0), (140.0, 160.0), (110.0, 200.0), (170.0, 200.0))
    chip = arcface_chip(img, lm)
    assert chip.shape == (112, 112, 3)
    ys, xs = np.nonzero(chip[:, :, 0] > 100)
    left = xs < 56
    assert abs(xs[left].mean() - ARCFACE_112[0, 0]) < 3 and abs(ys[left].mean() - ARCFACE_112[0, 1]) < 3


def test_pose_is_zero_for_a_frontal_face_and_large_for_a_turned_one() -> None:
    frontal = ((70.0, 40.0), (60.0, 40.0), (20.0, 40.0), (30.0, 40.0), (45.0, 65.0))
    turned = ((70.0, 40.0), (60.0, 40.0), (20.0, 40.0), (30.0, 40.0), (68.0, 65.0))
    assert pose(frontal) < 0.01
    assert pose(turned) > 0.35


def test_quality_gives_reasons_for_small_blurred_and_turned_faces() -> None:
    rng = np.random.default_rng(1)
    sharp = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    flat = np.full((150, 150, 3), 128, np.uint8)
    frontal = ((70.0, 40.0), (60.0, 40.0), (20.0, 40.0), (30.0, 40.0), (45.0, 65.0))
    turned = ((70.0, 40.0), (60.0, 40.0), (20.0, 40.0), (30.0, 40.0), (68.0, 65.0))
    pol = QualityPolicy()
    good = assess(BBox(0, 0, 120, 120), frontal, sharp, pol)
    assert good.acceptable and good.score > 0.9
    assert TOO_SMALL in assess(BBox(0, 0, 20, 20), frontal, sharp, pol).reasons
    assert BLURRED in assess(BBox(0, 0, 120, 120), frontal, flat, pol).reasons
    q = assess(BBox(0, 0, 120, 120), turned, sharp, pol)
    assert STRONG_POSE in q.reasons and not q.acceptable and q.score < good.score
