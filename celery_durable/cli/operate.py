"""Operating runs: each command calls the public method of the same name on Execution."""

from __future__ import annotations

from collections.abc import Callable

import click

from celery_durable import Execution
from celery_durable.cli import selections
from celery_durable.cli.broker import not_told, unsent_revokes
from celery_durable.cli.common import Obj, by_option, emit, json_arg, json_option, reason_option
from celery_durable.cli.selections import SELECTION_HELP, Selection, selection_options


def _op(name: str, doc: str, call: Callable[..., None]) -> click.Command:
    @click.command(name, help=doc + SELECTION_HELP)
    @click.argument("execution_id", required=False)
    @selection_options
    @by_option
    @reason_option
    @json_option
    @click.pass_context
    def command(
        ctx: click.Context,
        execution_id: str | None,
        status: tuple[str, ...],
        graph: str | None,
        since: str | None,
        tags: dict[str, str],
        dry_run: bool,
        by: str | None,
        reason: str | None,
        as_json: bool,
    ) -> None:
        obj: Obj = ctx.obj
        options = {"by": by, "reason": reason, "as_json": as_json}
        selections.if_selected(
            ctx, name, execution_id, Selection(status, graph, since, tags), dry_run, **options
        )
        execution = obj.durable.get(str(execution_id))
        with unsent_revokes() as unsent:
            call(execution, by=by, reason=reason)
        done = {"id": execution_id, "operation": name, "status": str(execution.status)}
        told = not_told(obj, execution_id, unsent) if unsent else None
        emit(done, as_json, lambda: told or f"{execution_id}: {name} done; status {done['status']}")
        if told and as_json:
            click.echo(told, err=True)

    return command


OPERATIONS = [
    _op("pause", "Pause: the running node commits, nothing new starts.", Execution.pause),
    _op(
        "cancel",
        "Cancel: nothing new starts, tasks in flight are revoked, running children are "
        "cancelled. Exit 0 once the cancel is committed, even when the broker cannot be told "
        "to revoke (the tasks stop when they find the run cancelled).",
        Execution.cancel,
    ),
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
    obj.durable.get(execution_id).skip(node, json_arg(output), by=by, reason=reason)
    click.echo(f"{execution_id}: {node} skipped")


@click.command("patch")
@click.argument("execution_id")
@click.argument("patch")
@by_option
@reason_option
@click.pass_obj
def patch(obj: Obj, execution_id: str, patch: str, by: str | None, reason: str | None) -> None:
    """Fix state fields by hand: PATCH is a JSON object, validated by the state model."""
    obj.durable.get(execution_id).update_state(json_arg(patch), by=by, reason=reason)
    click.echo(f"{execution_id}: state patched")


@click.command(
    "resume",
    help="Resume a paused execution, or approve the interrupt it waits at." + SELECTION_HELP,
)
@click.argument("execution_id", required=False)
@click.option("--update", default=None, help="JSON state update to apply as it goes on.")
@selection_options
@by_option
@reason_option
@json_option
@click.pass_context
def resume(
    ctx: click.Context,
    execution_id: str | None,
    update: str | None,
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    tags: dict[str, str],
    dry_run: bool,
    by: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    selection = Selection(status, graph, since, tags)
    if update is not None and (selection.given or dry_run):
        raise click.UsageError(
            "--update applies to one run: give its EXECUTION_ID (a selection resumes each run "
            "with its state as it is)"
        )
    options = {"by": by, "reason": reason, "as_json": as_json}
    selections.if_selected(ctx, "resume", execution_id, selection, dry_run, **options)
    execution = ctx.obj.durable.get(str(execution_id))
    execution.resume(json_arg(update) if update else None, by=by, reason=reason)
    done = {"id": execution_id, "operation": "resume", "status": str(execution.status)}
    emit(done, as_json, lambda: f"{execution_id}: resumed; status {done['status']}")


@click.command("send-event")
@click.argument("execution_id")
@click.argument("name")
@click.option("--data", default="null", help="The payload, as JSON (default: null).")
@click.option("--key", default=None, help="Idempotency key: the same key twice stores one event.")
@by_option
@reason_option
@click.pass_obj
def send_event(
    obj: Obj,
    execution_id: str,
    name: str,
    data: str,
    key: str | None,
    by: str | None,
    reason: str | None,
) -> None:
    """Send event NAME to a run: its next ctx.wait_for_event(NAME) gets the payload."""
    payload = json_arg(data, any_json=True)
    event = obj.durable.send_event(execution_id, name, payload, key, by=by, reason=reason)
    click.echo(
        f"{execution_id}: event {name} stored as #{event.id}; status "
        f"{obj.durable.get(execution_id).status}"
    )
