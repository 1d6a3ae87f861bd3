"""Bounded history: a graph declared with ``keep_checkpoints=N`` keeps its runs' newest N
checkpoints and deletes older ones as it goes, so a run that loops (a poller, an agent that
iterates) stores a bounded number of rows however long it runs.

What stays, whatever its age:

- the newest N checkpoints, and the newest one at or before them that records a state (a
  step, a wait or a wake records none: its state is that one's), so each is a time travel
  target;
- the start, failures, interventions and manual changes, and every checkpoint an operation
  wrote (its meta names the ``op``: a skip, an approval): the audit trail;
- the node visits and compensations of nodes that have a compensation: a saga undoes each
  of them (the graph refuses such a node on a loop, see graphs/options.py);
- the steps, waits and wakes of node visits still in flight: the visit reads them when it
  runs again;
- the checkpoints the current message committed, until it is acknowledged: a redelivered
  copy replays them.

The run's position itself (state, cursor: due visits, open waits, join arrivals, child
links) is on the execution row, which compaction never touches. With a checkpoint go the
visit ledger's rows and failed attempts of its visit, the event its wake consumed, and the
values emitted before it.

When: after a node commit whose visit number is a multiple of N // 4 (so a loop compacts
every N // 4 turns, in one read and one transaction, amortised over those turns), and after
the commit that ends the run. Graphs without the option never come here: their commits cost
what they did.
"""

from __future__ import annotations

import logging

from celery_durable.engine.definition import GraphDefinition
from celery_durable.engine.runtime import Runtime
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Kind
from celery_durable.persistence import compactor
from celery_durable.persistence.compactor import Compactable
from celery_durable.status import Status

logger = logging.getLogger(__name__)

# The fewest checkpoints a graph may keep per run. Compaction runs every N // 4 visits of a
# node: below this it would run on nearly every visit, doubling what a turn of a loop costs.
# And a redelivered message replays its visit from its checkpoint: under parallel branches,
# the newest N are what still holds it while the others commit on.
MIN_KEEP_CHECKPOINTS = 10
# What one compaction reads and deletes at a time, and at most in all.
PAGE = 500
PAGES = 20
# The kinds compaction deletes; the others (start, failure, intervention, manual change,
# compensation) are the run's audit trail and undo record.
DELETABLE = (Kind.NODE, Kind.STEP, Kind.WAIT, Kind.WAKE)


def every(keep: int) -> int:
    """Compact after each node visit whose number is a multiple of this."""
    return max(1, keep // 4)


def due(graph: GraphDefinition, visit: int, status: Status) -> bool:
    """Whether the node commit of ``visit``, leaving the run ``status``, compacts."""
    keep = graph.keep_checkpoints
    return keep is not None and (status.finished or visit % every(keep) == 0)


def compact(
    runtime: Runtime,
    graph: GraphDefinition,
    execution_id: str,
    cursor: Cursor,
    newest: int,
    unacked: int,
) -> int:
    """Delete what ``graph.keep_checkpoints`` lets go of the run whose newest checkpoint is
    ``newest`` and whose position is ``cursor``; checkpoints after ``unacked`` (the message
    being handled committed them) stay. Returns how many went. A failure is logged, never
    raised: the commit it follows stands either way."""
    keep = graph.keep_checkpoints
    if keep is None:
        return 0
    try:
        floor = compactor.floor(runtime.store.db, execution_id, newest, keep)
        return _compact(runtime, graph, execution_id, cursor, min(floor, unacked + 1))
    except Exception:
        logger.warning(
            "compacting %s failed; its next compaction tries again", execution_id, exc_info=True
        )
        return 0


def _compact(
    runtime: Runtime, graph: GraphDefinition, execution_id: str, cursor: Cursor, below: int
) -> int:
    store = runtime.store
    kept_nodes = [name for name, node in graph.nodes.items() if node.compensator is not None]
    deleted, after = 0, -1
    for _ in range(PAGES):
        page = compactor.candidates(
            store.db,
            store.sealer,
            execution_id,
            below=below,
            after=after,
            kinds=DELETABLE,
            kept_nodes=kept_nodes,
            in_flight=cursor.frontier,
            limit=PAGE,
        )
        deleted += compactor.remove(
            store.db, execution_id, [row for row in page if not _kept(row)], below
        )
        if len(page) < PAGE:
            break
        after = page[-1].seq
    return deleted


def _kept(row: Compactable) -> bool:
    """An operation's checkpoint (a skip, an approval) of a deletable kind, or a wake whose
    consumed event this process cannot read."""
    return row.opaque or bool(row.meta and "op" in row.meta)
