"""Provenance: who collected an image, and the court order or warrant that covers an image
from a social network or web platform.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as b:
        b.add_column(sa.Column("collector", sa.String(200)))
        b.add_column(sa.Column("warrant_ref", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("images") as b:
        b.drop_column("warrant_ref")
        b.drop_column("collector")
