"""celery-durable: durable execution for Celery.

Graphs of Celery tasks whose every node commits a checkpoint to PostgreSQL before the next is
dispatched, so a crash of a worker, the broker or the database loses no committed work and
never commits a node twice.
"""

from celery_durable.durable import Durable
from celery_durable.engine.bulk import BulkReport
from celery_durable.engine.context import Context
from celery_durable.engine.execution import Execution, Progress
from celery_durable.engine.retention import PruneReport
from celery_durable.engine.schedules import Schedule
from celery_durable.engine.state import Reduce
from celery_durable.errors import (
    CheckpointCorrupted,
    ChildFailed,
    CircuitOpen,
    Compensated,
    DatabaseUnavailable,
    DurableError,
    EventTimeout,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionNotFound,
    InvalidInput,
    InvalidTransition,
    NeedsIntervention,
    NoDatabase,
    NotWaiting,
    RunStillActive,
    SchemaNotMigrated,
    StateSchemaMismatch,
    WaitTimeout,
)
from celery_durable.graphs.builder import Graph, Node, Saga
from celery_durable.hooks import Hooks
from celery_durable.model.records import Checkpoint
from celery_durable.persistence.stream_rows import Emitted
from celery_durable.policies.limits import Limit, RateLimit
from celery_durable.policies.retry import NonRetryable, RetryPolicy
from celery_durable.settings import Settings
from celery_durable.signals import (
    execution_finished,
    execution_started,
    execution_stuck,
    intervention_required,
    node_failed,
    node_slow,
)
from celery_durable.status import Status

__version__ = "0.1.0"

__all__ = [
    # Entry point and configuration
    "Durable",
    "Settings",
    "Hooks",
    # Defining graphs
    "Graph",
    "Saga",
    "Node",
    "Context",
    "RetryPolicy",
    "NonRetryable",
    "Reduce",
    "RateLimit",
    "Limit",
    "Schedule",
    # Runs
    "Execution",
    "BulkReport",
    "PruneReport",
    "Progress",
    "Status",
    "Checkpoint",
    "Emitted",
    "intervention_required",
    "execution_finished",
    "execution_started",
    "execution_stuck",
    "node_failed",
    "node_slow",
    # Errors most callers catch (the full tree is in celery_durable.errors)
    "DurableError",
    "ExecutionFailed",
    "Compensated",
    "ExecutionCancelled",
    "NeedsIntervention",
    "ExecutionNotFound",
    "InvalidInput",
    "InvalidTransition",
    "WaitTimeout",
    "CheckpointCorrupted",
    "EventTimeout",
    "NotWaiting",
    "ChildFailed",
    "CircuitOpen",
    "StateSchemaMismatch",
    "SchemaNotMigrated",
    "DatabaseUnavailable",
    "NoDatabase",
    "RunStillActive",
]
