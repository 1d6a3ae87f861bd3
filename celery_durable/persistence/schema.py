"""The tables. Queries live in the modules that run them; dialect differences in postgres.py
and sqlite.py.

Checkpoints are append-only (a graph's keep_checkpoints compacts its old ones: compactor.py).
A checkpoint's ``seq`` is the execution version its commit produced, so (execution_id, seq)
is both the ordering and the primary key, and "latest checkpoint of an execution" is one
backward step on that index at any table size. The unique
key on (execution_id, kind, node, visit) is what makes "a node visit commits once" true.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from celery_durable.constants import (
    ATTEMPTS_TABLE,
    BREAKERS_TABLE,
    CHECKPOINTS_TABLE,
    DEPLOYMENTS_TABLE,
    EVENTS_TABLE,
    EXECUTIONS_TABLE,
    NODE_VISITS_TABLE,
    RATE_LIMITS_TABLE,
    SLOT_QUEUE_TABLE,
    SLOTS_TABLE,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID_LENGTH = 255
NAME_LENGTH = 200


def _execution_id() -> Column[str]:
    """The column that ties a row to its run; deleting the run deletes the row."""
    return Column(
        "execution_id",
        String(ID_LENGTH),
        ForeignKey(f"{EXECUTIONS_TABLE}.id", ondelete="CASCADE"),
        nullable=False,
    )


executions = Table(
    EXECUTIONS_TABLE,
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("graph", String(NAME_LENGTH), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    # Where the run stands in its graph: nodes due, visit counters, join arrivals.
    Column("cursor", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # Set by the recovery sweep when it re-dispatches; updated_at moves only on commits, so
    # "no progress since" stays true for stuck detection.
    Column("swept_at", DateTime(timezone=True), nullable=True),
    # The run whose node started this one as a child run, if any.
    Column("parent_id", String(ID_LENGTH), nullable=True),
    # codec.row_checksum of the row as written; NULL for rows written before revision 0005.
    Column("checksum", String(64), nullable=True),
    # The version of its graph the run is pinned to, as its cursor says (every commit writes
    # both); NULL for runs started before revision 0006, which run on the newest version.
    Column("graph_version", String(64), nullable=True),
    # No index holds updated_at, state, cursor or version, the columns every node commit
    # changes: PostgreSQL can then update the row in place (HOT), with no index writes.
    Index(None, "status"),
    Index(None, "graph", "status"),
    # Runs per version (durable versions, the metrics): what tells an old version drained.
    Index(None, "graph", "graph_version", "status"),
    Index(None, "parent_id"),
    # The web view's pages, newest first, whole or by status (keyset on created_at, id).
    Index(None, "created_at", "id"),
    Index(None, "status", "created_at", "id"),
    # Room on each page for those in-place updates.
    postgresql_with={"fillfactor": 70},
)

UNIQUE_VISIT = "uq_durable_checkpoints_execution_id_kind_node_visit"

checkpoints = Table(
    CHECKPOINTS_TABLE,
    metadata,
    _execution_id(),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("state", Text, nullable=False),
    # The run's position right after this checkpoint: what time travel and forks resume.
    Column("cursor", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("meta", Text, nullable=True),
    Column("checksum", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("execution_id", "seq"),
    UniqueConstraint("execution_id", "kind", "node", "visit", name=UNIQUE_VISIT),
)

# Rows here exist only off the happy path: a failed attempt, a redelivery, a long node's
# lease, or a retry waiting for its due time.
node_visits = Table(
    NODE_VISITS_TABLE,
    metadata,
    _execution_id(),
    Column("kind", String(32), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("redeliveries", Integer, nullable=False, default=0),
    Column("lease_token", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(NAME_LENGTH), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    # A visit held back by flow control says by what: "breaker payments", "rate stripe".
    Column("waiting_for", String(NAME_LENGTH), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("execution_id", "kind", "node", "visit"),
    Index(None, "due_at"),
)

# Every failed attempt of a node or compensation visit, with its error: what history, show
# and the web view say of retries. Written off the happy path only, never by a commit.
attempts = Table(
    ATTEMPTS_TABLE,
    metadata,
    _execution_id(),
    Column("kind", String(32), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("execution_id", "kind", "node", "visit", "attempt"),
)

# Events sent to a run, in the order sent (id); one per idempotency key and run.
events = Table(
    EVENTS_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    _execution_id(),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("payload", Text, nullable=True),
    Column("idempotency_key", String(ID_LENGTH), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Who sent it and why, as for every operation; NULL for events sent before revision 0007.
    Column("sent_by", String(NAME_LENGTH), nullable=True),
    Column("reason", Text, nullable=True),
    UniqueConstraint("execution_id", "idempotency_key"),
    Index(None, "execution_id", "name", "id"),
)

# One row per circuit breaker, shared by the fleet; changed under a row lock.
breakers = Table(
    BREAKERS_TABLE,
    metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=True),
    Column("opened_at", DateTime(timezone=True), nullable=True),
    Column("probe_until", DateTime(timezone=True), nullable=True),
    Column("rejections", BigInteger, nullable=False),
    Column("changed_by", String(NAME_LENGTH), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per fleet-wide rate limit: the moment its next call may start (GCRA).
rate_limits = Table(
    RATE_LIMITS_TABLE,
    metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("next_free_at", DateTime(timezone=True), nullable=False),
)

# Concurrency slots: who holds one of a key's ``max`` places. A node visit's slot is a lease
# (expires_at, kept alive by the visit's own lease while it runs); a run's slot is held until
# the run ends.
slots = Table(
    SLOTS_TABLE,
    metadata,
    Column("scope", String(NAME_LENGTH), nullable=False),
    Column("key", String(NAME_LENGTH), nullable=False),
    Column("execution_id", String(ID_LENGTH), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("scope", "key", "execution_id", "node", "visit"),
    Index(None, "expires_at"),
    Index(None, "execution_id"),
)

# Visits waiting for a slot, first come first served (id) per (scope, key).
slot_queue = Table(
    SLOT_QUEUE_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("scope", String(NAME_LENGTH), nullable=False),
    Column("key", String(NAME_LENGTH), nullable=False),
    Column("execution_id", String(ID_LENGTH), nullable=False),
    Column("node", String(NAME_LENGTH), nullable=False),
    Column("visit", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("scope", "key", "execution_id", "node", "visit"),
    Index(None, "scope", "key", "id"),
)

# What each worker serves: one row per (worker, graph, version), its structure (to compare
# versions) and the routing keys it consumes, kept alive by the worker's heartbeat.
deployments = Table(
    DEPLOYMENTS_TABLE,
    metadata,
    Column("worker", String(NAME_LENGTH), nullable=False),
    Column("graph", String(NAME_LENGTH), nullable=False),
    Column("version", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("shape", Text, nullable=False),
    Column("routing_keys", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("worker", "graph", "version"),
)
