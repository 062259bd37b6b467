"""Index benchmark: exact, IVF-fp16 and IVF-PQ (re-ranked, lists in RAM or on disk) on
synthetic face-like embeddings, from 10k to 100M faces.

    python bench/index.py --n 10k --n 100k --n 1M --dim 128 --index flat --index ivf --index pq
    python bench/index.py --n 10M --dim 512 --index pq --index pq8   # fast-scan against 8-bit codes
    python bench/index.py --n 100M --index pq8 --keep            # build once, keep it on disk
    python bench/index.py --n 100M --index pq8 --reuse           # measure the kept index again
    python bench/index.py --n 100M --index pq-ondisk --reuse --move-lists --retune 0.95
                        # the kept pq8 index with its lists moved to disk, re-tuned for 0.95
    python bench/index.py --n 100M --index pq --keep --target-recall 0.95 --cold --search 128:32
                        # fast-scan lists in RAM; each point with the page cache dropped, then filled
    python bench/index.py --n 100M --dim 512 --index pq --stream --store int8 --target-recall 0.97
                        # no input file: faces re-created from seeds chunk by chunk (stream_data.py),
                        # int8 re-ranking store (52 GB instead of 102 GB of float16; its target
                        # 0.02 above the recall needed: index-notes.md)
    python bench/index.py --plot-only                            # redraw the plot from the JSON

Data: unit vectors shaped like face embeddings: many identities (about 5 faces each, varying),
each face = identity centre + noise, normalised; identity centres share a common direction
and one of 64 "group" directions, so unrelated faces still have cosine ~0.3-0.5 and the
nearest and second-nearest gallery faces are often close in score. Queries are *new* noisy
samples of enrolled identities (not copies of indexed vectors). Gallery vectors are generated
in chunks into a float16 file under ``--data-dir`` (outside the repository; reused by later
runs), so no run holds all N vectors in memory; exact ground truth (top-10 of every query) is
computed by brute force over that file in chunks and cached next to it.

Per N and index: build time (and rate; IVF/PQ builds include training, adding and the tuning
pass), resident bytes per face (flat/IVF: the serialized index; PQ: lists unless on disk,
row map, quantizers) and on-disk bytes per face (the saved index and its side files), p50/p99
latency of single queries (k=10, 1 faiss thread, one query per call through the
``VectorIndex`` wrapper), batch throughput (all threads, all queries in one call), recall@1
and recall@10 against exact ground truth.

Rows are merged by (N, dim, index) into ``bench/results/index-<dim>.json`` and the table
``index-<dim>.md``; ``index-scaling.png`` plots p50 latency and resident memory against N.
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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import machine
from stream_data import StreamData, TopK

from facesearch.index.base import VectorIndex
from facesearch.index.compressed import STORE_DTYPES, PQIndex
from facesearch.index.factory import choose_kind
from facesearch.config import Settings
from facesearch.index.faiss_backend import FlatIndex, IVFIndex, load_index, set_threads

ROOT = Path(__file__).resolve().parent
K = 10
DEFAULT_TARGET: float = Settings.model_fields["ann_target_recall"].default  # FACESEARCH_ANN_TARGET_RECALL
KEYS = ("n", "dim", "index", "params", "build_s", "mem_bytes_per_face", "disk_bytes_per_face",
        "p50_ms", "p99_ms", "batch_qps", "recall_at_1", "recall_at_10", "peak_rss_gib", "cache",
        "date")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data

def _normalize(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def make_data(n: int, d: int, nq: int, data_dir: Path, seed: int = 0, faces_per_id: int = 5,
              chunk: int = 500_000, vectors: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gallery vectors as a float16 memmap (n, d), ids (n,), queries (nq, d) float32).

    Files are cached in ``data_dir`` by (n, d, seed); identity centres are float16 (2 x d bytes
    per identity, n/5 identities). With ``vectors=False`` the gallery file may be gone (a kept
    index measured again with cached ground truth needs only ids and queries): x is then None."""
    stem = data_dir / f"faces-{d}d-{n}-s{seed}"
    vec_path, ids_path, q_path = (Path(f"{stem}.f16"), Path(f"{stem}.ids.npy"), Path(f"{stem}.q{nq}.npy"))
    if ids_path.exists() and q_path.exists() and (vec_path.exists() or not vectors):
        x = np.memmap(vec_path, dtype=np.float16, mode="r", shape=(n, d)) if vec_path.exists() else None
        return x, np.load(ids_path), np.load(q_path)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // faces_per_id)
    mu = rng.standard_normal(d).astype(np.float32)
    mu /= np.linalg.norm(mu)
    groups = _normalize(rng.standard_normal((64, d), dtype=np.float32))
    centres = np.empty((n_ids, d), dtype=np.float16)
    for s in range(0, n_ids, chunk):
        e = min(n_ids, s + chunk)
        g = groups[rng.integers(0, len(groups), e - s)]
        centres[s:e] = _normalize(0.8 * mu + 0.6 * g
                                  + rng.standard_normal((e - s, d), dtype=np.float32) / np.sqrt(d))
    noise = 0.5 / np.sqrt(d)
    tmp = Path(f"{vec_path}.tmp")
    x = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(n, d))
    q_ident = np.empty(0, dtype=np.int64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ident = rng.integers(0, n_ids, e - s)  # ~Poisson(5) faces per identity
        x[s:e] = _normalize(centres[ident].astype(np.float32)
                            + noise * rng.standard_normal((e - s, d), dtype=np.float32))
        # queries: fresh samples of identities drawn like gallery faces (enrolled ones)
        take = int(round(nq * (e - s) / n)) if e < n else nq - len(q_ident)
        q_ident = np.concatenate([q_ident, ident[rng.integers(0, e - s, max(0, take))]])
    x.flush()
    del x
    os.replace(tmp, vec_path)
    q = _normalize(centres[q_ident[:nq]].astype(np.float32)
                   + noise * rng.standard_normal((nq, d), dtype=np.float32))
    ids = rng.permutation(n).astype(np.int64) * 3 + 17  # database-like, not insertion order
    np.save(ids_path, ids)
    np.save(q_path, q)
    return np.memmap(vec_path, dtype=np.float16, mode="r", shape=(n, d)), ids, q


def ground_truth(x: np.ndarray | None, ids: np.ndarray, q: np.ndarray, k: int, cache: Path,
                 chunk: int = 1_000_000) -> np.ndarray:
    """Exact top-k ids of every query by brute force over ``x`` in chunks (cached)."""
    if cache.exists():
        return np.load(cache)
    if x is None:
        raise SystemExit(f"no cached ground truth at {cache} and no gallery vectors to compute it")
    top = TopK(q, k)
    for s in range(0, len(x), chunk):
        top.update(np.ascontiguousarray(x[s:s + chunk], dtype=np.float32), s)
    out = ids[top.row]
    np.save(cache, out)
    return out


# --------------------------------------------------------------------------- measure

def measure(index: VectorIndex, q: np.ndarray, gt: np.ndarray, threads: int,
            latency_queries: int = 500) -> dict[str, float]:
    set_threads(1)
    for i in range(min(20, len(q))):
        index.search(q[i:i + 1], K)
    lat = np.empty(min(len(q), latency_queries))
    for i in range(len(lat)):
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
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "batch_qps": done / el, "recall_at_1": r1, "recall_at_10": r10}


def _read_through(paths: list[Path], chunk: int = 64 << 20) -> float:
    """Read files once, sequentially, so their pages are in the page cache (as on a server that
    has run a while with enough memory); returns the seconds taken."""
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(chunk):
                pass
    return time.perf_counter() - t


def _warm(idx: PQIndex, what: str) -> None:
    log(f"{what}: side files read into the page cache in {_read_through(idx.storage_files()):.0f}s")


def _drop_page_cache() -> None:
    """Write back dirty pages and drop the clean page cache (needs root): the side files are then
    read from disk, as right after a restart or when they are far larger than the RAM left."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        raise SystemExit(f"--cold needs to drop the page cache (root): {e}") from e


def _anon() -> str:
    """This process's anonymous resident memory now and at its peak (Linux /proc), for the log."""
    try:
        st = dict(ln.split(":", 1) for ln in Path("/proc/self/status").read_text().splitlines() if ":" in ln)
        return (f"anon RSS {int(st['RssAnon'].split()[0]) / 2**20:.1f} GiB, "
                f"peak RSS {int(st['VmHWM'].split()[0]) / 2**20:.1f} GiB")
    except (OSError, KeyError, ValueError):
        return "memory not readable"


def _file_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def build(name: str, x: np.ndarray, ids: np.ndarray, work: Path, target: float,
          seed: int) -> VectorIndex:
    d = x.shape[1]
    if name == "flat":
        idx = FlatIndex(d)
        for s in range(0, len(x), 1_000_000):
            idx.add_with_ids(np.asarray(x[s:s + 1_000_000], dtype=np.float32), ids[s:s + 1_000_000])
        return idx
    if name == "ivf":
        return IVFIndex.build(np.asarray(x, dtype=np.float32), ids, target_recall=target, seed=seed)
    from tqdm import tqdm

    bar = tqdm(total=len(x), unit="face", unit_scale=True, desc=f"add {name}", file=sys.stderr,
               mininterval=5)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        # "pq": the default codes for lists in memory (4-bit fast-scan); "pq8": 8-bit codes in
        # memory, the earlier default, for comparison in the same run; "pq-ondisk": 8-bit codes
        return PQIndex.build(x, ids, storage=work / "g", target_recall=target,
                             on_disk=name == "pq-ondisk", rerank=True, seed=seed, progress=progress,
                             fast_scan=False if name == "pq8" else None)
    finally:
        bar.close()


def _kept(data_dir: Path, d: int, n: int, name: str) -> tuple[Path, bool]:
    work = data_dir / f"work-{d}d-{n}-{name}"
    return work, (work / "build.json").exists()  # build.json: written once the saved index is complete


def _movable_source(data_dir: Path, d: int, n: int) -> Path | None:
    """The folder of a kept index whose lists can move to disk: ``pq8``, else an old ``pq``."""
    for name in ("pq8", "pq"):
        work, ok = _kept(data_dir, d, n, name)
        if ok:
            return work
    return None


def _moved_to_disk(data_dir: Path, d: int, n: int, work: Path) -> tuple[PQIndex, float]:
    """The kept 8-bit ``pq8`` index (or a ``pq`` index kept before fast-scan existed) with its
    inverted lists moved to disk (``PQIndex.move_lists_to_disk``: same training and codes),
    saved as the ``pq-ondisk`` index; its build time is the source's build plus the move.
    4-bit fast-scan lists cannot move to disk."""
    src = _movable_source(data_dir, d, n)
    if src is None:
        raise SystemExit(f"--move-lists: no kept 8-bit PQ index for n={n:,} d={d} under {data_dir} "
                         "(build one with --index pq8 --keep)")
    idx = load_index(src / "index.faiss")
    if not isinstance(idx, PQIndex) or idx.params.bits != 8:
        raise SystemExit(f"--move-lists: {src} does not hold an 8-bit PQ index")
    t = time.perf_counter()
    lists = idx.move_lists_to_disk()
    move_s = time.perf_counter() - t
    build_s = float(json.loads((src / "build.json").read_text())["build_s"]) + move_s
    log(f"[n={n:,} d={d}] moved the lists of {src} to {lists} in {move_s:.0f}s")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    idx.save(work / "index.faiss")
    (work / "build.json").write_text(json.dumps({"build_s": build_s, "moved_from": str(src),
                                                 "move_s": move_s}))
    return idx, build_s


def _measure_points(idx: VectorIndex, name: str, is_auto: bool, build_s: float, saved_bytes: int,
                    n: int, d: int, q: np.ndarray, gt: np.ndarray, threads: int,
                    latency_queries: int, search_points: list[tuple[int, int]] | None,
                    retune: float | None, warm_files: bool, cold: bool,
                    extra: str = "") -> list[dict[str, Any]]:
    """Rows for one built index: its tuned point, then each ``--search`` point and the
    ``--retune`` target, each once per page-cache pass (``saved_bytes``: the saved header
    file; ``extra`` is appended to the params, e.g. the data generator)."""
    rows: list[dict[str, Any]] = []
    disk = saved_bytes
    if isinstance(idx, PQIndex):
        mem = idx.memory_bytes()
        disk += idx.disk_bytes()
        tgt = idx.params.target_recall
        params = (f"{idx.kind}" + (f" target={tgt:g}" if tgt != DEFAULT_TARGET else "")
                  + f" tuned_r@1={idx.tuned_recall:.3f}")
    else:
        mem = disk
        params = idx.kind + (f" tuned_r@1={idx.tuned_recall:.3f}" if isinstance(idx, IVFIndex) else "")
    is_pq = isinstance(idx, PQIndex)
    if warm_files and not cold and is_pq:
        _warm(idx, f"[n={n:,} d={d}] {name}")
    # --cold: each point twice, first with the page cache dropped (every re-ranked row and
    # on-disk list read from disk), then after reading the side files through the page
    # cache (as much of them as the RAM left holds, the rest evicted in file order)
    passes = ("cold", "read-through") if cold and is_pq else (
        "read-through" if warm_files and is_pq else "as-left",)
    # the tuned operating point, then any others asked for (--search NPROBE:RERANK and
    # --retune TARGET, PQ only)
    points: list[tuple[int, int] | float | None] = [None]
    if is_pq:
        points += list(search_points or []) + ([retune] if retune is not None else [])
    for point in points:
        label = name + (" (auto)" if is_auto else "")
        if isinstance(point, tuple):
            idx.set_search(nprobe=point[0], rerank_depth=point[1])
            params = idx.kind
            label = f"{name}@nprobe{point[0]},rerank{point[1]}"
        elif isinstance(point, float):
            t = time.perf_counter()
            idx.retune(point)
            params = f"{idx.kind} tuned_r@1={idx.tuned_recall:.3f} (re-tuned in {time.perf_counter() - t:.0f}s)"
            label = f"{name}@target{point:g}"
        for cache in passes:
            row_label = label + (" cold" if cache == "cold" else "")
            if cache == "cold":
                _drop_page_cache()
            elif cache == "read-through" and cold:  # --warm-files alone reads them once, above
                _warm(idx, f"[n={n:,} d={d}] {name}")
            m = measure(idx, q, gt, threads, latency_queries)
            r = {"n": n, "dim": d, "index": row_label,
                 "params": params + extra, "build_s": round(build_s, 2),
                 "mem_bytes_per_face": round(mem / n, 1), "disk_bytes_per_face": round(disk / n, 1),
                 **{k: round(v, 4) for k, v in m.items()},
                 "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                 "cache": cache,
                 "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            rows.append(r)
            log(f"[n={n:,} d={d}] {row_label} {params}{extra}: build {build_s:.1f}s, {mem / n:.0f} B/face RAM, "
                f"{disk / n:.0f} B/face disk, p50 {m['p50_ms']:.3f} ms, p99 {m['p99_ms']:.3f} ms, "
                f"r@1 {m['recall_at_1']:.4f}, r@10 {m['recall_at_10']:.4f}")
    return rows


def bench_one(n: int, d: int, nq: int, seed: int, names: list[str], target: float, threads: int,
              data_dir: Path, latency_queries: int = 500, keep: bool = False,
              reuse: bool = False, search_points: list[tuple[int, int]] | None = None,
              move_lists: bool = False, retune: float | None = None, warm_files: bool = False,
              cold: bool = False) -> list[dict[str, Any]]:
    t = time.perf_counter()
    set_threads(threads)
    auto = {"flat": "flat", "ivf": "ivf", "ivfpq": "pq", "ivfpq-ondisk": "pq-ondisk"}[
        choose_kind(n, d, exact_max=50_000)]
    todo = list(dict.fromkeys(auto if nm == "auto" else nm for nm in names))
    gt_cache = data_dir / f"faces-{d}d-{n}-s{seed}.q{nq}.gt{K}.npy"
    # the gallery vectors are needed only to build, or for ground truth not cached yet
    all_kept = reuse and gt_cache.exists() and all(
        _kept(data_dir, d, n, nm)[1] or (move_lists and nm == "pq-ondisk" and _movable_source(data_dir, d, n) is not None)
        for nm in todo)
    x, ids, q = make_data(n, d, nq, data_dir, seed, vectors=not all_kept)
    log(f"[n={n:,} d={d}] data ready ({time.perf_counter() - t:.1f}s)")
    t = time.perf_counter()
    gt = ground_truth(x, ids, q, K, gt_cache)
    log(f"[n={n:,}] ground truth for {nq} queries: {time.perf_counter() - t:.1f}s")
    rows: list[dict[str, Any]] = []
    for name in todo:
        work, kept = _kept(data_dir, d, n, name)
        built = work / "build.json"
        set_threads(threads)
        gc.collect()
        reused = reuse and kept
        moved: list[Path] = []  # files of a moved index that live in the kept pq index's folder
        if reuse and move_lists and name == "pq-ondisk" and not kept:
            idx, build_s = _moved_to_disk(data_dir, d, n, work)
            moved = [p for p in idx.storage_files() if p.suffix == ".ivfdata"]
        elif reused:
            # measure an index built by an earlier run (--keep), loaded from disk
            t = time.perf_counter()
            idx = load_index(work / "index.faiss")
            build_s = float(json.loads(built.read_text())["build_s"])
            log(f"[n={n:,} d={d}] {name}: reusing {work} (built in {build_s:.0f}s), "
                f"loaded in {time.perf_counter() - t:.1f}s")
        else:
            if x is None:
                raise SystemExit(f"{name} at n={n:,} must be built, but the gallery vectors are gone")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            t = time.perf_counter()
            idx = build(name, x, ids, work, target, seed)
            build_s = time.perf_counter() - t
            idx.save(work / "index.faiss")
            built.write_text(json.dumps({"build_s": build_s}))
        rows += _measure_points(idx, name, name == auto, build_s, _file_bytes([work / "index.faiss"]),
                                n, d, q, gt, threads, latency_queries, search_points, retune,
                                warm_files, cold)
        del idx
        gc.collect()
        if not keep and not reused:  # an index kept by an earlier run stays
            shutil.rmtree(work, ignore_errors=True)
            for p in moved:
                p.unlink(missing_ok=True)
    return rows


def bench_stream(n: int, d: int, nq: int, seed: int, names: list[str], stores: list[str],
                 target: float, threads: int, data_dir: Path, latency_queries: int = 500,
                 search_points: list[tuple[int, int]] | None = None, retune: float | None = None,
                 warm_files: bool = False, cold: bool = False) -> list[dict[str, Any]]:
    """``--stream``: faces re-created chunk by chunk from seeds (``stream_data.py``), never
    written; one pass adds each chunk to every index (``PQIndex.trained``, then
    ``add_with_ids``) and merges it into the exact ground truth; each index is then tuned
    with ``retune`` on its own store. PQ kinds only; one index per kind and store type."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if any(nm not in ("pq", "pq8", "pq-ondisk") for nm in names):
        raise SystemExit("--stream builds PQ indexes only (--index pq, pq8 or pq-ondisk)")
    set_threads(threads)
    data = StreamData(n, d, seed)
    auto = {"ivfpq": "pq", "ivfpq-ondisk": "pq-ondisk"}.get(choose_kind(n, d, exact_max=50_000))
    t = time.perf_counter()
    q_path = data_dir / f"stream-{d}d-{n}-s{seed}.q{nq}.npy"
    if q_path.exists():
        q = np.load(q_path)
    else:
        q = data.queries(nq)
        data_dir.mkdir(parents=True, exist_ok=True)
        np.save(q_path, q)
    ids = data.ids()
    log(f"[n={n:,} d={d}] streamed data: {nq} queries and ids ready ({time.perf_counter() - t:.1f}s)")

    # training sample: the first chunks (their identities are drawn like every other chunk's)
    ntrain = PQIndex.train_sample_size(n)
    t = time.perf_counter()
    sample = np.concatenate([data.vectors(c) for c in range(-(-ntrain // data.chunk))])[:ntrain]
    log(f"[n={n:,} d={d}] training sample of {ntrain:,} generated in {time.perf_counter() - t:.0f}s")
    builds: list[tuple[str, str, Path, PQIndex, dict[str, float]]] = []
    for name in names:
        for store in stores:
            kind = name if store == "float16" else f"{name}-{store}"
            label = f"{kind} stream"  # never merged with the file-based rows of the same N
            work = data_dir / f"work-stream-{d}d-{n}-{kind}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            t = time.perf_counter()
            idx = PQIndex.trained(sample, n, storage=work / "g", target_recall=target,
                                  on_disk=name == "pq-ondisk", store_dtype=store, seed=seed,
                                  fast_scan=False if name == "pq8" else None)
            tm = {"train_s": time.perf_counter() - t, "add_s": 0.0}
            log(f"[n={n:,} d={d}] {label}: trained on {ntrain:,} vectors in {tm['train_s']:.0f}s")
            builds.append((name, label, work, idx, tm))
    del sample
    gc.collect()

    # the exact truth is cached beside the queries: a rerun of the same N skips its pass
    gt_path = data_dir / f"stream-{d}d-{n}-s{seed}.q{nq}.gt{K}.npy"
    cached = gt_path.exists()
    gt = None if cached else TopK(q, K)
    gt_s = wait_s = 0.0
    bar = tqdm(total=n, unit="face", unit_scale=True, desc="stream", file=sys.stderr, mininterval=10)
    # the next chunk is generated in a thread while this one is added (numpy's generators
    # release the GIL); the add times below therefore include that contention
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(data.vectors, 0)
        for c in range(data.chunks):
            tw = time.perf_counter()
            x = nxt.result()
            wait_s += time.perf_counter() - tw  # only the time spent waiting for it
            if c + 1 < data.chunks:
                nxt = pool.submit(data.vectors, c + 1)
            s0 = c * data.chunk
            if gt is not None:
                t = time.perf_counter()
                gt.update(x, s0)
                gt_s += time.perf_counter() - t
            for _, _, _, idx, tm in builds:
                t = time.perf_counter()
                idx.add_with_ids(x, ids[s0:s0 + len(x)])
                tm["add_s"] += time.perf_counter() - t
            bar.update(len(x))
    bar.close()
    if gt is None:
        truth = np.load(gt_path)
    else:
        truth = ids[gt.row]
        np.save(gt_path, truth)
        del gt
    log(f"[n={n:,} d={d}] stream pass: waited {wait_s:.0f}s for generated chunks, exact ground "
        f"truth {'cached' if cached else f'{gt_s:.0f}s'}, "
        + ", ".join(f"{lb} add {tm['add_s']:.0f}s" for _, lb, _, _, tm in builds) + f"; {_anon()}")

    rows: list[dict[str, Any]] = []
    for name, label, work, idx, tm in builds:
        t = time.perf_counter()
        idx.retune(target)
        tm["tune_s"] = time.perf_counter() - t
        build_s = tm["train_s"] + tm["add_s"] + tm["tune_s"]
        log(f"[n={n:,} d={d}] {label}: tuned to {idx.kind} (r@1 {idx.tuned_recall:.3f}) in "
            f"{tm['tune_s']:.0f}s; build {build_s:.0f}s")
        log(f"[n={n:,} d={d}] {label}: after tuning {_anon()}")
        t = time.perf_counter()
        idx.save(work / "index.faiss")
        (work / "build.json").write_text(json.dumps({**tm, "build_s": build_s}))
        log(f"[n={n:,} d={d}] {label}: saved in {time.perf_counter() - t:.0f}s; {_anon()}")
        # "(auto)": the kind choose_kind picks, with the default (float16) store
        rows += _measure_points(idx, label, name == auto and idx.params.store_dtype == "float16", build_s,
                                _file_bytes([work / "index.faiss"]),
                                n, d, q, truth, threads, latency_queries, search_points, retune,
                                warm_files, cold, extra=f" store={idx.params.store_dtype} data=stream")
        del idx
        gc.collect()
        shutil.rmtree(work, ignore_errors=True)
    builds.clear()
    return rows


# --------------------------------------------------------------------------- report

def fmt_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["N", "dim", "index", "params", "build s", "build faces/s", "RAM B/face", "disk B/face",
            "p50 ms", "p99 ms", "batch q/s", "recall@1", "recall@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        rate = r["n"] / r["build_s"] if r["build_s"] > 0 else float("inf")
        cells = [f"{r['n']:,}", str(r["dim"]), r["index"], r["params"], f"{r['build_s']:.1f}",
                 f"{rate:,.0f}", f"{r['mem_bytes_per_face']:.0f}", f"{r['disk_bytes_per_face']:.0f}",
                 f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['batch_qps']:,.0f}",
                 f"{r['recall_at_1']:.4f}", f"{r['recall_at_10']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def merge_rows(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["n"], r["dim"], r["index"]) for r in new}
    rows = [r for r in old if (r["n"], r["dim"], r["index"]) not in keys] + new
    return sorted(rows, key=lambda r: (r["dim"], r["n"], r["index"]))


def write_markdown(path: Path, rows: list[dict[str, Any]], d: int, args: argparse.Namespace) -> None:
    md = [
        f"# Index benchmark, {d}-d",
        "",
        f"- machine of the latest run: {machine()} (the rows of earlier runs: an AMD EPYC, 2 cores, "
        "24 GiB, see index-notes.md); rows from several runs, some while other jobs or other "
        "benchmark runs shared the 2 cores (each row's date is in index-<d>.json, the load of each "
        "run in index-notes.md): compare timings within one N, not across dates",
        f"- python {platform.python_version()}, faiss {faiss.__version__}, numpy {np.__version__}",
        "- command: `python bench/index.py --n <N> --dim <d> --index <...>` (100M: `--keep`, "
        "then `--reuse` to measure the kept index again)",
        f"- data: synthetic clustered unit vectors (~5 faces per identity), {args.queries} queries "
        "= fresh noisy samples of enrolled identities; k=10; vectors generated in chunks to a float16 file; "
        "rows named `... stream` (`--stream`, `data=stream` in params): faces re-created chunk by chunk "
        "from seeds, never written (bench/stream_data.py: each chunk's faces from its own identities), "
        "tuned with `retune` on the index's own store; `store=int8`: the int8 re-ranking store",
        "- indexes: `flat` exact; `ivf` IVF fp16 codes; `pq` IVF-PQ with float16 re-ranking from "
        "a memory-mapped file, 4-bit fast-scan codes (`x4fs` in params) in memory; `pq8` the same "
        "with 8-bit codes (rows measured before fast-scan existed are `pq8` too); `pq-ondisk` "
        "8-bit codes in memory-mapped inverted lists; "
        "`(auto)` marks the kind `choose_kind` picks for that N with the default settings",
        "- RAM B/face: serialized index (flat, ivf) or resident structures (pq: lists unless on "
        "disk, row map, quantizers; the float16 vectors and on-disk lists are read through the "
        "page cache); disk B/face: saved index plus side files",
        f"- latency: one query per call (the first 500 queries; 100 for the 512-d 1M exact row), 1 faiss thread; batch q/s: all queries in one call, "
        f"{args.threads} threads",
        "- recall: against exact brute-force ground truth over all N; ivf/pq build time includes "
        f"train + add + tuning to recall@1 >= {DEFAULT_TARGET}, or to the `target=` in params "
        "(leave-one-out on held-out gallery vectors)",
        "- page cache: rows named `... cold` were measured right after dropping the page cache "
        "(`--cold`: every re-ranked float16 row read from disk); the row of the same name without "
        "`cold` then after reading the side files through the page cache, as much as RAM holds "
        "(`cache` in index-<d>.json; older rows: whatever earlier rows had left in it)",
        "",
        *fmt_table(rows),
        "",
    ]
    path.write_text("\n".join(md))


def plot(out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (pip install -e .[bench]): no plot")
        return None
    rows = []
    for p in sorted(out.glob("index-[0-9]*.json")):  # index-128.json, index-512.json
        rows += json.loads(p.read_text())
    if not rows:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "@" in r["index"] or r.get("cache") == "cold":  # another point or cache state of a plotted index
            continue
        series.setdefault((r["dim"], r["index"].replace(" (auto)", "")), []).append(r)
    for (d, name), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        a1.plot(ns, [r["p50_ms"] for r in rs], marker="o", label=f"{name} {d}-d")
        a2.plot(ns, [r["mem_bytes_per_face"] * r["n"] / 2**30 for r in rs], marker="o",
                label=f"{name} {d}-d")
    for a, title, yl in ((a1, "p50 single-query latency (1 thread)", "ms"),
                         (a2, "resident index memory", "GiB")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("faces in the gallery (N)")
        a.set_ylabel(yl)
        a.set_title(title)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"facesearch index scaling; {machine()}", fontsize=8)
    fig.tight_layout()
    path = out / "index-scaling.png"
    fig.savefig(path, dpi=110)
    return path


def parse_n(s: str) -> int:
    s = s.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=parse_n, action="append", help="gallery size (repeatable; 10k, 1M)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-queries", type=int, default=500,
                    help="queries timed one by one for p50/p99 (the first ones of --queries)")
    ap.add_argument("--target-recall", type=float, default=DEFAULT_TARGET)
    ap.add_argument("--index", action="append", choices=["flat", "ivf", "pq", "pq8", "pq-ondisk", "auto"],
                    help="indexes to build (repeatable; default: auto)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for build and batch search")
    ap.add_argument("--data-dir", type=Path, default=Path("/work/bench-data"),
                    help="where generated vectors, ground truth and index files go (outside the repo)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--keep", action="store_true",
                    help="keep each built index (and its side files) under --data-dir")
    ap.add_argument("--reuse", action="store_true",
                    help="measure an index kept by an earlier --keep run instead of building it")
    ap.add_argument("--search", action="append", default=None, metavar="NPROBE:RERANK",
                    help="also measure a PQ index at this nprobe and re-rank depth (repeatable; "
                    "rows named pq@nprobeN,rerankM)")
    ap.add_argument("--move-lists", action="store_true",
                    help="with --reuse --index pq-ondisk: when no pq-ondisk index was kept, move the "
                    "kept pq8 index's lists to disk instead of building one")
    ap.add_argument("--retune", type=float, default=None, metavar="TARGET",
                    help="also re-tune each PQ index for this recall@1 (PQIndex.retune, the build's "
                    "measurement on the index's own vectors) and measure it (rows name@targetT)")
    ap.add_argument("--warm-files", action="store_true",
                    help="read a PQ index's side files (float16 store, on-disk lists) once before "
                    "measuring it: a server whose page cache holds them, not a cold start")
    ap.add_argument("--cold", action="store_true",
                    help="measure each PQ point twice: after dropping the page cache (root), then "
                    "after reading the side files through it (rows 'NAME cold' and 'NAME')")
    ap.add_argument("--stream", action="store_true",
                    help="PQ only: re-create the faces chunk by chunk from seeds instead of a float16 "
                    "file (bench/stream_data.py), adding each chunk and merging it into the ground "
                    "truth in one pass; for galleries whose vectors do not fit the disk")
    ap.add_argument("--store", action="append", choices=list(STORE_DTYPES), default=None,
                    help="with --stream: re-ranking store type (repeatable: one index per type, fed "
                    "the same chunks; rows 'NAME stream', 'NAME-int8 stream'; default float16)")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="  %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        if not args.n:
            ap.error("--n is required")
        names = args.index or ["auto"]
        rows: list[dict[str, Any]] = []
        for n in args.n:
            if args.stream:
                rows += bench_stream(n, args.dim, args.queries, args.seed, names, args.store or ["float16"],
                                     args.target_recall, args.threads, args.data_dir,
                                     args.latency_queries, retune=args.retune,
                                     warm_files=args.warm_files, cold=args.cold,
                                     search_points=[tuple(int(v) for v in sp.split(":")) for sp in args.search or []])
            else:
                rows += bench_one(n, args.dim, args.queries, args.seed, names, args.target_recall,
                                  args.threads, args.data_dir, args.latency_queries,
                                  keep=args.keep, reuse=args.reuse, move_lists=args.move_lists,
                                  retune=args.retune, warm_files=args.warm_files, cold=args.cold,
                                  search_points=[tuple(int(v) for v in sp.split(":")) for sp in args.search or []])
            jpath = args.out / f"index-{args.dim}.json"
            merged = merge_rows(jpath, rows)
            jpath.write_text(json.dumps([{k: r.get(k) for k in KEYS} for r in merged], indent=1) + "\n")
            write_markdown(args.out / f"index-{args.dim}.md", merged, args.dim, args)
        print("\n".join(fmt_table(rows)))
    p = plot(args.out)
    if p:
        print(f"plot: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
