"""`facesearch index tune` through the CLI on a real ingest (66 faces: exact search, so nothing to
tune); the re-tuning itself is tested on IVF-PQ indexes in tests/unit/test_index.py."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from facesearch.cli import main


def test_index_tune_reports_each_gallery_and_checks_its_options(dev_home: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["index", "tune", "--target-recall", "0.95", "--json", "--home", str(dev_home)])
    assert res.exit_code == 0, res.output
    (report,) = json.loads(res.stdout)
    assert report["gallery"] == "dev" and report["backend"] == "faiss" and report["faces"] == 66
    assert report["tuned"] is False and report["kind"] == "flat"
    assert report["reason"].startswith("exact search") and report["target_recall"] == 0.95
    plain = runner.invoke(main, ["index", "tune", "--gallery", "dev", "--home", str(dev_home)])
    assert plain.exit_code == 0 and "dev: 66 faces, not tuned (exact search" in plain.output
    for bad in (["--target-recall", "1.5"], ["--target-recall", "0"], ["--queries", "3"]):
        res = runner.invoke(main, ["index", "tune", *bad, "--home", str(dev_home)])
        assert res.exit_code == 2 and "Invalid value" in res.output, (bad, res.output)
    res = runner.invoke(main, ["index", "tune", "--gallery", "nope", "--home", str(dev_home)])
    assert res.exit_code != 0 and "nope" in res.output
