"""Index benchmark: exact (flat) vs IVF ANN on synthetic face-like embeddings.

    python bench/index.py --n 10000 --n 100000 --n 1000000 --dim 128 --json

Data: unit vectors shaped like face embeddings: many identities (about 5 faces each, varying),
each face = identity centre + noise, normalised; identity centres share a common direction
and one of 64 "group" directions, so unrelated faces still have cosine ~0.3-0.5 and the
nearest and second-nearest gallery faces are often close in score. Queries are *new* noisy
samples of enrolled identities (not copies of indexed vectors).

Per N and index: build time (and rate), serialized index size (``faiss.serialize_index``
bytes), p50/p99 latency of single queries (k=10, 1 faiss thread, one query per call through
the ``VectorIndex`` wrapper), batch throughput (all threads, all queries in one call),
recall@1 and recall@10 against exact ground truth (``faiss.knn`` brute force, in batches).
The IVF build time includes training, adding and the nprobe tuning pass.

Writes ``bench/results/index.md`` (and ``index.json`` with ``--json``; the last stdout line
is then the JSON list of rows).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import machine

from facesearch.index.base import VectorIndex
from facesearch.index.faiss_backend import FlatIndex, IVFIndex, set_threads

ROOT = Path(__file__).resolve().parent
KEYS = ("n", "dim", "index", "params", "build_s", "index_gib", "p50_ms", "p99_ms",
        "batch_qps", "recall_at_1", "recall_at_10")
K = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data

def _normalize(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def make_data(n: int, d: int, nq: int, seed: int = 0,
              faces_per_id: int = 5, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery vectors (n, d), gallery ids (n,), queries (nq, d)), float32, unit norm."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // faces_per_id)
    mu = rng.standard_normal(d).astype(np.float32)
    mu /= np.linalg.norm(mu)
    groups = _normalize(rng.standard_normal((64, d), dtype=np.float32))
    centres = np.empty((n_ids, d), dtype=np.float32)
    for s in range(0, n_ids, chunk):
        e = min(n_ids, s + chunk)
        g = groups[rng.integers(0, len(groups), e - s)]
        centres[s:e] = _normalize(0.8 * mu + 0.6 * g
                                  + rng.standard_normal((e - s, d), dtype=np.float32) / np.sqrt(d))
    ident = rng.integers(0, n_ids, n)  # ~Poisson(5) faces per identity
    noise = 0.5 / np.sqrt(d)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x[s:e] = _normalize(centres[ident[s:e]]
                            + noise * rng.standard_normal((e - s, d), dtype=np.float32))
    q_ident = ident[rng.integers(0, n, nq)]
    q = _normalize(centres[q_ident] + noise * rng.standard_normal((nq, d), dtype=np.float32))
    ids = (rng.permutation(n).astype(np.int64) * 3 + 17)  # database-like, not insertion order
    return x, ids, q


def ground_truth(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), batch):
        _, I = faiss.knn(q[s:s + batch], x, k, faiss.METRIC_INNER_PRODUCT)
        out[s:s + batch] = ids[I]
    return out


# --------------------------------------------------------------------------- measure

def measure(index: VectorIndex, q: np.ndarray, gt: np.ndarray, threads: int) -> dict[str, float]:
    set_threads(1)
    for i in range(min(10, len(q))):
        index.search(q[i:i + 1], K)
    lat = np.empty(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        index.search(q[i:i + 1], K)
        lat[i] = time.perf_counter() - t

    set_threads(threads)
    done, t0 = 0, time.perf_counter()
    while True:
        _, I = index.search(q, K)
        done += len(q)
        el = time.perf_counter() - t0
        if el >= 1.0:
            break
    r1 = float(np.mean(I[:, 0] == gt[:, 0]))
    r10 = float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(I, gt)]))
    return {
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "batch_qps": done / el,
        "recall_at_1": r1,
        "recall_at_10": r10,
    }


def index_bytes(index: VectorIndex) -> int:
    return int(faiss.serialize_index(index.faiss_index).nbytes)  # type: ignore[attr-defined]


def bench_one(n: int, d: int, nq: int, seed: int, exact_limit: int, target: float,
              codecs: list[str], threads: int) -> list[dict[str, Any]]:
    log(f"[n={n:,} d={d}] generating data")
    x, ids, q = make_data(n, d, nq, seed)
    set_threads(threads)
    t = time.perf_counter()
    gt = ground_truth(x, ids, q, K)
    log(f"[n={n:,}] ground truth for {nq} queries: {time.perf_counter() - t:.1f}s")
    rows: list[dict[str, Any]] = []

    def row(index: VectorIndex, name: str, params: str, build_s: float) -> None:
        size = index_bytes(index)
        m = measure(index, q, gt, threads)
        r = {"n": n, "dim": d, "index": name, "params": params, "build_s": round(build_s, 3),
             "index_gib": round(size / 2**30, 4), **{k: round(v, 4) for k, v in m.items()}}
        r["_bytes_per_face"] = size / n
        rows.append(r)
        log(f"[n={n:,}] {name} {params}: build {build_s:.1f}s, {size / n:.0f} B/face, "
            f"p50 {m['p50_ms']:.3f} ms, r@1 {m['recall_at_1']:.4f}")

    if n <= exact_limit:
        set_threads(threads)
        t = time.perf_counter()
        flat = FlatIndex(d)
        flat.add_with_ids(x, ids)
        row(flat, "flat", flat.kind, time.perf_counter() - t)
        del flat
        gc.collect()
    for codec in codecs:
        set_threads(threads)
        t = time.perf_counter()
        ivf = IVFIndex.build(x, ids, target_recall=target, codec=codec, seed=seed)
        build_s = time.perf_counter() - t
        row(ivf, "ivf", f"{ivf.kind} tuned_r@1={ivf.tuned_recall:.3f}", build_s)
        del ivf
        gc.collect()
    return rows


# --------------------------------------------------------------------------- report

def fmt_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["N", "dim", "index", "params", "build s", "build vec/s", "size GiB", "B/face",
            "p50 ms", "p99 ms", "batch q/s", "recall@1", "recall@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        rate = r["n"] / r["build_s"] if r["build_s"] > 0 else float("inf")
        cells = [f"{r['n']:,}", str(r["dim"]), r["index"], r["params"], f"{r['build_s']:.2f}",
                 f"{rate:,.0f}", f"{r['index_gib']:.4f}", f"{r['_bytes_per_face']:.0f}",
                 f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['batch_qps']:,.0f}",
                 f"{r['recall_at_1']:.4f}", f"{r['recall_at_10']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_n(s: str) -> int:
    s = s.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=parse_n, action="append", required=True,
                    help="gallery size (repeatable; accepts 10k, 1M)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print rows as JSON (last line), write index.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--exact-limit", type=parse_n, default=1_000_000,
                    help="skip the exact row above this N (default 1M)")
    ap.add_argument("--codec", action="append", choices=["fp16", "sq8"],
                    help="IVF codec(s) to benchmark (repeatable; default fp16)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for build and batch search")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    codecs = args.codec or ["fp16"]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="  %(name)s: %(message)s")

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    rows: list[dict[str, Any]] = []
    for n in args.n:
        rows += bench_one(n, args.dim, args.queries, args.seed, args.exact_limit,
                          args.target_recall, codecs, args.threads)
        gc.collect()

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = fmt_table(rows)
    md = [
        "# Index benchmark",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- python {platform.python_version()}, faiss {faiss.__version__}, numpy {np.__version__}",
        f"- command: `python bench/index.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- data: synthetic clustered unit vectors (~5 faces per identity), {args.queries} queries "
        "= fresh noisy samples of enrolled identities; k=10",
        "- size: `faiss.serialize_index` bytes (what is saved and held in memory)",
        "- latency: one query per call, 1 faiss thread, through the `VectorIndex` wrapper; "
        f"batch q/s: all {args.queries} queries in one call, {args.threads} threads",
        "- recall: vs exact brute-force ground truth (`faiss.knn`); IVF build time includes "
        f"train + add + nprobe tuning to recall@1 >= {args.target_recall} (leave-one-out on held-out gallery vectors)",
        f"- peak RSS of the run: {peak_gib:.2f} GiB; 1-min load average at start: "
        f"{load_before[0]:.2f} (other processes share these cores: timings are noisy)",
        "",
        *table,
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.md").write_text("\n".join(md))
    print("\n".join(table))
    print(f"(written to {args.out / 'index.md'}; peak RSS {peak_gib:.2f} GiB)")
    if args.json:
        out = [{k: r[k] for k in KEYS} for r in rows]
        (args.out / "index.json").write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
