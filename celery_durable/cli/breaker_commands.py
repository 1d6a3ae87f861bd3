"""Flow control from the command line: the fleet's circuit breakers, opened or closed by hand."""

from __future__ import annotations

import click

from celery_durable.cli.common import Obj, by_option, emit, json_option, reason_option


@click.command("breakers")
@json_option
@click.pass_obj
def breakers(obj: Obj, as_json: bool) -> None:
    """Circuit breakers with their shared state, failures, rejections and who changed them."""
    rows = obj.durable.breakers()

    def table() -> str:
        if not rows:
            return "no circuit breakers"
        lines = [f"{'NAME':<24} {'STATE':<10} {'FAILURES':>8} {'REJECTED':>9}  SINCE / BY"]
        for b in rows:
            since = b.row.opened_at if b.row.state != "closed" else b.updated_at
            when = since.isoformat(timespec="seconds") if since else "-"
            by = f"  by {b.changed_by}" if b.changed_by else ""
            lines.append(
                f"{b.name:<24} {b.row.state:<10} {b.row.failures:>8} {b.rejections:>9}  {when}{by}"
            )
        return "\n".join(lines)

    data = [
        {
            "name": b.name,
            "state": str(b.row.state),
            "failures": b.row.failures,
            "opened_at": b.row.opened_at,
            "rejections": b.rejections,
            "changed_by": b.changed_by,
            "updated_at": b.updated_at,
        }
        for b in rows
    ]
    emit(data, as_json, table)


@click.command("breaker")
@click.argument("state", type=click.Choice(["open", "close"]))
@click.argument("name")
@by_option
@reason_option
@click.pass_obj
def breaker(obj: Obj, state: str, name: str, by: str | None, reason: str | None) -> None:
    """Open a breaker by hand (it half-opens after its reset_after, as if it had tripped), or
    close it. Recorded with who did it and why."""
    wanted = "open" if state == "open" else "closed"
    obj.durable.set_breaker(name, wanted, by=by, reason=reason)
    click.echo(f"breaker {name}: {wanted}")
