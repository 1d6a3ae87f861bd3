"""What PostgreSQL and SQLite do differently, behind one interface.

The store, the visit ledger and the migrations speak SQLAlchemy Core to either database; the
few things that cannot be said the same way on both (the one-statement node commit, sent
before its answer is read, the upsert, the migration lock, waking a waiting caller) are a
``Dialect``'s methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeAlias, TypedDict

from sqlalchemy import Column, Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from celery_durable.persistence.answer import Answer

# The INSERT constructs of the two dialects: both have on_conflict_do_update().
Upsert: TypeAlias = postgresql.Insert | sqlite.Insert


class Engines(NamedTuple):
    """The pools of one process (a forked child builds its own).

    ``engine`` runs transactions. ``reader`` serves reads: on PostgreSQL its connections
    autocommit, so a one-statement commit goes there too (no BEGIN, no ROLLBACK on return);
    on SQLite it is the same pool, whose reads begin deferred so they never wait for a writer.
    """

    engine: Engine
    reader: Engine


class CheckpointRow(TypedDict):
    """What every checkpoint insert writes, as stored (JSON columns already canonical text).

    A dict at run time, so PostgreSQL binds it as it is: a commit builds its parameters once.
    """

    execution_id: str
    kind: str
    node: str
    state: str
    cursor: str
    meta: str | None
    checksum: str
    # The execution row's own checksum after this write (codec.row_checksum).
    row_checksum: str
    # The graph version the run is pinned to after this write (its cursor's).
    graph_version: str | None
    now: datetime


class Advance(CheckpointRow):
    """A node commit: its checkpoint, and the execution moving from ``expected_version`` to
    ``seq``. ``lease_token`` is compared only when the dialect is told to fence."""

    expected_version: int
    seq: int
    visit: int
    # What the checkpoint stores as its state: the row's, or "" for kinds that record none.
    checkpoint_state: str
    output: str | None
    status: str
    error: str | None
    finished_at: datetime | None
    lease_token: int


class Start(CheckpointRow):
    """A new execution at version 0, with its start checkpoint (seq 0, visit 0)."""

    graph: str
    fingerprint: str
    status: str
    parent_id: str | None
    # The run's own tags as a JSON object's text; None: its parent's (none without a parent).
    tags: str | None


class Waiter(Protocol):
    """What Execution.wait() blocks on between two looks at the execution row."""

    first_pause: float
    max_pause: float

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """Return after ``timeout`` seconds at most, earlier if the run may have ended: with
        the execution row as the notification of its end carried it, or None (look again)."""

    def close(self) -> None:
        """Stop being woken."""


class Dialect(ABC):
    """One database's way of doing the operations the store cannot write portably."""

    def __init__(self, url: str, pool_size: int) -> None:
        self.url = url
        self.pool_size = pool_size

    @abstractmethod
    def create_engines(self) -> Engines:
        """This process's pools, configured; called once per process."""

    @abstractmethod
    def send(
        self, engines: Engines, advance: Advance, *, fenced: bool, wakes: bool
    ) -> Answer[bool]:
        """Insert the checkpoint and advance the execution, atomically, returning before the
        answer is in where the database allows: the caller works meanwhile, then collects
        ``result()``, False when the execution is not at ``expected_version`` or, if
        ``fenced``, a newer lease holds the visit. ``wakes``: the run ends here, so its
        waiters must be woken. Collect it before this thread writes again."""

    @abstractmethod
    def send_start(self, engines: Engines, start: Start) -> Answer[bool]:
        """Insert the execution, its start checkpoint and its tags (tag_rows.source); ``result()``
        is False when the id already exists (then nothing is written). Collected as for
        ``send``."""

    @abstractmethod
    def insert(self, table: Table) -> Upsert:
        """An INSERT that can say what to do ON CONFLICT (the visit ledger's upsert)."""

    @abstractmethod
    def lock_migrations(self, conn: Connection) -> None:
        """Hold, until ``conn``'s transaction ends, the lock that lets one process migrate."""

    @abstractmethod
    def lock_name(self, conn: Connection, name: str) -> None:
        """Hold, until ``conn``'s transaction ends, a lock on ``name`` (a concurrency key)."""

    @contextmanager
    def planned_for_values(self, conn: Connection) -> Iterator[None]:
        """Meanwhile, plan each statement ``conn`` runs for its own values, never a plan made
        once for any: where the best plan depends on them (which of several tags is rare)."""
        yield

    @abstractmethod
    def follow_ids(self, conn: Connection, column: Column[Any], top: int) -> None:
        """Before rows that bring their own ids, up to ``top``, are written into ``column``,
        whose ids the database generates (an import): make the next ones start past them."""

    @abstractmethod
    def waiter(self, execution_id: str) -> Waiter:
        """Something to wait on until ``execution_id`` ends (or it is time to look again)."""

    @abstractmethod
    def close(self) -> None:
        """Release what this process started besides its pools (a listener thread)."""
