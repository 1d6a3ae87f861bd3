"""pytest fixtures for testing your own workflows, loaded by pytest through celery-durable's
``pytest11`` entry point. They do nothing unless a test asks for them (no hooks, no options).

- ``durable_database_url``: a SQLite file in the test's ``tmp_path``; with
  ``CELERY_DURABLE_TEST_PG`` set to a PostgreSQL admin URL, a database created for the test
  under it and dropped after.
- ``durable_postgres_url``: the same, PostgreSQL only; the test is skipped when
  ``CELERY_DURABLE_TEST_PG`` is unset.
- ``durable_celery_app``: the Celery app ``durable_embedded`` runs on, ``embedded_app()``
  (an in-memory broker). Override it to run on another, such as pytest-celery's classic
  ``celery_app`` fixture: then your ``celery_config`` and ``@pytest.mark.celery(...)`` apply.
- ``durable_embedded``: a ``Durable`` on ``durable_celery_app`` and ``durable_database_url``,
  migrated. Define your graphs on it (``define(durable_embedded)``).
- ``durable_embed``: ``durable_embed(durable)`` points a Durable your module built at
  import (``app = Celery(...)``; ``durable = Durable(app)``) at ``durable_database_url``,
  migrated, and its app at the in-memory broker, for the test (``testing.embed``); nothing
  to set in the environment before import. To run the fixtures below on it, override
  ``durable_embedded`` in your conftest.py::

      import shop

      @pytest.fixture
      def durable_embedded(durable_embed):
          return durable_embed(shop.durable)

      def test_an_order(durable_embedded, durable_worker):
          with durable_worker():
              assert shop.orders.delay(order_id="o-1", amount=30).wait(timeout=10).reserved

- ``durable_worker``: ``with durable_worker(): ...`` runs an in-process worker for it.
- ``durable_workers``: real ``celery worker`` subprocesses (``durable_workers.start(app)``)
  that a test can SIGKILL (``worker.kill()``); all are killed at teardown.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery import Celery

    from celery_durable.durable import Durable
    from celery_durable.worker_processes import WorkerProcesses

PG_ENV = "CELERY_DURABLE_TEST_PG"


@pytest.fixture
def durable_postgres_url() -> Iterator[str]:
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL to test against")
    from celery_durable.testing import throwaway_database

    with throwaway_database(admin) as url:
        yield url


@pytest.fixture
def durable_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if os.environ.get(PG_ENV):
        return str(request.getfixturevalue("durable_postgres_url"))
    return f"sqlite:///{tmp_path / 'durable.sqlite3'}"


@pytest.fixture
def durable_celery_app() -> Celery:
    from celery_durable.testing import embedded_app

    return embedded_app(f"tests-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def durable_embedded(durable_celery_app: Celery, durable_database_url: str) -> Iterator[Durable]:
    from celery_durable.durable import Durable

    durable = Durable(durable_celery_app, durable_database_url)
    durable.migrate()
    yield durable
    durable.db.dispose()


@pytest.fixture
def durable_embed(durable_database_url: str) -> Iterator[Callable[[Durable], Durable]]:
    from celery_durable.testing import embed

    with ExitStack() as stack:
        yield lambda durable: stack.enter_context(embed(durable, durable_database_url))


@pytest.fixture
def durable_worker(
    durable_embedded: Durable,
) -> Callable[..., AbstractContextManager[Any]]:
    from celery_durable.testing import in_process_worker

    return lambda **options: in_process_worker(durable_embedded, **options)


@pytest.fixture
def durable_workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcesses]]:
    """``durable_workers(app, env)``: worker processes for ``celery -A app``."""
    from celery_durable.worker_processes import WorkerProcesses

    pools: list[WorkerProcesses] = []

    def pool(app: str, env: dict[str, str] | None = None) -> WorkerProcesses:
        pools.append(WorkerProcesses(app, env or {}, tmp_path))
        return pools[-1]

    yield pool
    for started in pools:
        started.cleanup()
