"""The two tables a stream reads besides the checkpoints: the values nodes emitted, and who
streams which runs. Declared on the schema's metadata; revision 0010 creates them.

An emitted value is placed by the checkpoint it follows: ``after_seq`` is the run's version
when it was written, ``n`` its order among the values written after that checkpoint. Both
are taken under a share lock on the execution row (postgres.py, sqlite.py), so the value
and the run's next commit cannot pass each other: a stream that read checkpoint ``s`` has
every value placed before ``s``, and reading on by (seq, n) misses none.

Stream readers exist only on PostgreSQL: a node commit notifies only the runs someone
streams, and this table is how it knows (listener.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypedDict

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from celery_durable.constants import EXECUTIONS_TABLE
from celery_durable.model.records import Kind
from celery_durable.persistence.schema import ID_LENGTH, NAME_LENGTH, metadata

EMITS_TABLE: Final = "durable_emits"
STREAM_READERS_TABLE: Final = "durable_stream_readers"
# A reader's key: one run ("run:<id>"), one graph ("graph:<name>") or every run ("*").
KEY_LENGTH = ID_LENGTH + 8

emits = Table(
    EMITS_TABLE,
    metadata,
    Column(
        "execution_id",
        String(ID_LENGTH),
        ForeignKey(f"{EXECUTIONS_TABLE}.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("after_seq", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    # Canonical JSON, sealed as outputs are (compressed, encrypted when keys are set).
    Column("data", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("execution_id", "after_seq", "n"),
)

# Rows live while a stream is open: refreshed by its process's listener, gone when it closes
# or, for a process that died, ignored once expired and deleted by the next stream.
stream_readers = Table(
    STREAM_READERS_TABLE,
    metadata,
    Column("key", String(KEY_LENGTH), nullable=False),
    Column("reader", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("key", "reader"),
)


def run_key(execution_id: str) -> str:
    return f"run:{execution_id}"


def graph_key(graph: str) -> str:
    return f"graph:{graph}"


EVERY_RUN = "*"


@dataclass(frozen=True, slots=True)
class Emitted:
    """A value a node published with ``ctx.emit()``, as ``run.stream()`` yields it between
    checkpoints. Not a checkpoint: ``history()`` never shows it and nothing resumes from it.

    ``seq`` is the checkpoint it follows and ``index`` its place after that one (from 1):
    pass it as ``after=`` to stream on from just past it. ``attempt`` tells a value of an
    attempt that failed (and emitted again on its retry) from the one that committed.
    """

    execution_id: str
    seq: int
    index: int
    kind: Kind
    node: str
    visit: int
    attempt: int
    data: Any
    created_at: datetime


class EmitRow(TypedDict):
    """What ``ctx.emit()`` writes; the database places it (``after_seq``, ``n``)."""

    execution_id: str
    kind: str
    node: str
    visit: int
    attempt: int
    data: str
    now: datetime
