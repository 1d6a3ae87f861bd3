"""Unit fixtures: SQLite, the in-memory broker, an in-process worker; no server needed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from celery import Celery

from celery_durable import Durable
from celery_durable.testing import embedded_app, in_process_worker


@pytest.fixture
def app() -> Celery:
    return embedded_app(f"unit-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def durable(app: Celery, sqlite_url: str) -> Iterator[Durable]:
    durable = Durable(app, database_url=sqlite_url, eta_threshold=2.0)
    durable.migrate()
    yield durable
    durable.db.dispose()


@pytest.fixture
def worker(durable: Durable) -> Callable[[], AbstractContextManager[object]]:
    """``with worker():`` runs an in-process worker; define graphs before entering."""
    return lambda: in_process_worker(durable)
