"""Migrations: Durable(...).migrate() and `celery-durable migrate` create the schema once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery import Celery
from sqlalchemy import inspect

from celery_durable import Durable
from celery_durable.persistence import migrate

ROOT = Path(__file__).resolve().parents[2]
# The newest migration, by its file's number: what the schema is migrated to.
HEAD = max(p.name for p in (migrate.MIGRATIONS / "versions").glob("[0-9]*.py"))[:4]


def test_the_head_is_the_newest_migration_and_the_revisions_run_back_to_the_first() -> None:
    assert migrate.head() == HEAD
    assert migrate.revisions()[-1] == "0001" and len(set(migrate.revisions())) == int(HEAD)


def test_migrate_creates_the_tables_then_is_a_no_op(database_url: str) -> None:
    durable = Durable(Celery("x"), database_url=database_url)
    assert durable.migrate() == (None, HEAD)
    tables = set(inspect(durable.db.engine).get_table_names())
    assert {
        "durable_executions",
        "durable_checkpoints",
        "durable_node_visits",
        "durable_events",
    } <= tables
    assert durable.migrate() == (HEAD, HEAD)
    assert set(inspect(durable.db.engine).get_table_names()) == tables
    durable.db.dispose()


def test_the_script_migrates_a_database_url(database_url: str) -> None:
    command = [sys.executable, "-m", "celery_durable.cli", "migrate", "--database-url"]
    first = subprocess.run([*command, database_url], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert f"schema migrated from empty to {HEAD}" in first.stdout
    again = subprocess.run([*command, database_url], capture_output=True, text=True, cwd=ROOT)
    assert f"schema already at revision {HEAD}" in again.stdout


def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from celery_durable.persistence.schema import metadata

    durable = Durable(Celery("x"), database_url=database_url)
    durable.migrate()
    with durable.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = [
            d
            for d in compare_metadata(context, metadata)
            # Alembic's own version table is not part of the declared schema.
            if not (d[0] == "remove_table" and d[1].name.endswith("alembic_version"))
        ]
    durable.db.dispose()
    assert diff == []
