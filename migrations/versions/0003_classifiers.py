"""Zero-shot classifiers as a resource: the ``classifiers`` table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:00:00.000000

A new table, so no batch rebuild of anything existing. ``model_id`` is a plain column (no foreign key):
deleting a tuned model leaves its classifiers, whose predictions then answer 409 ``model_deleted``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "classifiers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("backbone", sa.String(length=200), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=True),
        sa.Column("text_features_key", sa.String(length=500), nullable=False),
        sa.Column("text_features_sha256", sa.String(length=64), nullable=False),
        sa.Column("text_features_cached", sa.Boolean(), nullable=False),
        sa.Column("text_features_seconds", sa.Float(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_classifiers_tenant_id"), "classifiers", ["tenant_id"], unique=False)
    op.create_index(
        "ix_classifiers_tenant_idempotency", "classifiers", ["tenant_id", "idempotency_key"], unique=True
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_classifiers_tenant_idempotency", table_name="classifiers")
    op.drop_index(op.f("ix_classifiers_tenant_id"), table_name="classifiers")
    op.drop_table("classifiers")
