"""bench/stream_data.py: the streamed benchmark data must be re-creatable chunk by chunk
(an index built from one pass and ground truth from the same pass describe the same gallery),
and its chunked top-k must equal brute force over the whole gallery."""
from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from stream_data import StreamData, TopK  # noqa: E402


def test_chunks_are_recreated_identically_and_cover_n():
    sd = StreamData(n=2_500, d=16, seed=7, chunk=1_000)
    chunks = list(sd.iter_chunks())
    assert [s for s, _ in chunks] == [0, 1_000, 2_000] and sd.chunks == 3
    assert [len(x) for _, x in chunks] == [1_000, 1_000, 500]
    np.testing.assert_array_equal(sd.vectors(1), chunks[1][1])  # alone, out of order: the same rows
    x = np.concatenate([x for _, x in chunks])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert not np.array_equal(StreamData(n=2_500, d=16, seed=8, chunk=1_000).vectors(1), chunks[1][1])
    ids = sd.ids()
    assert len(np.unique(ids)) == 2_500 and np.array_equal(ids, sd.ids())


def test_queries_are_fresh_samples_of_enrolled_identities():
    sd = StreamData(n=5_000, d=32, seed=1, chunk=2_000)
    x = np.concatenate([x for _, x in sd.iter_chunks()])
    q = sd.queries(100)
    assert q.shape == (100, 32) and np.array_equal(q, sd.queries(100))
    best = (q @ x.T).max(axis=1)
    assert not np.isclose(best, 1.0, atol=1e-6).any()  # not copies of gallery faces
    # a query's identity has faces in the gallery: far closer than unrelated faces
    assert np.median(best) > np.median((q @ x.T).mean(axis=1)) + 0.2


def test_topk_merged_by_chunk_equals_brute_force():
    sd = StreamData(n=3_000, d=24, seed=2, chunk=700)
    q = sd.queries(50)
    top = TopK(q, 10)
    for s, x in sd.iter_chunks():
        top.update(x, s)
    x = np.concatenate([x for _, x in sd.iter_chunks()])
    _, exact = faiss.knn(q, x, 10, faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(top.row, exact)
