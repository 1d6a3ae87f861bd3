"""Flow control: circuit breakers and rate limits shared by the fleet, and what a held-back
node visit waits for.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("durable_node_visits", sa.Column("waiting_for", sa.String(200), nullable=True))
    op.create_table(
        "durable_breakers",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probe_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rejections", sa.BigInteger(), nullable=False),
        sa.Column("changed_by", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_durable_breakers"),
    )
    op.create_table(
        "durable_rate_limits",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("next_free_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_durable_rate_limits"),
    )
    op.create_table(
        "durable_slots",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint(
            "scope", "key", "execution_id", "node", "visit", name="pk_durable_slots"
        ),
    )
    op.create_index("ix_durable_slots_expires_at", "durable_slots", ["expires_at"])
    op.create_index("ix_durable_slots_execution_id", "durable_slots", ["execution_id"])
    op.create_table(
        "durable_slot_queue",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_durable_slot_queue"),
        sa.UniqueConstraint(
            "scope",
            "key",
            "execution_id",
            "node",
            "visit",
            name="uq_durable_slot_queue_scope_key_execution_id_node_visit",
        ),
    )
    op.create_index(
        "ix_durable_slot_queue_scope_key_id", "durable_slot_queue", ["scope", "key", "id"]
    )


def downgrade() -> None:
    op.drop_table("durable_slot_queue")
    op.drop_table("durable_slots")
    op.drop_table("durable_rate_limits")
    op.drop_table("durable_breakers")
    op.drop_column("durable_node_visits", "waiting_for")
