"""Every failed attempt kept with its error, so that retries show in a run's history.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Attempts that failed before this revision are known only as the visit's last error.
    op.create_table(
        "durable_attempts",
        sa.Column(
            "execution_id",
            sa.String(255),
            sa.ForeignKey(
                "durable_executions.id",
                ondelete="CASCADE",
                name="fk_durable_attempts_execution_id",
            ),
            nullable=False,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "execution_id", "kind", "node", "visit", "attempt", name="pk_durable_attempts"
        ),
    )


def downgrade() -> None:
    op.drop_table("durable_attempts")
