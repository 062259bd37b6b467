"""Locking of the embedded indexes: the readers-writer lock on its own, and the manager's
per-gallery locks (searches share an index, a remove waits for them, a rebuild of one gallery
holds up neither that gallery's searches nor another gallery's)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facesearch.index.manager import IndexKey, IndexManager
from facesearch.index.rwlock import ReadWriteLock

D = 32
WAIT = 5.0  # seconds: how long a step that must happen may take before the test fails
BLOCKED = 0.3  # seconds: how long a step that must not happen is watched


def _in_thread(fn) -> tuple[threading.Thread, threading.Event]:  # noqa: ANN001
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


# the lock on its own ---------------------------------------------------------------------------
def test_readers_share_the_lock():
    lock = ReadWriteLock()
    with lock.read():
        _, done = _in_thread(lambda: lock.read().__enter__())
        assert done.wait(WAIT), "a second reader waited for the first"


def test_a_writer_waits_for_readers_and_excludes_them():
    lock = ReadWriteLock()
    order: list[str] = []
    release = threading.Event()

    def writer() -> None:
        with lock.write():
            order.append("write")
            release.wait(WAIT)

    with lock.read():
        _, wrote = _in_thread(writer)
        assert not wrote.wait(BLOCKED) and order == [], "the writer ran while a reader held the lock"
    deadline = time.monotonic() + WAIT
    while order != ["write"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert order == ["write"]

    def reader() -> None:
        with lock.read():
            order.append("read")

    _, read = _in_thread(reader)
    assert not read.wait(BLOCKED), "a reader ran while the writer held the lock"
    release.set()
    assert read.wait(WAIT) and order == ["write", "read"]


def test_a_waiting_writer_goes_before_new_readers():
    """Writer preference: a stream of searches cannot starve an erasure."""
    lock = ReadWriteLock()
    order: list[str] = []

    def writer() -> None:
        with lock.write():
            order.append("write")

    def late_reader() -> None:
        with lock.read():
            order.append("read")

    with lock.read():
        _, wrote = _in_thread(writer)
        time.sleep(BLOCKED)  # the writer is now waiting
        _, read = _in_thread(late_reader)
        assert not read.wait(BLOCKED), "a new reader overtook a waiting writer"
        with lock.read():  # but the thread already reading may read again (no self-deadlock)
            pass
    assert wrote.wait(WAIT) and read.wait(WAIT)
    assert order == ["write", "read"]


def test_reentrancy_and_upgrade_refused():
    lock = ReadWriteLock()
    with lock.write():
        with lock.write():
            with lock.read():
                pass
    with lock.read():
        with pytest.raises(RuntimeError, match="read side"):
            with lock.write():
                pass
    # everything was released: another thread can write
    _, wrote = _in_thread(lambda: lock.write().__enter__())
    assert wrote.wait(WAIT)


# the manager -----------------------------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


class _GalleriesRepo:
    """Per-gallery embeddings; reading a gallery marked slow waits until it is let go."""

    def __init__(self, data: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        self.data = data
        self.slow: set[int] = set()
        self.reading_slow = threading.Event()
        self.let_go = threading.Event()

    def face_watermark(self, gallery_id: int, model_id: str) -> tuple[int, int]:
        ids = self.data[gallery_id][0]
        return len(ids), int(ids.max()) if len(ids) else 0

    def iter_embeddings(self, gallery_id: int, model_id: str):
        ids, x = self.data[gallery_id]
        if gallery_id in self.slow:
            self.reading_slow.set()
            assert self.let_go.wait(WAIT * 2)
        yield ids, x


@pytest.fixture()
def two_galleries(tmp_path: Path):
    rng = np.random.default_rng(7)
    data = {g: (np.arange(g * 1000, g * 1000 + 300, dtype=np.int64), _unit(rng.normal(size=(300, D))))
            for g in (1, 2)}
    repo = _GalleriesRepo(data)
    m = IndexManager(tmp_path, exact_max=10_000, target_recall=0.95)
    a, b = IndexKey(1, "m"), IndexKey(2, "m")
    m.get(repo, a, D)
    m.get(repo, b, D)
    return m, repo, a, b


def test_a_rebuild_holds_up_no_search(two_galleries):
    """While gallery A is rebuilt, B's searches run, and A's own searches use the old index."""
    m, repo, a, b = two_galleries
    old_a = m.get(repo, a, D)
    repo.slow.add(1)
    t, rebuilt = _in_thread(lambda: m.rebuild(repo, a, D))
    assert repo.reading_slow.wait(WAIT)
    q = repo.data[2][1][:3]

    def search(key: IndexKey) -> None:
        with m.reading(repo, key, D) as idx:
            found.append((key, idx, idx.search(q, 1)[1][:, 0].tolist()))

    found: list = []
    _, searched_b = _in_thread(lambda: search(b))
    _, searched_a = _in_thread(lambda: search(a))
    assert searched_b.wait(WAIT), "a search of gallery B waited for gallery A's rebuild"
    assert searched_a.wait(WAIT), "a search of gallery A waited for its own rebuild"
    assert not rebuilt.is_set()
    by_key = {k: (idx, top) for k, idx, top in found}
    assert by_key[b][1] == repo.data[2][0][:3].tolist()  # each query finds itself
    assert by_key[a][0] is old_a
    repo.let_go.set()
    assert rebuilt.wait(WAIT)
    with m.reading(repo, a, D) as idx:
        assert idx is not old_a and idx.ntotal == 300


def test_a_remove_waits_for_open_searches_and_is_never_seen_after(two_galleries):
    m, repo, a, _ = two_galleries
    ids, x = repo.data[1]
    gone = ids[:10]
    with m.reading(repo, a, D) as idx:
        before = idx.search(x[:10], 1)[1][:, 0]
        _, removed = _in_thread(lambda: m.remove(a, gone, int(ids.max())))
        assert not removed.wait(BLOCKED), "a remove changed the index under an open search"
        assert idx.ntotal == 300  # the search sees one consistent index
    np.testing.assert_array_equal(before, gone)
    assert removed.wait(WAIT)
    with m.reading(repo, a, D) as idx:
        assert idx.ntotal == 290
        _, got = idx.search(x[:10], 5)
    assert not np.isin(got, gone).any()


def test_searches_of_one_gallery_run_together(two_galleries):
    m, repo, a, _ = two_galleries
    with m.reading(repo, a, D):
        _, other = _in_thread(lambda: m.reading(repo, a, D).__enter__())
        assert other.wait(WAIT), "a second search of the same gallery waited for the first"


def test_concurrent_searches_and_removes_stay_consistent(two_galleries):
    """Many searching threads while another removes faces one batch at a time: no search fails,
    and each sees an index whose size is one of the sizes it passed through."""
    m, repo, a, _ = two_galleries
    ids, x = repo.data[1]
    errors: list[BaseException] = []
    sizes: set[int] = set()
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                with m.reading(repo, a, D) as idx:
                    n = idx.ntotal
                    _, got = idx.search(x[:20], 10)
                    assert got.shape == (20, 10)
                    assert idx.ntotal == n
                    sizes.add(n)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for s in range(0, 100, 10):
        m.remove(a, ids[s:s + 10], int(ids.max()))
    stop.set()
    for t in threads:
        t.join(WAIT)
    assert not errors, errors
    assert sizes <= set(range(200, 301, 10))
    with m.reading(repo, a, D) as idx:
        assert idx.ntotal == 200
