from __future__ import annotations

import csv
from pathlib import Path

import pytest

from facesearch.facade import FaceSearch

GALLERY_BASIS = "Test fixture: faces-dev photos from public repositories"


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "subject", "source_uri", "legal_basis", "collected_at"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


@pytest.fixture(scope="session")
def dev_split(dev_labels: dict[str, list[Path]]) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Gallery: the first two photos of each identity; probes: the third photo where there is one."""
    gallery, probes = [], []
    for ident, photos in dev_labels.items():
        gallery += [(ident, p) for p in photos[:2]]
        if len(photos) > 2:
            probes.append((ident, photos[2]))
    return gallery, probes


@pytest.fixture(scope="session")
def dev_home(tmp_path_factory: pytest.TempPathFactory, dev_split) -> Path:  # noqa: ANN001
    """A home folder holding gallery 'dev': two photos of each of the 33 dev identities."""
    home = tmp_path_factory.mktemp("dev-home")
    gallery, _ = dev_split
    manifest = write_manifest(home / "gallery.csv", [
        {"path": str(p), "subject": ident, "source_uri": f"file://faces-dev/{ident}/{p.name}",
         "legal_basis": GALLERY_BASIS, "collected_at": "2026-01-01"}
        for ident, p in gallery
    ])
    from facesearch.services.ingest import manifest_items

    with FaceSearch(home=home, workers=2) as fs:
        summary = fs.ingest(manifest_items(manifest), gallery="dev")
    assert summary.errors == 0, summary.error_details
    assert summary.ingested == len(gallery)
    return home
