"""The command line: ``celery -A proj durable <command>`` and the ``celery-durable`` script.

Both run the same commands on the same public objects a user would call. Human tables by
default, ``--json`` for scripts.
"""

from __future__ import annotations

import os
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from celery_durable import DurableError, logs
from celery_durable.cli import words
from celery_durable.cli.admin import metrics, migrate, prune, recover, verify, web
from celery_durable.cli.breaker_commands import breaker, breakers
from celery_durable.cli.common import Obj
from celery_durable.cli.inspect import history, ls, progress, show
from celery_durable.cli.lifecycle_commands import delete, export, import_runs
from celery_durable.cli.operate import OPERATIONS, fork, patch, restart, resume, send_event, skip
from celery_durable.cli.schedule_commands import schedules
from celery_durable.cli.version_commands import upgrade, versions


class _DurableGroup(click.Group):
    """Turns DurableError into a one-line message in the CLI's words and exit code 1, not a
    traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DurableError as exc:
            raise click.ClickException(words.of_error(exc)) from exc
        except SQLAlchemyError as exc:
            raise click.ClickException(
                f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}. Check "
                "the database URL (CELERY_DURABLE_DATABASE_URL) and that its schema is migrated "
                "(durable migrate)."
            ) from exc


@click.group(name="durable", cls=_DurableGroup)
@click.pass_context
def durable(ctx: click.Context) -> None:
    """Durable executions: list, inspect, operate (celery -A proj durable ...)."""
    ctx.obj = Obj(getattr(ctx.obj, "app", None))
    _log_as_set()


COMMANDS = [
    ls,
    show,
    history,
    progress,
    *OPERATIONS,
    resume,
    send_event,
    restart,
    fork,
    skip,
    patch,
    upgrade,
    versions,
    breakers,
    breaker,
    schedules,
    prune,
    delete,
    export,
    import_runs,
    recover,
    migrate,
    metrics,
    verify,
    web,
]
for _command in COMMANDS:
    durable.add_command(_command)


@click.group(name="celery-durable", cls=_DurableGroup)
@click.option(
    "-A", "--app", "app_path", default=None, help="The Celery app: module or module:attr."
)
@click.option("--database-url", default=None, help="For read-only commands without --app.")
@click.pass_context
def main(ctx: click.Context, app_path: str | None, database_url: str | None) -> None:
    """celery-durable: the same commands as `celery durable`, plus `demo`."""
    app = None
    if app_path:
        from celery.app.utils import find_app

        app = find_app(app_path)
    ctx.obj = Obj(app, database_url)
    _log_as_set()


def _log_as_set() -> None:
    """The run fields on every record, and JSON lines when CELERY_DURABLE_LOG_FORMAT=json."""
    logs.configure(json=os.environ.get("CELERY_DURABLE_LOG_FORMAT") == "json")


for _command in COMMANDS:
    main.add_command(_command)


@main.command("demo")
@click.option("--database-url", default=None, help="Default: a fresh SQLite file.")
def demo(database_url: str | None) -> None:
    """Run the example shop on SQLite with an in-process broker and worker: no server."""
    from celery_durable.demo import run

    run(database_url)
