"""The demo: ingest the bundled sample photos (dlib's examples/johns crops, Boost Software
License 1.0, see LICENSE-johns.txt) into a home folder and search with a held-out photo."""
from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

JOHNS = Path(__file__).parent / "johns"
DLIB_COMMIT = "3d40bf5790ca9073c160cebb898800d9f33e12ab"
LEGAL_BASIS = "Demonstration only: sample photos distributed with dlib (Boost Software License 1.0)"


def _photos() -> list[Path]:
    return sorted(JOHNS.glob("*/*.jpg"), key=lambda p: (p.parent.name, int(p.stem)))


def run_demo(home: Path | None, echo: Callable[[str], None] = print) -> dict[str, object]:
    from facesearch.facade import FaceSearch

    tmp = None
    if home is None:
        tmp = Path(tempfile.mkdtemp(prefix="facesearch-demo-"))
        home = tmp
    try:
        photos = _photos()
        probe = next(p for p in photos if p.parent.name == "John_Simm" and p.stem == "7")
        gallery = [p for p in photos if p != probe]
        manifest = home / "demo-manifest.csv"
        home.mkdir(parents=True, exist_ok=True)
        with manifest.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "subject", "source_uri", "legal_basis", "collected_at"])
            for p in gallery:
                w.writerow([str(p), p.parent.name.replace("_", " "),
                            f"dlib repository {DLIB_COMMIT[:12]} examples/johns/{p.parent.name}",
                            LEGAL_BASIS, "2017-01-01"])
        echo(f"home folder: {home}")
        with FaceSearch(home=home, workers=1) as fs:
            from facesearch.services.ingest import manifest_items

            summary = fs.ingest(manifest_items(manifest), gallery="demo")
            echo(f"ingested {summary.ingested} photos of {len({p.parent.name for p in gallery})} people: "
                 f"{summary.faces} faces, {summary.no_face} without a face, {summary.errors} errors")
            result = fs.search(probe, gallery="demo", case_number="DEMO-0001",
                               purpose="demonstration of facesearch", top_k=3)
        echo(f"searched with a held-out photo of John Simm ({probe.name}); case DEMO-0001")
        echo("Candidates are investigative leads, not identifications: each needs confirmation by a person.")
        echo(f"threshold {result.threshold.value:.3f}: {result.threshold.meaning}")
        for rank, c in enumerate(result.faces[0].candidates, 1):
            flag = "above" if c.score > result.threshold.value else "below"
            echo(f"  {rank}. {c.subject:<16} score {c.score:.3f} ({flag} threshold)  source: {c.source_uri}")
        return result.to_json()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
