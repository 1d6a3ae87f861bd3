"""The first run, as a new user meets it: the README's first example on the default SQLite
file and on PostgreSQL, an unmigrated or unreachable database, a read from the wrong
directory, and testing a module-level app as written."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from celery import Celery
from pydantic import BaseModel
from sqlalchemy import Engine, event, inspect
from sqlalchemy.exc import OperationalError

from celery_durable import Durable
from celery_durable.constants import ALEMBIC_VERSION_TABLE, DEFAULT_SQLITE_FILE
from celery_durable.errors import DatabaseUnavailable, NoDatabase, SchemaNotMigrated
from celery_durable.persistence import migrate
from celery_durable.testing import embed, embedded_app, in_process_worker

ROOT = Path(__file__).resolve().parents[2]

# The README's first example, with the broker it names (nothing listens on port 1 here: a
# test that reached it would fail).
SHOP = """
from celery import Celery
from pydantic import BaseModel
from celery_durable import Context, Durable, RetryPolicy

app = Celery("shop", broker="{broker}")
durable = Durable(app)


class Order(BaseModel):
    order_id: str
    amount: int
    reserved: bool = False


orders = durable.saga("order", state=Order)


@orders.step(retry=RetryPolicy(max_attempts=5, initial_delay=1, backoff=2, max_delay=60))
def reserve(state: Order, ctx: Context) -> dict:
    return {{"reserved": True}}


@reserve.compensation
def release(state: Order, ctx: Context) -> None:
    pass
"""


class Order(BaseModel):
    order_id: str
    reserved: bool = False


def _shop(durable: Durable) -> object:
    orders = durable.saga("order", state=Order)

    @orders.step
    def reserve(state: Order) -> dict[str, bool]:
        return {"reserved": True}

    return orders


def _clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without celery-durable's or Celery's settings: a new user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    return {**env, "C_FORCE_ROOT": "1", **extra}


@pytest.fixture
def no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_DURABLE_DATABASE_URL", raising=False)


@pytest.fixture
def version_reads() -> Iterator[list[str]]:
    """Every query of the schema's revision, from any engine of this process."""
    seen: list[str] = []

    def look(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("SELECT") and f"FROM {ALEMBIC_VERSION_TABLE}" in statement:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", look)
    yield seen
    event.remove(Engine, "before_cursor_execute", look)


# -- item 5: an unmigrated or unreachable database ------------------------------------------


def test_a_client_on_an_unmigrated_postgres_database_stops_with_one_line(pg_url: str) -> None:
    durable = Durable(embedded_app(), pg_url)
    orders = _shop(durable)
    for first_use in (
        lambda: orders.delay(order_id="o-1"),  # type: ignore[attr-defined]
        lambda: durable.get("o-1"),
        lambda: durable.list(),
    ):
        with pytest.raises(SchemaNotMigrated) as refused:
            first_use()
        message = str(refused.value)
        assert "\n" not in message and "celery -A proj durable migrate" in message
        assert (refused.value.current, refused.value.expected) == (None, migrate.head())
    assert inspect(durable.db.engine).get_table_names() == []  # nothing was created
    durable.migrate()
    assert orders.delay(order_id="o-1").status == "running"  # type: ignore[attr-defined]
    durable.db.dispose()


def test_an_older_schema_names_both_revisions(pg_url: str) -> None:
    durable = Durable(embedded_app(), pg_url)
    older = migrate.revisions()[1]
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    with durable.db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, older)
    with pytest.raises(SchemaNotMigrated, match=f"schema revision {older}; .* needs revision"):
        durable.list()
    assert durable.migrate() == (older, migrate.head())
    assert durable.list() == []
    durable.db.dispose()


def test_a_database_that_is_down_raises_database_unavailable_without_the_password() -> None:
    durable = Durable(embedded_app(), "postgresql+psycopg://shop:s3cret@127.0.0.1:1/shop")
    orders = _shop(durable)
    for use in (lambda: orders.delay(order_id="o-1"), durable.list, durable.migrate):  # type: ignore[attr-defined]
        with pytest.raises(DatabaseUnavailable) as down:
            use()
        message = str(down.value)
        assert "postgresql+psycopg://shop:***@127.0.0.1:1/shop" in message
        assert "s3cret" not in message and "\n" not in message
        assert "Check that the server is up" in message
        assert isinstance(down.value.__cause__, OperationalError)


def test_the_schema_is_read_once_per_process_never_on_the_workers_path(
    sqlite_url: str, version_reads: list[str]
) -> None:
    app = embedded_app()
    migrated = Durable(app, sqlite_url)
    migrated.migrate()
    durable = Durable(embedded_app(), sqlite_url)  # another process's view of that database
    orders = _shop(durable)
    version_reads.clear()
    for n in range(5):
        orders.delay(order_id=f"o-{n}")  # type: ignore[attr-defined]
        durable.list()
        durable.status_counts()
    assert len(version_reads) == 1
    version_reads.clear()
    with in_process_worker(durable):
        for run in durable.list():
            run.wait(timeout=10)
    assert version_reads == []  # the worker's start and every node: not once
    for each in (migrated, durable):
        each.db.dispose()


def test_a_worker_on_an_unmigrated_database_stops_at_start_with_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    (tmp_path / "shop.py").write_text(SHOP.format(broker="memory://"))
    started = time.monotonic()
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "shop", "worker", "-P", "solo", "-l", "INFO"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_environment(CELERY_DURABLE_DATABASE_URL=pg_url),
        timeout=60,
    )
    said = worker.stdout + worker.stderr
    assert worker.returncode != 0 and time.monotonic() - started < 30
    assert "ready" not in said and "Traceback" not in said, said
    lines = [line for line in said.splitlines() if "durable migrate" in line]
    assert len(lines) == 1 and lines[0].startswith("celery-durable: The database "), said


# -- the README's first example --------------------------------------------------------------


def test_the_first_example_runs_on_the_default_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_database_url: None
) -> None:
    monkeypatch.chdir(tmp_path)
    durable = Durable(embedded_app())
    orders = _shop(durable)
    run = orders.delay(order_id="o-1")  # type: ignore[attr-defined]
    assert (tmp_path / DEFAULT_SQLITE_FILE).exists()  # a first run creates it
    with in_process_worker(durable):
        assert run.wait(timeout=10).reserved
    durable.db.dispose()


# -- item 13: reads create nothing; two directories, two files ---------------------------------


def test_a_read_never_creates_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_database_url: None
) -> None:
    monkeypatch.chdir(tmp_path)
    durable = Durable(embedded_app())
    for read in (durable.list, lambda: durable.get("o-1"), durable.status_counts):
        with pytest.raises(NoDatabase) as missing:
            read()
        assert f"no database at {tmp_path / DEFAULT_SQLITE_FILE}, and reading created none" in (
            str(missing.value)
        )
        assert "CELERY_DURABLE_DATABASE_URL" in str(missing.value)
    assert list(tmp_path.iterdir()) == []


def test_ls_in_another_directory_says_there_is_no_database_and_creates_none(
    tmp_path: Path,
) -> None:
    (tmp_path / "shop.py").write_text(SHOP.format(broker="memory://"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "shop", "durable", "ls"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=_clean_environment(PYTHONPATH=str(tmp_path)),
        timeout=60,
    )
    assert listed.returncode == 1
    assert f"There is no database at {elsewhere / DEFAULT_SQLITE_FILE}" in listed.stderr
    assert "Traceback" not in listed.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_read_changes_no_existing_file_it_cannot_use(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "durable.sqlite3").touch()  # an empty file: no schema
    durable = Durable(embedded_app(), sqlite_url)
    with pytest.raises(SchemaNotMigrated, match="no celery-durable schema"):
        durable.list()
    assert inspect(durable.db.engine).get_table_names() == []


def test_client_and_worker_in_two_directories_each_say_which_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    no_database_url: None,
) -> None:
    (tmp_path / "shop.py").write_text(SHOP.format(broker="memory://"))
    client_dir, worker_dir = tmp_path / "client", tmp_path / "worker"
    client_dir.mkdir()
    worker_dir.mkdir()
    # The client: a script run in one directory.
    monkeypatch.chdir(client_dir)
    durable = Durable(embedded_app())
    orders = _shop(durable)
    with caplog.at_level(logging.WARNING, logger="celery_durable"):
        orders.delay(order_id="o-1")  # type: ignore[attr-defined]
        orders.delay(order_id="o-2")  # type: ignore[attr-defined]
    warned = [r.getMessage() for r in caplog.records if "working directory" in r.getMessage()]
    assert len(warned) == 1  # once per process
    assert f"the database is {client_dir / DEFAULT_SQLITE_FILE}" in warned[0]
    assert "no database_url is set" in warned[0] and "CELERY_DURABLE_DATABASE_URL" in warned[0]
    durable.db.dispose()
    # The worker: `celery worker` started in another directory says so in its log.
    said = _worker_log(worker_dir, _clean_environment(PYTHONPATH=str(tmp_path)))
    assert f"checkpoints in sqlite:///{worker_dir / DEFAULT_SQLITE_FILE}" in said
    assert f"the database is {worker_dir / DEFAULT_SQLITE_FILE}, found from the working" in said


def test_no_warning_for_a_chosen_absolute_path_and_one_for_a_relative_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="celery_durable"):
        chosen = Durable(embedded_app(), f"sqlite:///{tmp_path / 'chosen.sqlite3'}")
        _shop(chosen).delay(order_id="o-1")  # type: ignore[attr-defined]
        assert not [r for r in caplog.records if "working directory" in r.getMessage()]
        relative = Durable(embedded_app(), "sqlite:///relative.sqlite3")
        _shop(relative).delay(order_id="o-1")  # type: ignore[attr-defined]
    (warned,) = [r.getMessage() for r in caplog.records if "working directory" in r.getMessage()]
    assert "database_url is a relative path" in warned and str(tmp_path) in warned
    for each in (chosen, relative):
        each.db.dispose()


def _worker_log(cwd: Path, env: dict[str, str]) -> str:
    """What `celery -A shop worker` logs until it is ready, then stops it."""
    command_line = [sys.executable, "-m", "celery", "-A", "shop", "worker", "-P", "solo"]
    worker = subprocess.Popen(
        [*command_line, "-l", "INFO", "--without-mingle", "--without-gossip"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert worker.stderr is not None
        deadline = time.monotonic() + 60
        for line in worker.stderr:
            lines.append(line)
            if " ready." in line or time.monotonic() > deadline:
                break
    finally:
        worker.kill()  # nothing to finish: it ran no node
        worker.wait(30)
    return "".join(lines)


# -- item 14: the module-level app, tested as written ---------------------------------------

USER_CONFTEST = """
import pytest

import shop


@pytest.fixture
def durable_embedded(durable_embed):
    return durable_embed(shop.durable)
"""

USER_TESTS = """
import time

import shop


def test_an_order(durable_embedded, durable_worker):
    started = time.monotonic()
    with durable_worker():
        run = shop.orders.apply_async(kwargs={"order_id": "o-1", "amount": 30})
        assert run.wait(timeout=10).reserved
    assert time.monotonic() - started < 1.5  # over 2 s if the broker polled once a second


def test_another_order_starts_from_an_empty_database(durable_embedded, durable_worker):
    assert durable_embedded.list() == []
    with durable_worker():
        assert shop.orders.delay(order_id="o-2", amount=5).wait(timeout=10).reserved
"""


def test_the_module_level_app_is_tested_as_written(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SHOP.format(broker="amqp://guest:guest@127.0.0.1:1//"))
    (tmp_path / "conftest.py").write_text(USER_CONFTEST)
    (tmp_path / "test_shop.py").write_text(USER_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:celery"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_environment(PYTHONPATH=str(tmp_path)),
        timeout=120,
    )
    assert "2 passed" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / DEFAULT_SQLITE_FILE).exists()  # the module's default: never used


def test_embed_points_an_app_built_at_import_away_and_back(sqlite_url: str) -> None:
    app = Celery("built-at-import", broker="amqp://guest:guest@127.0.0.1:1//")
    durable = Durable(app, "postgresql+psycopg://nobody@127.0.0.1:1/prod")
    orders = _shop(durable)
    with embed(durable, sqlite_url):
        assert durable.db.url == sqlite_url
        assert app.conf.broker_transport_options == {"polling_interval": 0.01}
        started = time.monotonic()
        with in_process_worker(durable):
            assert orders.delay(order_id="o-1").wait(timeout=10).reserved  # type: ignore[attr-defined]
        assert time.monotonic() - started < 1.5
    assert durable.db.url == "postgresql+psycopg://nobody@127.0.0.1:1/prod"
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1:1//"
    assert not durable.db.schema_verified  # checked again at its next use
