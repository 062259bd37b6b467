"""The ``VectorIndex`` contract, run against every backend.

faiss exact (``FlatIndex``), faiss compressed (``IVFIndex``, and ``PQIndex`` from
``index/compressed.py`` where present: fast-scan lists in memory, 8-bit lists on disk, and the int8 re-ranking store) and Milvus (a real standalone server, one per session)
must behave the same: add, search, delete (a deleted face is never returned afterwards),
persistence (save and reopen), tenant scoping (a query scoped to one gallery/agency never
sees another's faces) and recall against exact search on seeded identity clusters.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from facesearch.index.base import VectorIndex
from facesearch.index.faiss_backend import FlatIndex, IVFIndex, load_index

D = 128
IDENTITIES = 300
SAMPLES = 5  # faces per identity: N = 1,500 per tenant
QUERIES = 200


@dataclass(frozen=True)
class Tenant:
    gallery_id: int
    agency_id: int


@dataclass(frozen=True)
class Data:
    x: np.ndarray  # (N, D) unit rows, SAMPLES consecutive rows per identity
    ids: np.ndarray
    q: np.ndarray  # fresh samples of the first QUERIES identities
    q_identity: np.ndarray


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clusters(seed: int, id_base: int) -> Data:
    """Identity clusters shaped like face embeddings: same-identity cosine ~0.7-0.8, others ~0."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((IDENTITIES, D)))
    noise = 0.09
    x = _unit(np.repeat(centres, SAMPLES, axis=0) + noise * rng.standard_normal((IDENTITIES * SAMPLES, D)))
    qi = rng.choice(IDENTITIES, QUERIES, replace=False)
    q = _unit(centres[qi] + noise * rng.standard_normal((QUERIES, D)))
    ids = np.arange(id_base, id_base + len(x), dtype=np.int64)
    return Data(x, ids, q, qi)


def exact_topk(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    return ids[np.argsort(-s, axis=1, kind="stable")[:, :k]]


# ------------------------------------------------------------------------------ backends

@dataclass
class Backend:
    name: str
    make: Callable[[Tenant, np.ndarray, np.ndarray, Path], VectorIndex]
    reopen: Callable[[VectorIndex, Tenant, Path], VectorIndex]
    exact: bool
    min_recall1: float
    min_recall10: float


def _faiss_reopen(index: VectorIndex, tenant: Tenant, tmp: Path) -> VectorIndex:
    path = tmp / f"g{tenant.gallery_id}.faiss"
    index.save(path)
    return load_index(path)


def _flat(tenant: Tenant, x: np.ndarray, ids: np.ndarray, tmp: Path) -> VectorIndex:
    idx = FlatIndex(D)
    idx.add_with_ids(x, ids)
    return idx


def _ivf(tenant: Tenant, x: np.ndarray, ids: np.ndarray, tmp: Path) -> VectorIndex:
    return IVFIndex.build(x, ids, target_recall=0.99)


def _pq_backend(on_disk: bool = False, store: str = "float16") -> Backend | None:
    """IVF-PQ as ``choose_kind`` builds it: 4-bit fast-scan lists in memory, or (``on_disk``)
    8-bit lists memory-mapped from disk; re-ranked from a float16 or (``store``) int8 store."""
    try:
        from facesearch.index.compressed import PQIndex
    except ImportError:
        return None

    def make(tenant: Tenant, x: np.ndarray, ids: np.ndarray, tmp: Path) -> VectorIndex:
        return PQIndex.build(x, ids, storage=tmp / f"pq-g{tenant.gallery_id}", target_recall=0.99,
                             on_disk=on_disk, store_dtype=store)

    # its tuning targets recall@1 and may pick a re-rank depth of 16 (recall@10 ~0.87 here)
    name = "faiss-pq-ondisk" if on_disk else "faiss-pq"
    return Backend(name if store == "float16" else f"{name}-{store}", make, _faiss_reopen,
                   exact=False, min_recall1=0.95, min_recall10=0.8)


_gallery_ids = itertools.count(1000)


def _milvus_backend(uri: str, model: str, index_type: str = "HNSW") -> Backend:
    from facesearch.index.milvus_backend import MilvusConfig, MilvusIndexes

    owner = MilvusIndexes(MilvusConfig(uri=uri, index_type=index_type))

    def make(tenant: Tenant, x: np.ndarray, ids: np.ndarray, tmp: Path) -> VectorIndex:
        idx = owner.index(model, D, tenant.gallery_id, tenant.agency_id)
        idx.add_with_ids(x, ids)
        return idx

    def reopen(index: VectorIndex, tenant: Tenant, tmp: Path) -> VectorIndex:
        index.save(tmp / "unused")
        # a new connection, as another process would
        fresh = MilvusIndexes(MilvusConfig(uri=uri, index_type=index_type))
        return fresh.index(model, D, tenant.gallery_id, tenant.agency_id)

    name = "milvus" if index_type == "HNSW" else f"milvus-{index_type.lower().replace('_', '-')}"
    return Backend(name, make, reopen, exact=False, min_recall1=0.95, min_recall10=0.9)


# milvus: the default HNSW; milvus-ivf-flat: the index type the README recommends at 10M and beyond
BACKENDS = ["faiss-flat", "faiss-ivf", "faiss-pq", "faiss-pq-ondisk", "faiss-pq-int8", "milvus",
            "milvus-ivf-flat"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name == "faiss-flat":
        return Backend(name, _flat, _faiss_reopen, exact=True, min_recall1=1.0, min_recall10=1.0)
    if name == "faiss-ivf":
        return Backend(name, _ivf, _faiss_reopen, exact=False, min_recall1=0.95, min_recall10=0.9)
    if name in ("faiss-pq", "faiss-pq-ondisk", "faiss-pq-int8"):
        b = _pq_backend(on_disk=name == "faiss-pq-ondisk", store="int8" if name.endswith("int8") else "float16")
        if b is None:
            pytest.skip("index/compressed.py (PQIndex) is not in this tree")
        return b
    uri = request.getfixturevalue("milvus_uri")
    if name == "milvus-ivf-flat":  # its own collection: the index type is fixed when one is created
        return _milvus_backend(uri, "contract-model-ivf", index_type="IVF_FLAT")
    return _milvus_backend(uri, "contract-model")


def tenants() -> tuple[Tenant, Tenant]:
    g = next(_gallery_ids)
    next(_gallery_ids)
    return Tenant(g, 1), Tenant(g + 1, 2)


@pytest.fixture
def loaded(backend: Backend, tmp_path: Path) -> tuple[Backend, Tenant, Data, VectorIndex]:
    t, _ = tenants()
    data = clusters(seed=t.gallery_id, id_base=t.gallery_id * 10_000)
    return backend, t, data, backend.make(t, data.x, data.ids, tmp_path)


# ------------------------------------------------------------------------------ the contract

def test_add_and_search(loaded) -> None:  # noqa: ANN001
    backend, _, data, idx = loaded
    assert idx.d == D
    assert idx.ntotal == len(data.ids)
    assert isinstance(idx.kind, str) and idx.kind
    rows = np.arange(0, len(data.ids), 37)
    dist, ids = idx.search(data.x[rows], 5)
    assert dist.shape == ids.shape == (len(rows), 5)
    assert ids.dtype == np.int64 and dist.dtype == np.float32
    assert (ids[:, 0] == data.ids[rows]).mean() >= (1.0 if backend.exact else 0.97)
    assert np.allclose(dist[ids[:, 0] == data.ids[rows], 0], 1.0, atol=1e-2)
    assert (np.diff(dist, axis=1) <= 1e-5).all(), "scores are best first"


def test_empty_slots_are_minus_one(loaded) -> None:  # noqa: ANN001
    _, _, data, idx = loaded
    k = len(data.ids) + 7
    dist, ids = idx.search(data.x[:2], k)
    for row_d, row_i in zip(dist, ids):
        got = row_i[row_i >= 0]
        assert len(set(got.tolist())) == len(got) and set(got.tolist()) <= set(data.ids.tolist())
        first_empty = len(got)
        assert (row_i[first_empty:] == -1).all() and np.isneginf(row_d[first_empty:]).all()
        assert (row_i[:first_empty] >= 0).all()
    assert (ids[:, -7:] == -1).all()


def test_deleted_faces_are_never_returned(loaded) -> None:  # noqa: ANN001
    _, _, data, idx = loaded
    gone = data.ids[::50]
    assert idx.remove_ids(gone) == len(gone)
    assert idx.ntotal == len(data.ids) - len(gone)
    rows = np.flatnonzero(np.isin(data.ids, gone))
    _, ids = idx.search(data.x[rows], 10)
    assert not np.isin(ids, gone).any()
    assert idx.remove_ids(gone) == 0, "removing again removes nothing"


def test_adds_after_build_are_found(loaded) -> None:  # noqa: ANN001
    backend, _, data, idx = loaded
    rng = np.random.default_rng(7)
    extra = _unit(data.x[:20] + 0.3 * rng.standard_normal((20, D)))
    extra_ids = data.ids.max() + 1 + np.arange(20)
    idx.add_with_ids(extra, extra_ids)
    assert idx.ntotal == len(data.ids) + 20
    _, ids = idx.search(extra, 1)
    assert (ids[:, 0] == extra_ids).mean() >= (1.0 if backend.exact else 0.95)


def test_persists_across_reopen(loaded, tmp_path: Path) -> None:  # noqa: ANN001
    backend, tenant, data, idx = loaded
    idx.remove_ids(data.ids[:3])
    before_d, before_i = idx.search(data.q, 10)
    again = backend.reopen(idx, tenant, tmp_path)
    assert again.ntotal == len(data.ids) - 3
    after_d, after_i = again.search(data.q, 10)
    assert (after_i[:, 0] == before_i[:, 0]).all()
    assert np.allclose(after_d[:, 0], before_d[:, 0], atol=1e-4)
    assert not np.isin(after_i, data.ids[:3]).any()


def test_tenants_never_see_each_other(backend: Backend, tmp_path: Path) -> None:
    a, b = tenants()
    da = clusters(seed=a.gallery_id, id_base=a.gallery_id * 10_000)
    db = clusters(seed=a.gallery_id, id_base=b.gallery_id * 10_000)  # the same faces, other ids
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ia = backend.make(a, da.x, da.ids, tmp_path / "a")
    ib = backend.make(b, db.x, db.ids, tmp_path / "b")
    _, got_b = ib.search(da.q, 20)  # A's probes on B: B's own copies only
    assert np.isin(got_b[got_b >= 0], db.ids).all()
    _, got_a = ia.search(db.q, 20)
    assert np.isin(got_a[got_a >= 0], da.ids).all()
    # deleting in one tenant leaves the other whole
    ia.remove_ids(da.ids[:10])
    assert ib.ntotal == len(db.ids)
    assert ib.remove_ids(da.ids[10:20]) == 0, "a tenant cannot delete another's faces"
    assert ia.ntotal == len(da.ids) - 10


def test_recall_against_exact_search(loaded) -> None:  # noqa: ANN001
    backend, _, data, idx = loaded
    gt = exact_topk(data.x, data.ids, data.q, 10)
    _, got = idx.search(data.q, 10)
    r1 = float((got[:, 0] == gt[:, 0]).mean())
    r10 = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got.tolist(), gt.tolist())]))
    assert r1 >= backend.min_recall1, f"{backend.name} recall@1 {r1:.3f}"
    assert r10 >= backend.min_recall10, f"{backend.name} recall@10 {r10:.3f}"
    # the identity clusters are found: the top candidate is a sample of the probe's identity
    ident = (got[:, 0] - data.ids[0]) // SAMPLES
    assert (ident == data.q_identity).mean() >= 0.95
