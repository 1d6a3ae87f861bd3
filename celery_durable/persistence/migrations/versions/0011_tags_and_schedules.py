"""Tags and schedules: the pairs runs are found by, and each schedule's pause and last tick.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_tags",
        sa.Column(
            "execution_id",
            sa.String(255),
            sa.ForeignKey(
                "durable_executions.id",
                ondelete="CASCADE",
                name="fk_durable_tags_execution_id",
            ),
            nullable=False,
        ),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "key", name="pk_durable_tags"),
    )
    op.create_index(
        "ix_durable_tags_key_value_created_at_execution_id",
        "durable_tags",
        ["key", "value", "created_at", "execution_id"],
    )
    op.create_table(
        "durable_schedules",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_by", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("last_tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_id", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_durable_schedules"),
    )


def downgrade() -> None:
    op.drop_table("durable_schedules")
    op.drop_index("ix_durable_tags_key_value_created_at_execution_id", "durable_tags")
    op.drop_table("durable_tags")
