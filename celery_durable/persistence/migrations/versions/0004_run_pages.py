"""Indexes for listing runs newest first a page at a time (the web view's keyset paging).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_durable_executions_created_at_id", "durable_executions", ["created_at", "id"]
    )
    op.create_index(
        "ix_durable_executions_status_created_at_id",
        "durable_executions",
        ["status", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_durable_executions_status_created_at_id", "durable_executions")
    op.drop_index("ix_durable_executions_created_at_id", "durable_executions")
