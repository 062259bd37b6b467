"""`facesearch eval verify|identify --json` on small LFW-format sets built from the dev photos."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import main

IDENTS = ["dlib_John_Salley", "dlib_John_Savage", "dlib_John_Simm", "faceapi_bbt_amy", "faceapi_bbt_raj"]


@pytest.fixture(scope="module")
def lfw_root(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Path:  # noqa: ANN001
    root = tmp_path_factory.mktemp("lfw")
    for ident in IDENTS:
        (root / ident).mkdir()
        for i, p in enumerate(dev_labels[ident][:3], 1):
            (root / ident / f"{ident}_{i:04d}.jpg").write_bytes(p.read_bytes())
    # a single-image identity: enrolled as a distractor by the identify protocol
    (root / "zz_single").mkdir()
    (root / "zz_single" / "zz_single_0001.jpg").write_bytes(dev_labels["fr_obama"][0].read_bytes())
    return root


def test_eval_verify_json(lfw_root: Path, tmp_path: Path) -> None:
    lines = ["2 3"]
    for fold in range(2):
        a, b, c = IDENTS[fold * 2], IDENTS[fold * 2 + 1], IDENTS[4]
        lines += [f"{a} 1 2", f"{b} 1 3", f"{c} {fold + 1} 3"]
        lines += [f"{a} 1 {b} 1", f"{b} 2 {c} 1", f"{a} 3 {c} 2"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(main, ["eval", "verify", "--root", str(lfw_root), "--pairs", str(pairs), "--json",
                                  "--home", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert {"protocol", "pairs", "accuracy", "accuracy_std", "tar_at_far_0.001", "no_face"} <= set(out)
    assert out["protocol"] == "verify" and out["pairs"] == 12 and out["no_face"] == 0
    assert out["accuracy"] >= 0.9


def test_eval_identify_json(lfw_root: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["eval", "identify", "--root", str(lfw_root), "--json", "--home", str(tmp_path)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert {"protocol", "gallery", "mated", "nonmated", "no_face", "rank1", "rank5",
            "fnir_at_fpir_0.01", "threshold"} <= set(out)
    assert out["model"] == "dlib" and out["model_terms"]["commercial_use"] is True
    assert (out["protocol"], out["gallery"], out["mated"], out["nonmated"]) == ("identify", 6, 10, 0)
    assert out["rank1"] >= 0.9 and out["rank5"] == 1.0
    assert out["threshold"] is None  # no non-mated probes in this set
