"""Who sent each event, and why: sending an event is audited like every operation.

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
    # Events sent before this revision keep NULL: nobody recorded who sent them.
    op.add_column("durable_events", sa.Column("sent_by", sa.String(200), nullable=True))
    op.add_column("durable_events", sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("durable_events", "reason")
    op.drop_column("durable_events", "sent_by")
