"""Case export PDF: structure, text, Unicode, missing images and long notes."""
from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image, ImageDraw

from facesearch.services import case_export
from facesearch.services.case_export import (
    NOTICE, CaseAuditLine, CaseCandidate, CaseReview, CaseSearch, case_pdf,
)

T = datetime(2024, 5, 6, 9, 30, tzinfo=timezone.utc)
UNICODE_NAME = "Zoë Ωmega 李"


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (90, 120)) -> bytes:
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).ellipse((10, 10, size[0] - 10, size[1] - 10), fill=(230, 200, 170))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def search(i: int, **changes: object) -> CaseSearch:
    candidates = [
        CaseCandidate(f"cand-{i}-{r}", r, f"Subject {i}-{r}", 0.9 - 0.05 * r,
                      f"file:///gallery/{i}/{r}.jpg", "Police Act s.64A", jpeg((40 * r, 90, 140)))
        for r in (1, 2)
    ]
    reviews = [CaseReview(f"cand-{i}-1", "rev.one", "confirm", "Scar above the left eye matches.",
                          T + timedelta(hours=i, minutes=5))]
    fields: dict[str, object] = dict(
        search_id=f"S-{i}", at=T + timedelta(hours=i), user="inv.smith", gallery="mugshots",
        purpose="Identify a robbery suspect from a CCTV still", authorization_ref="AUTH-17",
        probe_jpeg=jpeg((200, 40, 40), (200, 260)), threshold=0.6,
        threshold_meaning="about 1 false alarm in 1,000 comparisons", candidates=candidates,
        reviews=reviews, status="reviewed",
    )
    fields.update(changes)
    return CaseSearch(**fields)  # type: ignore[arg-type]


AUDIT = [CaseAuditLine(T + timedelta(minutes=m), "inv.smith", "search.run", f"search:S-{m}", "ok")
         for m in range(5)]


def render(searches: list[CaseSearch], audit: list[CaseAuditLine] = AUDIT, **kw: object) -> bytes:
    args: dict[str, object] = dict(generated_by="sgt.jones", generated_at=T + timedelta(days=2),
                                   model_terms="dlib face model: Boost Software License 1.0")
    args.update(kw)
    return case_pdf("CASE-2024/0042", "Metro Police", searches, audit, **args)  # type: ignore[arg-type]


def page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))


def text_of(pdf: bytes) -> list[str]:
    pypdf = pytest.importorskip("pypdf")
    return [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages]


@pytest.fixture(scope="module")
def three() -> bytes:
    return render([search(3), search(1), search(2)])


def test_pdf_has_a_title_page_one_page_per_search_and_an_audit_page(three):
    assert three.startswith(b"%PDF-")
    assert page_count(three) == 5
    pages = text_of(three)
    assert len(pages) == 5
    assert "Page 1 of 5" in pages[0] and "Page 5 of 5" in pages[4]
    for n, page in enumerate(pages[1:4], start=1):  # searches in time order
        assert f"Search {n} of 3: S-{n}" in page


def test_title_page_carries_case_agency_author_notice_and_model_terms(three):
    title = " ".join(text_of(three)[0].split())
    for expected in ("CASE-2024/0042", "Metro Police", "sgt.jones", "2024-05-08 09:30:00+00:00",
                     NOTICE, "Model licence terms", "Boost Software License 1.0", "S-1", "S-2", "S-3"):
        assert expected in title


def test_each_search_page_shows_details_candidates_reviews_and_status(three):
    for n, page in enumerate(text_of(three)[1:4], start=1):
        flat = " ".join(page.split())
        for expected in ("inv.smith", "mugshots", "AUTH-17", "reviewed", "0.6000",
                         "about 1 false alarm in 1,000 comparisons", f"Subject {n}-1", f"Subject {n}-2",
                         f"cand-{n}-1", "0.8500", "Police Act s.64A", "rev.one: confirm",
                         "Scar above the left eye matches."):
            assert expected in flat, (n, expected)


def test_audit_excerpt_lists_every_line(three):
    audit_page = text_of(three)[4]
    assert "Audit excerpt (5 line(s))" in audit_page
    for m in range(5):
        assert f"search:S-{m}" in audit_page


def test_unicode_names_missing_images_and_a_long_note_do_not_break_the_export():
    note = ("Observed at the scene, compared ear shape and hairline. " * 40)[:1985] + " END-OF-NOTE"
    assert len(note) >= 1990
    s = search(1, probe_jpeg=None, candidates=[
        CaseCandidate("c-uni", 1, UNICODE_NAME, 0.77, None, None, None),
        CaseCandidate("c-bad", 2, None, 0.66, "https://example.invalid/" + "x" * 400, "consent", b"not a jpeg"),
    ], reviews=[CaseReview("c-uni", "Zoë", "reject", note, T)])
    pdf = render([s])
    assert pdf.startswith(b"%PDF-")
    text = " ".join(" ".join(text_of(pdf)).split())
    assert "Zoë Ωmega" in text
    assert "no image" in text and "image unreadable" in text
    assert "END-OF-NOTE" in text  # notes are wrapped, never cut
    assert text.count("hairline") == note.count("hairline")
    assert "[truncated]" in text  # table cells are cut at a bounded length
    has_cjk_font = 0x674E in case_export._Fonts.load(UNICODE_NAME).covered
    if has_cjk_font:
        assert UNICODE_NAME in text
    else:
        assert "Zoë Ωmega ?" in text and "U+674E" in text


def test_characters_no_font_covers_are_replaced_and_named_on_the_title_page(monkeypatch):
    monkeypatch.setattr(case_export, "FALLBACK_FONTS", ())
    pdf = render([search(1, candidates=[CaseCandidate("c1", 1, UNICODE_NAME, 0.7, None, None, None)])])
    pages = text_of(pdf)
    assert "U+674E" in pages[0]
    assert "Zoë Ωmega ?" in pages[1]


def test_without_a_unicode_font_the_export_falls_back_to_latin_1(monkeypatch):
    monkeypatch.setattr(case_export, "REGULAR_FONTS", ("/nonexistent/DejaVuSans.ttf",))
    pdf = render([search(1, candidates=[CaseCandidate("c1", 1, UNICODE_NAME, 0.7, None, None, None)])],
                 audit=[], model_terms=None)
    pages = text_of(pdf)
    assert len(pages) == 3
    assert "Zoë ?mega ?" in pages[1]
    assert "U+03A9" in pages[0] and "U+674E" in pages[0]


def test_a_case_without_searches_or_audit_lines_still_renders():
    pdf = render([], audit=[], model_terms=None)
    assert pdf.startswith(b"%PDF-") and page_count(pdf) == 2
    pages = text_of(pdf)
    assert "No searches are recorded for this case." in pages[0]
    assert "Model licence terms" not in pages[0]
    assert "No audit lines" in pages[1]
