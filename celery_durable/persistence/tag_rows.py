"""Tags: string pairs a run is started with, to find it by ("customer" = "c-42"). Declared on
the schema's metadata; revision 0011 creates the table. What a tag may be is model/tags.py's.

A side table rather than a JSON column: one index serves both dialects, and a lookup by a
pair reads its runs newest first straight off that index (``created_at`` is copied in from
the run, which never changes it), so a page of one customer's runs stays a short index range
among millions of runs.

A run's tags are written with its execution row, in the start's own statement (PostgreSQL) or
transaction (SQLite), and never change: a start that finds the run already there writes
none, and deleting the run deletes them (the foreign key cascades).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Insert,
    PrimaryKeyConstraint,
    ScalarSelect,
    Select,
    String,
    Table,
    and_,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from celery_durable.constants import EXECUTIONS_TABLE
from celery_durable.model.tags import KEY_LENGTH, VALUE_LENGTH
from celery_durable.persistence.dialect import Start
from celery_durable.persistence.schema import ID_LENGTH, executions, metadata

TAGS_TABLE: Final = "durable_tags"

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

# Where a new run's tags come from: given with the start, copied from the run that started
# it (a child given none), or nowhere.
Source = Literal["own", "parent"] | None


def source(start: Start) -> Source:
    """``own`` when the start gives tags, ``parent`` when it gives none (None) and has a
    parent, else None: a start given ``{}`` has none of its own and inherits nothing."""
    if start["tags"] is None:
        return "parent" if start["parent_id"] is not None else None
    return "own" if start["tags"] != "{}" else None


def written(start: Start) -> Insert | None:
    """The insert that tags a new run, run in its start's transaction (SQLite: PostgreSQL says
    the same inside its one start statement)."""
    found, run, now = source(start), start["execution_id"], start["now"]
    if found == "own":
        assert start["tags"] is not None
        pairs = json.loads(start["tags"]).items()
        return insert(tags).values(
            [{"execution_id": run, "key": k, "value": v, "created_at": now} for k, v in pairs]
        )
    if found == "parent":
        copied = select(
            literal(run, String(ID_LENGTH)),
            tags.c.key,
            tags.c.value,
            literal(now, DateTime(timezone=True)),
        ).where(tags.c.execution_id == start["parent_id"])
        return insert(tags).from_select(["execution_id", "key", "value", "created_at"], copied)
    return None


def matching(
    query: Select[Any], wanted: Mapping[str, str]
) -> tuple[Select[Any], ColumnElement[Any], ColumnElement[Any]]:
    """``query`` (of executions) narrowed to the runs that carry every pair of ``wanted``, and
    the columns to order and page it by: the first pair's ``created_at`` and
    ``execution_id``, which its index holds in that order after the pair.

    Every other pair is joined on ``created_at`` as well as the id (a run's tags all carry its
    start time), which tells PostgreSQL the orders are the same: it may then walk whichever
    pair's index is shortest (customer=c-42, not env=prod) and still need no sort of the
    rest."""
    (key, value), *others = sorted(wanted.items())
    first = tags.alias("t0")
    joined = first.join(executions, executions.c.id == first.c.execution_id)
    for n, (other_key, other_value) in enumerate(others, 1):
        other = tags.alias(f"t{n}")
        joined = joined.join(
            other,
            and_(
                other.c.execution_id == first.c.execution_id,
                other.c.created_at == first.c.created_at,
                other.c.key == other_key,
                other.c.value == other_value,
            ),
        )
    narrowed = query.select_from(joined).where(first.c.key == key, first.c.value == value)
    return narrowed, first.c.created_at, first.c.execution_id


def of_each_run(sqlite: bool) -> ScalarSelect[Any]:
    """A column for a query of executions: each run's tags as one JSON object (see
    ``loaded``), read by its primary key, so a page of runs comes with its tags in one query."""
    pairs = (func.json_group_object if sqlite else func.json_object_agg)(tags.c.key, tags.c.value)
    return select(pairs).where(tags.c.execution_id == executions.c.id).scalar_subquery()


def loaded(column: str | Mapping[str, str] | None) -> dict[str, str]:
    """What ``of_each_run`` gave: PostgreSQL's JSON as decoded by the driver (None for a run
    without tags), SQLite's as text."""
    if column is None:
        return {}
    return dict(json.loads(column) if isinstance(column, str) else column)


def read(conn: Connection, execution_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The tags of each run named (a run without any is left out), in one query."""
    ids = list(dict.fromkeys(execution_ids))
    found: dict[str, dict[str, str]] = {}
    if not ids:
        return found
    query = select(tags.c.execution_id, tags.c.key, tags.c.value).where(
        tags.c.execution_id.in_(ids)
    )
    for row in conn.execute(query.order_by(tags.c.execution_id, tags.c.key)):
        found.setdefault(row.execution_id, {})[row.key] = row.value
    return found
