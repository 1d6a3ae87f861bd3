"""Runs as JSON lines: what ``durable export`` writes, ``durable import`` reads back, and
prune's archive keeps.

One line per run, not per row: a run is what an import checks, refuses (its id taken) and
writes in one transaction, so the line is that unit too. A line cut short or altered loses
that run only, and ``grep`` finds a run by its id. A line is one canonical JSON object::

    {"format": "celery-durable-run", "version": 1, "id": "order-1",
     "tables": {"durable_executions": [{...}], "durable_checkpoints": [{...}, ...], ...},
     "checksum": "..."}

Every row holds its columns as stored: sealed states and outputs stay sealed (compressed,
encrypted), so the checksums of execution rows and checkpoints, taken over the plain JSON,
travel with them; times are ISO 8601 in UTC. The line's own checksum covers the rest,
including the tables whose rows carry none (visits, attempts, events, emitted values, tags).
All are made and checked by the store's signer: with ``checksum_keys`` set they are keyed, so
a line changed by someone without the key does not verify, and whoever imports needs the key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Table

from celery_durable.errors import ArchiveLineInvalid, CheckpointCorrupted
from celery_durable.model.records import as_utc
from celery_durable.persistence import codec
from celery_durable.persistence.codec import KEYED
from celery_durable.persistence.rows import checkpoint_from, execution_from
from celery_durable.persistence.run_rows import RunRows, owner, run_tables
from celery_durable.persistence.schema import checkpoints, executions
from celery_durable.persistence.sealing import Sealer

FORMAT = "celery-durable-run"
VERSION = 1


def run_line(run: RunRows, sealer: Sealer) -> str:
    """The run as one line (without its newline), once every row and checkpoint of it
    verifies as a read that decides would check it: an export never carries damage
    unnoticed (CheckpointCorrupted, or a missing key's error, names what failed)."""
    verify(run, sealer)
    tables = {name: [_jsonable(row) for row in rows] for name, rows in run.tables.items()}
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "id": run.execution_id,
        "tables": tables,
    }
    body["checksum"] = sealer.signer.sign((codec.dumps(body),))
    return codec.dumps(body)


def read_line(line: str, sealer: Sealer, where: str) -> RunRows:
    """The run a line holds, checked before anything of it is written: the line against its
    checksum, every row for a table and columns this schema has and for the line's run, the
    execution row and checkpoints against theirs. Raises ArchiveLineInvalid saying what
    failed (``where``: which line), or the error of a key this process lacks."""
    try:
        body = json.loads(line)
    except ValueError:
        raise ArchiveLineInvalid(where, "it is not JSON (cut short?)") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ArchiveLineInvalid(where, f"it is not a run exported by celery-durable ({FORMAT})")
    execution_id = body.get("id")
    where = f"{where} (run {execution_id!r})"
    if body.get("version") != VERSION:
        raise ArchiveLineInvalid(
            where,
            f"it is of format version {body.get('version')!r} and this celery-durable reads "
            f"version {VERSION}: import it with the celery-durable that exported it, or newer",
        )
    stored = body.pop("checksum", None)
    if not isinstance(stored, str) or not sealer.signer.matches((codec.dumps(body),), stored):
        raise ArchiveLineInvalid(where, _mismatch(stored, sealer))
    run = _run(execution_id, body.get("tables"), where)
    try:
        verify(run, sealer)
    except CheckpointCorrupted as exc:
        what = "the execution row" if exc.row else f"checkpoint {exc.seq}"
        raise ArchiveLineInvalid(where, f"{what} does not match its checksum") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveLineInvalid(
            where, f"its rows do not hold what this celery-durable reads ({exc!r})"
        ) from exc
    return run


def _run(execution_id: Any, tables: Any, where: str) -> RunRows:
    """The rows a verified line holds, each for a known table and column and for its run."""
    if not isinstance(execution_id, str) or not execution_id or not isinstance(tables, dict):
        raise ArchiveLineInvalid(where, "it does not say which run it holds, or its rows")
    run, known = RunRows(execution_id, {}), {t.name: t for t in run_tables()}
    for name, rows in tables.items():
        table = _known(known, name, where)
        if not isinstance(rows, list):
            raise ArchiveLineInvalid(where, f"its {name} rows are not a list")
        run.tables[name] = [_row(table, row, execution_id, where) for row in rows]
    if len(run.tables.get(executions.name, [])) != 1:
        raise ArchiveLineInvalid(where, "it does not hold the run's execution row")
    return run


def verify(run: RunRows, sealer: Sealer) -> None:
    """The execution row and every checkpoint against its checksum, as the store reads them."""
    execution_from(run.row, sealer, verify=True)
    for row in run.tables.get(checkpoints.name, []):
        checkpoint_from(row, sealer)


def _known(known: dict[str, Table], name: str, where: str) -> Table:
    found = known.get(name)
    if found is None:
        raise ArchiveLineInvalid(
            where,
            f"it holds rows of table {name!r}, which this celery-durable does not have: "
            "upgrade it (and run durable migrate) to the version that exported the line",
        )
    return found


def _mismatch(stored: Any, sealer: Sealer) -> str:
    if not isinstance(stored, str):
        return "it carries no checksum"
    if not stored.startswith(KEYED) and not sealer.signer.accept_unkeyed:
        return (
            "its checksum was made without a key, and this database's checksum_keys take "
            "keyed checksums only: import it with accept_unkeyed_checksums set "
            "(CELERY_DURABLE_ACCEPT_UNKEYED_CHECKSUMS=1), then sign it (durable verify --sign)"
        )
    return "it does not match its checksum: it was changed after it was exported"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row's columns as JSON values: times as ISO 8601 in UTC, the rest as stored."""
    return {
        name: _utc(value).isoformat() if isinstance(value, datetime) else value
        for name, value in row.items()
    }


def _row(table: Table, row: Any, execution_id: str, where: str) -> dict[str, Any]:
    """A line's row as the database takes it: known columns, times parsed, this run's."""
    if not isinstance(row, dict):
        raise ArchiveLineInvalid(where, f"a row of {table.name} is not an object")
    unknown = sorted(set(row) - set(table.c.keys()))
    if unknown:
        raise ArchiveLineInvalid(
            where,
            f"its {table.name} rows have column(s) {', '.join(unknown)}, which this "
            "celery-durable does not have: upgrade it to the version that exported the line",
        )
    if row.get(owner(table).name) != execution_id:
        raise ArchiveLineInvalid(where, f"a row of {table.name} belongs to another run")
    parsed = dict(row)
    for column in table.c:
        value = parsed.get(column.name)
        if isinstance(column.type, DateTime) and isinstance(value, str):
            try:
                parsed[column.name] = datetime.fromisoformat(value)
            except ValueError:
                raise ArchiveLineInvalid(where, f"{table.name}.{column.name} is no time") from None
    return parsed


def _utc(value: datetime) -> datetime:
    utc = as_utc(value)
    assert utc is not None
    return utc.astimezone(UTC)
