"""Names that must agree between the library, the database and the broker."""

from typing import Final

EXECUTIONS_TABLE: Final = "durable_executions"
CHECKPOINTS_TABLE: Final = "durable_checkpoints"
NODE_VISITS_TABLE: Final = "durable_node_visits"
EVENTS_TABLE: Final = "durable_events"
BREAKERS_TABLE: Final = "durable_breakers"
RATE_LIMITS_TABLE: Final = "durable_rate_limits"
SLOTS_TABLE: Final = "durable_slots"
SLOT_QUEUE_TABLE: Final = "durable_slot_queue"
DEPLOYMENTS_TABLE: Final = "durable_deployments"
ATTEMPTS_TABLE: Final = "durable_attempts"
ALEMBIC_VERSION_TABLE: Final = "durable_alembic_version"

# A node's task is <TASK_PREFIX>.<graph>.<node>; the engine's own tasks share the prefix.
TASK_PREFIX: Final = "durable"
RECOVERY_TASK: Final = f"{TASK_PREFIX}.recover"
PRUNE_TASK: Final = f"{TASK_PREFIX}.prune"
SCHEDULES_TASK: Final = f"{TASK_PREFIX}.schedules"

ENV_PREFIX: Final = "CELERY_DURABLE_"
DATABASE_URL_ENV: Final = "CELERY_DURABLE_DATABASE_URL"
DEFAULT_SQLITE_FILE: Final = "celery_durable.sqlite3"
