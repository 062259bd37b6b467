"""Ingest throughput on the dev photo set, end to end and per stage.

    python bench/ingest.py [--data DIR] [--workers 1 2] [--limit N] [--json]

For each worker count, ingests the dev photos into a fresh temporary home (database, index,
everything) and reports images/s and faces/s end to end, and the mean milliseconds per image
of each stage (decode, detect, landmarks+alignment, embed, store). With several workers the
stage times are summed over the workers, so they exceed the wall time per image.
Writes bench/results/ingest.md and ingest.json.
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
        return row
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--backend", nargs="+", default=["onnx", "dlib"],
                    help="embedder backends: onnx (our conversion, default) and dlib (reference)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run(args.data, w, args.limit, b) for b in args.backend for w in args.workers]
    head = ["backend", "workers", "images", "faces", "wall_s", "images_per_s", "faces_per_s"] + [f"{s}_ms" for s in STAGES]
    lines = [f"# Ingest benchmark: {args.data.name}, {date.today()}, {machine()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    lines += ["", "Stage columns are mean milliseconds per image, summed over workers; 'landmarks' "
              "includes alignment; 'embed' includes the mirrored chip (flip averaging). Backend 'onnx' runs "
              "dlib's ResNet from our ONNX conversion of its weights, 'dlib' runs dlib itself (same vectors)."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.md").write_text(text + "\n")
    (out / "ingest.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
