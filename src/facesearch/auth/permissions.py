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


GRANTS: dict[Role, frozenset[Perm]] = {
    Role.SYSADMIN: frozenset({Perm.AGENCY_CREATE, Perm.USER_MANAGE, Perm.GALLERY_GRANT, Perm.GALLERY_LIST,
                              Perm.AUDIT_VERIFY}),
    Role.AGENCY_ADMIN: frozenset({Perm.USER_MANAGE, Perm.AUDIT_VERIFY}),
    Role.SUPERVISOR: frozenset({Perm.GALLERY_LIST, Perm.SEARCH_READ, Perm.CANDIDATE_VIEW, Perm.CASE_EXPORT,
                                Perm.OVERSIGHT_READ, Perm.AUDIT_READ, Perm.AUDIT_VERIFY}),
    Role.INVESTIGATOR: frozenset({Perm.GALLERY_LIST, Perm.SEARCH_CREATE, Perm.SEARCH_READ, Perm.CANDIDATE_VIEW,
                                  Perm.REVIEW_CREATE, Perm.CASE_EXPORT, Perm.AUDIT_VERIFY}),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated user, as every service sees them."""

    user_id: int
    public_id: str
    username: str
    role: Role
    agency_id: int | None
    agency_name: str | None


def allowed(role: Role | str, perm: Perm) -> bool:
    try:
        return perm in GRANTS[Role(role)]
    except ValueError:
        return False  # an unknown role has no permissions


def require(principal: Principal, perm: Perm) -> None:
    if not allowed(principal.role, perm):
        raise Forbidden(f"your role ({principal.role}) may not do this ({perm})")
