"""Compaction: deleting checkpoints of a run whose graph keeps only its newest ones
(``keep_checkpoints``), with the rows that hang off them. SQL only: which checkpoints may go
is the engine's decision (engine/compaction.py); here they are found and deleted.

Checksums are per row (codec.checkpoint_parts names no other row), so deleting a checkpoint
leaves every other one verifying as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, case, delete, func, not_, or_, select, tuple_

from celery_durable.errors import EncryptionKeyMissing
from celery_durable.model.records import Kind
from celery_durable.model.wait import Visit
from celery_durable.persistence import codec
from celery_durable.persistence.database import Database
from celery_durable.persistence.rows import STATELESS
from celery_durable.persistence.schema import attempts, checkpoints, events, node_visits
from celery_durable.persistence.sealing import Sealer, Unsealable
from celery_durable.persistence.stream_rows import emits

_STATELESS = [str(kind) for kind in STATELESS]


@dataclass(frozen=True, slots=True)
class Compactable:
    """A checkpoint compaction may delete, as much of it as deciding and deleting needs."""

    seq: int
    kind: Kind
    node: str
    visit: int
    meta: dict[str, Any] | None
    # The event a wake consumed: it goes with the wake, which is what records it consumed.
    event: int | None = None
    # A wake whose output this process cannot open (a key it lacks): what it consumed is
    # unknown, so it stays.
    opaque: bool = False


def floor(db: Database, execution_id: str, newest: int, keep: int) -> int:
    """The seq below which checkpoints may go: the newest ``keep`` up to ``newest`` stay, and
    so does the newest checkpoint at or before them that records a state (a step, a wait or
    a wake records none: the state in effect there is that one's)."""
    oldest = newest - keep + 1
    if oldest <= 0:
        return 0
    c = checkpoints.c
    query = select(func.max(c.seq)).where(
        c.execution_id == execution_id, c.seq <= oldest, c.kind.not_in(_STATELESS)
    )
    with db.read() as conn:
        return int(conn.execute(query).scalar() or 0)


def candidates(
    db: Database,
    sealer: Sealer,
    execution_id: str,
    *,
    below: int,
    after: int,
    kinds: Collection[Kind],
    kept_nodes: Collection[str],
    in_flight: Iterable[Visit],
    limit: int,
) -> list[Compactable]:
    """Checkpoints with ``after`` < seq < ``below`` of ``kinds``, oldest first, up to
    ``limit``: none of a node in ``kept_nodes``, and no step, wait or wake of a visit in
    ``in_flight`` (it reads them when it runs again)."""
    c = checkpoints.c
    query = (
        select(
            c.seq,
            c.kind,
            c.node,
            c.visit,
            c.meta,
            case((c.kind == str(Kind.WAKE), c.output), else_=None).label("output"),
        )
        .where(
            c.execution_id == execution_id,
            c.seq > after,
            c.seq < below,
            c.kind.in_([str(kind) for kind in kinds]),
        )
        .order_by(c.seq)
        .limit(limit)
    )
    if kept_nodes:
        query = query.where(c.node.not_in(list(kept_nodes)))
    for node, visit in in_flight:
        memo = or_(
            c.node.startswith(f"{node}/", autoescape=True),
            c.node.startswith(f"{node}@", autoescape=True),
        )
        query = query.where(not_(and_(c.kind.in_(_STATELESS), c.visit == visit, memo)))
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [_compactable(sealer, execution_id, row) for row in rows]


def _compactable(sealer: Sealer, execution_id: str, row: Any) -> Compactable:
    """The row as a candidate, with the event it consumed if it is a wake that did."""
    found = Compactable(row.seq, Kind(row.kind), row.node, row.visit, codec.loads(row.meta))
    if row.output is None:
        return found
    try:
        woke = codec.loads(sealer.open(row.output, execution_id))
    except (Unsealable, EncryptionKeyMissing, ValueError):
        return replace(found, opaque=True)
    event = woke.get("event") if isinstance(woke, dict) else None
    return replace(found, event=event) if isinstance(event, int) else found


def remove(db: Database, execution_id: str, rows: Collection[Compactable], below: int) -> int:
    """Delete ``rows`` in one transaction, with the visit ledger's rows and failed attempts of
    their visits, the events their wakes consumed, and the values emitted before ``below``.
    Returns how many checkpoints went."""
    if not rows:
        return 0
    visits = _visit_keys(rows)
    consumed = [row.event for row in rows if row.event is not None]
    with db.engine.begin() as conn:
        gone = conn.execute(
            delete(checkpoints).where(
                checkpoints.c.execution_id == execution_id,
                checkpoints.c.seq.in_([row.seq for row in rows]),
            )
        ).rowcount
        for table in (node_visits, attempts) if visits else ():
            key = tuple_(table.c.kind, table.c.node, table.c.visit)
            conn.execute(delete(table).where(table.c.execution_id == execution_id, key.in_(visits)))
        if consumed:
            conn.execute(
                delete(events).where(
                    events.c.execution_id == execution_id, events.c.id.in_(consumed)
                )
            )
        conn.execute(
            delete(emits).where(emits.c.execution_id == execution_id, emits.c.after_seq < below)
        )
    return int(gone)


def _visit_keys(rows: Iterable[Compactable]) -> list[tuple[str, str, int]]:
    """The visit ledger's keys of the visits ``rows`` close: a node visit's own row (attempts,
    lease, due retry) and its flow control hold; a wait's timer."""
    keys: list[tuple[str, str, int]] = []
    for row in rows:
        if row.kind == Kind.NODE:
            keys += [(str(Kind.NODE), row.node, row.visit), (str(Kind.HOLD), row.node, row.visit)]
        elif row.kind == Kind.WAIT:
            keys.append((str(Kind.WAIT), row.node, row.visit))
    return keys
