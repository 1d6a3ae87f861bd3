"""Real RabbitMQ, real PostgreSQL, real worker subprocesses that the tests SIGKILL.

Every test gets its own database (``pg_url``), its own queue and its own ledger file; worker
processes run ``tests.integration.app`` in a session of their own, so killing the process
group is a machine failure as the broker and the database see it. Teardown kills whatever is
still alive and deletes the queue.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import app as app_module
from tests.integration.app import DurableApp
from tests.integration.harness import BROKER_URL, REPO, Workers


@pytest.fixture
def queue() -> str:
    return f"durable-it-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


@pytest.fixture
def env(pg_url: str, queue: str, ledger_path: Path) -> dict[str, str]:
    """The variables a worker subprocess (and the test's client side) is configured by."""
    return {
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_DURABLE_DATABASE_URL": pg_url,
        "DURABLE_TEST_QUEUE": queue,
        "DURABLE_TEST_LEDGER": str(ledger_path),
        "CELERY_DURABLE_SWEEP_INTERVAL": "1",
        "CELERY_DURABLE_STALE_AFTER": "10",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture
def client_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process configured as the workers are, so an app built now agrees with them."""
    for name in list(os.environ):
        if name.startswith("CELERY_DURABLE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def durable(client_env: dict[str, str]) -> Iterator[DurableApp]:
    """The client side: same database, queue and ledger as the workers; schema migrated."""
    built = app_module.build()
    built.durable.migrate()
    try:
        yield built
    finally:
        built.app.close()
        built.durable.db.dispose()


@pytest.fixture
def workers(env: dict[str, str], queue: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(env, queue, tmp_path)
    try:
        yield pool
    finally:
        pool.cleanup()
