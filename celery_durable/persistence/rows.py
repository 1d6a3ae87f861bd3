"""Records as rows and rows as records, checked on the way out: a checkpoint always against its
checksum, an execution row against its own when the read decides something (``verify``).

Checksums are over the canonical plain JSON; the state and output columns hold it sealed
(persistence/sealing.py): opened first, then verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from celery_durable.errors import CheckpointCorrupted, EncryptionKeyMissing
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import (
    Checkpoint,
    Commit,
    ExecutionRecord,
    Kind,
    as_utc,
)
from celery_durable.persistence import codec
from celery_durable.persistence.dialect import Advance, Start
from celery_durable.persistence.sealing import Sealer, Unsealable
from celery_durable.status import FINISHED, Status

# Checkpoints in the middle of a node record what they are about (a step's result, a wait,
# what woke it), not the state, which they do not change: their state column holds "".
STATELESS = frozenset({Kind.STEP, Kind.WAIT, Kind.WAKE})


def execution_record(row: Row[Any], sealer: Sealer, verify: bool = False) -> ExecutionRecord:
    """The row as a record; ``verify``: check its checksum first (reads that decide). A read
    that decides nothing (a listing) shows a state it cannot open as empty."""
    return execution_from(row._mapping, sealer, verify)


# The timestamp columns, which a notification's JSON carries as ISO 8601 text.
_TIMES = ("created_at", "updated_at", "finished_at", "swept_at")


def noticed_record(notice: Mapping[str, Any], sealer: Sealer) -> ExecutionRecord:
    """The row a run's end notification carried (PostgreSQL's JSON of it), verified like a
    read that decides: a waiter returns it as the run's outcome."""
    row = dict(notice)
    for column in _TIMES:
        if row.get(column) is not None:
            row[column] = datetime.fromisoformat(row[column])
    return execution_from(row, sealer, verify=True)


def execution_from(m: Mapping[Any, Any], sealer: Sealer, verify: bool) -> ExecutionRecord:
    """``execution_record`` of a row given as a mapping of its columns (a notification's, an
    archive's)."""
    try:
        state = sealer.open(m["state"], m["id"])
    except (Unsealable, EncryptionKeyMissing) as exc:
        if not verify:
            state = "{}"
        elif isinstance(exc, Unsealable):
            raise CheckpointCorrupted(m["id"], m["version"], row=True) from exc
        else:
            raise
    if verify and not sealer.signer.matches(
        codec.row_parts(m["id"], m["version"], m["status"], state, m["cursor"], m["error"]),
        m["checksum"],
    ):
        raise CheckpointCorrupted(m["id"], m["version"], row=True)
    return ExecutionRecord(
        id=m["id"],
        graph=m["graph"],
        fingerprint=m["fingerprint"],
        status=Status(m["status"]),
        version=m["version"],
        state=codec.loads(state),
        cursor=Cursor.from_json(codec.loads(m["cursor"])),
        error=codec.loads(m["error"]),
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
        finished_at=as_utc(m["finished_at"]),
        swept_at=as_utc(m["swept_at"]),
        parent_id=m["parent_id"],
    )


def checkpoint_record(row: Row[Any], sealer: Sealer, contain: bool = False) -> Checkpoint:
    """The checkpoint, verified. ``contain`` (reads for display): a corrupted one comes back
    marked, its contents withheld, instead of raising, so the rest of the run stays visible."""
    return checkpoint_from(row._mapping, sealer, contain)


def checkpoint_from(m: Mapping[Any, Any], sealer: Sealer, contain: bool = False) -> Checkpoint:
    """``checkpoint_record`` of a row given as a mapping of its columns (an archive's)."""
    execution_id = m["execution_id"]
    try:
        state = sealer.open(m["state"], execution_id)
        output = None if m["output"] is None else sealer.open(m["output"], execution_id)
        parts = codec.checkpoint_parts(
            execution_id, m["seq"], m["kind"], m["node"], m["visit"], state, m["cursor"],
            output, m["meta"],
        )  # fmt: skip
        corrupted = not sealer.signer.matches(parts, m["checksum"])
    except Unsealable:
        corrupted = True
    if corrupted and not contain:
        raise CheckpointCorrupted(execution_id, m["seq"])
    if corrupted:
        return Checkpoint(
            execution_id, m["seq"], Kind(m["kind"]), m["node"], m["visit"], {}, Cursor(), None,
            None, m["checksum"], as_utc(m["created_at"]), corrupted=True,  # type: ignore[arg-type]
        )  # fmt: skip
    return Checkpoint(
        execution_id=execution_id,
        seq=m["seq"],
        kind=Kind(m["kind"]),
        node=m["node"],
        visit=m["visit"],
        state=codec.loads(state) if state else None,
        cursor=Cursor.from_json(codec.loads(m["cursor"])),
        output=codec.loads(output),
        meta=codec.loads(m["meta"]),
        checksum=m["checksum"],
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
    )


def start_row(
    sealer: Sealer,
    *,
    execution_id: str,
    graph: str,
    fingerprint: str,
    status: Status,
    parent_id: str | None,
    state_text: str,
    cursor: Cursor,
    meta: dict[str, Any] | None,
    now: datetime,
    tags: Mapping[str, str] | None = None,
) -> Start:
    """A new execution and its start checkpoint, as stored; ``tags``: its own (None: its
    parent's)."""
    meta_text = codec.dumps(meta) if meta is not None else None
    cursor_text = codec.dumps(cursor.to_json())
    kind = str(Kind.START)
    return {
        "execution_id": execution_id,
        "graph": graph,
        "fingerprint": fingerprint,
        "graph_version": cursor.graph_version,
        "status": str(status),
        "parent_id": parent_id,
        "state": sealer.seal(state_text, execution_id),
        "cursor": cursor_text,
        "kind": kind,
        "node": "",
        "meta": meta_text,
        "checksum": sealer.signer.sign(
            codec.checkpoint_parts(
                execution_id, 0, kind, "", 0, state_text, cursor_text, None, meta_text
            )
        ),
        "row_checksum": sealer.signer.sign(
            codec.row_parts(execution_id, 0, str(status), state_text, cursor_text, None)
        ),
        "now": now,
        "tags": None if tags is None else codec.dumps(dict(tags)),
    }


def advance_row(commit: Commit, now: datetime, sealer: Sealer) -> Advance:
    """The commit as stored: canonical JSON, its checksums, sealed, and the row's new status."""
    execution_id = commit.execution_id
    state_text = commit.state_json or codec.dumps(commit.state, "The state")
    output_text = (
        codec.dumps(commit.output, "The node's output") if commit.output is not None else None
    )
    meta_text = codec.dumps(commit.meta) if commit.meta is not None else None
    cursor_text = codec.dumps(commit.cursor.to_json())
    error_text = codec.dumps(commit.error) if commit.error is not None else None
    seq = commit.seq
    kind = str(commit.kind)
    stored_state = sealer.seal(state_text, execution_id)
    stateless = commit.kind in STATELESS
    return {
        "execution_id": execution_id,
        "expected_version": commit.expected_version,
        "seq": seq,
        "kind": kind,
        "node": commit.node,
        "visit": commit.visit,
        "state": stored_state,
        "checkpoint_state": "" if stateless else stored_state,
        "output": None if output_text is None else sealer.seal(output_text, execution_id),
        "meta": meta_text,
        "checksum": sealer.signer.sign(
            codec.checkpoint_parts(
                execution_id,
                seq,
                kind,
                commit.node,
                commit.visit,
                "" if stateless else state_text,
                cursor_text,
                output_text,
                meta_text,
            )
        ),
        "cursor": cursor_text,
        "graph_version": commit.cursor.graph_version,
        "status": str(commit.status),
        "error": error_text,
        "row_checksum": sealer.signer.sign(
            codec.row_parts(
                execution_id, seq, str(commit.status), state_text, cursor_text, error_text
            )
        ),
        "finished_at": now if commit.status in FINISHED else None,
        "lease_token": commit.lease_token,
        "now": now,
    }
