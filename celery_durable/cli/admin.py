"""Keeping the database: prune, recover, migrate, and serving metrics."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from celery_durable.cli.common import Obj, emit, json_option, parse_age


@click.command("prune")
@click.option("--older-than", default=None, help="One age for every finished status: 7d.")
@click.option("--succeeded", default=None, help="Age for succeeded runs (default 7d).")
@click.option("--failed", default=None, help="Age for failed/compensated/cancelled (30d).")
@click.option("--batch", default=500, show_default=True)
@click.option("--dry-run", is_flag=True, help="Count, do not delete.")
@click.option(
    "--archive-to",
    default=None,
    metavar="DIR",
    help="Export each batch to a file of JSON lines in DIR (for durable import) before "
    "deleting it; a batch that cannot be written is not deleted.",
)
@json_option
@click.pass_obj
def prune(
    obj: Obj,
    older_than: str | None,
    succeeded: str | None,
    failed: str | None,
    batch: int,
    dry_run: bool,
    archive_to: str | None,
    as_json: bool,
) -> None:
    """Remove finished runs past retention; never running or stuck ones."""
    report = obj.durable.prune(
        parse_age(older_than) if older_than else None,
        succeeded=parse_age(succeeded) if succeeded else None,
        failed=parse_age(failed) if failed else None,
        batch=batch,
        dry_run=dry_run,
        archive=archive_to,
    )
    verb = "would remove" if dry_run else "removed"

    def human() -> str:
        lines = [
            f"{verb} {report.total} executions: "
            + ", ".join(f"{k} {v}" for k, v in report.removed.items())
        ]
        if archive_to and not dry_run:
            lines.append(f"archived {report.archived} runs to {archive_to}")
        lines += [f"kept {run}: {why}" for run, why in report.kept.items()]
        return "\n".join(lines)

    archived = {"removed": report.removed, "archived": report.archived, "kept": report.kept}
    emit(report.removed if archive_to is None else archived, as_json, human)


@click.command("recover")
@json_option
@click.pass_obj
def recover(obj: Obj, as_json: bool) -> None:
    """Run one recovery sweep now: due retries, stale runs, stranded runs."""
    report = obj.durable.recover().as_dict()
    emit(report, as_json, lambda: ", ".join(f"{k} {v}" for k, v in report.items()))


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


@click.command("metrics")
@click.option("--port", type=int, default=9808, show_default=True, help="Port of /metrics.")
@click.option(
    "--addr",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 for every interface (in a container, say).",
)
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
    """Serve Prometheus metrics (database gauges, workers' counters) until stopped. Says at
    start what keeps the workers' counters from showing (instrument(durable) not called in
    the app module, no multiprocess directory)."""
    from celery_durable.metrics import run_metrics, worker_metrics_missing

    durable = obj.durable
    instrumented = None if obj.app is None else durable.hooks
    for warning in worker_metrics_missing(instrumented, multiprocess_dir):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"celery-durable metrics on http://{addr}:{port}/metrics")
    run_metrics(durable, port, addr, stuck_after=stuck_after, multiprocess=multiprocess_dir)


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5580, show_default=True, type=int)
@click.pass_obj
def web(obj: Obj, host: str, port: int) -> None:
    """Serve the web view: runs, their graphs and checkpoints, operations. Operations need
    CELERY_DURABLE_WEB_USER and CELERY_DURABLE_WEB_PASSWORD (HTTP basic auth); without them
    the view is read-only."""
    from celery_durable.web.app import WebConfig, serve

    config = WebConfig.from_env(obj.durable)
    mode = "read-only" if config.read_only else f"operations as {config.user}"
    click.echo(f"celery-durable web view on http://{host}:{port}/ ({mode})")
    serve(config, host, port)


@click.command("verify")
@click.option("--since", default=None, help="Only what was written in this age: 7d, 12h.")
@click.option(
    "--sign",
    is_flag=True,
    help="After checksum keys are set or rotated: sign what verifies with the active key.",
)
@json_option
@click.pass_obj
@click.pass_context
def verify(ctx: click.Context, obj: Obj, since: str | None, sign: bool, as_json: bool) -> None:
    """Check every checkpoint and execution row against its checksum; exit 1 on damage.
    With --sign, re-sign each that verifies as it was signed; what does not is listed."""
    if sign:
        if since:
            raise click.UsageError("--sign goes through every row: it takes no --since.")
        report = obj.durable.sign_checksums()
        damaged = report.refused
    else:
        cutoff = datetime.now(UTC) - parse_age(since) if since else None
        damaged = obj.durable.verify(cutoff)
    rows = [{"execution": e, "seq": seq, "what": what} for e, seq, what in damaged]

    def human() -> str:
        lines = [f"{e}: {what} {seq} does not match its checksum" for e, seq, what in damaged]
        if sign:
            signed = f"signed {report.rows} rows and {report.checkpoints} checkpoints"
            lines.insert(0, f"{signed} ({report.already} were already)")
        if not damaged:
            return (
                "\n".join(lines)
                if sign
                else "all checkpoints and execution rows match their checksums"
            )
        hint = "restart each run from a checkpoint before the damage (durable restart ID SEQ)"
        return "\n".join([*lines, f"{len(damaged)} damaged; {hint}"])

    emit(rows, as_json, human)
    if damaged:
        ctx.exit(1)
