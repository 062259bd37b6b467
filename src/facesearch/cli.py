"""The command line: a thin skin over the services."""
from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from facesearch.config import Settings
from facesearch.errors import FaceSearchError

log = logging.getLogger("facesearch")


def _settings(home: str | None, **overrides: Any) -> Settings:
    kw = {k: v for k, v in overrides.items() if v is not None}
    if home:
        kw["home"] = Path(home).expanduser()
    root = click.get_current_context(silent=True)
    accepted = (root.find_root().obj or {}).get("accept_model_license") if root else None
    if accepted:
        kw["accept_model_license"] = accepted
    return Settings(**kw)


def _home_option(f: Callable) -> Callable:
    return click.option("--home", type=click.Path(file_okay=False), default=None,
                        help="Data folder (default: $FACESEARCH_HOME or ~/.facesearch).")(f)


def _domain_errors(f: Callable) -> Callable:
    """Domain errors become one line on stderr and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except FaceSearchError as e:
            click.echo(f"error [{e.code}]: {e.message}", err=True)
            sys.exit(1)

    return wrapper


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, default=str))


def _reports(home: str | None, run: Callable[[Any], list[Any]], as_json: bool) -> list[Any]:
    """Run a service over an opened installation (closed afterwards); with ``as_json`` print its
    reports as a JSON list and return none to print as text."""
    from facesearch.services.context import AppContext

    ctx = AppContext(_settings(home))
    try:
        reports = run(ctx)
    finally:
        ctx.close()
    if as_json:
        _emit_json([r.to_json() for r in reports])
        return []
    return reports


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option("--accept-model-license", default=None, metavar="TOKEN",
              help="Accept the licence of a restricted model pack, e.g. insightface-non-commercial "
                   "(or set FACESEARCH_ACCEPT_MODEL_LICENSE).")
@click.version_option(package_name="facesearch")
@click.pass_context
def main(ctx: click.Context, verbose: int, accept_model_license: str | None) -> None:
    """facesearch: face search over galleries you lawfully hold.

    Every search needs a case number and a purpose, and its candidates are investigative
    leads that a person must confirm, never identifications.
    """
    ctx.obj = {"accept_model_license": accept_model_license}
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# -- ingest -------------------------------------------------------------------------------------
@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--gallery", required=True, help="Gallery to add the photos to (created if new).")
@click.option("--legal-basis", default=None,
              help="Legal basis for holding these photos (required unless every manifest row has one).")
@click.option("--subject-from-folder", is_flag=True, help="Use each photo's folder name as its subject label.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: number of cores).")
@click.option("--model", default=None, help="Model pack for a new gallery (default: $FACESEARCH_MODEL or dlib).")
@click.option("--collector", default=None,
              help="Who collected these photos (default: the operating-system user running the ingest).")
@click.option("--agency", default=None, help="The agency a new gallery belongs to (the service needs one).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_home_option
@_domain_errors
def ingest(source: Path, gallery: str, legal_basis: str | None, subject_from_folder: bool,
           workers: int | None, model: str | None, collector: str | None, agency: str | None, as_json: bool,
           home: str | None) -> None:
    """Ingest a folder of photos or a CSV/JSONL manifest (path, subject, source_uri,
    legal_basis, collected_at) into a gallery. Safe to re-run: known images are skipped."""
    from facesearch.facade import FaceSearch
    from facesearch.services.ingest import items_from

    items = items_from(source, subject_from_folder)
    with FaceSearch(settings=_settings(home, model=model)) as fs, _Progress("ingest", len(items)) as bar:
        import getpass

        summary = fs.ingest(items, gallery=gallery, legal_basis=legal_basis, progress=bar.update,
                            workers=workers, collector=collector or getpass.getuser(), agency=agency)
    if as_json:
        _emit_json(summary.to_json())
        return
    click.echo(
        f"{summary.images} images: {summary.ingested} ingested, {summary.duplicates} already present, "
        f"{summary.faces} faces stored, {summary.no_face} with no face, "
        f"{summary.rejected_quality} faces rejected for quality, {summary.errors} errors"
    )
    for reason, n in sorted(summary.reasons.items()):
        click.echo(f"  {reason}: {n}")
    for d in summary.error_details[:50]:
        click.echo(f"  error {d['path']}: {d['reason']}")
    if len(summary.error_details) > 50:
        click.echo(f"  ... and {len(summary.error_details) - 50} more errors (use --json for all)")


class _Progress:
    """A progress bar on stderr with rate and ETA (silent when stderr is not a terminal)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self._p = None
        self._task = None

    def __enter__(self) -> "_Progress":
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                   TextColumn, TimeRemainingColumn)
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:  # noqa: ANN001
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} img/s" if speed else "? img/s")

        console = Console(stderr=True)
        self._p = Progress(TextColumn(f"{self.what}"), BarColumn(), MofNCompleteColumn(),
                           TaskProgressColumn(), Rate(), TextColumn("ETA"), TimeRemainingColumn(),
                           TextColumn("{task.fields[faces]} faces"), TextColumn("{task.fields[stages]}"),
                           console=console, disable=not console.is_terminal, transient=False)
        self._p.__enter__()
        self._task = self._p.add_task(self.what, total=self.total, faces=0, stages="")
        return self

    def update(self, done: int, total: int, summary: Any = None) -> None:
        if self._p is not None:
            rates = getattr(summary, "stage_rates", None) or {}
            stages = " ".join(f"{k} {v:.1f}/s" for k, v in rates.items())  # each ingest stage's rate
            self._p.update(self._task, completed=done, total=total, faces=getattr(summary, "faces", "-"),
                           stages=stages)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


# -- search -------------------------------------------------------------------------------------
@main.command()
@click.argument("probe", type=click.Path(path_type=Path))
@click.option("--gallery", required=True)
@click.option("--case", "case_number", required=True, help="Case number (recorded with the search).")
@click.option("--purpose", required=True, help="Purpose of the search (recorded with the search).")
@click.option("--top-k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--all-faces", is_flag=True, help="Search every face of the probe, not only the largest.")
@click.option("--face-index", type=click.IntRange(0), default=None,
              help="Search this face of the probe (0 = largest).")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def search(probe: Path, gallery: str, case_number: str, purpose: str, top_k: int, all_faces: bool,
           face_index: int | None, as_json: bool, home: str | None) -> None:
    """Search a gallery with the face(s) of a probe photo."""
    from facesearch.facade import FaceSearch

    with FaceSearch(settings=_settings(home)) as fs:
        result = fs.search(probe, gallery=gallery, case_number=case_number, purpose=purpose, top_k=top_k,
                           all_faces=all_faces, face_index=face_index)
    if as_json:
        _emit_json(result.to_json())
        return
    click.echo(f"search {result.search_id} · case {result.case_number} · gallery {result.gallery} "
               f"· model {result.model_id}")
    click.echo("Candidates are investigative leads, not identifications: each needs confirmation by a person.")
    click.echo(f"threshold {result.threshold.value:.3f}: {result.threshold.meaning}")
    for fi, face in enumerate(result.faces):
        q = f" (quality: {', '.join(face.quality.reasons)})" if face.quality.reasons else ""
        click.echo(f"\nprobe face {fi} at {face.bbox.as_list()}{q}")
        if not face.candidates:
            click.echo("  no candidates (empty gallery)")
        for rank, c in enumerate(face.candidates, 1):
            mark = "above threshold" if c.score > result.threshold.value else "below threshold"
            click.echo(f"  {rank:>2}. {c.subject or '(no subject label)':<28} score {c.score:.3f} ({mark})")
            click.echo(f"      image {c.image_id} {c.path or ''}")
            click.echo(f"      source {c.source_uri or '-'} · legal basis: {c.legal_basis}")


# -- galleries ----------------------------------------------------------------------------------
@main.group()
def gallery() -> None:
    """What the galleries hold."""


@gallery.command("list")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def gallery_list(as_json: bool, home: str | None) -> None:
    """Every gallery with its model and counts."""
    from facesearch.facade import FaceSearch

    with FaceSearch(settings=_settings(home)) as fs:
        rows = fs.galleries()
    if as_json:
        _emit_json([{"name": g.name, "legal_basis": g.legal_basis, "created_at": g.created_at.isoformat(),
                     **s.to_json()} for g, s in rows])
        return
    if not rows:
        click.echo("no galleries")
    for g, s in rows:
        click.echo(f"{g.name}: {s.images} images, {s.faces} faces, {s.subjects} subjects (model {g.model_id})")


@gallery.command("stats")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def gallery_stats_cmd(name: str, as_json: bool, home: str | None) -> None:
    """Images, faces and subjects of one gallery."""
    from facesearch.facade import FaceSearch

    with FaceSearch(settings=_settings(home)) as fs:
        s = fs.gallery_stats(name)
    if as_json:
        _emit_json(s.to_json())
    else:
        click.echo(f"{s.name}: {s.images} images, {s.faces} faces, {s.subjects} subjects, "
                   f"{s.no_face_images} images without a usable face (model {s.model_id})")


@gallery.command("retention")
@click.argument("name")
@click.option("--days", type=click.IntRange(1), default=None,
              help="Keep images this many days after collection (omit to keep them until erased).")
@_home_option
@_domain_errors
def gallery_retention_cmd(name: str, days: int | None, home: str | None) -> None:
    """Set a gallery's retention period; `facesearch retention run` applies it."""
    from facesearch.services.context import AppContext
    from facesearch.services.retention import set_gallery_retention

    set_gallery_retention(AppContext(_settings(home)), name, days)
    click.echo(f"gallery {name}: " + (f"images kept {days} days after collection" if days else "no retention limit"))


@main.command()
@click.option("--photo", "photos", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A photo of the person (repeat for several).")
@click.option("--yes", is_flag=True, help="Erase the matches without asking.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def erase(photos: tuple[Path, ...], yes: bool, as_json: bool, home: str | None) -> None:
    """Erase a person by their photo from every gallery, and keep them suppressed."""
    import getpass

    from facesearch.services.context import AppContext
    from facesearch.services.erasure import erase as do_erase
    from facesearch.services.erasure import find_matches

    ctx = AppContext(_settings(home))
    matches, probes = find_matches(ctx, list(photos))
    if not as_json:
        click.echo(f"{len(matches)} image(s) match across {len({m.gallery for m in matches})} gallery(ies):")
        for m in matches:
            click.echo(f"  {m.gallery} image {m.image_id} {m.subject or ''} score {m.score:.3f} {m.path or ''}")
    if not yes and not (matches and click.confirm("Erase these images and suppress this person?", default=False)):
        if as_json:
            _emit_json({"erased": 0, "matches": [m.to_json() for m in matches], "request_id": None})
        else:
            click.echo("nothing erased (confirm, or pass --yes)")
        return
    rid = do_erase(ctx, matches, probes, actor=getpass.getuser())
    if as_json:
        _emit_json({"erased": len(matches), "matches": [m.to_json() for m in matches], "request_id": rid})
    else:
        click.echo(f"erased {len(matches)} image(s); request {rid}; the person is on the suppression list")


@main.command("access-request")
@click.option("--photo", "photos", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A photo of the person asking (repeat for several).")
@click.option("--pdf", "pdf_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as a PDF to this file.")
@_home_option
@_domain_errors
def access_request(photos: tuple[Path, ...], pdf_out: Path | None, home: str | None) -> None:
    """What is held about a person, found by their photo: images, sources, legal bases, and how
    many searches returned them (JSON on stdout; --pdf for the letter)."""
    from facesearch.services.context import AppContext
    from facesearch.services.erasure import access_report, access_report_pdf

    report = access_report(AppContext(_settings(home)), list(photos))
    if pdf_out:
        pdf_out.write_bytes(access_report_pdf(report))
    _emit_json(report.to_json())


@main.group()
def suppression() -> None:
    """The suppression list of erased people."""


@suppression.command("list")
@_home_option
@_domain_errors
def suppression_list(home: str | None) -> None:
    """Suppression entries (ids and dates only: the embeddings stay encrypted)."""
    from sqlalchemy import select

    from facesearch.services.context import AppContext
    from facesearch.store.tables import Suppression

    ctx = AppContext(_settings(home))
    with ctx.repo() as repo:
        rows = [{"id": r.public_id, "model": r.model_id, "created_at": r.created_at.isoformat(),
                 "lifted_at": r.lifted_at.isoformat() if r.lifted_at else None}
                for r in repo.s.scalars(select(Suppression).order_by(Suppression.id))]
    _emit_json(rows)


@suppression.command("lift")
@click.argument("suppression_id")
@click.option("--reason", default=None, help="Why the entry is lifted (recorded in the audit trail).")
@_home_option
@_domain_errors
def suppression_lift(suppression_id: str, reason: str | None, home: str | None) -> None:
    """Lift a suppression (an audited administrator decision)."""
    import getpass

    from facesearch.services.context import AppContext
    from facesearch.services.erasure import lift

    lift(AppContext(_settings(home)), suppression_id, actor=getpass.getuser(), reason=reason)
    click.echo(f"suppression {suppression_id} lifted")


@main.group()
def retention() -> None:
    """The retention schedule."""


@retention.command("run")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def retention_run(as_json: bool, home: str | None) -> None:
    """Delete what the retention schedule says has expired (probes, search records, gallery
    images past their gallery's period); the audit trail is kept."""
    from facesearch.services.context import AppContext
    from facesearch.services.retention import run_retention

    report = run_retention(AppContext(_settings(home)), actor="cli")
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"retention: {report.probes_deleted} probes, {report.searches_deleted} search records, "
                   f"{report.images_deleted} images ({report.faces_deleted} faces) deleted")


@gallery.command("grant")
@click.argument("name")
@click.option("--agency", "agency_name", required=True, help="The agency that may search this gallery.")
@_home_option
@_domain_errors
def gallery_grant_cmd(name: str, agency_name: str, home: str | None) -> None:
    """Share a gallery with another agency (a system administrator's decision; audited)."""
    from facesearch.services.casework import grant_gallery
    from facesearch.services.context import AppContext

    grant_gallery(AppContext(_settings(home)), name, agency_name, actor="cli")
    click.echo(f"gallery {name} granted to {agency_name}")


@gallery.command("reembed")
@click.argument("name")
@click.option("--model", "pack", required=True, help="Model pack to move the gallery to.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def gallery_reembed(name: str, pack: str, as_json: bool, home: str | None) -> None:
    """Re-embed a gallery's stored images with another model pack (resumable: re-run after a stop)."""
    from facesearch.facade import FaceSearch
    from facesearch.services.reembed import reembed_gallery

    with FaceSearch(settings=_settings(home)) as fs, _Progress("re-embed", 0) as bar:
        summary = reembed_gallery(fs.ctx, name, pack, progress=lambda d, t: bar.update(d, t))
    if as_json:
        _emit_json(summary.to_json())
        return
    click.echo(f"gallery {summary.gallery}: {summary.from_model} -> {summary.to_model}, "
               f"{summary.done_now} images re-embedded now, {len(summary.errors)} errors")
    for e in summary.errors[:50]:
        click.echo(f"  error image {e['image_id']} {e['path']}: {e['reason']}")
    click.echo("switched to the new model" if summary.switched else
               "not switched yet: fix the errors above and run the command again")


# -- evaluation ---------------------------------------------------------------------------------
@main.group("eval")
def eval_group() -> None:
    """Accuracy on standard protocols."""


def _eval_embedder(home: str | None, assume_centered: bool, model: str | None):  # noqa: ANN202
    """(embed function, the pack's licence terms) for an evaluation run."""
    from facesearch.pipeline.build import build_pipeline, packs_for
    from facesearch.services.evaluate import path_embedder

    s = _settings(home, model=model)
    pack = packs_for(s).get(s.model)
    return path_embedder(build_pipeline(s, pack=pack), s, assume_centered), pack.terms()


@eval_group.command("verify")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--assume-centered", is_flag=True, help="Fall back on the central region when no face is found.")
@click.option("--model", default=None, help="Model pack to evaluate (default: $FACESEARCH_MODEL or dlib).")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def eval_verify(root: Path, pairs: Path, assume_centered: bool, model: str | None, as_json: bool,
                home: str | None) -> None:
    """LFW-style pairs: 10-fold accuracy and TAR at FAR=0.001."""
    from facesearch.eval.protocols import run_verify

    embed, terms = _eval_embedder(home, assume_centered, model)
    with _Progress("embed", 0) as bar:
        res = run_verify(root, pairs, embed, progress=lambda d, t: bar.update(d, t))
    out = {**res.to_json(), "model": terms["pack"], "model_terms": terms}
    if as_json:
        _emit_json(out)
    else:
        click.echo(f"verify: {out['pairs']} pairs, accuracy {out['accuracy']:.4f} ± {out['accuracy_std']:.4f}, "
                   f"TAR@FAR=0.001 {out['tar_at_far_0.001']:.4f}, no face {out['no_face']}")
        click.echo(f"model pack {terms['pack']}: {terms['license']}")


@eval_group.command("identify")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--assume-centered", is_flag=True, help="Fall back on the central region when no face is found.")
@click.option("--model", default=None, help="Model pack to evaluate (default: $FACESEARCH_MODEL or dlib).")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def eval_identify(root: Path, assume_centered: bool, model: str | None, as_json: bool, home: str | None) -> None:
    """Folder-per-identity: rank-1, rank-5 and FNIR at FPIR=0.01."""
    from facesearch.eval.protocols import run_identify

    embed, terms = _eval_embedder(home, assume_centered, model)
    with _Progress("embed", 0) as bar:
        res = run_identify(root, embed, progress=lambda d, t: bar.update(d, t))
    out = {**res.to_json(), "model": terms["pack"], "model_terms": terms}
    if as_json:
        _emit_json(out)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in out.items() if k != "model_terms"))
        click.echo(f"model pack {terms['pack']}: {terms['license']}")


# -- models -------------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Model manifests known to this installation."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def models_list(as_json: bool, home: str | None) -> None:
    """Every model pack: whether it is installed, its licence terms, its files and evaluation figures."""
    from facesearch.pipeline.build import packs_for

    s = _settings(home)
    packs = packs_for(s)
    rows = []
    for p in packs.all():
        comps = {}
        for role, m in p.components(packs.models).items():
            comps[role] = {"id": m.id, "files": [{"name": f.name, "sha256": f.sha256, "package": f.package,
                                                  "path": f.path} for f in m.files],
                           "input_size": m.input_size, "alignment": m.alignment,
                           "embedding_dim": m.embedding_dim, "metric": m.metric if m.family == "embedder" else None,
                           "normalisation": {"mean": m.mean, "std": m.std, "color": m.color, "layout": m.layout}
                           if m.family == "embedder" else None}
        rows.append({
            "id": p.id, "default": p.id == s.model, "status": p.status(packs.models),
            "description": p.description, "license": p.license, "commercial_use": p.commercial_use,
            "license_text": p.license_text, "requires_acceptance": p.requires_acceptance,
            "accepted": p.requires_acceptance is None or p.requires_acceptance in
            {t.strip() for t in (s.accept_model_license or "").split(",")},
            "install": f"pip install 'facesearch[{p.extra}]'" if p.extra else "included",
            "provenance": [{"package": v.package, "version": v.version, "installed": v.installed_version(),
                            "files": list(v.files)} for v in p.provenance],
            "alignment": p.alignment, "components": comps, "evaluation": p.evaluation,
        })
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        click.echo(f"{mark} {r['id']:<22} {r['status']}")
        click.echo(f"    {r['description']}")
        use = "commercial use allowed" if r["commercial_use"] else "NON-COMMERCIAL RESEARCH USE ONLY"
        click.echo(f"    licence: {r['license']} ({use})")
        if r["requires_acceptance"]:
            state = "accepted" if r["accepted"] else f"not accepted: FACESEARCH_ACCEPT_MODEL_LICENSE={r['requires_acceptance']}"
            click.echo(f"    licence acceptance: {state}")
        for k, v in r["evaluation"].items():
            click.echo(f"    {k}: {v}")


@models.command("export-onnx")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the .onnx file and its manifest (default: $FACESEARCH_HOME/models).")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def models_export_onnx(out: Path | None, as_json: bool, home: str | None) -> None:
    """Convert dlib's ResNet (from the installed face-recognition-models package) to ONNX with
    our own reader of dlib's format; writes the graph, its manifest and sha256. Offline, seconds."""
    from facesearch.models.dlib_onnx import ONNX_FILE, ensure_onnx, export_onnx, manifest_path_for, source_dat
    from facesearch.models.manifest import load_manifest

    s = _settings(home)
    if out is None:
        manifest_path = ensure_onnx(s.home)
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest_path = manifest_path_for(export_onnx(source_dat()[0], out / ONNX_FILE))
    m = load_manifest(manifest_path)
    info = {"manifest": str(manifest_path), "onnx": str(m.resolve()), "sha256": m.files[0].sha256,
            "id": m.id, "embedding_dim": m.embedding_dim}
    if as_json:
        _emit_json(info)
    else:
        click.echo(f"{info['onnx']} (sha256 {info['sha256']})\nmanifest {info['manifest']}")


# -- the service ---------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@_home_option
@_domain_errors
def serve(host: str, port: int, home: str | None) -> None:
    """Run the investigator service (API, /docs, /healthz, /metrics) on the embedded defaults."""
    import uvicorn

    from facesearch.api.app import create_app
    from facesearch.services.bootstrap import issue_bootstrap
    from facesearch.services.context import AppContext

    s = _settings(home)
    # refuses a missing, exposed or development key under FACESEARCH_ENV=production; creates
    # and migrates the database on first start
    ctx = AppContext(s)
    token = issue_bootstrap(ctx)
    if token:
        click.echo(f"No system administrator yet. One-time bootstrap link (valid until used):\n"
                   f"  http://{host}:{port}/bootstrap#token={token}", err=True)
    # proxy_headers off: the source address is decided in one place, from FACESEARCH_TRUSTED_PROXIES
    # (api/ratelimit.py), not by uvicorn's default trust of 127.0.0.1
    uvicorn.run(create_app(s, ctx), host=host, port=port, log_level="warning", proxy_headers=False)


@main.group()
def agency() -> None:
    """Agencies (tenants)."""


@agency.command("add")
@click.argument("name")
@click.option("--case-pattern", default=None, help="Regular expression every case number must match.")
@click.option("--purpose", "purposes", multiple=True, help="An allowed search purpose (repeat the option).")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def agency_add(name: str, case_pattern: str | None, purposes: tuple[str, ...], as_json: bool,
               home: str | None) -> None:
    """Create an agency."""
    from facesearch.services.accounts import Accounts
    from facesearch.services.context import AppContext

    ctx = AppContext(_settings(home))
    a = Accounts(ctx).add_agency(name, case_pattern, list(purposes) or None)
    if as_json:
        _emit_json(a.to_json())
    else:
        click.echo(f"agency {a.name} ({a.public_id}); case numbers must match {a.case_pattern}")


@main.group()
def user() -> None:
    """User accounts."""


@user.command("add")
@click.argument("username")
@click.option("--agency", "agency_name", default=None)
@click.option("--role", required=True, type=click.Choice(["sysadmin", "agency_admin", "supervisor", "investigator",
                                                         "privacy_officer"]))
@click.option("--password-stdin", is_flag=True, required=True, help="Read the password from standard input.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def user_add(username: str, agency_name: str | None, role: str, password_stdin: bool, as_json: bool,
             home: str | None) -> None:
    """Create a user; prints the user id and the TOTP secret once."""
    from facesearch.services.accounts import Accounts
    from facesearch.services.context import AppContext

    password = sys.stdin.readline().rstrip("\n")
    ctx = AppContext(_settings(home))
    u = Accounts(ctx).add_user(username, password, role, agency_name)
    if as_json:
        _emit_json(u.to_json())
    else:
        click.echo(f"user {u.username} ({u.user_id}), role {u.role}; TOTP secret (shown once): {u.totp_secret}")


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def audit_verify(as_json: bool, home: str | None) -> None:
    """Check the hash chain of the audit trail; exit status 1 when it is broken."""
    from facesearch.services.context import AppContext

    report = AppContext(_settings(home)).audit.verify()
    if as_json:
        _emit_json(report.to_json())
    elif report.ok:
        click.echo(f"audit trail intact: {report.checked} records, head {report.head_seq} {report.head_hash}")
    else:
        click.echo(f"audit trail BROKEN at record {report.first_broken_seq}: {report.reason}")
    if not report.ok:
        sys.exit(1)


@main.group()
def keys() -> None:
    """Field-encryption keys: status, rotation, a production key file."""


@keys.command("status")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def keys_status(as_json: bool, home: str | None) -> None:
    """Key versions, where the key comes from, values per key version, the last rotation."""
    from facesearch.services.context import AppContext
    from facesearch.services.keys import status

    ctx = AppContext(_settings(home))
    st = status(ctx.engine, ctx.keyring, ctx.settings)
    if as_json:
        _emit_json(st)
        return
    click.echo(f"mode {st['env']}; key from {st['source']} {st['key_file'] or ''}".rstrip())
    click.echo(f"key versions {st['versions']}, new values under version {st['current_version']}"
               + (" (generated development key)" if st["development_key"] else ""))
    click.echo(f"stored values per key version: {st['values_by_version']}")
    if st["rotation"]:
        r = st["rotation"]
        click.echo(f"rotation to version {r['target']}: {'finished' if r.get('done') else 'INCOMPLETE: run keys rotate'}")
    for problem in st["production_problems"]:
        click.echo(f"not fit for production: {problem}")


@keys.command("rotate")
@click.option("--batch", default=200, show_default=True, type=int, help="Rows per transaction.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def keys_rotate(batch: int, as_json: bool, home: str | None) -> None:
    """Add a key version and re-encrypt every field under it (online; run again to resume)."""
    from facesearch.services.context import AppContext
    from facesearch.services.keys import key_source, rotate

    ctx = AppContext(_settings(home))
    report = rotate(ctx.engine, ctx.keyring, key_source(ctx.settings), batch=batch)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"{'resumed: ' if report.resumed else ''}every encrypted value is under key version "
                   f"{report.target_version} ({report.rewritten} rows rewritten)")


@keys.command("retire")
@click.option("--version", "version", required=True, type=int, help="The old key version to remove.")
@click.option("--yes", is_flag=True, help="Do not ask: backups older than the rotation have a copy of the key.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def keys_retire(version: int, yes: bool, as_json: bool, home: str | None) -> None:
    """Remove an old key version from the key file once no stored value is under it."""
    from facesearch.services.context import AppContext
    from facesearch.services.keys import key_source, retire

    if not yes:
        click.confirm(f"Backups taken before the rotation away from key version {version} can only be restored "
                      "with it. Keep an offline copy of the key file first. Remove the version?", abort=True)
    ctx = AppContext(_settings(home))
    report = retire(ctx.engine, ctx.keyring, key_source(ctx.settings), version)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"key version {report.retired} removed; the key file holds versions {report.remaining}"
                   + (f"; {report.lockouts_rekeyed} accounts' lockout counters moved to the current version"
                      if report.lockouts_rekeyed else ""))


@keys.command("generate")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The new key file (0600).")
@_domain_errors
def keys_generate(out: str) -> None:
    """Write a new production key file (never overwrites); point FACESEARCH_KEY_FILE at it."""
    from facesearch.services.keys import generate_key_file

    generate_key_file(Path(out))
    click.echo(f"key file {out} written (mode 0600); keep a copy offline: without it the database is unreadable")


# -- backups ------------------------------------------------------------------------------------
@main.group()
def backup() -> None:
    """Consistent backups of the database, indexes and files (never the key)."""


@backup.command("create")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def backup_create(path: Path, as_json: bool, home: str | None) -> None:
    """Write a backup into the new folder PATH (safe while the server runs)."""
    from facesearch.services.backup import create_backup

    report = create_backup(_settings(home), path)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"backup of the {report.database} database and {report.parts - 1} files written to {report.path} "
                   f"({report.bytes:,} bytes); the key is not in it: keep the key separately")


@backup.command("verify")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def backup_verify(path: Path, as_json: bool, home: str | None) -> None:
    """Check the backup at PATH (seal, hashes, file list, row counts) without restoring it."""
    from facesearch.services.backup import verify_backup

    m = verify_backup(_settings(home), path)
    if as_json:
        _emit_json({"ok": True, "database": m.database, "created_at": m.created_at, "parts": len(m.parts),
                    "counts": m.counts})
    else:
        click.echo(f"backup {path} is intact: {m.database} database of {m.created_at}, {len(m.parts)} parts")


@backup.command("restore")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Replace the installation's existing database and indexes.")
@click.option("--json", "as_json", is_flag=True)
@_home_option
@_domain_errors
def backup_restore(path: Path, force: bool, as_json: bool, home: str | None) -> None:
    """Verify the backup at PATH (seal, hashes, row counts) and restore it; stop the server first."""
    from facesearch.services.backup import restore_backup

    report = restore_backup(_settings(home), path, force=force)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"restored {report.parts} parts from {report.path}; rows: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()) if v))


# -- index --------------------------------------------------------------------------------------
@main.group()
def index() -> None:
    """Where galleries' vectors are indexed: the embedded faiss index or Milvus."""


@index.command("migrate")
@click.option("--to", "to", type=click.Choice(["milvus", "faiss"]), required=True,
              help="The backend to move to (milvus needs FACESEARCH_MILVUS_URI).")
@click.option("--gallery", default=None, help="Only this gallery (default: every gallery).")
@click.option("--sample", type=int, default=50, show_default=True,
              help="Faces searched in both indexes to verify the copy before switching.")
@click.option("--batch", type=int, default=5000, show_default=True, help="Faces copied per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@_home_option
@_domain_errors
def index_migrate(to: str, gallery: str | None, sample: int, batch: int, as_json: bool, home: str | None) -> None:
    """Copy galleries' vectors to another backend (resumable: a killed run continues where it
    stopped), verify counts and sample searches, and only then switch the gallery over."""
    from facesearch.services.index_migrate import migrate_index

    for r in _reports(home, lambda ctx: migrate_index(
            ctx, gallery, to=to, sample=sample, batch=batch,
            on_batch=lambda done, total: log.info("copied %d of %d faces", done, total)), as_json):
        click.echo(f"{r.gallery}: {r.faces} faces on {r.to}"
                   + (f" ({r.collection})" if r.collection else "")
                   + f"; copied {r.copied}" + (f" after face id {r.resumed_after_id}" if r.resumed_after_id else "")
                   + f"; sample searches agreeing {r.sample_top1_agree}/{r.sample}; switched")


@index.command("tune")
@click.option("--gallery", default=None, help="Only this gallery (default: every gallery).")
@click.option("--target-recall", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="recall@1 to reach (default: FACESEARCH_ANN_TARGET_RECALL).")
@click.option("--queries", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Gallery faces searched (leave-one-out) to measure recall.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@_home_option
@_domain_errors
def index_tune(gallery: str | None, target_recall: float | None, queries: int, as_json: bool,
               home: str | None) -> None:
    """Choose a compressed (IVF-PQ) index's search settings again for a target recall, without
    rebuilding it: the build's measurement, repeated on the index's own vectors. A running
    server picks the new settings up on its next search of that gallery, unless it ingested or
    erased faces there while the tuning ran (it then keeps its own copy: tune again)."""
    from facesearch.services.index_tune import tune_indexes

    for r in _reports(home, lambda ctx: tune_indexes(ctx, gallery, target_recall=target_recall,
                                                     queries=queries), as_json):
        if r.tuned:
            click.echo(f"{r.gallery}: {r.faces} faces, {r.kind}: recall@1 {r.recall_at_1:.4f} "
                       f"(target {r.target_recall}) in {r.seconds:.1f}s")
        else:
            click.echo(f"{r.gallery}: {r.faces} faces, not tuned ({r.reason})")


# -- demo ---------------------------------------------------------------------------------------
@main.command()
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Use this home folder and keep it (default: a temporary folder, removed afterwards).")
@_domain_errors
def demo(keep: str | None) -> None:
    """Ingest the bundled sample photos into a temporary home and run a search."""
    from facesearch.demo import run_demo

    run_demo(Path(keep) if keep else None, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
