"""Embedding benchmark: dlib's ResNet face embedder vs our ONNX conversion of it on ONNX Runtime.

    python bench/embed_onnx.py [--data DIR] [--limit N] [--batch 1 --batch 8 --batch 32]
                               [--threads 1 --threads 2] [--repeats 3] [--provider cpu|cuda]

Chips: every dev photo (``FACESEARCH_DEV_DATA`` or ``/work/shared/data/faces-dev``) decoded
with OpenCV, faces found by ``dlib.get_frontal_face_detector()`` (no upsampling), aligned by the
5-point ``shape_predictor`` and cut with ``dlib.get_face_chip(size=150, padding=0.25)``; the
same chips go to both engines.

* dlib: ``face_recognition_model_v1.compute_face_descriptor(list_of_chips)`` (its batch API),
  called with ``batch`` chips at a time; this dlib build has no BLAS and runs single-threaded.
* ONNX: ``export_onnx`` of the installed ``.dat`` (conversion time reported), one
  ``InferenceSession`` per intra-op thread count (``session_options`` from
  ``facesearch.models.onnx_embedder``), run on ``(batch, 3, 150, 150)`` float32 chips.

Each configuration embeds all chips ``--repeats`` times after one warm-up batch; the best pass
is reported (other jobs may share the cores). ``min cos`` compares each engine's output on a
chip with dlib's single-chip ``compute_face_descriptor(chip)``. Writes
``bench/results/embed_onnx.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import dlib
import face_recognition_models
import numpy as np
import onnxruntime as ort

from facesearch.models.dlib_onnx import export_onnx
from facesearch.models.onnx_embedder import session_options

ROOT = Path(__file__).resolve().parent
MODELS = Path(face_recognition_models.__file__).parent / "models"
DAT = MODELS / "dlib_face_recognition_resnet_model_v1.dat"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_data() -> Path:
    env = os.environ.get("FACESEARCH_DEV_DATA")
    return Path(env) if env else ROOT.parent.parent / "shared" / "data" / "faces-dev"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_chips(data: Path, limit: int | None) -> tuple[list[np.ndarray], int]:
    exts = (".jpg", ".jpeg", ".png", ".webp")
    photos = sorted(p for p in data.rglob("*") if p.suffix.lower() in exts)
    if limit:
        photos = photos[:limit]
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for p in photos:
        bgr = cv2.imdecode(np.fromfile(str(p), dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            log(f"skip {p}: cannot decode")
            continue
        img = np.ascontiguousarray(bgr[:, :, ::-1])
        for r in det(img, 0):
            chips.append(np.asarray(dlib.get_face_chip(img, sp(img, r), size=150, padding=0.25)))
    return chips, len(photos)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def time_passes(run, n_items: int, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best ms/face over ``repeats`` passes of ``run(start, stop)`` over all items."""
    run(0, min(batch, n_items))  # warm-up
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        parts = [run(s, min(s + batch, n_items)) for s in range(0, n_items, batch)]
        best = min(best, time.perf_counter() - t)
        out = np.concatenate(parts)
    return 1000.0 * best / n_items, out  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 8 32)")
    ap.add_argument("--threads", type=int, action="append",
                    help="ORT intra-op threads (default 1 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "embed_onnx.md")
    args = ap.parse_args()
    batches = args.batch or [1, 8, 32]
    threads = args.threads or [1, 2]
    load1 = os.getloadavg()[0]

    log(f"chips from {args.data} ...")
    t = time.perf_counter()
    chips, n_photos = load_chips(args.data, args.limit)
    log(f"{len(chips)} faces on {n_photos} photos in {time.perf_counter() - t:.1f}s")
    if not chips:
        log("no faces found")
        return 1
    n = len(chips)
    x = np.stack(chips).astype(np.float32).transpose(0, 3, 1, 2).copy()

    rec = dlib.face_recognition_model_v1(str(DAT))
    ref = np.array([np.asarray(rec.compute_face_descriptor(c)) for c in chips], dtype=np.float64)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        onnx_path = export_onnx(DAT, Path(tmp) / "dlib-resnet-v1-onnx.onnx")
        convert_s = time.perf_counter() - t
        onnx_bytes = onnx_path.stat().st_size
        rows: list[tuple[str, int, str, float, float]] = []

        for b in batches:
            def run_dlib(s: int, e: int) -> np.ndarray:
                return np.array([np.asarray(v) for v in rec.compute_face_descriptor(chips[s:e])])

            ms, out = time_passes(run_dlib, n, b, args.repeats)
            rows.append(("dlib", b, "1 (dlib, no BLAS)", ms, float(cosine(ref, out).min())))
            log(f"dlib batch {b}: {ms:.2f} ms/face")

        providers = ["CPUExecutionProvider"]
        if args.provider == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                log("CUDAExecutionProvider not available in this onnxruntime build")
                return 1
        engine = "onnx-" + args.provider
        for th in threads:
            sess = ort.InferenceSession(str(onnx_path), session_options(th), providers=providers)
            for b in batches:
                def run_onnx(s: int, e: int) -> np.ndarray:
                    return sess.run(None, {"chips": x[s:e]})[0]

                ms, out = time_passes(run_onnx, n, b, args.repeats)
                rows.append((engine, b, str(th), ms, float(cosine(ref, out).min())))
                log(f"{engine} batch {b} threads {th}: {ms:.2f} ms/face")
            del sess

    dlib_best = {b: ms for eng, b, _, ms, _ in rows if eng == "dlib"}
    lines = [
        "# Embedding benchmark: dlib ResNet v1 vs its ONNX conversion",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {mem_gib():.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        "- note: other jobs may share these cores (1-min load average at start: "
        f"{load1:.2f}); each number is the best of {args.repeats} passes over all faces",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- python {platform.python_version()}, dlib {dlib.__version__}, onnxruntime "
        f"{ort.__version__}, numpy {np.__version__}",
        f"- command: `python bench/embed_onnx.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- data: {n} faces on {n_photos} dev photos (dlib HOG detector, no upsampling; "
        "5-point landmarks; `get_face_chip(size=150, padding=0.25)`)",
        f"- conversion (`export_onnx`, parse + graph + write): {convert_s:.2f} s, "
        f"{onnx_bytes / 2**20:.1f} MiB",
        "- dlib: `compute_face_descriptor(list_of_chips)` with `batch` chips per call "
        "(this dlib build: no BLAS, no CUDA, single-threaded)",
        f"- onnx: ONNX Runtime {args.provider.upper()} provider, float32 NCHW input, "
        "graph optimisations on, `intra_op_num_threads` as listed",
        "- min cos: lowest cosine over all faces against dlib's single-chip "
        "`compute_face_descriptor(chip)`; speed-up vs dlib at the same batch size",
        "",
        "| engine | batch | threads | ms/face | faces/s | speed-up vs dlib | min cos |",
        "|---|---|---|---|---|---|---|",
    ]
    for eng, b, th, ms, mc in rows:
        lines.append(
            f"| {eng} | {b} | {th} | {ms:.2f} | {1000 / ms:.1f} | {dlib_best[b] / ms:.2f}x "
            f"| {mc:.8f} |"
        )
    best_dlib = min(ms for eng, *_r, ms, _c in rows if eng == "dlib")
    best_onnx = min((ms, b, th) for eng, b, th, ms, _c in rows if eng != "dlib")
    lines += [
        "",
        f"Best ONNX ({best_onnx[0]:.2f} ms/face at batch {best_onnx[1]}, {best_onnx[2]} thread(s)) "
        f"vs best dlib ({best_dlib:.2f} ms/face): {best_dlib / best_onnx[0]:.1f}x faster; "
        f"min cosine over all configurations and faces: {min(r[4] for r in rows):.8f}.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
