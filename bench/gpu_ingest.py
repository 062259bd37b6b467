"""Bulk ingest on a GPU: images/s end to end by batch size, and memory over a long run.

    python bench/gpu_ingest.py [--data DIR] [--n 20000] [--big 100000] [--batches 32 64 128 256 512]
                               [--workers 12] [--device cuda] [--budget-s 420] [--out DIR]

A synthetic set is made first: ``--n`` JPEGs of 2x2 tiles of the dev photos (each tile a
random dev photo, randomly shifted, scaled, mirrored and changed in brightness and contrast),
``--cell`` pixels per tile, made in parallel. Then, with one pool of ``--workers`` worker
processes (pipeline/stages.py, each running decode, MTCNN detection, dlib's 5 landmarks, the
OpenCV chip and dlib's ResNet embedding, with detection and embedding on ``--device``), for
each batch size (the images per chunk that the detector and the embedder see) the whole set
is ingested end to end: decode, detect, align, embed and add to a faiss index (no database:
the figure is the pipeline's). Finally ``--big`` images (the synthetic set cycled; a fresh
index) are ingested at the best batch size while the resident memory of this process and its
workers is sampled every second: flat memory means the peak at 10% of the run is about the
peak at the end, apart from the index's own growth (512 bytes per face).

Runs are skipped, and said so, when ``--budget-s`` would be exceeded. Prints one table and
writes it with the raw rows to ``--out`` (default bench/results): gpu-ingest.md / .json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("FACESEARCH_DEV_DATA",
                                   Path(__file__).resolve().parents[2] / "shared/data/faces-dev"))
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

_TILES: list[np.ndarray] = []


def _load_tiles(data: Path, cell: int) -> list[np.ndarray]:
    import cv2

    tiles = []
    for p in sorted(data.rglob("*")):
        if p.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        im = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if im is None:
            continue
        h, w = im.shape[:2]
        s = (cell * 1.25) / min(h, w)  # a margin for the random shift and scale
        tiles.append(cv2.resize(im, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA))
    return tiles


def _init_maker(data: str, cell: int) -> None:
    _TILES.extend(_load_tiles(Path(data), cell))


def _make(args: tuple[int, str, int]) -> None:
    """One synthetic image: 2x2 jittered tiles."""
    import cv2

    i, out, cell = args
    rng = random.Random(i)
    canvas = np.empty((2 * cell, 2 * cell, 3), np.uint8)
    for k in range(4):
        t = _TILES[rng.randrange(len(_TILES))]
        z = rng.uniform(0.85, 1.0)
        side = int(min(t.shape[:2]) * z)
        y = rng.randrange(0, t.shape[0] - side + 1)
        x = rng.randrange(0, t.shape[1] - side + 1)
        crop = cv2.resize(t[y:y + side, x:x + side], (cell, cell), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        a, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        crop = cv2.convertScaleAbs(crop, alpha=a, beta=b)
        canvas[(k // 2) * cell:(k // 2 + 1) * cell, (k % 2) * cell:(k % 2 + 1) * cell] = crop
    cv2.imwrite(str(Path(out) / f"{i:07d}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_set(data: Path, out: Path, n: int, cell: int, procs: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(procs, initializer=_init_maker, initargs=(str(data), cell)) as ex:
        list(ex.map(_make, [(i, str(out), cell) for i in range(n)], chunksize=64))
    return sorted(str(p) for p in out.glob("*.jpg"))


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


class RssSampler:
    """Resident memory of a set of processes, sampled every ``every`` seconds."""

    def __init__(self, pids: list[int], every: float = 1.0) -> None:
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, int, int]] = []  # (seconds, images done, bytes)
        self.done = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic() - self._t0, self.done, _rss_bytes(self.pids)))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ingest(paths: list[str], batch: int, settings, pool, sampler: RssSampler | None = None) -> dict[str, object]:  # noqa: ANN001
    """Decode, detect, align, embed and index-add every path; images/s end to end."""
    from facesearch.index.factory import new_index
    from facesearch.pipeline.stages import StageMeter, chunked, run_chunks

    index = new_index(128)
    meter = StageMeter(parallel=len(pool.procs))
    next_id = 0
    images = faces = errors = 0
    t0 = time.perf_counter()
    for _, r in run_chunks(chunked(paths, batch), settings=settings, pool=pool, meter=meter,
                           window=2 * len(pool.procs) + 2):
        vecs = [f.embedding for a in r.analyses for f in a.faces if f.quality.acceptable]
        errors += sum(1 for a in r.analyses if a.info is None)
        if vecs:
            ids = np.arange(next_id, next_id + len(vecs), dtype=np.int64)
            next_id += len(vecs)
            index.add_with_ids(np.stack(vecs), ids)
        images += len(r.analyses)
        faces += sum(len(a.faces) for a in r.analyses)
        if sampler is not None:
            sampler.done = images
    wall = time.perf_counter() - t0
    per_stage = {f"{k}_img_s": round(v, 1) for k, v in meter.rates().items()}
    return {"batch": batch, "images": images, "faces": faces, "indexed": int(index.ntotal),
            "errors": errors, "wall_s": round(wall, 2), "images_per_s": round(images / wall, 1),
            "faces_per_s": round(faces / wall, 1), **per_stage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--big", type=int, default=100000)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--cell", type=int, default=160, help="pixels per tile (images are 2 cells square)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    ap.add_argument("--decode-threads", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip runs that would not end in time")
    ap.add_argument("--work", type=Path, default=None, help="folder for the synthetic set (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--label", default="", help="the machine, as it should be named in the table")
    args = ap.parse_args()
    start = time.monotonic()
    from facesearch.config import Settings
    from facesearch.pipeline.build import resolve_device
    from facesearch.pipeline.stages import WorkerPool

    work = args.work or Path(tempfile.mkdtemp(prefix="fs-gpu-bench-"))
    home = work / "home"
    t = time.perf_counter()
    paths = make_set(args.data, work / "set", args.n, args.cell, max(1, os.cpu_count() or 1))
    made_s = time.perf_counter() - t
    print(f"synthetic set: {len(paths)} images of {2 * args.cell}x{2 * args.cell} in {made_s:.1f} s", flush=True)
    settings = Settings(home=home, device=args.device, detector="mtcnn", embed_batch=1024, ort_threads=1,
                        batch_size=max(args.batches))
    device = resolve_device(settings)
    # the ONNX conversion of dlib's ResNet is made once here, not by every worker
    from facesearch.models.dlib_onnx import ensure_onnx

    ensure_onnx(home)
    t = time.perf_counter()
    pool = WorkerPool(settings, args.workers, args.decode_threads)
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    big: dict[str, object] = {}

    def save() -> None:
        gpu = ""
        if device == "cuda":
            import torch

            gpu = torch.cuda.get_device_name(0)
        label = args.label or (f"{gpu}, " if gpu else "") + machine()
        head = ["batch", "images", "faces", "wall_s", "images_per_s", "faces_per_s",
                "decode_img_s", "detect_img_s", "landmarks_img_s", "embed_img_s"]
        lines = [f"# GPU ingest benchmark: synthetic set from {args.data.name}, {date.today()}",
                 "", f"Machine: {label}. Device: {device}. Worker processes: {args.workers} "
                 f"(decode threads each: {args.decode_threads}). Images: {2 * args.cell}x{2 * args.cell} JPEG, "
                 "2x2 jittered tiles of the dev photos.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
        lines += ["", "End to end: decode, MTCNN detection, dlib 5-point landmarks, OpenCV chip, dlib ResNet "
                  "embedding (chip and mirror), faiss index add. Stage columns: images/s that stage sustains "
                  "(busy time, all workers)."]
        if big:
            lines += ["", f"Long run: {big['images']} images (the synthetic set cycled) at batch {big['batch']}: "
                      f"{big['images_per_s']} images/s; resident memory (this process and its workers) "
                      f"peak {big['peak_rss_mib']} MiB; at 10% of the run {big['rss_at_10pct_mib']} MiB, at 50% "
                      f"{big['rss_at_50pct_mib']} MiB, at the end {big['rss_at_end_mib']} MiB; index "
                      f"{big['index_mib']} MiB of it."]
        lines += [f"- {n}" for n in notes]
        text = "\n".join(lines) + "\n"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-ingest.md").write_text(text)
        (args.out / "gpu-ingest.json").write_text(json.dumps(
            {"machine": label, "device": device, "workers": args.workers, "rows": rows, "long_run": big,
             "notes": notes}, indent=1))
        print(text, flush=True)

    try:
        warm = ingest(paths[: 4 * args.workers * 8], 8, settings, pool)  # models load, kernels tune
        print(f"workers up and warm in {time.perf_counter() - t:.1f} s ({warm['images_per_s']} img/s warm-up)",
              flush=True)
        est = None
        for b in args.batches:
            left = args.budget_s - (time.monotonic() - start)
            if est is not None and len(paths) / est > left - 10:
                notes.append(f"batch {b} skipped: not enough time left in the budget")
                continue
            r = ingest(paths, b, settings, pool)
            r["device"] = device
            rows.append(r)
            est = max(est or 0.0, float(r["images_per_s"]))
            print(json.dumps(r), flush=True)
            save()
        if rows and args.big:
            best = max(rows, key=lambda r: float(r["images_per_s"]))
            rate = float(best["images_per_s"])
            left = args.budget_s - (time.monotonic() - start) - 10
            n_big = min(args.big, int(rate * left)) if rate else 0
            if n_big < args.big:
                notes.append(f"long run shortened to {n_big} images to fit the time budget")
            if n_big > 0:
                cyc = [paths[i % len(paths)] for i in range(n_big)]
                pids = [os.getpid()] + [p.pid for p in pool.procs if p.pid]
                with RssSampler(pids) as s:
                    r = ingest(cyc, int(best["batch"]), settings, pool, s)
                samples = s.samples or [(0.0, 0, _rss_bytes(pids))]

                def at(frac: float) -> int:
                    want = frac * n_big
                    return next((b for _, d, b in samples if d >= want), samples[-1][2])

                mib = 2 ** 20
                big = {**r, "peak_rss_mib": round(max(b for *_, b in samples) / mib),
                       "rss_at_10pct_mib": round(at(0.1) / mib), "rss_at_50pct_mib": round(at(0.5) / mib),
                       "rss_at_end_mib": round(samples[-1][2] / mib),
                       "index_mib": round(int(r["indexed"]) * 128 * 4 / mib),
                       "samples": [(round(t_, 1), d, round(b / mib)) for t_, d, b in samples[:: max(1, len(samples) // 60)]]}
                print(json.dumps({k: v for k, v in big.items() if k != "samples"}), flush=True)
        save()
    finally:
        pool.close()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
