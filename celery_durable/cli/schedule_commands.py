"""Schedules from the command line: what beat starts and when, paused or resumed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from celery_durable.cli.common import Obj, by_option, emit, json_option, reason_option
from celery_durable.engine.schedules import ScheduleStatus
from celery_durable.policies.cron import Cron, Every


@click.group("schedules", invoke_without_command=True)
@json_option
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """Schedules: their graph, cron or interval, next three ticks (UTC), whether paused, and
    their last run. `schedules pause NAME` and `schedules resume NAME` stop and restart one."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Obj = ctx.obj
    found = obj.durable.schedules()
    emit([_json(s) for s in found], as_json, lambda: _table(found))


@schedules.command("pause")
@click.argument("name")
@by_option
@reason_option
@click.pass_obj
def pause(obj: Obj, name: str, by: str | None, reason: str | None) -> None:
    """Stop a schedule starting runs, on every beat, until resumed; the ticks that come due
    meanwhile are passed over. Recorded with who did it and why."""
    obj.durable.pause_schedule(name, by=by, reason=reason)
    click.echo(f"schedule {name}: paused")


@schedules.command("resume")
@click.argument("name")
@by_option
@reason_option
@click.pass_obj
def resume(obj: Obj, name: str, by: str | None, reason: str | None) -> None:
    """Let a paused schedule start runs again, from its next tick."""
    obj.durable.resume_schedule(name, by=by, reason=reason)
    click.echo(f"schedule {name}: resumed")


def _table(found: list[ScheduleStatus]) -> str:
    if not found:
        return "no schedules"
    lines: list[str] = []
    for s in found:
        if s.schedule is None:
            head = f"{s.name}  (not defined in this app)"
        else:
            head = f"{s.name}  {s.schedule.graph}  {s.schedule.timetable.describe()}"
        row = s.row
        state = "active"
        if row is not None and row.paused:
            why = f": {row.reason}" if row.reason else ""
            state = f"paused by {row.changed_by}{why}"
        lines.append(f"{head}  {state}")
        if s.next_ticks:
            lines.append("  next  " + "  ".join(_tick(t) for t in s.next_ticks))
        if row is not None and row.last_run_id is not None:
            status = str(s.last_run_status) if s.last_run_status else "pruned"
            lines.append(f"  last  {row.last_run_id}  {status}")
    return "\n".join(lines)


def _json(s: ScheduleStatus) -> dict[str, Any]:
    timetable = s.schedule.timetable if s.schedule else None
    row = s.row
    return {
        "name": s.name,
        "defined": s.schedule is not None,
        "graph": s.schedule.graph if s.schedule else None,
        "cron": timetable.expression if isinstance(timetable, Cron) else None,
        "timezone": timetable.timezone if isinstance(timetable, Cron) else None,
        "every_seconds": timetable.seconds if isinstance(timetable, Every) else None,
        "catch_up": s.schedule.catch_up if s.schedule else None,
        "paused": s.paused,
        "changed_by": row.changed_by if row else None,
        "reason": row.reason if row else None,
        "next_ticks": [_tick(t) for t in s.next_ticks],
        "last_tick": _tick(row.last_tick) if row and row.last_tick else None,
        "last_run_id": row.last_run_id if row else None,
        "last_run_status": str(s.last_run_status) if s.last_run_status else None,
    }


def _tick(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
