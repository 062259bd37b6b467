"""Evaluation protocols: LFW-style verification and folder-per-identity identification.

The embedding step is injected: ``embed(path)`` returns one float32, L2-normalised
embedding for the image file, or ``None`` when no face was found (raising
:class:`facesearch.errors.NoFaceFound` is treated the same as returning ``None``; any other
exception propagates). Similarity is the dot product. Each distinct image path is embedded
once. ``progress(done, total)`` (optional) is called after each distinct image is embedded.

Decision rules (see :mod:`facesearch.eval.metrics`): a comparison is accepted when
``score > threshold`` (strict); thresholds at a target FAR/FPIR are the order statistic
``s(k+1)`` of the negative scores sorted descending, ``k = floor(rate * N)``.

verify
    ``pairs.txt`` in the LFW format: the first line is ``folds n``; then, per fold, ``n``
    same-person lines ``name i j`` followed by ``n`` different-person lines
    ``name1 i name2 j``. Image ``i`` of ``name`` is ``ROOT/name/name_%04d.jpg``. Blank lines
    are skipped; anything else malformed raises ``ValueError`` naming the line. At least two
    folds are needed. A pair where either image has no face counts in ``no_face`` and gets
    the lowest similarity, -1 (it is kept, not dropped). Accuracy: for each fold, the
    threshold maximising accuracy on the OTHER folds (``best_accuracy_threshold``: midpoints
    between neighbouring scores, smallest threshold on ties) is applied to the fold;
    ``accuracy`` is the mean and ``accuracy_std`` the population standard deviation
    (``ddof=0``) of the fold accuracies. ``tar_at_far_0.001`` is computed over all pairs at
    once: threshold ``s(k+1)`` of the different-person scores with ``k = floor(0.001 * N)``
    (e.g. the 4th highest of 3000), TAR = fraction of same-person scores strictly above it.

identify
    Identities are the non-hidden sub-folders of ROOT, sorted by name; their images are the
    files directly inside with a jpg/jpeg/png/webp/bmp extension (case-insensitive, hidden
    files skipped), sorted by file name. Folders without images are ignored. An identity
    with >= 2 images enrols its first image and probes with the rest (mated probes). The
    single-image identities, in name order, alternate: positions 0, 2, 4, ... are enrolled as
    distractors, positions 1, 3, 5, ... are non-mated probes. The gallery holds one
    embedding per enrolled identity; a probe is compared to every gallery entry by dot
    product and candidates are ranked by score, ties broken pessimistically for the mate
    (``metrics.mated_rank``). ``rank1``/``rank5``: fraction of mated probes whose identity is
    at rank <= 1 / <= 5; a mated probe with no face, or whose identity failed to enrol, is a
    miss at every rank. ``fnir_at_fpir_0.01``: threshold ``s(k+1)`` of the non-mated top-1
    scores sorted descending, ``k = floor(0.01 * N)`` (N = non-mated probes that produced
    candidates; with N < 100 that is the highest score); a mated search is a miss when its
    mate is not at rank <= 1 (R = 1) or its score is ``<= threshold``. Non-mated probes
    without a face count in ``no_face`` and are left out of the threshold. ``gallery`` counts
    successful enrolments (distractors included); ``no_face`` counts every image (enrolment,
    mated or non-mated probe) without a face. ``threshold``/``fnir`` are ``None`` (JSON
    null) when no non-mated probe produced candidates; ``rank1``/``rank5``/``fnir`` are
    ``None`` when there are no mated probes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import NoFaceFound
from facesearch.eval.metrics import (
    accuracy_at_threshold,
    best_accuracy_threshold,
    fnir_at_fpir,
    mated_rank,
    roc_threshold_at_far,
    tar_at_far,
)

__all__ = [
    "EmbedFn",
    "IDENTIFY_FPIR",
    "IMAGE_EXTENSIONS",
    "IdentifyResult",
    "IdentifySplit",
    "NO_FACE_SCORE",
    "PairSpec",
    "PairsFile",
    "ProgressFn",
    "VERIFY_FAR",
    "VerifyResult",
    "lfw_image_path",
    "list_identities",
    "parse_pairs",
    "parse_pairs_text",
    "run_identify",
    "run_verify",
    "split_identification",
]

EmbedFn = Callable[[Path], "np.ndarray | None"]
ProgressFn = Callable[[int, int], None]

VERIFY_FAR = 0.001
IDENTIFY_FPIR = 0.01
NO_FACE_SCORE = -1.0
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


# --------------------------------------------------------------------------- embeddings


class _EmbeddingCache:
    """Embeds each distinct path once, in the order given, reporting progress."""

    def __init__(self, embed: EmbedFn, progress: ProgressFn | None) -> None:
        self._embed = embed
        self._progress = progress
        self._cache: dict[Path, np.ndarray | None] = {}
        self._dim: int | None = None

    def embed_all(self, paths: Iterable[Path]) -> dict[Path, np.ndarray | None]:
        distinct = list(dict.fromkeys(paths))
        total = len(distinct)
        for done, path in enumerate(distinct, start=1):
            if path not in self._cache:
                self._cache[path] = self._embed_one(path)
            if self._progress is not None:
                self._progress(done, total)
        return self._cache

    def _embed_one(self, path: Path) -> np.ndarray | None:
        try:
            raw = self._embed(path)
        except NoFaceFound:
            return None
        if raw is None:
            return None
        vec = np.asarray(raw, dtype=np.float32).reshape(-1)
        if vec.size == 0 or not np.all(np.isfinite(vec)):
            raise ValueError(f"embed returned an empty or non-finite embedding for {path}")
        if self._dim is None:
            self._dim = vec.size
        elif vec.size != self._dim:
            raise ValueError(
                f"embed returned a {vec.size}-d embedding for {path}, expected {self._dim}-d"
            )
        return vec


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def _check_files_exist(paths: Iterable[Path]) -> None:
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} image file(s) missing: {shown}{more}")


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class PairSpec:
    """One line of ``pairs.txt``. ``fold`` is 0-based; ``line`` is the 1-based line number."""

    name_a: str
    index_a: int
    name_b: str
    index_b: int
    same: bool
    fold: int
    line: int

    def paths(self, root: Path) -> tuple[Path, Path]:
        return (lfw_image_path(root, self.name_a, self.index_a),
                lfw_image_path(root, self.name_b, self.index_b))


@dataclass(frozen=True)
class PairsFile:
    folds: int
    per_fold: int  # n: same-person pairs per fold (and as many different-person pairs)
    pairs: tuple[PairSpec, ...]


def lfw_image_path(root: Path, name: str, index: int) -> Path:
    return Path(root) / name / f"{name}_{index:04d}.jpg"


def _parse_int(token: str, what: str, lineno: int, text: str, minimum: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ValueError(f"pairs file line {lineno}: {what} must be an integer, got "
                         f"{token!r} in {text!r}") from None
    if value < minimum:
        raise ValueError(f"pairs file line {lineno}: {what} must be >= {minimum}, got "
                         f"{value} in {text!r}")
    return value


def parse_pairs_text(text: str) -> PairsFile:
    """Parse the contents of an LFW ``pairs.txt``; ``ValueError`` naming the line if malformed."""
    lines = [(no, raw.strip()) for no, raw in enumerate(text.splitlines(), start=1)]
    lines = [(no, s) for no, s in lines if s]
    if not lines:
        raise ValueError("pairs file is empty: expected a first line 'folds n'")
    head_no, head = lines[0]
    fields = head.split()
    if len(fields) != 2:
        raise ValueError(f"pairs file line {head_no}: expected 'folds n' (two integers), "
                         f"got {head!r}")
    folds = _parse_int(fields[0], "folds", head_no, head, 1)
    per_fold = _parse_int(fields[1], "n", head_no, head, 1)
    body = lines[1:]
    expected = folds * 2 * per_fold
    pairs: list[PairSpec] = []
    for i in range(expected):
        fold, within = divmod(i, 2 * per_fold)
        same = within < per_fold
        if i >= len(body):
            last = body[-1][0] if body else head_no
            kind = "same-person" if same else "different-person"
            raise ValueError(
                f"pairs file ends after line {last}: expected {expected} pair lines "
                f"({folds} folds x 2 x {per_fold}), found {len(body)}; missing a {kind} "
                f"line for fold {fold + 1}")
        lineno, s = body[i]
        f = s.split()
        if same:
            if len(f) != 3:
                raise ValueError(
                    f"pairs file line {lineno}: expected a same-person line 'name i j' "
                    f"(fold {fold + 1}), got {s!r}")
            name = f[0]
            a = _parse_int(f[1], "image index", lineno, s, 1)
            b = _parse_int(f[2], "image index", lineno, s, 1)
            pairs.append(PairSpec(name, a, name, b, True, fold, lineno))
        else:
            if len(f) != 4:
                raise ValueError(
                    f"pairs file line {lineno}: expected a different-person line "
                    f"'name1 i name2 j' (fold {fold + 1}), got {s!r}")
            a = _parse_int(f[1], "image index", lineno, s, 1)
            b = _parse_int(f[3], "image index", lineno, s, 1)
            pairs.append(PairSpec(f[0], a, f[2], b, False, fold, lineno))
    if len(body) > expected:
        lineno, s = body[expected]
        raise ValueError(f"pairs file line {lineno}: unexpected extra line {s!r} after "
                         f"{expected} pair lines ({folds} folds x 2 x {per_fold})")
    return PairsFile(folds=folds, per_fold=per_fold, pairs=tuple(pairs))


def parse_pairs(pairs_file: Path) -> PairsFile:
    """Read and parse an LFW ``pairs.txt`` file (see :func:`parse_pairs_text`)."""
    return parse_pairs_text(Path(pairs_file).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class VerifyResult:
    pairs: int
    accuracy: float
    accuracy_std: float
    tar_at_far: float  # at VERIFY_FAR (key "tar_at_far_0.001")
    no_face: int
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]  # threshold applied to fold i (chosen on the others)
    mean_threshold: float
    far_threshold: float  # the threshold used for tar_at_far
    protocol: str = "verify"

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "pairs": self.pairs,
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "tar_at_far_0.001": self.tar_at_far,
            "no_face": self.no_face,
            # extra keys
            "fold_accuracies": list(self.fold_accuracies),
            "fold_thresholds": list(self.fold_thresholds),
            "mean_threshold": self.mean_threshold,
            "far_threshold": self.far_threshold,
        }


def run_verify(
    root: Path,
    pairs: Path | PairsFile,
    embed: EmbedFn,
    *,
    progress: ProgressFn | None = None,
) -> VerifyResult:
    """The LFW verification protocol (module docstring). ``pairs`` is a path to
    ``pairs.txt`` or an already parsed :class:`PairsFile`."""
    spec = pairs if isinstance(pairs, PairsFile) else parse_pairs(Path(pairs))
    if spec.folds < 2:
        raise ValueError(f"verify needs at least 2 folds to choose thresholds on the other "
                         f"folds; the pairs file has {spec.folds}")
    root = Path(root)
    pair_paths = [p.paths(root) for p in spec.pairs]
    all_paths = [path for pp in pair_paths for path in pp]
    _check_files_exist(all_paths)
    embeddings = _EmbeddingCache(embed, progress).embed_all(all_paths)

    scores = np.empty(len(spec.pairs), dtype=np.float64)
    same = np.array([p.same for p in spec.pairs], dtype=bool)
    folds = np.array([p.fold for p in spec.pairs], dtype=np.int64)
    no_face = 0
    for i, (pa, pb) in enumerate(pair_paths):
        ea, eb = embeddings[pa], embeddings[pb]
        if ea is None or eb is None:
            no_face += 1
            scores[i] = NO_FACE_SCORE
        else:
            scores[i] = _similarity(ea, eb)

    fold_acc: list[float] = []
    fold_thr: list[float] = []
    for fold in range(spec.folds):
        test = folds == fold
        train = ~test
        chosen = best_accuracy_threshold(scores[train & same], scores[train & ~same])
        fold_thr.append(chosen.threshold)
        fold_acc.append(accuracy_at_threshold(scores[test & same], scores[test & ~same],
                                              chosen.threshold))

    pos, neg = scores[same], scores[~same]
    return VerifyResult(
        pairs=len(spec.pairs),
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        tar_at_far=tar_at_far(pos, neg, VERIFY_FAR),
        no_face=no_face,
        fold_accuracies=tuple(fold_acc),
        fold_thresholds=tuple(fold_thr),
        mean_threshold=float(np.mean(fold_thr)),
        far_threshold=roc_threshold_at_far(neg, VERIFY_FAR),
    )


# --------------------------------------------------------------------------- identify


@dataclass(frozen=True)
class IdentifySplit:
    """Who is enrolled with which image, and which images probe."""

    enrol: tuple[tuple[str, Path], ...]  # (identity, image), mated identities and distractors
    mated: tuple[tuple[str, Path], ...]  # (true identity, probe image)
    nonmated: tuple[Path, ...]
    distractors: tuple[str, ...]


def _is_image(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_EXTENSIONS)


def list_identities(root: Path) -> list[tuple[str, list[Path]]]:
    """``(identity, images)`` for each non-hidden sub-folder of ``root`` with at least one
    image, folders sorted by name and images by file name."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"identification root is not a directory: {root}")
    out: list[tuple[str, list[Path]]] = []
    for folder in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name):
        if folder.name.startswith("."):
            continue
        images = sorted((f for f in folder.iterdir() if _is_image(f)), key=lambda f: f.name)
        if images:
            out.append((folder.name, images))
    return out


def split_identification(identities: Sequence[tuple[str, Sequence[Path]]]) -> IdentifySplit:
    """Apply the enrolment/probe split rules to ``list_identities`` output (order kept)."""
    enrol: list[tuple[str, Path]] = []
    mated: list[tuple[str, Path]] = []
    nonmated: list[Path] = []
    distractors: list[str] = []
    singles = 0
    for name, images in identities:
        if len(images) >= 2:
            enrol.append((name, images[0]))
            mated.extend((name, img) for img in images[1:])
        elif len(images) == 1:
            if singles % 2 == 0:
                enrol.append((name, images[0]))
                distractors.append(name)
            else:
                nonmated.append(images[0])
            singles += 1
    return IdentifySplit(tuple(enrol), tuple(mated), tuple(nonmated), tuple(distractors))


@dataclass(frozen=True)
class IdentifyResult:
    gallery: int
    mated: int
    nonmated: int
    no_face: int
    rank1: float | None
    rank5: float | None
    fnir_at_fpir: float | None  # at IDENTIFY_FPIR (key "fnir_at_fpir_0.01")
    threshold: float | None
    protocol: str = "identify"

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "gallery": self.gallery,
            "mated": self.mated,
            "nonmated": self.nonmated,
            "no_face": self.no_face,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "fnir_at_fpir_0.01": self.fnir_at_fpir,
            "threshold": self.threshold,
        }


def run_identify(
    root: Path,
    embed: EmbedFn,
    *,
    progress: ProgressFn | None = None,
) -> IdentifyResult:
    """The folder-per-identity identification protocol (module docstring)."""
    split = split_identification(list_identities(Path(root)))
    all_paths = ([p for _, p in split.enrol] + [p for _, p in split.mated]
                 + list(split.nonmated))
    embeddings = _EmbeddingCache(embed, progress).embed_all(all_paths)
    no_face = sum(1 for p in dict.fromkeys(all_paths) if embeddings[p] is None)

    gallery_ids: list[str] = []
    gallery_vecs: list[np.ndarray] = []
    for name, path in split.enrol:
        vec = embeddings[path]
        if vec is not None:
            gallery_ids.append(name)
            gallery_vecs.append(vec)
    index_of = {name: i for i, name in enumerate(gallery_ids)}
    matrix = (np.stack(gallery_vecs).astype(np.float64) if gallery_vecs
              else np.zeros((0, 0), dtype=np.float64))

    hits1 = hits5 = 0
    mated_rank1_scores: list[float | None] = []
    for name, path in split.mated:
        vec = embeddings[path]
        slot = index_of.get(name)
        if vec is None or slot is None:
            mated_rank1_scores.append(None)
            continue
        scores = matrix @ vec.astype(np.float64)
        rank = mated_rank(scores, slot)
        hits1 += rank <= 1
        hits5 += rank <= 5
        mated_rank1_scores.append(float(scores[slot]) if rank <= 1 else None)

    nonmated_top: list[float] = []
    if gallery_ids:
        for path in split.nonmated:
            vec = embeddings[path]
            if vec is not None:
                nonmated_top.append(float(np.max(matrix @ vec.astype(np.float64))))

    n_mated = len(split.mated)
    fnir, threshold = fnir_at_fpir(mated_rank1_scores, nonmated_top, IDENTIFY_FPIR)
    return IdentifyResult(
        gallery=len(gallery_ids),
        mated=n_mated,
        nonmated=len(split.nonmated),
        no_face=no_face,
        rank1=hits1 / n_mated if n_mated else None,
        rank5=hits5 / n_mated if n_mated else None,
        fnir_at_fpir=fnir,
        threshold=threshold,
    )
