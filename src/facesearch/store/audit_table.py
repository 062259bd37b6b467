"""The audit trail's table. Its schema (and the triggers that make it append-only) is owned by
migration 0003; this class must match it. Only ``facesearch.audit`` reads or writes it."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from facesearch.store.tables import Base


class AuditLogRow(Base):
    """One audit record. ``seq`` is assigned by ``AuditLog.append`` (1, 2, 3, ... without gaps),
    ``hash`` chains it to the record before it (``prev_hash``)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("prev_hash", name="uq_audit_log_prev_hash"),  # a fork cannot be stored
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_agency_at", "agency", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    agency: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(500))
    outcome: Mapped[str] = mapped_column(String(20))
    request_id: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
