"""A checksum on each execution row, over what resume, retry and restart read from it.

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
    # Rows written before this revision keep NULL: they are not verified until next written.
    op.add_column("durable_executions", sa.Column("checksum", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("durable_executions", "checksum")
