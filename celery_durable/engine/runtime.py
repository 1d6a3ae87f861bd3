"""The runtime: what attempts, the recovery sweep, retention and the control operations
share, handed to each of them explicitly by the composition root (``durable.py``).

Nothing here knows Celery: sending a visit's message is the ``Dispatcher``'s job, which the
Celery side (``tasks.dispatch``) implements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery_durable.engine.base import Base
from celery_durable.engine.definition import Catalog, GraphDefinition
from celery_durable.engine.fleet import Fleet
from celery_durable.engine.flow_control import FlowControl
from celery_durable.engine.leases import LeaseKeeper
from celery_durable.errors import GraphVersionMissing, StateTooLarge, UnknownGraph
from celery_durable.hooks import Hooks
from celery_durable.model.records import ErrorRecord, ExecutionRecord
from celery_durable.model.wait import Visit
from celery_durable.persistence import codec
from celery_durable.persistence.event_log import EventLog
from celery_durable.persistence.store import CheckpointStore
from celery_durable.persistence.visits import VisitLedger
from celery_durable.saga import compensation
from celery_durable.settings import Settings


class Publication(Protocol):
    """A visit's message, built and not yet sent."""

    def send(self) -> None:
        """Publish it."""
        ...


class Announcer(Protocol):
    """Tells the world outside the engine what an operator must act on (Celery's signals)."""

    def announce_intervention(
        self, execution_id: str, graph: str, step: str, error: ErrorRecord
    ) -> None:
        """A run stopped in ``needs_intervention`` at ``step``."""
        ...


class Dispatcher(Protocol):
    """How node and compensation visits are handed on."""

    def dispatch(
        self,
        graph: str,
        node: str,
        visit: int,
        execution_id: str,
        base: Base,
        *,
        attempt: int = 1,
        countdown: float | None = None,
        compensation: bool = False,
        recovered: bool = False,
        passed: str | None = None,
    ) -> None:
        """Publish one visit's message, carrying ``base``: the state it runs on; ``passed``
        names the flow control hold it was sent again after."""
        ...

    def prepare(
        self, graph: str, node: str, visit: int, execution_id: str, base: Base
    ) -> Publication:
        """A first attempt's ``dispatch`` in two steps: build the message now (while the
        commit that makes the visit due is in flight), send it later. Never raises: what
        cannot be built is reported when it is sent."""
        ...

    def may_inline(
        self, graph: GraphDefinition, here: str, there: str, run_queue: str | None
    ) -> bool:
        """Whether ``there`` may run in the task that ran ``here``, instead of a message."""
        ...

    def revoke(self, execution_id: str, visits: Iterable[tuple[str, int, int]]) -> None:
        """Stop the tasks in flight for (node, visit, attempts so far)."""
        ...


@dataclass(frozen=True, slots=True)
class Runtime:
    store: CheckpointStore
    visits: VisitLedger
    events: EventLog
    leases: LeaseKeeper
    dispatcher: Dispatcher
    hooks: Hooks
    settings: Settings
    graphs: Catalog
    flow: FlowControl
    announcer: Announcer
    fleet: Fleet
    # The (run, version) pairs this process last found stuck: each is told once.
    stuck: set[tuple[str, int]] = field(default_factory=set)

    def graph(self, name: str) -> GraphDefinition:
        """The newest version of ``name``: what new runs start on."""
        try:
            return self.graphs[name]
        except KeyError:
            raise UnknownGraph(name, sorted(self.graphs)) from None

    def graph_of(self, record: ExecutionRecord) -> GraphDefinition:
        """The definition a run is pinned to, as this process defines it; refused with
        GraphVersionMissing where this process does not define that version."""
        version = record.cursor.graph_version
        found = self.graphs.at(record.graph, version)
        if found is None:
            self.graph(record.graph)
            assert version is not None
            deployed = [g.version for g in self.graphs.versions(record.graph)]
            raise GraphVersionMissing(
                record.id, record.graph, version, deployed, where="in this process"
            )
        return found

    def state_json(self, state: dict[str, Any]) -> str:
        """The state as the store writes it (canonical JSON), refused if over max_state_bytes."""
        text = codec.dumps(state, "The state")
        size = len(text.encode())
        if size > self.settings.max_state_bytes:
            raise StateTooLarge(size, self.settings.max_state_bytes)
        return text

    def dispatch_all(
        self, graph: str, execution_id: str, base: Base, visits: Iterable[Visit]
    ) -> None:
        for node, visit in visits:
            self.dispatcher.dispatch(graph, node, visit, execution_id, base)

    def prepare_all(
        self, graph: str, execution_id: str, base: Base, visits: Iterable[Visit]
    ) -> list[Publication]:
        """``dispatch_all`` built, for sending once the commit that makes them due answered."""
        return [
            self.dispatcher.prepare(graph, node, visit, execution_id, base)
            for node, visit in visits
        ]

    def dispatch_undo(
        self, graph: str, execution_id: str, base: Base, *, recovered: bool = False
    ) -> bool:
        """Dispatch the compensation that is due, if one is; returns whether one was."""
        undo = compensation.due(base.status, base.cursor)
        if undo is None:
            return False
        node, visit, _ = undo
        self.dispatcher.dispatch(
            graph, node, visit, execution_id, base, compensation=True, recovered=recovered
        )
        return True
