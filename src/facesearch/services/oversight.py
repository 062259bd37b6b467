"""Oversight for supervisors: who searched how much, when, and what deserves a second look.

A pure function over plain facts (the caller maps database rows onto :class:`SearchFact`), so
it runs without a server or a database. ``oversee(facts, policy, now)`` counts searches per
user, per case and per day and raises four kinds of flag:

``never_reviewed``
    Searches that returned candidates (``candidates > 0``) and were not reviewed within
    ``policy.review_grace`` of being run (``at + review_grace <= now``). Searches without
    candidates have nothing to review and are never flagged. One flag per user.

``unusual_volume``
    A user's searches on one day (a calendar day in ``policy.timezone``) exceed
    ``max(volume_min, volume_factor * median)``, where ``median`` is the median of the same
    user's daily counts over the *other* days on which that user searched at least once in the
    facts (days without searches are not counted as zeros, so absences do not lower the bar).
    With no other day the median is 0 and the bar is ``volume_min``. "Exceed" is strict: a
    count equal to the bar is not flagged. One flag per user and day.

``outside_working_hours``
    Searches whose local time (``policy.timezone``) falls on a day outside
    ``policy.working_days`` or at an hour outside ``[start, end)`` of
    ``policy.working_hours`` (07:00 to 18:59 by default). One flag per user.

``same_face_different_cases``
    Searches of the same face under different case numbers. Two searches are of the same
    face when their probes have the same SHA-256, or when both have embeddings of the same
    size whose cosine similarity is at or above ``policy.same_face_threshold``. Searches are
    grouped transitively (single linkage), and each group holding more than one case number
    is one flag listing all of its searches. The embedding comparison is all-pairs,
    O(n^2 * d) time computed in blocks (O(block * n) memory): fine up to a few thousand
    searches with embeddings; beyond that, use the vector index instead.

Per-day counts and the day of ``unusual_volume`` use the calendar day in
``policy.timezone``. All datetimes must be timezone-aware.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from facesearch.errors import InvalidInput

FLAG_KINDS = (
    "never_reviewed",
    "unusual_volume",
    "outside_working_hours",
    "same_face_different_cases",
)

_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_BLOCK = 512  # rows of the similarity matrix computed at a time


@dataclass(frozen=True, eq=False)
class SearchFact:
    """One search as oversight sees it."""

    search_id: str
    user: str
    case_number: str
    at: datetime  # timezone-aware
    probe_sha256: str
    probe_embedding: np.ndarray | None
    reviewed: bool
    candidates: int


@dataclass(frozen=True)
class OversightPolicy:
    """The rules oversight applies. Hours are local hours in ``timezone``; days are
    ``datetime.weekday()`` numbers (Monday = 0)."""

    working_hours: tuple[int, int] = (7, 19)  # [start, end): 7 <= hour < 19
    working_days: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    timezone: str = "UTC"  # an IANA name understood by zoneinfo
    volume_factor: float = 3.0
    volume_min: int = 20
    same_face_threshold: float = 0.93  # cosine similarity of probe embeddings (dlib-normalised)
    review_grace: timedelta = timedelta(days=2)

    def __post_init__(self) -> None:
        start, end = self.working_hours
        if not (0 <= start < end <= 24):
            raise InvalidInput(f"working hours must satisfy 0 <= start < end <= 24, not {self.working_hours}")
        object.__setattr__(self, "working_days", frozenset(int(d) for d in self.working_days))
        if any(not 0 <= d <= 6 for d in self.working_days):
            raise InvalidInput("working days are weekday numbers from 0 (Monday) to 6 (Sunday)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"unknown time zone {self.timezone!r}") from None
        if not self.volume_factor > 0 or self.volume_min < 0:
            raise InvalidInput("volume_factor must be > 0 and volume_min >= 0")
        if not -1.0 <= self.same_face_threshold <= 1.0:
            raise InvalidInput("same_face_threshold is a cosine similarity, between -1 and 1")
        if self.review_grace < timedelta(0):
            raise InvalidInput("review_grace must not be negative")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def to_json(self) -> dict[str, object]:
        return {
            "working_hours": list(self.working_hours),
            "working_days": [_WEEKDAY_NAMES[d] for d in sorted(self.working_days)],
            "timezone": self.timezone,
            "volume_factor": self.volume_factor,
            "volume_min": self.volume_min,
            "same_face_threshold": self.same_face_threshold,
            "review_grace_hours": self.review_grace.total_seconds() / 3600,
        }


@dataclass(frozen=True)
class Flag:
    """Something a supervisor should look at. ``user`` is None when the flagged searches
    belong to several users (``same_face_different_cases``)."""

    kind: str
    search_ids: tuple[str, ...]
    user: str | None
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "search_ids": list(self.search_ids), "user": self.user,
                "detail": self.detail}


@dataclass(frozen=True)
class OversightReport:
    """Counts and flags. The count mappings are sorted by key; treat them as read-only."""

    generated_at: datetime
    policy: OversightPolicy
    searches: int
    per_user: dict[str, int]
    per_case: dict[str, int]
    per_day: dict[str, int]  # ISO date in the policy's time zone -> count
    flags: tuple[Flag, ...] = field(default=())

    def flags_of(self, kind: str) -> tuple[Flag, ...]:
        if kind not in FLAG_KINDS:
            raise InvalidInput(f"unknown flag kind {kind!r}; one of {', '.join(FLAG_KINDS)}")
        return tuple(f for f in self.flags if f.kind == kind)

    def to_json(self) -> dict[str, object]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "policy": self.policy.to_json(),
            "searches": self.searches,
            "per_user": dict(self.per_user),
            "per_case": dict(self.per_case),
            "per_day": dict(self.per_day),
            "flag_counts": {k: len(self.flags_of(k)) for k in FLAG_KINDS},
            "flags": [f.to_json() for f in self.flags],
        }


# --------------------------------------------------------------------------------------------


def oversee(facts: Iterable[SearchFact], policy: OversightPolicy | None, now: datetime) -> OversightReport:
    """Count and flag ``facts`` under ``policy`` (the default policy when None) as of ``now``."""
    policy = policy or OversightPolicy()
    _require_aware(now, "now")
    items = list(facts)
    for f in items:
        _require_aware(f.at, f"search {f.search_id}: at")
    items.sort(key=lambda f: (f.at, f.search_id))
    zone = policy.zone

    per_user: dict[str, int] = defaultdict(int)
    per_case: dict[str, int] = defaultdict(int)
    per_day: dict[str, int] = defaultdict(int)
    for f in items:
        per_user[f.user] += 1
        per_case[f.case_number] += 1
        per_day[f.at.astimezone(zone).date().isoformat()] += 1

    flags = [
        *_never_reviewed(items, policy, now),
        *_unusual_volume(items, policy),
        *_outside_hours(items, policy),
        *_same_face(items, policy),
    ]
    return OversightReport(
        generated_at=now, policy=policy, searches=len(items),
        per_user=dict(sorted(per_user.items())), per_case=dict(sorted(per_case.items())),
        per_day=dict(sorted(per_day.items())), flags=tuple(flags),
    )


def _require_aware(at: datetime, what: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime")


def _by_user(items: Sequence[SearchFact]) -> dict[str, list[SearchFact]]:
    groups: dict[str, list[SearchFact]] = defaultdict(list)
    for f in items:
        groups[f.user].append(f)
    return dict(sorted(groups.items()))


def _hours(td: timedelta) -> str:
    h = td.total_seconds() / 3600
    return f"{h / 24:g} days" if h >= 24 and h % 24 == 0 else f"{h:g} hours"


def _never_reviewed(items: Sequence[SearchFact], policy: OversightPolicy, now: datetime) -> list[Flag]:
    overdue = [f for f in items if not f.reviewed and f.candidates > 0 and f.at + policy.review_grace <= now]
    flags = []
    for user, group in _by_user(overdue).items():
        oldest = min(group, key=lambda f: f.at)
        flags.append(Flag(
            kind="never_reviewed", search_ids=tuple(f.search_id for f in group), user=user,
            detail=(f"{len(group)} search(es) with candidates not reviewed within "
                    f"{_hours(policy.review_grace)}; oldest {_local(oldest.at, policy)}"),
        ))
    return flags


def _unusual_volume(items: Sequence[SearchFact], policy: OversightPolicy) -> list[Flag]:
    zone = policy.zone
    flags = []
    for user, group in _by_user(items).items():
        days: dict[date, list[SearchFact]] = defaultdict(list)
        for f in group:
            days[f.at.astimezone(zone).date()].append(f)
        counts = {d: len(v) for d, v in days.items()}
        for day in sorted(days):
            others = [c for d, c in counts.items() if d != day]
            median = float(statistics.median(others)) if others else 0.0
            bar = max(float(policy.volume_min), policy.volume_factor * median)
            if counts[day] > bar:
                flags.append(Flag(
                    kind="unusual_volume", search_ids=tuple(f.search_id for f in days[day]), user=user,
                    detail=(f"{counts[day]} searches on {day.isoformat()}; the bar is {bar:g} "
                            f"(max of {policy.volume_min} and {policy.volume_factor:g} x median "
                            f"{median:g} over {len(others)} other day(s))"),
                ))
    return flags


def _outside_hours(items: Sequence[SearchFact], policy: OversightPolicy) -> list[Flag]:
    start, end = policy.working_hours
    outside = []
    for f in items:
        local = f.at.astimezone(policy.zone)
        if local.weekday() not in policy.working_days or not start <= local.hour < end:
            outside.append(f)
    days = ", ".join(_WEEKDAY_NAMES[d] for d in sorted(policy.working_days)) or "none"
    flags = []
    for user, group in _by_user(outside).items():
        times = ", ".join(_local(f.at, policy) for f in group[:5])
        more = f" and {len(group) - 5} more" if len(group) > 5 else ""
        flags.append(Flag(
            kind="outside_working_hours", search_ids=tuple(f.search_id for f in group), user=user,
            detail=(f"{len(group)} search(es) outside {start:02d}:00-{end:02d}:00 on {days} "
                    f"({policy.timezone}): {times}{more}"),
        ))
    return flags


def _local(at: datetime, policy: OversightPolicy) -> str:
    local = at.astimezone(policy.zone)
    return f"{_WEEKDAY_NAMES[local.weekday()]} {local:%Y-%m-%d %H:%M}"


class _Groups:
    """Union-find over indices 0..n-1."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _same_face(items: Sequence[SearchFact], policy: OversightPolicy) -> list[Flag]:
    n = len(items)
    groups = _Groups(n)
    linked_by_file: set[int] = set()
    linked_by_embedding: set[int] = set()

    first_with_hash: dict[str, int] = {}
    for i, f in enumerate(items):
        key = (f.probe_sha256 or "").strip().lower()
        if not key:
            continue
        if key in first_with_hash:
            groups.union(first_with_hash[key], i)
            linked_by_file.update((first_with_hash[key], i))
        else:
            first_with_hash[key] = i

    by_dim: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for i, f in enumerate(items):
        v = _unit(f.probe_embedding)
        if v is not None:
            by_dim[v.shape[0]].append((i, v))
    for members in by_dim.values():
        if len(members) < 2:
            continue
        idx = np.array([i for i, _ in members])
        mat = np.stack([v for _, v in members])
        for lo in range(0, len(members), _BLOCK):
            sims = mat[lo:lo + _BLOCK] @ mat.T
            rows, cols = np.nonzero(sims >= policy.same_face_threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                a, b = int(idx[lo + r]), int(idx[c])
                if a < b:
                    groups.union(a, b)
                    linked_by_embedding.update((a, b))

    components: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        components[groups.find(i)].append(i)
    flags = []
    for members in sorted(components.values(), key=lambda m: m[0]):
        cases = sorted({items[i].case_number for i in members})
        if len(members) < 2 or len(cases) < 2:
            continue
        users = sorted({items[i].user for i in members})
        how = []
        if any(i in linked_by_file for i in members):
            how.append("same probe file")
        if any(i in linked_by_embedding for i in members):
            how.append(f"probe embeddings with cosine similarity >= {policy.same_face_threshold:g}")
        flags.append(Flag(
            kind="same_face_different_cases", search_ids=tuple(items[i].search_id for i in members),
            user=users[0] if len(users) == 1 else None,
            detail=(f"the same face searched under {len(cases)} case numbers: {', '.join(cases)}; "
                    f"user(s): {', '.join(users)}; linked by {' and '.join(how)}"),
        ))
    return flags


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(a)) if a.size else 0.0
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return a / norm
