"""Shared fixtures: the dev photo set and throw-away home folders."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from tests.milvus_server import milvus_server, milvus_uri  # noqa: F401 - one Milvus server per session

REPO = Path(__file__).resolve().parents[1]


def dev_data_path() -> Path:
    env = os.environ.get("FACESEARCH_DEV_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data" / "faces-dev").resolve()


@pytest.fixture(scope="session")
def dev_data() -> Path:
    p = dev_data_path()
    if not (p / "labels.csv").exists():
        pytest.skip(f"dev photo set not found at {p} (set FACESEARCH_DEV_DATA)")
    return p


@pytest.fixture(scope="session")
def dev_labels(dev_data: Path) -> dict[str, list[Path]]:
    """identity -> photos sorted by number."""
    out: dict[str, list[Path]] = {}
    with (dev_data / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["identity"], []).append(dev_data / row["file"])
    for k in out:
        out[k].sort(key=lambda p: int(p.stem))
    return dict(sorted(out.items()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("FACESEARCH_RUN_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set FACESEARCH_RUN_SLOW=1"))
        if "gpu" in item.keywords and os.environ.get("FACESEARCH_DEVICE") != "cuda":
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (FACESEARCH_DEVICE=cuda)"))


_KEEP_ENV = {"FACESEARCH_DEV_DATA", "FACESEARCH_TEST_POSTGRES_URL", "FACESEARCH_RUN_SLOW", "FACESEARCH_DEVICE",
             "FACESEARCH_TEST_MILVUS_URI"}


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests do not inherit an operator's FACESEARCH_* settings (a licence acceptance, a home)."""
    for k in list(os.environ):
        if k.startswith("FACESEARCH_") and k not in _KEEP_ENV:
            monkeypatch.delenv(k)
