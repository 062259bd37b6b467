"""Per-gallery retention periods.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("galleries") as b:
        b.add_column(sa.Column("retention_days", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("galleries") as b:
        b.drop_column("retention_days")
