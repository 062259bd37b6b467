"""Vector index backends (faiss): correctness against brute force, deletes, padding,
persistence and corruption handling, factory choice."""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from facesearch.errors import IndexError_
from facesearch.index.base import VectorIndex
from facesearch.index.factory import build_index, maybe_upgrade, needs_rebuild, new_index
from facesearch.index.faiss_backend import FlatIndex, IVFIndex, load_index, set_threads, get_threads

D = 64
N = 5000
EXACT_MAX = 2000


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = D, nq: int = 200, seed: int = 0):
    """Face-like data: identities (~5 faces each) around a shared direction; queries are
    fresh samples of enrolled identities."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // 5)
    mu = _unit(rng.standard_normal((1, d)))
    centres = _unit(0.8 * mu + rng.standard_normal((n_ids, d)) / np.sqrt(d))
    ident = rng.integers(0, n_ids, n)
    x = _unit(centres[ident] + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d))
    q = _unit(centres[ident[rng.integers(0, n, nq)]] + 0.5 * rng.standard_normal((nq, d)) / np.sqrt(d))
    ids = rng.permutation(n).astype(np.int64) * 7 + 100  # database ids, not row numbers
    return x, ids, q


def brute_force(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    return ids[np.argsort(-s, axis=1)[:, :k]]


@pytest.fixture(scope="module")
def data():
    return clustered(N)


def _build(kind: str, x: np.ndarray, ids: np.ndarray) -> VectorIndex:
    if kind == "flat":
        idx = FlatIndex(x.shape[1])
        idx.add_with_ids(x, ids)
        return idx
    return IVFIndex.build(x, ids, target_recall=0.99, codec=kind.split("-")[1], seed=1)


BACKENDS = ["flat", "ivf-fp16", "ivf-sq8"]


@pytest.fixture(scope="module", params=BACKENDS)
def built(request, data):
    x, ids, _ = data
    return request.param, _build(request.param, x, ids)


# ----------------------------------------------------------------------------- correctness

def test_recall_against_brute_force(built, data):
    kind, idx = built
    x, ids, q = data
    assert idx.ntotal == N and idx.d == D
    _, I = idx.search(q, 10)
    gt = brute_force(x, ids, q, 10)
    r1 = float(np.mean(I[:, 0] == gt[:, 0]))
    if kind == "flat":
        assert r1 == 1.0
        np.testing.assert_array_equal(I, gt)
    else:
        assert r1 >= 0.95, (kind, r1)
        assert isinstance(idx, IVFIndex) and idx.tuned_recall is not None


def test_scores_are_inner_products(built, data):
    _, idx = built
    x, ids, q = data
    Dd, I = idx.search(q[:20], 5)
    row = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[q[a] @ x[row[int(i)]] for i in I[a]] for a in range(20)])
    np.testing.assert_allclose(Dd, exact, atol=2e-2)
    assert np.all(np.diff(Dd, axis=1) <= 1e-6)  # best first


def test_protocol_and_kind(built):
    kind, idx = built
    assert isinstance(idx, VectorIndex)
    assert idx.kind == "flat" if kind == "flat" else idx.kind.startswith("ivf")
    if kind != "flat":
        assert f"nprobe={idx.nprobe}" in idx.kind and idx.codec in idx.kind


@pytest.mark.parametrize("kind", BACKENDS)
def test_add_search_remove(kind, data):
    x, ids, _ = data
    idx = _build(kind, x, ids)
    gone = ids[:50]
    assert idx.remove_ids(gone) == 50
    assert idx.ntotal == N - 50
    assert idx.remove_ids(gone) == 0  # already gone
    assert idx.remove_ids(np.array([10**12], dtype=np.int64)) == 0  # never existed
    _, I = idx.search(x[:50], 20)  # the removed vectors themselves as queries
    assert not np.isin(I, gone).any()
    # later adds (new ids) are found
    new_ids = np.arange(10**9, 10**9 + 20, dtype=np.int64)
    idx.add_with_ids(x[:20], new_ids)
    _, I = idx.search(x[:20], 1)
    assert np.mean(I[:, 0] == new_ids) >= 0.95
    assert not np.isin(I, gone).any()


@pytest.mark.parametrize("kind", BACKENDS)
def test_padding_when_k_exceeds_ntotal(kind, data):
    x, ids, _ = data
    idx = _build(kind, x, ids)
    idx.remove_ids(ids[3:])  # leave 3 vectors
    assert idx.ntotal == 3
    Dd, I = idx.search(x[:2], 8)
    assert Dd.shape == I.shape == (2, 8)
    assert I.dtype == np.int64 and Dd.dtype == np.float32
    assert np.all(I[:, 3:] == -1) and np.all(np.isneginf(Dd[:, 3:]))
    assert list(I[:, 0]) == list(ids[:2])  # each query's own vector comes first
    if kind == "flat":
        assert set(I[0, :3]) == set(ids[:3].tolist())
    else:  # IVF only sees the probed lists: the rest may be padding too
        assert set(I[0, :3]) <= set(ids[:3].tolist()) | {-1}


def test_empty_index():
    idx = new_index(D)
    assert isinstance(idx, FlatIndex) and idx.ntotal == 0 and idx.d == D
    Dd, I = idx.search(np.ones((2, D), np.float32) / np.sqrt(D), 4)
    assert np.all(I == -1) and np.all(np.isneginf(Dd))
    assert idx.remove_ids(np.array([1, 2])) == 0


# ----------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("kind", BACKENDS)
def test_save_load_round_trip(kind, data, tmp_path: Path):
    x, ids, q = data
    idx = _build(kind, x, ids)
    idx.remove_ids(ids[:10])
    p = tmp_path / "g.idx"
    idx.save(p)
    back = load_index(p)
    assert type(back) is type(idx)
    assert (back.kind, back.d, back.ntotal) == (idx.kind, idx.d, idx.ntotal)
    if isinstance(idx, IVFIndex):
        assert isinstance(back, IVFIndex)
        assert back.nprobe == idx.nprobe and back.trained_n == idx.trained_n
        assert back.tuned_recall == idx.tuned_recall
    D1, I1 = idx.search(q, 10)
    D2, I2 = back.search(q, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    # no temp files left behind; overwriting works
    back.save(p)
    assert [f.name for f in tmp_path.iterdir()] == ["g.idx"]


def test_crash_during_save_keeps_old_file(data, tmp_path: Path, monkeypatch):
    x, ids, _ = data
    p = tmp_path / "g.idx"
    small = FlatIndex(D)
    small.add_with_ids(x[:5], ids[:5])
    small.save(p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    big = FlatIndex(D)
    big.add_with_ids(x, ids)
    with pytest.raises(IndexError_, match="could not write"):
        big.save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["g.idx"]
    assert load_index(p).ntotal == 5


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data) -> bytes:
    x, ids, _ = data
    idx = IVFIndex.build(x[:3000], ids[:3000], target_recall=0.9, seed=2)
    p = tmp_path_factory.mktemp("idx") / "ok.idx"
    idx.save(p)
    return p.read_bytes()


@pytest.mark.parametrize("mangle", [
    "missing", "empty", "garbage", "truncated_header", "truncated_half", "truncated_one",
    "flip_payload", "flip_header", "trailing",
])
def test_bad_files_raise_index_error(mangle, saved: bytes, tmp_path: Path):
    p = tmp_path / "bad.idx"
    b = bytearray(saved)
    if mangle == "empty":
        p.write_bytes(b"")
    elif mangle == "garbage":
        p.write_bytes(os.urandom(4096))
    elif mangle == "truncated_header":
        p.write_bytes(bytes(b[:20]))
    elif mangle == "truncated_half":
        p.write_bytes(bytes(b[: len(b) // 2]))
    elif mangle == "truncated_one":
        p.write_bytes(bytes(b[:-1]))
    elif mangle == "flip_payload":
        b[len(b) - 1000] ^= 0x40
        p.write_bytes(bytes(b))
    elif mangle == "flip_header":
        b[30] ^= 0x01
        p.write_bytes(bytes(b))
    elif mangle == "trailing":
        p.write_bytes(bytes(b) + b"x")
    with pytest.raises(IndexError_) as e:
        load_index(p)
    assert str(p) in str(e.value)
    assert e.value.code == "index_error"


def test_faiss_file_without_our_header_is_rejected(tmp_path: Path):
    p = tmp_path / "raw.idx"
    faiss.write_index(faiss.IndexFlatIP(D), str(p))
    with pytest.raises(IndexError_, match="not a facesearch index"):
        load_index(p)


# ----------------------------------------------------------------------------- factory

def test_factory_picks_exact_below_and_ann_above(data):
    x, ids, _ = data
    small = build_index(x[:EXACT_MAX], ids[:EXACT_MAX], D, EXACT_MAX, 0.99)
    assert isinstance(small, FlatIndex) and small.ntotal == EXACT_MAX
    big = build_index(x, ids, D, EXACT_MAX, 0.99)
    assert isinstance(big, IVFIndex) and big.ntotal == N
    assert big.tuned_recall is not None and big.tuned_recall >= 0.99


def test_maybe_upgrade_lifecycle(data):
    x, ids, _ = data
    calls = []

    def fetch(upto: int):
        def f():
            calls.append(upto)
            return x[:upto], ids[:upto]
        return f

    idx = new_index(D)
    idx.add_with_ids(x[:EXACT_MAX], ids[:EXACT_MAX])
    assert maybe_upgrade(idx, fetch(EXACT_MAX), EXACT_MAX, 0.99) is idx  # at the threshold
    assert calls == []
    idx.add_with_ids(x[EXACT_MAX:2400], ids[EXACT_MAX:2400])
    assert needs_rebuild(idx, EXACT_MAX)
    idx = maybe_upgrade(idx, fetch(2400), EXACT_MAX, 0.99)
    assert isinstance(idx, IVFIndex) and idx.ntotal == 2400 and idx.trained_n == 2400
    # modest growth keeps the ANN index; doubling rebuilds it
    idx.add_with_ids(x[2400:4000], ids[2400:4000])
    assert maybe_upgrade(idx, fetch(4000), EXACT_MAX, 0.99) is idx
    idx.add_with_ids(x[4000:], ids[4000:])
    idx2 = maybe_upgrade(idx, fetch(N), EXACT_MAX, 0.99)
    assert idx2 is not idx and isinstance(idx2, IVFIndex) and idx2.trained_n == N
    # shrinking to half of exact_max goes back to exact
    idx2.remove_ids(ids[EXACT_MAX // 2:])
    idx3 = maybe_upgrade(idx2, fetch(EXACT_MAX // 2), EXACT_MAX, 0.99)
    assert isinstance(idx3, FlatIndex) and idx3.ntotal == EXACT_MAX // 2
    assert calls == [2400, N, EXACT_MAX // 2]


# ----------------------------------------------------------------------------- input errors

@pytest.mark.parametrize("kind", ["flat", "ivf-fp16"])
def test_dimension_mismatch(kind, data):
    x, ids, _ = data
    idx = _build(kind, x[:3000], ids[:3000])
    wrong = np.ones((2, D * 2), np.float32)
    with pytest.raises(IndexError_, match=rf"dimension {2 * D}.*dimension {D}"):
        idx.search(wrong, 3)
    with pytest.raises(IndexError_, match="dimension"):
        idx.add_with_ids(wrong, np.array([1, 2]))
    with pytest.raises(IndexError_, match="2-D"):
        idx.search(np.ones(D, np.float32), 3)


def test_factory_dimension_mismatch(data):
    x, ids, _ = data
    with pytest.raises(IndexError_, match="dimension"):
        build_index(x[:10], ids[:10], D + 1, EXACT_MAX, 0.99)


def test_bad_ids_and_k(data):
    x, ids, _ = data
    idx = FlatIndex(D)
    with pytest.raises(IndexError_, match="ids"):
        idx.add_with_ids(x[:2], np.array([1, 2, 3]))
    with pytest.raises(IndexError_, match=">= 0"):
        idx.add_with_ids(x[:2], np.array([1, -1]))
    with pytest.raises(IndexError_, match="duplicate"):
        idx.add_with_ids(x[:2], np.array([5, 5]))
    with pytest.raises(IndexError_, match="integers"):
        idx.add_with_ids(x[:2], np.array([1.0, 2.0]))
    with pytest.raises(IndexError_, match="NaN"):
        idx.add_with_ids(np.full((1, D), np.nan, np.float32), np.array([1]))
    idx.add_with_ids(x[:2], np.array([1, 2]))
    with pytest.raises(IndexError_, match="k must be"):
        idx.search(x[:1], 0)
    assert idx.ntotal == 2


def test_set_threads():
    before = get_threads()
    try:
        set_threads(1)
        assert get_threads() == 1
        with pytest.raises(ValueError):
            set_threads(0)
    finally:
        set_threads(before)


# ----------------------------------------------------------------------------- compressed (IVF-PQ)

from facesearch.index.compressed import PQIndex, pq_m, pq_nlist, store_bytes_per_face  # noqa: E402
from facesearch.index.factory import choose_kind  # noqa: E402
from facesearch.index.manager import IndexKey, IndexManager  # noqa: E402

PQ_D = 32
PQ_N = 8000


@pytest.fixture(scope="module")
def pq_data():
    return clustered(PQ_N, PQ_D, nq=300, seed=3)


@pytest.fixture(scope="module")
def pq_built(pq_data, tmp_path_factory):
    x, ids, _ = pq_data
    storage = tmp_path_factory.mktemp("pq") / "g"
    return PQIndex.build(x, ids, storage=storage, target_recall=0.97, rerank=True, seed=1)


def _r1(idx: VectorIndex, x, ids, q) -> float:
    _, I = idx.search(q, 10)
    return float(np.mean(I[:, 0] == brute_force(x, ids, q, 1)[:, 0]))


def test_choose_kind_follows_gallery_size():
    d = 128
    assert choose_kind(50_000, d, exact_max=50_000) == "flat"
    assert choose_kind(50_001, d, exact_max=50_000) == "ivf"
    assert choose_kind(2_000_000, d, exact_max=50_000) == "ivf"
    assert choose_kind(2_000_001, d, exact_max=50_000) == "ivfpq"
    # fp16 lists would not fit the budget -> PQ even below sq_max
    assert choose_kind(1_000_000, d, 50_000, ram_budget=200 * 2**20) == "ivfpq"
    # (32 + 16) bytes per face at 128-d: 50M fit the default 4 GiB, 100M do not
    assert pq_m(128) == 32 and pq_m(512) == 64
    assert pq_m(128, 4) == 64 and pq_m(512, 4) == 128  # 4-bit codes: same bytes per face
    assert pq_m(100, 4) == 50 and pq_m(50, 4) == 10 and pq_m(7, 4) == 0  # even divisors only
    assert choose_kind(50_000_000, 128, 50_000) == "ivfpq"
    assert choose_kind(100_000_000, 128, 50_000) == "ivfpq-ondisk"
    assert choose_kind(100_000_000, 128, 50_000, ram_budget=8 * 2**30) == "ivfpq"
    assert choose_kind(60_000_000, 512, 50_000) == "ivfpq-ondisk"  # 80 B x 60M > 4 GiB


def test_factory_builds_compressed_above_sq_max(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    n = 3000
    idx = build_index(x[:n], ids[:n], PQ_D, 1000, 0.95, sq_max=2000, storage=tmp_path / "s")
    assert isinstance(idx, PQIndex) and not idx.params.on_disk and idx.rerank_depth > 0
    ond = build_index(x[:n], ids[:n], PQ_D, 1000, 0.95, sq_max=2000, ram_budget=10_000,
                      storage=tmp_path / "o")
    assert isinstance(ond, PQIndex) and ond.params.on_disk
    assert (tmp_path / "o.ivfdata").stat().st_size > 0
    with pytest.raises(IndexError_, match="storage"):
        build_index(x[:n], ids[:n], PQ_D, 1000, 0.95, sq_max=2000)
    assert isinstance(build_index(x[:n], ids[:n], PQ_D, 1000, 0.95, sq_max=n), IVFIndex)


def test_pq_recall_against_exact(pq_built, pq_data):
    x, ids, q = pq_data
    p = pq_built.params
    assert pq_built.ntotal == PQ_N and p.tuned_recall_at_1 >= 0.97
    # lists in memory: 4-bit fast-scan codes, twice the sub-quantizers for the same bytes
    assert p.bits == 4 and p.m == pq_m(PQ_D, 4) == 2 * pq_m(PQ_D) and 1 <= p.nprobe <= p.nlist
    assert isinstance(pq_built._ivf, faiss.IndexIVFPQFastScan) and "x4fs" in pq_built.kind
    assert _r1(pq_built, x, ids, q) >= 0.95
    # scores of re-ranked results are (float16) inner products
    D, I = pq_built.search(q[:5], 3)
    pos = {int(v): i for i, v in enumerate(ids)}
    exact = np.array([[q[r] @ x[pos[int(i)]] for i in row] for r, row in enumerate(I)])
    np.testing.assert_allclose(D, exact, atol=2e-3)


def test_rerank_improves_recall(pq_built, pq_data):
    x, ids, q = pq_data
    tuned = pq_built.rerank_depth
    assert tuned > 0
    try:
        pq_built.set_search(rerank_depth=0)
        plain = _r1(pq_built, x, ids, q)
        pq_built.set_search(rerank_depth=tuned)
        reranked = _r1(pq_built, x, ids, q)
    finally:
        pq_built.set_search(rerank_depth=tuned)
    assert reranked >= plain + 0.1, (plain, reranked)


def test_pq_deletes_take_effect_at_once(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "d", target_recall=0.95, seed=2)
    _, I = idx.search(q, 10)
    gone = np.unique(I[:, :3])
    assert idx.remove_ids(np.concatenate([gone, [10**9]])) == len(gone)  # unknown ids ignored
    assert idx.ntotal == PQ_N - len(gone)
    _, J = idx.search(q, 10)
    assert not np.isin(J, gone).any()
    assert (J[:, 0] >= 0).all()
    # re-adding a removed face under a new id makes it findable again
    row = int(np.flatnonzero(ids == gone[0])[0])
    idx.add_with_ids(x[row:row + 1], np.array([10**8]))
    _, K1 = idx.search(x[row:row + 1], 1)
    assert K1[0, 0] == 10**8
    # survives a save/load
    idx.save(tmp_path / "d.faiss")
    back = load_index(tmp_path / "d.faiss")
    _, J2 = back.search(q, 10)
    assert not np.isin(J2, gone).any() and back.ntotal == idx.ntotal
    # fewer faces than k: the rest is padded with -1 / -inf, like faiss
    keep = ids[~np.isin(ids, gone)][:4]
    back.remove_ids(np.concatenate([ids[~np.isin(ids, keep)], [10**8]]))
    assert back.ntotal == 4
    back.set_search(nprobe=back.nlist)  # every list probed: all four are found
    D, I = back.search(q[:3], 10)
    assert set(I[:, :4].ravel()) == set(keep.tolist())
    assert (I[:, 4:] == -1).all() and np.isneginf(D[:, 4:]).all()


def test_pq_save_load_round_trip(pq_built, pq_data, tmp_path: Path):
    x, ids, q = pq_data
    path = tmp_path / "g.faiss"
    pq_built.save(path)
    back = load_index(path)
    assert isinstance(back, PQIndex) and back.kind == pq_built.kind
    assert back.params == pq_built.params
    D1, I1 = pq_built.search(q, 10)
    D2, I2 = back.search(q, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2)


def _prefetch_threads(idx: PQIndex) -> int:
    """Threads faiss starts per search to read on-disk lists (32 by default; 2 ms a query here)."""
    return int(faiss.downcast_InvertedLists(idx._ivf.invlists).prefetch_nthread)


def test_ondisk_lists_reopen(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "od", target_recall=0.95, on_disk=True, seed=4)
    assert idx.params.on_disk and "ondisk" in idx.kind
    assert idx.params.bits == 8 and type(idx._ivf) is faiss.IndexIVFPQ  # fast-scan lists live in RAM
    lists = tmp_path / "od.ivfdata"
    assert lists.stat().st_size >= PQ_N * idx.params.m
    # codes not resident: against the same index with its 8-bit lists in memory
    ram = PQIndex.build(x, ids, storage=tmp_path / "ram", target_recall=0.95, fast_scan=False, seed=4)
    assert ram.params.m == idx.params.m and not ram.params.on_disk
    assert idx.memory_bytes() + PQ_N * (idx.params.m + 8) <= ram.memory_bytes()
    del ram
    with pytest.raises(IndexError_, match="fast-scan"):
        PQIndex.build(x, ids, storage=tmp_path / "x", on_disk=True, fast_scan=True)
    _, I = idx.search(q, 10)
    idx.save(tmp_path / "od.faiss")
    back = load_index(tmp_path / "od.faiss")
    assert isinstance(back, PQIndex) and back.params.on_disk
    assert _prefetch_threads(idx) == _prefetch_threads(back) == 0
    _, J = back.search(q, 10)
    np.testing.assert_array_equal(I, J)
    assert _r1(back, x, ids, q) >= 0.93
    gone = np.unique(J[:, 0])
    assert back.remove_ids(gone) == len(gone)  # removal from memory-mapped lists
    assert not np.isin(back.search(q, 10)[1], gone).any()
    del back
    (tmp_path / "od.vec16").unlink()
    with pytest.raises(IndexError_, match="vector store"):
        load_index(tmp_path / "od.faiss")


def test_retune_follows_the_target_without_rebuilding(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "t", target_recall=0.99, seed=5)
    high = (idx.nprobe, idx.rerank_depth, idx.tuned_recall)
    assert high[2] >= 0.99
    # a lower target: another (cheaper) operating point whose measured recall reaches it
    nprobe, depth, recall = idx.retune(0.8)
    assert recall >= 0.8 and (nprobe, depth) == (idx.nprobe, idx.rerank_depth)
    assert (nprobe, depth) != high[:2]
    assert idx.params.target_recall == 0.8 and idx.params.tuned_recall_at_1 == recall
    assert _r1(idx, x, ids, q) >= 0.75
    # back to the high target (the choice is timed, so only its recall is certain)
    assert idx.retune(0.99)[2] >= 0.99
    # the new parameters are saved with the index
    nprobe, depth, _ = idx.retune(0.8)
    idx.save(tmp_path / "t.faiss")
    back = load_index(tmp_path / "t.faiss")
    assert (back.nprobe, back.rerank_depth, back.params.target_recall) == (nprobe, depth, 0.8)
    with pytest.raises(IndexError_, match="target recall"):
        idx.retune(1.5)


def test_retune_ignores_removed_faces(pq_data, tmp_path: Path):
    x, ids, _ = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "r", target_recall=0.95, seed=6)
    # remove every face's nearest neighbour: left in the store, the leave-one-out ground truth
    # would point at removed rows that no search can return, and no setting could reach 0.95
    _, I = idx.search(x[:2000], 2)
    gone = np.unique(I[:, 1][I[:, 1] != ids[:2000]])
    idx.remove_ids(gone)
    *_, recall = idx.retune(0.95, queries=500, seed=1)
    assert recall >= 0.95


def test_move_lists_to_disk_keeps_every_result(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "m", target_recall=0.95, seed=7, fast_scan=False)
    D1, I1 = idx.search(q, 10)
    ram = idx.memory_bytes()
    lists = idx.move_lists_to_disk()
    assert lists == tmp_path / "m.ivfdata" and lists.stat().st_size >= PQ_N * idx.params.m
    assert idx.params.on_disk and "ondisk" in idx.kind and lists in idx.storage_files()
    assert _prefetch_threads(idx) == 0
    assert idx.memory_bytes() <= ram - PQ_N * idx.params.m
    D2, I2 = idx.search(q, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2)
    assert idx.move_lists_to_disk() == lists  # already on disk: nothing to do
    idx.add_with_ids(x[:1] * 1.0, np.array([10**9]))  # still writable
    idx.save(tmp_path / "m.faiss")
    back = load_index(tmp_path / "m.faiss")
    assert back.params.on_disk and back.ntotal == PQ_N + 1
    np.testing.assert_array_equal(back.search(q, 10)[1][:, :5], idx.search(q, 10)[1][:, :5])


def test_fast_scan_adds_after_removals_are_found(pq_data, tmp_path: Path):
    """faiss leaves a removed fast-scan entry's codes in the freed slot, and a later add ORs its
    codes into it: without ``_clear_block_tails`` about 40% of these adds are not found."""
    x, ids, _ = pq_data
    n = 6000
    idx = PQIndex.build(x[:n], ids[:n], storage=tmp_path / "fs", target_recall=0.9, seed=9)
    assert idx.params.bits == 4
    assert idx.remove_ids(ids[:2500]) == 2500  # slots freed in most lists' last block
    new = np.arange(10**6, 10**6 + 1500)
    idx.add_with_ids(x[n:n + 1500], new)
    idx.set_search(nprobe=idx.nlist, rerank_depth=0)  # every list, PQ scores only
    _, I = idx.search(x[n:n + 1500], 1)
    assert (I[:, 0] == new).mean() >= 0.98
    _, J = idx.search(x[2500:n], 1)  # the faces moved into the holes are intact as well
    assert (J[:, 0] == ids[2500:n]).mean() >= 0.98
    assert not np.isin(J, ids[:2500]).any()


def test_fast_scan_lists_cannot_move_to_disk(pq_built):
    with pytest.raises(IndexError_, match="rebuild"):
        pq_built.move_lists_to_disk()
    assert not pq_built.params.on_disk


def _rewrite_header_params(path: Path, edit) -> None:  # noqa: ANN001 - edit(params dict)
    """Change a saved index file's header params in place, with a valid header checksum."""
    import json

    from facesearch.index.faiss_backend import _MAGIC, _PREFIX, _atomic_write

    raw = path.read_bytes()
    start = len(_MAGIC) + _PREFIX.size
    hlen, _ = _PREFIX.unpack(raw[len(_MAGIC):start])
    header = json.loads(raw[start:start + hlen])
    edit(header["params"])
    payload = raw[start + hlen:]
    _atomic_write(path, header, lambda out: out(payload))


def test_8bit_index_saved_before_fast_scan_still_loads(pq_data, tmp_path: Path):
    """Headers written before fast-scan existed have no ``bits``: they load as 8-bit PQ."""
    x, ids, q = pq_data
    idx = PQIndex.build(x[:3000], ids[:3000], storage=tmp_path / "o", target_recall=0.9,
                        fast_scan=False, seed=8)
    path = tmp_path / "o.faiss"
    idx.save(path)
    removed = []
    _rewrite_header_params(path, lambda p: removed.append(p.pop("bits")))
    assert removed == [8]
    back = load_index(path)
    assert isinstance(back, PQIndex) and back.params == idx.params and back.params.bits == 8
    np.testing.assert_array_equal(back.search(q, 5)[1], idx.search(q, 5)[1])
    # a header that claims 4-bit codes over an 8-bit faiss index is refused, not misread
    _rewrite_header_params(path, lambda p: p.update(bits=4))
    with pytest.raises(IndexError_, match="IndexIVFPQFastScan"):
        load_index(path)


class _FakeRepo:
    def __init__(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.x, self.ids = x, ids

    def face_watermark(self, gallery_id: int, model_id: str) -> tuple[int, int]:
        return len(self.ids), int(self.ids.max()) if len(self.ids) else 0

    def iter_embeddings(self, gallery_id: int, model_id: str):
        for s in range(0, len(self.ids), 1000):
            yield self.ids[s:s + 1000], self.x[s:s + 1000]


def test_manager_builds_compressed_streamed_and_cleans_old_files(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    repo = _FakeRepo(x[:3000], ids[:3000])
    m = IndexManager(tmp_path, exact_max=1000, target_recall=0.95, sq_max=2000)
    key = IndexKey(1, "m")
    idx = m.get(repo, key, PQ_D)
    assert isinstance(idx, PQIndex)
    first = set(p.name for p in tmp_path.iterdir())
    assert any(n.endswith(".vec16") for n in first) and not any(n.endswith(".tmp") for n in first)
    # a fresh manager reopens the saved index without rebuilding
    m2 = IndexManager(tmp_path, exact_max=1000, target_recall=0.95, sq_max=2000)
    again = m2.get(repo, key, PQ_D)
    np.testing.assert_array_equal(idx.search(q, 5)[1], again.search(q, 5)[1])
    # a rebuild writes new files and removes the old build's
    repo.x, repo.ids = x[:3500], ids[:3500]
    m2.rebuild(repo, key, PQ_D)
    names = set(p.name for p in tmp_path.iterdir())
    vec = [n for n in names if n.endswith(".vec16")]
    assert len(vec) == 1 and vec[0] not in first
    m2.drop(key)
    assert not list(tmp_path.iterdir())


def test_manager_picks_up_an_index_tuned_by_another_process(pq_data, tmp_path: Path, caplog):
    """A server's manager holds the index in memory; ``index tune`` in another process saves
    new settings. The server's next ``get`` uses them, and its own saves keep them."""
    x, ids, _ = pq_data
    repo = _FakeRepo(x[:3000], ids[:3000])
    server = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000)
    key = IndexKey(1, "m")
    held = server.get(repo, key, PQ_D)
    assert server.get(repo, key, PQ_D) is held  # nothing changed on disk: the same object
    cli = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000)
    _, (nprobe, depth, _) = cli.tune(repo, key, PQ_D, 0.8, queries=300)
    now = server.get(repo, key, PQ_D)
    assert now is not held and now.params.target_recall == 0.8
    assert (now.nprobe, now.rerank_depth) == (nprobe, depth)
    # the server's next write keeps the tuned settings
    server.add(key, x[3000:3100], ids[3000:3100])
    server.save(key)
    repo.x, repo.ids = x[:3100], ids[:3100]
    reopened = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000).get(repo, key, PQ_D)
    assert reopened.ntotal == 3100 and reopened.params.target_recall == 0.8
    # a file saved with faces the server has not seen is not adopted (and nothing is rebuilt)
    other = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000)
    other.get(repo, key, PQ_D)
    other.add(key, x[3100:3200], ids[3100:3200])
    other.save(key)
    caplog.clear()
    with caplog.at_level("WARNING", logger="facesearch.index.manager"):
        mine = server.get(repo, key, PQ_D)
    assert mine is now and mine.ntotal == 3100
    assert "keeping the one in memory" in caplog.text
    caplog.clear()
    assert server.get(repo, key, PQ_D) is mine and not caplog.text  # one warning per change


def test_manager_tune_saves_the_new_settings(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    repo = _FakeRepo(x[:3000], ids[:3000])
    m = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000)
    key = IndexKey(1, "m")
    assert m.get(repo, key, PQ_D).params.target_recall == 0.99
    idx, (nprobe, depth, recall) = m.tune(repo, key, PQ_D, 0.8, queries=300)
    assert recall >= 0.8 and idx.params.target_recall == 0.8
    # another process opens the saved index (no rebuild: the database did not change) tuned
    again = IndexManager(tmp_path, exact_max=1000, target_recall=0.99, sq_max=2000).get(repo, key, PQ_D)
    assert (again.nprobe, again.rerank_depth, again.params.target_recall) == (nprobe, depth, 0.8)
    # an exact index has nothing to tune
    small = IndexKey(2, "m")
    flat, result = m.tune(_FakeRepo(x[:500], ids[:500]), small, PQ_D, 0.8)
    assert result is None and isinstance(flat, FlatIndex)


def test_manager_resync_after_an_erasure_keeps_the_index_without_rebuilding(pq_data, tmp_path: Path):
    """An erasure removes faces from the index, then their rows: ``resync`` saves the new
    watermark and keeps the same trained index (no rebuild); a disagreement still rebuilds."""
    x, ids, q = pq_data
    repo = _FakeRepo(x[:3000], ids[:3000])
    m = IndexManager(tmp_path, exact_max=1000, target_recall=0.95, sq_max=2000)
    key = IndexKey(1, "m")
    idx = m.get(repo, key, PQ_D)
    assert isinstance(idx, PQIndex)
    files = set(p.name for p in tmp_path.iterdir())
    gone = ids[2990:3000]  # the highest ids too: the database's max id goes down
    assert m.remove(key, gone, max_id_after=-1) == len(gone)
    repo.x, repo.ids = x[:2990], ids[:2990]
    assert m.resync(repo, key, PQ_D) is idx
    assert set(p.name for p in tmp_path.iterdir()) == files  # the same build's files, nothing new
    # a fresh process opens it as in step (no rebuild) and never returns an erased face
    again = IndexManager(tmp_path, exact_max=1000, target_recall=0.95, sq_max=2000)
    reopened = again.get(repo, key, PQ_D)
    assert reopened.ntotal == 2990 and set(p.name for p in tmp_path.iterdir()) == files
    _, I = reopened.search(x[2990:3000], 5)
    assert not np.isin(I, gone).any()
    # when the database holds other faces than the index (another writer), it is rebuilt
    repo.x, repo.ids = x[:2980], ids[:2980]
    rebuilt = again.resync(repo, key, PQ_D)
    assert rebuilt is not reopened and rebuilt.ntotal == 2980
    assert not (set(p.name for p in tmp_path.iterdir()) & {n for n in files if n.endswith(".vec16")})


# --------------------------------------------------------------------------- int8 store, streamed build

def test_int8_store_halves_the_disk_and_keeps_recall(pq_data, tmp_path: Path):
    """The int8 re-ranking store: d + 4 bytes per face instead of 2 x d, scores within the
    int8 rounding of the exact inner products, recall like the float16 store's, and the
    choice survives save/load and re-tuning."""
    x, ids, q = pq_data
    idx = PQIndex.build(x, ids, storage=tmp_path / "i8", target_recall=0.97, store_dtype="int8", seed=1)
    assert idx.params.store_dtype == "int8" and idx.rerank_depth > 0
    assert [p.name for p in idx.storage_files()] == ["i8.vec8"] and not (tmp_path / "i8.vec16").exists()
    assert (tmp_path / "i8.vec8").stat().st_size == PQ_N * (PQ_D + 4) == PQ_N * store_bytes_per_face(PQ_D, "int8")
    assert store_bytes_per_face(PQ_D) == 2 * PQ_D
    # int8 rounding (about 1e-3 in cosine at 32-d) reorders near-ties between faces of one
    # identity: a few hundredths of recall@1 against float32 exact search on this data
    assert idx.tuned_recall >= 0.97 and _r1(idx, x, ids, q) >= 0.93
    D, I = idx.search(q[:20], 3)
    pos = {int(v): i for i, v in enumerate(ids)}
    exact = np.array([[q[r] @ x[pos[int(i)]] for i in row] for r, row in enumerate(I)])
    err = np.abs(D - exact)
    assert err.max() < 5e-3 and err.max() > 0  # int8 rounding: small, and really there
    idx.save(tmp_path / "i8.faiss")
    back = load_index(tmp_path / "i8.faiss")
    assert back.params == idx.params
    np.testing.assert_array_equal(back.search(q, 10)[1], idx.search(q, 10)[1])
    assert back.retune(0.9, queries=300)[2] >= 0.9
    # a removed face is gone at once with this store too
    gone = I[:, 0]
    back.remove_ids(gone)
    assert not np.isin(back.search(q[:20], 10)[1], gone).any()


def test_int8_store_of_a_missing_or_unknown_kind_is_refused(pq_data, tmp_path: Path):
    x, ids, _ = pq_data
    with pytest.raises(IndexError_, match="unknown vector store type 'int4'"):
        PQIndex.build(x, ids, storage=tmp_path / "u", store_dtype="int4")
    idx = PQIndex.build(x[:3000], ids[:3000], storage=tmp_path / "m", target_recall=0.9,
                        store_dtype="int8", seed=2)
    idx.save(tmp_path / "m.faiss")
    (tmp_path / "m.vec8").unlink()
    with pytest.raises(IndexError_, match="m.vec8 is missing"):
        load_index(tmp_path / "m.faiss")


def test_trained_index_streamed_in_batches_then_retuned(pq_data, tmp_path: Path):
    """``trained`` + ``add_with_ids`` per batch + ``retune``: a gallery that never exists as
    one array (generated or read in chunks) gets the same kind of index as ``build``."""
    x, ids, q = pq_data
    n_train = PQIndex.train_sample_size(PQ_N)
    assert n_train == min(PQ_N, 256 * 64)
    idx = PQIndex.trained(x[:7200], PQ_N, storage=tmp_path / "s", seed=3)
    assert idx.ntotal == 0 and idx.nlist == pq_nlist(PQ_N) and idx.trained_n == PQ_N
    for s in range(0, PQ_N, 1500):
        idx.add_with_ids(x[s:s + 1500], ids[s:s + 1500])
    assert idx.ntotal == PQ_N
    nprobe, depth, recall = idx.retune(0.97, queries=500)
    assert recall >= 0.97 and depth > 0 and idx.params.target_recall == 0.97
    assert _r1(idx, x, ids, q) >= 0.95
    with pytest.raises(IndexError_, match="at least 1024 vectors"):
        PQIndex.trained(x[:500], PQ_N, storage=tmp_path / "t")
    with pytest.raises(IndexError_, match="needs a storage path"):
        PQIndex.trained(x[:2000], PQ_N, storage=None)


def test_manager_builds_with_the_int8_store_setting(pq_data, tmp_path: Path):
    x, ids, q = pq_data
    repo = _FakeRepo(x[:3000], ids[:3000])
    m = IndexManager(tmp_path, exact_max=1000, target_recall=0.95, sq_max=2000, rerank_store="int8")
    key = IndexKey(2, "m")
    idx = m.get(repo, key, PQ_D)
    assert isinstance(idx, PQIndex) and idx.params.store_dtype == "int8"
    assert [n for n in os.listdir(tmp_path) if n.endswith((".vec8", ".vec16"))] == [idx.storage_files()[0].name]
    repo.x, repo.ids = x[:3500], ids[:3500]
    m.rebuild(repo, key, PQ_D)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".vec8")]) == 1  # the old build's went
    m.drop(key)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- streamed save

def _legacy_pq_file(idx: PQIndex, path: Path) -> None:
    """The file the writer before streaming produced: one payload array (faiss part's length,
    ``serialize_index`` bytes, row map) after an unpadded header."""
    import json
    import zlib

    from facesearch.index.faiss_backend import _FORMAT, _MAGIC, _PREFIX

    fi = faiss.serialize_index(idx._ivf)
    rows = np.ascontiguousarray(idx._rows, dtype="<i8").view(np.uint8)
    payload = np.concatenate([np.frombuffer(np.int64(len(fi)).tobytes(), dtype=np.uint8), fi, rows])
    header = {"format": _FORMAT, "type": idx._type, "d": idx.d, "ntotal": idx.ntotal,
              "params": idx._params(), "payload_bytes": int(payload.nbytes),
              "payload_crc32": zlib.crc32(payload), "faiss_version": faiss.__version__}
    hb = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(_MAGIC + _PREFIX.pack(len(hb), zlib.crc32(hb)) + hb + payload.tobytes())


def test_pq_save_streams_pieces_and_matches_the_old_layout(pq_built, pq_data, tmp_path: Path):
    """The payload reaches the file in pieces of at most 8 MiB (no whole copy in memory), and
    the bytes are those the one-array writer produced: old files load, new files are the same."""
    from facesearch.index.faiss_backend import _CHUNK

    _, _, q = pq_data
    pieces: list[int] = []
    chunks: list[bytes] = []

    def out(b: bytes) -> None:
        pieces.append(len(b))
        chunks.append(bytes(b))

    pq_built._write_payload(out)
    assert len(pieces) > 3 and max(pieces) <= _CHUNK
    legacy = tmp_path / "legacy.faiss"
    _legacy_pq_file(pq_built, legacy)
    new = tmp_path / "new.faiss"
    pq_built.save(new)
    assert legacy.read_bytes().endswith(b"".join(chunks))
    assert new.read_bytes().endswith(b"".join(chunks))
    for p in (legacy, new):
        back = load_index(p)
        assert isinstance(back, PQIndex) and back.params == pq_built.params
        np.testing.assert_array_equal(back.search(q, 10)[1], pq_built.search(q, 10)[1])


def test_crash_while_streaming_the_payload_keeps_old_file(pq_built, tmp_path: Path, monkeypatch):
    p = tmp_path / "g.faiss"
    pq_built.save(p)
    before = p.read_bytes()
    calls = [0]
    real = faiss.PyCallbackIOWriter

    def failing_writer(callback, bs):  # faiss' own signature
        def cb(b: bytes) -> None:
            calls[0] += 1
            if calls[0] > 5:
                raise OSError("disk full")
            callback(b)
        return real(cb, bs)

    monkeypatch.setattr(faiss, "PyCallbackIOWriter", failing_writer)
    with pytest.raises((IndexError_, RuntimeError, OSError)):
        pq_built.save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["g.faiss"]
    assert load_index(p).ntotal == pq_built.ntotal


def test_pq_file_with_a_bad_faiss_length_is_refused(pq_built, tmp_path: Path):
    """The faiss part's length inside a checksummed payload is checked, not trusted."""
    import json
    import zlib

    from facesearch.index.faiss_backend import _MAGIC, _PREFIX

    p = tmp_path / "g.faiss"
    pq_built.save(p)
    raw = p.read_bytes()
    start = len(_MAGIC) + _PREFIX.size
    hlen, _ = _PREFIX.unpack(raw[len(_MAGIC):start])
    header = json.loads(raw[start:start + hlen])
    payload = bytearray(raw[start + hlen:])
    flen = int(np.frombuffer(bytes(payload[:8]), dtype="<i8")[0])
    for bad in (flen + 8, flen - 8, 1 << 40):
        payload[:8] = np.int64(bad).astype("<i8").tobytes()
        header["payload_crc32"] = zlib.crc32(payload)
        hb = json.dumps(header, sort_keys=True).encode()
        p.write_bytes(_MAGIC + _PREFIX.pack(len(hb), zlib.crc32(hb)) + hb + bytes(payload))
        with pytest.raises(IndexError_, match="unusable"):
            load_index(p)
