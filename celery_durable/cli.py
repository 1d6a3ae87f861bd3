"""The command line: ``celery -A proj durable <command>`` and the ``celery-durable`` script.

Both run the same commands on the same public objects a user would call. Human tables by
default, ``--json`` for scripts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from celery_durable import Durable, DurableError, Execution, render
from celery_durable.constants import DATABASE_URL_ENV

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Obj:
    """What every command gets: the app (from -A/--app) and, lazily, its Durable."""

    def __init__(self, app: Celery | None, database_url: str | None = None) -> None:
        self.app = app
        self.database_url = database_url
        self._durable: Durable | None = None

    @property
    def durable(self) -> Durable:
        if self._durable is None:
            if self.app is not None:
                self._durable = Durable.of(self.app)
            elif self.database_url or _env_url():
                self._durable = Durable(Celery("celery-durable-cli"), self.database_url)
            else:
                raise click.UsageError(
                    "Say which app: celery -A proj durable ..., or celery-durable --app proj "
                    "(or --database-url for read-only commands)."
                )
        return self._durable


def _env_url() -> str | None:
    return os.environ.get(DATABASE_URL_ENV)


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``."""
    try:
        return timedelta(seconds=float(text[:-1]) * DURATION_UNITS[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise click.BadParameter(
            f"{text!r}: use a number and a unit, like 90s, 15m, 2h, 7d"
        ) from None


def _emit(data: Any, as_json: bool, human: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=_jsonable, indent=2, sort_keys=True))
    else:
        click.echo(human())


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def _record_json(execution: Execution) -> dict[str, Any]:
    return {**asdict(execution.record), "status": str(execution.record.status)}


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
by_option = click.option("--by", default=None, help="Who does this (default: user@host).")
reason_option = click.option("--reason", default=None, help="Why: kept in the audit checkpoint.")


@click.command("ls")
@click.option("--status", multiple=True, help="Filter by status (repeatable).")
@click.option("--graph", default=None, help="Filter by graph name.")
@click.option("--since", default=None, help="Started within this age: 15m, 2h, 7d.")
@click.option("--stuck", is_flag=True, help="Only runs with no progress past stuck_after.")
@click.option("--limit", default=50, show_default=True)
@json_option
@click.pass_obj
def ls(
    obj: Obj,
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    stuck: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List executions, newest first."""
    durable = obj.durable
    if stuck:
        runs = durable.stuck()[:limit]
    else:
        after = datetime.now(UTC) - parse_age(since) if since else None
        runs = durable.list(status=list(status) or None, graph=graph, since=after, limit=limit)
    records = [run.record for run in runs]
    _emit([_record_json(r) for r in runs], as_json, lambda: render.executions(records))


@click.command("show")
@click.argument("execution_id")
@json_option
@click.pass_obj
def show(obj: Obj, execution_id: str, as_json: bool) -> None:
    """One execution: status, state, error, and its graph with each node's status."""
    durable = obj.durable
    execution = durable.get(execution_id)
    record = execution.record
    checkpoints = execution.history()
    states = render.node_states(record, checkpoints)

    def human() -> str:
        lines = [
            f"{record.id}  graph={record.graph}  status={record.status}  version={record.version}",
            f"state: {json.dumps(record.state, sort_keys=True)}",
        ]
        if record.error:
            lines.append(f"error: {record.error.get('type')}: {record.error.get('message')}")
        graph = durable.graphs.get(record.graph)
        if graph is not None:
            lines.append(render.graph(graph, states))
        else:
            lines.append(
                "  (graph not loaded in this process; node states: "
                f"{json.dumps(states, sort_keys=True)})"
            )
        return "\n".join(lines)

    _emit({**_record_json(execution), "nodes": states}, as_json, human)


@click.command("history")
@click.argument("execution_id")
@json_option
@click.pass_obj
def history(obj: Obj, execution_id: str, as_json: bool) -> None:
    """Every checkpoint of an execution, oldest first."""
    checkpoints = obj.durable.get(execution_id).history()
    _emit([asdict(c) for c in checkpoints], as_json, lambda: render.history(checkpoints))


@click.command("progress")
@click.argument("execution_id")
@click.option("--follow/--no-follow", default=True, help="Redraw until the run ends.")
@json_option
@click.pass_obj
def progress(obj: Obj, execution_id: str, follow: bool, as_json: bool) -> None:
    """A live progress bar: done/total nodes, current node, percent, ETA."""
    execution = obj.durable.get(execution_id)
    if as_json or not follow:
        p = execution.progress()
        _emit({**asdict(p), "status": str(p.status)}, as_json, lambda: render.bar(p))
        return
    render.follow_progress(execution)


def _op(name: str, doc: str, call: Callable[..., None]) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("execution_id")
    @by_option
    @reason_option
    @click.pass_obj
    def command(obj: Obj, execution_id: str, by: str | None, reason: str | None) -> None:
        execution = obj.durable.get(execution_id)
        call(execution, by=by, reason=reason)
        click.echo(f"{execution_id}: {name} done; status {execution.status}")

    return command


OPERATIONS = [
    _op("pause", "Pause: the running node commits, nothing new starts.", Execution.pause),
    _op("resume", "Resume a paused execution.", Execution.resume),
    _op("cancel", "Cancel: nothing new starts, tasks in flight are revoked.", Execution.cancel),
    _op(
        "retry",
        "Retry a failed run from its failure point, or a stuck compensation.",
        Execution.retry,
    ),
    _op("compensate", "Undo a saga's completed steps, newest first.", Execution.compensate),
]


@click.command("restart")
@click.argument("execution_id")
@click.argument("seq", type=int)
@by_option
@reason_option
@click.pass_obj
def restart(obj: Obj, execution_id: str, seq: int, by: str | None, reason: str | None) -> None:
    """Time travel: continue the execution from checkpoint SEQ (history is kept)."""
    obj.durable.get(execution_id).restart_from(seq, by=by, reason=reason)
    click.echo(f"{execution_id}: restarted from checkpoint {seq}")


@click.command("fork")
@click.argument("execution_id")
@click.argument("seq", type=int)
@click.option("--new-id", default=None, help="Id of the new execution (default: random).")
@by_option
@reason_option
@click.pass_obj
def fork(
    obj: Obj,
    execution_id: str,
    seq: int,
    new_id: str | None,
    by: str | None,
    reason: str | None,
) -> None:
    """Start a new execution from checkpoint SEQ of this one."""
    forked = obj.durable.get(execution_id).fork(seq, execution_id=new_id, by=by, reason=reason)
    click.echo(forked.id)


@click.command("skip")
@click.argument("execution_id")
@click.argument("node")
@click.option("--output", default="{}", help="JSON state update the node would have made.")
@by_option
@reason_option
@click.pass_obj
def skip(
    obj: Obj, execution_id: str, node: str, output: str, by: str | None, reason: str | None
) -> None:
    """Mark the failed NODE (or a stuck compensation) done by hand."""
    obj.durable.get(execution_id).skip(node, _json_arg(output), by=by, reason=reason)
    click.echo(f"{execution_id}: {node} skipped")


@click.command("patch")
@click.argument("execution_id")
@click.argument("patch")
@by_option
@reason_option
@click.pass_obj
def patch(obj: Obj, execution_id: str, patch: str, by: str | None, reason: str | None) -> None:
    """Fix state fields by hand: PATCH is a JSON object, validated by the state model."""
    obj.durable.get(execution_id).update_state(_json_arg(patch), by=by, reason=reason)
    click.echo(f"{execution_id}: state patched")


@click.command("prune")
@click.option("--older-than", default=None, help="One age for every finished status: 7d.")
@click.option("--succeeded", default=None, help="Age for succeeded runs (default 7d).")
@click.option("--failed", default=None, help="Age for failed/compensated/cancelled (30d).")
@click.option("--batch", default=500, show_default=True)
@click.option("--dry-run", is_flag=True, help="Count, do not delete.")
@json_option
@click.pass_obj
def prune(
    obj: Obj,
    older_than: str | None,
    succeeded: str | None,
    failed: str | None,
    batch: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove finished runs past retention; never running or stuck ones."""
    report = obj.durable.prune(
        parse_age(older_than) if older_than else None,
        succeeded=parse_age(succeeded) if succeeded else None,
        failed=parse_age(failed) if failed else None,
        batch=batch,
        dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    _emit(
        report.removed,
        as_json,
        lambda: (
            f"{verb} {report.total} executions: "
            + ", ".join(f"{k} {v}" for k, v in report.removed.items())
        ),
    )


@click.command("recover")
@json_option
@click.pass_obj
def recover(obj: Obj, as_json: bool) -> None:
    """Run one recovery sweep now: due retries, stale runs, stranded runs."""
    report = obj.durable.recover().as_dict()
    _emit(report, as_json, lambda: ", ".join(f"{k} {v}" for k, v in report.items()))


@click.command("migrate")
@click.option("--database-url", default=None, help="Default: the app's, or the env var.")
@click.pass_obj
def migrate(obj: Obj, database_url: str | None) -> None:
    """Create or upgrade the schema; running it again changes nothing."""
    if database_url:
        obj.database_url, obj.app = database_url, None
    before, after = obj.durable.migrate()
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema migrated from {before or 'empty'} to {after}")


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("expected a JSON object, like '{\"field\": 1}'")
    return value


class _DurableGroup(click.Group):
    """Turns DurableError into a one-line message and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DurableError as exc:
            raise click.ClickException(str(exc)) from exc
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


@click.command("metrics")
@click.option("--port", type=int, default=9808, show_default=True, help="Port of /metrics.")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--stuck-after",
    type=float,
    default=None,
    help="Seconds without a commit that count as stuck. Default: the stuck_after setting.",
)
@click.option(
    "--multiprocess-dir",
    default=None,
    help="The workers' Prometheus multiprocess files. Default: CELERY_DURABLE_METRICS_DIR, "
    "then PROMETHEUS_MULTIPROC_DIR.",
)
@click.pass_obj
def metrics(
    obj: Obj, port: int, addr: str, stuck_after: float | None, multiprocess_dir: str | None
) -> None:
    """Serve Prometheus metrics (database gauges, workers' counters) until stopped."""
    from celery_durable.metrics import run_metrics

    click.echo(f"celery-durable metrics on http://{addr}:{port}/metrics")
    run_metrics(obj.durable, port, addr, stuck_after=stuck_after, multiprocess=multiprocess_dir)


COMMANDS = [
    ls,
    show,
    history,
    progress,
    *OPERATIONS,
    restart,
    fork,
    skip,
    patch,
    prune,
    recover,
    migrate,
    metrics,
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


for _command in COMMANDS:
    main.add_command(_command)


@main.command("demo")
@click.option("--database-url", default=None, help="Default: a fresh SQLite file.")
def demo(database_url: str | None) -> None:
    """Run the example shop on SQLite with an in-process broker and worker: no server."""
    from celery_durable.demo import run

    run(database_url)


if __name__ == "__main__":
    main()
