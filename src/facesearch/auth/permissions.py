"""The one authorization decision point: which role may do what. Deny by default.

Routes declare the permission they need (``api.deps.Requires``); services call ``require``.
Tenant scoping (a user sees only their own agency's data) is enforced by the repositories
that take a ``Principal``; this module decides the verb, they decide the rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from facesearch.errors import Forbidden


class Role(StrEnum):
    SYSADMIN = "sysadmin"  # creates agencies and their first admin, grants shared galleries
    AGENCY_ADMIN = "agency_admin"  # manages the users of its own agency
    SUPERVISOR = "supervisor"  # reads its agency's searches, reviews and audit; oversight
    INVESTIGATOR = "investigator"  # searches, reviews others' searches
    PRIVACY_OFFICER = "privacy_officer"  # operator-level: erasure and access requests of the public


class Perm(StrEnum):
    AGENCY_CREATE = "agency.create"
    USER_MANAGE = "user.manage"
    GALLERY_GRANT = "gallery.grant"
    GALLERY_LIST = "gallery.list"
    SEARCH_CREATE = "search.create"
    SEARCH_READ = "search.read"
    CANDIDATE_VIEW = "candidate.view"
    REVIEW_CREATE = "review.create"
    CASE_EXPORT = "case.export"
    OVERSIGHT_READ = "oversight.read"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"
    # the whole trail's size (records checked, the head's sequence number): the volume of every
    # agency's activity, so only for the operator; the others learn whether the chain is intact
    AUDIT_VOLUME = "audit.volume"
    ERASURE_REQUEST = "erasure.request"  # file an erasure request by photo, read it, cancel it
    ERASURE_MATCHES = "erasure.matches"  # see the matching faces (all galleries) and their thumbnails
    ERASURE_CONFIRM = "erasure.confirm"  # confirm: the matches are deleted, the person suppressed
    ACCESS_REPORT = "privacy.access_report"  # what is held about a person, found by their photo
    SUPPRESSION_LIST = "suppression.list"  # suppression entries (ids and dates, never embeddings)
    SUPPRESSION_LIFT = "suppression.lift"  # an audited administrator decision, with a reason


GRANTS: dict[Role, frozenset[Perm]] = {
    Role.SYSADMIN: frozenset({Perm.AGENCY_CREATE, Perm.USER_MANAGE, Perm.GALLERY_GRANT, Perm.GALLERY_LIST,
                              Perm.AUDIT_VERIFY, Perm.AUDIT_VOLUME, Perm.SUPPRESSION_LIST,
                              Perm.SUPPRESSION_LIFT}),
    Role.AGENCY_ADMIN: frozenset({Perm.USER_MANAGE, Perm.AUDIT_VERIFY}),
    Role.SUPERVISOR: frozenset({Perm.GALLERY_LIST, Perm.SEARCH_READ, Perm.CANDIDATE_VIEW, Perm.CASE_EXPORT,
                                Perm.OVERSIGHT_READ, Perm.AUDIT_READ, Perm.AUDIT_VERIFY}),
    Role.INVESTIGATOR: frozenset({Perm.GALLERY_LIST, Perm.SEARCH_CREATE, Perm.SEARCH_READ, Perm.CANDIDATE_VIEW,
                                  Perm.REVIEW_CREATE, Perm.CASE_EXPORT, Perm.AUDIT_VERIFY}),
    # Sees faces of every gallery, but only those matching the photo of the person who asks;
    # never searches, never reads searches, never lifts a suppression.
    Role.PRIVACY_OFFICER: frozenset({Perm.ERASURE_REQUEST, Perm.ERASURE_MATCHES, Perm.ERASURE_CONFIRM,
                                     Perm.ACCESS_REPORT, Perm.SUPPRESSION_LIST}),
}

#: Roles of the operator itself, outside every agency (provisioned by a system administrator).
OPERATOR_ROLES: frozenset[Role] = frozenset({Role.SYSADMIN, Role.PRIVACY_OFFICER})


@dataclass(frozen=True)
class Principal:
    """An authenticated user, as every service sees them."""

    user_id: int
    public_id: str
    username: str
    role: Role
    agency_id: int | None
    agency_name: str | None
    agency_public_id: str | None = None

    # what the audit trail records: public ids, never names (they are encrypted at rest)
    @property
    def audit_actor(self) -> str:
        return f"user:{self.public_id}"

    @property
    def audit_agency(self) -> str | None:
        return self.agency_public_id


def allowed(role: Role | str, perm: Perm) -> bool:
    try:
        return perm in GRANTS[Role(role)]
    except ValueError:
        return False  # an unknown role has no permissions


def require(principal: Principal, perm: Perm) -> None:
    if not allowed(principal.role, perm):
        raise Forbidden(f"your role ({principal.role}) may not do this ({perm})")
