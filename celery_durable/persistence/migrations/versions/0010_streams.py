"""Streams: the values nodes emit (ctx.emit), kept with their run, and who streams which runs,
so that a node commit notifies only the runs someone streams.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_emits",
        sa.Column(
            "execution_id",
            sa.String(255),
            sa.ForeignKey(
                "durable_executions.id",
                ondelete="CASCADE",
                name="fk_durable_emits_execution_id",
            ),
            nullable=False,
        ),
        sa.Column("after_seq", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "after_seq", "n", name="pk_durable_emits"),
    )
    op.create_table(
        "durable_stream_readers",
        sa.Column("key", sa.String(263), nullable=False),
        sa.Column("reader", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", "reader", name="pk_durable_stream_readers"),
    )


def downgrade() -> None:
    op.drop_table("durable_stream_readers")
    op.drop_table("durable_emits")
