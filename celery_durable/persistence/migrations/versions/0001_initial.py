"""Executions, checkpoints and node visits.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_executions",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("graph", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("swept_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_durable_executions"),
        # Room on each page for in-place (HOT) updates: every node commit rewrites the row.
        postgresql_with={"fillfactor": 70},
    )
    op.create_index("ix_durable_executions_status", "durable_executions", ["status"])
    op.create_index("ix_durable_executions_graph_status", "durable_executions", ["graph", "status"])
    op.create_table(
        "durable_checkpoints",
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["durable_executions.id"],
            name="fk_durable_checkpoints_execution_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_durable_checkpoints"),
        sa.UniqueConstraint(
            "execution_id",
            "kind",
            "node",
            "visit",
            name="uq_durable_checkpoints_execution_id_kind_node_visit",
        ),
    )
    op.create_table(
        "durable_node_visits",
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("redeliveries", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["durable_executions.id"],
            name="fk_durable_node_visits_execution_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "execution_id", "kind", "node", "visit", name="pk_durable_node_visits"
        ),
    )
    op.create_index("ix_durable_node_visits_due_at", "durable_node_visits", ["due_at"])


def downgrade() -> None:
    op.drop_table("durable_node_visits")
    op.drop_table("durable_checkpoints")
    op.drop_index("ix_durable_executions_graph_status", "durable_executions")
    op.drop_index("ix_durable_executions_status", "durable_executions")
    op.drop_table("durable_executions")
