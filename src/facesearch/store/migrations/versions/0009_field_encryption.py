"""Field encryption at rest: blind-index columns for the equality lookups on encrypted fields,
text columns wide enough for ciphertext, and the state of the steps that need the key.

Alembic has no key, so the values themselves are encrypted by a data step that runs right after
the upgrade, from the application (``services/keys.py: encrypt_plaintext``, idempotent, marked
done in ``crypto_state``). Downgrading keeps the ciphertext: it cannot be read without the key.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# columns that now hold "enc:<base64>" (longer than their clear text): widened on PostgreSQL
# (SQLite does not enforce VARCHAR lengths)
_WIDENED = [("agencies", "name"), ("agencies", "case_pattern"), ("users", "username_key"), ("users", "display_name"),
            ("users", "totp_secret"), ("searches", "case_number"), ("searches", "authorization_ref"),
            ("images", "subject"), ("erasure_requests", "actor")]
_BLIND = [("agencies", "name_bi", True), ("users", "username_bi", True), ("searches", "case_bi", False),
          ("images", "subject_bi", False)]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, column in _WIDENED:
        if postgres:
            op.alter_column(table, column, type_=sa.Text)
    for table, column, unique in _BLIND:
        op.add_column(table, sa.Column(column, sa.String(64)))
        op.create_index(f"ix_{table}_{column}", table, [column], unique=unique)
    op.create_table(
        "crypto_state",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("crypto_state")
    for table, column, _unique in _BLIND:
        op.drop_index(f"ix_{table}_{column}", table_name=table)
        with op.batch_alter_table(table) as b:
            b.drop_column(column)
