"""Database tables (SQLAlchemy 2 declarative). The schema itself is owned by Alembic
migrations in ``store/migrations``; these classes must match them."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from facesearch.auth.lockout import normalise_user_name
from facesearch.store.fields import EncryptedText, blind_index_listener


def _same(value: str) -> str:
    return value


def _stripped(value: str) -> str:
    return value.strip()


class Base(DeclarativeBase):
    pass


class Gallery(Base):
    __tablename__ = "galleries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    legal_basis: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    retention_days: Mapped[int | None] = mapped_column(Integer)  # None: kept until erased


class Image(Base):
    __tablename__ = "images"
    __blind_indexes__ = {"subject_bi": ("subject", "subject", _same)}
    __table_args__ = (UniqueConstraint("gallery_id", "sha256", name="uq_images_gallery_sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    original_path: Mapped[str | None] = mapped_column(EncryptedText("images.original_path"))
    source_uri: Mapped[str | None] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(EncryptedText("images.subject"), index=True)
    subject_bi: Mapped[str | None] = mapped_column(String(64), index=True)
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # "faces" | "no_face" | "rejected_quality"
    collector: Mapped[str | None] = mapped_column(String(200))
    warrant_ref: Mapped[str | None] = mapped_column(String(200))
    faces: Mapped[list["Face"]] = relationship(back_populates="image", cascade="all, delete-orphan")


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = (Index("ix_faces_gallery_id_id", "gallery_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"))
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    det_score: Mapped[float] = mapped_column(Float)
    quality: Mapped[float] = mapped_column(Float)
    sharpness: Mapped[float] = mapped_column(Float)
    pose: Mapped[float] = mapped_column(Float)
    quality_reasons: Mapped[str] = mapped_column(String(200), default="")
    model_id: Mapped[str] = mapped_column(String(100))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    image: Mapped[Image] = relationship(back_populates="faces")


class Search(Base):
    __tablename__ = "searches"
    __blind_indexes__ = {"case_bi": ("case_number", "case", _stripped)}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    case_number: Mapped[str] = mapped_column(EncryptedText("searches.case_number"), index=True)
    case_bi: Mapped[str | None] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(EncryptedText("searches.purpose"))
    gallery_id: Mapped[int | None] = mapped_column(ForeignKey("galleries.id", ondelete="SET NULL"))
    model_id: Mapped[str] = mapped_column(String(100))
    probe_sha256: Mapped[str] = mapped_column(String(64))
    probe_faces: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    public_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    authorization_ref: Mapped[str | None] = mapped_column(EncryptedText("searches.authorization_ref"))
    candidates: Mapped[list["SearchCandidate"]] = relationship(cascade="all, delete-orphan")


class SearchCandidate(Base):
    __tablename__ = "search_candidates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    probe_face: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    face_id: Mapped[int | None] = mapped_column(Integer)  # no FK: erasure must not rewrite history
    image_id: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    public_id: Mapped[str | None] = mapped_column(String(32), unique=True)


class ReembedImage(Base):
    """An image of a gallery being moved to another model, and its outcome under that model."""

    __tablename__ = "reembed_images"
    __table_args__ = (Index("ix_reembed_images_gallery_model", "gallery_id", "model_id"),)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))  # "faces" | "no_face" | "rejected_quality" | "error"


class Agency(Base):
    __tablename__ = "agencies"
    __blind_indexes__ = {"name_bi": ("name", "agency", normalise_user_name)}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(EncryptedText("agencies.name"), unique=True)
    name_bi: Mapped[str | None] = mapped_column(String(64), unique=True)
    case_pattern: Mapped[str] = mapped_column(EncryptedText("agencies.case_pattern"))
    purposes: Mapped[str] = mapped_column(EncryptedText("agencies.purposes"))  # JSON list
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class User(Base):
    __tablename__ = "users"
    __blind_indexes__ = {"username_bi": ("username_key", "user", normalise_user_name)}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"))
    username_key: Mapped[str] = mapped_column(EncryptedText("users.username_key"), unique=True)  # normalised
    username_bi: Mapped[str | None] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(EncryptedText("users.display_name"))
    role: Mapped[str] = mapped_column(String(30))
    password_hash: Mapped[str] = mapped_column(Text)
    totp_secret: Mapped[str] = mapped_column(EncryptedText("users.totp_secret"))
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    totp_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lockout(Base):
    __tablename__ = "lockouts"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # blind index of the user name
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Token(Base):
    __tablename__ = "tokens"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GalleryGrant(Base):
    __tablename__ = "gallery_grants"
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("search_candidates.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decision: Mapped[str] = mapped_column(String(10))
    note: Mapped[str] = mapped_column(EncryptedText("reviews.note"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProbeImage(Base):
    """A service search's probe, re-encoded as JPEG (no metadata) and encrypted."""

    __tablename__ = "probe_images"
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20))
    images: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(EncryptedText("erasure_requests.actor"))
    # filed through the service (0011): encrypted probe embeddings until confirmed or cancelled,
    # the matches shown for confirmation until the erasure is done
    probes: Mapped[bytes | None] = mapped_column(LargeBinary)
    matches: Mapped[str | None] = mapped_column(Text)
    confirmed_by: Mapped[str | None] = mapped_column(String(200))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Suppression(Base):
    """An erased person's embedding (only that, encrypted): later ingests skip matching faces."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[str] = mapped_column(String(100))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str | None] = mapped_column(String(32))  # the erasure request's public id
    lifted_by: Mapped[str | None] = mapped_column(String(200))
    lift_reason: Mapped[str | None] = mapped_column(Text)


class CryptoState(Base):
    """Progress of the field-encryption steps that run outside Alembic (they need the key):
    ``plaintext_encrypted`` (the one-off data step after migration 0009) and ``rotation`` (JSON:
    target key version, table and last primary key done, finished or not)."""

    __tablename__ = "crypto_state"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


for _cls in (Image, Search, Agency, User):
    blind_index_listener(_cls)
