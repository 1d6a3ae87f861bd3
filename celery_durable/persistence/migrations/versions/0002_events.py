"""Events sent to runs (kept until a wait consumes them, in the order sent), and child runs'
links to their parent.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("durable_executions", sa.Column("parent_id", sa.String(255), nullable=True))
    op.create_index("ix_durable_executions_parent_id", "durable_executions", ["parent_id"])
    op.create_table(
        "durable_events",
        # SQLite autoincrements an INTEGER PRIMARY KEY only.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["durable_executions.id"],
            name="fk_durable_events_execution_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_durable_events"),
        sa.UniqueConstraint(
            "execution_id",
            "idempotency_key",
            name="uq_durable_events_execution_id_idempotency_key",
        ),
    )
    op.create_index(
        "ix_durable_events_execution_id_name_id", "durable_events", ["execution_id", "name", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_durable_events_execution_id_name_id", "durable_events")
    op.drop_table("durable_events")
    op.drop_index("ix_durable_executions_parent_id", "durable_executions")
    op.drop_column("durable_executions", "parent_id")
