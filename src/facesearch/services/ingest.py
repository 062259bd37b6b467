"""Ingest: photos (a folder or a manifest) -> faces stored with provenance -> index.

Idempotent by content hash: an image already in the gallery is skipped, so an ingest that
was killed at any point is resumed by running it again. Each image and its faces are
committed in one transaction; the index is derived from the database (see IndexManager).
Decoding, detection + alignment and embedding overlap (pipeline/stages.py): as threads of
this process with one worker, in worker processes with more (``settings.workers``), images in
chunks of ``settings.batch_size`` with a bounded number of chunks in flight. The main process
owns the database and the index.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.errors import (
    Conflict, FaceSearchError, InvalidInput, MissingLegalBasis, ModelMismatch, PathNotFound,
)
from facesearch.pipeline.decode import image_sha256
from facesearch.pipeline.stages import Analysis, StageMeter, chunked, run_chunks
from facesearch.services.context import AppContext
from facesearch.services.provenance import SOCIAL_SOURCE, check_source
from facesearch.types import IngestItem, IngestSummary

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MANIFEST_COLUMNS = ("path", "subject", "source_uri", "legal_basis", "collected_at", "collector")


# -- input --------------------------------------------------------------------------------------
def parse_time(value: str | None, where: str) -> datetime | None:
    if value is None or not str(value).strip():
        return None
    try:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{where}: collected_at {value!r} is not an ISO 8601 date/time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def folder_items(root: Path, subject_from_folder: bool) -> list[IngestItem]:
    if not root.exists():
        raise PathNotFound(f"path does not exist: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [
        IngestItem(path=str(p.resolve()), subject=p.parent.name if subject_from_folder and p.parent != root else None)
        for p in files
    ]


def manifest_items(path: Path) -> list[IngestItem]:
    """Rows of a CSV (with a header) or JSONL manifest: path, subject, source_uri, legal_basis,
    collected_at. Relative paths are relative to the manifest's folder."""
    if not path.is_file():
        raise PathNotFound(f"manifest does not exist: {path}")
    rows: list[dict[str, str]] = []
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInput(f"{path.name} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InvalidInput(f"{path.name} line {n}: each line must be a JSON object")
            rows.append({k: (None if v is None else str(v)) for k, v in obj.items()})
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InvalidInput(f"{path.name}: a CSV manifest needs a header with at least a 'path' column "
                               f"(columns: {', '.join(MANIFEST_COLUMNS)})")
        rows = list(reader)
    items = []
    for n, r in enumerate(rows, 1):
        p = (r.get("path") or "").strip()
        if not p:
            raise InvalidInput(f"{path.name} row {n}: empty 'path'")
        full = (Path(p) if Path(p).is_absolute() else path.parent / p).resolve()
        items.append(IngestItem(
            path=str(full),
            subject=(r.get("subject") or "").strip() or None,
            source_uri=(r.get("source_uri") or "").strip() or None,
            legal_basis=(r.get("legal_basis") or "").strip() or None,
            collected_at=parse_time(r.get("collected_at"), f"{path.name} row {n}"),
            collector=(r.get("collector") or "").strip() or None,
        ))
    return items


# -- worker side: pipeline/stages.py (decode, detect + align, embed, overlapped) ------------------
# ``Analysis`` is re-exported here for the services that used it from this module.
__all__ = ["Analysis", "IngestService", "folder_items", "items_from", "manifest_items"]


# -- the service --------------------------------------------------------------------------------
ProgressFn = Callable[[int, int, IngestSummary], None]


class IngestService:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.stage_seconds: dict[str, float] = {}
        self.meter: StageMeter | None = None  # the last ingest's per-stage counts and times

    def ingest(
        self, items: list[IngestItem], *, gallery: str, legal_basis: str | None = None,
        progress: ProgressFn | None = None, workers: int | None = None, collector: str | None = None,
        agency: str | None = None,
    ) -> IngestSummary:
        """``agency``: the agency a new gallery belongs to (an existing gallery must already
        belong to it); galleries without an agency are reachable from the CLI only."""
        settings = self.ctx.settings
        workers = workers or settings.workers
        summary = IngestSummary()
        default_basis = (legal_basis or "").strip() or None
        model_id = self._model_id()
        with self.ctx.repo() as repo:
            g = repo.find_gallery(gallery)
            if g is not None and g.model_id != model_id:
                raise ModelMismatch(
                    f"gallery {gallery!r} holds faces of model {g.model_id!r}; this installation embeds "
                    f"with {model_id!r}. Re-embed the gallery or use the matching model"
                )
            default_basis = default_basis or (g.legal_basis if g else None)
            if default_basis is None and items and all(not i.legal_basis for i in items):
                raise MissingLegalBasis(
                    f"ingest refused: no legal basis for gallery {gallery!r}; give --legal-basis "
                    "or a legal_basis column for every manifest row"
                )
            agency_id, agency_ref = None, None
            if agency is not None:
                from facesearch.services.accounts import Accounts

                agency_info = Accounts(self.ctx).agency(agency)
                agency_id, agency_ref = agency_info.id, agency_info.public_id  # the audit names no agency
                if g is not None and g.agency_id != agency_id:
                    raise Conflict(f"gallery {gallery!r} belongs to another agency (or to none)")
            if g is None:
                g = repo.create_gallery(gallery, model_id, (legal_basis or "").strip() or None, agency_id)
            key, _ = self.ctx.index_for(repo, g.id, model_id)
        from facesearch.services.erasure import Suppressions

        suppressions = Suppressions(self.ctx, model_id)
        total = len(items)
        done = 0
        last_save = time.monotonic()
        pending_hashes: set[str] = set()

        def finish(item: IngestItem, basis: str, warrant: str | None, sha: str, a: Analysis) -> None:
            nonlocal last_save
            pending_hashes.discard(sha)
            for k, v in a.timings.items():
                self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
            if a.info is None:
                self._error(summary, item.path, a.error_code or "error", a.error or "unreadable")
                return
            if any(suppressions.matches(f.embedding) for f in a.faces):
                summary.suppressed += 1  # an erased person: neither the image nor its faces are kept
                summary.add_reason("suppressed")
                return
            ok = [f for f in a.faces if f.quality.acceptable]
            rejected = [f for f in a.faces if not f.quality.acceptable]
            for f in rejected:
                summary.rejected_quality += 1
                for r in f.quality.reasons:
                    summary.add_reason(r)
            status = "faces" if ok else ("rejected_quality" if rejected else "no_face")
            if not a.faces:
                summary.no_face += 1
                summary.add_reason("no_face")
            t0 = time.perf_counter()
            with self.ctx.repo() as repo:
                _, face_ids = repo.add_image(
                    gallery_id=g.id, sha256=sha, original_path=item.path, source_uri=item.source_uri,
                    legal_basis=basis, subject=item.subject, collected_at=item.collected_at,
                    collector=item.collector or collector, warrant_ref=warrant,
                    width=a.info.width, height=a.info.height, faces=ok, status=status,
                )
            if ok:
                self.ctx.indexes.add(key, np.stack([f.embedding for f in ok]), np.asarray(face_ids))
            self.stage_seconds["store"] = self.stage_seconds.get("store", 0.0) + time.perf_counter() - t0
            summary.ingested += 1
            summary.faces += len(ok)
            if time.monotonic() - last_save > 30:
                self.ctx.indexes.save(key)
                last_save = time.monotonic()

        def prepared() -> Iterator[tuple[IngestItem, str, str | None, str]]:
            nonlocal done
            for item in items:
                summary.images += 1
                basis = (item.legal_basis or default_basis or "").strip()
                if not basis:
                    self._error(summary, item.path, MissingLegalBasis.code, "no legal basis for this row")
                    done += 1
                    continue
                guard = check_source(item.source_uri, basis)
                if not guard.allowed:
                    self._error(summary, item.path, SOCIAL_SOURCE, guard.reason or "refused source")
                    done += 1
                    continue
                try:
                    sha = _hash_file(Path(item.path), settings.max_file_bytes)
                except FaceSearchError as e:
                    self._error(summary, item.path, e.code, e.message)
                    done += 1
                    continue
                with self.ctx.repo() as repo:
                    known = sha in pending_hashes or bool(repo.known_hashes(g.id, [sha]))
                if known:
                    summary.duplicates += 1
                    summary.add_reason("duplicate")
                    done += 1
                    continue
                pending_hashes.add(sha)
                yield item, basis, guard.warrant_ref, sha

        meter = StageMeter(parallel=workers)
        self.meter = meter
        batch = max(1, settings.batch_size)
        try:
            work: deque[list[tuple[IngestItem, str, str | None, str]]] = deque()

            def chunks() -> Iterator[list[str]]:
                for chunk in chunked(prepared(), batch):
                    work.append(chunk)
                    yield [c[0].path for c in chunk]

            waiting: dict[int, list[tuple[IngestItem, str, str | None, str]]] = {}
            sent = 0
            for tag, r in run_chunks(chunks(), settings=settings, pipeline=self.ctx.pipeline if workers <= 1 else None,
                                     workers=workers, meter=meter):
                while sent <= tag:  # chunks are made in order; pair each result with its rows
                    waiting[sent] = work.popleft()
                    sent += 1
                rows = waiting.pop(tag)
                t0 = time.perf_counter()
                for (item, basis, warrant, sha), a in zip(rows, r.analyses):
                    finish(item, basis, warrant, sha, a)
                    done += 1
                meter.add("store", len(rows), time.perf_counter() - t0)
                summary.stage_rates = meter.rates()
                if progress:
                    progress(done, total, summary)
        finally:
            self.ctx.indexes.save(key)
        with self.ctx.repo() as repo:
            self.ctx.indexes.maybe_upgrade(repo, key, self.ctx.dim_of(model_id))
        if progress:
            progress(total, total, summary)
        self.ctx.audit.append(
            AuditAction.INGEST, actor=collector or "cli", agency=agency_ref, target=f"gallery:{g.name}",
            outcome=AuditOutcome.SUCCESS, request_id=None,
            details={"images": summary.images, "ingested": summary.ingested, "faces": summary.faces,
                     "errors": summary.errors, "duplicates": summary.duplicates})
        return summary

    def _model_id(self) -> str:
        return self.ctx.pipeline.model_id

    @staticmethod
    def _error(summary: IngestSummary, path: str, code: str, message: str) -> None:
        summary.errors += 1
        summary.add_reason(code)
        summary.error_details.append({"path": path, "code": code, "reason": message})


def _hash_file(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise PathNotFound(f"file does not exist: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        from facesearch.errors import ImageTooLarge

        raise ImageTooLarge(f"file is {size} bytes, above the limit of {max_bytes}")
    return image_sha256(path.read_bytes())


def items_from(path: Path, subject_from_folder: bool) -> list[IngestItem]:
    """A folder of photos or a .csv/.jsonl manifest."""
    if path.is_dir():
        return folder_items(path, subject_from_folder)
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return manifest_items(path)
    if not path.exists():
        raise PathNotFound(f"path does not exist: {path}")
    raise InvalidInput(f"{path}: give a folder of photos or a .csv/.jsonl manifest")
