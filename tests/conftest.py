"""Fixtures shared by unit and integration tests: throwaway databases, never leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Where PostgreSQL lives: tests create a database of their own under it and drop it (through
# celery-durable's pytest plugin, which reads this variable).
os.environ.setdefault("CELERY_DURABLE_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'durable.sqlite3'}"


@pytest.fixture
def pg_url(durable_postgres_url: str) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards (the plugin's)."""
    return durable_postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run a test once on SQLite and once on PostgreSQL: one contract, two backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))
