"""Case export: one PDF per case with its searches, probes, candidates, reviews and an audit
excerpt.

A pure function over plain inputs (the caller maps database rows onto :class:`CaseSearch`,
:class:`CaseCandidate`, :class:`CaseReview` and :class:`CaseAuditLine`), rendered with fpdf2.

Layout (A4 portrait): a title page (case, agency, who generated it and when, the notice that
candidates are leads, the model licence terms when given, a list of the searches),
then one section per search, each starting on a new page (details and probe image, candidate
table with thumbnails, reviews with their full notes, wrapped), then the audit excerpt on a new
page; searches and the audit excerpt are bookmarks in the PDF outline. Every page after the
first has a running header; every page has "Page n of N".

Text: a Unicode TrueType font (DejaVu Sans) is embedded when found. Characters it does not
cover are drawn with a fallback font when one is installed (e.g. WenQuanYi Zen Hei or Noto
CJK for Chinese, Japanese, Korean); characters no available font covers are shown as "?", and
the title page says which ones. Without DejaVu the export falls back to the PDF core font
Helvetica (Latin-1 only), with the same replacement and note. Right-to-left scripts are drawn
without shaping.

Images: probe and thumbnail bytes are decoded with the package's safe decoder; a missing or
unreadable image is shown as a labelled empty box, never an error.
"""
from __future__ import annotations

import io
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import Align, XPos, YPos
from fpdf.fonts import FontFace
from PIL import Image, ImageOps

from facesearch.errors import FaceSearchError
from facesearch.pipeline.decode import decode_image

log = logging.getLogger(__name__)

NOTICE = ("Candidates are investigative leads, not identifications; "
          "a match needs confirmation by two reviewers.")

# Font files looked for, in order. Module-level so that deployments and tests can change them.
REGULAR_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
)
BOLD_FONTS: tuple[str, ...] = tuple(p.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf") for p in REGULAR_FONTS)
# Fallbacks for what DejaVu lacks (mostly CJK); (path, index in a .ttc collection).
FALLBACK_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
)

_MAX_IMAGE_BYTES = 30 * 1024 * 1024
_MAX_IMAGE_PIXELS = 50_000_000
_MAX_CELL_CHARS = 300  # table rows cannot span pages; longer cell text is cut (notes are not)

_MARGIN = 15.0
_CONTENT_W = 210.0 - 2 * _MARGIN
_PROBE_BOX = 50.0
_THUMB_PX = 240


# --------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class CaseCandidate:
    candidate_id: str
    rank: int
    subject: str | None
    score: float
    source_uri: str | None
    legal_basis: str | None
    thumbnail_jpeg: bytes | None = None


@dataclass(frozen=True)
class CaseReview:
    candidate_id: str
    user: str
    decision: str
    note: str | None
    at: datetime


@dataclass(frozen=True)
class CaseSearch:
    search_id: str
    at: datetime
    user: str
    gallery: str
    purpose: str
    authorization_ref: str | None
    probe_jpeg: bytes | None
    threshold: float
    threshold_meaning: str
    candidates: list[CaseCandidate] = field(default_factory=list)
    reviews: list[CaseReview] = field(default_factory=list)
    status: str = ""


@dataclass(frozen=True)
class CaseAuditLine:
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str


# --------------------------------------------------------------------------------------------
# the export


def case_pdf(
    case_number: str,
    agency: str,
    searches: Sequence[CaseSearch],
    audit: Sequence[CaseAuditLine],
    *,
    generated_by: str,
    generated_at: datetime,
    model_terms: str | None = None,
) -> bytes:
    """Render the case export; returns the PDF's bytes."""
    searches = sorted(searches, key=lambda s: (s.at, s.search_id))
    audit = sorted(audit, key=lambda a: a.at)
    fonts = _Fonts.load(_all_text(case_number, agency, searches, audit, generated_by, model_terms))
    pdf = _CasePDF(fonts, case_number=case_number, agency=agency, generated_at=generated_at)
    pdf.set_title(fonts.clean(f"Case {case_number}: face search export"))
    pdf.set_author(fonts.clean(generated_by))
    pdf.set_creator("facesearch")
    pdf.set_creation_date(generated_at)

    _title_page(pdf, case_number, agency, searches, audit, generated_by, generated_at, model_terms)
    for i, search in enumerate(searches, start=1):
        _search_section(pdf, i, len(searches), search)
    _audit_section(pdf, audit)
    return bytes(pdf.output())


def _all_text(case_number: str, agency: str, searches: Sequence[CaseSearch],
              audit: Sequence[CaseAuditLine], generated_by: str, model_terms: str | None) -> str:
    parts = [case_number, agency, generated_by, model_terms or ""]
    for s in searches:
        parts += [s.search_id, s.user, s.gallery, s.purpose, s.authorization_ref or "",
                  s.threshold_meaning, s.status]
        for c in s.candidates:
            parts += [c.candidate_id, c.subject or "", c.source_uri or "", c.legal_basis or ""]
        for r in s.reviews:
            parts += [r.candidate_id, r.user, r.decision, r.note or ""]
    for a in audit:
        parts += [a.actor, a.action, a.target, a.outcome]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# fonts and text


@dataclass
class _Fonts:
    family: str
    unicode: bool
    covered: frozenset[int]
    replaced: set[str] = field(default_factory=set)
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (style, path, index)
    fallbacks: list[tuple[str, str, int]] = field(default_factory=list)  # (family, path, index)

    @classmethod
    def load(cls, text: str) -> _Fonts:
        regular, bold = _first_file(REGULAR_FONTS), _first_file(BOLD_FONTS)
        if regular is None:
            log.warning("case export: DejaVu Sans not found; using Helvetica, non-Latin-1 text shown as '?'")
            covered = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100))
            return cls(family="helvetica", unicode=False, covered=covered)
        fonts = cls(family="body", unicode=True, covered=frozenset())
        fonts.files = [("", regular, 0), ("B", bold or regular, 0)]
        covered = set(_cmap(regular, 0))
        needed = {ord(ch) for ch in text} - covered - {0x0A}
        for n, (path, index) in enumerate(FALLBACK_FONTS):
            if not needed:
                break
            if not Path(path).is_file():
                continue
            try:
                cmap = _cmap(path, index)
            except Exception as exc:  # noqa: BLE001 - a broken optional font is skipped
                log.warning("case export: cannot read fallback font %s: %s", path, exc)
                continue
            if needed & cmap:
                fonts.fallbacks.append((f"fallback{n}", path, index))
                covered |= cmap
                needed -= cmap
        fonts.covered = frozenset(covered)
        return fonts

    def register(self, pdf: FPDF) -> None:
        for style, path, index in self.files:
            pdf.add_font(self.family, style, path, collection_font_number=index)
        for family, path, index in self.fallbacks:
            pdf.add_font(family, "", path, collection_font_number=index)
        if self.fallbacks:
            pdf.set_fallback_fonts([f for f, _, _ in self.fallbacks], exact_match=False)

    def clean(self, text: object) -> str:
        """Text safe to draw: control characters dropped, uncovered characters as '?'."""
        s = "" if text is None else str(text)
        s = unicodedata.normalize("NFC", s).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
        out = []
        for ch in s:
            if ch == "\n":
                out.append(ch)
            elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
                continue
            elif ord(ch) in self.covered:
                out.append(ch)
            else:
                self.replaced.add(ch)
                out.append("?")
        return "".join(out)


def _first_file(paths: Sequence[str]) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def _cmap(path: str, index: int) -> set[int]:
    from fontTools.ttLib import TTFont  # fpdf2 depends on fontTools

    font = TTFont(path, fontNumber=index, lazy=True)
    try:
        return set(font.getBestCmap() or {})
    finally:
        font.close()


def _cut(text: str, limit: int = _MAX_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 12] + " [truncated]"


def _when(at: datetime | None) -> str:
    if at is None:
        return "-"
    if at.tzinfo is None:
        return at.isoformat(sep=" ", timespec="seconds") + " (no time zone)"
    return at.isoformat(sep=" ", timespec="seconds")


# --------------------------------------------------------------------------------------------
# images


def _jpeg(data: bytes | None, *, square: bool, max_px: int) -> tuple[io.BytesIO | None, str]:
    """(JPEG bytes ready for the PDF, or None; a label for the empty box when None)."""
    if not data:
        return None, "no image"
    try:
        decoded = decode_image(data, max_pixels=_MAX_IMAGE_PIXELS, max_bytes=_MAX_IMAGE_BYTES)
    except FaceSearchError as exc:
        log.warning("case export: image not shown (%s)", exc.message)
        return None, "image unreadable"
    img = Image.fromarray(decoded.rgb)
    img = ImageOps.contain(img, (max_px, max_px)) if square else img
    img.thumbnail((max_px, max_px))
    if square:
        canvas = Image.new("RGB", (max_px, max_px), (255, 255, 255))
        canvas.paste(img, ((max_px - img.width) // 2, (max_px - img.height) // 2))
        img = canvas
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    buf.seek(0)
    return buf, ""


# --------------------------------------------------------------------------------------------
# the document


class _CasePDF(FPDF):
    def __init__(self, fonts: _Fonts, *, case_number: str, agency: str, generated_at: datetime) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.fonts_ = fonts
        self.case_label = fonts.clean(f"Case {case_number}")
        self.agency_label = fonts.clean(agency)
        self.generated_label = f"Generated {_when(generated_at)}"
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(True, margin=18)
        fonts.register(self)
        self.set_font(fonts.family, size=10)

    # fpdf hooks ---------------------------------------------------------------------------
    def header(self) -> None:
        if self.page_no() == 1:
            return
        self.set_font(self.fonts_.family, size=8)
        self.set_text_color(90)
        w = _CONTENT_W / 2
        self.cell(w, 5, _cut(self.case_label, 80) + " - face search export", align=Align.L)
        self.cell(w, 5, _cut(self.agency_label, 80), align=Align.R, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_draw_color(160)
        self.line(_MARGIN, self.get_y(), _MARGIN + _CONTENT_W, self.get_y())
        self.ln(4)
        self.set_text_color(0)
        self.set_draw_color(0)
        self.set_font(self.fonts_.family, size=10)

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font(self.fonts_.family, size=8)
        self.set_text_color(90)
        self.cell(_CONTENT_W / 2, 5, self.generated_label, align=Align.L)
        self.cell(_CONTENT_W / 2, 5, f"Page {self.page_no()} of {{nb}}", align=Align.R)
        self.set_text_color(0)

    # helpers ------------------------------------------------------------------------------
    def text_(self, text: object) -> str:
        return self.fonts_.clean(text)

    def heading(self, text: str, size: float = 14) -> None:
        self.set_font(self.fonts_.family, "B", size)
        self.multi_cell(0, size * 0.5, self.text_(text), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font(self.fonts_.family, size=10)
        self.ln(2)

    def key_values(self, rows: Sequence[tuple[str, object]], width: float, label_w: float = 40) -> None:
        x0 = self.get_x()
        for label, value in rows:
            self.set_x(x0)
            y = self.get_y()
            self.set_font(self.fonts_.family, "B", 9)
            self.multi_cell(label_w, 5, self.text_(label), align=Align.L, new_x=XPos.RIGHT, new_y=YPos.TOP)
            self.set_font(self.fonts_.family, size=9)
            self.set_xy(x0 + label_w, y)
            value_text = self.text_(value) if value not in (None, "") else "-"
            self.multi_cell(width - label_w, 5, value_text, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_x(x0)
        self.set_font(self.fonts_.family, size=10)

    def image_box(self, data: bytes | None, x: float, y: float, size: float) -> None:
        buf, why = _jpeg(data, square=False, max_px=800)
        if buf is None:
            self.set_draw_color(150)
            self.set_fill_color(242)
            self.rect(x, y, size, size, style="DF")
            self.set_xy(x, y + size / 2 - 2.5)
            self.set_font(self.fonts_.family, size=8)
            self.set_text_color(90)
            self.cell(size, 5, why, align=Align.C)
            self.set_text_color(0)
            self.set_draw_color(0)
            self.set_fill_color(255)
            self.set_font(self.fonts_.family, size=10)
            return
        self.image(buf, x=x, y=y, w=size, h=size, keep_aspect_ratio=True)


def _notice_box(pdf: _CasePDF, size: float = 11) -> None:
    pdf.set_font(pdf.fonts_.family, "B", size)
    pdf.set_fill_color(255, 243, 205)
    pdf.set_draw_color(200, 150, 0)
    pdf.multi_cell(0, size * 0.55, NOTICE, border=1, fill=True, padding=3,
                   align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.set_font(pdf.fonts_.family, size=10)


def _title_page(pdf: _CasePDF, case_number: str, agency: str, searches: Sequence[CaseSearch],
                audit: Sequence[CaseAuditLine], generated_by: str, generated_at: datetime,
                model_terms: str | None) -> None:
    pdf.add_page()
    pdf.ln(10)
    pdf.set_font(pdf.fonts_.family, "B", 22)
    pdf.multi_cell(0, 11, "Face search case export", align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.fonts_.family, "B", 16)
    pdf.multi_cell(0, 8, pdf.text_(f"Case {case_number}"), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(6)
    period = (f"{_when(searches[0].at)} to {_when(searches[-1].at)}" if searches else "no searches")
    rows: list[tuple[str, object]] = [
        ("Case number", case_number),
        ("Agency", agency),
        ("Generated by", generated_by),
        ("Generated at", _when(generated_at)),
        ("Searches", len(searches)),
        ("Period", period),
        ("Audit lines", len(audit)),
    ]
    if model_terms:
        rows.append(("Model licence terms", model_terms))
    pdf.key_values(rows, _CONTENT_W, label_w=42)
    pdf.ln(6)
    _notice_box(pdf)
    pdf.ln(8)

    pdf.heading("Searches in this export", 12)
    if not searches:
        pdf.multi_cell(0, 5, "No searches are recorded for this case.", align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.fonts_.family, size=9)
    for i, s in enumerate(searches, start=1):
        line = (f"{i}. Search {s.search_id} - {_when(s.at)} - {s.user} - gallery {s.gallery} - "
                f"{len(s.candidates)} candidate(s), {len(s.reviews)} review(s)"
                + (f" - {s.status}" if s.status else ""))
        pdf.multi_cell(0, 5, pdf.text_(line), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.fonts_.family, size=10)
    # Every string of the document is cleaned before rendering starts (see _Fonts.load), so
    # the set of replaced characters is known here, on the first page.
    missing = _Fonts(family=pdf.fonts_.family, unicode=pdf.fonts_.unicode, covered=pdf.fonts_.covered)
    missing.clean(_all_text(case_number, agency, searches, audit, generated_by, model_terms))
    if missing.replaced:
        pdf.ln(6)
        pdf.set_font(pdf.fonts_.family, size=8)
        pdf.set_text_color(120, 0, 0)
        codes = ", ".join(f"U+{ord(c):04X}" for c in sorted(missing.replaced)[:40])
        more = " and more" if len(missing.replaced) > 40 else ""
        pdf.multi_cell(0, 4, "Rendering note: no font available to this export covers some "
                       f"characters of the case data; they are shown as '?': {codes}{more}.",
                       align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_text_color(0)
        pdf.set_font(pdf.fonts_.family, size=10)


def _search_section(pdf: _CasePDF, i: int, n: int, s: CaseSearch) -> None:
    pdf.add_page()
    pdf.start_section(pdf.text_(f"Search {i}: {s.search_id}"))  # a bookmark in the outline
    pdf.heading(f"Search {i} of {n}: {s.search_id}")
    top, top_page = pdf.get_y(), pdf.page_no()
    probe_x = _MARGIN + _CONTENT_W - _PROBE_BOX
    pdf.image_box(s.probe_jpeg, probe_x, top, _PROBE_BOX)
    pdf.set_xy(probe_x, top + _PROBE_BOX + 0.5)
    pdf.set_font(pdf.fonts_.family, size=7)
    pdf.cell(_PROBE_BOX, 4, "Probe image", align=Align.C)
    pdf.set_font(pdf.fonts_.family, size=10)
    pdf.set_xy(_MARGIN, top)
    pdf.key_values([
        ("When", _when(s.at)),
        ("User", s.user),
        ("Gallery", s.gallery),
        ("Purpose", s.purpose),
        ("Authorisation", s.authorization_ref),
        ("Status", s.status),
        ("Threshold", f"{s.threshold:.4f}"),
        ("Threshold meaning", s.threshold_meaning),
    ], _CONTENT_W - _PROBE_BOX - 5)
    if pdf.page_no() == top_page and pdf.get_y() < top + _PROBE_BOX + 6:
        pdf.set_y(top + _PROBE_BOX + 6)
    pdf.ln(3)

    candidates = sorted(s.candidates, key=lambda c: (c.rank, c.candidate_id))
    pdf.heading(f"Candidates ({len(candidates)})", 12)
    pdf.set_font(pdf.fonts_.family, size=8)
    pdf.set_text_color(90)
    pdf.multi_cell(0, 4, NOTICE, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0)
    pdf.ln(1)
    if not candidates:
        pdf.set_font(pdf.fonts_.family, size=9)
        pdf.multi_cell(0, 5, "No candidates were returned.", align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    else:
        _candidate_table(pdf, candidates)
    pdf.ln(4)

    pdf.heading(f"Reviews ({len(s.reviews)})", 12)
    by_id = {c.candidate_id: c for c in candidates}
    if not s.reviews:
        pdf.set_font(pdf.fonts_.family, size=9)
        pdf.multi_cell(0, 5, "No reviews are recorded for this search.", align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    for r in sorted(s.reviews, key=lambda r: r.at):
        c = by_id.get(r.candidate_id)
        who = (f"candidate {r.candidate_id}"
               + (f" (rank {c.rank}, {c.subject or 'no subject label'})" if c else ""))
        pdf.set_font(pdf.fonts_.family, "B", 9)
        pdf.multi_cell(0, 5, pdf.text_(f"{_when(r.at)} - {r.user}: {r.decision} - {who}"),
                       align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(pdf.fonts_.family, size=9)
        if r.note:
            pdf.set_x(_MARGIN + 5)
            pdf.multi_cell(_CONTENT_W - 5, 4.5, pdf.text_(r.note), align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(2)
    pdf.set_font(pdf.fonts_.family, size=10)


def _candidate_table(pdf: _CasePDF, candidates: Sequence[CaseCandidate]) -> None:
    widths = (11, 20, 36, 16, 45, 30, 22)  # sums to the content width, 180 mm
    heading = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
    pdf.set_font(pdf.fonts_.family, size=8)
    with pdf.table(col_widths=widths, width=_CONTENT_W, line_height=4, text_align="LEFT",
                   v_align="M", headings_style=heading, first_row_as_headings=True,
                   cell_fill_mode="NONE", padding=1) as table:
        row = table.row()
        for title in ("Rank", "Image", "Subject", "Score", "Source", "Legal basis", "Candidate"):
            row.cell(title)
        for c in candidates:
            row = table.row()
            row.cell(str(c.rank))
            buf, why = _jpeg(c.thumbnail_jpeg, square=True, max_px=_THUMB_PX)
            if buf is None:
                row.cell(why, align="C")
            else:
                row.cell(img=buf, img_fill_width=True)
            row.cell(_cut(pdf.text_(c.subject or "(no subject label)")))
            row.cell(f"{c.score:.4f}")
            row.cell(_cut(pdf.text_(c.source_uri or "-")))
            row.cell(_cut(pdf.text_(c.legal_basis or "-")))
            row.cell(_cut(pdf.text_(c.candidate_id)))
    pdf.set_font(pdf.fonts_.family, size=10)


def _audit_section(pdf: _CasePDF, audit: Sequence[CaseAuditLine]) -> None:
    pdf.add_page()
    pdf.start_section("Audit excerpt")
    pdf.heading(f"Audit excerpt ({len(audit)} line(s))")
    if not audit:
        pdf.multi_cell(0, 5, "No audit lines are included in this excerpt.", align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    heading = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
    pdf.set_font(pdf.fonts_.family, size=8)
    with pdf.table(col_widths=(44, 28, 32, 46, 30), width=_CONTENT_W, line_height=4,
                   text_align="LEFT", headings_style=heading, first_row_as_headings=True,
                   repeat_headings=1, cell_fill_mode="NONE", padding=1) as table:
        row = table.row()
        for title in ("At", "Actor", "Action", "Target", "Outcome"):
            row.cell(title)
        for a in audit:
            row = table.row()
            row.cell(_when(a.at))
            for value in (a.actor, a.action, a.target, a.outcome):
                row.cell(_cut(pdf.text_(value)))
    pdf.set_font(pdf.fonts_.family, size=10)
