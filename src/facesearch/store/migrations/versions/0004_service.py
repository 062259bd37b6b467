"""The investigator service: agencies (tenants), users, sign-in state, gallery ownership and
grants, searches tied to their agency and user, candidates and reviews with random public ids.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agencies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("case_pattern", sa.String(200), nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),  # JSON list
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False, unique=True),
        sa.Column("agency_id", sa.Integer, sa.ForeignKey("agencies.id", ondelete="CASCADE")),
        sa.Column("username_key", sa.String(200), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(30), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("totp_secret", sa.String(64), nullable=False),
        sa.Column("totp_last_step", sa.BigInteger),
        sa.Column("totp_confirmed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "lockouts",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_started_at", TZ),
        sa.Column("locked_until", TZ),
    )
    op.create_table(
        "tokens",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),  # "api" | "session" | "bootstrap"
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("last_used_at", TZ),
        sa.Column("revoked_at", TZ),
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    with op.batch_alter_table("galleries") as b:
        b.add_column(sa.Column("agency_id", sa.Integer, sa.ForeignKey("agencies.id", name="fk_galleries_agency",
                                                                      ondelete="CASCADE")))
    op.create_table(
        "gallery_grants",
        sa.Column("gallery_id", sa.Integer, sa.ForeignKey("galleries.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("agency_id", sa.Integer, sa.ForeignKey("agencies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("granted_at", TZ, nullable=False),
    )
    with op.batch_alter_table("searches") as b:
        b.add_column(sa.Column("public_id", sa.String(32)))
        b.add_column(sa.Column("agency_id", sa.Integer, sa.ForeignKey("agencies.id", name="fk_searches_agency",
                                                                      ondelete="CASCADE")))
        b.add_column(sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", name="fk_searches_user",
                                                                    ondelete="SET NULL")))
        b.add_column(sa.Column("authorization_ref", sa.String(200)))
        b.create_index("ix_searches_public_id", ["public_id"], unique=True)
        b.create_index("ix_searches_agency_id", ["agency_id"])
    with op.batch_alter_table("search_candidates") as b:
        b.add_column(sa.Column("public_id", sa.String(32)))
        b.create_index("ix_search_candidates_public_id", ["public_id"], unique=True)
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False, unique=True),
        sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("search_candidates.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_reviews_search_id", "reviews", ["search_id"])


def downgrade() -> None:
    op.drop_table("reviews")
    with op.batch_alter_table("search_candidates") as b:
        b.drop_index("ix_search_candidates_public_id")
        b.drop_column("public_id")
    with op.batch_alter_table("searches") as b:
        b.drop_index("ix_searches_agency_id")
        b.drop_index("ix_searches_public_id")
        for c in ("authorization_ref", "user_id", "agency_id", "public_id"):
            b.drop_column(c)
    op.drop_table("gallery_grants")
    with op.batch_alter_table("galleries") as b:
        b.drop_column("agency_id")
    for t in ("tokens", "lockouts", "users", "agencies"):
        op.drop_table(t)
