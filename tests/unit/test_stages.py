"""The overlapped ingest stages (pipeline/stages.py): the same faces as the plain pipeline, in
threads and in worker processes, errors per image, and a bounded number of chunks in flight."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.config import Settings
from facesearch.pipeline.build import build_pipeline
from facesearch.pipeline.decode import read_image
from facesearch.pipeline.stages import StageMeter, chunked, run_chunks


@pytest.fixture(scope="module")
def setup(dev_data: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("stages")
    settings = Settings(home=tmp / "home", batch_size=3)
    bad = tmp / "notes.jpg"
    bad.write_text("not a photo")
    photos = [str(p) for p in sorted(dev_data.rglob("*.jpg"))[::23][:6]]
    paths = photos[:2] + [str(bad)] + photos[2:]
    return settings, build_pipeline(settings), paths


def _reference(pipeline, settings: Settings, path: str):  # noqa: ANN001, ANN202
    img = read_image(Path(path), max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes).rgb
    return pipeline.analyze_batch([img])[0]


def _check(results, paths: list[str], pipeline, settings: Settings) -> None:  # noqa: ANN001
    analyses = [a for _, r in sorted(results, key=lambda t: t[0]) for a in r.analyses]
    assert len(analyses) == len(paths)
    for path, a in zip(paths, analyses):
        if path.endswith("notes.jpg"):
            assert a.info is None and a.error_code == "not_an_image"
            continue
        ref = _reference(pipeline, settings, path)
        assert a.info is not None and len(a.faces) == len(ref) >= 1
        for f, g in zip(a.faces, ref):
            assert f.bbox == g.bbox
            assert float(np.dot(f.embedding, g.embedding)) > 0.99999
        assert set(a.timings) == {"decode", "detect", "landmarks", "embed"}


def test_threaded_stages_give_the_pipelines_faces_and_per_image_errors(setup) -> None:  # noqa: ANN001
    settings, pipeline, paths = setup
    meter = StageMeter()
    results = list(run_chunks(chunked(paths, 3), settings=settings, pipeline=pipeline, workers=1, meter=meter))
    assert [t for t, _ in results] == [0, 1, 2]  # one process: chunks come back in order
    _check(results, paths, pipeline, settings)
    rates = meter.rates()
    assert set(rates) == {"decode", "detect", "landmarks", "embed"} and all(v > 0 for v in rates.values())


def test_worker_processes_give_the_same_faces(setup) -> None:  # noqa: ANN001
    settings, pipeline, paths = setup
    results = list(run_chunks(chunked(paths, 2), settings=settings, workers=2))
    assert sorted(t for t, _ in results) == [0, 1, 2, 3]
    _check(results, paths, pipeline, settings)


def test_no_more_than_the_window_of_chunks_is_in_flight(setup) -> None:  # noqa: ANN001
    settings, pipeline, paths = setup
    pulled = 0

    def chunks():  # noqa: ANN202
        nonlocal pulled
        for i in range(8):
            pulled += 1
            yield [paths[i % 2]]

    seen = 0
    for _ in run_chunks(chunks(), settings=settings, pipeline=pipeline, workers=1, window=2):
        seen += 1
        assert pulled - seen <= 2, (pulled, seen)
    assert seen == 8
