"""Oversight: counts per user, case and day, and each flag's rule, on hand-built facts."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from facesearch.errors import InvalidInput
from facesearch.services.oversight import FLAG_KINDS, OversightPolicy, SearchFact, oversee

MONDAY_10 = datetime(2024, 5, 6, 10, 0, tzinfo=timezone.utc)  # a Monday, inside working hours
NOW = MONDAY_10 + timedelta(days=30)
_rng = np.random.default_rng(7)


def _vec() -> np.ndarray:
    v = _rng.normal(size=128).astype(np.float32)
    return v / np.linalg.norm(v)


def fact(n: int, *, user: str = "alice", case: str = "C-1", at: datetime = MONDAY_10,
         sha: str | None = None, emb: np.ndarray | None = None, reviewed: bool = True,
         candidates: int = 3) -> SearchFact:
    return SearchFact(search_id=f"s{n}", user=user, case_number=case, at=at,
                      probe_sha256=sha if sha is not None else f"sha-{n}", probe_embedding=emb,
                      reviewed=reviewed, candidates=candidates)


def kinds(report) -> list[str]:
    return [f.kind for f in report.flags]


def test_clean_facts_raise_no_flag_and_are_counted_per_user_case_and_day():
    facts = [
        fact(1, user="alice", case="C-1", emb=_vec()),
        fact(2, user="alice", case="C-2", at=MONDAY_10 + timedelta(hours=1), emb=_vec()),
        fact(3, user="bob", case="C-1", at=MONDAY_10 + timedelta(days=1), emb=_vec()),
    ]
    report = oversee(facts, OversightPolicy(), NOW)
    assert report.flags == ()
    assert report.searches == 3
    assert report.per_user == {"alice": 2, "bob": 1}
    assert report.per_case == {"C-1": 2, "C-2": 1}
    assert report.per_day == {"2024-05-06": 2, "2024-05-07": 1}


def test_no_facts_give_an_empty_report():
    report = oversee([], None, NOW)
    assert (report.searches, report.per_user, report.per_case, report.per_day, report.flags) == (0, {}, {}, {}, ())


def test_per_day_uses_the_calendar_day_of_the_policy_time_zone():
    late = datetime(2024, 5, 6, 23, 30, tzinfo=timezone.utc)  # 01:30 on 7 May in Berlin (CEST)
    assert oversee([fact(1, at=late)], OversightPolicy(), NOW).per_day == {"2024-05-06": 1}
    berlin = OversightPolicy(timezone="Europe/Berlin", working_hours=(0, 24), working_days=range(7))
    assert oversee([fact(1, at=late)], berlin, NOW).per_day == {"2024-05-07": 1}


# never_reviewed ----------------------------------------------------------------------------

def test_unreviewed_searches_with_candidates_past_the_grace_period_are_flagged_per_user():
    grace = timedelta(days=2)
    facts = [
        fact(1, reviewed=False, at=NOW - grace),  # exactly at the grace limit: overdue
        fact(2, reviewed=False, at=NOW - grace - timedelta(days=5)),
        fact(3, reviewed=False, at=NOW - grace + timedelta(minutes=1)),  # still within grace
        fact(4, reviewed=False, candidates=0, at=NOW - timedelta(days=10)),  # nothing to review
        fact(5, reviewed=True, at=NOW - timedelta(days=10)),
        fact(6, user="bob", reviewed=False, at=NOW - timedelta(days=3)),
    ]
    policy = OversightPolicy(review_grace=grace, working_hours=(0, 24), working_days=range(7))
    flags = oversee(facts, policy, NOW).flags_of("never_reviewed")
    assert [(f.user, set(f.search_ids)) for f in flags] == [("alice", {"s1", "s2"}), ("bob", {"s6"})]
    assert "2 days" in flags[0].detail


# unusual_volume ----------------------------------------------------------------------------

def _days_of(user: str, counts: list[int], start: int = 0) -> list[SearchFact]:
    facts, n = [], start
    for day, count in enumerate(counts):
        for k in range(count):
            facts.append(fact(n, user=user, at=MONDAY_10 + timedelta(days=7 * day, minutes=k)))
            n += 1
    return facts


def test_volume_equal_to_factor_times_median_is_not_flagged_one_more_is():
    policy = OversightPolicy()  # factor 3, minimum 20
    at_bar = oversee(_days_of("alice", [10, 10, 10, 30]), policy, NOW)
    assert at_bar.flags_of("unusual_volume") == ()
    over = oversee(_days_of("alice", [10, 10, 10, 31]), policy, NOW)
    (flag,) = over.flags_of("unusual_volume")
    assert flag.user == "alice" and len(flag.search_ids) == 31
    assert "31 searches on 2024-05-27" in flag.detail and "median 10" in flag.detail


def test_volume_minimum_applies_when_the_median_is_small_or_there_is_no_other_day():
    policy = OversightPolicy(volume_min=20)
    assert oversee(_days_of("new", [20]), policy, NOW).flags_of("unusual_volume") == ()
    assert len(oversee(_days_of("new", [21]), policy, NOW).flags_of("unusual_volume")) == 1
    # median 2 -> 3 x 2 = 6 is under the minimum, so 20 searches are still fine
    assert oversee(_days_of("low", [2, 2, 20]), policy, NOW).flags_of("unusual_volume") == ()


def test_volume_is_judged_against_the_same_users_other_days_only():
    facts = _days_of("busy", [40, 40, 40]) + _days_of("quiet", [1, 1, 25], start=1000)
    flags = oversee(facts, OversightPolicy(), NOW).flags_of("unusual_volume")
    assert [f.user for f in flags] == ["quiet"]


# outside_working_hours -----------------------------------------------------------------------

def test_working_hours_are_read_in_the_policy_time_zone():
    early = datetime(2024, 5, 6, 6, 30, tzinfo=timezone.utc)  # 08:30 in Berlin (CEST)
    utc = oversee([fact(1, at=early)], OversightPolicy(), NOW)
    assert kinds(utc) == ["outside_working_hours"]
    berlin = oversee([fact(1, at=early)], OversightPolicy(timezone="Europe/Berlin"), NOW)
    assert berlin.flags == ()


def test_working_hours_end_is_exclusive_and_weekends_are_outside():
    day = datetime(2024, 5, 6, tzinfo=timezone.utc)
    facts = [
        fact(1, at=day.replace(hour=18, minute=59)),  # inside
        fact(2, at=day.replace(hour=19)),  # outside: the end hour is excluded
        fact(3, at=day.replace(hour=7)),  # inside: the start hour is included
        fact(4, at=day + timedelta(days=5, hours=11)),  # Saturday 11:00
        fact(5, user="bob", at=day.replace(hour=3)),
    ]
    flags = oversee(facts, OversightPolicy(), NOW).flags_of("outside_working_hours")
    assert [(f.user, f.search_ids) for f in flags] == [("alice", ("s2", "s4")), ("bob", ("s5",))]
    assert "Sat 2024-05-11 11:00" in flags[0].detail


def test_an_aware_time_in_another_offset_is_converted_before_judging_hours():
    new_york = timezone(timedelta(hours=-4))
    at = datetime(2024, 5, 6, 16, 0, tzinfo=new_york)  # 20:00 UTC
    assert kinds(oversee([fact(1, at=at)], OversightPolicy(), NOW)) == ["outside_working_hours"]


# same_face_different_cases --------------------------------------------------------------------

def test_same_probe_file_under_different_case_numbers_is_flagged_across_users():
    facts = [fact(1, case="C-1", sha="abc"), fact(2, user="bob", case="C-2", sha="ABC"),
             fact(3, case="C-3", sha="other")]
    (flag,) = oversee(facts, OversightPolicy(), NOW).flags_of("same_face_different_cases")
    assert flag.search_ids == ("s1", "s2") and flag.user is None
    assert "C-1, C-2" in flag.detail and "same probe file" in flag.detail


def test_similar_embeddings_are_the_same_face_and_the_threshold_is_a_parameter():
    a = _vec()
    noise = _vec()
    near = a + 0.2 * noise
    near /= np.linalg.norm(near)
    cos = float(a @ near)
    assert 0.93 < cos < 0.99
    facts = [fact(1, case="C-1", emb=a), fact(2, case="C-2", emb=near), fact(3, case="C-3", emb=_vec())]
    (flag,) = oversee(facts, OversightPolicy(), NOW).flags_of("same_face_different_cases")
    assert flag.search_ids == ("s1", "s2") and flag.user == "alice"
    assert "cosine" in flag.detail
    strict = OversightPolicy(same_face_threshold=0.995)
    assert oversee(facts, strict, NOW).flags_of("same_face_different_cases") == ()


def test_same_face_within_one_case_is_not_flagged_and_missing_embeddings_are_skipped():
    a = _vec()
    facts = [fact(1, case="C-1", emb=a), fact(2, case="C-1", emb=a.copy()),
             fact(3, case="C-2", emb=None), fact(4, case="C-3", emb=np.zeros(128))]
    assert oversee(facts, OversightPolicy(), NOW).flags == ()


def test_same_face_groups_are_transitive_and_list_every_search():
    a, b = _vec(), _vec()
    facts = [fact(1, case="C-1", sha="x", emb=a), fact(2, case="C-1", sha="y", emb=b),
             fact(3, case="C-2", sha="x"), fact(4, case="C-3", sha="z", emb=b * 2.0)]
    flags = oversee(facts, OversightPolicy(), NOW).flags_of("same_face_different_cases")
    assert [f.search_ids for f in flags] == [("s1", "s3"), ("s2", "s4")]  # two different faces
    facts.append(fact(5, case="C-4", sha="y", emb=a))  # links a's group and b's group
    (flag,) = oversee(facts, OversightPolicy(), NOW).flags_of("same_face_different_cases")
    assert flag.search_ids == ("s1", "s2", "s3", "s4", "s5")


# report and validation -------------------------------------------------------------------------

def test_report_to_json_is_serialisable_and_counts_flags_by_kind():
    facts = [fact(1, reviewed=False, at=MONDAY_10.replace(hour=3), sha="q", case="C-1"),
             fact(2, case="C-2", sha="q")]
    data = oversee(facts, OversightPolicy(), NOW).to_json()
    text = json.dumps(data)
    assert json.loads(text)["flag_counts"] == {
        "never_reviewed": 1, "unusual_volume": 0, "outside_working_hours": 1,
        "same_face_different_cases": 1,
    }
    assert data["policy"]["working_days"] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert {f["kind"] for f in data["flags"]} <= set(FLAG_KINDS)


def test_naive_datetimes_and_bad_policies_are_refused():
    naive = datetime(2024, 5, 6, 10, 0)
    with pytest.raises(InvalidInput):
        oversee([fact(1, at=naive)], None, NOW)
    with pytest.raises(InvalidInput):
        oversee([], None, naive)
    for bad in ({"working_hours": (19, 7)}, {"timezone": "Mars/Olympus"}, {"working_days": {7}},
                {"volume_factor": 0}, {"same_face_threshold": 1.5}, {"review_grace": timedelta(-1)}):
        with pytest.raises(InvalidInput):
            OversightPolicy(**bad)
