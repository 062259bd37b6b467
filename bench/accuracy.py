"""Accuracy study on the dev set: what flip averaging, templates, quality weighting and score
normalisation do to verification and open-set identification.

    python bench/accuracy.py [--data DIR] [--splits 20]

Embeds every dev photo once (largest face, with and without the mirrored chip), then runs:
- verification over all pairs: best accuracy and TAR at FAR=0.001;
- open-set identification over random splits of the identities: half enrolled (every image
  but one per identity), half used as non-mated probes; rank-1 and FNIR at FPIR=0.01 for
  single-image enrolment vs subject templates, fused by max, mean template, or both;
- the calibrated threshold (FPIR=0.01 on the non-mated probes, all splits pooled).
Writes bench/results/accuracy.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from facesearch.config import Settings
from facesearch.eval.metrics import best_accuracy_threshold, fnir_at_fpir, tar_at_far
from facesearch.pipeline.decode import read_image
from facesearch.pipeline.build import build_pipeline

DEFAULT_DATA = Path(os.environ.get("FACESEARCH_DEV_DATA", Path(__file__).resolve().parents[2] / "shared/data/faces-dev"))


def embed_all(data: Path, model: str, landmarks: str) -> dict[str, np.ndarray]:
    s = Settings(jitter_flip=False, model=model, landmarks=landmarks)
    p = build_pipeline(s)
    files = sorted(data.glob("*/*.jpg"))
    labels, plain, flipped, quality, low_plain, low_flipped = [], [], [], [], [], []
    for f in files:
        img = read_image(f, max_pixels=s.max_pixels)
        dets = p.detect(img.rgb)
        if not dets:
            continue
        _, chips = p.chips(img.rgb, dets[:1])
        low = degrade(chips[0])[None]
        e = p.embedder.embed(np.concatenate([chips, chips[:, :, ::-1], low, low[:, :, ::-1]]))
        faces = p.analyze(img.rgb, dets[:1])
        labels.append(f.parent.name)
        plain.append(e[0])
        flipped.append(e[1])
        low_plain.append(e[2])
        low_flipped.append(e[3])
        quality.append(faces[0].quality.score)
    return {"labels": np.array(labels), "plain": np.stack(plain), "flipped": np.stack(flipped),
            "quality": np.array(quality), "n_files": np.array(len(files)),
            "low_plain": np.stack(low_plain), "low_flipped": np.stack(low_flipped)}


def degrade(chip: np.ndarray) -> np.ndarray:
    """A low-quality probe: the 150 px chip down to 36 px, JPEG quality 40, and back."""
    import cv2

    small = cv2.resize(chip, (36, 36), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 40])
    small = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.resize(small, chip.shape[1::-1], interpolation=cv2.INTER_LINEAR)


def build_pack(model: str):  # noqa: ANN201
    from facesearch.pipeline.build import packs_for

    return packs_for(Settings()).get(model)


def norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def verification(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    sims = emb @ emb.T
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    pos, neg = sims[iu][same], sims[iu][~same]
    return {"pairs_same": int(len(pos)), "pairs_diff": int(len(neg)),
            "accuracy": best_accuracy_threshold(pos, neg).accuracy, "tar_at_far_0.001": tar_at_far(pos, neg, 0.001)}


def identification(emb, labels, quality, splits: int, seed: int = 0, probe_emb=None) -> dict[str, dict[str, float]]:
    probe_emb = emb if probe_emb is None else probe_emb
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    modes = ["single", "max", "template", "template_q", "max+template", "max+template/margin"]
    res = {m: {"rank1": [], "mated": [], "nonmated": []} for m in modes}
    for _ in range(splits):
        perm = rng.permutation(ids)
        enrolled, outside = perm[: len(ids) // 2], perm[len(ids) // 2:]
        gal_idx, probe_idx = [], []
        for ident in enrolled:
            idx = rng.permutation(np.flatnonzero(labels == ident))
            probe_idx.append(idx[0])
            gal_idx.extend(idx[1:])
        nonmated_idx = [i for ident in outside for i in np.flatnonzero(labels == ident)]
        gal_idx = np.array(gal_idx)
        g_lab = labels[gal_idx]
        subjects = np.unique(g_lab)
        first = np.array([gal_idx[g_lab == s][0] for s in subjects])
        tmpl = norm(np.stack([emb[gal_idx[g_lab == s]].mean(0) for s in subjects]))
        w = np.clip(quality[gal_idx], 0.05, None)  # as the search service weights templates
        tmpl_q = norm(np.stack([(emb[gal_idx[g_lab == s]] * w[g_lab == s, None]).sum(0) for s in subjects]))

        def subject_scores(pi: int) -> dict[str, np.ndarray]:
            q = probe_emb[pi]
            s_faces = emb[gal_idx] @ q
            s_max = np.array([s_faces[g_lab == s].max() for s in subjects])
            s_t = tmpl @ q
            out = {"single": emb[first] @ q, "max": s_max, "template": s_t,
                   "template_q": tmpl_q @ q, "max+template": (s_max + tmpl_q @ q) / 2}
            mt = out["max+template"]
            srt = np.sort(mt)[::-1]
            out["max+template/margin"] = mt - (srt[1] if len(srt) > 1 else 0) * 0.5
            return out

        for pi in probe_idx:
            sc = subject_scores(pi)
            true = np.flatnonzero(subjects == labels[pi])[0]
            for m in modes:
                s = sc[m]
                top = int(np.argmax(s))
                res[m]["rank1"].append(top == true)
                res[m]["mated"].append(s[true] if top == true else None)
        for pi in nonmated_idx:
            sc = subject_scores(pi)
            for m in modes:
                res[m]["nonmated"].append(float(sc[m].max()))
    out = {}
    for m in modes:
        r = fnir_at_fpir(res[m]["mated"], res[m]["nonmated"], 0.01)
        out[m] = {"rank1": float(np.mean(res[m]["rank1"])), "fnir_at_fpir_0.01": r.fnir, "threshold": r.threshold,
                  "mated": len(res[m]["mated"]), "nonmated": len(res[m]["nonmated"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--model", default="dlib", help="model pack (a restricted pack needs "
                    "FACESEARCH_ACCEPT_MODEL_LICENSE)")
    ap.add_argument("--landmarks", default="auto", choices=["auto", "dlib"],
                    help="auto: the detector's own 5 points where the pack aligns with them")
    args = ap.parse_args()
    t0 = time.time()
    if args.cache and args.cache.exists():
        d = dict(np.load(args.cache))
    else:
        d = embed_all(args.data, args.model, args.landmarks)
        if args.cache:
            np.savez(args.cache, **d)
    labels = d["labels"]
    variants = {"plain": (norm(d["plain"]), None), "flip-avg": (norm(d["plain"] + d["flipped"]), None),
                "plain, low-res probes": (norm(d["plain"]), norm(d["low_plain"])),
                "flip-avg, low-res probes": (norm(d["plain"] + d["flipped"]), norm(d["low_plain"] + d["low_flipped"]))}
    report = {"faces": int(len(labels)), "files": int(d["n_files"]), "identities": int(len(np.unique(labels))),
              "splits": args.splits, "variants": {}}
    for name, (emb, probe) in variants.items():
        report["variants"][name] = {
            "verification": verification(emb if probe is None else probe, labels),
            "identification": identification(emb, labels, d["quality"], args.splits, probe_emb=probe)}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    pack = build_pack(args.model)
    report["model"] = pack.id
    report["model_terms"] = pack.terms()
    report["landmarks"] = args.landmarks
    lines = [f"# Accuracy study of model pack {pack.id} (landmarks: {args.landmarks}) on faces-dev ({report['files']} photos, {report['faces']} with a face, "
             f"{report['identities']} identities), {date.today()}, {machine}", "",
             "| embedding | pair accuracy | TAR@FAR=0.001 | gallery | rank-1 | FNIR@FPIR=0.01 | threshold |",
             "|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        ver = v["verification"]
        for m, r in v["identification"].items():
            fn = "n/a" if r["fnir_at_fpir_0.01"] is None else f"{r['fnir_at_fpir_0.01']:.3f}"
            lines.append(f"| {name} | {ver['accuracy']:.4f} | {ver['tar_at_far_0.001']:.4f} | {m} | "
                         f"{r['rank1']:.3f} | {fn} | {r['threshold']:.4f} |")
    lines.append("")
    lines.append(f"Identification: {args.splits} random splits; each enrols half the identities (all but one "
                 "image each) and probes with the held-out image (mated) and every image of the other half "
                 "(non-mated). 'single' enrols one image per subject. 'low-res probes': every probe chip "
                 "is reduced to 36 px, JPEG-compressed at quality 40 and scaled back (gallery stays clean; "
                 "pair figures then compare low-res with low-res).")
    lines.append(f"Model pack licence: {pack.license} (commercial use: {pack.commercial_use}).")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stem = f"accuracy-{pack.id}" + ("" if args.landmarks == "auto" else f"-{args.landmarks}-landmarks")
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    # The shipped calibration: the search service's configuration (flip averaging, max+template
    # fusion) on clean photos, FPIR = 0.01 over all splits' non-mated probes.
    ident = report["variants"]["flip-avg"]["identification"]["max+template"]
    if args.landmarks != "auto":
        print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
        return
    cal = {"model": pack.embedder, "threshold": round(ident["threshold"], 4), "fpir": 0.01,
           "gallery_size": int(len(np.unique(labels)) // 2),
           "source": f"faces-dev ({args.splits} splits, {ident['nonmated']} non-mated searches, "
                     f"bench/accuracy.py, {date.today()})"}
    cal_dir = Path(__file__).resolve().parents[1] / "src/facesearch/models/calibration"
    cal_dir.mkdir(exist_ok=True)
    (cal_dir / f"{pack.embedder}.json").write_text(json.dumps(cal, indent=1) + "\n")
    print(f"calibration: {cal}")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
