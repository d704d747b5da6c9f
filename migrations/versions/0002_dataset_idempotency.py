"""Dataset uploads take an Idempotency-Key: the key and the upload's sha256 on ``datasets``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 00:00:00.000000

Nothing here may rebuild ``datasets`` on SQLite: batch mode's move-and-copy drops the old table, and with
foreign keys on that sets every job's ``dataset_id`` to NULL (``ON DELETE SET NULL``). So the pair is
unique through an index (added in place) rather than a constraint, and the downgrade drops the columns
with plain ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35+) instead of a batch rebuild.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("upload_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_datasets_tenant_idempotency", ["tenant_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_tenant_idempotency")
    op.drop_column("datasets", "upload_sha256")
    op.drop_column("datasets", "idempotency_key")
