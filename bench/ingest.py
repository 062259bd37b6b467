"""Ingest throughput on the dev photo set, end to end and per stage, and the embedder's cost
per face: dlib itself against our ONNX conversion on the same chips.

    python bench/ingest.py [--data DIR] [--workers 1 2] [--backend onnx dlib] [--limit N] [--json]

For each backend and worker count, ingests the dev photos into a fresh temporary home
(database, index, everything; pipeline/stages.py: one worker runs the stages as overlapping
threads, more run worker processes) and reports images/s and faces/s end to end, each stage's
rate (images/s it sustains) and the mean milliseconds per image of each stage (decode, detect,
landmarks + alignment, embed, store; summed over workers, so they exceed the wall time per
image with several workers).

Then, on the chips of the same photos (dlib's 5 landmarks, dlib's own chip): dlib's
``compute_face_descriptor`` and our ONNX graph on ONNX Runtime (batched, ``--threads``), each
timed per face, best of ``--repeats``; the minimum cosine between their embeddings; and the
OpenCV chip (the default) against dlib's chip: mean absolute pixel difference and the cosine
of their embeddings. Writes bench/results/ingest.md and ingest.json; ``--json`` ends the
output with one JSON line (dlib_embed_ms_per_face, onnx_embed_ms_per_face,
onnx_vs_dlib_cosine_min, images_per_s, faces_per_s, device, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine

import numpy as np

from facesearch.config import Settings
from facesearch.facade import FaceSearch
from facesearch.services.ingest import IngestService, folder_items

DEFAULT_DATA = Path(os.environ.get("FACESEARCH_DEV_DATA",
                                   Path(__file__).resolve().parents[2] / "shared/data/faces-dev"))
STAGES = ("decode", "detect", "landmarks", "embed", "store")


def run(data: Path, workers: int, limit: int | None, backend: str) -> dict[str, object]:
    items = folder_items(data, subject_from_folder=True)[:limit]
    home = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    try:
        with FaceSearch(home=home, workers=workers, embed_backend=backend) as fs:
            fs.ctx.pipeline.embedder.embed  # noqa: B018 - models load lazily inside the timed run
            svc = IngestService(fs.ctx)
            t0 = time.perf_counter()
            s = svc.ingest(items, gallery="bench", legal_basis="benchmark")
            wall = time.perf_counter() - t0
        n = max(1, s.ingested)
        row: dict[str, object] = {"backend": backend, "workers": workers, "images": s.ingested, "faces": s.faces,
                                  "wall_s": round(wall, 2), "images_per_s": round(s.ingested / wall, 2),
                                  "faces_per_s": round(s.faces / wall, 2)}
        for st in STAGES:
            row[f"{st}_ms"] = round(1000 * svc.stage_seconds.get(st, 0.0) / n, 1)
        for st, rate in s.stage_rates.items():
            row[f"{st}_img_s"] = round(rate, 1)
        return row
    finally:
        shutil.rmtree(home, ignore_errors=True)


def chips_of(data: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(dlib's chips, OpenCV's chips) of every face of the photos, from dlib's 5 landmarks."""
    from facesearch.pipeline.align import dlib_chip, opencv_dlib_chip
    from facesearch.pipeline.build import build_pipeline
    from facesearch.pipeline.decode import read_image

    home = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    try:
        settings = Settings(home=home)
        pl = build_pipeline(settings)
        ref, ours = [], []
        for it in folder_items(data, subject_from_folder=True)[:limit]:
            img = read_image(Path(it.path), max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes).rgb
            for d in pl.detect(img):
                lm = pl.landmarks.predict(img, d.bbox)
                ref.append(dlib_chip(img, d.bbox, lm))
                ours.append(opencv_dlib_chip(img, lm))
        return np.stack(ref), np.stack(ours)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def embed_cost(chips: np.ndarray, ours: np.ndarray, threads: int, batch: int, repeats: int) -> dict[str, object]:
    """dlib vs ONNX on the same chips: ms per face (best pass) and agreement."""
    from facesearch.models.dlib_models import DlibEmbedder
    from facesearch.models.dlib_onnx import ensure_onnx
    from facesearch.models.manifest import ModelRegistry, load_manifest
    from facesearch.models.onnx_embedder import OnnxEmbedder

    home = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    try:
        dl = DlibEmbedder(ModelRegistry().get("dlib-resnet-v1"))
        ox = OnnxEmbedder(load_manifest(ensure_onnx(home)), threads=threads, batch_size=batch)
        dl.embed(chips[:1])
        ox.embed(chips[:1])

        def best(fn) -> float:  # noqa: ANN001
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        out: dict[str, np.ndarray] = {}
        t_dlib = best(lambda: out.__setitem__("dlib", dl.embed(chips)))
        t_onnx = best(lambda: out.__setitem__("onnx", ox.embed(chips)))
        e_ours = ox.embed(ours)
        n = len(chips)
        mad = np.abs(chips.astype(np.int16) - ours.astype(np.int16)).mean(axis=(1, 2, 3))
        return {
            "chips": n, "onnx_threads": threads, "onnx_batch": batch,
            "dlib_embed_ms_per_face": round(1000 * t_dlib / n, 2),
            "onnx_embed_ms_per_face": round(1000 * t_onnx / n, 2),
            "onnx_speedup": round(t_dlib / t_onnx, 1),
            "onnx_vs_dlib_cosine_min": round(float((out["dlib"] * out["onnx"]).sum(1).min()), 7),
            "opencv_chip_mad_mean": round(float(mad.mean()), 3), "opencv_chip_mad_max": round(float(mad.max()), 3),
            "opencv_chip_cosine_min": round(float((e_ours * out["onnx"]).sum(1).min()), 6),
            "opencv_chip_vs_dlib_cosine_min": round(float((e_ours * out["dlib"]).sum(1).min()), 6),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--backend", nargs="+", default=["onnx", "dlib"],
                    help="embedder backends: onnx (our conversion, default) and dlib (reference)")
    ap.add_argument("--threads", type=int, default=Settings().ort_threads, help="ONNX Runtime threads")
    ap.add_argument("--batch", type=int, default=Settings().embed_batch, help="chips per ONNX call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run(args.data, w, args.limit, b) for b in args.backend for w in args.workers]
    ref, ours = chips_of(args.data, args.limit)
    cost = embed_cost(ref, ours, args.threads, args.batch, args.repeats)
    rates = sorted({k for r in rows for k in r if k.endswith("_img_s")})
    head = (["backend", "workers", "images", "faces", "wall_s", "images_per_s", "faces_per_s"]
            + [f"{s}_ms" for s in STAGES] + rates)
    lines = [f"# Ingest benchmark: {args.data.name}, {date.today()}, {machine()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
    lines += ["", "Stage `_ms` columns are mean milliseconds per image, summed over workers; 'landmarks' "
              "includes alignment (the OpenCV chip); 'embed' includes the mirrored chip (flip averaging). "
              "`_img_s` columns: images per second each stage sustains while busy (times the workers). "
              "One worker runs the stages as overlapping threads, two run two worker processes. Backend "
              "'onnx' runs dlib's ResNet from our ONNX conversion of its weights, 'dlib' runs dlib itself.",
              "", f"## Embedding cost per face, same run, same {cost['chips']} chips (dlib's own chips)", "",
              "| engine | ms per face | cosine min vs dlib |", "|---|---|---|",
              f"| dlib compute_face_descriptor | {cost['dlib_embed_ms_per_face']} | 1 |",
              f"| ONNX Runtime CPU ({cost['onnx_threads']} thread, batch {cost['onnx_batch']}) | "
              f"{cost['onnx_embed_ms_per_face']} | {cost['onnx_vs_dlib_cosine_min']} |",
              "", f"ONNX costs 1/{cost['onnx_speedup']} of dlib per face (target: at most 1/4).", "",
              "## OpenCV chip (default) vs dlib's get_face_chip", "",
              f"Mean absolute pixel difference {cost['opencv_chip_mad_mean']} (worst face "
              f"{cost['opencv_chip_mad_max']}) on 0..255; cosine between the ONNX embeddings of the two chips: "
              f"min {cost['opencv_chip_cosine_min']}; OpenCV chip on ONNX vs dlib's chip on dlib: min "
              f"{cost['opencv_chip_vs_dlib_cosine_min']}."]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(exist_ok=True)
    (args.out / "ingest.md").write_text(text + "\n")
    (args.out / "ingest.json").write_text(json.dumps({"machine": machine(), "rows": rows, "embed": cost}, indent=1))
    if args.json:
        main_row = next((r for r in rows if r["backend"] == "onnx" and r["workers"] == max(args.workers)), rows[0])
        print(json.dumps({**cost, "images_per_s": main_row["images_per_s"], "faces_per_s": main_row["faces_per_s"],
                          "workers": main_row["workers"], "device": "cpu", "rows": rows}))


if __name__ == "__main__":
    main()
