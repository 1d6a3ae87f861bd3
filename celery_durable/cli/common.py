"""What every command shares: the app and its Durable, ages, JSON arguments and output."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from celery import Celery

from celery_durable import Durable, Execution, Graph, Status
from celery_durable.constants import DATABASE_URL_ENV
from celery_durable.errors import InvalidTags
from celery_durable.model.records import Checkpoint, ExecutionRecord, Kind
from celery_durable.model.tags import parsed
from celery_durable.render import TIMES

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
            elif self.database_url or env_url():
                self._durable = Durable(Celery("celery-durable-cli"), self.database_url)
            else:
                raise click.UsageError(
                    "Say which app: celery -A proj durable ..., or celery-durable --app proj "
                    "(or --database-url for read-only commands)."
                )
        return self._durable


def graph_of(durable: Durable, record: ExecutionRecord) -> Graph | None:
    """The run's graph at its pinned version as this process defines it, else the newest
    version defined here (None: this process does not define the graph)."""
    pinned = durable.graph_at(record.graph, record.cursor.graph_version)
    return pinned or durable.graphs.get(record.graph)


def env_url() -> str | None:
    return os.environ.get(DATABASE_URL_ENV)


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``."""
    try:
        return timedelta(seconds=float(text[:-1]) * DURATION_UNITS[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise click.BadParameter(
            f"{text!r}: use a number and a unit, like 90s, 15m, 2h, 7d"
        ) from None


def emit(data: Any, as_json: bool, human: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=jsonable, indent=2, sort_keys=True))
    else:
        click.echo(human())


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def iso(epoch: Any) -> Any:
    """An epoch time the engine keeps (a wait's end, a timer's due time) as an ISO time, the
    one spelling of time in the JSON output; anything else as it is."""
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        return datetime.fromtimestamp(epoch, UTC).isoformat()
    return epoch


def cursor_json(cursor: dict[str, Any]) -> dict[str, Any]:
    """A cursor as JSON, its waits' ends as ISO times."""
    waits = {key: {**w, "until": iso(w.get("until"))} for key, w in cursor["waits"].items()}
    return {**cursor, "waits": waits}


def checkpoint_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint as JSON; a wait's or a wake's times (``until``, ``due``) as ISO times."""
    data = asdict(checkpoint)
    data["cursor"] = cursor_json(data["cursor"])
    output = data["output"]
    if checkpoint.kind in (Kind.WAIT, Kind.WAKE) and isinstance(output, dict):
        data["output"] = {k: iso(v) if k in TIMES else v for k, v in output.items()}
    return data


def record_json(execution: Execution) -> dict[str, Any]:
    """The row as JSON; ``version`` is the seq of its last checkpoint, ``graph_version`` the
    version of its graph it is pinned to (None: started before runs were pinned)."""
    record = execution.record
    data = asdict(record)
    return {
        **data,
        "cursor": cursor_json(data["cursor"]),
        "status": str(record.status),
        "graph_version": record.cursor.graph_version,
        "tags": execution.tags,
    }


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
by_option = click.option("--by", default=None, help="Who does this (default: user@host).")
reason_option = click.option("--reason", default=None, help="Why: kept in the audit checkpoint.")
status_option = click.option(
    "--status",
    multiple=True,
    type=click.Choice([str(s) for s in Status]),
    help="Only runs in this status (repeatable).",
)


def _tags(_ctx: click.Context, _param: click.Parameter, given: tuple[str, ...]) -> dict[str, str]:
    try:
        return parsed(given)
    except InvalidTags as exc:
        raise click.BadParameter(f"{exc.problem}.") from None


tag_option = click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_tags,
    help="Only runs started with this tag, like customer=c-42 (repeatable: all of them).",
)


def json_arg(text: str, *, any_json: bool = False) -> Any:
    """A JSON argument: an object, unless ``any_json`` (an event payload may be anything)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not any_json and not isinstance(value, dict):
        raise click.BadParameter("expected a JSON object, like '{\"field\": 1}'")
    return value
