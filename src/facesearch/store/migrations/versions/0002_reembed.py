"""Re-embedding progress: which images of a gallery have been embedded with the new model.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reembed_images",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model_id", sa.String(100), primary_key=True),
        sa.Column("gallery_id", sa.Integer, sa.ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
    )
    op.create_index("ix_reembed_images_gallery_model", "reembed_images", ["gallery_id", "model_id"])


def downgrade() -> None:
    op.drop_table("reembed_images")
