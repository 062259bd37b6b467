"""What the Milvus backend promises beyond the shared contract: scoping inside the engine,
an erased face never returned once the erase call has returned (from any connection), data
surviving a server restart, and clear refusals."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import IndexError_

pytest.importorskip("pymilvus", reason="Milvus tests need the milvus extra (pip install -e '.[milvus]')")

from facesearch.index.milvus_backend import MilvusConfig, MilvusIndexes  # noqa: E402

D = 64
_galleries = itertools.count(500_000)


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_agency_is_checked_inside_the_engine(milvus_uri: str) -> None:
    m = MilvusIndexes(MilvusConfig(uri=milvus_uri))
    g = next(_galleries)
    own = m.index("scoping", D, g, agency_id=7)
    x = unit(50, 1)
    own.add_with_ids(x, np.arange(50) + g * 100)
    assert own.ntotal == 50
    # the same gallery under another agency (a store that named the wrong owner): nothing
    other = m.index("scoping", D, g, agency_id=8)
    assert other.ntotal == 0
    _, ids = other.search(x[:5], 10)
    assert (ids == -1).all()
    assert other.remove_ids(np.arange(50) + g * 100) == 0
    assert own.ntotal == 50


def test_an_erased_face_is_never_returned_after_the_erase_returns(milvus_uri: str) -> None:
    """Two connections, as the erasure command and the search service would be: every delete
    through one is invisible to the very next search through the other (Strong reads)."""
    writer = MilvusIndexes(MilvusConfig(uri=milvus_uri))
    reader = MilvusIndexes(MilvusConfig(uri=milvus_uri))
    g = next(_galleries)
    w = writer.index("erase", D, g, 1)
    r = reader.index("erase", D, g, 1)
    x = unit(200, 2)
    ids = np.arange(200) + g * 1000
    w.add_with_ids(x, ids)
    for i in range(0, 200, 10):  # 20 erase-then-search rounds
        assert w.remove_ids(ids[i:i + 10]) == 10
        _, got = r.search(x[i:i + 10], 5)
        assert not np.isin(got, ids[:i + 10]).any(), f"round {i // 10}: an erased face came back"
    assert r.ntotal == 0


def test_re_adding_replaces_and_never_duplicates(milvus_uri: str) -> None:
    m = MilvusIndexes(MilvusConfig(uri=milvus_uri))
    g = next(_galleries)
    idx = m.index("upsert", D, g, 1)
    x = unit(30, 3)
    ids = np.arange(30) + g * 100
    idx.add_with_ids(x, ids)
    idx.add_with_ids(x[::-1].copy(), ids)  # same ids, other vectors: replaced
    assert idx.ntotal == 30
    assert (idx.all_ids() == ids).all()
    _, got = idx.search(x[:1], 1)
    assert got[0, 0] == ids[-1]


@pytest.mark.slow  # a second server, and its restart waits ~60-90 s for the old node's session to lapse
def test_data_survives_a_server_restart(tmp_path: Path) -> None:
    from tests.milvus_server import MilvusTestServer, _unavailable

    if _unavailable():
        pytest.skip(_unavailable())
    server = MilvusTestServer(tmp_path / "milvus")
    server.start()
    x = unit(100, 4)
    ids = np.arange(100) + 10_000
    try:
        m = MilvusIndexes(MilvusConfig(uri=server.uri))
        idx = m.index("restart", D, 1, 1)
        idx.add_with_ids(x, ids)
        assert idx.remove_ids(ids[:5]) == 5
        m.close()
    finally:
        server.stop(grace_s=30)
    server.start()
    try:
        m = MilvusIndexes(MilvusConfig(uri=server.uri))
        idx = m.index("restart", D, 1, 1)
        assert idx.ntotal == 95
        _, got = idx.search(x, 1)
        assert (got[5:, 0] == ids[5:]).all()
        assert not np.isin(got, ids[:5]).any()
        m.close()
    finally:
        server.stop()


def test_milvus_lite_and_unreachable_servers_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(IndexError_, match="Milvus Lite"):
        MilvusIndexes(MilvusConfig(uri=str(tmp_path / "milvus.db")))
    with pytest.raises(IndexError_, match="unknown Milvus index type"):
        MilvusConfig(uri="http://127.0.0.1:1", index_type="SCANN")
    with pytest.raises(IndexError_, match="unknown Milvus consistency level"):
        MilvusConfig(uri="http://127.0.0.1:1", consistency="Eventual")


def test_the_installation_reads_strongly_consistent(milvus_uri: str, tmp_path: Path) -> None:
    """The erase guarantee rests on Strong reads: the connection built from settings uses them,
    and its indexes say so in their kind."""
    from facesearch.config import Settings
    from facesearch.index.factory import milvus_from_settings

    m = milvus_from_settings(Settings(home=tmp_path, milvus_uri=milvus_uri, milvus_collection_prefix="strong"))
    assert m is not None
    assert MilvusConfig(uri=milvus_uri).consistency == "Strong"  # the dataclass default, too
    try:
        assert m.config.consistency == "Strong"
        idx = m.index("m", D, gallery_id=next(_galleries), agency_id=1)
        assert idx.kind.endswith(",strong"), idx.kind
    finally:
        m.close()


def test_the_token_stays_out_of_logs() -> None:
    cfg = MilvusConfig(uri="http://milvus:19530", token="root:s3cret")
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)
