"""Runs pinned to a version of their graph, and what each worker serves.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs started before this revision keep NULL: they run on their graph's newest version.
    op.add_column("durable_executions", sa.Column("graph_version", sa.String(64), nullable=True))
    op.create_index(
        "ix_durable_executions_graph_graph_version_status",
        "durable_executions",
        ["graph", "graph_version", "status"],
    )
    op.create_table(
        "durable_deployments",
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("graph", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("shape", sa.Text(), nullable=False),
        sa.Column("routing_keys", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", "graph", "version", name="pk_durable_deployments"),
    )


def downgrade() -> None:
    op.drop_table("durable_deployments")
    op.drop_index("ix_durable_executions_graph_graph_version_status", "durable_executions")
    op.drop_column("durable_executions", "graph_version")
