"""One typed settings object, built from arguments, else the environment, else defaults.

Every field can be set with an environment variable named ``CELERY_DURABLE_<FIELD>`` in upper
case (``CELERY_DURABLE_DATABASE_URL``, ``CELERY_DURABLE_STALE_AFTER``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from celery_durable.constants import DEFAULT_SQLITE_FILE, ENV_PREFIX
from celery_durable.errors import ConfigurationError


def default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"


class Settings(BaseModel):
    """How durable executions store their checkpoints and recover from crashes. Each field's
    docstring is its description (``Settings.model_fields[name].description``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    database_url: str = Field(default_factory=default_database_url)
    """SQLAlchemy URL of the checkpoint database; PostgreSQL via postgresql+psycopg://, else a
    SQLite file in the working directory."""
    max_state_bytes: PositiveInt = 1_048_576
    """Largest serialized state a run may carry."""
    eta_threshold: NonNegativeFloat = 5.0
    """Retry delays up to this many seconds wait in the broker (countdown); longer ones wait
    as rows in the database and the recovery sweep dispatches them."""
    lease_after: PositiveFloat = 5.0
    """A node running longer than this takes a lease in the database."""
    lease_ttl: PositiveFloat = 30.0
    """A lease not renewed for this long is expired."""
    sweep_interval: PositiveFloat = 10.0
    """Seconds between recovery sweeps in each worker."""
    timer_interval: PositiveFloat = 0.5
    """Seconds between each worker's looks for retries and waits that came due (sleeps
    ending, event waits timing out): what bounds their lag."""
    stale_after: PositiveFloat = 60.0
    """A running execution with no commit for this long and no live lease is re-dispatched by
    the recovery sweep."""
    heartbeat: PositiveFloat = 10.0
    """Seconds between a worker's heartbeats in the fleet's rows (which versions of which
    graphs it serves); a worker silent for three heartbeats is taken for gone."""
    max_redeliveries: PositiveInt = 10
    """A node message redelivered more often fails its execution."""
    inline_nodes: NonNegativeInt = 16
    """When one node follows another, bound for the same queue, and no Celery time or rate
    limit applies, the worker runs it in the same task after the commit instead of
    publishing a message, up to this many in a row; 0 publishes every node."""
    pool_size: PositiveInt = 5
    """Database connections per worker process."""
    retention_succeeded_days: PositiveFloat = 7.0
    """prune() removes succeeded runs finished this many days ago."""
    retention_failed_days: PositiveFloat = 30.0
    """prune() removes failed, compensated and cancelled runs after this many days."""
    stuck_after: PositiveFloat = 1800.0
    """A running execution with no commit for this many seconds is reported stuck."""
    slow_node_after: PositiveFloat = 60.0
    """A node running longer than this is logged as slow."""
    log_format: Literal["text", "json"] = "text"
    """``json``: the worker's and the command line's log records become JSON lines
    (celery_durable.logs.JSONFormatter). Either way each record made during an attempt
    carries execution_id, graph, node, visit and attempt."""
    compress_over: NonNegativeInt = 4096
    """States and node outputs longer than this many characters of JSON are stored
    zlib-compressed; 0 stores them as they are."""
    encryption_keys: dict[str, str] = Field(default_factory=dict)
    """Key id -> base64 of a 32-byte key: states and outputs are stored encrypted
    (AES-256-GCM, the 'encryption' extra), each row naming its key. Keep old keys here to
    read what they wrote. In the environment: a JSON object."""
    encryption_key: str | None = None
    """The id in encryption_keys that encrypts new rows; needed when there are several (a
    rotation), else the only one."""
    checksum_keys: dict[str, str] = Field(default_factory=dict)
    """Key id (up to 8 characters) -> a secret of 16 characters or more: checksums become
    HMAC-SHA-256 under the active one, naming it, so someone who can write the tables but
    holds no key cannot make a changed row verify. Keep old keys here until re-signed (a
    rotation). The same on every worker and client. In the environment: a JSON object."""
    checksum_key: str | None = None
    """The id in checksum_keys that signs new rows; needed when there are several."""
    accept_unkeyed_checksums: bool = False
    """With checksum_keys set, still accept the unkeyed checksums of rows written before:
    on while ``durable verify --sign`` re-signs them, then off."""

    @field_validator("encryption_keys", "checksum_keys", mode="before")
    @classmethod
    def _keys_from_json(cls, keys: object) -> object:
        if isinstance(keys, str):
            try:
                return json.loads(keys)
            except ValueError as exc:
                raise ValueError('a JSON object: {"key id": "base64 key"}') from exc
        return keys

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        if url.startswith("postgres://") or url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def default_database(self) -> bool:
        """Nobody chose database_url, as an argument or in the environment: it is the SQLite
        file in the working directory, so each directory a process starts in has its own."""
        return "database_url" not in self.model_fields_set

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Arguments win over the environment, which wins over the defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env_value = environ.get(f"{ENV_PREFIX}{name.upper()}")
            if env_value not in (None, ""):
                values[name] = env_value
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigurationError(
                f"Invalid celery-durable settings: {exc.errors(include_url=False)}. Fix the "
                f"argument or the {ENV_PREFIX}* environment variable named there."
            ) from exc
