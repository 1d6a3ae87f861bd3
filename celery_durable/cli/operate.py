"""Operating runs: each command calls the public method of the same name on Execution."""

from __future__ import annotations

from collections.abc import Callable

import click

from celery_durable import Execution
from celery_durable.cli.common import Obj, by_option, json_arg, reason_option


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


@click.command("resume")
@click.argument("execution_id")
@click.option("--update", default=None, help="JSON state update to apply as it goes on.")
@by_option
@reason_option
@click.pass_obj
def resume(
    obj: Obj, execution_id: str, update: str | None, by: str | None, reason: str | None
) -> None:
    """Resume a paused execution, or approve the interrupt it waits at."""
    execution = obj.durable.get(execution_id)
    execution.resume(json_arg(update) if update else None, by=by, reason=reason)
    click.echo(f"{execution_id}: resumed; status {execution.status}")


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
