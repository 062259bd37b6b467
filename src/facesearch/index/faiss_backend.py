"""faiss backends for the ``VectorIndex`` protocol.

Two backends, both keyed by caller-chosen int64 ids (database face ids) and both honouring
``remove_ids`` immediately:

``FlatIndex``
    Exact search: ``IndexIDMap2`` over ``IndexFlatIP``. 4 bytes x d per face.

``IVFIndex``
    Approximate search: an inverted file (``IndexIVFScalarQuantizer``) with a flat
    inner-product coarse quantizer and fp16 codes (2 bytes x d per face; ``sq8`` is
    available for 1 byte x d). HNSW is not used because faiss HNSW cannot remove vectors.
    ``nlist`` is derived from the number of vectors, the quantizer is trained on a sample,
    and ``nprobe`` is tuned at build time: leave-one-out queries (vectors held out of the
    training sample) are searched with the ANN index and compared with exact search until
    recall@1 reaches the target. ``nprobe`` and the tuning result are saved with the index.
    Why fp16 and not SQ8 or PQ (measured with ``bench/index.py``-style clustered data, 128-d):
    SQ8 plateaus at recall@1 ~0.98 at 100k and ~0.977 at 1M whatever nprobe is (its
    quantisation error is larger than the score gap between a face's nearest and
    second-nearest gallery faces), PQ32/PQ64 plateau at ~0.5/~0.8, while fp16 reaches 0.995+
    at 1M with nprobe ~24-32, p50 < 1 ms single-threaded, ~0.25 GiB per million faces.

Files are written to a temporary file in the target folder, fsync'ed, then moved into place
with ``os.replace``: a crash leaves either the old or the new index, never half of one. The
file carries a header (type, dimension, count, parameters) and CRC-32 checksums of header and
payload, so ``load_index`` detects truncated or corrupted files and raises ``IndexError_``
(the caller then rebuilds from the database).

Concurrency: faiss searches may run concurrently with each other, but not with
``add_with_ids`` / ``remove_ids`` on the same index; the caller serialises writers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import faiss
import numpy as np

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex

log = logging.getLogger(__name__)

__all__ = [
    "FlatIndex",
    "IVFIndex",
    "load_index",
    "set_threads",
    "get_threads",
    "ivf_nlist",
]

_MAGIC = b"FSIDX\x00\x01\n"  # 8 bytes
_PREFIX = struct.Struct("<II")  # header length, header CRC-32
_FORMAT = 1
_CHUNK = 8 * 1024 * 1024

# codec name -> faiss index_factory code
_CODECS: dict[str, str] = {"fp16": "SQfp16", "sq8": "SQ8"}
# nprobe values tried, in order, when tuning (capped at nlist; nlist itself is the last resort)
_NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# --------------------------------------------------------------------------- threads

def set_threads(n: int) -> None:
    """Set the number of OpenMP threads faiss uses (``faiss.omp_set_num_threads``).

    Single-query latency is best measured with 1; batch search and builds benefit from more.
    OpenMP settings are per calling OS thread in libgomp, so call this from the thread that
    searches.
    """
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    faiss.omp_set_num_threads(int(n))


def get_threads() -> int:
    return int(faiss.omp_get_max_threads())


# --------------------------------------------------------------------------- validation

def _as_vectors(x: Any, d: int, what: str = "vectors") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise IndexError_(f"{what} must be a 2-D array of shape (n, {d}), got shape {a.shape}")
    if a.shape[1] != d:
        raise IndexError_(
            f"{what} have dimension {a.shape[1]} but the index has dimension {d} "
            "(embeddings from a different model?)"
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        raise IndexError_(f"{what} contain NaN or infinite values")
    return a


def _as_ids(ids: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise IndexError_(f"ids must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise IndexError_(f"ids must be integers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if n is not None and len(a) != n:
        raise IndexError_(f"got {n} vectors but {len(a)} ids")
    if a.size and int(a.min()) < 0:
        raise IndexError_("ids must be >= 0 (-1 marks an empty result slot)")
    return a


def _check_unique(ids: np.ndarray) -> None:
    if len(ids) > 1 and len(np.unique(ids)) != len(ids):
        raise IndexError_("duplicate ids in one batch")


# --------------------------------------------------------------------------- base

class _FaissIndex:
    """Shared behaviour: validation, -1/-inf padding, removal, persistence."""

    _type: ClassVar[str]

    def __init__(self, index: faiss.Index) -> None:
        self._index = index

    @property
    def d(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def faiss_index(self) -> faiss.Index:
        """The wrapped faiss index (read-only use: benchmarks, diagnostics)."""
        return self._index

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} d={self.d} ntotal={self.ntotal}>"

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add rows of ``x`` under ``ids``. Ids must not already be in the index (the caller
        guarantees this: they are database primary keys; re-adding means remove first)."""
        xv = _as_vectors(x, self.d)
        iv = _as_ids(ids, len(xv))
        _check_unique(iv)
        if len(xv):
            self._index.add_with_ids(xv, iv)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_vectors(x, self.d, "queries")
        if int(k) < 1:
            raise IndexError_(f"k must be >= 1, got {k}")
        k = int(k)
        D = np.full((len(q), k), -np.inf, dtype=np.float32)
        I = np.full((len(q), k), -1, dtype=np.int64)
        n = self.ntotal
        if len(q) == 0 or n == 0:
            return D, I
        kk = min(k, n)
        d_, i_ = self._index.search(q, kk)
        D[:, :kk] = d_
        I[:, :kk] = i_
        D[I < 0] = -np.inf
        return D, I

    def remove_ids(self, ids: np.ndarray) -> int:
        iv = _as_ids(ids)
        if len(iv) == 0 or self.ntotal == 0:
            return 0
        return int(self._index.remove_ids(np.unique(iv)))

    # persistence ---------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {}

    def _write_payload(self, out: Callable[[bytes], None]) -> None:
        """Stream the bytes saved after the header into ``out``, piece by piece: no copy of
        the whole index is made in memory (at 100M faces one copy is gigabytes)."""
        faiss.write_index(self._index, faiss.PyCallbackIOWriter(out, _CHUNK))

    @classmethod
    def _read_payload(cls, f: BinaryIO, nbytes: int, params: dict[str, Any]) -> _FaissIndex:
        """Inverse of ``_payload``: ``f`` is positioned at the payload (already checksummed)."""
        reader = faiss.PyCallbackIOReader(f.read, _CHUNK)
        index = faiss.read_index(reader)
        return cls._from_faiss(index, params)

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (a temporary file renamed over it); the
        payload is streamed, so saving needs no memory beyond the index itself."""
        header = {
            "format": _FORMAT,
            "type": self._type,
            "d": self.d,
            "ntotal": self.ntotal,
            "params": self._params(),
            "faiss_version": faiss.__version__,
        }
        _atomic_write(Path(path), header, self._write_payload)

    @classmethod
    def _from_faiss(cls, index: faiss.Index, params: dict[str, Any]) -> _FaissIndex:
        raise NotImplementedError  # pragma: no cover


# --------------------------------------------------------------------------- exact

class FlatIndex(_FaissIndex):
    """Exact inner-product search (``IndexIDMap2`` over ``IndexFlatIP``)."""

    _type = "flat"

    def __init__(self, d: int, *, _index: faiss.Index | None = None) -> None:
        if _index is None:
            if int(d) < 1:
                raise IndexError_(f"dimension must be >= 1, got {d}")
            _index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(d)))
        super().__init__(_index)

    @property
    def kind(self) -> str:
        return "flat"

    @classmethod
    def _from_faiss(cls, index: faiss.Index, params: dict[str, Any]) -> FlatIndex:
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"expected IndexIDMap2, found {type(index).__name__}")
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlatIP):
            raise ValueError(f"expected IndexFlatIP inside the id map, found {type(inner).__name__}")
        return cls(index.d, _index=index)


# --------------------------------------------------------------------------- ANN

def ivf_nlist(n: int) -> int:
    """Number of inverted lists for ``n`` vectors: ~2*sqrt(n), and at least 39 training
    points per list (faiss k-means' own minimum). At 1M, 2*sqrt(n)=2000 measured faster to
    build than 4*sqrt(n) (20 s vs 33 s) with lower p50 at recall@1 >= 0.99."""
    if n < 1:
        return 1
    return int(max(1, min(round(2.0 * math.sqrt(n)), n // 39)))


class IVFIndex(_FaissIndex):
    """Compressed approximate search: IVF with a flat coarse quantizer and SQ codes."""

    _type = "ivf"

    def __init__(self, index: faiss.IndexIVF, params: dict[str, Any]) -> None:
        super().__init__(index)
        self._ivf: faiss.IndexIVF = index
        self._codec: str = str(params.get("codec", "fp16"))
        self._trained_n: int = int(params.get("trained_n", index.ntotal))
        self._target_recall: float | None = params.get("target_recall")
        self._tuned_recall: float | None = params.get("tuned_recall_at_1")
        self.nprobe = int(params.get("nprobe", index.nprobe))

    @property
    def nlist(self) -> int:
        return int(self._ivf.nlist)

    @property
    def nprobe(self) -> int:
        return int(self._ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if not 1 <= int(value) <= self.nlist:
            raise IndexError_(f"nprobe must be in 1..{self.nlist}, got {value}")
        self._ivf.nprobe = int(value)

    @property
    def codec(self) -> str:
        return self._codec

    @property
    def trained_n(self) -> int:
        """Number of vectors the index was built (and nlist/nprobe chosen) for."""
        return self._trained_n

    @property
    def tuned_recall(self) -> float | None:
        """recall@1 measured at build time with the saved nprobe."""
        return self._tuned_recall

    @property
    def kind(self) -> str:
        return f"ivf{self.nlist},{self._codec},nprobe={self.nprobe}"

    def _params(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "codec": self._codec,
            "trained_n": self._trained_n,
            "target_recall": self._target_recall,
            "tuned_recall_at_1": self._tuned_recall,
        }

    @classmethod
    def _from_faiss(cls, index: faiss.Index, params: dict[str, Any]) -> IVFIndex:
        if not isinstance(index, faiss.IndexIVFScalarQuantizer):
            raise ValueError(f"expected IndexIVFScalarQuantizer, found {type(index).__name__}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("index metric is not inner product")
        if int(params.get("nlist", index.nlist)) != index.nlist:
            raise ValueError("nlist in header does not match the index")
        return cls(index, params)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        target_recall: float = 0.99,
        codec: str = "fp16",
        nlist: int | None = None,
        train_per_list: int = 64,
        tune_queries: int = 1000,
        seed: int = 0,
    ) -> IVFIndex:
        """Train, fill and tune an IVF index over ``vectors`` (n, d) with ``ids``.

        - ``nlist`` defaults to ``ivf_nlist(n)``;
        - the quantizer is trained on ``min(n, train_per_list * nlist)`` random vectors
          (``train_per_list`` <= 256, faiss' own cap per centroid);
        - ``nprobe`` is the smallest step with recall@1 >= ``target_recall`` on up to
          ``tune_queries`` vectors held out of training, each searched for its nearest
          *other* vector, ANN vs exact (ties in exact score count as hits).
        """
        if codec not in _CODECS:
            raise IndexError_(f"unknown codec {codec!r}; expected one of {sorted(_CODECS)}")
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] < 1:
            raise IndexError_(f"vectors must be a 2-D array (n, d), got shape {x.shape}")
        d = int(x.shape[1])
        x = _as_vectors(x, d)
        iv = _as_ids(ids, len(x))
        _check_unique(iv)
        n = len(x)
        if n == 0:
            raise IndexError_("cannot build an IVF index from zero vectors")
        nl = ivf_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nl <= n:
            raise IndexError_(f"nlist must be in 1..{n}, got {nl}")
        rng = np.random.default_rng(seed)

        # index_factory returns the (owning) IndexIVFScalarQuantizer itself; keep that object
        # (a downcast proxy would not own the C++ index)
        ivf = faiss.index_factory(d, f"IVF{nl},{_CODECS[codec]}", faiss.METRIC_INNER_PRODUCT)
        assert isinstance(ivf, faiss.IndexIVFScalarQuantizer)  # nosec B101 - narrows the type, not a security check
        ivf.cp.seed = int(seed)
        ntrain = min(n, max(1, min(256, int(train_per_list))) * nl)
        perm = rng.permutation(n)
        train_rows = np.sort(perm[:ntrain])
        t0 = time.perf_counter()
        ivf.train(x[train_rows])
        t1 = time.perf_counter()
        ivf.add_with_ids(x, iv)
        t2 = time.perf_counter()

        # tuning queries: held out of the training sample when there are enough vectors
        nq = min(int(tune_queries), n)
        held = perm[ntrain:ntrain + nq] if n - ntrain >= nq else perm[n - nq:]
        nprobe, recall = _tune_nprobe(ivf, x, iv, held, float(target_recall))
        params = {
            "codec": codec,
            "nprobe": nprobe,
            "trained_n": n,
            "target_recall": float(target_recall),
            "tuned_recall_at_1": recall,
        }
        out = cls(ivf, params)
        log.info("built %s over %d vectors: train %.1fs (%d vectors), add %.1fs, tune %.1fs "
                 "(recall@1 %.4f on %d queries)", out.kind, n, t1 - t0, ntrain, t2 - t1,
                 time.perf_counter() - t2, recall, len(held))
        return out


def _tune_nprobe(
    ivf: faiss.IndexIVF,
    x: np.ndarray,
    ids: np.ndarray,
    query_rows: np.ndarray,
    target: float,
) -> tuple[int, float]:
    """Smallest nprobe step whose leave-one-out recall@1 reaches ``target``."""
    nlist = int(ivf.nlist)
    if len(x) < 2 or len(query_rows) == 0:
        return nlist, 1.0
    q = np.ascontiguousarray(x[query_rows])
    self_ids = ids[query_rows]

    # exact nearest other vector (row index and score)
    Dg, Ig = faiss.knn(q, x, 2, faiss.METRIC_INNER_PRODUCT)
    first_is_self = Ig[:, 0] == query_rows
    gt_score = np.where(first_is_self, Dg[:, 1], Dg[:, 0])
    gt_row = np.where(first_is_self, Ig[:, 1], Ig[:, 0])
    gt_id = ids[gt_row]

    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    steps = [s for s in _NPROBE_STEPS if s < nlist] + [nlist]
    best = (nlist, 0.0)
    saved = int(ivf.nprobe)
    try:
        for s in steps:
            ivf.nprobe = s
            _, I = ivf.search(q, 3)
            I = np.where(I == self_ids[:, None], -1, I)
            has = I >= 0
            col = np.argmax(has, axis=1)
            cand = I[np.arange(len(I)), col]
            found = has.any(axis=1)
            cand_rows = order[np.clip(np.searchsorted(sorted_ids, cand), 0, len(ids) - 1)]
            cand_score = np.einsum("ij,ij->i", q, x[cand_rows])
            hit = found & ((cand == gt_id) | (cand_score >= gt_score - 1e-6))
            recall = float(hit.mean())
            best = (s, recall)
            if recall >= target:
                return s, recall
    finally:
        ivf.nprobe = saved
    log.warning("IVF tuning: recall@1 %.4f < target %.4f even at nprobe=nlist=%d",
                best[1], target, nlist)
    return best


# --------------------------------------------------------------------------- files

def _types() -> dict[str, type[_FaissIndex]]:
    from facesearch.index.compressed import PQIndex  # imports this module

    return {"flat": FlatIndex, "ivf": IVFIndex, "ivfpq": PQIndex}


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _PayloadSink:
    """Writes the payload to the file while counting its bytes and checksumming them."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.nbytes = 0
        self.crc = 0

    def write(self, b: bytes) -> None:
        self._f.write(b)
        self.nbytes += len(b)
        self.crc = zlib.crc32(b, self.crc)


def _atomic_write(path: Path, header: dict[str, Any],
                  write_payload: Callable[[Callable[[bytes], None]], None]) -> None:
    """Header, then the payload streamed by ``write_payload``, into a temporary file renamed
    over ``path``. The payload's length and CRC-32 are known only once it is written, so room
    for the header is kept first and the header written into it afterwards, padded with
    spaces (JSON whitespace) to the length reserved for the largest values."""
    widest = {**header, "payload_bytes": 2**63 - 1, "payload_crc32": 2**32 - 1}
    room = len(json.dumps(widest, sort_keys=True).encode("utf-8"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(bytes(_PREFIX.size + room))
            sink = _PayloadSink(f)
            write_payload(sink.write)
            full = {**header, "payload_bytes": sink.nbytes, "payload_crc32": sink.crc}
            hb = json.dumps(full, sort_keys=True).encode("utf-8").ljust(room, b" ")
            f.seek(len(_MAGIC))
            f.write(_PREFIX.pack(len(hb), zlib.crc32(hb)))
            f.write(hb)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise IndexError_(f"could not write index file {path}: {e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _Corrupt(f"truncated: expected {n} more bytes, found {len(b)}")
    return b


class _Corrupt(Exception):
    pass


def load_index(path: Path) -> VectorIndex:
    """Load an index written by ``save``.

    Raises ``IndexError_`` if the file is missing, is not an index file, is truncated or
    corrupted (checksum mismatch), or was written by an incompatible version; the caller
    should then rebuild the index from the database.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise IndexError_(f"index file {path} does not exist") from None
    except OSError as e:
        raise IndexError_(f"cannot open index file {path}: {e}") from e
    try:
        with f:
            return _load(f)
    except _Corrupt as e:
        raise IndexError_(f"index file {path} is unusable: {e}; rebuild it from the database") from None
    except OSError as e:
        raise IndexError_(f"cannot read index file {path}: {e}") from e


def _load(f: BinaryIO) -> VectorIndex:
    magic = f.read(len(_MAGIC))
    if magic != _MAGIC:
        if len(magic) < len(_MAGIC) and _MAGIC.startswith(magic):
            raise _Corrupt("truncated header")
        raise _Corrupt("not a facesearch index file (bad magic)")
    hlen, hcrc = _PREFIX.unpack(_read_exact(f, _PREFIX.size))
    if hlen > 1 << 20:
        raise _Corrupt("implausible header length")
    hb = _read_exact(f, hlen)
    if zlib.crc32(hb) != hcrc:
        raise _Corrupt("header checksum mismatch")
    try:
        header = json.loads(hb)
        fmt = header["format"]
        typ = header["type"]
        d = int(header["d"])
        ntotal = int(header["ntotal"])
        params = dict(header.get("params") or {})
        nbytes = int(header["payload_bytes"])
        pcrc = int(header["payload_crc32"])
    except (ValueError, KeyError, TypeError) as e:
        raise _Corrupt(f"bad header ({e})") from None
    if fmt != _FORMAT:
        raise _Corrupt(f"unsupported format version {fmt} (this build reads {_FORMAT})")
    cls = _types().get(typ)
    if cls is None:
        raise _Corrupt(f"unknown index type {typ!r}")

    # pass 1: checksum the payload in chunks (no full copy in memory)
    start = f.tell()
    crc, left = 0, nbytes
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise _Corrupt(f"truncated payload: expected {nbytes} bytes, found {nbytes - left}")
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    if f.read(1):
        raise _Corrupt("trailing bytes after payload")
    if crc != pcrc:
        raise _Corrupt("payload checksum mismatch")

    # pass 2: stream into faiss
    f.seek(start)
    try:
        obj = cls._read_payload(f, nbytes, params)
    except (ValueError, IndexError_) as e:
        raise _Corrupt(str(e)) from None
    except Exception as e:  # faiss raises RuntimeError on malformed data
        raise _Corrupt(f"faiss could not read it ({e})") from None
    if obj.d != d or obj.ntotal != ntotal:
        raise _Corrupt(
            f"contents (d={obj.d}, ntotal={obj.ntotal}) do not match header (d={d}, ntotal={ntotal})"
        )
    return obj
