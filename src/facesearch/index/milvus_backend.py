"""Milvus backend for the ``VectorIndex`` protocol: when one machine is not enough.

Layout
    One collection per embedding model and dimension (``<prefix>_<model>_<d>``), shared by all
    galleries embedded by that model. Each row is one face::

        id       INT64  primary key (the database face id)
        gallery  INT64  partition key
        agency   INT64  the owning agency (0: none)
        vector   FLOAT_VECTOR(d), inner product on L2-normalised rows

    Milvus allows one partition-key field per collection. The gallery is that key: Milvus hashes
    it onto ``num_partitions`` physical partitions, so a search filtered on ``gallery == G``
    only reads G's partition, and the collection needs no per-gallery DDL (a new gallery is a new
    key value, not a new partition or collection). A gallery belongs to exactly one agency, so
    the agency adds no partitioning of its own; it is stored on every row and also required in
    every filter (``gallery == G and agency == A``). A ``MilvusIndex`` is a view bound to one
    (gallery, agency) pair: its searches, counts and deletes carry that filter, so tenant scoping
    happens inside the engine as well as in our store (a store bug that named the wrong agency
    returns nothing rather than another agency's faces).

Consistency
    Every search and count runs at ``Strong`` consistency: Milvus waits until the query node has
    applied every write whose timestamp precedes the request, so a face deleted by a call that
    has returned is never returned by a later search, from any process. (``Bounded`` would let a
    search from another process see a state up to a few seconds old; ``Session`` guarantees
    read-your-writes only inside one client.) Strong costs a wait of about two proxy time ticks
    on each request: ~400 ms at Milvus' default ``proxy.timeTickInterval`` of 200 ms, ~40 ms at
    20 ms (``bench/results/index-milvus.md``; Bounded reads take 6-11 ms), so an installation
    that searches interactively sets ``proxy.timeTickInterval: 20`` on its Milvus server, as the
    tests and the benchmark do. Writes are durable when the call returns (Milvus' write-ahead
    log), so ``save`` has nothing to do.

Writes
    ``add_with_ids`` replaces rows keyed by face id (delete present ids, then insert; Milvus'
    ``upsert`` is not used because it drops rows on partition-key collections in 2.3): re-adding a
    face (a resumed migration, a reconciliation from the database) never duplicates it.

Index type
    Milvus indexes each sealed segment (growing segments are searched exhaustively), so the
    index type is a collection setting rather than a per-gallery choice. The default is HNSW: the
    faiss side measured that SQ8 plateaus near recall@1 0.98 and PQ near 0.5-0.8 on face
    embeddings, and faiss avoids HNSW only because faiss' HNSW cannot delete; Milvus deletes by
    bitset on any index type, so HNSW keeps full-precision recall with deletes. ``IVF_FLAT``,
    ``IVF_SQ8``, ``IVF_PQ`` and ``FLAT`` can be chosen with ``FACESEARCH_MILVUS_INDEX_TYPE``.

Milvus Lite (``milvus-lite``, a local file path as the URI) is refused with a clear error, for
two reasons found with milvus-lite 2.4.12 (the version the pymilvus 2.4 client installs): it
builds only FLAT and IVF_FLAT indexes ("local mode only support FLAT IVF_FLAT AUTOINDEX"), so
none of the index types chosen here for scale, and on a partition-key collection it rejects
primary-key expressions (``id in [...] and gallery == G`` fails with "Invalid expr", the
schema helper finding no primary key), which deletes and re-adds rely on. The embedded faiss
index already covers the one-machine case.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import IndexError_

log = logging.getLogger(__name__)

__all__ = ["MilvusConfig", "MilvusIndex", "MilvusIndexes", "milvus_available", "INDEX_TYPES"]

INDEX_TYPES = ("HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT")
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
_BATCH = 5_000  # rows per insert request (well under Milvus' 64 MiB gRPC message limit at d=512)
_IN_BATCH = 10_000  # ids per "id in [...]" expression


def milvus_available() -> str | None:
    """None when the Milvus client is installed, else the reason (for skips and errors)."""
    try:
        import pymilvus  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        return f"the Milvus client is not installed (pip install 'facesearch[milvus]'): {e}"
    return None


@dataclass(frozen=True)
class MilvusConfig:
    """Connection and index settings (from ``Settings``; the token is never logged)."""

    uri: str
    token: str | None = None
    prefix: str = "facesearch"
    index_type: str = "HNSW"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    search_ef: int = 64
    nlist: int = 1024
    nprobe: int = 32
    num_partitions: int = 64
    # Read consistency of searches, counts and id queries. Strong is what erasure needs (a face
    # erased is never returned once the erase call returns); ``milvus_from_settings`` never sets
    # anything else. The benchmark builds configs with other levels to compare their latency.
    consistency: str = "Strong"

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise IndexError_(f"unknown Milvus index type {self.index_type!r}; expected one of {INDEX_TYPES}")
        if self.consistency not in CONSISTENCY_LEVELS:
            raise IndexError_(f"unknown Milvus consistency level {self.consistency!r}; "
                              f"expected one of {CONSISTENCY_LEVELS}")

    @property
    def is_lite(self) -> bool:
        """A local file URI: Milvus Lite (embedded), not a server."""
        return not self.uri.startswith(("http://", "https://", "tcp://", "unix:"))

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return (f"MilvusConfig(uri={self.uri!r}, prefix={self.prefix!r}, index_type={self.index_type!r}, "
                f"consistency={self.consistency!r})")


def _vectors(x: Any, d: int, what: str = "vectors") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != d:
        raise IndexError_(f"{what} must have shape (n, {d}), got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        raise IndexError_(f"{what} contain NaN or infinite values")
    return a


def _ids(ids: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise IndexError_(f"ids must be a 1-D integer array, got {a.dtype} {a.shape}")
    a = a.astype(np.int64, copy=False)
    if n is not None and len(a) != n:
        raise IndexError_(f"got {n} vectors but {len(a)} ids")
    if a.size and int(a.min()) < 0:
        raise IndexError_("ids must be >= 0 (-1 marks an empty result slot)")
    return a


def _chunks(a: np.ndarray, n: int) -> Iterator[np.ndarray]:
    for i in range(0, len(a), n):
        yield a[i:i + n]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class MilvusIndexes:
    """One Milvus connection for an installation; hands out per-gallery ``MilvusIndex`` views.

    Collections are created on first use (schema, index, load) and cached by name.
    """

    def __init__(self, config: MilvusConfig) -> None:
        reason = milvus_available()
        if reason:
            raise IndexError_(reason)
        from pymilvus import MilvusClient

        if config.is_lite:
            raise IndexError_(
                f"FACESEARCH_MILVUS_URI={config.uri!r} is a local file (Milvus Lite), which is not "
                "supported: it has no HNSW/IVF_SQ8/IVF_PQ indexes and rejects the primary-key "
                "expressions deletes use; give a Milvus server URI (http://host:19530) or use the "
                "embedded faiss index (FACESEARCH_INDEX=faiss)")
        self.config = config
        try:
            self._client = MilvusClient(uri=config.uri, token=config.token or "")
        except Exception as e:  # noqa: BLE001 - pymilvus raises several types for "cannot connect"
            raise IndexError_(f"cannot connect to Milvus at {config.uri}: {type(e).__name__}: {e}") from None
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        return self._client

    def collection_name(self, model_id: str, d: int) -> str:
        return f"{_safe(self.config.prefix)}_{_safe(model_id)}_{int(d)}"

    @property
    def index_type(self) -> str:
        return self.config.index_type

    def _index_params(self) -> tuple[str, dict[str, Any]]:
        c = self.config
        itype = self.index_type
        if itype == "HNSW":
            return "HNSW", {"M": c.hnsw_m, "efConstruction": c.hnsw_ef_construction}
        if itype == "IVF_PQ":
            return "IVF_PQ", {"nlist": c.nlist, "m": 16, "nbits": 8}
        if itype in ("IVF_FLAT", "IVF_SQ8"):
            return itype, {"nlist": c.nlist}
        return "FLAT", {}

    def search_params(self, k: int) -> dict[str, Any]:
        c = self.config
        itype = self.index_type
        if itype == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(int(k), c.search_ef)}}
        if itype.startswith("IVF"):
            return {"metric_type": "IP", "params": {"nprobe": min(c.nprobe, c.nlist)}}
        return {"metric_type": "IP", "params": {}}

    def ensure_collection(self, model_id: str, d: int) -> str:
        """Create (if missing) and load the model's collection; returns its name."""
        name = self.collection_name(model_id, d)
        with self._lock:
            if name in self._ready:
                return name
            from pymilvus import DataType

            cl = self._client
            try:
                if not cl.has_collection(name):
                    schema = cl.create_schema(auto_id=False, enable_dynamic_field=False,
                                              partition_key_field="gallery",
                                              num_partitions=self.config.num_partitions)
                    schema.add_field("id", DataType.INT64, is_primary=True)
                    schema.add_field("gallery", DataType.INT64)
                    schema.add_field("agency", DataType.INT64)
                    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(d))
                    itype, iparams = self._index_params()
                    ip = cl.prepare_index_params()
                    ip.add_index(field_name="vector", index_type=itype, metric_type="IP", params=iparams)
                    cl.create_collection(name, schema=schema, index_params=ip,
                                         consistency_level=self.config.consistency)
                    log.info("created Milvus collection %s (d=%d, %s %s, partition key gallery)",
                             name, d, itype, iparams)
                else:
                    dim = self._collection_dim(name)
                    if dim != int(d):
                        raise IndexError_(f"Milvus collection {name} has dimension {dim}, expected {d}")
                cl.load_collection(name)
            except IndexError_:
                raise
            except Exception as e:  # noqa: BLE001
                raise IndexError_(f"Milvus collection {name}: {type(e).__name__}: {e}") from None
            self._ready.add(name)
            return name

    def _collection_dim(self, name: str) -> int:
        desc = self._client.describe_collection(name)
        for f in desc.get("fields", []):
            if f.get("name") == "vector":
                return int(f.get("params", {}).get("dim", 0))
        return 0

    def index(self, model_id: str, d: int, gallery_id: int, agency_id: int | None) -> MilvusIndex:
        """The view of one gallery (owned by ``agency_id``) in the model's collection."""
        name = self.ensure_collection(model_id, d)
        return MilvusIndex(self, name, int(d), int(gallery_id), int(agency_id or 0))

    def drop_gallery(self, model_id: str, gallery_id: int) -> None:
        """Delete a gallery's rows from the model's collections (any dimension)."""
        stem = f"{_safe(self.config.prefix)}_{_safe(model_id)}_"
        for name in self._client.list_collections():
            if name.startswith(stem) and name[len(stem):].isdigit():
                self._client.delete(name, filter=f"gallery == {int(gallery_id)}")

    def drop_collection(self, model_id: str, d: int) -> None:
        name = self.collection_name(model_id, d)
        with self._lock:
            self._ready.discard(name)
            if self._client.has_collection(name):
                self._client.drop_collection(name)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001  # nosec B110 - closing a dead connection: nothing to do
            pass


class MilvusIndex:
    """``VectorIndex`` over one gallery's rows of a model's collection (see module docstring)."""

    def __init__(self, owner: MilvusIndexes, collection: str, d: int, gallery_id: int, agency_id: int) -> None:
        self._owner = owner
        self.collection = collection
        self._d = d
        self.gallery_id = gallery_id
        self.agency_id = agency_id
        self._filter = f"gallery == {gallery_id} and agency == {agency_id}"

    def __repr__(self) -> str:
        return f"<MilvusIndex {self.collection} gallery={self.gallery_id} agency={self.agency_id}>"

    @property
    def _client(self) -> Any:
        return self._owner.client

    @property
    def _consistency(self) -> str:
        return self._owner.config.consistency

    @property
    def d(self) -> int:
        return self._d

    @property
    def kind(self) -> str:
        return f"milvus:{self._owner.index_type},{self._consistency.lower()}"

    @property
    def ntotal(self) -> int:
        try:
            res = self._client.query(self.collection, filter=self._filter, output_fields=["count(*)"],
                                     consistency_level=self._consistency)
        except Exception as e:  # noqa: BLE001
            raise IndexError_(f"Milvus count on {self.collection}: {type(e).__name__}: {e}") from None
        return int(res[0]["count(*)"]) if res else 0

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add rows keyed by face id; re-adding an id replaces its row, never duplicates it.

        Milvus' own ``upsert`` loses rows on a collection with a partition key (2.3.5: 50
        upserted, 2 kept), so this is "delete the ids already present, then insert"; the
        delete's timestamp precedes the insert's, so the new row is the one that stays.
        """
        xv = _vectors(x, self._d)
        iv = _ids(ids, len(xv))
        if len(iv) > 1 and len(np.unique(iv)) != len(iv):
            raise IndexError_("duplicate ids in one batch")
        if len(iv) == 0:
            return
        g, a = self.gallery_id, self.agency_id
        try:
            present = self.existing(iv)
            for part in _chunks(present, _IN_BATCH):
                self._client.delete(self.collection,
                                    filter=f"id in [{','.join(map(str, part.tolist()))}] and {self._filter}")
            for start in range(0, len(iv), _BATCH):
                rows = [{"id": i, "gallery": g, "agency": a, "vector": v}
                        for i, v in zip(iv[start:start + _BATCH].tolist(), xv[start:start + _BATCH])]
                self._client.insert(self.collection, rows)
        except IndexError_:
            raise
        except Exception as e:  # noqa: BLE001
            raise IndexError_(f"Milvus insert into {self.collection}: {type(e).__name__}: {e}") from None

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _vectors(x, self._d, "queries")
        if int(k) < 1:
            raise IndexError_(f"k must be >= 1, got {k}")
        k = int(k)
        D = np.full((len(q), k), -np.inf, dtype=np.float32)
        I = np.full((len(q), k), -1, dtype=np.int64)
        if len(q) == 0:
            return D, I
        try:
            res = self._client.search(self.collection, data=[r for r in q], limit=min(k, 16384),
                                      filter=self._filter, output_fields=[],
                                      search_params=self._owner.search_params(k),
                                      consistency_level=self._consistency)
        except Exception as e:  # noqa: BLE001
            raise IndexError_(f"Milvus search in {self.collection}: {type(e).__name__}: {e}") from None
        for row, hits in enumerate(res):
            for col, h in enumerate(hits[:k]):
                I[row, col] = int(h["id"])
                D[row, col] = float(h["distance"])
        return D, I

    def existing(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` this gallery holds (strongly consistent)."""
        iv = np.unique(_ids(ids))
        found: list[int] = []
        for part in _chunks(iv, _IN_BATCH):
            expr = f"id in [{','.join(map(str, part.tolist()))}] and {self._filter}"
            rows = self._client.query(self.collection, filter=expr, output_fields=["id"],
                                      consistency_level=self._consistency)
            found += [int(r["id"]) for r in rows]
        return np.asarray(sorted(found), dtype=np.int64)

    def all_ids(self, batch: int = 16_384) -> np.ndarray:
        """Every face id of this gallery, in id order (paged by id, strongly consistent)."""
        out: list[np.ndarray] = []
        last = -1
        while True:
            rows = self._client.query(self.collection, filter=f"{self._filter} and id > {last}",
                                      output_fields=["id"], limit=batch, consistency_level=self._consistency)
            if not rows:
                break
            part = np.sort(np.fromiter((int(r["id"]) for r in rows), dtype=np.int64, count=len(rows)))
            out.append(part)
            last = int(part[-1])
            if len(rows) < batch:
                break
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def remove_ids(self, ids: np.ndarray) -> int:
        """Delete this gallery's rows with these ids; a later search (any process) never sees them."""
        iv = np.unique(_ids(ids))
        if len(iv) == 0:
            return 0
        try:
            present = self.existing(iv)
            for part in _chunks(iv, _IN_BATCH):
                expr = f"id in [{','.join(map(str, part.tolist()))}] and {self._filter}"
                self._client.delete(self.collection, filter=expr)
        except IndexError_:
            raise
        except Exception as e:  # noqa: BLE001
            raise IndexError_(f"Milvus delete from {self.collection}: {type(e).__name__}: {e}") from None  # nosec B608 - a message, not SQL
        return int(len(present))

    def clear(self) -> int:
        """Delete every row of this gallery (a gallery moved back, or dropped)."""
        return self.remove_ids(self.all_ids())

    def save(self, path: Path) -> None:
        """Nothing to write: Milvus has persisted every write when the call returned."""
        return None
