"""Tags: string pairs a run is started with, to find it by ("customer" = "c-42"). Declared on
the schema's metadata; revision 0011 creates the table.

A side table rather than a JSON column: one index serves both dialects, and a lookup by a
pair reads its runs newest first straight off that index (``created_at`` is copied in from
the run, which never changes it), so a page of one customer's runs stays a short index range
among millions of runs.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
)

from celery_durable.constants import EXECUTIONS_TABLE
from celery_durable.persistence.schema import ID_LENGTH, metadata

TAGS_TABLE: Final = "durable_tags"
KEY_LENGTH: Final = 64
VALUE_LENGTH: Final = 200

tags = Table(
    TAGS_TABLE,
    metadata,
    Column(
        "execution_id",
        String(ID_LENGTH),
        ForeignKey(f"{EXECUTIONS_TABLE}.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("key", String(KEY_LENGTH), nullable=False),
    Column("value", String(VALUE_LENGTH), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("execution_id", "key"),
    Index(None, "key", "value", "created_at", "execution_id"),
)
