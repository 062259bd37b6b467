"""The ingest pipeline's stages, overlapped: decode -> detect + align -> embed.

Images travel in chunks (``settings.batch_size`` images; on a GPU the chunk is the batch that
the detector and the embedder see). In one process, :class:`StagedAnalyzer` runs each stage in
its own thread joined by queues, so while one chunk is embedded the next is detected and the
one after is decoded; decoding, OpenCV, dlib's HOG, ONNX Runtime and PyTorch all release the
GIL while they work. :class:`WorkerPool` runs one such staged analyzer in each of several
worker processes (for dlib's HOG on several cores: one HOG detector must not be shared by
threads, and processes measured faster than threads for it, see bench/results/ingest.md).

Memory stays flat whatever the number of images: the caller never has more than ``window``
chunks in flight (submitted and not yet taken back), which bounds every queue.

What comes back per image is an :class:`Analysis` (faces with their embeddings, or the error
that stopped the image), and per chunk the seconds each stage spent on it, from which
:class:`StageMeter` gives each stage's rate.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.config import Settings
from facesearch.errors import FaceSearchError
from facesearch.pipeline.decode import DecodedImage, read_image
from facesearch.types import Face, ImageInfo

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "landmarks", "embed")
_END = None  # end of the chunk stream


@dataclass(frozen=True)
class Analysis:
    """One image after the pipeline: its faces, or why it could not be read."""

    info: ImageInfo | None
    faces: tuple[Face, ...] = ()
    error_code: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # this image's share of each stage


@dataclass(frozen=True)
class ChunkResult:
    tag: int
    analyses: tuple[Analysis, ...]
    seconds: dict[str, float]  # wall seconds each stage spent on the whole chunk
    faces: int


class _Failure:
    """An exception raised inside a stage thread or a worker, carried to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StageMeter:
    """Images through each stage and the seconds each stage was busy; thread-safe.

    ``rates()`` is, per stage, the images per second that stage sustains while busy, times the
    number of parallel copies of it (worker processes): the slowest stage bounds the ingest.
    """

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = max(1, parallel)
        self.images: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.faces = 0
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def add(self, stage: str, images: int, seconds: float) -> None:
        with self._lock:
            self.images[stage] = self.images.get(stage, 0) + images
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def add_chunk(self, r: ChunkResult) -> None:
        for st, sec in r.seconds.items():
            self.add(st, len(r.analyses), sec)
        with self._lock:
            self.faces += r.faces

    def rates(self) -> dict[str, float]:
        with self._lock:
            return {st: self.parallel * self.images[st] / self.seconds[st]
                    for st in self.images if self.seconds.get(st, 0.0) > 0}


# -- one process ---------------------------------------------------------------------------------
class StagedAnalyzer:
    """Decode, detect + align and embed chunks of image paths in three overlapping threads.

    ``pipeline`` is a built :class:`~facesearch.pipeline.pipeline.FacePipeline`; decoding runs
    on ``decode_threads`` threads.
    """

    def __init__(self, pipeline: Any, settings: Settings, decode_threads: int = 2) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.decode_threads = max(1, decode_threads)
        self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=True, cancel_futures=True)

    # -- the stages, each usable on its own --------------------------------------------------
    def _read(self, path: str) -> DecodedImage | Analysis:
        try:
            return read_image(Path(path), max_pixels=self.settings.max_pixels,
                              max_bytes=self.settings.max_file_bytes)
        except FaceSearchError as e:
            return Analysis(None, error_code=e.code, error=e.message)

    def decode(self, paths: Sequence[str]) -> list[DecodedImage | Analysis]:
        return list(self._decoder.map(self._read, paths))

    def detect_align(self, decoded: list[DecodedImage | Analysis]) -> tuple[list, list, dict[str, float]]:
        """Detection batched over the chunk's images, then landmarks and chips per face."""
        images = [d.rgb for d in decoded if isinstance(d, DecodedImage)]
        t0 = time.perf_counter()
        dets = self.pipeline.detector.detect_batch(images) if images else []
        t1 = time.perf_counter()
        prepared = self.pipeline.prepare(images, dets)
        t2 = time.perf_counter()
        return decoded, prepared, {"detect": t1 - t0, "landmarks": t2 - t1}

    def embed(self, decoded: list[DecodedImage | Analysis], prepared: list,
              seconds: dict[str, float]) -> tuple[list[Analysis], dict[str, float]]:
        """All chips of the chunk in one batched call; one Analysis per image, in order."""
        t0 = time.perf_counter()
        emb = self.pipeline.embed_prepared(prepared)
        faces = self.pipeline.faces(prepared, emb)
        seconds = {**seconds, "embed": time.perf_counter() - t0}
        n = max(1, len(decoded))
        share = {k: v / n for k, v in seconds.items()}
        out: list[Analysis] = []
        it = iter(faces)
        for d in decoded:
            if isinstance(d, Analysis):
                out.append(d)
            else:
                out.append(Analysis(d.info, tuple(next(it)), timings=share))
        return out, seconds

    def analyze(self, paths: Sequence[str]) -> list[Analysis]:
        """One chunk, the stages one after the other."""
        t0 = time.perf_counter()
        decoded = self.decode(paths)
        d, p, sec = self.detect_align(decoded)
        sec["decode"] = time.perf_counter() - t0 - sum(sec.values())
        return self.embed(d, p, sec)[0]

    # -- overlapped ---------------------------------------------------------------------------
    def stream(self, chunks: Iterable[tuple[int, Sequence[str]]], depth: int = 2) -> Iterator[ChunkResult]:
        """``(tag, paths)`` chunks in, :class:`ChunkResult` out in the same order, with the
        three stages in their own threads. ``depth`` bounds each hand-over queue; a failure in
        any stage is raised here."""
        q_dec: queue.Queue[Any] = queue.Queue(depth)
        q_emb: queue.Queue[Any] = queue.Queue(depth)
        q_out: queue.Queue[Any] = queue.Queue(depth)
        stop = threading.Event()

        def put(q: queue.Queue[Any], item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue[Any]) -> Any:
            while not stop.is_set():
                try:
                    return q.get(timeout=0.2)
                except queue.Empty:
                    continue
            return _END

        def decode_loop() -> None:
            try:
                for tag, paths in chunks:
                    t0 = time.perf_counter()
                    decoded = self.decode(paths)
                    if not put(q_dec, (tag, decoded, time.perf_counter() - t0)):
                        return
                put(q_dec, _END)
            except BaseException as e:  # noqa: BLE001 - carried to the caller
                put(q_dec, _Failure(e))

        def relay(q_in: queue.Queue[Any], q_out_: queue.Queue[Any], step: Any) -> None:
            """Take from ``q_in``, apply ``step``, hand on; the end of the stream and a
            failure upstream are passed on as they are, a failure here ends the stream."""
            while True:
                item = get(q_in)
                if item is _END or isinstance(item, _Failure):
                    put(q_out_, item)
                    return
                try:
                    out = step(item)
                except BaseException as e:  # noqa: BLE001 - carried to the caller
                    put(q_out_, _Failure(e))
                    return
                if not put(q_out_, out):
                    return

        def detect_step(item: tuple[int, list[Any], float]) -> tuple[int, list, list, dict[str, float]]:
            tag, decoded, dec_s = item
            d, p, sec = self.detect_align(decoded)
            sec["decode"] = dec_s
            return tag, d, p, sec

        def embed_step(item: tuple[int, list, list, dict[str, float]]) -> ChunkResult:
            tag, d, p, sec = item
            analyses, sec = self.embed(d, p, sec)
            return ChunkResult(tag, tuple(analyses), sec, sum(len(a.faces) for a in analyses))

        threads = [threading.Thread(target=decode_loop, name="ingest-decode", daemon=True),
                   threading.Thread(target=relay, args=(q_dec, q_emb, detect_step),
                                    name="ingest-detect", daemon=True),
                   threading.Thread(target=relay, args=(q_emb, q_out, embed_step),
                                    name="ingest-embed", daemon=True)]
        for t in threads:
            t.start()
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)


class ChunkFeeder:
    """A bounded hand-over of chunks from the caller to a consumer thread or process: the
    caller ``put``s, the consumer iterates; ``close`` ends the stream."""

    def __init__(self, q: Any) -> None:
        self.q = q

    def put(self, tag: int, paths: Sequence[str]) -> None:
        self.q.put((tag, list(paths)))

    def close(self) -> None:
        self.q.put(_END)

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        while True:
            item = self.q.get()
            if item is _END:
                return
            yield item


# -- several processes ---------------------------------------------------------------------------
def _worker_main(settings_json: str, inq: Any, outq: Any, decode_threads: int, parent: int) -> None:
    """A worker process: builds the pipeline once, then runs the staged analyzer over the
    chunks it takes from ``inq``; exits when told to or when its parent is gone."""
    from facesearch.pipeline.build import build_pipeline

    try:
        import cv2

        cv2.setNumThreads(1)  # the parallelism is the worker processes; no nested thread pools
        settings = Settings.model_validate_json(settings_json)
        analyzer = StagedAnalyzer(build_pipeline(settings), settings, decode_threads)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        outq.put(_Failure(RuntimeError(f"ingest worker could not start: {e}")))
        return

    def chunks() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                item = inq.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # the parent was killed: stop, the next run resumes
                continue
            if item is _END:
                return
            yield item

    try:
        for r in analyzer.stream(chunks()):
            outq.put(r)
    except BaseException as e:  # noqa: BLE001
        outq.put(_Failure(RuntimeError(f"ingest worker failed: {type(e).__name__}: {e}")))
    finally:
        analyzer.close()
    outq.put(_END)


class WorkerPool:
    """``workers`` processes, each running a :class:`StagedAnalyzer`; chunks are handed out
    through one shared queue (whoever is free takes the next), results come back in the
    order they finish."""

    def __init__(self, settings: Settings, workers: int, decode_threads: int = 1) -> None:
        # spawn, never fork: a fork copies the locks of the parent's running threads (OpenCV's,
        # ONNX Runtime's, the progress bar's) and CUDA does not survive one
        ctx = mp.get_context("spawn")
        self.inq: Any = ctx.Queue()
        self.outq: Any = ctx.Queue()
        js = settings.model_dump_json()
        self.procs = [ctx.Process(target=_worker_main, args=(js, self.inq, self.outq, decode_threads, os.getpid()),
                                  daemon=True, name=f"ingest-worker-{i}") for i in range(workers)]
        for p in self.procs:
            p.start()
        self._ended = 0

    def put(self, tag: int, paths: Sequence[str]) -> None:
        self.inq.put((tag, list(paths)))

    def get(self) -> ChunkResult:
        """The next finished chunk (blocks); a worker's failure is raised here."""
        while True:
            try:
                item = self.outq.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self.procs):
                    raise RuntimeError("every ingest worker process has exited") from None
                continue
            if item is _END:
                self._ended += 1
                continue
            if isinstance(item, _Failure):
                raise item.error
            return item

    def close(self) -> None:
        for _ in self.procs:
            self.inq.put(_END)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def run_chunks(chunks: Iterable[Sequence[str]], *, settings: Settings, pipeline: Any = None,
               workers: int = 1, window: int | None = None, decode_threads: int = 2,
               meter: StageMeter | None = None, pool: WorkerPool | None = None,
               ) -> Iterator[tuple[int, ChunkResult]]:
    """Analyze chunks of image paths with the stages overlapped; yields ``(tag, result)`` with
    ``tag`` the chunk's position, as chunks finish. At most ``window`` chunks are in flight.
    ``workers`` <= 1 runs the stages as threads of this process on ``pipeline``; more runs
    that many worker processes (each builds its own pipeline from ``settings``), or uses
    ``pool``, already started, which stays open for the caller."""
    if pool is not None:
        workers = len(pool.procs)
    window = window or max(2, 2 * max(1, workers) + 2)
    if workers <= 1 and pool is None:
        if pipeline is None:
            from facesearch.pipeline.build import build_pipeline

            pipeline = build_pipeline(settings)
        analyzer = StagedAnalyzer(pipeline, settings, decode_threads)
        feeder = ChunkFeeder(queue.Queue())
        results = analyzer.stream(iter(feeder), depth=2)
        submit, take = feeder.put, results.__next__

        def finish() -> None:
            feeder.close()  # a decode thread still waiting for chunks ends
            results.close()
            analyzer.close()
    else:
        own = pool is None
        workers_pool = pool or WorkerPool(settings, workers, decode_threads)
        submit, take = workers_pool.put, workers_pool.get

        def finish() -> None:
            if own:
                workers_pool.close()
    def one() -> ChunkResult:
        r = take()
        if meter:
            meter.add_chunk(r)
        return r

    # every submitted chunk gives exactly one result (or raises), so counting is enough
    inflight = 0
    try:
        for tag, chunk in enumerate(chunks):
            submit(tag, chunk)
            inflight += 1
            while inflight >= window:
                r = one()
                inflight -= 1
                yield r.tag, r
        while inflight:
            r = one()
            inflight -= 1
            yield r.tag, r
    finally:
        finish()


def embeddings_of(results: Iterable[ChunkResult]) -> np.ndarray:
    """All embeddings of acceptable faces, stacked (for benchmarks)."""
    vecs = [f.embedding for r in results for a in r.analyses for f in a.faces if f.quality.acceptable]
    return np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)
