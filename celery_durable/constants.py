"""Names that must agree between the library, the database and the broker."""

from typing import Final

TABLE_PREFIX: Final = "durable_"
EXECUTIONS_TABLE: Final = "durable_executions"
CHECKPOINTS_TABLE: Final = "durable_checkpoints"
NODE_VISITS_TABLE: Final = "durable_node_visits"
ALEMBIC_VERSION_TABLE: Final = "durable_alembic_version"

TASK_PREFIX: Final = "durable"
RECOVERY_TASK: Final = "durable.recover"
PRUNE_TASK: Final = "durable.prune"

ENV_PREFIX: Final = "CELERY_DURABLE_"
DATABASE_URL_ENV: Final = "CELERY_DURABLE_DATABASE_URL"
DEFAULT_SQLITE_FILE: Final = "celery_durable.sqlite3"
