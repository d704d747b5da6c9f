"""Tuned models carry their evaluation report: a nullable JSON column ``report`` on ``tuned_models``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:00:00.000000

Adding a nullable column needs no table rebuild on SQLite (batch mode adds it in place with
``ALTER TABLE ... ADD COLUMN``), so classifiers and jobs keep their references. Models stored before this
revision keep ``report`` NULL and answer 404 ``report_not_available``. The downgrade drops the column with
a plain ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35+), not a batch rebuild, as 0002 does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("tuned_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("tuned_models", "report")
