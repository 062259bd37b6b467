"""Compressed embedded index for very large galleries (millions to ~100M faces on one machine).

``PQIndex``: an inverted file with product-quantised codes, an HNSW coarse quantizer when there
are many lists (a flat one otherwise), optionally its inverted lists on disk
(``OnDiskInvertedLists``, memory-mapped), and optional re-ranking of the top candidates with the
full vectors, kept on disk (``np.memmap``) as float16 (2 x d bytes per face) or as int8 codes
with a per-row scale (d + 4 bytes: half the disk, for 512-d galleries of ~100M faces).

Codes
    Lists in memory hold 4-bit fast-scan codes (``IndexIVFPQFastScan``: twice as many
    sub-quantizers as 8-bit PQ for the same bytes per face, scanned 32 codes at a time with
    SIMD table look-ups); lists on disk hold 8-bit codes (``IndexIVFPQ``), since faiss keeps
    fast-scan codes in interleaved blocks that only its in-memory lists can hold. See
    ``bench/results/index-notes.md`` for the measurement behind the choice.

Layout and ids
    faiss holds *row numbers* (0, 1, 2, ... in insertion order), not database ids; ``rows``
    (int64, one per row ever added, ``-1`` once removed) maps a row to its database id, and
    the vector store holds the row's vector at the same position. So re-ranking reads rows
    straight from the memmap, and a database id is found with a sorted copy of ``rows``.

Deletes
    ``remove_ids`` removes the rows from the inverted lists at once (``IndexIVF.remove_ids``,
    a scan of all lists: about a second per call at 100M) and marks them ``-1``: a removed
    face is never returned by the next search. Its stored vector stays in the store (unused)
    until the next rebuild.

Search parameters
    ``nprobe`` and the re-rank depth (candidates re-scored exactly; 0 = none) are chosen at
    build time: gallery vectors held out of the training sample are searched (leave-one-out:
    their nearest *other* face) and compared with exact brute force over all vectors (in
    chunks); among the configurations reaching the target recall@1, the one with the lowest
    measured single-thread search time is kept. Both are stored in the file header.
    ``retune(target)`` repeats that measurement later on the index's own stored vectors
    (live rows only), for another target without rebuilding.

On-disk lists
    Chosen at build time (``on_disk``), or later with ``move_lists_to_disk()``, which copies
    the trained index's lists into the ``.ivfdata`` file without re-adding anything. faiss'
    per-search prefetch threads are turned off (see ``_no_prefetch_threads``).

Files (all next to each other, under a prefix fixed at build time, ``storage``)
    ``<storage>.vec16``   float16 vectors by row (re-ranking with the float16 store)
    ``<storage>.vec8``    int8 vectors by row, each after its float32 scale (the int8 store)
    ``<storage>.ivfdata`` the inverted lists (only when on disk)
    ``save(path)`` writes the usual checksummed header + payload (the faiss index structure,
    which for on-disk lists references the ``.ivfdata`` file, followed by ``rows``). The
    vector store and ``.ivfdata`` files are updated in place by adds and removes, so a crash
    can leave them ahead of the saved header; the manager's count check then rebuilds from
    the database, which is the source of truth.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.faiss_backend import (
    _CHUNK,
    _FaissIndex,
    _as_ids,
    _as_vectors,
    _check_unique,
    _read_exact,
)

log = logging.getLogger(__name__)

__all__ = ["PQIndex", "PQParams", "STORE_DTYPES", "pq_m", "pq_nlist", "pq_bytes_per_face",
           "store_bytes_per_face"]

Progress = Callable[[int, int], None]  # (done, total)

_NPROBE_STEPS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
_RERANK_STEPS = (16, 32, 64, 128, 256, 512, 0)  # re-ranked first: they set the time to beat
_HNSW_MIN_NLIST = 4096  # use an HNSW coarse quantizer from this many lists
_HNSW_M = 32


def pq_m(d: int, bits: int = 8) -> int:
    """PQ sub-quantizers: 8-bit codes have 4 dimensions each up to 128-d (32 bytes per face at
    128-d) and 8 each above (64 bytes at 512-d); 4-bit fast-scan codes twice as many, for the
    same bytes per face, rounded to an even number (faiss packs two per byte); always a
    divisor of ``d``, and 0 for 4-bit codes when ``d`` has no even divisor."""
    target = d // 4 if d <= 128 else d // 8
    if bits == 4:
        target *= 2
    target = max(1, target)
    for m in range(target, 0, -1):
        if d % m == 0 and (bits == 8 or m % 2 == 0):
            return m
    return 1 if bits == 8 else 0


def pq_nlist(n: int) -> int:
    """~2*sqrt(n) lists (at least 39 training points each), as for the fp16 IVF index."""
    if n < 1:
        return 1
    return int(max(1, min(round(2.0 * math.sqrt(n)), n // 39)))


def pq_bytes_per_face(d: int) -> int:
    """Resident bytes per face with lists in memory: code, 8-byte row number in the list and
    8-byte entry in the row -> database id map."""
    return pq_m(d) + 16


@dataclass(frozen=True)
class PQParams:
    """What a ``PQIndex`` was built with and tuned to; saved in the file header."""

    nlist: int
    m: int
    coarse: str  # "hnsw" | "flat"
    on_disk: bool
    rerank: bool  # full vectors kept on disk for re-ranking (float16 or int8: store_dtype)
    nprobe: int
    rerank_depth: int  # candidates re-scored exactly (0 = none)
    trained_n: int
    target_recall: float
    tuned_recall_at_1: float
    storage: str  # prefix of the on-disk files ("" when there are none)
    bits: int = 8  # bits per sub-quantizer code: 8 (IndexIVFPQ) or 4 (IndexIVFPQFastScan)
    store_dtype: str = "float16"  # re-ranking store rows: "float16" or "int8" (STORE_DTYPES)


# --------------------------------------------------------------------------- vector store

STORE_DTYPES = ("float16", "int8")
_STORE_SUFFIX = {"float16": ".vec16", "int8": ".vec8"}


def _row_dtype(dtype: str, d: int) -> np.dtype:
    """One stored row: ``d`` float16 values, or a float32 scale followed by ``d`` int8 codes
    (``x ~= code * scale``, the scale per row so that every row uses the whole int8 range)."""
    if dtype == "float16":
        return np.dtype((np.float16, (d,)))
    if dtype == "int8":
        return np.dtype([("scale", "<f4"), ("code", "i1", (d,))])
    raise IndexError_(f"unknown vector store type {dtype!r} (expected one of {', '.join(STORE_DTYPES)})")


def store_bytes_per_face(d: int, dtype: str = "float16") -> int:
    """Disk bytes the re-ranking store takes per face."""
    return int(_row_dtype(dtype, d).itemsize)


class _VectorStore:
    """Append-only vectors by row (float16, or int8 with a per-row scale: half the disk at a
    re-ranking error of about 1e-3 in cosine), in a file read through ``np.memmap``."""

    def __init__(self, path: Path, d: int, dtype: str = "float16") -> None:
        self.path = path
        self.d = d
        self.dtype = dtype
        self._row = _row_dtype(dtype, d)
        self._mm: np.memmap | None = None
        self._rows = 0
        if path.exists():
            size = path.stat().st_size
            if size % self._row.itemsize:
                raise IndexError_(f"vector store {path} has a partial row ({size} bytes)")
            self._rows = size // self._row.itemsize
        else:
            path.touch(mode=0o600)

    @property
    def rows(self) -> int:
        return self._rows

    def _encode(self, x: np.ndarray) -> np.ndarray:
        if self.dtype == "float16":
            return np.ascontiguousarray(x, dtype=np.float16)
        out = np.empty(len(x), dtype=self._row)
        peak = np.abs(x).max(axis=1) if len(x) else np.empty(0, dtype=np.float32)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        out["scale"] = scale
        out["code"] = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
        return out

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        if self.dtype == "float16":
            return np.asarray(raw, dtype=np.float32)
        return raw["code"].astype(np.float32) * raw["scale"][:, None]

    def append(self, x: np.ndarray) -> None:
        with open(self.path, "ab") as f:
            f.write(self._encode(x).tobytes())
        self._rows += len(x)
        self._mm = None

    def flush(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _map(self) -> np.memmap:
        if self.dtype == "float16":
            return np.memmap(self.path, dtype=np.float16, mode="r", shape=(self._rows, self.d))
        return np.memmap(self.path, dtype=self._row, mode="r", shape=(self._rows,))

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Scattered rows as float32 (a mapping without read-ahead: see ``_random_access``)."""
        if self._mm is None or len(self._mm) != self._rows:
            self._mm = self._map()
            _random_access(self._mm)
        return self._decode(self._mm[rows])

    def sequential(self) -> _StoreScan:
        """All rows for an in-order scan (the kernel's read-ahead kept), decoded per slice."""
        return _StoreScan(self, self._map())


class _StoreScan:
    """Read-only (rows, d) view of a store: slicing it decodes those rows to float32."""

    def __init__(self, store: _VectorStore, mm: np.memmap) -> None:
        self._store = store
        self._mm = mm
        self.shape = (len(mm), store.d)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._store._decode(self._mm[key])


def _random_access(mm: np.memmap) -> None:
    """Tell the kernel that re-ranking reads scattered rows. Without it every row read faults in
    the device's whole read-ahead window around it: at 100M faces (a 25.6 GB store, larger than
    the page cache) 16 rows per query made 1 GB/s of disk reads and 41 ms per query; with it,
    a few MB/s."""
    handle = getattr(mm, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            handle.madvise(mmap.MADV_RANDOM)
        except OSError:  # a platform without madvise: correct, only slower
            log.debug("madvise(MADV_RANDOM) refused for %s", mm.filename)


# --------------------------------------------------------------------------- index

class PQIndex(_FaissIndex):
    """IVF-PQ with optional on-disk lists and optional re-ranking (see module doc)."""

    _type = "ivfpq"

    def __init__(self, index: faiss.IndexIVFPQ | faiss.IndexIVFPQFastScan, rows: np.ndarray,
                 params: PQParams, store: _VectorStore | None) -> None:
        super().__init__(index)
        self._ivf = index
        self._buf = np.array(rows, dtype=np.int64)  # capacity grows by doubling
        self._n_rows = int(len(rows))
        self._p = params
        self._store = store
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (ids, rows) sorted by id
        self._no_prefetch_threads()
        self._apply(params.nprobe)

    # ------------------------------------------------------------------ properties

    @property
    def params(self) -> PQParams:
        return self._p

    @property
    def nlist(self) -> int:
        return int(self._ivf.nlist)

    @property
    def nprobe(self) -> int:
        return int(self._ivf.nprobe)

    @property
    def rerank_depth(self) -> int:
        return self._p.rerank_depth if self._store is not None else 0

    @property
    def trained_n(self) -> int:
        return self._p.trained_n

    @property
    def tuned_recall(self) -> float:
        return self._p.tuned_recall_at_1

    @property
    def kind(self) -> str:
        s = f"ivf{self.nlist}_{self._p.coarse},pq{self._p.m}"
        if self._p.bits == 4:
            s += "x4fs"
        if self._p.on_disk:
            s += ",ondisk"
        s += f",nprobe={self.nprobe}"
        if self.rerank_depth:
            s += f",rerank={self.rerank_depth}"
        return s

    @property
    def _rows(self) -> np.ndarray:
        """Row -> database id (-1: removed), a view of the first ``_n_rows`` of the buffer."""
        return self._buf[:self._n_rows]

    def storage_files(self) -> list[Path]:
        """The on-disk files this index uses besides the saved header file."""
        out = []
        if self._store is not None:
            out.append(self._store.path)
        if self._p.on_disk:
            out.append(Path(self._p.storage + ".ivfdata"))
        return out

    def memory_bytes(self) -> int:
        """Approximate resident bytes: lists (unless on disk), row map, coarse quantizer."""
        lists = 0 if self._p.on_disk else self.ntotal * (self._ivf.code_size + 8)
        quant = self.nlist * self.d * 4 * (2 if self._p.coarse == "hnsw" else 1)
        # nlist x M x 256 floats (L2 IVFPQ); fast-scan builds its tables per query
        tables = int(self._ivf.precomputed_table.size()) * 4
        return int(lists + self._n_rows * 8 + quant + 256 * self.d * 4 + tables)

    def disk_bytes(self) -> int:
        """Bytes the side files take on disk: allocated blocks, since the on-disk lists file
        is sparse (faiss grows it by doubling and gives each list a power-of-two capacity)."""
        total = 0
        for p in self.storage_files():
            if p.exists():
                st = p.stat()
                blocks = getattr(st, "st_blocks", 0) * 512
                total += min(st.st_size, blocks) if blocks else st.st_size
        return int(total)

    def set_search(self, *, nprobe: int | None = None, rerank_depth: int | None = None) -> None:
        """Override the tuned search parameters (saved with the index)."""
        if nprobe is not None:
            if not 1 <= int(nprobe) <= self.nlist:
                raise IndexError_(f"nprobe must be in 1..{self.nlist}, got {nprobe}")
            self._p = PQParams(**{**asdict(self._p), "nprobe": int(nprobe)})
            self._apply(int(nprobe))
        if rerank_depth is not None:
            if int(rerank_depth) < 0 or (int(rerank_depth) and self._store is None):
                raise IndexError_(f"re-rank depth {rerank_depth} needs the vector store "
                                  "(an index built with re-ranking)")
            self._p = PQParams(**{**asdict(self._p), "rerank_depth": int(rerank_depth)})

    def _no_prefetch_threads(self) -> None:
        """On-disk lists: faiss starts ``prefetch_nthread`` (32) threads on every search to
        fault the probed lists in. Measured on 2 cores with the lists in the page cache, that
        took a query from 0.15 ms to 1.9 ms (p99 85 ms); the search thread reads them itself."""
        if self._p.on_disk:
            lists = faiss.downcast_InvertedLists(self._ivf.invlists)
            if hasattr(lists, "prefetch_nthread"):
                lists.prefetch_nthread = 0

    def _apply(self, nprobe: int) -> None:
        nprobe = max(1, min(int(nprobe), self.nlist))
        self._ivf.nprobe = nprobe
        if self._p.coarse == "hnsw":
            q = faiss.downcast_index(self._ivf.quantizer)
            q.hnsw.efSearch = max(64, 2 * nprobe)

    def retune(self, target_recall: float, *, queries: int = 1000, seed: int = 0,
               batch: int = 1_000_000) -> tuple[int, int, float]:
        """Choose ``nprobe`` and the re-rank depth again for ``target_recall``, without
        rebuilding: the same measurement as at build time (leave-one-out recall@1 of ``queries``
        live rows drawn at random, against brute force over the live rows), read from the
        index's own stored vectors. Returns (nprobe, rerank depth, recall@1); the new
        parameters are kept and saved with the index."""
        if self._store is None:
            raise IndexError_("re-tuning needs the vector store (an index built with re-ranking)")
        if not 0.0 < float(target_recall) <= 1.0:
            raise IndexError_(f"target recall must be in (0, 1], got {target_recall}")
        live = self._rows >= 0
        live_rows = np.flatnonzero(live)
        if len(live_rows) < 2:
            raise IndexError_("re-tuning needs at least two faces in the index")
        self._store.flush()
        # a plain mapping (the kernel's read-ahead) for the sequential brute-force scan
        vectors = self._store.sequential()
        rng = np.random.default_rng(seed)
        q_rows = np.sort(rng.choice(live_rows, size=min(int(queries), len(live_rows) - 1), replace=False))
        t = time.perf_counter()
        # scattered rows through the store's own mapping (no read-ahead: see _random_access)
        nprobe, depth, recall = _tune(self, vectors, q_rows, float(target_recall), int(batch),
                                      live=None if live.all() else live, gather=self._store.get)
        self._p = PQParams(**{**asdict(self._p), "nprobe": nprobe, "rerank_depth": depth,
                              "target_recall": float(target_recall), "tuned_recall_at_1": recall})
        self._apply(nprobe)
        log.info("re-tuned %s for recall@1 >= %.3f: %.4f on %d queries (%.1fs)", self.kind,
                 target_recall, recall, len(q_rows), time.perf_counter() - t)
        return nprobe, depth, recall

    def move_lists_to_disk(self) -> Path:
        """Move the inverted lists from memory into ``<storage>.ivfdata`` (memory-mapped, read
        through the page cache): the same trained quantizers and codes, nothing re-added. For a
        gallery whose lists no longer fit the RAM budget. Returns the lists' file."""
        if self._p.on_disk:
            return Path(self._p.storage + ".ivfdata")
        if self._p.bits == 4:
            raise IndexError_("4-bit fast-scan lists are kept in memory only; rebuild the index "
                              "with its lists on disk (8-bit codes)")
        if not self._p.storage:
            raise IndexError_("moving the lists to disk needs a storage path (build with re-ranking)")
        path = Path(self._p.storage + ".ivfdata")
        path.unlink(missing_ok=True)
        cs = int(self._ivf.code_size)
        od = faiss.OnDiskInvertedLists(self.nlist, cs, str(path))
        # list by list with add_entries (faiss' merge_from leaves lists that a later add corrupts)
        src = self._ivf.invlists
        for ln in range(self.nlist):
            size = int(src.list_size(ln))
            if size:
                codes = faiss.rev_swig_ptr(src.get_codes(ln), size * cs)
                ids = faiss.rev_swig_ptr(src.get_ids(ln), size)
                od.add_entries(ln, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        self._ivf.replace_invlists(od, True)
        od.this.disown()
        self._p = PQParams(**{**asdict(self._p), "on_disk": True})
        self._no_prefetch_threads()
        return path

    # ------------------------------------------------------------------ writes

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        xv = _as_vectors(x, self.d)
        iv = _as_ids(ids, len(xv))
        _check_unique(iv)
        if not len(xv):
            return
        start = self._n_rows
        if self._store is not None:
            if self._store.rows != start:
                raise IndexError_("vector store is out of step with the index; rebuild it")
            self._store.append(xv)
        self._ivf.add_with_ids(xv, np.arange(start, start + len(xv), dtype=np.int64))
        need = start + len(xv)
        if need > len(self._buf):
            grown = np.empty(max(need, 2 * len(self._buf)), dtype=np.int64)
            grown[:start] = self._buf[:start]
            self._buf = grown
        self._buf[start:need] = iv
        self._n_rows = need
        self._sorted = None

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted is None:
            order = np.argsort(self._rows, kind="stable")
            self._sorted = (self._rows[order], order.astype(np.int64))
        sid, srow = self._sorted
        pos = np.clip(np.searchsorted(sid, ids), 0, max(0, len(sid) - 1))
        if not len(sid):
            return np.empty(0, dtype=np.int64)
        rows = srow[pos[sid[pos] == ids]]
        return rows[self._rows[rows] >= 0]  # rows removed since the sort now read -1

    def remove_ids(self, ids: np.ndarray) -> int:
        iv = np.unique(_as_ids(ids))
        if len(iv) == 0 or self.ntotal == 0:
            return 0
        rows = self._rows_of(iv)
        if not len(rows):
            return 0
        before = self._list_sizes() if self._p.bits == 4 else None
        n = int(self._ivf.remove_ids(faiss.IDSelectorBatch(rows)))
        if before is not None:
            self._clear_block_tails(before)
        self._buf[rows] = -1  # the sorted copy stays valid: lookups re-check the row
        return n

    def _list_sizes(self) -> np.ndarray:
        lists = self._ivf.invlists
        return np.fromiter((lists.list_size(i) for i in range(self.nlist)), dtype=np.int64,
                           count=self.nlist)

    def _clear_block_tails(self, before: np.ndarray) -> None:
        """Zero the slots a removal freed at the end of each shrunk fast-scan list.

        faiss' ``BlockInvertedLists.remove_ids`` fills each hole with the list's last entry and
        shrinks the list, but leaves that entry's 4-bit codes in its old slot of the last block;
        a later add ORs new codes into the block (it expects free slots to be zero), so faces
        added after a removal got corrupted codes and were not found (faiss 1.15: about 40% of
        a batch added after removing 500 of 8,000 faces). Only the partial last block needs it:
        whole blocks are dropped by the shrink and zeroed when they are allocated again."""
        after = self._list_sizes()
        changed = np.flatnonzero(after < before)
        if not len(changed):
            return
        packer = self._ivf.get_CodePacker()
        zero = np.zeros(int(packer.code_size), dtype=np.uint8)
        per_block = int(packer.nvec)
        for ln in changed:
            size = int(after[ln])
            end = -(-size // per_block) * per_block
            if end > size:
                codes = self._ivf.invlists.get_codes(int(ln))
                for slot in range(size, end):
                    packer.pack_1_c(faiss.swig_ptr(zero), slot, codes)

    # ------------------------------------------------------------------ search

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_vectors(x, self.d, "queries")
        if int(k) < 1:
            raise IndexError_(f"k must be >= 1, got {k}")
        k = int(k)
        D = np.full((len(q), k), -np.inf, dtype=np.float32)
        I = np.full((len(q), k), -1, dtype=np.int64)
        if len(q) == 0 or self.ntotal == 0:
            return D, I
        d_, r_ = self._search_rows(q, k, self.rerank_depth)
        kk = d_.shape[1]
        ok = r_ >= 0
        I[:, :kk] = np.where(ok, self._rows[np.where(ok, r_, 0)], -1)
        D[:, :kk] = np.where(ok, d_, -np.inf)
        return D, I

    def _search_rows(self, q: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first; scores are inner products (exact when re-ranked)."""
        kk = min(k, self.ntotal)
        if depth <= 0 or self._store is None:
            dist, rows = self._ivf.search(q, kk)
            return (1.0 - dist / 2.0).astype(np.float32), rows  # unit vectors: |q-x|^2 = 2 - 2 q.x
        if len(q) > 64:  # bound the (queries x depth x d) gather
            parts = [self._search_rows(q[i:i + 64], k, depth) for i in range(0, len(q), 64)]
            return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
        _, cand = self._ivf.search(q, max(depth, kk))
        valid = cand >= 0
        flat = np.where(valid, cand, 0)
        uniq, inv = np.unique(flat, return_inverse=True)
        v = self._store.get(uniq)  # (u, d) float32
        scores = np.einsum("qd,qcd->qc", q, v[inv.reshape(flat.shape)])
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        s = np.take_along_axis(scores, top, axis=1)
        r = np.take_along_axis(cand, top, axis=1)
        r = np.where(np.isfinite(s), r, -1)
        return s, r

    # ------------------------------------------------------------------ persistence

    def _params(self) -> dict[str, Any]:
        p = asdict(self._p)
        p["nprobe"] = self.nprobe
        p["n_rows"] = self._n_rows
        return p

    def _write_payload(self, out: Callable[[bytes], None]) -> None:
        """The faiss index's length (int64), the faiss index, then the row map, streamed:
        the faiss part is written twice, once only to count its bytes, so that no copy of
        the lists (7 GB at 100M 512-d) is ever held in memory."""
        if self._store is not None:
            self._store.flush()
        counted = [0]

        def count(b: bytes) -> None:
            counted[0] += len(b)

        faiss.write_index(self._ivf, faiss.PyCallbackIOWriter(count, _CHUNK))
        out(np.int64(counted[0]).astype("<i8").tobytes())
        written = [0]

        def forward(b: bytes) -> None:
            written[0] += len(b)
            out(b)

        faiss.write_index(self._ivf, faiss.PyCallbackIOWriter(forward, _CHUNK))
        if written[0] != counted[0]:
            raise IndexError_("the index changed while it was being saved")
        rows = np.ascontiguousarray(self._rows, dtype="<i8")
        for s0 in range(0, len(rows), _CHUNK // 8):
            out(rows[s0:s0 + _CHUNK // 8].tobytes())

    @classmethod
    def _read_payload(cls, f: BinaryIO, nbytes: int, params: dict[str, Any]) -> PQIndex:
        flen = int(np.frombuffer(_read_exact(f, 8), dtype="<i8")[0])
        nrow_bytes = nbytes - 8 - flen
        if flen < 0 or nrow_bytes < 0 or nrow_bytes % 8:
            raise ValueError(f"payload layout is inconsistent (faiss part {flen} of {nbytes} bytes)")
        left = [flen]

        def read(n: int) -> bytes:  # faiss reads exactly what it needs; never past its part
            b = f.read(min(int(n), left[0]))
            left[0] -= len(b)
            return b

        index = faiss.read_index(faiss.PyCallbackIOReader(read, _CHUNK))
        if left[0]:
            raise ValueError(f"faiss part is {left[0]} bytes longer than the index it holds")
        rows = np.empty(nrow_bytes // 8, dtype="<i8")
        if f.readinto(memoryview(rows).cast("B")) != nrow_bytes:
            raise ValueError("row map is truncated")
        rows = rows.astype(np.int64, copy=False)
        # headers written before fast-scan existed have no "bits": they are 8-bit
        fields = {k: params[k] for k in PQParams.__dataclass_fields__ if k in params}
        p = PQParams(**fields)
        expected = faiss.IndexIVFPQFastScan if p.bits == 4 else faiss.IndexIVFPQ
        if not isinstance(index, expected):
            raise ValueError(f"expected {expected.__name__}, found {type(index).__name__}")
        if len(rows) != int(params.get("n_rows", len(rows))):
            raise ValueError("row map length does not match the header")
        store = None
        if p.rerank:
            if p.store_dtype not in _STORE_SUFFIX:
                raise ValueError(f"unknown vector store type {p.store_dtype!r}")
            spath = Path(p.storage + _STORE_SUFFIX[p.store_dtype])
            if not spath.exists():
                raise ValueError(f"vector store {spath} is missing")
            store = _VectorStore(spath, int(index.d), p.store_dtype)
            if store.rows < len(rows):
                raise ValueError(f"vector store {spath} holds {store.rows} rows, index needs {len(rows)}")
        return cls(index, rows, p, store)

    # ------------------------------------------------------------------ build

    @classmethod
    def trained(
        cls,
        sample: np.ndarray,
        n: int,
        *,
        storage: Path | None,
        target_recall: float = 0.99,
        on_disk: bool = False,
        rerank: bool = True,
        store_dtype: str = "float16",
        nlist: int | None = None,
        m: int | None = None,
        fast_scan: bool | None = None,
        seed: int = 0,
    ) -> PQIndex:
        """An empty index sized for ``n`` faces and trained on ``sample`` (unit rows drawn
        like the gallery; ``train_sample_size`` says how many are useful). Add the gallery
        with ``add_with_ids`` in batches and choose the search parameters with ``retune``:
        for a gallery that is streamed in and never held as one array. ``build`` does the
        same over an array. ``storage`` is the prefix of the on-disk files (required with
        ``on_disk`` or ``rerank``); existing files there are replaced. ``store_dtype`` is
        ``float16`` (2 x d bytes per face) or ``int8`` (d + 4). ``fast_scan`` (4-bit codes)
        defaults to lists in memory; it cannot be combined with ``on_disk``."""
        n = int(n)
        if sample.ndim != 2 or sample.shape[1] < 1:
            raise IndexError_(f"vectors must be a 2-D array (n, d), got shape {sample.shape}")
        d = int(sample.shape[1])
        if n < 1:
            raise IndexError_("cannot build a PQ index from zero vectors")
        if (on_disk or rerank) and storage is None:
            raise IndexError_("a PQ index with on-disk lists or re-ranking needs a storage path")
        if store_dtype not in STORE_DTYPES:
            raise IndexError_(f"unknown vector store type {store_dtype!r} "
                              f"(expected one of {', '.join(STORE_DTYPES)})")
        fast = (not on_disk and pq_m(d, 4) > 0) if fast_scan is None else bool(fast_scan)
        if fast and on_disk:
            raise IndexError_("4-bit fast-scan codes cannot be kept in on-disk lists")
        bits = 4 if fast else 8
        nl = pq_nlist(n) if nlist is None else int(nlist)
        mm = pq_m(d, bits) if m is None else int(m)
        if mm < 1 or d % mm or (fast and mm % 2):
            raise IndexError_(f"PQ sub-quantizers ({mm}) must divide the dimension ({d})"
                              + (" and be even for 4-bit codes" if fast else ""))
        if min(n, len(sample)) < 256 * 4:
            raise IndexError_(f"a PQ index needs at least 1024 vectors to train, got {min(n, len(sample))}")
        coarse = "hnsw" if nl >= _HNSW_MIN_NLIST else "flat"
        prefix = str(storage) if storage is not None else ""

        # unit vectors: L2 order == inner-product order, and L2 IVFPQ has precomputed tables
        quantizer = faiss.IndexHNSWFlat(d, _HNSW_M) if coarse == "hnsw" else faiss.IndexFlatL2(d)
        if fast:
            ivf = faiss.IndexIVFPQFastScan(quantizer, d, nl, mm, 4)
        else:
            ivf = faiss.IndexIVFPQ(quantizer, d, nl, mm, 8)
        ivf.own_fields = True
        quantizer.this.disown()
        ivf.cp.seed = int(seed)
        ivf.cp.niter = 10  # coarse k-means: ~nlist x 40 points; more iterations barely help recall
        ivf.pq.cp.seed = int(seed)
        # PQ k-means (256 centroids per sub-space) dominates training time on small machines:
        # 10 iterations on at most 64 points per centroid lose little at 4-8 dims per sub-space
        ivf.pq.cp.niter = 10
        # (4-bit codes have 16 centroids per sub-space: a few thousand points each stay cheap)
        ivf.pq.cp.max_points_per_centroid = 256 if fast else 48
        if coarse == "hnsw":
            quantizer.hnsw.efConstruction = 40
            quantizer.hnsw.efSearch = 64
        ivf.train(_as_vectors(sample, d))

        if on_disk:
            lists_path = prefix + ".ivfdata"
            Path(lists_path).unlink(missing_ok=True)
            od = faiss.OnDiskInvertedLists(nl, ivf.code_size, lists_path)
            ivf.replace_invlists(od, True)
            od.this.disown()
        store = None
        if rerank:
            spath = Path(prefix + _STORE_SUFFIX[store_dtype])
            spath.unlink(missing_ok=True)
            store = _VectorStore(spath, d, store_dtype)
        p = PQParams(nlist=nl, m=mm, coarse=coarse, on_disk=on_disk, rerank=rerank, nprobe=1,
                     rerank_depth=0, trained_n=n, target_recall=float(target_recall),
                     tuned_recall_at_1=0.0, storage=prefix, bits=bits, store_dtype=store_dtype)
        return cls(ivf, np.empty(0, dtype=np.int64), p, store)

    @staticmethod
    def train_sample_size(n: int, nlist: int | None = None, train_per_list: int = 40) -> int:
        """How many of ``n`` vectors ``build`` trains on (``train_per_list`` per list, at
        least 16,384)."""
        nl = pq_nlist(n) if nlist is None else int(nlist)
        return int(min(n, max(nl * max(1, min(256, int(train_per_list))), 256 * 64)))

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        storage: Path | None,
        target_recall: float = 0.99,
        on_disk: bool = False,
        rerank: bool = True,
        store_dtype: str = "float16",
        nlist: int | None = None,
        m: int | None = None,
        fast_scan: bool | None = None,
        train_per_list: int = 40,
        tune_queries: int = 1000,
        batch: int = 200_000,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> PQIndex:
        """Train on a sample, add in batches, tune ``nprobe`` and the re-rank depth.

        ``vectors`` may be an ``np.memmap`` (any float dtype, unit rows); it is read in
        batches of ``batch`` rows, never converted whole. The other arguments are those of
        ``trained``.
        """
        if vectors.ndim != 2 or vectors.shape[1] < 1:
            raise IndexError_(f"vectors must be a 2-D array (n, d), got shape {vectors.shape}")
        n, d = int(vectors.shape[0]), int(vectors.shape[1])
        iv = _as_ids(ids, n)
        _check_unique(iv)
        if n == 0:
            raise IndexError_("cannot build a PQ index from zero vectors")
        if n < 256 * 4:
            raise IndexError_(f"a PQ index needs at least 1024 vectors to train, got {n}")
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        ntrain = cls.train_sample_size(n, nlist, train_per_list)
        perm = rng.permutation(n)
        train_rows = np.sort(perm[:ntrain])
        out = cls.trained(vectors[train_rows], n, storage=storage, target_recall=target_recall,
                          on_disk=on_disk, rerank=rerank, store_dtype=store_dtype, nlist=nlist,
                          m=m, fast_scan=fast_scan, seed=seed)
        t1 = time.perf_counter()
        for s in range(0, n, batch):
            e = min(n, s + batch)
            out.add_with_ids(vectors[s:e], iv[s:e])
            if progress is not None:
                progress(e, n)
        t2 = time.perf_counter()

        nq = min(int(tune_queries), n - 1)
        held = perm[ntrain:ntrain + nq] if n - ntrain >= nq else perm[n - nq:]
        store = out._store
        # scattered rows from the store when there is one: a memory-mapped input (the
        # manager's streamed builds, the benchmark's data) would read ahead megabytes per row
        nprobe, depth, recall = _tune(out, vectors, np.sort(held), float(target_recall), batch,
                                      gather=store.get if store is not None else None)
        out._p = PQParams(**{**asdict(out._p), "nprobe": nprobe, "rerank_depth": depth,
                             "tuned_recall_at_1": recall})
        out._apply(nprobe)
        log.info("built %s over %d vectors: train %.1fs (%d vectors), add %.1fs, tune %.1fs "
                 "(recall@1 %.4f on %d queries)", out.kind, n, t1 - t0, ntrain, t2 - t1,
                 time.perf_counter() - t2, recall, len(held))
        return out


def _exact_nearest_other(vectors: np.ndarray, q: np.ndarray, q_rows: np.ndarray,
                         batch: int, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row and score of each query's nearest *other* vector, by brute force in chunks
    (only rows where ``live`` is true, when given)."""
    best_s = np.full(len(q), -np.inf, dtype=np.float32)
    best_r = np.full(len(q), -1, dtype=np.int64)
    for s in range(0, len(vectors), batch):
        chunk = _as_vectors(vectors[s:s + batch], q.shape[1])
        at = np.arange(s, s + len(chunk), dtype=np.int64)
        if live is not None:
            keep = live[s:s + len(chunk)]
            chunk, at = np.ascontiguousarray(chunk[keep]), at[keep]
        if not len(chunk):
            continue
        D, I = faiss.knn(q, chunk, min(2, len(chunk)), faiss.METRIC_INNER_PRODUCT)
        I = at[I]
        D = np.where(I == q_rows[:, None], -np.inf, D)
        j = np.argmax(D, axis=1)
        cs = D[np.arange(len(q)), j]
        better = cs > best_s
        best_s[better] = cs[better]
        best_r[better] = I[np.arange(len(q)), j][better]
    return best_r, best_s


def _tune(index: PQIndex, vectors: np.ndarray, q_rows: np.ndarray, target: float,
          batch: int, live: np.ndarray | None = None,
          gather: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[int, int, float]:
    """(nprobe, rerank depth, recall@1): the fastest measured configuration reaching
    ``target`` (leave-one-out recall@1 of the gallery rows ``q_rows``; ``live`` marks the rows
    still in the index when some were removed). ``vectors`` is scanned in order for the exact
    answers; ``gather`` reads scattered rows (default: from ``vectors``)."""
    if len(q_rows) == 0:
        return index.nlist, 0, 1.0
    if gather is None:
        def gather(rows: np.ndarray) -> np.ndarray:
            return _as_vectors(vectors[rows], index.d)
    q = gather(q_rows)
    gt_row, gt_score = _exact_nearest_other(vectors, q, q_rows, max(batch, 100_000), live)
    depths = [dp for dp in _RERANK_STEPS if index._store is not None or dp == 0]
    steps = [s for s in _NPROBE_STEPS if s < index.nlist] + [index.nlist]
    threads = faiss.omp_get_max_threads()
    best: tuple[float, int, int, float] | None = None  # (time, nprobe, depth, recall)
    fallback = (0.0, index.nlist, depths[0], 0.0)
    try:
        for depth in depths:
            history: list[float] = []
            for s in steps:
                index._apply(s)
                faiss.omp_set_num_threads(1)
                t = time.perf_counter()
                _, rows = index._search_rows(q, 2, depth)
                el = time.perf_counter() - t
                faiss.omp_set_num_threads(threads)
                rows = np.where(rows == q_rows[:, None], -1, rows)
                has = rows >= 0
                cand = rows[np.arange(len(rows)), np.argmax(has, axis=1)]
                found = has.any(axis=1)
                cs = np.einsum("ij,ij->i", q, gather(np.where(found, cand, 0)))
                hit = found & ((cand == gt_row) | (cs >= gt_score - 1e-5))
                recall = float(hit.mean())
                if recall > fallback[3]:
                    fallback = (el, s, depth, recall)
                if recall >= target:
                    if best is None or el < best[0]:
                        best = (el, s, depth, recall)
                    break
                if best is not None and el > 2 * best[0]:
                    break  # already slower than a configuration that reaches the target
                history.append(recall)
                if len(history) >= 4 and history[-1] - history[-4] < 0.002:
                    break  # plateau: more lists do not help at this re-rank depth
    finally:
        faiss.omp_set_num_threads(threads)
    if best is None:
        log.warning("PQ tuning: recall@1 %.4f < target %.4f at every configuration",
                    fallback[3], target)
        best = fallback
    return best[1], best[2], best[3]
