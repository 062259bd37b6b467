"""Evaluation protocols and metrics on tiny hand-designed datasets (fake ``embed``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import NoFaceFound
from facesearch.eval.metrics import (
    accuracy_at_threshold,
    best_accuracy_threshold,
    fnir_at_fpir,
    mated_rank,
    roc_threshold_at_far,
    tar_at_far,
)
from facesearch.eval.protocols import (
    lfw_image_path,
    list_identities,
    parse_pairs,
    parse_pairs_text,
    run_identify,
    run_verify,
    split_identification,
)

# --------------------------------------------------------------------------- helpers


def unit(*components: float, dim: int) -> np.ndarray:
    """A unit vector whose first components are given; the remainder goes to the last axis,
    so its dot product with basis vector ``e_i`` (i < dim - 1) is ``components[i]``."""
    v = np.zeros(dim, dtype=np.float64)
    v[: len(components)] = components
    rest = 1.0 - float(np.dot(v, v))
    assert rest >= 0
    v[-1] = math.sqrt(rest)
    return v.astype(np.float32)


def basis(i: int, dim: int) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


class FakeEmbed:
    def __init__(self, table: dict[Path, np.ndarray | None]) -> None:
        self.table = table
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> np.ndarray | None:
        self.calls.append(path)
        return self.table[path]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- metrics


def test_roc_threshold_is_order_statistic_with_strict_exceedance():
    neg = [0.0] * 998 + [0.5, 0.9]
    # k = floor(0.001 * 1000) = 1 false accept allowed -> threshold = 2nd highest
    assert roc_threshold_at_far(neg, 0.001) == 0.5
    # fewer than 1000 negatives -> k = 0 -> the highest negative
    assert roc_threshold_at_far([0.1, 0.3, 0.2], 0.001) == 0.3
    # far * N round-off: 0.29 * 100 == 28.999999999999996 must still allow 29
    assert roc_threshold_at_far(list(range(100)), 0.29) == 99 - 29
    assert roc_threshold_at_far([0.1, 0.2], 1.0) == -math.inf
    with pytest.raises(ValueError):
        roc_threshold_at_far([], 0.01)
    with pytest.raises(ValueError):
        roc_threshold_at_far([0.1], 1.5)


def test_tar_at_far_hand_computed():
    neg = [0.0] * 998 + [0.5, 0.9]
    pos = [0.95, 0.9, 0.6, 0.5, 0.4]
    # threshold 0.5; strictly above: 0.95, 0.9, 0.6 -> 3 / 5 (0.5 itself is rejected)
    assert tar_at_far(pos, neg, 0.001) == pytest.approx(0.6)
    # ties on the threshold: three negatives at 0.5, k = 1 -> threshold 0.5, FAR = 1/1000
    neg_ties = [0.0] * 997 + [0.5, 0.5, 0.9]
    assert roc_threshold_at_far(neg_ties, 0.001) == 0.5
    assert tar_at_far(pos, neg_ties, 0.001) == pytest.approx(0.6)


def test_best_accuracy_threshold_midpoints_and_smallest_on_ties():
    # separable: midpoint between 0.6 and 0.7
    thr, acc = best_accuracy_threshold([0.8, 0.7], [0.6, 0.2])
    assert thr == pytest.approx(0.65) and acc == 1.0
    # candidates: -inf-ish .5, 0.25 -> .75, 0.45 -> .5, 0.7 -> .75, 0.9 -> .5: tie -> 0.25
    thr, acc = best_accuracy_threshold([0.9, 0.4], [0.5, 0.1])
    assert thr == pytest.approx(0.25) and acc == 0.75
    # everything positive -> accept-all threshold just below the minimum
    thr, acc = best_accuracy_threshold([0.3, 0.4], [])
    assert thr < 0.3 and acc == 1.0
    # everything negative -> reject-all threshold = maximum (score > t never holds)
    thr, acc = best_accuracy_threshold([], [0.3, 0.4])
    assert thr == 0.4 and acc == 1.0
    assert accuracy_at_threshold([0.5, 0.6], [0.5], 0.5) == pytest.approx(2 / 3)


def test_mated_rank_breaks_ties_pessimistically():
    assert mated_rank([0.2, 0.9, 0.5], 1) == 1
    assert mated_rank([0.2, 0.9, 0.5], 0) == 3
    assert mated_rank([0.7, 0.7, 0.1], 0) == 2
    assert mated_rank([0.7, 0.7, 0.1], 1) == 2


def test_fnir_at_fpir_hand_computed():
    nonmated = [0.01 * i for i in range(100)]  # 0.00 .. 0.99
    # k = floor(0.01 * 100) = 1 -> threshold = 2nd highest = 0.98
    fnir, thr = fnir_at_fpir([0.99, 0.985, 0.98, None], nonmated, 0.01)
    assert thr == pytest.approx(0.98)
    assert fnir == pytest.approx(0.5)  # 0.98 (== threshold) and None are misses
    assert fnir_at_fpir([0.5], [], 0.01) == (None, None)
    assert fnir_at_fpir([], [0.3], 0.01) == (None, 0.3)


# --------------------------------------------------------------------------- pairs.txt


GOOD_PAIRS = """2 2
Ann 1 2
Bo 1 2
Ann 3 Bo 3
Cy 1 Dee 1

Eve 1 2
Fay 1 2
Eve 3 Fay 3
Gus 1 Hal 1
"""


def test_parse_pairs_good(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text(GOOD_PAIRS.replace("2 2", "2\t2", 1))
    spec = parse_pairs(f)
    assert (spec.folds, spec.per_fold, len(spec.pairs)) == (2, 2, 8)
    assert [p.same for p in spec.pairs] == [True, True, False, False] * 2
    assert [p.fold for p in spec.pairs] == [0] * 4 + [1] * 4
    p = spec.pairs[2]
    assert (p.name_a, p.index_a, p.name_b, p.index_b, p.line) == ("Ann", 3, "Bo", 3, 4)
    assert spec.pairs[4].line == 7  # the blank line is skipped but still counted
    assert p.paths(tmp_path) == (tmp_path / "Ann" / "Ann_0003.jpg",
                                 tmp_path / "Bo" / "Bo_0003.jpg")
    assert lfw_image_path(tmp_path, "Ann", 12) == tmp_path / "Ann" / "Ann_0012.jpg"


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("", None, "empty"),
        ("10\nAnn 1 2\n", 1, "folds n"),
        ("x 2\n", 1, "folds must be an integer"),
        ("0 2\n", 1, "folds must be >= 1"),
        ("1 1\nAnn 1 Bo 2\nCy 1 Dee 1\n", 2, "same-person"),
        ("1 1\nAnn 1 2\nCy 1 2\n", 3, "different-person"),
        ("1 1\nAnn one 2\nCy 1 Dee 1\n", 2, "image index must be an integer"),
        ("1 1\nAnn 0 2\nCy 1 Dee 1\n", 2, "image index must be >= 1"),
        ("1 1\nAnn 1 2\nCy 1 Dee 1\nEd 1 2\n", 4, "unexpected extra line"),
        ("2 1\nAnn 1 2\nCy 1 Dee 1\nEd 1 2\n", 4, "ends after line 4"),
    ],
)
def test_parse_pairs_malformed(text, line, fragment):
    with pytest.raises(ValueError) as info:
        parse_pairs_text(text)
    message = str(info.value)
    assert fragment in message
    if line is not None and "ends after" not in message:
        assert f"line {line}:" in message


# --------------------------------------------------------------------------- verify

DIM = 3


def make_verify_set(root: Path, fold_scores, none_images=()):
    """One pair per line, each pair with its own two images: ``A_k`` image 1 is the basis
    vector, the other image a unit vector with the designed dot product. ``fold_scores``:
    per fold ``(same_scores, diff_scores)``. Returns the pairs.txt text and the embed table."""
    n = len(fold_scores[0][0])
    lines = [f"{len(fold_scores)} {n}"]
    table: dict[Path, np.ndarray | None] = {}
    k = 0
    for same_scores, diff_scores in fold_scores:
        for s in same_scores:
            name = f"P{k:02d}"
            lines.append(f"{name} 1 2")
            table[touch(lfw_image_path(root, name, 1))] = basis(0, DIM)
            table[touch(lfw_image_path(root, name, 2))] = unit(s, dim=DIM)
            k += 1
        for s in diff_scores:
            a, b = f"P{k:02d}", f"Q{k:02d}"
            lines.append(f"{a} 1 {b} 1")
            table[touch(lfw_image_path(root, a, 1))] = basis(0, DIM)
            table[touch(lfw_image_path(root, b, 1))] = unit(s, dim=DIM)
            k += 1
    for name, idx in none_images:
        table[lfw_image_path(root, name, idx)] = None
    return "\n".join(lines) + "\n", table


def test_verify_thresholds_chosen_on_other_folds(tmp_path):
    root = tmp_path / "lfw"
    text, table = make_verify_set(root, [
        ([0.9, 0.6], [0.5, 0.1]),  # fold 1: perfect on itself at 0.55
        ([0.8, 0.7], [0.2, 0.1]),  # fold 2: perfect on itself at 0.45
    ])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    embed = FakeEmbed(table)
    seen: list[tuple[int, int]] = []
    result = run_verify(root, pairs, embed, progress=lambda d, t: seen.append((d, t)))
    # fold 1 gets fold 2's threshold 0.45: 0.9 ok, 0.6 ok, 0.5 wrong, 0.1 ok -> 0.75
    # fold 2 gets fold 1's threshold 0.55: all right -> 1.0
    assert result.fold_thresholds == pytest.approx((0.45, 0.55), abs=1e-6)
    assert result.fold_accuracies == pytest.approx((0.75, 1.0))
    assert result.accuracy == pytest.approx(0.875)
    assert result.accuracy_std == pytest.approx(0.125)  # population std (ddof=0)
    assert result.mean_threshold == pytest.approx(0.5, abs=1e-6)
    # TAR@FAR=0.001 over all pairs: 4 negatives -> k = 0 -> threshold = max negative 0.5
    assert result.far_threshold == pytest.approx(0.5, abs=1e-6)
    assert result.tar_at_far == pytest.approx(1.0)
    assert result.no_face == 0 and result.pairs == 8
    assert len(embed.calls) == len(set(embed.calls)) == 16
    assert seen[-1] == (16, 16) and len(seen) == 16

    data = result.to_json()
    assert list(data)[:6] == ["protocol", "pairs", "accuracy", "accuracy_std",
                              "tar_at_far_0.001", "no_face"]
    assert data["protocol"] == "verify"
    json.dumps(data)  # plain JSON types


def test_verify_three_folds_uses_union_of_other_folds(tmp_path):
    root = tmp_path / "lfw"
    text, table = make_verify_set(root, [
        ([0.9], [0.3]),
        ([0.8], [0.4]),
        ([0.35], [0.1]),
    ])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    result = run_verify(root, pairs, FakeEmbed(table))
    # fold 3's threshold comes from folds 1+2: pos {0.9, 0.8}, neg {0.3, 0.4} -> 0.6,
    # which misclassifies fold 3's 0.35 same pair -> 0.5
    # fold 1 from folds 2+3: pos {0.8, 0.35}, neg {0.4, 0.1}: best 0.75 at 0.225 (smallest)
    #   -> fold 1: 0.9 ok, 0.3 wrong -> 0.5
    # fold 2 from folds 1+3: pos {0.9, 0.35}, neg {0.3, 0.1}: separable at 0.325 -> 0.5
    assert result.fold_thresholds == pytest.approx((0.225, 0.325, 0.6), abs=1e-6)
    assert result.fold_accuracies == pytest.approx((0.5, 0.5, 0.5))


def test_verify_no_face_pair_scored_minus_one_and_kept(tmp_path):
    root = tmp_path / "lfw"
    text, table = make_verify_set(
        root, [([0.9], [0.1]), ([0.8], [0.2])], none_images=[("P02", 2)]
    )
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    result = run_verify(root, pairs, FakeEmbed(table))
    assert result.no_face == 1 and result.pairs == 4
    # fold 2's same pair scores -1. Fold 1's threshold from fold 2 ({-1} vs {0.2}):
    # best 0.5 at the accept-all threshold just below -1 -> fold 1: 0.9 ok, 0.1 wrong -> 0.5
    # fold 2's threshold from fold 1 ({0.9} vs {0.1}) = 0.5 -> -1 wrong, 0.2 ok -> 0.5
    assert result.fold_accuracies == pytest.approx((0.5, 0.5))
    assert result.fold_thresholds[0] < -1.0
    assert result.fold_thresholds[1] == pytest.approx(0.5, abs=1e-6)
    # TAR: 2 negatives, threshold = 0.2; same scores {0.9, -1} -> 0.5
    assert result.tar_at_far == pytest.approx(0.5)


def test_verify_embeds_each_image_once_and_checks_files(tmp_path):
    root = tmp_path / "lfw"
    text = "2 1\nAnn 1 2\nAnn 1 Bo 1\nAnn 2 3\nBo 1 Cy 1\n"
    table = {
        touch(lfw_image_path(root, "Ann", 1)): basis(0, DIM),
        touch(lfw_image_path(root, "Ann", 2)): basis(0, DIM),
        touch(lfw_image_path(root, "Ann", 3)): basis(0, DIM),
        touch(lfw_image_path(root, "Bo", 1)): basis(1, DIM),
        touch(lfw_image_path(root, "Cy", 1)): basis(2, DIM),
    }
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    embed = FakeEmbed(table)
    result = run_verify(root, pairs, embed)
    assert sorted(map(str, embed.calls)) == sorted(map(str, table))
    assert result.accuracy == 1.0
    lfw_image_path(root, "Cy", 1).unlink()
    with pytest.raises(FileNotFoundError, match="Cy_0001.jpg"):
        run_verify(root, pairs, embed)
    with pytest.raises(ValueError, match="at least 2 folds"):
        run_verify(root, parse_pairs_text("1 1\nAnn 1 2\nAnn 1 Bo 1\n"), embed)


# --------------------------------------------------------------------------- identify

# gallery slots (basis axes): alice 0, bob 1, dave 2, frank 3, hank 4, jack 5; 6 = slack
IDIM = 7


def make_identify_set(root: Path):
    files = {
        "alice": ["a3.jpg", "a0.png", "a2.JPG", "a1.jpeg", "notes.txt"],
        "bob": ["b1.webp", "b0.bmp"],
        "carol": ["c0.jpg", "c1.jpg"],
        "dave": ["d0.jpg"],  # single #0 -> distractor
        "erin": ["e0.jpg"],  # single #1 -> non-mated
        "frank": ["f0.jpg"],  # single #2 -> distractor
        "gina": ["g0.jpg"],  # single #3 -> non-mated (no face)
        "hank": ["h0.jpg"],  # single #4 -> distractor
        "ivan": ["i0.jpg"],  # single #5 -> non-mated
        "jack": ["j0.jpg"],  # single #6 -> distractor
        "zed": ["readme.md"],  # no images: ignored
    }
    for person, names in files.items():
        for n in names:
            touch(root / person / n)
    (root / ".hidden").mkdir()
    touch(root / ".hidden" / "x.jpg")
    p = lambda person, name: root / person / name  # noqa: E731
    table = {
        # enrolments
        p("alice", "a0.png"): basis(0, IDIM),
        p("bob", "b0.bmp"): basis(1, IDIM),
        p("carol", "c0.jpg"): None,  # enrolment fails
        p("dave", "d0.jpg"): basis(2, IDIM),
        p("frank", "f0.jpg"): basis(3, IDIM),
        p("hank", "h0.jpg"): basis(4, IDIM),
        p("jack", "j0.jpg"): basis(5, IDIM),
        # mated probes       alice  bob   dave  frank hank  jack
        p("alice", "a1.jpeg"): unit(0.9, 0.1, 0.1, 0.1, 0.1, 0.1, dim=IDIM),  # rank 1, 0.9
        p("alice", "a2.JPG"): unit(0.5, 0.6, 0.55, 0.0, 0.0, 0.0, dim=IDIM),  # rank 3
        p("alice", "a3.jpg"): unit(0.1, 0.5, 0.4, 0.3, 0.2, 0.15, dim=IDIM),  # rank 6
        p("bob", "b1.webp"): unit(0.2, 0.7, 0.0, 0.0, 0.0, 0.0, dim=IDIM),  # rank 1, 0.7
        p("carol", "c1.jpg"): unit(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, dim=IDIM),  # not enrolled
        # non-mated probes
        p("erin", "e0.jpg"): unit(0.1, 0.0, 0.75, 0.0, 0.0, 0.0, dim=IDIM),  # top 0.75
        p("gina", "g0.jpg"): None,
        p("ivan", "i0.jpg"): unit(0.0, 0.0, 0.0, 0.3, 0.0, 0.0, dim=IDIM),  # top 0.3
    }
    return table


def test_identify_split_rules(tmp_path):
    root = tmp_path / "set"
    make_identify_set(root)
    identities = list_identities(root)
    assert [name for name, _ in identities] == [
        "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan", "jack"]
    assert [f.name for f in identities[0][1]] == ["a0.png", "a1.jpeg", "a2.JPG", "a3.jpg"]
    split = split_identification(identities)
    assert [(n, f.name) for n, f in split.enrol] == [
        ("alice", "a0.png"), ("bob", "b0.bmp"), ("carol", "c0.jpg"), ("dave", "d0.jpg"),
        ("frank", "f0.jpg"), ("hank", "h0.jpg"), ("jack", "j0.jpg")]
    assert split.distractors == ("dave", "frank", "hank", "jack")
    assert [(n, f.name) for n, f in split.mated] == [
        ("alice", "a1.jpeg"), ("alice", "a2.JPG"), ("alice", "a3.jpg"),
        ("bob", "b1.webp"), ("carol", "c1.jpg")]
    assert [f.name for f in split.nonmated] == ["e0.jpg", "g0.jpg", "i0.jpg"]


def test_identify_hand_computed(tmp_path):
    root = tmp_path / "set"
    embed = FakeEmbed(make_identify_set(root))
    seen: list[tuple[int, int]] = []
    result = run_identify(root, embed, progress=lambda d, t: seen.append((d, t)))
    assert result.gallery == 6  # carol's enrolment failed
    assert result.mated == 5 and result.nonmated == 3
    assert result.no_face == 2  # carol's enrolment + gina's non-mated probe
    # rank 1: a1, b1; rank <= 5 adds a2 (rank 3); a3 is rank 6; c1 is a miss (no enrolment)
    assert result.rank1 == pytest.approx(2 / 5)
    assert result.rank5 == pytest.approx(3 / 5)
    # non-mated top-1 scores {0.75, 0.3} (gina excluded): k = floor(0.01 * 2) = 0 -> 0.75
    assert result.threshold == pytest.approx(0.75, abs=1e-6)
    # only a1 (0.9 at rank 1) is above 0.75; b1 (0.7) and the other three miss -> 4/5
    assert result.fnir_at_fpir == pytest.approx(4 / 5)
    assert len(embed.calls) == len(set(embed.calls)) == 15
    assert seen[-1] == (15, 15)
    data = result.to_json()
    assert list(data) == ["protocol", "gallery", "mated", "nonmated", "no_face", "rank1",
                          "rank5", "fnir_at_fpir_0.01", "threshold"]
    assert data["protocol"] == "identify"
    json.dumps(data)


def test_identify_no_face_probe_is_a_miss_and_no_nonmated_gives_null(tmp_path):
    root = tmp_path / "set"
    for f in ["amy/1.jpg", "amy/2.jpg", "amy/3.jpg", "ben/1.jpg", "ben/2.jpg", "cat/1.jpg"]:
        touch(root / f)
    table = {
        root / "amy/1.jpg": basis(0, 4),
        root / "amy/2.jpg": unit(0.9, 0.1, dim=4),
        root / "amy/3.jpg": None,  # mated probe without a face
        root / "ben/1.jpg": basis(1, 4),
        root / "ben/2.jpg": unit(0.1, 0.8, dim=4),
        root / "cat/1.jpg": basis(2, 4),  # the only single: position 0 -> distractor
    }

    def embed(path: Path):
        if table[path] is None:
            raise NoFaceFound("no face")  # raising NoFaceFound == returning None
        return table[path]

    result = run_identify(root, embed)
    assert (result.gallery, result.mated, result.nonmated, result.no_face) == (3, 3, 0, 1)
    assert result.rank1 == pytest.approx(2 / 3) and result.rank5 == pytest.approx(2 / 3)
    assert result.threshold is None and result.fnir_at_fpir is None
    data = result.to_json()
    assert data["threshold"] is None and data["fnir_at_fpir_0.01"] is None
    assert json.loads(json.dumps(data))["threshold"] is None
