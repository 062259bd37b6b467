"""Generic score metrics for face verification and identification.

Conventions shared by every helper here (documented once, relied on by the protocols):

* Scores are similarities: higher means "more likely the same person".
* A comparison is *accepted* (predicted same person / a hit) when ``score > threshold``,
  strictly. A score equal to the threshold is rejected.
* Operating points at a target false-accept rate use an order statistic of the negative
  (impostor / non-mated) scores, never interpolation: with ``N`` negatives sorted in
  descending order ``s(1) >= s(2) >= ... >= s(N)``, the number of false accepts allowed is
  ``k = floor(far * N)`` and the threshold is ``s(k + 1)``. Because acceptance is strict, at
  most ``k`` negatives exceed it (fewer when ties sit on the threshold), so the empirical
  false-accept rate is always ``<= far``. ``floor`` is computed with a ``1e-9`` tolerance so
  that ``0.29 * 100`` counts as 29, not 28. When ``k >= N`` (``far == 1``) every negative
  may be accepted and the threshold is ``-inf``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "AccuracyThreshold",
    "FnirAtFpir",
    "accuracy_at_threshold",
    "allowed_false_accepts",
    "best_accuracy_threshold",
    "fnir_at_fpir",
    "mated_rank",
    "roc_threshold_at_far",
    "tar_at_far",
]

_FLOOR_TOLERANCE = 1e-9


class AccuracyThreshold(NamedTuple):
    threshold: float
    accuracy: float


class FnirAtFpir(NamedTuple):
    """``fnir`` and ``threshold`` are ``None`` when they cannot be computed (no non-mated
    scores; ``fnir`` also when there are no mated searches)."""

    fnir: float | None
    threshold: float | None


def _scores(values: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                     dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers")
    return arr


def _check_rate(rate: float, name: str) -> float:
    rate = float(rate)
    if not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
    return rate


def allowed_false_accepts(n_negatives: int, far: float) -> int:
    """``floor(far * n_negatives)`` with a small tolerance against float round-off."""
    far = _check_rate(far, "far")
    return int(math.floor(far * n_negatives + _FLOOR_TOLERANCE))


def roc_threshold_at_far(neg_scores: Iterable[float] | np.ndarray, far: float) -> float:
    """The threshold that at most ``far`` of the negative scores exceed.

    Returns ``s(k + 1)``, the ``(k + 1)``-th highest negative score with
    ``k = floor(far * N)``; ``-inf`` when ``k >= N``. See the module docstring.
    Raises ``ValueError`` when there are no negative scores.
    """
    neg = _scores(neg_scores, "neg_scores")
    far = _check_rate(far, "far")
    if neg.size == 0:
        raise ValueError("roc_threshold_at_far needs at least one negative score")
    k = allowed_false_accepts(neg.size, far)
    if k >= neg.size:
        return float("-inf")
    descending = np.sort(neg)[::-1]
    return float(descending[k])


def tar_at_far(
    pos: Iterable[float] | np.ndarray, neg: Iterable[float] | np.ndarray, far: float
) -> float:
    """True-accept rate at the ``roc_threshold_at_far(neg, far)`` threshold: the fraction of
    positive scores strictly above it. Raises ``ValueError`` on empty ``pos`` or ``neg``."""
    p = _scores(pos, "pos")
    if p.size == 0:
        raise ValueError("tar_at_far needs at least one positive score")
    threshold = roc_threshold_at_far(neg, far)
    return float(np.count_nonzero(p > threshold) / p.size)


def accuracy_at_threshold(
    pos: Iterable[float] | np.ndarray, neg: Iterable[float] | np.ndarray, threshold: float
) -> float:
    """Fraction of correct decisions: positives with ``score > threshold`` plus negatives
    with ``score <= threshold``, over all scores."""
    p = _scores(pos, "pos")
    n = _scores(neg, "neg")
    total = p.size + n.size
    if total == 0:
        raise ValueError("accuracy_at_threshold needs at least one score")
    correct = np.count_nonzero(p > threshold) + np.count_nonzero(n <= threshold)
    return float(correct / total)


def best_accuracy_threshold(
    pos: Iterable[float] | np.ndarray, neg: Iterable[float] | np.ndarray
) -> AccuracyThreshold:
    """The threshold maximising ``accuracy_at_threshold(pos, neg, t)``, exhaustively.

    Candidates (one per distinct decision): with ``u(1) < ... < u(m)`` the distinct scores,
    the midpoints ``(u(i) + u(i+1)) / 2`` between neighbours, plus ``nextafter(u(1), -inf)``
    (accept everything) and ``u(m)`` (reject everything). Ties between candidates with the
    same best accuracy go to the SMALLEST threshold.
    """
    p = _scores(pos, "pos")
    n = _scores(neg, "neg")
    total = p.size + n.size
    if total == 0:
        raise ValueError("best_accuracy_threshold needs at least one score")
    uniq = np.unique(np.concatenate([p, n]))  # sorted ascending
    lo, hi = uniq[:-1], uniq[1:]
    mids = lo + (hi - lo) / 2.0
    # Round-off can push a midpoint onto the upper neighbour; ``lo`` gives the same decision.
    mids = np.where(mids < hi, mids, lo)
    candidates = np.concatenate([[np.nextafter(uniq[0], -np.inf)], mids, [uniq[-1]]])
    p_sorted = np.sort(p)
    n_sorted = np.sort(n)
    true_acc = p.size - np.searchsorted(p_sorted, candidates, side="right")  # pos > t
    true_rej = np.searchsorted(n_sorted, candidates, side="right")  # neg <= t
    correct = true_acc + true_rej
    best = int(np.argmax(correct))  # first maximum = smallest threshold
    return AccuracyThreshold(float(candidates[best]), float(correct[best] / total))


def mated_rank(scores: Sequence[float] | np.ndarray, mate_index: int) -> int:
    """Rank (1-based) of gallery entry ``mate_index`` in a candidate list scored ``scores``.

    Ties are broken pessimistically: every other entry with a score ``>=`` the mate's
    ranks ahead of it, i.e. ``rank = 1 + #{j != mate : scores[j] >= scores[mate]}``.
    """
    s = _scores(scores, "scores")
    if not 0 <= mate_index < s.size:
        raise IndexError(f"mate_index {mate_index} out of range for {s.size} scores")
    ahead = int(np.count_nonzero(s >= s[mate_index])) - 1
    return 1 + ahead


def fnir_at_fpir(
    mated_scores_at_rank1_or_none: Iterable[float | None],
    nonmated_top_scores: Iterable[float] | np.ndarray,
    fpir: float,
) -> FnirAtFpir:
    """False-negative identification rate at a target false-positive identification rate.

    ``nonmated_top_scores``: the top-1 candidate score of each non-mated search that returned
    candidates. The threshold is ``roc_threshold_at_far(nonmated_top_scores, fpir)``
    (order statistic ``s(k+1)``, ``k = floor(fpir * N)``; so at most ``fpir`` of the
    non-mated searches have a candidate strictly above it).

    ``mated_scores_at_rank1_or_none``: one entry per mated search: the mated candidate's
    score when it is at rank <= R (R = 1 for the protocols here), else ``None`` (mate not
    returned at rank R, no face, failed enrolment...). A mated search is a miss when its
    entry is ``None`` or ``<= threshold`` (NIST definition); FNIR = misses / mated searches.

    Returns ``FnirAtFpir(None, None)`` when there are no non-mated scores, and
    ``FnirAtFpir(None, threshold)`` when there are no mated searches.
    """
    fpir = _check_rate(fpir, "fpir")
    nonmated = _scores(nonmated_top_scores, "nonmated_top_scores")
    mated = list(mated_scores_at_rank1_or_none)
    if nonmated.size == 0:
        return FnirAtFpir(None, None)
    threshold = roc_threshold_at_far(nonmated, fpir)
    if not mated:
        return FnirAtFpir(None, threshold)
    misses = 0
    for score in mated:
        if score is None:
            misses += 1
            continue
        value = float(score)
        if not math.isfinite(value):
            raise ValueError("mated scores must be finite numbers or None")
        if value <= threshold:
            misses += 1
    return FnirAtFpir(float(misses / len(mated)), threshold)
