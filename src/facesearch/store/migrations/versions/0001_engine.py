"""The engine's tables: galleries, images, faces, searches and their candidates.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "galleries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("legal_basis", sa.Text),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("gallery_id", sa.Integer, sa.ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("original_path", sa.Text),
        sa.Column("source_uri", sa.Text),
        sa.Column("legal_basis", sa.Text, nullable=False),
        sa.Column("subject", sa.String(300)),
        sa.Column("collected_at", TZ),
        sa.Column("ingested_at", TZ, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.UniqueConstraint("gallery_id", "sha256", name="uq_images_gallery_sha256"),
    )
    op.create_index("ix_images_gallery_id", "images", ["gallery_id"])
    op.create_index("ix_images_subject", "images", ["subject"])
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("gallery_id", sa.Integer, sa.ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("det_score", sa.Float, nullable=False),
        sa.Column("quality", sa.Float, nullable=False),
        sa.Column("sharpness", sa.Float, nullable=False),
        sa.Column("pose", sa.Float, nullable=False),
        sa.Column("quality_reasons", sa.String(200), nullable=False),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_faces_image_id", "faces", ["image_id"])
    op.create_index("ix_faces_gallery_id_id", "faces", ["gallery_id", "id"])
    op.create_table(
        "searches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("case_number", sa.String(200), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("gallery_id", sa.Integer, sa.ForeignKey("galleries.id", ondelete="SET NULL")),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("probe_sha256", sa.String(64), nullable=False),
        sa.Column("probe_faces", sa.Integer, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
    )
    op.create_index("ix_searches_created_at", "searches", ["created_at"])
    op.create_index("ix_searches_case_number", "searches", ["case_number"])
    op.create_table(
        "search_candidates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("probe_face", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("face_id", sa.Integer),
        sa.Column("image_id", sa.Integer),
        sa.Column("score", sa.Float, nullable=False),
    )
    op.create_index("ix_search_candidates_search_id", "search_candidates", ["search_id"])


def downgrade() -> None:
    for t in ("search_candidates", "searches", "faces", "images", "galleries"):
        op.drop_table(t)
