"""Erasure requests filed through the service: a pending state awaiting confirmation, and the
suppression list's lift decision.

``erasure_requests.probes`` holds the person's probe embeddings (AES-GCM, bound to the request)
only until the request is confirmed or cancelled; ``matches`` is what the privacy officer
reviews, cleared once the erasure is done. The photos themselves are never stored.

Revision ID: 0011
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("erasure_requests", sa.Column("probes", sa.LargeBinary))
    op.add_column("erasure_requests", sa.Column("matches", sa.Text))
    op.add_column("erasure_requests", sa.Column("confirmed_by", sa.String(200)))
    op.add_column("erasure_requests", sa.Column("confirmed_at", sa.DateTime(timezone=True)))
    op.add_column("suppressions", sa.Column("request_id", sa.String(32)))
    op.add_column("suppressions", sa.Column("lifted_by", sa.String(200)))
    op.add_column("suppressions", sa.Column("lift_reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("suppressions") as b:
        b.drop_column("lift_reason")
        b.drop_column("lifted_by")
        b.drop_column("request_id")
    with op.batch_alter_table("erasure_requests") as b:
        b.drop_column("confirmed_at")
        b.drop_column("confirmed_by")
        b.drop_column("matches")
        b.drop_column("probes")
