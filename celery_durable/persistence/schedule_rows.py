"""Schedules' shared state: one row per schedule name, what every beat reads before it starts
a tick's run. Declared on the schema's metadata; revision 0011 creates the table.

The schedule itself (graph, cron or interval, inputs) lives in code; the row holds only what
an operator or a tick changes: paused or not, by whom, and the last tick started.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Boolean, Column, DateTime, String, Table, Text

from celery_durable.persistence.schema import ID_LENGTH, NAME_LENGTH, metadata

SCHEDULES_TABLE: Final = "durable_schedules"

schedules = Table(
    SCHEDULES_TABLE,
    metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("changed_by", String(NAME_LENGTH), nullable=True),
    Column("reason", Text, nullable=True),
    Column("last_tick", DateTime(timezone=True), nullable=True),
    Column("last_run_id", String(ID_LENGTH), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
