"""The provenance guard: social network and web platform sources need a court order or warrant."""
from __future__ import annotations

import pytest

from facesearch.services.provenance import check_source, is_social_host, source_host, warrant_reference


@pytest.mark.parametrize("uri", [
    "https://www.facebook.com/photo?fbid=1", "http://instagram.com/p/x", "https://m.vk.com/id1",
    "https://x.com/someone/photo/1", "https://pbs.twimg.com/media/a.jpg", "https://www.linkedin.com/in/a",
    "https://youtu.be/abc", "https://www.tiktok.com/@a", "venmo.com/u/a", "https://scontent.cdninstagram.com/a.jpg",
])
def test_social_hosts_are_refused_without_a_warrant(uri: str) -> None:
    d = check_source(uri, "State booking records, statute 12-3")
    assert not d.allowed and d.host and "court order or warrant" in (d.reason or "")


@pytest.mark.parametrize("basis,ref", [
    ("Search warrant 2026-W-0042, District Court", "Search warrant 2026-W-0042"),
    ("court order no. 12/345", "court order no. 12/345"),
    ("per WARRANT #A-17", "WARRANT #A-17"),
])
def test_a_warrant_reference_admits_the_row_and_is_recorded(basis: str, ref: str) -> None:
    d = check_source("https://www.facebook.com/photo?fbid=1", basis)
    assert d.allowed and d.warrant_ref == ref


@pytest.mark.parametrize("uri", [None, "", "file:///evidence/case-12/img1.jpg", "https://records.county.gov/booking/1",
                                 "https://notfacebook.com.example.org/x", "https://facebook.example/x"])
def test_other_sources_pass(uri: str | None) -> None:
    assert check_source(uri, "statute 12-3").allowed


def test_host_matching_is_on_labels_not_substrings() -> None:
    assert source_host("HTTPS://WWW.FaceBook.COM./x") == "www.facebook.com"
    assert is_social_host("a.b.facebook.com") and not is_social_host("facebook.com.evil.org")
    assert warrant_reference("no legal process named") is None
